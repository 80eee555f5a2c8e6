//! The scale harness's world: the real apiserver, kiln's controller as a process (as it runs in
//! a cluster), and N simulated builder nodes — each a real Node object with a real heartbeat
//! Lease, run by a real agent task in this process, whose BuildKit is the simulated backend
//! (`kiln::agent::simulated`, the only place a stand-in for BuildKit is allowed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Node;
use kiln::agent::simulated::SimulatedBuildKit;
use kiln::agent::{DEFAULT_PROGRESS_DELAY_MS, Settings, contexts::Limits};
use kiln::api::BuilderPool;
use kiln::buildkit::{Endpoint, Network};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::apiserver::ApiServer;
use crate::support::e2e::{NS, POOL, install};
use crate::support::kiln::ControllerProcess;

/// Label of the simulated nodes (the pool selects them).
pub const NODE_LABEL: &str = "kiln.dev/scale";

/// The running world.
pub struct Harness {
    /// The apiserver.
    pub server: &'static ApiServer,
    /// An admin client.
    pub admin: Client,
    /// kiln's controller.
    pub controller: ControllerProcess,
    /// The simulated builders' backend, shared by every agent (it counts solves per attempt).
    pub simulated: Arc<SimulatedBuildKit>,
    /// Node names.
    pub nodes: Vec<String>,
    agents: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for a in &self.agents {
            a.abort();
        }
    }
}

/// How the world is shaped.
pub struct Shape {
    /// Simulated nodes.
    pub nodes: usize,
    /// Builds each node runs at once.
    pub slots: i32,
    /// How long a simulated solve takes.
    pub per_build: Duration,
    /// Extra flags of the controller.
    pub controller_flags: Vec<String>,
    /// The agents' progress delay.
    pub progress_delay: Duration,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            nodes: 20,
            slots: 2,
            per_build: Duration::from_millis(200),
            controller_flags: Vec::new(),
            progress_delay: Duration::from_millis(DEFAULT_PROGRESS_DELAY_MS),
        }
    }
}

impl Harness {
    /// Starts the world and waits until the pool reports every node ready.
    pub async fn start(shape: &Shape) -> Harness {
        let server = ApiServer::shared().await;
        install(server);
        let pool = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "BuilderPool", "metadata": {"name": POOL},
                          "spec": {"nodeSelector": {NODE_LABEL: "true"}, "maxConcurrentBuilds": shape.slots}});
        server.apply_manifests(&pool.to_string());
        let admin = server.client().await;
        let nodes: Vec<String> = (0..shape.nodes).map(|i| format!("sim-{i:03}")).collect();
        create_nodes(&admin, &nodes).await;
        let kubeconfig = server.service_account_kubeconfig(NS, "kiln-controller").await;
        let mut flags = vec!["--lease-duration-seconds=15".to_owned()];
        flags.extend(shape.controller_flags.iter().cloned());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let controller = ControllerProcess::start_with(server, &kubeconfig, NS, "scale-controller", &flags);

        let simulated = SimulatedBuildKit::new(shape.per_build);
        let agent_client = server.client_as_service_account(NS, "kiln-agent").await;
        let dir = server.dir.join("scale-agents");
        let agents = nodes
            .iter()
            .map(|node| {
                let settings = agent_settings(node, &dir, shape, simulated.clone());
                let client = agent_client.clone();
                tokio::spawn(async move {
                    if let Err(e) = kiln::agent::run(client, settings).await {
                        eprintln!("simulated agent stopped: {e}");
                    }
                })
            })
            .collect();
        let harness = Harness {
            server,
            admin,
            controller,
            simulated,
            nodes,
            agents,
        };
        harness.wait_pool_ready().await;
        harness
    }

    async fn wait_pool_ready(&self) {
        let pools: Api<BuilderPool> = Api::all(self.admin.clone());
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let ready = pools
                .get_opt(POOL)
                .await
                .ok()
                .flatten()
                .and_then(|p| p.status)
                .map(|s| s.ready_nodes)
                .unwrap_or(0);
            if usize::try_from(ready).unwrap_or(0) == self.nodes.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pool has {ready} of {} simulated nodes ready after 180 s\n{}",
                self.nodes.len(),
                self.controller.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Creates the Node objects (a containerd node each, so the pool renders and counts them).
async fn create_nodes(admin: &Client, names: &[String]) {
    let api: Api<Node> = Api::all(admin.clone());
    stream::iter(names.iter().cloned())
        .for_each_concurrent(32, |name| {
            let api = api.clone();
            async move {
                let node: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": {NODE_LABEL: "true"}}}))
                    .expect("node");
                match api.create(&PostParams::default(), &node).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                    Err(e) => panic!("create node {name}: {e}"),
                }
                let status = json!({"status": {"nodeInfo": {"containerRuntimeVersion": "containerd://1.7.0", "architecture": "amd64",
                    "operatingSystem": "linux", "bootID": "", "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "v1.29.0",
                    "machineID": "", "osImage": "", "systemUUID": ""}}});
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await
                    .expect("node status");
            }
        })
        .await;
}

fn agent_settings(node: &str, dir: &std::path::Path, shape: &Shape, simulated: Arc<SimulatedBuildKit>) -> Settings {
    let local = "127.0.0.1:0".parse().expect("address");
    Settings {
        pool: POOL.into(),
        node: node.into(),
        namespace: NS.into(),
        identity: format!("{node}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]),
        buildkit: Endpoint::parse("unix:///nonexistent/simulated.sock").expect("endpoint"),
        tls: None,
        runtime: "containerd".into(),
        max_concurrent_builds: shape.slots,
        listen: local,
        endpoint: None,
        contexts_dir: dir.join(format!("contexts-{node}")),
        context_limits: Limits {
            max_context: 64 << 20,
            keep: Duration::from_secs(3600),
            max_total: 256 << 20,
        },
        upload_wait: Duration::from_secs(20),
        context_listen: local,
        lease_duration: Duration::from_secs(15),
        network: Network::None,
        log_dir: dir.join(format!("logs-{node}")),
        buildkit_tmp: None,
        progress_delay: shape.progress_delay,
        simulated: Some(simulated),
        image_store: None,
        presence_interval: Duration::from_secs(30),
    }
}

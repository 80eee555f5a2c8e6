//! An end-to-end rig: a real apiserver, a real BuildKit (Docker's), and kiln's controller and
//! agents as the processes they are in production, installed from `kiln manifests` and acting
//! as their own ServiceAccounts. Nodes are Node objects whose agents all share the one Docker.
//!
//! Each agent also gets a Pod object (never run: there is no kubelet) whose `status.podIP` is
//! the private address the agent listens on, so clients reach it through the apiserver's
//! pods/proxy exactly as in a cluster. The apiserver refuses to proxy to loopback addresses,
//! so that address lives on a bridge of our own ([`agent_ip`]), inside this machine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kiln::api::{ImageBuild, NodeBuild};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use super::apiserver::ApiServer;
use super::docker::DockerDaemon;
use super::http::FileServer;
use super::kiln::ControllerProcess;
use super::process::{Supervised, free_port};

/// kiln's namespace in the rig.
pub const NS: &str = "kiln-system";
/// The pool every rig node belongs to.
pub const POOL: &str = "default";
/// Agents' heartbeat validity in the rig (short, so lost nodes show quickly).
pub const LEASE_SECONDS: u64 = 6;

/// Installs kiln's namespace, RBAC and ServiceAccounts as `kiln manifests` makes them, without
/// the controller Deployment and the default pool (the tests run both their own way).
pub fn install(server: &ApiServer) {
    let manifests: Vec<Value> = kiln::deploy::manifests(&kiln::deploy::Install::default())
        .into_iter()
        .filter(|m| m["kind"] != "Deployment" && m["kind"] != "BuilderPool")
        .collect();
    let yaml: String = manifests
        .iter()
        .map(|m| format!("---\n{}", serde_yaml::to_string(m).expect("yaml")))
        .collect();
    server.apply_manifests(&yaml);
}

/// The running parts.
pub struct Rig {
    /// The apiserver.
    pub server: &'static ApiServer,
    /// Docker's BuildKit, shared by every agent.
    pub docker: &'static DockerDaemon,
    /// Serves build contexts on loopback.
    pub files: FileServer,
    /// The controller.
    pub controller: Mutex<Option<ControllerProcess>>,
    /// Agents by node.
    pub agents: Mutex<BTreeMap<String, Supervised>>,
    agent_kubeconfig: PathBuf,
    controller_kubeconfig: PathBuf,
    /// Extra flags of the controller and of every agent (tuning for one test).
    extra: Tuning,
}

/// Extra flags for the rig's controller and agents.
#[derive(Clone, Debug, Default)]
pub struct Tuning {
    /// Added to `kiln controller`.
    pub controller: Vec<String>,
    /// Added to every `kiln agent`.
    pub agent: Vec<String>,
}

impl Rig {
    /// Installs kiln (RBAC, pool) and starts the controller and one agent per node in `nodes`.
    pub async fn start(nodes: &[&str]) -> Rig {
        Rig::start_tuned(nodes, Tuning::default()).await
    }

    /// [`Rig::start`], with extra flags for the controller and the agents.
    pub async fn start_tuned(nodes: &[&str], extra: Tuning) -> Rig {
        let server = ApiServer::shared().await;
        let docker = DockerDaemon::shared();
        install(server);
        let client = server.client().await;
        let pool = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "BuilderPool", "metadata": {"name": POOL},
                          "spec": {"nodeSelector": {"kiln.dev/e2e": "true"}, "maxConcurrentBuilds": 2}});
        server.apply_manifests(&serde_yaml::to_string(&pool).expect("yaml"));
        let rig = Rig {
            server,
            docker,
            files: FileServer::start(&[]),
            controller: Mutex::new(None),
            agents: Mutex::new(BTreeMap::new()),
            agent_kubeconfig: server.service_account_kubeconfig(NS, "kiln-agent").await,
            controller_kubeconfig: server.service_account_kubeconfig(NS, "kiln-controller").await,
            extra,
        };
        rig.start_controller();
        for node in nodes {
            rig.add_node(&client, node).await;
            rig.start_agent(node);
        }
        rig
    }

    /// An admin client.
    pub async fn client(&self) -> Client {
        self.server.client().await
    }

    /// (Re)starts the controller.
    pub fn start_controller(&self) {
        // Unique in the test binary: tests running side by side share the apiserver and the
        // leader Lease, and two controllers with one identity would both think they lead.
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let identity = format!("controller-{run}");
        let mut args = vec!["--lease-duration-seconds=4"];
        args.extend(self.extra.controller.iter().map(String::as_str));
        let c = ControllerProcess::start_with(self.server, &self.controller_kubeconfig, NS, &identity, &args);
        *self.controller.lock().expect("lock") = Some(c);
    }

    /// Starts the controller again if its process exited, as the kubelet restarts a
    /// Deployment's container: a controller that loses its leader Lease (an apiserver outage
    /// longer than the Lease) exits on purpose. True if it was restarted.
    pub fn restart_controller_if_exited(&self) -> bool {
        let exited = {
            let mut slot = self.controller.lock().expect("lock");
            match slot.as_mut() {
                Some(c) if !c.process.is_running() => {
                    c.process.stop();
                    slot.take();
                    true
                }
                _ => false,
            }
        };
        if exited {
            self.start_controller();
        }
        exited
    }

    /// Kills the controller (SIGKILL, as a crash).
    pub fn kill_controller(&self) {
        if let Some(mut c) = self.controller.lock().expect("lock").take() {
            c.process.kill();
        }
    }

    /// Creates a Node object for the rig's pool (Docker runtime).
    pub async fn add_node(&self, client: &Client, name: &str) {
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"kiln.dev/e2e": "true"}}}))
                .expect("node");
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => panic!("create node {name}: {e}"),
        }
        let status = json!({"status": {"nodeInfo": {"containerRuntimeVersion": "docker://20.10.24", "architecture": "amd64",
            "operatingSystem": "linux", "bootID": "", "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "v1.20.2",
            "machineID": "", "osImage": "", "systemUUID": ""}}});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("node status");
    }

    /// Starts (or restarts) the agent of `node`, as the builder DaemonSet would, with a Pod
    /// object clients reach it through (see the module docs).
    pub fn start_agent(&self, node: &str) {
        let port = free_port();
        let log_dir = self.server.dir.join(format!("logs-{node}"));
        let identity = format!("{node}-{}", uuid::Uuid::new_v4().simple().to_string().split_at(6).0);
        let ip = agent_ip().unwrap_or("127.0.0.1");
        if agent_ip().is_some() {
            self.agent_pod(&identity, ip, port);
        }
        let mut args: Vec<String> = vec![
            "agent".into(),
            format!("--pool={POOL}"),
            format!("--node-name={node}"),
            format!("--namespace={NS}"),
            format!("--buildkit-addr={}", self.docker.endpoint()),
            "--runtime=docker".into(),
            "--network=none".into(),
            format!("--listen={ip}:{port}"),
            format!("--lease-duration-seconds={LEASE_SECONDS}"),
            format!("--log-dir={}", log_dir.display()),
            format!(
                "--contexts-dir={}",
                self.server.dir.join(format!("contexts-{node}")).display()
            ),
            format!("--identity={identity}"),
            format!("--pod-name={identity}"),
            "--upload-wait-seconds=20".into(),
        ];
        args.extend(self.extra.agent.iter().cloned());
        let log = self.server.dir.join(format!("agent-{node}.log"));
        let process = Supervised::spawn(
            &format!("kiln agent {node}"),
            env!("CARGO_BIN_EXE_kiln"),
            &args,
            &[
                ("KUBECONFIG".into(), self.agent_kubeconfig.display().to_string()),
                ("RUST_LOG".into(), super::kiln::log_filter()),
            ],
            &log,
            None,
        );
        self.agents.lock().expect("lock").insert(node.to_owned(), process);
    }

    /// The address of `node`'s agent API, as its log announces it (once it serves).
    pub fn agent_addr(&self, node: &str) -> Option<String> {
        let agents = self.agents.lock().ok()?;
        let log = agents.get(node)?.log_tail(400);
        log.lines()
            .rev()
            .filter(|l| l.contains("agent serving its API"))
            .find_map(|l| l.split("addr=").nth(1)?.split_whitespace().next().map(str::to_owned))
    }

    /// A Prometheus sample of `node`'s agent (`/metrics`), 0 when absent or unreachable.
    pub fn agent_metric(&self, node: &str, name: &str) -> f64 {
        use std::io::{Read, Write};
        let Some(addr) = self.agent_addr(node) else { return 0.0 };
        let Ok(mut stream) = std::net::TcpStream::connect(&addr) else {
            return 0.0;
        };
        let _ = write!(stream, "GET /metrics HTTP/1.0\r\n\r\n");
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The Pod object of an agent: its name, and its address and port for pods/proxy.
    fn agent_pod(&self, name: &str, ip: &str, port: u16) {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"containers": [{"name": "agent", "image": "kiln.dev/kiln:test",
                     "ports": [{"name": "agent", "containerPort": port}]}]}});
        self.server.apply_manifests(&pod.to_string());
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        let (ok, _, err) = self.server.kubectl(&[
            "-n",
            NS,
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ]);
        assert!(ok, "set the agent pod's IP: {err}");
    }

    /// Kills the agent of `node` (SIGKILL).
    pub fn kill_agent(&self, node: &str) {
        if let Some(mut a) = self.agents.lock().expect("lock").remove(node) {
            a.kill();
        }
    }

    /// Sends the agent of `node` SIGTERM, as the kubelet does when it stops the pod; returns
    /// true if it exited by itself within `timeout` (else it is killed).
    pub fn terminate_agent(&self, node: &str, timeout: Duration) -> bool {
        let Some(mut agent) = self.agents.lock().expect("lock").remove(node) else {
            return false;
        };
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &agent.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let exited = sent && agent.wait_exit(timeout);
        agent.kill();
        exited
    }

    /// Serves a context tarball; returns its URL.
    pub fn context(&self, name: &str, files: &[(&str, &[u8])]) -> String {
        let path = format!("/{name}.tar");
        self.files.put(&path, super::http::tar(files));
        self.files.url(&path)
    }

    /// Waits for the ImageBuild to satisfy `done`, returning it.
    pub async fn wait_for(
        &self,
        ns: &str,
        name: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&ImageBuild) -> bool,
    ) -> ImageBuild {
        self.poll(ns, name, timeout, what, |b| b.filter(|b| done(b))).await
    }

    /// Waits until the ImageBuild no longer exists.
    pub async fn wait_gone(&self, ns: &str, name: &str, timeout: Duration) {
        self.poll(ns, name, timeout, "deletion", |b| b.is_none().then_some(()))
            .await;
    }

    /// Polls the ImageBuild until `check` accepts it (or its absence), panicking with the
    /// controller's and agents' logs after `timeout`.
    async fn poll<T>(
        &self,
        ns: &str,
        name: &str,
        timeout: Duration,
        what: &str,
        check: impl Fn(Option<ImageBuild>) -> Option<T>,
    ) -> T {
        let api: Api<ImageBuild> = Api::namespaced(self.client().await, ns);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(current) = api.get_opt(name).await
                && let Some(v) = check(current)
            {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} of {ns}/{name}\n{}",
                self.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The NodeBuilds of an ImageBuild.
    pub async fn node_builds(&self, ns: &str, build: &str) -> Vec<NodeBuild> {
        let api: Api<NodeBuild> = Api::namespaced(self.client().await, ns);
        let mut list = api
            .list(&ListParams::default().labels(&format!("kiln.dev/image-build={build}")))
            .await
            .expect("list NodeBuilds")
            .items;
        list.sort_by_key(|nb| nb.name_any());
        list
    }

    /// Controller and agent log tails, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        if let Some(c) = self.controller.lock().ok().as_ref().and_then(|c| c.as_ref()) {
            out.push_str(&format!("--- controller\n{}\n", c.log_tail()));
        }
        if let Ok(agents) = self.agents.lock() {
            for (node, a) in agents.iter() {
                out.push_str(&format!("--- agent {node}\n{}\n", a.log_tail(25)));
            }
        }
        out
    }
}

/// The private address agents listen on (`10.214.0.1` on a bridge `kiln-e2e0` this function
/// creates once, and leaves for later runs), or `None` when it cannot be made (not root): then
/// agents listen on loopback and nothing can be uploaded to them.
pub fn agent_ip() -> Option<&'static str> {
    static IP: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *IP.get_or_init(|| {
        const BRIDGE: &str = "kiln-e2e0";
        const ADDR: &str = "10.214.0.1";
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        let has_addr = || {
            std::process::Command::new("ip")
                .args(["-o", "addr", "show", "dev", BRIDGE])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{ADDR}/32")))
        };
        if !has_addr() {
            // Racing test binaries may both try; whoever loses finds it there.
            ip(&["link", "add", BRIDGE, "type", "bridge"]);
            ip(&["addr", "add", &format!("{ADDR}/32"), "dev", BRIDGE]);
        }
        ip(&["link", "set", BRIDGE, "up"]);
        if has_addr() {
            Some(ADDR)
        } else {
            eprintln!("NOTE: cannot create bridge {BRIDGE} with {ADDR} (not root?): agents listen on loopback, uploads cannot reach them");
            None
        }
    })
}

/// An ImageBuild manifest as a user writes it.
pub fn image_build_yaml(name: &str, spec: Value) -> String {
    let doc =
        json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": name}, "spec": spec});
    serde_yaml::to_string(&doc).expect("yaml")
}

/// True when the build's `Ready` condition is.
pub fn is_ready(b: &ImageBuild) -> bool {
    b.status
        .as_ref()
        .is_some_and(|s| kiln::api::conditions::is_true(&s.conditions, kiln::api::conditions::READY))
}

/// True when the build's `Stalled` condition is.
pub fn is_stalled(b: &ImageBuild) -> bool {
    b.status
        .as_ref()
        .is_some_and(|s| kiln::api::conditions::is_true(&s.conditions, kiln::api::conditions::STALLED))
}

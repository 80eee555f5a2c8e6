//! The BuilderPool controller, run as the real `kiln controller` process against a real
//! apiserver: per-runtime DaemonSets, updates, idempotent applies, owner references, status.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kiln::api::BuilderPool;
use kiln::api::heartbeat::{self, CAPACITY_ANNOTATION, Capacity, HEARTBEAT_LABEL};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::kiln::{ControllerProcess, eventually};
use tokio::sync::OnceCell;

const NS: &str = "kiln-system";
const WAIT: Duration = Duration::from_secs(30);

/// One controller for this test binary, as in a cluster: installed from `kiln manifests` and
/// acting as its ServiceAccount, so every test here also proves the RBAC is enough.
/// Tests use distinct pools and nodes.
async fn controller() -> &'static ControllerProcess {
    static CONTROLLER: OnceCell<ControllerProcess> = OnceCell::const_new();
    CONTROLLER
        .get_or_init(|| async {
            let server = ApiServer::shared().await;
            let rbac: Vec<Value> = kiln::deploy::manifests(&kiln::deploy::Install::default())
                .into_iter()
                .filter(|m| m["kind"] != "Deployment" && m["kind"] != "BuilderPool")
                .collect();
            let yaml: String = rbac
                .iter()
                .map(|m| format!("---\n{}", serde_yaml::to_string(m).expect("yaml")))
                .collect();
            server.apply_manifests(&yaml);
            let kubeconfig = server.service_account_kubeconfig(NS, "kiln-controller").await;
            ControllerProcess::start_with(server, &kubeconfig, NS, "pool-tests", &["--no-leader-election"])
        })
        .await
}

fn id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..6].to_owned()
}

async fn node(client: &Client, name: &str, runtime: &str, labels: Value) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).expect("node");
    nodes.create(&PostParams::default(), &node).await.expect("create node");
    let status = json!({"status": {"nodeInfo": {
        "containerRuntimeVersion": runtime, "architecture": "amd64", "operatingSystem": "linux",
        "bootID": "", "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "v1.20.2",
        "machineID": "", "osImage": "", "systemUUID": ""}}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("node status");
}

async fn pool(client: &Client, name: &str, spec: Value) -> BuilderPool {
    let pool =
        json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "BuilderPool", "metadata": {"name": name}, "spec": spec});
    Api::<BuilderPool>::all(client.clone())
        .patch(name, &PatchParams::apply("kiln-test").force(), &Patch::Apply(&pool))
        .await
        .expect("apply pool")
}

async fn daemonset(client: &Client, name: &str) -> Value {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), NS);
    let ds = eventually(WAIT, &format!("DaemonSet {name}"), || async {
        api.get_opt(name).await.ok().flatten()
    })
    .await;
    serde_json::to_value(ds).expect("json")
}

fn mount_paths(ds: &Value, container: &str) -> Vec<(String, String)> {
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let c = containers
        .iter()
        .find(|c| c["name"] == container)
        .unwrap_or_else(|| panic!("container {container}"));
    c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap_or_default().into(),
                m["mountPropagation"].as_str().unwrap_or("None").into(),
            )
        })
        .collect()
}

#[tokio::test]
async fn each_runtime_gets_a_daemonset_with_its_own_mounts_and_node_affinity() {
    let server = ApiServer::shared().await;
    let ctl = controller().await;
    let client = server.client().await;
    let t = id();
    let sel = json!({"kiln.dev/test": t});
    node(&client, &format!("ctrd-{t}"), "containerd://1.7.1", sel.clone()).await;
    node(&client, &format!("k3s-{t}"), "containerd://1.7.11-k3s2", sel.clone()).await;
    let mut mk8s = sel.clone();
    mk8s["microk8s.io/cluster"] = json!("true");
    node(&client, &format!("mk8s-{t}"), "containerd://1.6.15", mk8s).await;
    node(&client, &format!("dock-{t}"), "docker://20.10.24", sel.clone()).await;
    node(&client, &format!("crio-{t}"), "cri-o://1.28.1", sel.clone()).await;
    let name = format!("mixed-{t}");
    pool(&client, &name, json!({"nodeSelector": sel})).await;

    containerd_flavours_mount_their_own_paths(&client, &name, &t).await;
    docker_nodes_use_the_docker_socket(&client, &name).await;
    nodes_are_labelled_and_cri_o_is_reported(&client, &name, &t).await;
    assert_eq!(
        ctl.counter("kiln_reconcile_errors_total", &[]),
        0.0,
        "{}",
        ctl.log_tail()
    );
}

/// containerd, k3s and microk8s nodes each get a DaemonSet pinned to their flavour (node
/// affinity on the runtime label, beside the pool's selector), whose buildkitd mounts that
/// flavour's state directory and the pool's, and whose config points at that flavour's socket.
async fn containerd_flavours_mount_their_own_paths(client: &Client, name: &str, t: &str) {
    let expect = [
        ("containerd", "/run/containerd/containerd.sock", "/var/lib/containerd"),
        ("k3s", "/run/k3s/containerd/containerd.sock", "/var/lib/rancher"),
        (
            "microk8s",
            "/var/snap/microk8s/common/run/containerd.sock",
            "/var/snap/microk8s/common/var/lib/containerd",
        ),
    ];
    for (flavour, socket, state) in expect {
        let ds = daemonset(client, &format!("kiln-builder-{name}-{flavour}")).await;
        let terms = &ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"];
        assert_eq!(
            terms[0]["matchExpressions"][0],
            json!({"key": "kiln.dev/runtime", "operator": "In", "values": [flavour]})
        );
        assert_eq!(
            ds["spec"]["template"]["spec"]["nodeSelector"]["kiln.dev/test"],
            json!(t)
        );
        let mounts = mount_paths(&ds, "buildkitd");
        assert!(
            mounts.contains(&(state.into(), "Bidirectional".into())),
            "{flavour}: {mounts:?}"
        );
        assert!(
            mounts.contains(&(format!("/var/lib/kiln/pools/{name}"), "Bidirectional".into())),
            "{flavour}: {mounts:?}"
        );
        let configs: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
        let config = configs
            .get(&format!("kiln-builder-{name}-{flavour}"))
            .await
            .expect("buildkitd config");
        let toml = config
            .data
            .unwrap_or_default()
            .remove("buildkitd.toml")
            .unwrap_or_default();
        assert!(toml.contains(&format!("address = \"{socket}\"")), "{flavour}: {toml}");
        assert!(toml.contains("namespace = \"k8s.io\""), "{toml}");
    }
}

/// Docker nodes need no buildkitd: one container, the agent, on the node's Docker socket.
async fn docker_nodes_use_the_docker_socket(client: &Client, name: &str) {
    let docker = daemonset(client, &format!("kiln-builder-{name}-docker")).await;
    let containers = docker["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "Docker nodes need no buildkitd");
    assert!(
        containers[0]["args"]
            .as_array()
            .expect("args")
            .contains(&json!("--buildkit-addr=docker-unix:///var/run/docker.sock"))
    );
    assert!(mount_paths(&docker, "agent").contains(&("/var/run/docker.sock".into(), "None".into())));
}

/// Nodes carry their detected runtime; the CRI-O node is reported in the pool's status, not
/// skipped, and not counted as a node that should have a builder.
async fn nodes_are_labelled_and_cri_o_is_reported(client: &Client, name: &str, t: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let k3s = nodes.get(&format!("k3s-{t}")).await.expect("node");
    assert_eq!(k3s.labels().get("kiln.dev/runtime").map(String::as_str), Some("k3s"));
    let pools: Api<BuilderPool> = Api::all(client.clone());
    let status = eventually(WAIT, "pool status", || async {
        pools
            .get(name)
            .await
            .ok()
            .and_then(|p| p.status)
            .filter(|s| s.nodes.len() == 5)
    })
    .await;
    assert_eq!((status.desired_nodes, status.ready_nodes), (4, 0));
    let crio = status
        .nodes
        .iter()
        .find(|n| n.name == format!("crio-{t}"))
        .expect("cri-o node listed");
    assert!(crio.message.as_deref().is_some_and(|m| m.contains("CRI-O")), "{crio:?}");
}

#[tokio::test]
async fn pool_changes_roll_into_the_daemonset_and_an_unchanged_pool_writes_nothing() {
    let server = ApiServer::shared().await;
    let ctl = controller().await;
    let client = server.client().await;
    let t = id();
    node(
        &client,
        &format!("n-{t}"),
        "containerd://1.7.1",
        json!({"kiln.dev/test": t}),
    )
    .await;
    let name = format!("edit-{t}");
    let ds_name = format!("kiln-builder-{name}-containerd");
    let created = pool(
        &client,
        &name,
        json!({"nodeSelector": {"kiln.dev/test": t}, "runtime": {"kind": "Containerd"}}),
    )
    .await;
    let first = daemonset(&client, &ds_name).await;
    assert!(
        first["spec"]["template"]["spec"]["affinity"].is_null(),
        "an explicit runtime selects no runtime label"
    );
    let owner = &first["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["uid"].as_str()),
        (Some("BuilderPool"), created.metadata.uid.as_deref())
    );
    assert_eq!(owner["controller"], true);

    an_edit_rolls_the_daemonset(&client, &name, &t, &first).await;
    an_unchanged_pool_writes_nothing(&client, ctl, &name, &t).await;

    // Deleting the pool leaves the DaemonSet to the garbage collector (none runs here).
    Api::<BuilderPool>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), NS);
    let orphan = api
        .get(&ds_name)
        .await
        .expect("DaemonSet still there without a garbage collector");
    assert_eq!(
        orphan.owner_references()[0].uid,
        created.metadata.uid.clone().unwrap_or_default()
    );
}

/// A new BuildKit image, tolerations and GC settings reach the DaemonSet and its config; the
/// config's hash on the pod template changes, so the pods roll.
async fn an_edit_rolls_the_daemonset(client: &Client, name: &str, t: &str, first: &Value) {
    let ds_name = format!("kiln-builder-{name}-containerd");
    pool(
        client,
        name,
        json!({"nodeSelector": {"kiln.dev/test": t}, "runtime": {"kind": "Containerd"},
               "buildkitImage": "moby/buildkit:v0.18.1",
               "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "builds", "effect": "NoSchedule"}],
               "gc": {"keepDuration": "24h", "keepStorageMiB": 512}}),
    )
    .await;
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), NS);
    let updated = eventually(WAIT, "DaemonSet update", || async {
        let ds = serde_json::to_value(api.get(&ds_name).await.ok()?).ok()?;
        (ds["spec"]["template"]["spec"]["containers"][0]["image"] == "moby/buildkit:v0.18.1").then_some(ds)
    })
    .await;
    assert_eq!(
        updated["spec"]["template"]["spec"]["tolerations"][0]["key"],
        "dedicated"
    );
    assert_ne!(
        updated["spec"]["template"]["metadata"]["annotations"]["kiln.dev/config-hash"],
        first["spec"]["template"]["metadata"]["annotations"]["kiln.dev/config-hash"],
        "a GC change rolls the pods"
    );
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let toml = configs
        .get(&ds_name)
        .await
        .expect("config")
        .data
        .unwrap_or_default()
        .remove("buildkitd.toml")
        .unwrap_or_default();
    assert!(
        toml.contains("keepDuration = 86400") && toml.contains("gckeepstorage = 512"),
        "{toml}"
    );
}

/// Once the controller has settled, a reconcile of an unchanged pool (an annotation touched)
/// writes neither the DaemonSet nor the pool's status.
async fn an_unchanged_pool_writes_nothing(client: &Client, ctl: &ControllerProcess, name: &str, t: &str) {
    let ds_name = format!("kiln-builder-{name}-containerd");
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), NS);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = api.get(&ds_name).await.expect("ds").resource_version();
    let pool_before = Api::<BuilderPool>::all(client.clone()).get(name).await.expect("pool");
    let reconciles = ctl.counter("kiln_reconciles_total", &["builderpool", "success"]);
    let touch = json!({"metadata": {"annotations": {"test/touch": t}}});
    Api::<BuilderPool>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .expect("touch pool");
    eventually(WAIT, "another reconcile", || async {
        (ctl.counter("kiln_reconciles_total", &["builderpool", "success"]) > reconciles).then_some(())
    })
    .await;
    assert_eq!(
        api.get(&ds_name).await.expect("ds").resource_version(),
        before,
        "re-applying the same DaemonSet wrote nothing"
    );
    let pool_after = Api::<BuilderPool>::all(client.clone()).get(name).await.expect("pool");
    assert_eq!(pool_after.status, pool_before.status, "status unchanged");
}

#[tokio::test]
async fn heartbeats_make_builders_ready_and_their_expiry_makes_them_not_ready() {
    let server = ApiServer::shared().await;
    controller().await;
    let client = server.client().await;
    let t = id();
    let node_name = format!("hb-{t}");
    node(&client, &node_name, "docker://20.10.24", json!({"kiln.dev/test": t})).await;
    let name = format!("beat-{t}");
    pool(&client, &name, json!({"nodeSelector": {"kiln.dev/test": t}})).await;
    let pools: Api<BuilderPool> = Api::all(client.clone());

    // A heartbeat as the agent writes it (the agent's own test drives this with real BuildKit).
    let capacity = Capacity {
        max_concurrent_builds: 2,
        platforms: vec!["linux/amd64".into()],
        worker: "moby".into(),
        ..Default::default()
    };
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(heartbeat::lease_name(&name, &node_name)),
            labels: Some(
                [
                    (HEARTBEAT_LABEL.into(), "true".into()),
                    (heartbeat::POOL_LABEL.into(), name.clone()),
                    (heartbeat::NODE_LABEL.into(), node_name.clone()),
                ]
                .into(),
            ),
            annotations: Some(
                [(
                    CAPACITY_ANNOTATION.into(),
                    serde_json::to_string(&capacity).expect("json"),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("agent".into()),
            lease_duration_seconds: Some(4),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..Default::default()
        }),
    };
    Api::<Lease>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &lease)
        .await
        .expect("lease");
    let ready = eventually(WAIT, "ready builder", || async {
        pools
            .get(&name)
            .await
            .ok()
            .and_then(|p| p.status)
            .filter(|s| s.ready_nodes == 1)
    })
    .await;
    assert_eq!(ready.nodes[0].platforms, ["linux/amd64"]);
    assert_eq!(ready.nodes[0].capacity, Some(2));
    assert!(kiln::api::conditions::is_true(&ready.conditions, "Ready"));

    // No renewal: within the lease duration (4 s) plus a little, the builder is not ready.
    let stale = eventually(Duration::from_secs(8), "expired heartbeat", || async {
        pools
            .get(&name)
            .await
            .ok()
            .and_then(|p| p.status)
            .filter(|s| s.ready_nodes == 0)
    })
    .await;
    assert!(!kiln::api::conditions::is_true(&stale.conditions, "Ready"));
}

//! A containerd-flavour pool in the cluster: what it renders (the runtime's directories and its
//! state directory mounted Bidirectional, buildkitd's configuration) and that its agent starts.

use serde_json::{Value, json};

use crate::SERIAL;
use crate::cluster::{Cluster, env, eventually};
use crate::kiln_cluster::{
    DeleteOnDrop, SYSTEM_NS, WAIT, builder_pods, buildkitd_starts, container_running, get_json, install, pool_settings,
    setup,
};

/// A containerd-flavour pool renders buildkitd with the runtime's directories and its own state
/// directory mounted Bidirectional, and its agent container starts. buildkitd itself runs only
/// where its image can be pulled; where it cannot, the test says so and stops there.
#[tokio::test]
#[ignore = "needs a real cluster: run `make e2e-cluster` (or set KILN_E2E_KUBECONFIG)"]
async fn containerd_builders_mount_the_runtime_and_start_their_agent() {
    let Some((cluster, image)) = setup() else { return };
    let _turn = SERIAL.lock().await;
    install(&cluster, &image);
    let runtime = Runtime::from_env();
    let pool_name = "e2e-containerd";
    let mut pool = json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "BuilderPool",
        "metadata": {"name": pool_name},
        "spec": {"runtime": {"kind": "Containerd", "socket": runtime.socket}, "maxConcurrentBuilds": 1},
    });
    pool_settings(&mut pool);
    pool["spec"]["runtime"]["socket"] = json!(runtime.socket);
    pool["spec"]["runtime"]["root"] = json!(runtime.root);
    cluster.apply(&pool.to_string());
    let _cleanup = DeleteOnDrop(&cluster, format!("builderpool/{pool_name}"));

    let ds_name = format!("kiln-builder-{pool_name}-containerd");
    let ds = eventually(&format!("DaemonSet {ds_name}"), WAIT, || {
        let out = cluster.kubectl_output(&["-n", SYSTEM_NS, "get", "daemonset", &ds_name, "-o", "json"], None);
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).expect("json"))
    });
    let state_dir = runtime_mounted_bidirectional(&ds, &runtime);
    buildkitd_configured(&cluster, &ds_name, &runtime, &state_dir);
    builder_runs_or_explains(&cluster, pool_name);
}

/// The node's containerd, from the environment (the module table in `main.rs`).
struct Runtime {
    socket: String,
    root: String,
}

impl Runtime {
    fn from_env() -> Self {
        Runtime {
            socket: env("KILN_E2E_CONTAINERD_SOCKET").unwrap_or_else(|| "/run/containerd/containerd.sock".into()),
            root: env("KILN_E2E_CONTAINERD_ROOT").unwrap_or_else(|| "/var/lib/containerd".into()),
        }
    }

    fn socket_dir(&self) -> String {
        std::path::Path::new(&self.socket)
            .parent()
            .and_then(|p| p.to_str())
            .expect("socket has a directory")
            .to_owned()
    }
}

/// buildkitd (the first container, beside the agent) mounts the socket's directory, the
/// runtime's root and the pool's state directory Bidirectional, each where it is on the host;
/// returns the state directory.
fn runtime_mounted_bidirectional(ds: &Value, runtime: &Runtime) -> String {
    let spec = &ds["spec"]["template"]["spec"];
    let containers = spec["containers"].as_array().expect("containers");
    let names: Vec<_> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["buildkitd", "agent"]);
    let host_path = |volume: &str| {
        spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == volume)
            .and_then(|v| v["hostPath"]["path"].as_str())
            .map(str::to_owned)
    };
    let bidirectional: Vec<String> = containers[0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["mountPropagation"] == "Bidirectional")
        .map(|m| {
            let path = m["mountPath"].as_str().unwrap_or_default();
            assert_eq!(
                host_path(m["name"].as_str().unwrap_or_default()).as_deref(),
                Some(path),
                "mounted where it is on the host"
            );
            path.to_owned()
        })
        .collect();
    let socket_dir = runtime.socket_dir();
    assert!(bidirectional.contains(&socket_dir), "{socket_dir} in {bidirectional:?}");
    assert!(
        bidirectional.contains(&runtime.root),
        "{} in {bidirectional:?}",
        runtime.root
    );
    let state_dir = host_path("state").expect("a state volume");
    assert!(bidirectional.contains(&state_dir), "{bidirectional:?}");
    state_dir
}

/// buildkitd's configuration (the DaemonSet's ConfigMap) points its containerd worker at the
/// node's socket, in the kubelet's namespace, with its state in the pool's directory.
fn buildkitd_configured(cluster: &Cluster, ds_name: &str, runtime: &Runtime, state_dir: &str) {
    let config = cluster.kubectl_ok(&[
        "-n",
        SYSTEM_NS,
        "get",
        "configmap",
        ds_name,
        "-o",
        "jsonpath={.data.buildkitd\\.toml}",
    ]);
    assert!(
        config.contains(&format!("address = \"{}\"", runtime.socket)),
        "{config}"
    );
    assert!(config.contains("namespace = \"k8s.io\""), "{config}");
    assert!(config.contains(&format!("root = \"{state_dir}/buildkit\"")), "{config}");
}

/// The agent container starts; buildkitd starts where its image can be had and the pool turns
/// Ready. Where it cannot, the agent logs what it waits for and the pool's Ready condition
/// says why, in the kubelet's words.
fn builder_runs_or_explains(cluster: &Cluster, pool_name: &str) {
    let pod = eventually("the containerd builder's agent container to run", WAIT, || {
        builder_pods(cluster, pool_name)
            .into_iter()
            .find(|p| container_running(p, "agent"))
    });
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let Err(why) = buildkitd_starts(cluster, &pod) else {
        cluster.wait_for(SYSTEM_NS, &format!("builderpool/{pool_name}"), "condition=Ready", WAIT);
        return;
    };
    eprintln!("SKIPPED (buildkitd of the containerd pool): {why}; rendering and the agent were checked");
    let agent_log = cluster.kubectl_ok(&["-n", SYSTEM_NS, "logs", &pod_name, "-c", "agent", "--tail=20"]);
    assert!(!agent_log.trim().is_empty(), "the agent logs what it waits for");
    let message = eventually("the pool's Ready condition to name the image problem", WAIT, || {
        let pool = get_json(cluster, &["get", "builderpool", pool_name]);
        let ready = pool["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        let message = ready["message"].as_str()?.to_owned();
        (ready["status"] == "False" && (message.contains("ErrImagePull") || message.contains("ImagePullBackOff")))
            .then_some(message)
    });
    assert!(message.contains("container buildkitd is waiting"), "{message}");
    eprintln!("pool {pool_name} Ready=False: {message}");
}

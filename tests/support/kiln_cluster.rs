//! kiln installed in a real cluster, for `tests/cluster_kiln/main.rs`: installing it from its own
//! manifests with the cluster's pool settings (see that file's table), finding builder pods
//! and what keeps them from running, serving build contexts, and `kubectl apply` + `kubectl
//! wait` of ImageBuilds. Included with `#[path]` next to `cluster.rs` and `http.rs`.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::cluster::{Cluster, env, eventually};
use super::http;
use super::process::run;

/// kiln's namespace, as `kiln manifests` installs it.
pub const SYSTEM_NS: &str = "kiln-system";
/// How long the cluster gets for each step.
pub const WAIT: Duration = Duration::from_secs(180);

/// Runs this workspace's `kiln ARGS` and returns stdout.
pub fn kiln(args: &[&str]) -> String {
    run(env!("CARGO_BIN_EXE_kiln"), args)
}

/// `kubectl get … -o json` as a value.
pub fn get_json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&cluster.kubectl_ok(&all)).expect("kubectl -o json")
}

/// The cluster under test and the kiln image, or `None` (reason printed) when either is missing.
pub fn setup() -> Option<(Cluster, String)> {
    let cluster = Cluster::from_env()?;
    let Some(image) = cluster.kiln_image.clone() else {
        eprintln!("SKIPPED: KILN_E2E_KILN_IMAGE is not set (make e2e-cluster builds and loads it)");
        return None;
    };
    Some((cluster, image))
}

/// The install manifests of `kiln manifests` for `image`, with the default pool adjusted to
/// this cluster (the variables in `tests/cluster_kiln/main.rs`).
pub fn manifests(image: &str) -> Value {
    let yaml = kiln(&["manifests", "--image", image]);
    let mut items = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        let mut obj: Value = serde::Deserialize::deserialize(doc).expect("manifests are YAML");
        if obj["kind"] == "BuilderPool" {
            pool_settings(&mut obj);
        }
        items.push(obj);
    }
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// Puts the cluster's pool settings (the variables in `tests/cluster_kiln/main.rs`) into a
/// BuilderPool object.
pub fn pool_settings(pool: &mut Value) {
    let name = pool["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let spec = &mut pool["spec"];
    if let Some(socket) = env("KILN_E2E_POOL_RUNTIME_SOCKET") {
        spec["runtime"]["socket"] = json!(socket);
    }
    if let Some(network) = env("KILN_E2E_POOL_RUN_NETWORK") {
        spec["runNetwork"] = json!(network);
    }
    if let Some(root) = env("KILN_E2E_POOL_RUNTIME_ROOT") {
        spec["runtime"]["root"] = json!(root);
    }
    if let Some(root) = env("KILN_E2E_POOL_STATE_ROOT") {
        spec["stateDir"] = json!(format!("{root}/{name}"));
    }
    if let Some(image) = env("KILN_E2E_BUILDKIT_IMAGE") {
        spec["buildkitImage"] = json!(image);
    }
}

/// Installs kiln the way the README says (CRDs for the server's version, then the manifests)
/// and waits for the controller to be Ready. Idempotent.
pub fn install(cluster: &Cluster, image: &str) {
    let version = get_json(cluster, &["version"]);
    let server = &version["serverVersion"];
    let minor = server["minor"].as_str().unwrap_or_default().trim_end_matches('+');
    let crds = kiln(&["crds", "--kube-version", &format!("1.{minor}")]);
    cluster.kubectl_stdin_ok(&["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(&crds));
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/imagebuilds.kiln.dev",
        "crd/nodebuilds.kiln.dev",
        "crd/builderpools.kiln.dev",
    ]);
    cluster.apply(&manifests(image).to_string());
    cluster.rollout_status(SYSTEM_NS, "deployment/kiln-controller", WAIT);
}

/// The builder pods of `pool`, once its DaemonSet exists and has scheduled one.
pub fn builder_pods(cluster: &Cluster, pool: &str) -> Vec<Value> {
    eventually(&format!("a builder pod of pool {pool}"), WAIT, || {
        let pods = get_json(
            cluster,
            &["-n", SYSTEM_NS, "get", "pods", "-l", &format!("kiln.dev/pool={pool}")],
        );
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        (!items.is_empty()).then_some(items)
    })
}

/// Why the pod's `buildkitd` container cannot start because its image cannot be had (no
/// registry reachable), if that is the case.
pub fn buildkitd_image_unavailable(pod: &Value) -> Option<String> {
    let statuses = pod["status"]["containerStatuses"].as_array()?;
    let bk = statuses.iter().find(|c| c["name"] == "buildkitd")?;
    let waiting = &bk["state"]["waiting"];
    let reason = waiting["reason"].as_str()?;
    matches!(
        reason,
        "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" | "InvalidImageName"
    )
    .then(|| {
        format!(
            "the BuildKit image {} cannot be pulled here (no registry reachable): {reason}: {}",
            bk["image"].as_str().unwrap_or("?"),
            waiting["message"].as_str().unwrap_or("")
        )
    })
}

/// Waits until the builder pod's `buildkitd` runs (`Ok`, also when the pod has none, as on
/// Docker nodes) or cannot, for want of its image (`Err` with the kubelet's reason). Anything
/// else (a mount that fails, a crash) times out with the namespace's pods and events.
pub fn buildkitd_starts(cluster: &Cluster, pod: &Value) -> Result<(), String> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let has_buildkitd = pod["spec"]["containers"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["name"] == "buildkitd"));
    if !has_buildkitd {
        return Ok(());
    }
    let deadline = Instant::now() + WAIT;
    let pool = pod["metadata"]["labels"]["kiln.dev/pool"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut name = name;
    loop {
        let out = cluster.kubectl_output(&["-n", SYSTEM_NS, "get", "pod", &name, "-o", "json"], None);
        if !out.status.success() {
            // Replaced meanwhile (a rollout of an install left from an earlier run): follow
            // the pool's newest pod.
            let newest = builder_pods(cluster, &pool)
                .into_iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .max_by_key(|p| {
                    p["metadata"]["creationTimestamp"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                });
            if let Some(n) = newest.and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned)) {
                name = n;
            }
            assert!(
                Instant::now() < deadline,
                "no builder pod of pool {pool} stays:\n{}",
                cluster.diagnose(SYSTEM_NS)
            );
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        let pod: Value = serde_json::from_slice(&out.stdout).expect("pod JSON");
        if container_running(&pod, "buildkitd") {
            return Ok(());
        }
        if let Some(why) = buildkitd_image_unavailable(&pod) {
            return Err(why);
        }
        assert!(
            Instant::now() < deadline,
            "buildkitd of {name} neither runs nor waits for its image:\n{}",
            cluster.diagnose(SYSTEM_NS)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Container `name` of `pod` is running.
pub fn container_running(pod: &Value, name: &str) -> bool {
    pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == name && c["state"]["running"].is_object())
}

/// PIDs of processes on this machine whose command line contains `needle`.
pub fn host_processes_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// An `ImageBuild` of `image` from the context at `url`, with this Dockerfile.
pub fn image_build(ns: &str, name: &str, image: &str, url: &str, dockerfile: &str) -> String {
    json!({
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "image": image,
            "source": {"http": {"url": url}},
            "dockerfileInline": dockerfile,
            "backoffLimit": 0,
        },
    })
    .to_string()
}

/// Where BuildKit fetches the build context from: on the local cluster a file server of this
/// test, on the loopback where dockerd (which shares the host's network) builds, else on the
/// node's IP, which buildkitd reaches from its pod; on another cluster a busybox httpd Pod, at
/// the pod's address.
///
/// Why not the Pod everywhere: for static files busybox's httpd sends ETags but answers a
/// conditional GET with a 304 that carries none. The BuildKit of Docker 20.10 keeps the ETags
/// of every HTTP context it fetched under one key (the file name, "context"), asks with all of
/// them, and rejects such a 304 ("invalid not-modified ETag") once it holds more than one,
/// so a second run on the same dockerd would fail. The test's server answers correctly.
pub enum Context {
    /// The test's own server on the loopback.
    Local(http::FileServer),
    /// A busybox httpd Pod, at this URL.
    Pod(String),
}

impl Context {
    /// Starts serving a one-file context for the tests of namespace `ns`.
    pub fn start(cluster: &Cluster, ns: &str) -> Context {
        Self::start_with(cluster, ns, &[("hello.txt", b"hello\n")])
    }

    /// Starts serving a context of these files for the tests of namespace `ns`.
    pub fn start_with(cluster: &Cluster, ns: &str, files: &[(&str, &[u8])]) -> Context {
        if cluster.local {
            let tar = http::tar(files);
            let host = match env("KILN_CLUSTER_RUNTIME").as_deref() {
                Some("docker") => "127.0.0.1".to_owned(),
                _ => env("KILN_CLUSTER_NODE_IP").unwrap_or_else(|| "127.0.0.1".into()),
            };
            Context::Local(http::FileServer::start_on(&host, &[("/ctx.tar", tar)]))
        } else {
            Context::Pod(context_pod(cluster, ns, files))
        }
    }

    /// The context's URL, as BuildKit on the node reaches it.
    pub fn url(&self) -> String {
        match self {
            Context::Local(server) => server.url("/ctx.tar"),
            Context::Pod(url) => url.clone(),
        }
    }
}

/// A busybox httpd Pod in `ns` serving a build context (`/ctx.tar`, one file); returns the
/// context's URL, reachable from the node (BuildKit fetches it).
pub fn context_pod(cluster: &Cluster, ns: &str, files: &[(&str, &[u8])]) -> String {
    use base64::Engine;
    let writes: String = files
        .iter()
        .map(|(name, data)| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(data);
            format!("echo {b64} | base64 -d > /ctx/{name} && ")
        })
        .collect();
    let script =
        format!("mkdir -p /www /ctx && {writes}tar -cf /www/ctx.tar -C /ctx . && exec httpd -f -p 8080 -h /www");
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "context", "namespace": ns},
        "spec": {"containers": [{
            "name": "httpd",
            "image": cluster.busybox_image,
            "imagePullPolicy": cluster.pull_policy,
            "command": ["sh", "-c", script],
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ctx.tar", "port": 8080}, "periodSeconds": 1},
        }]},
    });
    cluster.apply(&pod.to_string());
    cluster.wait_for(ns, "pod/context", "condition=Ready", WAIT);
    // The pod's own address: the node reaches it over the pod network, with no wait for
    // Service endpoints and kube-proxy rules to catch up.
    let ip = cluster.kubectl_ok(&["-n", ns, "get", "pod", "context", "-o", "jsonpath={.status.podIP}"]);
    format!("http://{}:8080/ctx.tar", ip.trim())
}

/// `kubectl apply` + `kubectl wait --for=condition=Ready` of a fresh ImageBuild; returns the
/// time from apply to wait's return. Fails at once if the build stalls instead.
pub fn apply_and_wait_ready(cluster: &Cluster, ns: &str, yaml: &str, name: &str) -> Duration {
    let start = Instant::now();
    cluster.apply(yaml);
    let what = format!("imagebuild/{name}");
    let mut wait = cluster
        .kubectl()
        .args(["-n", ns, "wait", "--for=condition=Ready", &what, "--timeout=300s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl wait");
    let mut last_check = Instant::now();
    let status = loop {
        if let Some(status) = wait.try_wait().expect("kubectl wait") {
            break status;
        }
        if last_check.elapsed() > Duration::from_secs(2) {
            last_check = Instant::now();
            let stalled = cluster.kubectl_output(
                &[
                    "-n",
                    ns,
                    "get",
                    &what,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Stalled\")].status}",
                ],
                None,
            );
            if String::from_utf8_lossy(&stalled.stdout).trim() == "True" {
                let _ = wait.kill();
                let _ = wait.wait();
                panic!(
                    "{what} stalled instead of becoming Ready:\n{}",
                    build_diagnostics(cluster, ns, name)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    if !status.success() {
        let mut err = String::new();
        let _ = wait.stderr.take().map(|mut e| e.read_to_string(&mut err));
        panic!(
            "{what} did not become Ready: {err}\n{}",
            build_diagnostics(cluster, ns, name)
        );
    }
    took
}

/// The ImageBuild as YAML plus the controller's and agents' logs, for failure messages.
pub fn build_diagnostics(cluster: &Cluster, ns: &str, name: &str) -> String {
    let yaml = cluster.kubectl_output(&["-n", ns, "get", "imagebuild", name, "-o", "yaml"], None);
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&yaml.stdout),
        controller_logs(cluster)
    )
}

/// The last lines of the controller's and the agents' logs, for failure messages.
pub fn controller_logs(cluster: &Cluster) -> String {
    let logs = |selector: &str| {
        let out = cluster.kubectl_output(
            &["-n", SYSTEM_NS, "logs", "-l", selector, "--all-containers", "--tail=40"],
            None,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    format!(
        "--- controller:\n{}\n--- builders:\n{}",
        logs("app.kubernetes.io/component=controller"),
        logs("app.kubernetes.io/component=builder")
    )
}

/// Deletes a cluster object (without waiting) when dropped.
pub struct DeleteOnDrop<'a>(pub &'a Cluster, pub String);

impl Drop for DeleteOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .kubectl_output(&["delete", &self.1, "--ignore-not-found", "--wait=false"], None);
    }
}

/// Packets the local cluster's guards rejected so far (iptables chains `KILN-CLUSTER-OUT` and
/// `KILN-CLUSTER-FWD`: anything a pod or a cluster process sent off the pod network, DNS
/// included), or `None` when they cannot be read (not the local cluster, or not root).
pub fn rejected_packets() -> Option<u64> {
    let mut total = 0;
    for chain in ["KILN-CLUSTER-OUT", "KILN-CLUSTER-FWD"] {
        let out = std::process::Command::new("iptables")
            .args(["-w", "5", "-L", chain, "-v", "-x", "-n"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        total += String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.split_whitespace().nth(2) == Some("REJECT"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

/// The manifest digest containerd records for `image` in namespace `k8s.io`, when the local
/// cluster runs containerd.
pub fn containerd_manifest_digest(image: &str) -> Option<String> {
    let address = env("KILN_CLUSTER_CONTAINERD_ADDRESS")?;
    let out = run(
        "ctr",
        &[
            "-a",
            &address,
            "-n",
            "k8s.io",
            "images",
            "ls",
            &format!("name=={image}"),
        ],
    );
    out.lines()
        .skip(1)
        .find_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
}

//! A real Kubernetes cluster for end-to-end tests: the local one that `make cluster-up` starts
//! (hack/cluster/), or any cluster a kubeconfig points at (k3d, kind, Rancher Desktop...).
//!
//! Tests run only when `KILN_E2E_KUBECONFIG` names a kubeconfig; `make e2e-cluster` sets it,
//! together with the facts of the local cluster (from `$KILN_CLUSTER_DIR/cluster.env`):
//!
//! | variable                     | meaning                                        | default        |
//! |------------------------------|------------------------------------------------|----------------|
//! | `KILN_E2E_KUBECONFIG`        | the cluster to test                            | (skip)         |
//! | `KILN_E2E_BUSYBOX_IMAGE`     | a busybox image present on the nodes           | `busybox:1.36` |
//! | `KILN_E2E_IMAGE_PULL_POLICY` | pull policy for test images                    | `Never` on the local cluster, else `IfNotPresent` |
//! | `KILN_E2E_HOSTPATH_DIR`      | where hostPath volumes with Bidirectional propagation may live (a shared mount) | `/var/lib/kiln-e2e` |
//! | `KILN_E2E_KILN_IMAGE`        | the kiln image, loaded on the nodes            | (tests needing it skip) |
//! | `KILN_E2E_LOCAL_CLUSTER`     | `1`: the local cluster on this machine, so tests may also look at the host | unset |
//!
//! Tests drive the cluster the way a user does: with `kubectl` (the one on `PATH`, or
//! `$KUBECTL`) for apply/wait/logs/exec/port-forward, and a kube-rs client where an API check
//! reads better in Rust. Each test works in its own namespace, deleted (without waiting) when
//! the test ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// How long a Pod run by `run_pod` may take.
const POD_WAIT: Duration = Duration::from_secs(180);

/// The cluster under test.
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub busybox_image: String,
    pub pull_policy: String,
    pub hostpath_dir: String,
    pub kiln_image: Option<String>,
    /// True for the local cluster of hack/cluster on this machine.
    pub local: bool,
}

/// An environment variable, if set and not empty.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Cluster {
    /// The cluster named by `KILN_E2E_KUBECONFIG`, or `None` (reason printed) without one.
    pub fn from_env() -> Option<Cluster> {
        let Some(kubeconfig) = env("KILN_E2E_KUBECONFIG") else {
            eprintln!(
                "SKIPPED: no cluster: KILN_E2E_KUBECONFIG is not set. Run `make e2e-cluster` \
                 (starts a local cluster, or uses $KUBECONFIG's)."
            );
            return None;
        };
        let kubeconfig = PathBuf::from(kubeconfig);
        assert!(
            kubeconfig.is_file(),
            "KILN_E2E_KUBECONFIG={} does not exist (is the cluster up? `make cluster-up`)",
            kubeconfig.display()
        );
        let local = env("KILN_E2E_LOCAL_CLUSTER").as_deref() == Some("1");
        Some(Cluster {
            kubeconfig,
            busybox_image: env("KILN_E2E_BUSYBOX_IMAGE").unwrap_or_else(|| "busybox:1.36".into()),
            pull_policy: env("KILN_E2E_IMAGE_PULL_POLICY")
                .unwrap_or_else(|| if local { "Never" } else { "IfNotPresent" }.into()),
            hostpath_dir: env("KILN_E2E_HOSTPATH_DIR").unwrap_or_else(|| "/var/lib/kiln-e2e".into()),
            kiln_image: env("KILN_E2E_KILN_IMAGE"),
            local,
        })
    }

    /// A kube-rs client for the cluster's admin.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("read the kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig to client config");
        Client::try_from(config).expect("kube client")
    }

    /// A `kubectl` command for this cluster.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(env("KUBECTL").unwrap_or_else(|| "kubectl".into()));
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// Runs `kubectl ARGS` (with `stdin`, if any) and returns its output, whatever the status.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = self.kubectl();
        cmd.args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl on PATH");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(input.as_bytes())
                .expect("write kubectl's stdin");
        }
        child.wait_with_output().expect("wait for kubectl")
    }

    /// Runs `kubectl ARGS`, asserts success and returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl_stdin_ok(args, None)
    }

    /// Runs `kubectl ARGS` with `stdin`, asserts success and returns stdout.
    pub fn kubectl_stdin_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_output(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Names (`kind/name`) of the `kind` objects in `ns` whose labels match `selector`.
    pub fn names(&self, ns: &str, kind: &str, selector: &str) -> Vec<String> {
        self.kubectl_ok(&["-n", ns, "get", kind, "-l", selector, "-o", "name"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Runs `image` as Pod `name` in `ns` straight from the node's store (imagePullPolicy
    /// Never), on `node` if given, until it succeeds; returns its log and the image ID the
    /// kubelet reports for it.
    pub fn run_pod(&self, ns: &str, name: &str, image: &str, node: Option<&str>) -> (String, String) {
        let mut spec = serde_json::json!({
            "restartPolicy": "Never",
            "containers": [{"name": name, "image": image, "imagePullPolicy": "Never"}],
        });
        if let Some(node) = node {
            spec["nodeName"] = node.into();
        }
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns}, "spec": spec});
        self.apply(&pod.to_string());
        self.wait_for(
            ns,
            &format!("pod/{name}"),
            "jsonpath={.status.phase}=Succeeded",
            POD_WAIT,
        );
        let logs = self.kubectl_ok(&["-n", ns, "logs", name]);
        let image_id = self.kubectl_ok(&[
            "-n",
            ns,
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.containerStatuses[0].imageID}",
        ]);
        (logs, image_id)
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        self.kubectl_stdin_ok(&["apply", "-f", "-"], Some(yaml));
    }

    /// A fresh namespace `kiln-e2e-PREFIX-…`, deleted when the returned guard drops.
    pub fn namespace(&self, prefix: &str) -> TestNamespace {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kiln-e2e-{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.kubectl_ok(&["create", "namespace", &name]);
        // Pods cannot be created before the namespace's default ServiceAccount exists.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self
            .kubectl_output(&["-n", &name, "get", "serviceaccount", "default"], None)
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "no default ServiceAccount in {name} after 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        TestNamespace {
            name,
            kubeconfig: self.kubeconfig.clone(),
        }
    }

    /// Describes the namespace's pods and events and the nodes' taints, for failure messages.
    pub fn diagnose(&self, ns: &str) -> String {
        let out = self.kubectl_output(&["-n", ns, "describe", "pods"], None);
        let events = self.kubectl_output(
            &["-n", ns, "get", "events", "--sort-by=.metadata.creationTimestamp"],
            None,
        );
        // A node's taints (disk-pressure, not-ready) explain a Pod that is never scheduled.
        let nodes = self.kubectl_output(
            &[
                "get",
                "nodes",
                "-o",
                "custom-columns=NODE:.metadata.name,TAINTS:.spec.taints[*].key",
            ],
            None,
        );
        format!(
            "--- pods in {ns}:\n{}\n--- events:\n{}\n--- nodes:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&events.stdout),
            String::from_utf8_lossy(&nodes.stdout)
        )
    }

    /// Waits (kubectl wait) for `condition` on `what` in `ns`; on timeout, panics with the
    /// namespace's pods and events.
    pub fn wait_for(&self, ns: &str, what: &str, condition: &str, timeout: Duration) {
        let timeout = format!("--timeout={}s", timeout.as_secs());
        let out = self.kubectl_output(&["-n", ns, "wait", &format!("--for={condition}"), what, &timeout], None);
        assert!(
            out.status.success(),
            "{what} in {ns} did not reach {condition}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.diagnose(ns)
        );
    }

    /// Waits (kubectl rollout status) until `what` (e.g. `daemonset/x`) in `ns` is rolled out
    /// and its pods are Ready; on timeout, panics with the namespace's pods and events.
    pub fn rollout_status(&self, ns: &str, what: &str, timeout: Duration) {
        let timeout = format!("--timeout={}s", timeout.as_secs());
        let out = self.kubectl_output(&["-n", ns, "rollout", "status", what, &timeout], None);
        assert!(
            out.status.success(),
            "{what} in {ns} did not roll out: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.diagnose(ns)
        );
    }

    /// `kubectl port-forward TARGET :PORT` in `ns`; the forward lasts as long as the returned
    /// value.
    pub fn port_forward(&self, ns: &str, target: &str, port: u16) -> PortForward {
        let mut child = self
            .kubectl()
            .args(["-n", ns, "port-forward", target, &format!(":{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl port-forward");
        // "Forwarding from 127.0.0.1:41234 -> 8080"
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let local_port = loop {
            line.clear();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                let mut err = String::new();
                let _ = child.kill();
                let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
                panic!("kubectl port-forward {target} :{port} ended before forwarding: {err}");
            }
            if let Some(rest) = line.trim().strip_prefix("Forwarding from 127.0.0.1:") {
                break rest
                    .split_whitespace()
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected port-forward line {line:?}"));
            }
        };
        // Keep draining stdout ("Handling connection for ..."), so kubectl never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        PortForward { child, local_port }
    }
}

/// A running `kubectl port-forward`, stopped (its PID killed) on drop.
pub struct PortForward {
    child: Child,
    pub local_port: u16,
}

impl PortForward {
    /// A plain HTTP/1.0 GET of `path` through the forward; returns the whole response.
    pub fn http_get(&self, path: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.local_port)).expect("connect to the forward");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        response
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test's namespace; deleted, without waiting, on drop.
pub struct TestNamespace {
    pub name: String,
    kubeconfig: PathBuf,
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var("KILN_E2E_KEEP_NAMESPACES").as_deref() == Ok("1") {
            eprintln!("keeping namespace {} (KILN_E2E_KEEP_NAMESPACES=1)", self.name);
            return;
        }
        let _ = Command::new(env("KUBECTL").unwrap_or_else(|| "kubectl".into()))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Polls `f` every 200 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// True if `path` is a mount point in this process's mount namespace.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let path = path.to_string_lossy();
    info.lines().any(|l| l.split_whitespace().nth(4) == Some(path.as_ref()))
}

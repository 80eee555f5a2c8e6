//! Which container runtime a node runs, and where its sockets and state live on the host.
//!
//! Detection reads `status.nodeInfo.containerRuntimeVersion` (`containerd://1.7.1`,
//! `containerd://1.7.11-k3s2`, `docker://20.10.24`, `cri-o://1.28.1`) and the labels that
//! distributions put on their nodes (MicroK8s: `microk8s.io/cluster`; k3s:
//! `node.kubernetes.io/instance-type=k3s`). It is pure so every rule is unit-tested.

use k8s_openapi::api::core::v1::Node;

use crate::api::builder_pool::{RuntimeKind, RuntimeSpec};

/// The label kiln puts on nodes to record their detected runtime; builder DaemonSets select
/// on it, so a node joining never changes (and never rolls) a DaemonSet.
pub const RUNTIME_LABEL: &str = "kiln.dev/runtime";

/// Host paths one runtime flavour needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimePaths {
    /// The runtime's API socket on the host.
    pub socket: String,
    /// Directories that must be mounted with Bidirectional propagation so the runtime sees
    /// BuildKit's mounts (containerd's state and root), or that hold the socket.
    pub host_dirs: Vec<String>,
}

/// A node whose runtime kiln cannot build for, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// What the node reported.
    pub runtime_version: String,
    /// Why kiln cannot use it.
    pub reason: String,
}

/// Detects a node's runtime flavour. `Err` explains an unsupported runtime.
pub fn detect(node: &Node) -> Result<RuntimeKind, Unsupported> {
    let version = node
        .status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.container_runtime_version.clone())
        .unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let unsupported = |reason: &str| Unsupported {
        runtime_version: version.clone(),
        reason: reason.to_owned(),
    };
    let (scheme, release) = version.split_once("://").unwrap_or((version.as_str(), ""));
    match scheme {
        "docker" => Ok(RuntimeKind::Docker),
        "containerd" => {
            if labels.contains_key("microk8s.io/cluster") {
                Ok(RuntimeKind::MicroK8s)
            } else if release.contains("-k3s")
                || labels
                    .get("node.kubernetes.io/instance-type")
                    .is_some_and(|t| t == "k3s" || t == "rke2")
            {
                Ok(RuntimeKind::K3s)
            } else {
                Ok(RuntimeKind::Containerd)
            }
        }
        "" => Err(unsupported(
            "the node reports no container runtime yet (status.nodeInfo is empty)",
        )),
        "cri-o" => Err(unsupported(
            "CRI-O keeps images in containers/storage, which BuildKit cannot write to; set the pool's runtime.kind and runtime.socket if the node also runs containerd",
        )),
        other => Err(unsupported(&format!(
            "container runtime {other:?} is not supported (containerd, k3s, MicroK8s or Docker)"
        ))),
    }
}

/// The flavour a pool uses on a node: the pool's explicit kind wins over detection.
pub fn resolve(spec: Option<&RuntimeSpec>, node: &Node) -> Result<RuntimeKind, Unsupported> {
    match spec.map(|s| s.kind).unwrap_or_default() {
        RuntimeKind::Auto => detect(node),
        explicit => Ok(explicit),
    }
}

/// Host paths for a flavour; the pool's `runtime.socket` and `runtime.root` win over the
/// flavour's defaults.
pub fn paths(kind: RuntimeKind, spec: Option<&RuntimeSpec>) -> RuntimePaths {
    let (socket, socket_dir, root): (&str, &str, Option<&str>) = match kind {
        RuntimeKind::Containerd | RuntimeKind::Auto => (
            "/run/containerd/containerd.sock",
            "/run/containerd",
            Some("/var/lib/containerd"),
        ),
        // RKE2 shares k3s's containerd socket path; both keep state under /var/lib/rancher.
        RuntimeKind::K3s => (
            "/run/k3s/containerd/containerd.sock",
            "/run/k3s/containerd",
            Some("/var/lib/rancher"),
        ),
        RuntimeKind::MicroK8s => (
            "/var/snap/microk8s/common/run/containerd.sock",
            "/var/snap/microk8s/common/run",
            Some("/var/snap/microk8s/common/var/lib/containerd"),
        ),
        // Docker's BuildKit runs inside dockerd: only its socket is mounted.
        RuntimeKind::Docker => ("/var/run/docker.sock", "", None),
    };
    let socket_override = spec.and_then(|s| s.socket.as_deref());
    let socket = socket_override.unwrap_or(socket).to_owned();
    let mut host_dirs = Vec::new();
    if let Some(root) = root {
        // The socket's directory (the override's, if any) and the runtime's root.
        let dir = socket_override
            .and_then(|s| std::path::Path::new(s).parent())
            .and_then(|p| p.to_str())
            .unwrap_or(socket_dir);
        host_dirs.push(dir.to_owned());
        host_dirs.push(spec.and_then(|s| s.root.as_deref()).unwrap_or(root).to_owned());
    }
    RuntimePaths { socket, host_dirs }
}

/// The lowercase name used in object names and labels.
pub fn slug(kind: RuntimeKind) -> &'static str {
    match kind {
        RuntimeKind::Auto => "auto",
        RuntimeKind::Containerd => "containerd",
        RuntimeKind::K3s => "k3s",
        RuntimeKind::MicroK8s => "microk8s",
        RuntimeKind::Docker => "docker",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeStatus, NodeSystemInfo};
    use kube::api::ObjectMeta;

    pub(crate) fn node(name: &str, runtime: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                node_info: Some(NodeSystemInfo {
                    container_runtime_version: runtime.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn detects_each_flavour() {
        assert_eq!(
            detect(&node("a", "containerd://1.7.1", &[])),
            Ok(RuntimeKind::Containerd)
        );
        assert_eq!(
            detect(&node("b", "containerd://1.7.11-k3s2", &[])),
            Ok(RuntimeKind::K3s)
        );
        assert_eq!(
            detect(&node(
                "c",
                "containerd://1.6.28",
                &[("node.kubernetes.io/instance-type", "rke2")]
            )),
            Ok(RuntimeKind::K3s)
        );
        assert_eq!(
            detect(&node("d", "containerd://1.6.15", &[("microk8s.io/cluster", "true")])),
            Ok(RuntimeKind::MicroK8s)
        );
        assert_eq!(detect(&node("e", "docker://20.10.24", &[])), Ok(RuntimeKind::Docker));
    }

    #[test]
    fn reports_unsupported_runtimes_with_a_reason() {
        let crio = detect(&node("f", "cri-o://1.28.1", &[])).expect_err("unsupported");
        assert!(crio.reason.contains("CRI-O"));
        assert_eq!(crio.runtime_version, "cri-o://1.28.1");
        assert!(
            detect(&node("g", "", &[]))
                .expect_err("unknown")
                .reason
                .contains("no container runtime")
        );
        assert!(
            detect(&node("h", "rkt://1.0", &[]))
                .expect_err("unsupported")
                .reason
                .contains("\"rkt\"")
        );
    }

    #[test]
    fn explicit_kind_wins_over_detection() {
        let spec = RuntimeSpec {
            kind: RuntimeKind::K3s,
            ..Default::default()
        };
        assert_eq!(resolve(Some(&spec), &node("a", "cri-o://1", &[])), Ok(RuntimeKind::K3s));
        assert_eq!(
            resolve(None, &node("a", "docker://20.10", &[])),
            Ok(RuntimeKind::Docker)
        );
    }

    #[test]
    fn socket_and_root_overrides_replace_the_flavours_directories() {
        let spec = RuntimeSpec {
            socket: Some("/custom/run/containerd.sock".into()),
            ..Default::default()
        };
        let p = paths(RuntimeKind::Containerd, Some(&spec));
        assert_eq!(p.socket, "/custom/run/containerd.sock");
        assert_eq!(p.host_dirs, ["/custom/run", "/var/lib/containerd"]);
        let spec = RuntimeSpec {
            root: Some("/mnt/containerd".into()),
            ..Default::default()
        };
        let p = paths(RuntimeKind::Containerd, Some(&spec));
        assert_eq!(p.host_dirs, ["/run/containerd", "/mnt/containerd"]);
        let k3s = paths(RuntimeKind::K3s, None);
        assert_eq!(k3s.host_dirs, ["/run/k3s/containerd", "/var/lib/rancher"]);
        let docker = paths(RuntimeKind::Docker, Some(&spec));
        assert_eq!(docker.socket, "/var/run/docker.sock");
        assert!(docker.host_dirs.is_empty(), "Docker's BuildKit needs only the socket");
    }
}

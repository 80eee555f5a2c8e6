//! Renders a pool's builder DaemonSet (and its buildkitd config) for one runtime flavour.
//!
//! Pure: the same pool, flavour and settings always render the same objects, which is what
//! lets the reconciler apply them every time and have the apiserver write nothing when nothing
//! changed. Containerd flavours run `buildkitd` (containerd worker in namespace `k8s.io`, so the
//! kubelet sees each image at once) plus the `agent` sidecar; Docker nodes run only the agent,
//! talking to Docker's embedded BuildKit.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use serde_json::{Value, json};

use super::buildkitd_config::buildkitd_toml;
use super::runtime::{RUNTIME_LABEL, RuntimePaths, paths, slug};
use crate::api::BuilderPool;
use crate::api::builder_pool::{
    BuilderPoolSpec, DEFAULT_BUILDKIT_IMAGE, DEFAULT_MAX_CONCURRENT_BUILDS, RunNetwork, RuntimeKind,
};

/// The label holding the pool name on everything kiln renders for it.
pub const POOL_LABEL: &str = "kiln.dev/pool";
/// Port the agent serves `/healthz`, `/readyz` and build logs on.
pub const AGENT_PORT: i32 = 8081;
/// Where buildkitd listens inside the pod (an emptyDir shared with the agent).
pub const BUILDKIT_SOCKET_DIR: &str = "/run/kiln";
/// The buildkitd address the agent uses on containerd flavours.
pub const BUILDKIT_ADDR: &str = "unix:///run/kiln/buildkitd.sock";
/// containerd's client default FIFO directory, where BuildKit's containerd executor creates each
/// task's stdio FIFOs for the shim to open on the host.
pub const CONTAINERD_FIFO_DIR: &str = "/run/containerd/fifo";
/// Where the agent keeps uploaded contexts (`<stateDir>/contexts` on the node).
pub const AGENT_CONTEXTS_DIR: &str = "/var/lib/kiln/contexts";
/// Where the agent sees buildkitd's TMPDIR (to check it exists before each build).
pub const AGENT_BUILDKIT_TMP: &str = "/var/lib/kiln/buildkit-tmp";
/// The snapshotter used when the pool names none (containerd's default on Linux).
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

/// What to render: one pool on one runtime flavour.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The pool.
    pub pool: &'a BuilderPool,
    /// The flavour of the nodes this DaemonSet serves.
    pub kind: RuntimeKind,
    /// True when the pool detects runtimes per node: the DaemonSet then selects nodes by the
    /// [`RUNTIME_LABEL`] kiln puts on them.
    pub detected: bool,
    /// Namespace of the controller, where builders run.
    pub namespace: &'a str,
    /// The kiln image for the agent when the pool does not name one.
    pub default_agent_image: &'a str,
    /// The ServiceAccount builder pods run as.
    pub service_account: &'a str,
}

/// The objects for one pool and flavour.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// The builder DaemonSet.
    pub daemonset: DaemonSet,
    /// buildkitd's config (absent on Docker nodes).
    pub config: Option<ConfigMap>,
}

/// Why rendering failed (a bug, or a pool without a name).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The pool has no name or uid yet.
    #[error("BuilderPool has no name or uid; it must come from the apiserver")]
    Unnamed,
    /// A rendered object did not match its Kubernetes type.
    #[error("rendered {what} does not match its type: {source}")]
    Shape {
        /// Which object.
        what: &'static str,
        /// The serde error.
        source: serde_json::Error,
    },
}

/// `kiln-builder-<pool>-<flavour>`.
pub fn daemonset_name(pool: &str, kind: RuntimeKind) -> String {
    format!("kiln-builder-{pool}-{}", slug(kind))
}

/// Host directory holding one pool's BuildKit state on every node: the pool's `stateDir`, else
/// one per pool name, so two pools on one node never share a root or a lock file.
pub fn state_dir(pool: &BuilderPool) -> String {
    match &pool.spec.state_dir {
        Some(dir) => dir.trim_end_matches('/').to_owned(),
        None => format!(
            "/var/lib/kiln/pools/{}",
            pool.metadata.name.as_deref().unwrap_or_default()
        ),
    }
}

/// Renders the DaemonSet and buildkitd config for `input`.
pub fn render(input: &Input<'_>) -> Result<Rendered, RenderError> {
    let pool = input.pool;
    let name = pool.metadata.name.as_deref().ok_or(RenderError::Unnamed)?;
    let owner = pool.controller_owner_ref(&()).ok_or(RenderError::Unnamed)?;
    let host = paths(input.kind, pool.spec.runtime.as_ref());
    let ds_name = daemonset_name(name, input.kind);
    let labels = labels(name, input.kind);
    let config = (input.kind != RuntimeKind::Docker).then(|| buildkitd_toml(input, &host));
    let config_hash = config.as_deref().map(|c| crate::api::short_sha256(c.as_bytes(), 8));
    let storage = storage(input, &host, &ds_name);

    let mut containers = Vec::new();
    if input.kind != RuntimeKind::Docker {
        containers.push(buildkitd_container(input, storage.buildkitd_mounts));
    }
    containers.push(agent_container(input, name, &host, storage.agent_mounts));
    let pod_spec = pod_spec(input, containers, storage.volumes);
    let daemonset = daemonset(input, &ds_name, &labels, &owner, config_hash, pod_spec)?;
    let config = config
        .map(|toml| {
            serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": ds_name, "namespace": input.namespace, "labels": labels, "ownerReferences": [owner]},
                "data": {"buildkitd.toml": toml},
            }))
        })
        .transpose()
        .map_err(|source| RenderError::Shape { what: "ConfigMap", source })?;
    Ok(Rendered { daemonset, config })
}

/// The pod's volumes and each container's mounts.
struct Storage {
    volumes: Vec<Value>,
    buildkitd_mounts: Vec<Value>,
    agent_mounts: Vec<Value>,
}

/// Where every path lives. Host paths that containerd (on the host) must resolve are mounted
/// at the same path inside buildkitd: its root and TMPDIR (BuildKit mounts secrets, caches and
/// snapshots below them and hands those paths to containerd, hence Bidirectional), containerd's
/// socket directory and root, and containerd's FIFO directory (BuildKit's containerd executor
/// creates each task's stdio FIFOs under the client default `/run/containerd/fifo`, and the
/// shim opens them on the host by the same path — on k3s, RKE2, MicroK8s or an explicit
/// socket elsewhere, that directory is not inside the socket's).
fn storage(input: &Input<'_>, host: &RuntimePaths, ds_name: &str) -> Storage {
    let mut volumes = vec![
        json!({"name": "run-kiln", "emptyDir": {}}),
        json!({"name": "logs", "emptyDir": {}}),
    ];
    let mut agent_mounts = vec![
        json!({"name": "run-kiln", "mountPath": BUILDKIT_SOCKET_DIR}),
        json!({"name": "logs", "mountPath": "/var/log/kiln"}),
        json!({"name": "contexts", "mountPath": AGENT_CONTEXTS_DIR}),
    ];
    // Uploaded contexts outlive the pod (a restarted agent still has them), one store per pool.
    volumes.push(host_dir(
        "contexts",
        &format!("{}/contexts", state_dir(input.pool)),
        "DirectoryOrCreate",
    ));
    if input.kind == RuntimeKind::Docker {
        volumes.push(json!({"name": "docker-sock", "hostPath": {"path": host.socket, "type": "Socket"}}));
        agent_mounts.push(json!({"name": "docker-sock", "mountPath": host.socket}));
        return Storage {
            volumes,
            buildkitd_mounts: Vec::new(),
            agent_mounts,
        };
    }
    let state = state_dir(input.pool);
    let mut buildkitd_mounts = vec![
        json!({"name": "run-kiln", "mountPath": BUILDKIT_SOCKET_DIR}),
        json!({"name": "config", "mountPath": "/etc/buildkit", "readOnly": true}),
        json!({"name": "state", "mountPath": state, "mountPropagation": "Bidirectional"}),
    ];
    volumes.push(json!({"name": "config", "configMap": {"name": ds_name}}));
    volumes.push(host_dir("state", &state, "DirectoryOrCreate"));
    for (i, dir) in host.host_dirs.iter().enumerate() {
        let name = format!("runtime-{i}");
        volumes.push(host_dir(&name, dir, "Directory"));
        buildkitd_mounts.push(json!({"name": name, "mountPath": dir, "mountPropagation": "Bidirectional"}));
    }
    if !host.host_dirs.iter().any(|d| is_within(CONTAINERD_FIFO_DIR, d)) {
        volumes.push(host_dir("containerd-fifo", CONTAINERD_FIFO_DIR, "DirectoryOrCreate"));
        buildkitd_mounts.push(json!({"name": "containerd-fifo", "mountPath": CONTAINERD_FIFO_DIR}));
    }
    // buildkitd's TMPDIR must exist before its first build, and buildkitd images need not have
    // a shell to create it. A hostPath volume of type DirectoryOrCreate makes the kubelet
    // create it before any container starts; it is mounted into the agent (which checks it
    // before each build), not into buildkitd, which sees it through its Bidirectional state
    // mount: a second mount nested in a shared one would propagate back to the host on every
    // start and never be unmounted.
    volumes.push(host_dir(
        "buildkit-tmp",
        &buildkit_tmp_dir(input.pool),
        "DirectoryOrCreate",
    ));
    agent_mounts.push(json!({"name": "buildkit-tmp", "mountPath": AGENT_BUILDKIT_TMP}));
    // The agent asks containerd which built images are still on the node (agent/presence.rs).
    volumes.push(json!({"name": "containerd-sock", "hostPath": {"path": host.socket, "type": "Socket"}}));
    agent_mounts.push(json!({"name": "containerd-sock", "mountPath": host.socket}));
    Storage {
        volumes,
        buildkitd_mounts,
        agent_mounts,
    }
}

/// buildkitd's `TMPDIR` on the host (and inside buildkitd): `<stateDir>/tmp`.
pub fn buildkit_tmp_dir(pool: &BuilderPool) -> String {
    format!("{}/tmp", state_dir(pool))
}

/// True when `path` is `dir` or below it.
pub fn is_within(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    path == dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

fn pod_spec(input: &Input<'_>, containers: Vec<Value>, volumes: Vec<Value>) -> Value {
    let spec = &input.pool.spec;
    let mut node_selector: BTreeMap<String, String> = spec.node_selector.clone();
    node_selector
        .entry("kubernetes.io/os".into())
        .or_insert_with(|| "linux".into());
    let mut pod_spec = json!({
        "serviceAccountName": input.service_account,
        "nodeSelector": node_selector,
        "containers": containers,
        "volumes": volumes,
        "terminationGracePeriodSeconds": 60,
    });
    if input.detected {
        pod_spec["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": RUNTIME_LABEL, "operator": "In", "values": [slug(input.kind)]}]}
        ]}}});
    }
    if !spec.tolerations.is_empty() {
        pod_spec["tolerations"] = to_value(&spec.tolerations);
    }
    if let Some(pc) = &spec.priority_class_name {
        pod_spec["priorityClassName"] = json!(pc);
    }
    pod_spec
}

fn daemonset(
    input: &Input<'_>,
    ds_name: &str,
    labels: &BTreeMap<String, String>,
    owner: &OwnerReference,
    config_hash: Option<String>,
    pod_spec: Value,
) -> Result<DaemonSet, RenderError> {
    let annotations: BTreeMap<String, String> = config_hash
        .map(|hash| ("kiln.dev/config-hash".to_owned(), hash))
        .into_iter()
        .collect();
    let mut ds_spec = json!({
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels, "annotations": annotations},
            "spec": pod_spec,
        },
    });
    if let Some(strategy) = &input.pool.spec.update_strategy {
        ds_spec["updateStrategy"] = to_value(strategy);
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": ds_name,
            "namespace": input.namespace,
            "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": ds_spec,
    }))
    .map_err(|source| RenderError::Shape {
        what: "DaemonSet",
        source,
    })
}

fn labels(pool: &str, kind: RuntimeKind) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "kiln".to_owned()),
        ("app.kubernetes.io/component".to_owned(), "builder".to_owned()),
        (POOL_LABEL.to_owned(), pool.to_owned()),
        (RUNTIME_LABEL.to_owned(), slug(kind).to_owned()),
    ])
}

fn host_dir(name: &str, path: &str, type_: &str) -> Value {
    json!({"name": name, "hostPath": {"path": path, "type": type_}})
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn buildkitd_container(input: &Input<'_>, mounts: Vec<Value>) -> Value {
    let spec = &input.pool.spec;
    let probe = json!(["buildctl", "--addr", BUILDKIT_ADDR, "debug", "workers"]);
    let mut container = json!({
        "name": "buildkitd",
        "image": spec.buildkit_image.as_deref().unwrap_or(DEFAULT_BUILDKIT_IMAGE),
        "args": ["--config=/etc/buildkit/buildkitd.toml"],
        "env": [{"name": "TMPDIR", "value": buildkit_tmp_dir(input.pool)}],
        "securityContext": {"privileged": true},
        "volumeMounts": mounts,
        "readinessProbe": {"exec": {"command": probe}, "periodSeconds": 10},
        "livenessProbe": {"exec": {"command": probe}, "periodSeconds": 30, "failureThreshold": 5},
    });
    if let Some(resources) = &spec.resources {
        container["resources"] = to_value(resources);
    }
    container
}

fn agent_container(input: &Input<'_>, pool: &str, host: &RuntimePaths, mounts: Vec<Value>) -> Value {
    let spec = &input.pool.spec;
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let buildkit_addr = if input.kind == RuntimeKind::Docker {
        format!("docker-unix://{}", host.socket)
    } else {
        BUILDKIT_ADDR.to_owned()
    };
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": AGENT_PORT}, "periodSeconds": 10});
    let mut args = vec![
        "agent".to_owned(),
        format!("--pool={pool}"),
        format!("--buildkit-addr={buildkit_addr}"),
        format!("--runtime={}", slug(input.kind)),
        format!(
            "--max-concurrent-builds={}",
            spec.max_concurrent_builds.unwrap_or(DEFAULT_MAX_CONCURRENT_BUILDS)
        ),
        format!("--listen=0.0.0.0:{AGENT_PORT}"),
    ];
    args.push(format!("--contexts-dir={AGENT_CONTEXTS_DIR}"));
    if input.kind == RuntimeKind::Docker {
        // BuildKit runs inside dockerd, in the host's network: it reaches the pod's address,
        // not its loopback.
        args.push("--context-listen=$(POD_IP):0".to_owned());
    } else {
        args.push(format!("--buildkit-tmp={AGENT_BUILDKIT_TMP}"));
        args.push(format!("--containerd-socket={}", host.socket));
    }
    args.extend(upload_args(spec));
    match run_network(spec) {
        RunNetwork::Default => {}
        RunNetwork::None => args.push("--network=none".to_owned()),
        RunNetwork::Host => args.push("--network=host".to_owned()),
    }
    json!({
        "name": "agent",
        "image": spec.agent_image.as_deref().unwrap_or(input.default_agent_image),
        "args": args,
        "env": [
            {"name": "NODE_NAME", "valueFrom": field("spec.nodeName")},
            {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
            {"name": "POD_NAME", "valueFrom": field("metadata.name")},
            {"name": "POD_IP", "valueFrom": field("status.podIP")},
        ],
        "ports": [{"name": "agent", "containerPort": AGENT_PORT}],
        "volumeMounts": mounts,
        "readinessProbe": probe("/readyz"),
        "livenessProbe": probe("/healthz"),
        // Root (the image's user is not): it writes uploaded contexts and buildkitd's TMPDIR on
        // the node, which root owns; with every capability dropped.
        "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}},
    })
}

/// The pool's upload settings as agent flags (only those it sets, so pools that set none keep
/// the same pod template).
fn upload_args(spec: &BuilderPoolSpec) -> Vec<String> {
    let Some(u) = &spec.uploads else { return Vec::new() };
    let mut args = Vec::new();
    if let Some(v) = u.max_context_mib {
        args.push(format!("--max-context-mib={v}"));
    }
    if let Some(v) = u.wait_seconds {
        args.push(format!("--upload-wait-seconds={v}"));
    }
    if let Some(v) = &u.keep_duration {
        args.push(format!("--context-keep={v}"));
    }
    if let Some(v) = u.max_store_mib {
        args.push(format!("--context-store-mib={v}"));
    }
    args
}

pub(super) fn run_network(spec: &BuilderPoolSpec) -> RunNetwork {
    spec.run_network.unwrap_or_default()
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;

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
use kube::Resource;
use serde_json::{Value, json};

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
    let spec = &pool.spec;
    let runtime = spec.runtime.as_ref();
    let host = paths(input.kind, runtime);
    let ds_name = daemonset_name(name, input.kind);
    let labels = labels(name, input.kind);

    let config = (input.kind != RuntimeKind::Docker).then(|| buildkitd_toml(input, &host));
    let config_hash = config.as_deref().map(|c| crate::api::short_sha256(c.as_bytes(), 8));
    let buildkit_addr = if input.kind == RuntimeKind::Docker {
        format!("docker-unix://{}", host.socket)
    } else {
        BUILDKIT_ADDR.to_owned()
    };

    let mut containers = Vec::new();
    let mut volumes = vec![
        json!({"name": "run-kiln", "emptyDir": {}}),
        json!({"name": "logs", "emptyDir": {}}),
    ];
    if input.kind != RuntimeKind::Docker {
        containers.push(buildkitd_container(input, &host));
        volumes.push(json!({"name": "config", "configMap": {"name": ds_name}}));
        volumes.push(host_dir("state", &state_dir(pool), "DirectoryOrCreate"));
        for (i, dir) in host.host_dirs.iter().enumerate() {
            volumes.push(host_dir(&format!("runtime-{i}"), dir, "Directory"));
        }
    } else {
        volumes.push(json!({"name": "docker-sock", "hostPath": {"path": host.socket, "type": "Socket"}}));
    }
    containers.push(agent_container(input, name, &buildkit_addr, &host));

    let mut node_selector: BTreeMap<String, String> = spec.node_selector.clone();
    node_selector
        .entry("kubernetes.io/os".into())
        .or_insert_with(|| "linux".into());
    let affinity = input.detected.then(|| {
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": RUNTIME_LABEL, "operator": "In", "values": [slug(input.kind)]}]}
        ]}}})
    });
    let mut annotations = BTreeMap::new();
    if let Some(hash) = &config_hash {
        annotations.insert("kiln.dev/config-hash".to_owned(), hash.clone());
    }

    let mut pod_spec = json!({
        "serviceAccountName": "kiln-agent",
        "nodeSelector": node_selector,
        "containers": containers,
        "volumes": volumes,
        "terminationGracePeriodSeconds": 60,
    });
    if let Some(affinity) = affinity {
        pod_spec["affinity"] = affinity;
    }
    if !spec.tolerations.is_empty() {
        pod_spec["tolerations"] = to_value(&spec.tolerations);
    }
    if let Some(pc) = &spec.priority_class_name {
        pod_spec["priorityClassName"] = json!(pc);
    }

    let mut ds_spec = json!({
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels, "annotations": annotations},
            "spec": pod_spec,
        },
    });
    if let Some(strategy) = &spec.update_strategy {
        ds_spec["updateStrategy"] = to_value(strategy);
    }
    let daemonset = json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": ds_name,
            "namespace": input.namespace,
            "labels": labels,
            "ownerReferences": [owner],
        },
        "spec": ds_spec,
    });
    let daemonset = serde_json::from_value(daemonset).map_err(|source| RenderError::Shape {
        what: "DaemonSet",
        source,
    })?;
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

fn buildkitd_container(input: &Input<'_>, host: &RuntimePaths) -> Value {
    let spec = &input.pool.spec;
    let state = state_dir(input.pool);
    // Paths are mounted at the same place inside and outside: containerd runs on the host and
    // resolves the mounts buildkitd hands it (hence Bidirectional propagation).
    let mut mounts = vec![
        json!({"name": "run-kiln", "mountPath": BUILDKIT_SOCKET_DIR}),
        json!({"name": "config", "mountPath": "/etc/buildkit", "readOnly": true}),
        json!({"name": "state", "mountPath": state, "mountPropagation": "Bidirectional"}),
    ];
    for (i, dir) in host.host_dirs.iter().enumerate() {
        mounts.push(json!({"name": format!("runtime-{i}"), "mountPath": dir, "mountPropagation": "Bidirectional"}));
    }
    let mut container = json!({
        "name": "buildkitd",
        "image": spec.buildkit_image.as_deref().unwrap_or(DEFAULT_BUILDKIT_IMAGE),
        "args": ["--config=/etc/buildkit/buildkitd.toml"],
        "env": [{"name": "TMPDIR", "value": format!("{state}/tmp")}],
        "securityContext": {"privileged": true},
        "volumeMounts": mounts,
        "readinessProbe": {"exec": {"command": ["buildctl", "--addr", BUILDKIT_ADDR, "debug", "workers"]}, "periodSeconds": 10},
        "livenessProbe": {"exec": {"command": ["buildctl", "--addr", BUILDKIT_ADDR, "debug", "workers"]},
                          "periodSeconds": 30, "failureThreshold": 5},
    });
    if let Some(resources) = &spec.resources {
        container["resources"] = to_value(resources);
    }
    container
}

fn agent_container(input: &Input<'_>, pool: &str, buildkit_addr: &str, host: &RuntimePaths) -> Value {
    let spec = &input.pool.spec;
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    // The root filesystem is read-only; build logs go to their own volume.
    let mut mounts = vec![
        json!({"name": "run-kiln", "mountPath": BUILDKIT_SOCKET_DIR}),
        json!({"name": "logs", "mountPath": "/var/log/kiln"}),
    ];
    if input.kind == RuntimeKind::Docker {
        mounts.push(json!({"name": "docker-sock", "mountPath": host.socket}));
    }
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
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}},
    })
}

fn run_network(spec: &BuilderPoolSpec) -> RunNetwork {
    spec.run_network.unwrap_or_default()
}

/// buildkitd's config: the containerd worker in namespace `k8s.io` with the node's snapshotter,
/// the OCI worker off, GC and parallelism from the pool.
pub fn buildkitd_toml(input: &Input<'_>, host: &RuntimePaths) -> String {
    let spec = &input.pool.spec;
    let pool = input.pool.metadata.name.as_deref().unwrap_or_default();
    let snapshotter = spec
        .runtime
        .as_ref()
        .and_then(|r| r.snapshotter.as_deref())
        .unwrap_or(DEFAULT_SNAPSHOTTER);
    let gc = spec.gc.clone().unwrap_or_default();
    let mut toml = format!(
        "# Rendered by kiln for BuilderPool {pool:?} ({flavour} nodes); do not edit.\n\
         root = \"{root}/buildkit\"\n{entitlements}\n\
         [grpc]\n  address = [\"{BUILDKIT_ADDR}\"]\n\n\
         [worker.oci]\n  enabled = false\n\n\
         [worker.containerd]\n  enabled = true\n  address = \"{socket}\"\n  namespace = \"k8s.io\"\n  \
         snapshotter = \"{snapshotter}\"\n  gc = {gc_on}\n",
        flavour = slug(input.kind),
        root = state_dir(input.pool),
        socket = host.socket,
        gc_on = gc.enabled.unwrap_or(true),
        // Top-level keys must precede the tables.
        entitlements = if run_network(spec) == RunNetwork::Host {
            "insecure-entitlements = [\"network.host\"]\n"
        } else {
            ""
        },
    );
    if let Some(mib) = gc.keep_storage_mib {
        toml.push_str(&format!("  gckeepstorage = {mib}\n"));
    }
    if let Some(p) = spec.max_parallelism {
        toml.push_str(&format!("  max-parallelism = {p}\n"));
    }
    if let Some(d) = gc
        .keep_duration
        .as_deref()
        .and_then(|d| d.parse::<kube::core::Duration>().ok())
    {
        let secs = std::time::Duration::from(d).as_secs();
        toml.push_str("\n  [[worker.containerd.gcpolicy]]\n");
        toml.push_str(&format!("    keepDuration = {secs}\n"));
        if let Some(mib) = gc.keep_storage_mib {
            toml.push_str(&format!("    keepBytes = {}\n", mib * 1024 * 1024));
        }
        toml.push_str(
            "    filters = [\"type==source.local\", \"type==exec.cachemount\", \"type==source.git.checkout\"]\n",
        );
        toml.push_str("\n  [[worker.containerd.gcpolicy]]\n    all = true\n");
        if let Some(mib) = gc.keep_storage_mib {
            toml.push_str(&format!("    keepBytes = {}\n", mib * 1024 * 1024));
        }
    }
    toml
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::builder_pool::{BuilderPoolSpec, GcSpec, RuntimeSpec};
    use kube::api::ObjectMeta;

    fn pool(spec: BuilderPoolSpec) -> BuilderPool {
        BuilderPool {
            metadata: ObjectMeta {
                name: Some("fast".into()),
                uid: Some("uid-1".into()),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }

    fn render_for(pool: &BuilderPool, kind: RuntimeKind) -> (Value, Option<String>) {
        let input = Input {
            pool,
            kind,
            detected: true,
            namespace: "kiln-system",
            default_agent_image: "kiln:dev",
        };
        let out = render(&input).expect("renders");
        let toml = out
            .config
            .and_then(|c| c.data)
            .and_then(|d| d.get("buildkitd.toml").cloned());
        (serde_json::to_value(out.daemonset).expect("json"), toml)
    }

    fn mounts(ds: &Value, container: usize) -> Vec<(String, String)> {
        ds["spec"]["template"]["spec"]["containers"][container]["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .map(|m| {
                (
                    m["mountPath"].as_str().unwrap_or_default().to_owned(),
                    m["mountPropagation"].as_str().unwrap_or("None").to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn k3s_builders_mount_rancher_state_bidirectionally_and_select_k3s_nodes() {
        let p = pool(BuilderPoolSpec::default());
        let (ds, toml) = render_for(&p, RuntimeKind::K3s);
        assert_eq!(ds["metadata"]["name"], "kiln-builder-fast-k3s");
        assert_eq!(ds["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        let m = mounts(&ds, 0);
        assert!(
            m.contains(&("/var/lib/rancher".into(), "Bidirectional".into())),
            "{m:?}"
        );
        assert!(
            m.contains(&("/var/lib/kiln/pools/fast".into(), "Bidirectional".into())),
            "{m:?}"
        );
        let toml = toml.expect("config");
        assert!(
            toml.contains("address = \"/run/k3s/containerd/containerd.sock\""),
            "{toml}"
        );
        assert!(toml.contains("namespace = \"k8s.io\""));
        assert!(toml.contains("[worker.oci]\n  enabled = false"));
        let term = &ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0];
        assert_eq!(term["matchExpressions"][0]["key"], RUNTIME_LABEL);
        assert_eq!(term["matchExpressions"][0]["values"][0], "k3s");
    }

    #[test]
    fn docker_nodes_get_only_the_agent_on_dockers_socket() {
        let (ds, toml) = render_for(&pool(BuilderPoolSpec::default()), RuntimeKind::Docker);
        let containers = ds["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0]["name"], "agent");
        assert!(toml.is_none());
        let args: Vec<&str> = containers[0]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            args.contains(&"--buildkit-addr=docker-unix:///var/run/docker.sock"),
            "{args:?}"
        );
        assert!(mounts(&ds, 0).contains(&("/var/run/docker.sock".into(), "None".into())));
        assert!(
            mounts(&ds, 0).contains(&("/var/log/kiln".into(), "None".into())),
            "logs are writable with a read-only root"
        );
    }

    #[test]
    fn pool_settings_reach_the_daemonset_and_config() {
        let spec = BuilderPoolSpec {
            buildkit_image: Some("moby/buildkit:v0.18.0".into()),
            max_parallelism: Some(3),
            max_concurrent_builds: Some(5),
            gc: Some(GcSpec {
                enabled: Some(true),
                keep_storage_mib: Some(2048),
                keep_duration: Some("48h".into()),
            }),
            runtime: Some(RuntimeSpec {
                snapshotter: Some("native".into()),
                ..Default::default()
            }),
            priority_class_name: Some("system-node-critical".into()),
            state_dir: Some("/srv/buildkit/fast/".into()),
            ..Default::default()
        };
        let (ds, toml) = render_for(&pool(spec), RuntimeKind::Containerd);
        assert!(mounts(&ds, 0).contains(&("/srv/buildkit/fast".into(), "Bidirectional".into())));
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["image"], "moby/buildkit:v0.18.0");
        assert_eq!(pod["priorityClassName"], "system-node-critical");
        assert!(
            pod["containers"][1]["args"]
                .as_array()
                .expect("args")
                .contains(&json!("--max-concurrent-builds=5"))
        );
        let toml = toml.expect("config");
        for line in [
            "max-parallelism = 3",
            "gckeepstorage = 2048",
            "keepDuration = 172800",
            "snapshotter = \"native\"",
            "root = \"/srv/buildkit/fast/buildkit\"",
        ] {
            assert!(toml.contains(line), "{line} in {toml}");
        }
        assert!(ds["spec"]["template"]["metadata"]["annotations"]["kiln.dev/config-hash"].is_string());
    }

    #[test]
    fn rendering_is_deterministic_and_config_changes_roll_the_pods() {
        let p = pool(BuilderPoolSpec::default());
        assert_eq!(
            render_for(&p, RuntimeKind::Containerd),
            render_for(&p, RuntimeKind::Containerd)
        );
        let q = pool(BuilderPoolSpec {
            max_parallelism: Some(9),
            ..Default::default()
        });
        let hash = |v: &Value| v["spec"]["template"]["metadata"]["annotations"]["kiln.dev/config-hash"].clone();
        assert_ne!(
            hash(&render_for(&p, RuntimeKind::Containerd).0),
            hash(&render_for(&q, RuntimeKind::Containerd).0)
        );
    }

    #[test]
    fn run_network_reaches_the_agent_and_host_is_entitled_in_buildkitd() {
        let agent_args = |ds: &Value| -> Vec<String> {
            let containers = ds["spec"]["template"]["spec"]["containers"]
                .as_array()
                .expect("containers");
            let agent = containers
                .iter()
                .find(|c| c["name"] == "agent")
                .expect("agent container");
            agent["args"]
                .as_array()
                .expect("args")
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        };
        let with = |n: Option<RunNetwork>| {
            pool(BuilderPoolSpec {
                run_network: n,
                ..Default::default()
            })
        };
        let (ds, toml) = render_for(&with(None), RuntimeKind::Containerd);
        assert!(
            !agent_args(&ds).iter().any(|a| a.starts_with("--network")),
            "{:?}",
            agent_args(&ds)
        );
        assert!(!toml.expect("config").contains("insecure-entitlements"));

        let (ds, _) = render_for(&with(Some(RunNetwork::None)), RuntimeKind::Docker);
        assert!(
            agent_args(&ds).contains(&"--network=none".to_owned()),
            "{:?}",
            agent_args(&ds)
        );

        let (ds, toml) = render_for(&with(Some(RunNetwork::Host)), RuntimeKind::Containerd);
        assert!(agent_args(&ds).contains(&"--network=host".to_owned()));
        let toml = toml.expect("config");
        let entitlement = toml.find("insecure-entitlements = [\"network.host\"]").expect(&toml);
        assert!(
            entitlement < toml.find("[grpc]").expect("grpc table"),
            "a top-level key: {toml}"
        );
    }
}

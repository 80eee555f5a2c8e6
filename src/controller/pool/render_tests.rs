//! Unit tests of the builder DaemonSet and buildkitd config rendering: per-flavour mounts,
//! paths shared with the host runtime, settings, determinism.

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
        service_account: "kiln-agent",
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

/// The agent container's index and arguments.
fn agent_of(ds: &Value) -> (usize, Vec<String>) {
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers");
    let agent = containers
        .iter()
        .position(|c| c["name"] == "agent")
        .expect("agent container");
    let args = containers[agent]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    (agent, args)
}

#[test]
fn run_network_reaches_the_agent_and_host_is_entitled_in_buildkitd() {
    let agent_args = |ds: &Value| agent_of(ds).1;
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

/// The mount of `container` that makes `path` visible at the same path as on the host: a
/// hostPath volume mounted at its own host path, at or above `path`. Returns the mount's
/// propagation.
fn host_path_mount(ds: &Value, container: &str, path: &str) -> Option<String> {
    let pod = &ds["spec"]["template"]["spec"];
    let c = pod["containers"].as_array()?.iter().find(|c| c["name"] == container)?;
    c["volumeMounts"].as_array()?.iter().find_map(|m| {
        let at = m["mountPath"].as_str()?;
        let volume = pod["volumes"].as_array()?.iter().find(|v| v["name"] == m["name"])?;
        let host = volume["hostPath"]["path"].as_str()?;
        (host == at && is_within(path, at)).then(|| m["mountPropagation"].as_str().unwrap_or("None").to_owned())
    })
}

fn env_of(ds: &Value, container: &str, name: &str) -> Option<String> {
    let containers = ds["spec"]["template"]["spec"]["containers"].as_array()?;
    let c = containers.iter().find(|c| c["name"] == container)?;
    let var = c["env"].as_array()?.iter().find(|e| e["name"] == name)?;
    var["value"].as_str().map(str::to_owned)
}

fn toml_value(toml: &str, key: &str) -> String {
    toml.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key} = \"")))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{key} in {toml}"))
        .to_owned()
}

/// Every path buildkitd hands the host's containerd must be the same path on both sides: the
/// socket, containerd's root, BuildKit's root and TMPDIR (Bidirectional, since BuildKit mounts
/// below them), and containerd's FIFO directory — for every flavour, explicit sockets in odd
/// places, and a moved stateDir. TMPDIR is created by the kubelet (a DirectoryOrCreate hostPath
/// volume of exactly that path), not assumed to exist.
#[test]
fn every_path_buildkitd_shares_with_containerd_is_the_same_on_the_host() {
    let runtimes = [
        None,
        Some(RuntimeSpec {
            socket: Some("/srv/ctd/sock/containerd.sock".into()),
            root: Some("/srv/ctd/root".into()),
            ..Default::default()
        }),
    ];
    let state_dirs = [None, Some("/mnt/shared/kiln/fast".to_owned())];
    for kind in [RuntimeKind::Containerd, RuntimeKind::K3s, RuntimeKind::MicroK8s] {
        for runtime in &runtimes {
            for state_dir in &state_dirs {
                let p = pool(BuilderPoolSpec {
                    runtime: runtime.clone(),
                    state_dir: state_dir.clone(),
                    ..Default::default()
                });
                let case = format!("{kind:?} runtime={runtime:?} stateDir={state_dir:?}");
                let (ds, toml) = render_for(&p, kind);
                let toml = toml.expect("config");
                let visible = |path: &str| host_path_mount(&ds, "buildkitd", path);

                let socket = toml_value(&toml, "address");
                assert_eq!(socket, paths(kind, runtime.as_ref()).socket, "{case}");
                assert!(visible(&socket).is_some(), "socket {socket}: {case}");
                assert!(
                    visible(&format!("{CONTAINERD_FIFO_DIR}/abc/abc-stdout")).is_some(),
                    "FIFO dir: {case}"
                );
                let otel = toml_value(&toml, "socketPath");
                assert!(visible(&otel).is_some(), "tracing socket {otel}: {case}");
                let root = toml_value(&toml, "root");
                assert_eq!(visible(&root).as_deref(), Some("Bidirectional"), "root {root}: {case}");
                let containerd_root = paths(kind, runtime.as_ref()).host_dirs[1].clone();
                assert_eq!(
                    visible(&format!("{containerd_root}/io.containerd.snapshotter.v1.overlayfs")).as_deref(),
                    Some("Bidirectional"),
                    "containerd root: {case}"
                );
                let tmp = env_of(&ds, "buildkitd", "TMPDIR").expect("TMPDIR");
                assert_eq!(visible(&tmp).as_deref(), Some("Bidirectional"), "TMPDIR {tmp}: {case}");
                let created = ds["spec"]["template"]["spec"]["volumes"]
                    .as_array()
                    .expect("volumes")
                    .iter()
                    .find(|v| v["hostPath"]["path"] == tmp.as_str())
                    .unwrap_or_else(|| panic!("a hostPath volume creates TMPDIR: {case}"));
                assert_eq!(created["hostPath"]["type"], "DirectoryOrCreate", "{case}");
                assert!(
                    host_path_mount(&ds, "buildkitd", &tmp).is_some()
                        && mounts(&ds, 1).iter().any(|(at, _)| at == AGENT_BUILDKIT_TMP),
                    "the agent mounts TMPDIR's volume, so the kubelet creates it: {case}"
                );
                // No mount nested inside a Bidirectional one: it would propagate to the host.
                let m = mounts(&ds, 0);
                for (outer, prop) in &m {
                    for (inner, _) in &m {
                        assert!(
                            prop != "Bidirectional" || inner == outer || !is_within(inner, outer),
                            "{inner} is mounted inside Bidirectional {outer}: {case}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_fifo_directory_is_mounted_only_where_the_socket_directory_does_not_cover_it() {
    let count = |kind| {
        let (ds, _) = render_for(&pool(BuilderPoolSpec::default()), kind);
        mounts(&ds, 0)
            .iter()
            .filter(|(at, _)| is_within(CONTAINERD_FIFO_DIR, at))
            .count()
    };
    assert_eq!(count(RuntimeKind::Containerd), 1, "/run/containerd covers it");
    assert_eq!(count(RuntimeKind::K3s), 1, "its own mount on k3s");
    assert!(is_within("/run/containerd/fifo", "/run/containerd/"));
    assert!(!is_within("/run/containerd-x/fifo", "/run/containerd"));
}

#[test]
fn agents_keep_uploaded_contexts_under_the_state_dir_and_serve_them_where_buildkit_is() {
    use crate::api::builder_pool::UploadsSpec;
    let p = pool(BuilderPoolSpec {
        uploads: Some(UploadsSpec {
            max_context_mib: Some(64),
            wait_seconds: Some(30),
            keep_duration: Some("2h".into()),
            max_store_mib: Some(512),
        }),
        ..Default::default()
    });
    for (kind, agent) in [(RuntimeKind::Containerd, 1), (RuntimeKind::Docker, 0)] {
        let (ds, _) = render_for(&p, kind);
        let pod = &ds["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == "contexts")
            .expect("a contexts volume");
        assert_eq!(
            volume["hostPath"]["path"], "/var/lib/kiln/pools/fast/contexts",
            "{kind:?}"
        );
        assert!(mounts(&ds, agent).contains(&(AGENT_CONTEXTS_DIR.into(), "None".into())));
        let args: Vec<&str> = pod["containers"][agent]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for want in [
            "--max-context-mib=64",
            "--upload-wait-seconds=30",
            "--context-keep=2h",
            "--context-store-mib=512",
        ] {
            assert!(args.contains(&want), "{want} in {args:?}");
        }
        let on_pod_ip = args.contains(&"--context-listen=$(POD_IP):0");
        assert_eq!(on_pod_ip, kind == RuntimeKind::Docker, "{kind:?}: {args:?}");
    }
}

#[test]
fn containerd_agents_get_the_runtime_socket_to_check_image_presence() {
    for (kind, socket) in [
        (RuntimeKind::Containerd, "/run/containerd/containerd.sock"),
        (RuntimeKind::K3s, "/run/k3s/containerd/containerd.sock"),
    ] {
        let (ds, _) = render_for(&pool(BuilderPoolSpec::default()), kind);
        let (agent, args) = agent_of(&ds);
        assert!(
            args.contains(&format!("--containerd-socket={socket}")),
            "{kind:?}: {args:?}"
        );
        assert!(
            mounts(&ds, agent).contains(&(socket.to_owned(), "None".to_owned())),
            "{kind:?}: the socket is mounted where the flag says"
        );
    }
}

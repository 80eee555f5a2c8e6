//! What the CLI tests share: their rig (two nodes, a pool with a context size limit), a
//! developer (a namespace and a ServiceAccount bound to `kiln manifests`' developer roles, with
//! its kubeconfig), and running `kiln` as that developer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::json;
use tokio::sync::OnceCell;

use super::e2e::{NS, Rig};

/// The rig's nodes.
pub const NODES: [&str; 2] = ["node-up", "node-two"];

/// Largest context this rig's pool accepts.
pub const MAX_CONTEXT_MIB: u64 = 4;

/// The CLI tests' rig (one per test binary): two nodes, a pool with a context limit.
pub async fn rig() -> &'static Rig {
    static RIG: OnceCell<Rig> = OnceCell::const_new();
    RIG.get_or_init(|| async {
        let rig = Rig::start(&NODES).await;
        let pool = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "BuilderPool", "metadata": {"name": "default"},
            "spec": {"nodeSelector": {"kiln.dev/e2e": "true"}, "maxConcurrentBuilds": 2,
                     "uploads": {"maxContextMiB": MAX_CONTEXT_MIB}}});
        rig.server.apply_manifests(&pool.to_string());
        rig
    })
    .await
}

/// A namespace with a developer: a ServiceAccount bound to the developer roles; returns the
/// namespace and that developer's kubeconfig.
pub async fn developer(rig: &Rig, prefix: &str) -> (String, PathBuf) {
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, prefix).await;
    let binding = |kind: &str, name: &str, at: &str, role_kind: &str, role: &str| {
        let mut meta = json!({"name": name});
        if kind == "RoleBinding" {
            meta["namespace"] = json!(at);
        }
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
               "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": ns}]})
    };
    let objects = [
        binding("RoleBinding", "dev-builds", &ns, "ClusterRole", "kiln-developer"),
        binding("RoleBinding", &format!("dev-{ns}"), NS, "Role", "kiln-developer"),
        binding(
            "ClusterRoleBinding",
            &format!("dev-{ns}"),
            "",
            "ClusterRole",
            "kiln-pool-reader",
        ),
    ];
    for o in objects {
        rig.server.apply_manifests(&o.to_string());
    }
    let kubeconfig = rig.server.service_account_kubeconfig(&ns, "dev").await;
    (ns, kubeconfig)
}

/// Runs `kiln ARGS` as the developer; returns the output.
pub fn kiln(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run kiln")
}

/// The output of a command, for an assertion's message.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The agent's counter of bytes received by uploads.
pub fn uploaded_bytes(rig: &Rig) -> f64 {
    NODES
        .iter()
        .map(|n| rig.agent_metric(n, "kiln_agent_context_upload_bytes_total"))
        .sum()
}

/// Copies the files of `from` into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read testdata") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// A file of this repository.
pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

//! `kiln uninstall`: removes what `kiln install` made — the objects labelled as its install
//! (`app.kubernetes.io/managed-by=kiln`, `app.kubernetes.io/instance=<release>`), the Leases
//! kiln's processes wrote, the Namespace if install created it — and leaves the user's objects
//! alone. The CRDs go only with `--yes` or a confirmation at a terminal: deleting them deletes
//! every ImageBuild, NodeBuild and BuilderPool in the cluster.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::objects::{self, FIELD_MANAGER, describe};
use super::{CREATED_BY, namespace};
use crate::api::ImageBuild;
use crate::cli::exit;
use crate::cli::kube_args::KubeArgs;
use crate::controller::LEADER_LEASE;

/// `kiln uninstall` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Also delete the CRDs, and with them every ImageBuild and BuilderPool, without asking.
    #[arg(short, long)]
    yes: bool,
    /// The install's release name (`kiln` unless installed through Helm under another).
    #[arg(long, default_value = "kiln")]
    release: String,
    /// Cluster flags; `-n` is kiln's namespace (default kiln-system).
    #[command(flatten)]
    kube: KubeArgs,
}

/// The kinds an install has, in the order they are removed.
const KINDS: [(&str, &str, &str); 11] = [
    ("kiln.dev", "v1alpha1", "BuilderPool"),
    ("monitoring.coreos.com", "v1", "ServiceMonitor"),
    ("monitoring.coreos.com", "v1", "PodMonitor"),
    ("networking.k8s.io", "v1", "NetworkPolicy"),
    ("apps", "v1", "Deployment"),
    ("", "v1", "Service"),
    ("rbac.authorization.k8s.io", "v1", "RoleBinding"),
    ("rbac.authorization.k8s.io", "v1", "Role"),
    ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io", "v1", "ClusterRole"),
    ("", "v1", "ServiceAccount"),
];

pub(crate) fn run(args: Args) -> u8 {
    let remove_crds = args.yes || confirm();
    crate::cli::block_on(async move {
        let conn = match args.kube.connect().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::INVALID;
            }
        };
        match uninstall(&conn.client, &namespace(&args.kube), &args.release, remove_crds).await {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        }
    })
}

/// Asks at a terminal whether to delete the CRDs; without one, the answer is no.
fn confirm() -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("Also delete kiln's CRDs? That deletes every ImageBuild, NodeBuild and BuilderPool in the cluster. [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}

async fn uninstall(client: &Client, namespace: &str, release: &str, remove_crds: bool) -> Result<(), String> {
    if remove_crds {
        drain_builds(client).await?;
    }
    let selector = format!("app.kubernetes.io/managed-by=kiln,app.kubernetes.io/instance={release}");
    for (group, version, kind) in KINDS {
        let Ok((resource, caps)) = pinned_kind(client, &GroupVersionKind::gvk(group, version, kind)).await else {
            continue; // not served here (e.g. no Prometheus Operator): nothing of ours can exist
        };
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let list = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| format!("cannot list {kind}s: {e}"))?;
        for o in list.items {
            if objects::delete(&api, &o.name_any()).await? {
                println!("{} deleted", describe(&o));
            }
        }
    }
    delete_leases(client, namespace).await?;
    if remove_crds {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in crate::api::crds::all() {
            let name = crd.metadata.name.unwrap_or_default();
            match crds.delete(&name, &DeleteParams::default()).await {
                Ok(_) => println!("customresourcedefinition/{name} deleted"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(format!("cannot delete CRD {name}: {e}")),
            }
        }
    } else {
        println!("kept the CRDs (deleting them deletes every ImageBuild): kiln uninstall --yes removes them");
    }
    delete_namespace_if_ours(client, namespace).await
}

/// Deletes every ImageBuild while the controller can still release their finalizers (it
/// cancels their builds), then drops the finalizers of any left after a minute.
async fn drain_builds(client: &Client) -> Result<(), String> {
    let builds: Api<ImageBuild> = Api::all(client.clone());
    let Ok(list) = builds.list(&ListParams::default()).await else {
        return Ok(()); // no CRD: no builds
    };
    for b in &list.items {
        let api: Api<ImageBuild> = Api::namespaced(client.clone(), &b.namespace().unwrap_or_default());
        let _ = api.delete(&b.name_any(), &DeleteParams::default()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = builds
            .list(&ListParams::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            for b in left {
                let api: Api<ImageBuild> = Api::namespaced(client.clone(), &b.namespace().unwrap_or_default());
                let patch = json!({"metadata": {"finalizers": null}});
                let _ = api
                    .patch(&b.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The heartbeat Leases of kiln's agents and the controller's leader Lease.
async fn delete_leases(client: &Client, namespace: &str) -> Result<(), String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let heartbeats = leases
        .list(&ListParams::default().labels(crate::api::heartbeat::POOL_LABEL))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    for name in heartbeats
        .iter()
        .map(ResourceExt::name_any)
        .chain([LEADER_LEASE.to_owned()])
    {
        match leases.delete(&name, &DeleteParams::default()).await {
            Ok(_) => println!("lease/{name} deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(format!("cannot delete lease/{name}: {e}")),
        }
    }
    Ok(())
}

async fn delete_namespace_if_ours(client: &Client, namespace: &str) -> Result<(), String> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let Some(ns) = namespaces.get_opt(namespace).await.map_err(|e| e.to_string())? else {
        return Ok(());
    };
    if ns.annotations().get(CREATED_BY).map(String::as_str) == Some(FIELD_MANAGER) {
        namespaces
            .delete(namespace, &DeleteParams::default())
            .await
            .map_err(|e| format!("cannot delete namespace {namespace}: {e}"))?;
        println!("namespace/{namespace} deleted (kiln install created it)");
    } else {
        println!("kept namespace/{namespace} (it existed before kiln install)");
    }
    Ok(())
}

//! `kiln install` and `kiln uninstall`: kiln for clusters without Helm, as `kim builder
//! install` was. Install server-side applies the same objects as `kiln manifests` and the Helm
//! chart (CRDs for the server's version first) under one field manager, and with `--wait`
//! waits until the controller is ready and the default pool has a ready builder, or says what
//! blocks it in the pool's words. Uninstall removes what install made and nothing of the
//! user's; the CRDs (and with them every ImageBuild) only when asked.

mod objects;
mod uninstall;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use serde_json::{Value, json};

use super::kube_args::KubeArgs;
use super::{exit, manifests};
use crate::api::BuilderPool;
use crate::api::conditions::{self, READY};
use crate::deploy::{self, Concrete, Install};

pub(super) use uninstall::{Args as UninstallArgs, run as uninstall};

/// Annotation on a Namespace that `kiln install` created (so uninstall may delete it).
pub const CREATED_BY: &str = "kiln.dev/created-by";

/// `--dry-run` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DryRun {
    /// Print what would be applied; contact no cluster.
    Client,
    /// Send everything as a server-side dry run: the apiserver checks it, nothing is stored.
    Server,
}

/// `kiln install` flags.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Check or show instead of applying (`--dry-run` alone is `client`).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "client")]
    dry_run: Option<DryRun>,
    /// The kiln image for the controller and agents (sets image.repository and image.tag).
    #[arg(long)]
    image: Option<String>,
    /// A values file, as for the Helm chart (repeatable; later ones win).
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    values: Vec<String>,
    /// A value, `key.path=value`, as `helm --set` (repeatable), e.g. `controller.replicas=2`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Wait until the controller is ready and the default pool has a ready builder.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, e.g. 5m.
    #[arg(long, default_value = "5m")]
    timeout: String,
    /// Cluster flags; `-n` is kiln's namespace (default kiln-system).
    #[command(flatten)]
    kube: KubeArgs,
}

/// kiln's namespace: `-n`, else `kiln-system` (not the kubeconfig's namespace).
fn namespace(kube: &KubeArgs) -> String {
    kube.namespace.clone().unwrap_or_else(|| "kiln-system".into())
}

pub(super) fn run(args: Args) -> u8 {
    let install = match manifests::install_from(&namespace(&args.kube), args.image.as_deref(), &args.values, &args.sets)
    {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    let timeout = match crate::cli::parse_duration(&args.timeout) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: --timeout: {e}");
            return exit::INVALID;
        }
    };
    if args.dry_run == Some(DryRun::Client) {
        return print_all(&install);
    }
    super::block_on(async move {
        let conn = match args.kube.connect_or_exit().await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let dry = args.dry_run == Some(DryRun::Server);
        if let Err(e) = apply_all(&conn.client, &install, dry).await {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
        if !args.wait || dry {
            return exit::OK;
        }
        match wait_ready(&conn.client, &install, timeout).await {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        }
    })
}

fn print_all(install: &Install) -> u8 {
    let crds = crate::api::crds::to_yaml();
    match (crds, deploy::to_yaml(install)) {
        (Ok(crds), Ok(objects)) => {
            print!("{crds}{objects}");
            exit::OK
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: could not render the manifests: {e}");
            exit::FAILURE
        }
    }
}

/// Applies the CRDs for the server's version, then every object.
async fn apply_all(client: &kube::Client, install: &Install, dry: bool) -> Result<(), String> {
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
    let minor: u32 = version.minor.trim_end_matches('+').parse().unwrap_or(u32::MAX);
    let crds = crate::api::crds::for_server(minor);
    let mut names = Vec::new();
    for crd in &crds {
        let object = serde_json::to_value(crd).map_err(|e| e.to_string())?;
        report(objects::apply(client, &object, dry).await?, dry);
        names.extend(crd.metadata.name.clone());
    }
    if !dry {
        objects::wait_established(client, &names, Duration::from_secs(60)).await?;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let current = namespaces
        .get_opt(&install.namespace)
        .await
        .map_err(|e| e.to_string())?;
    let existed = current.is_some();
    // Ours if this install creates it, or an earlier one did (the annotation must be applied
    // again each time, or server-side apply would drop it).
    let ours = current.is_none_or(|ns| {
        ns.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CREATED_BY))
            .is_some_and(|v| v == objects::FIELD_MANAGER)
    });
    for mut object in deploy::manifests(install) {
        if object["kind"] == "Namespace" && ours {
            object["metadata"]["annotations"] = json!({CREATED_BY: objects::FIELD_MANAGER});
        }
        match objects::apply(client, &object, dry).await {
            Ok(what) => report(what, dry),
            // A dry run cannot check objects whose namespace or CRD it did not create.
            Err(e) if dry && (!existed || object["apiVersion"].as_str().is_some_and(|v| v.starts_with("kiln.dev"))) => {
                println!("{} (not checked: {e})", kind_name(&object));
            }
            Err(e) => return Err(format!("{e} (nothing after it was applied; run kiln install again)")),
        }
    }
    Ok(())
}

fn report(what: String, dry: bool) {
    println!("{what} {}", if dry { "checked (server dry run)" } else { "applied" });
}

fn kind_name(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or_default().to_lowercase(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Waits for the controller's Deployment to be available and, when the install has one, the
/// default pool to be Ready; says what blocks it otherwise.
async fn wait_ready(client: &kube::Client, install: &Install, timeout: Duration) -> Result<(), String> {
    let source = Concrete::new(
        install.values.clone(),
        &install.release,
        &install.namespace,
        deploy::MANAGED_BY,
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &install.namespace);
    let name = format!("{}-controller", source.fullname());
    let pools: Api<BuilderPool> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    let mut said = String::new();
    loop {
        let deployment = deployments.get_opt(&name).await.ok().flatten();
        let available = deployment
            .and_then(|d| d.status)
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
            > 0;
        let pool = if install.values.default_pool.enabled {
            pools.get_opt("default").await.ok().flatten()
        } else {
            None
        };
        let ready = pool
            .as_ref()
            .and_then(|p| p.status.as_ref())
            .and_then(|s| conditions::find(&s.conditions, READY));
        let pool_ready = !install.values.default_pool.enabled || ready.is_some_and(|c| c.status == "True");
        if available && pool_ready {
            println!(
                "kiln is ready: controller {name} available{}",
                if install.values.default_pool.enabled {
                    ", pool default Ready"
                } else {
                    ""
                }
            );
            return Ok(());
        }
        let now = if !available {
            format!("waiting for deployment/{name} to be available")
        } else {
            format!(
                "waiting for builderpool/default: {}",
                ready
                    .map(|c| c.message.clone())
                    .unwrap_or_else(|| "no status yet".into())
            )
        };
        if now != said {
            eprintln!("{now}");
            said = now;
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after {timeout:?}: {said}"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

//! The steps of one `kiln build`: check the flags, read the Dockerfile and secrets, pack the
//! context into a temporary file (streamed, hashed), check it against the pool's limit, create
//! the build's Secret and ImageBuild, follow it, and print the result.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::follow::{self, Followed, Outcome, Stats, human_bytes};
use super::output::Progress;
use super::spec::{self, SecretSource, Wanted};
use super::{Args, INTERRUPTED};
use crate::api::builder_pool::{BuilderPool, DEFAULT_MAX_CONTEXT_MIB};
use crate::api::image_build::{DEFAULT_POOL, ImageBuild};
use crate::cli::agent_client::AgentClient;
use crate::cli::kube_args::Connection;
use crate::cli::{Output, exit};
use crate::context::{self, PackOptions};

/// Why `kiln build` stopped early, and its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags or input: nothing was created.
    #[error("{0}")]
    Usage(String),
    /// The build could not be made or failed; the message says why.
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// Prints the error and returns the exit code.
    pub fn report(&self) -> u8 {
        eprintln!("error: {self}");
        match self {
            Error::Usage(_) => exit::INVALID,
            Error::Failed(_) => exit::FAILURE,
        }
    }
}

/// Everything known before talking to the cluster.
pub struct Plan {
    wanted: Wanted,
    secrets: BTreeMap<String, Vec<u8>>,
    context: tempfile::NamedTempFile,
    packed: context::Packed,
}

/// Checks the flags, reads the Dockerfile and secret values, and packs the context.
pub fn prepare(args: &Args) -> Result<Plan, Error> {
    let usage = Error::Usage;
    if args.tags.is_empty() {
        return Err(usage(
            "kiln build needs -t NAME: the image is stored on the node under that name".into(),
        ));
    }
    for t in &args.tags {
        crate::api::reference::Reference::parse(t).map_err(|e| usage(format!("-t {t:?}: {e}")))?;
    }
    if !args.context_dir.is_dir() {
        return Err(usage(format!(
            "the build context {} is not a directory",
            args.context_dir.display()
        )));
    }
    let dockerfile = read_dockerfile(args)?;
    let mut build_args = BTreeMap::new();
    for flag in &args.build_args {
        if let Some((k, v)) = spec::build_arg(flag, |k| std::env::var(k).ok()).map_err(usage)? {
            build_args.insert(k, v);
        }
    }
    let secrets = read_secrets(&args.secrets)?;
    let timeout_seconds = args.timeout.as_deref().map(spec::duration_seconds).transpose();
    let timeout_seconds = timeout_seconds.map_err(|e| usage(format!("--timeout: {e}")))?;
    let ttl_seconds = spec::duration_seconds(&args.ttl).map_err(|e| usage(format!("--ttl: {e}")))?;
    let (context, packed) = pack(args)?;
    let wanted = Wanted {
        tags: args.tags.clone(),
        dockerfile,
        target: args.target.clone(),
        build_args,
        secret_ids: secrets.keys().cloned().collect(),
        secrets_object: None,
        platforms: args.platforms.clone(),
        pool: args.pool.clone(),
        node: args.node.clone(),
        all_nodes: args.all_nodes,
        no_cache: args.no_cache,
        pull: args.pull,
        timeout_seconds,
        ttl_seconds,
        context_digest: packed.digest.clone(),
        context_size: packed.size,
    };
    Ok(Plan {
        wanted,
        secrets,
        context,
        packed,
    })
}

fn dockerfile_path(args: &Args) -> Option<std::path::PathBuf> {
    match &args.file {
        Some(f) if f.as_os_str() == "-" => None,
        // Relative to the working directory, as docker build reads -f.
        Some(f) => Some(f.clone()),
        None => Some(args.context_dir.join("Dockerfile")),
    }
}

fn read_dockerfile(args: &Args) -> Result<String, Error> {
    let text = match dockerfile_path(args) {
        None => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Error::Usage(format!("cannot read the Dockerfile from standard input: {e}")))?;
            s
        }
        Some(path) => std::fs::read_to_string(&path).map_err(|e| {
            Error::Usage(format!(
                "cannot read the Dockerfile {}: {e} (use -f to name another)",
                path.display()
            ))
        })?,
    };
    if text.trim().is_empty() {
        return Err(Error::Usage("the Dockerfile is empty".into()));
    }
    if text.len() > 256 * 1024 {
        return Err(Error::Usage(format!(
            "the Dockerfile is {} bytes; kiln carries it in the ImageBuild, which takes at most 256 KiB",
            text.len()
        )));
    }
    Ok(text)
}

fn read_secrets(flags: &[String]) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let mut values = BTreeMap::new();
    for flag in flags {
        let (id, source) = spec::secret_flag(flag).map_err(Error::Usage)?;
        let value = match &source {
            SecretSource::File(path) => {
                std::fs::read(path).map_err(|e| Error::Usage(format!("--secret id={id}: cannot read {path}: {e}")))?
            }
            SecretSource::Env(var) => std::env::var(var)
                .map_err(|_| Error::Usage(format!("--secret id={id}: environment variable {var} is not set")))?
                .into_bytes(),
        };
        values.insert(id, value);
    }
    Ok(values)
}

/// Packs the context into a temporary file; the file is removed when the plan drops.
fn pack(args: &Args) -> Result<(tempfile::NamedTempFile, context::Packed), Error> {
    let dockerfile = dockerfile_path(args);
    let ignore =
        context::load_ignore(&args.context_dir, dockerfile.as_deref()).map_err(|e| Error::Usage(e.to_string()))?;
    let file = tempfile::Builder::new()
        .prefix("kiln-context-")
        .suffix(".tar")
        .tempfile()
        .map_err(|e| Error::Failed(format!("cannot create a temporary file for the context: {e}")))?;
    let writer = std::io::BufWriter::with_capacity(1 << 20, file.as_file());
    let quiet = args.quiet || args.output == Output::Json;
    let mut warn = |w: context::Warning| {
        if !quiet {
            eprintln!("warning: {w}");
        }
    };
    let options = PackOptions {
        root: &args.context_dir,
        ignore: &ignore,
    };
    let packed = context::pack(options, writer, &mut warn).map_err(|e| Error::Usage(e.to_string()))?;
    Ok((file, packed))
}

/// Creates the build (after checking the pool's limit), follows it, prints the result.
pub async fn submit_and_follow(
    args: &Args,
    mut plan: Plan,
    conn: &Connection,
    agents: AgentClient,
    progress: Arc<Progress>,
    started: Instant,
) -> Result<u8, Error> {
    progress.event(&format!(
        "context: {} files, {} ({}), packed in {:.2}s",
        plan.packed.files,
        human_bytes(plan.packed.size),
        short(&plan.packed.digest),
        started.elapsed().as_secs_f64()
    ));
    check_pool_limit(conn, args.pool.as_deref(), plan.packed.size).await?;
    let name = spec::object_name(&args.tags[0], &suffix());
    let ns = conn.namespace.clone();
    if !plan.secrets.is_empty() {
        plan.wanted.secrets_object = Some(format!("{name}-build-secrets"));
    }
    let ib = spec::image_build(&plan.wanted, &name, &ns);
    create(conn, &ib, &plan).await?;
    progress.note(&format!("imagebuild/{name} created in namespace {ns}"));
    let followed = Followed {
        client: conn.client.clone(),
        agents,
        namespace: ns.clone(),
        name: name.clone(),
        context: plan.context.path().to_owned(),
        digest: plan.packed.digest.clone(),
        size: plan.packed.size,
    };
    let stats = Stats::default();
    let outcome = follow::follow(&followed, progress.clone(), &stats)
        .await
        .map_err(|e| Error::Failed(format!("imagebuild/{name}: {e}")))?;
    progress.finish();
    let uploaded = stats.uploaded.load(Ordering::Relaxed);
    Ok(report(args, &outcome, &plan, uploaded, started))
}

/// Refuses a context over the pool's limit before anything is created (when the pool can be
/// read; the agent enforces the limit either way).
async fn check_pool_limit(conn: &Connection, pool: Option<&str>, size: u64) -> Result<(), Error> {
    let pools: Api<BuilderPool> = Api::all(conn.client.clone());
    let name = pool.unwrap_or(DEFAULT_POOL);
    let Ok(Some(pool)) = pools.get_opt(name).await else {
        return Ok(());
    };
    let mib = pool
        .spec
        .uploads
        .as_ref()
        .and_then(|u| u.max_context_mib)
        .unwrap_or(DEFAULT_MAX_CONTEXT_MIB);
    let limit = u64::try_from(mib).unwrap_or(0) * 1024 * 1024;
    if size > limit {
        return Err(Error::Failed(format!(
            "the context is {} ({size} bytes), over pool {name}'s limit of {mib} MiB (spec.uploads.maxContextMiB); leave files out with a .dockerignore. Nothing was created",
            human_bytes(size)
        )));
    }
    Ok(())
}

/// Creates the Secret (if any) and the ImageBuild, then makes the build own the Secret.
async fn create(conn: &Connection, ib: &ImageBuild, plan: &Plan) -> Result<(), Error> {
    let ns = &conn.namespace;
    let builds: Api<ImageBuild> = Api::namespaced(conn.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(conn.client.clone(), ns);
    let failed = |what: &str, e: kube::Error| Error::Failed(format!("cannot create {what} in namespace {ns}: {e}"));
    let secret_name = plan.wanted.secrets_object.clone();
    if let Some(secret_name) = &secret_name {
        let data = plan
            .secrets
            .iter()
            .map(|(id, v)| (spec::secret_key(id), ByteString(v.clone())))
            .collect();
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name.clone()),
                labels: ib.metadata.labels.clone(),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|e| failed("the build's Secret", e))?;
    }
    let created = match builds.create(&PostParams::default(), ib).await {
        Ok(c) => c,
        Err(e) => {
            if let Some(s) = &secret_name {
                let _ = secrets.delete(s, &Default::default()).await;
            }
            return Err(failed("the ImageBuild", e));
        }
    };
    if let (Some(s), Some(owner)) = (&secret_name, created.controller_owner_ref(&())) {
        let patch = json!({"metadata": {"ownerReferences": [owner]}});
        let _ = secrets.patch(s, &PatchParams::default(), &Patch::Merge(&patch)).await;
    }
    Ok(())
}

/// Prints the outcome; returns the exit code.
fn report(args: &Args, outcome: &Outcome, plan: &Plan, uploaded: u64, started: Instant) -> u8 {
    let ib = match outcome {
        Outcome::Interrupted => {
            eprintln!("interrupted: the build was cancelled");
            return INTERRUPTED;
        }
        Outcome::Ready(ib) | Outcome::Stalled(ib) => ib,
    };
    let status = ib.status.clone().unwrap_or_default();
    let ready = matches!(outcome, Outcome::Ready(_));
    let reference = status.image_ref.clone().unwrap_or_else(|| {
        format!(
            "{} ({})",
            ib.spec.recipe.image,
            status.digest.clone().unwrap_or_default()
        )
    });
    if args.output == Output::Json {
        let progress = status.progress.clone().unwrap_or_default();
        let result = json!({
            "name": ib.name_any(),
            "namespace": ib.namespace(),
            "image": ib.spec.recipe.image,
            "tags": args.tags,
            "succeeded": ready,
            "digest": status.digest,
            "digestKind": status.digest_kind,
            "imageRef": status.image_ref,
            "nodes": status.nodes.iter().map(|n| json!({"name": n.name, "phase": n.phase, "digest": n.digest})).collect::<Vec<_>>(),
            "durationSeconds": started.elapsed().as_secs_f64(),
            "steps": progress.total,
            "cachedSteps": progress.cached,
            "context": {"digest": plan.packed.digest, "bytes": plan.packed.size, "uploadedBytes": uploaded},
            "reason": status.reason,
            "message": (!ready).then_some(status.message.clone()).flatten(),
        });
        println!("{result:#}");
    } else if ready && args.quiet {
        println!(
            "{}",
            status.image_ref.clone().or(status.digest.clone()).unwrap_or_default()
        );
    } else if ready {
        eprintln!("built in {:.1}s", started.elapsed().as_secs_f64());
        println!("{reference}");
    }
    if !ready {
        eprintln!(
            "error: the build failed ({}): {}",
            status.reason.unwrap_or_default(),
            status.message.unwrap_or_default()
        );
        return exit::FAILURE;
    }
    exit::OK
}

fn short(digest: &str) -> String {
    digest.chars().take("sha256:".len() + 12).collect()
}

/// Five random lowercase letters and digits.
fn suffix() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id.chars().filter(char::is_ascii_alphanumeric).take(5).collect()
}

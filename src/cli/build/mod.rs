//! `kiln build`: build an image from a local directory on the node(s) that will run it, as
//! `docker build` would — pack the context (honouring `.dockerignore`), create an ImageBuild,
//! send the context to the chosen node's agent through the apiserver, show progress, print
//! the image reference. Exit codes: 0 built, 1 build failed, 2 usage or configuration error,
//! 130 interrupted (the build is cancelled in the cluster first).

mod follow;
mod output;
mod spec;
mod submit;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub use output::ProgressMode;

use super::Output;
use super::agent_client::{AgentClient, Transport};
use super::exit;
use super::kube_args::KubeArgs;

/// Exit code after Ctrl-C (128 + SIGINT), as shells report it.
pub const INTERRUPTED: u8 = 130;

/// `kiln build` flags: `docker build`'s names.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Name (and tag) of the image on the node, e.g. `example.com/app:dev`; repeat for more
    /// names of the same image. Tilt passes `$EXPECTED_REF`.
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT_DIR/Dockerfile); may lie outside the context; `-` reads
    /// it from standard input.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    file: Option<PathBuf>,
    /// The stage of a multi-stage Dockerfile to build.
    #[arg(long)]
    target: Option<String>,
    /// A build argument, `NAME=VALUE` (or `NAME` to take it from the environment).
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    build_args: Vec<String>,
    /// A build secret for `RUN --mount=type=secret`: `id=ID,src=FILE` or `id=ID,env=VAR`. Stored
    /// in a Secret owned by the build, never in the ImageBuild.
    #[arg(long = "secret", value_name = "id=ID,src=FILE")]
    secrets: Vec<String>,
    /// Target platform, `os/arch[/variant]` (default: the node's).
    #[arg(long = "platform")]
    platforms: Vec<String>,
    /// Build on this node.
    #[arg(long, conflicts_with = "all_nodes")]
    node: Option<String>,
    /// Build on every node of the pool (each gets the context).
    #[arg(long)]
    all_nodes: bool,
    /// The BuilderPool to build in (default: `default`).
    #[arg(long)]
    pool: Option<String>,
    /// Build every step anew.
    #[arg(long)]
    no_cache: bool,
    /// Always ask the registry for `FROM` images (default: use the node's image when it has one).
    #[arg(long)]
    pull: bool,
    /// Give up (and cancel the build) after this long, e.g. `10m`.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// How long the finished ImageBuild stays in the cluster, e.g. `1h`.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    ttl: String,
    /// Progress display: `auto` (live on a terminal, plain lines otherwise), `tty`, `plain`.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Print only the built image (`name@digest`, or the image ID on Docker nodes).
    #[arg(short, long)]
    quiet: bool,
    /// Output format of the result.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// How the context reaches the node's agent through the apiserver.
    #[arg(long, value_enum, default_value_t = Transport::Proxy, env = "KILN_UPLOAD_VIA")]
    upload_via: Transport,
    #[command(flatten)]
    kube: KubeArgs,
    /// The build context: a directory.
    #[arg(value_name = "CONTEXT_DIR")]
    context_dir: PathBuf,
}

/// Runs `kiln build`.
pub(crate) fn run(args: Args) -> u8 {
    super::block_on(async move {
        let started = Instant::now();
        let plan = match submit::prepare(&args) {
            Ok(plan) => plan,
            Err(e) => return e.report(),
        };
        let conn = match args.kube.connect().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::INVALID;
            }
        };
        let agents = match AgentClient::new(&conn.config, conn.client.clone(), args.upload_via) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::INVALID;
            }
        };
        let progress = Arc::new(output::Progress::new(
            args.progress,
            args.quiet || args.output == Output::Json,
            args.all_nodes,
        ));
        let result = submit::submit_and_follow(&args, plan, &conn, agents, progress.clone(), started).await;
        progress.finish();
        match result {
            Ok(code) => code,
            Err(e) => e.report(),
        }
    })
}

//! The command line: one subcommand per role or task, parsed with clap.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod agent;
pub mod agent_client;
mod build;
mod controller;
mod crds;
mod generate;
mod get;
pub mod images;
mod install;
pub mod kube_args;
mod logs;
mod manifests;
pub mod rmi;
mod table;
mod validate;

/// `kiln --version`: the crate version and the git revision it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KILN_REVISION"), ")");

/// Exit codes scripts can rely on.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The operation failed (a build failed, a server error, …).
    pub const FAILURE: u8 = 1;
    /// Bad usage or invalid input (nothing was changed).
    pub const INVALID: u8 = 2;
}

/// kiln builds container images on the Kubernetes nodes that will run them:
/// no registry, no push, no pull.
#[derive(Parser, Debug)]
#[command(name = "kiln", version = VERSION, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print kiln's CustomResourceDefinitions as YAML (what `crds/` holds).
    Crds(crds::Args),
    /// Check ImageBuild and BuilderPool manifests offline, with the rules the controller applies.
    Validate(validate::Args),
    /// Print the install manifests: namespace, RBAC, controller Deployment, default pool.
    Manifests(manifests::Args),
    /// Install kiln into the cluster (server-side apply of the manifests; no Helm needed).
    Install(install::Args),
    /// Remove what `kiln install` made (the CRDs, and with them every build, only if asked).
    Uninstall(install::UninstallArgs),
    /// Write the generated install files (deploy/, charts/kiln/) under a directory (`make generate`).
    #[command(hide = true)]
    Generate(generate::Args),
    /// Run the controller: BuilderPools to builder DaemonSets, ImageBuilds to node builds.
    Controller(controller::Args),
    /// Run a node's agent: heartbeat its BuildKit and run the node's builds.
    Agent(agent::Args),
    /// Build an image from a local directory on the node(s) that will run it.
    Build(build::Args),
    /// List ImageBuilds: phase, node(s), digest, age.
    Get(get::Args),
    /// List the images kiln built, per node: build, digest, still present, pods using them.
    Images(images::Args),
    /// Remove images kiln built from the nodes: deletes the ImageBuilds that name them, with
    /// image cleanup (a node keeps an image a live pod there uses, and says so).
    Rmi(rmi::Args),
    /// Print a build's log from the node(s) it ran on (`-f` to follow).
    Logs(logs::Args),
}

/// Output formats for commands that print data.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// Human-readable text.
    #[default]
    Text,
    /// JSON, for scripts.
    Json,
}

impl Cli {
    /// Runs the chosen command and returns the process exit code.
    pub fn run(self) -> ExitCode {
        let code = match self.command {
            Command::Crds(args) => crds::run(&args),
            Command::Validate(args) => validate::run(&args),
            Command::Manifests(args) => manifests::run(&args),
            Command::Generate(args) => generate::run(&args),
            Command::Install(args) => install::run(args),
            Command::Uninstall(args) => install::uninstall(args),
            Command::Controller(args) => {
                init_logging();
                controller::run(args)
            }
            Command::Agent(args) => {
                init_logging();
                agent::run(args)
            }
            Command::Build(args) => build::run(args),
            Command::Get(args) => get::run(args),
            Command::Images(args) => images::run(args),
            Command::Rmi(args) => rmi::run(args),
            Command::Logs(args) => logs::run(args),
        };
        ExitCode::from(code)
    }
}

/// A duration flag: `90` (seconds), `90s`, `15m`, `1h30m`; at least a second.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let secs = if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
        s.parse::<u64>().map_err(|e| e.to_string())?
    } else {
        let d: kube::core::Duration = s
            .parse()
            .map_err(|_| format!("{s:?} is not a duration such as 90s, 15m or 1h"))?;
        std::time::Duration::from(d).as_secs()
    };
    if secs == 0 {
        return Err(format!("{s:?} must be at least one second"));
    }
    Ok(std::time::Duration::from_secs(secs))
}

/// Reads a file, or standard input for `-`.
fn read_input(path: &PathBuf) -> std::io::Result<String> {
    if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and `kubectl logs` get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs an async command on a fresh multi-threaded runtime.
fn block_on(future: impl Future<Output = u8>) -> u8 {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(future),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            exit::FAILURE
        }
    }
}

/// A client from KUBECONFIG or the in-cluster service account; says what to check when neither works.
async fn kube_client() -> Option<kube::Client> {
    match kube::Client::try_default().await {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!(
                "error: cannot reach the Kubernetes API: {e} (check KUBECONFIG or the in-cluster service account)"
            );
            None
        }
    }
}

/// `host-pid`, for identities when no pod name is given.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "kiln".into());
    format!("{host}-{}", std::process::id())
}

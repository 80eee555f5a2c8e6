//! `kiln agent`: the per-node sidecar next to BuildKit. It heartbeats the node's builder
//! capacity into a Lease (so the controller knows the builder is ready) and, next, runs the
//! node's NodeBuilds on the local BuildKit.

pub mod executor;
pub mod heartbeat;
pub mod logs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use tracing::info;

use crate::buildkit::{Endpoint, Network, TlsConfig};
use crate::http::{self, Reply, StatusCode};

/// Settings of `kiln agent`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The pool this agent's builder belongs to.
    pub pool: String,
    /// The node it runs on.
    pub node: String,
    /// Namespace of kiln (heartbeat Leases live there).
    pub namespace: String,
    /// This agent instance (pod name, or host and PID); changes on restart.
    pub identity: String,
    /// The local BuildKit.
    pub buildkit: Endpoint,
    /// TLS for `tcp://` BuildKit endpoints.
    pub tls: Option<TlsConfig>,
    /// The node's runtime flavour, reported in the heartbeat.
    pub runtime: String,
    /// Builds this node runs at once.
    pub max_concurrent_builds: i32,
    /// Probe (and later logs) address.
    pub listen: SocketAddr,
    /// How long a heartbeat is valid.
    pub lease_duration: Duration,
    /// Network of `RUN` steps.
    pub network: Network,
    /// Where build logs are kept.
    pub log_dir: std::path::PathBuf,
    /// buildkitd's TMPDIR as the agent sees it (containerd flavours): recreated before a build
    /// if something removed it, since buildkitd cannot fetch a context without it.
    pub buildkit_tmp: Option<std::path::PathBuf>,
}

/// Agent state shared between its tasks.
#[derive(Default)]
pub struct State {
    /// True while BuildKit answered the last check.
    pub buildkit_ready: AtomicBool,
    /// Builds running now.
    pub running: AtomicI32,
    /// Builds waiting for a slot.
    pub queued: AtomicI32,
}

/// Agent errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log directory cannot be used.
    #[error("cannot use log directory {dir}: {source}")]
    Logs {
        /// Directory.
        dir: std::path::PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// The probe server could not start.
    #[error("cannot serve probes on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// I/O error.
        source: std::io::Error,
    },
}

/// Runs the agent until it is stopped.
pub async fn run(client: kube::Client, settings: Settings) -> Result<(), Error> {
    let state = Arc::new(State::default());
    let probe_state = state.clone();
    let logs = logs::LogStore::new(&settings.log_dir).map_err(|source| Error::Logs {
        dir: settings.log_dir.clone(),
        source,
    })?;
    let served_logs = logs.clone();
    let (addr, serve) = http::bind(
        settings.listen,
        Arc::new(move |path: &str| match path {
            "/healthz" => Reply::ok("ok"),
            "/readyz" if probe_state.buildkit_ready.load(Ordering::Relaxed) => Reply::ok("ok"),
            "/readyz" => Reply::status(StatusCode::SERVICE_UNAVAILABLE, "BuildKit is not answering"),
            p if p.starts_with("/logs/") => {
                match p
                    .trim_start_matches("/logs/")
                    .split_once('/')
                    .and_then(|(ns, name)| served_logs.read(ns, name))
                {
                    Some(text) => Reply::ok(text),
                    None => Reply::status(StatusCode::NOT_FOUND, "no log for that build on this node"),
                }
            }
            _ => Reply::status(StatusCode::NOT_FOUND, "not found"),
        }),
    )
    .await
    .map_err(|source| Error::Listen {
        addr: settings.listen,
        source,
    })?;
    info!(%addr, node = %settings.node, pool = %settings.pool, buildkit = %settings.buildkit, "agent serving probes");
    tokio::spawn(serve);
    let executor = executor::Executor::new(client.clone(), settings.clone(), state.clone(), logs);
    tokio::select! {
        _ = async { tokio::join!(heartbeat::run(client, settings, state), executor.run()) } => {}
        signal = crate::shutdown::signal() => {
            // Exiting drops the solve sessions, so BuildKit stops the builds in flight; the next
            // agent on this node reports them as AgentRestarted, or the controller sees the
            // heartbeat stop (NodeLost), and either way they are retried.
            info!(signal, "stopping: builds in flight end with this process and are retried");
        }
    }
    Ok(())
}

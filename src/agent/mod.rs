//! `kiln agent`: the per-node sidecar next to BuildKit. It heartbeats the node's builder
//! capacity into a Lease (so the controller knows the builder is ready), runs the node's
//! NodeBuilds on the local BuildKit, receives uploaded contexts and serves them to BuildKit,
//! and serves build logs.

pub mod cleanup;
pub mod contexts;
pub mod executor;
pub mod heartbeat;
pub mod logs;
pub mod node_pods;
pub mod pin;
pub mod policy;
pub mod poll;
pub mod presence;
pub mod request;
pub mod revision;
pub mod server;
pub mod simulated;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32};
use std::time::Duration;

use tracing::{info, warn};

use crate::api::node_build::AgentEndpoint;
use crate::buildkit::{Endpoint, Network, TlsConfig};

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
    /// Address of the agent's API: probes, metrics, logs, uploads.
    pub listen: SocketAddr,
    /// This agent's pod and port, as clients reach it through the apiserver (none when it does
    /// not run in a pod: then nothing can be uploaded to it).
    pub endpoint: Option<AgentEndpoint>,
    /// Where uploaded contexts are kept (the pool's state directory on the node).
    pub contexts_dir: std::path::PathBuf,
    /// Limits of the context store.
    pub context_limits: contexts::Limits,
    /// How long an attempt waits for its uploaded context.
    pub upload_wait: Duration,
    /// Where the node's BuildKit fetches uploaded contexts from: loopback where buildkitd shares
    /// the pod's network, the pod's address on Docker nodes. Port 0 picks a free one.
    pub context_listen: SocketAddr,
    /// How long a heartbeat is valid.
    pub lease_duration: Duration,
    /// Network of `RUN` steps.
    pub network: Network,
    /// Where build logs are kept.
    pub log_dir: std::path::PathBuf,
    /// buildkitd's TMPDIR as the agent sees it (containerd flavours): recreated before a build
    /// if something removed it, since buildkitd cannot fetch a context without it.
    pub buildkit_tmp: Option<std::path::PathBuf>,
    /// How long a build runs before it is reported `Running` (see [`DEFAULT_PROGRESS_DELAY_MS`]).
    pub progress_delay: Duration,
    /// The scale harness's stand-in for BuildKit ([`simulated`]); `None` (always, outside the
    /// harness) builds on `buildkit`.
    pub simulated: Option<Arc<simulated::SimulatedBuildKit>>,
    /// The node's image store, to check that built images are still there ([`presence`]);
    /// `None` checks nothing.
    pub image_store: Option<crate::store::ImageStore>,
    /// How often [`presence`] checks.
    pub presence_interval: Duration,
}

/// How long a build waits for the first listing of a watch the agent checks it against (its
/// pool's rules, its node's pods) before it is refused, and retried by the controller.
pub(crate) const LIST_WAIT: Duration = Duration::from_secs(30);

/// Default of `--progress-delay-ms`. Intermediate states cost API writes and are only worth
/// showing for builds a person can watch; a cached build (tens of milliseconds) is reported
/// once, when it is done. 250 ms is below what a person notices in `kubectl get -w`.
pub const DEFAULT_PROGRESS_DELAY_MS: u64 = 250;

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
    /// The context store cannot be used.
    #[error("cannot use the context directory {dir}: {source}; check the pool's stateDir on this node")]
    Contexts {
        /// Directory.
        dir: std::path::PathBuf,
        /// I/O error.
        source: std::io::Error,
    },
    /// A server could not start.
    #[error("cannot listen on {addr}: {source}")]
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
    let logs = logs::LogStore::new(&settings.log_dir).map_err(|source| Error::Logs {
        dir: settings.log_dir.clone(),
        source,
    })?;
    let contexts = contexts::ContextStore::open(&settings.contexts_dir, settings.context_limits).map_err(|source| {
        Error::Contexts {
            dir: settings.contexts_dir.clone(),
            source,
        }
    })?;
    let contexts_url = serve_contexts(&settings, contexts.clone()).await?;
    let api = Arc::new(server::Api {
        state: state.clone(),
        logs: logs.clone(),
        contexts: contexts.clone(),
    });
    let (addr, serving) = server::serve(settings.listen, move |req| api.clone().route(req))
        .await
        .map_err(|source| Error::Listen {
            addr: settings.listen,
            source,
        })?;
    info!(%addr, node = %settings.node, pool = %settings.pool, buildkit = %settings.buildkit, "agent serving its API");
    tokio::spawn(serving);
    tokio::spawn(collect_context_garbage(contexts.clone()));
    let executor = executor::Executor::new(
        client.clone(),
        settings.clone(),
        state.clone(),
        logs,
        contexts,
        contexts_url,
    );
    tokio::spawn(
        poll::Poller {
            node_builds: executor.node_builds(),
            client: client.clone(),
        }
        .run(),
    );
    match settings.image_store.clone() {
        Some(store) if settings.simulated.is_none() => {
            let presence = presence::Presence {
                store,
                node_builds: executor.node_builds(),
                client: client.clone(),
                interval: settings.presence_interval,
            };
            tokio::spawn(presence.run());
        }
        _ => info!("no image store to ask: built images are not checked for presence on this node"),
    }
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

/// Serves stored contexts to BuildKit; returns their base URL (with this run's secret token).
async fn serve_contexts(settings: &Settings, contexts: Arc<contexts::ContextStore>) -> Result<String, Error> {
    let token: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
    let url_token = token.clone();
    let (addr, serving) = server::serve(settings.context_listen, move |req| {
        server::serve_context(contexts.clone(), token.clone(), req)
    })
    .await
    .map_err(|source| Error::Listen {
        addr: settings.context_listen,
        source,
    })?;
    tokio::spawn(serving);
    Ok(format!("http://{addr}/contexts/{url_token}"))
}

/// Deletes old and surplus contexts every few minutes.
async fn collect_context_garbage(contexts: Arc<contexts::ContextStore>) {
    let mut every = tokio::time::interval(Duration::from_secs(300));
    loop {
        every.tick().await;
        if let Err(e) = contexts.collect_garbage(std::time::SystemTime::now()) {
            warn!(error = %e, dir = %contexts.dir().display(), "cannot collect old contexts");
        }
    }
}

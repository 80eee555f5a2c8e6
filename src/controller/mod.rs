//! `kiln controller`: reconciles BuilderPools into builder DaemonSets and ImageBuilds into
//! NodeBuilds, behind leader election, serving `/healthz`, `/readyz` and `/metrics`. This file
//! holds what both share (context, errors, settings) and starts them; `wiring` connects their
//! watches, and `heartbeats` is the builders' heartbeats, which one watch keeps for both.

pub mod build;
pub mod heartbeats;
mod lanes;
pub mod pool;
mod wiring;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::{Api, Client};
use tracing::info;

use crate::api::{BuilderPool, NodeBuild};
use crate::http::{self, Reply};
use crate::leader::{self, Elector};
use crate::metrics::Metrics;

/// Field manager for objects the controller owns.
pub const FIELD_MANAGER: &str = "kiln-controller";
/// Field manager for status writes (separate: on 1.20 one manager cannot own both).
pub const STATUS_FIELD_MANAGER: &str = "kiln-controller-status";

/// What every reconcile needs.
pub struct Context {
    /// API client.
    pub client: Client,
    /// The controller's namespace, where builders and heartbeats live.
    pub namespace: String,
    /// The kiln image agents run when a pool names none.
    pub agent_image: String,
    /// The ServiceAccount builder pods run as.
    pub agent_service_account: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes events on the objects it reconciles.
    pub recorder: Recorder,
    /// What the build controller remembers between reconciles ([`build::memory`]).
    pub memory: std::sync::Mutex<build::memory::Memory>,
    /// How long a new generation may go without an in-progress status ([`build::pacing`]).
    pub status_delay: Duration,
    /// Every NodeBuild, as the build controller's watch keeps it (reads without API calls).
    pub node_builds: reflector::Store<NodeBuild>,
    /// Whether [`Context::node_builds`] has listed once.
    pub node_builds_listed: crate::watch::Listed,
    /// Keys into [`Context::node_builds`] by build, node and cache key ([`build::index`]).
    pub node_build_index: std::sync::RwLock<build::index::Index>,
    /// The builders' heartbeat Leases parsed, with a shared snapshot per pool, as the one
    /// heartbeat watch keeps them for both controllers ([`heartbeats`]).
    pub heartbeats: std::sync::RwLock<heartbeats::Heartbeats>,
    /// Whether the heartbeat watch has listed once (so [`Context::heartbeats`] holds them all).
    pub heartbeats_listed: crate::watch::Listed,
    /// The pool controller's own watch caches ([`pool::cache`]).
    pub pool: pool::cache::Caches,
    /// Every BuilderPool, as the build controller's watch keeps it: each build's image-name
    /// policy ([`build::policy`]).
    pub pools: reflector::Store<BuilderPool>,
    /// Whether [`Context::pools`] has listed once.
    pub pools_listed: crate::watch::Listed,
    /// Held from counting a node's attempts to creating a new one, by dispatches into pools with
    /// a queue limit (`maxQueuedBuilds`): reconciles run concurrently, and two that counted the
    /// same free place would both take it.
    pub queue_places: tokio::sync::Mutex<()>,
}

/// Controller errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the controller was doing.
        action: &'static str,
        /// The API error.
        source: kube::Error,
    },
    /// Rendering produced an invalid object (a bug).
    #[error(transparent)]
    Render(#[from] pool::render::RenderError),
    /// Leader election failed.
    #[error(transparent)]
    Leader(#[from] leader::Error),
    /// The probe/metrics server could not start.
    #[error("cannot serve probes and metrics on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A watch cache of the build controller stopped (the controller is shutting down).
    #[error("the {0} cache stopped; the controller is shutting down")]
    CacheStopped(&'static str),
    /// The kiln CRDs are not installed.
    #[error("the kiln CRDs are not installed ({0}); install them with `kiln crds | kubectl apply --server-side -f -`")]
    CrdsMissing(kube::Error),
}

impl Error {
    /// Wraps a kube error with what was being done.
    pub fn kube(action: &'static str) -> impl Fn(kube::Error) -> Error {
        move |source| Error::Kube { action, source }
    }

    /// A short category for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "api",
            Error::Render(_) => "render",
            Error::Leader(_) => "leader",
            Error::Listen { .. } => "listen",
            Error::CrdsMissing(_) => "crds",
            Error::CacheStopped(_) => "cache",
        }
    }
}

/// Settings of `kiln controller`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace for builders, heartbeats and the leader Lease.
    pub namespace: String,
    /// Default agent image.
    pub agent_image: String,
    /// The ServiceAccount builder pods run as (the install's `<name>-agent`).
    pub agent_service_account: String,
    /// Probe and metrics address.
    pub listen: SocketAddr,
    /// Leader election (off only for single-replica debugging).
    pub leader_election: bool,
    /// This replica's identity in the leader Lease.
    pub identity: String,
    /// Lease duration for leader election.
    pub lease_duration: Duration,
    /// How long a new ImageBuild generation may go without an in-progress status (see
    /// [`build::pacing`]).
    pub status_delay: Duration,
    /// ImageBuild reconciles that run at once, at most; 0 for no limit.
    pub concurrent_reconciles: u16,
}

/// Default of `--concurrent-reconciles`: as many requests in flight as the apiserver baseline
/// of the scale bench uses to reach its write capacity.
pub const DEFAULT_CONCURRENT_RECONCILES: u16 = 64;

/// Name of the leader election Lease.
pub const LEADER_LEASE: &str = "kiln-controller";

/// Runs the controller until it fails or loses leadership: probes → CRDs → leadership →
/// caches and context → both controllers.
pub async fn run(client: Client, settings: Settings) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    serve_probes(settings.listen, metrics.clone(), ready.clone()).await?;
    Api::<BuilderPool>::all(client.clone())
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
        .map_err(Error::CrdsMissing)?;
    ready.store(true, Ordering::Relaxed);
    let elector = Elector::new(
        client.clone(),
        &settings.namespace,
        LEADER_LEASE,
        &settings.identity,
        settings.lease_duration,
    );
    if settings.leader_election && !stand_by(&elector).await? {
        return Ok(());
    }
    let controllers = controllers(client, &settings, metrics);
    if settings.leader_election {
        tokio::select! {
            () = controllers => {
                // Stopped by a signal: hand over at once.
                elector.release().await;
                Ok(())
            }
            lost = elector.keep() => Err(lost.into()),
        }
    } else {
        controllers.await;
        Ok(())
    }
}

/// Serves `/healthz`, `/readyz` (once `ready`) and `/metrics` on `listen`, in the background.
async fn serve_probes(listen: SocketAddr, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Result<(), Error> {
    let (addr, serve) = http::bind(
        listen,
        Arc::new(move |path: &str| match path {
            "/healthz" => Reply::ok("ok"),
            "/readyz" if ready.load(Ordering::Relaxed) => Reply::ok("ok"),
            "/readyz" => Reply::status(http::StatusCode::SERVICE_UNAVAILABLE, "not ready"),
            "/metrics" => Reply {
                status: http::StatusCode::OK,
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body: metrics.encode(),
            },
            _ => Reply::status(http::StatusCode::NOT_FOUND, "not found"),
        }),
    )
    .await
    .map_err(|source| Error::Listen { addr: listen, source })?;
    info!(%addr, "serving /healthz, /readyz and /metrics");
    tokio::spawn(serve);
    Ok(())
}

/// Waits, possibly for long, until this process leads; false if it was told to stop first.
async fn stand_by(elector: &Elector) -> Result<bool, Error> {
    tokio::select! {
        acquired = elector.acquire() => acquired.map(|()| true).map_err(Error::from),
        signal = crate::shutdown::signal() => {
            info!(signal, "stopping while standing by for leadership");
            Ok(false)
        }
    }
}

/// Both controllers, on caches they share, until a signal stops them.
async fn controllers(client: Client, settings: &Settings, metrics: Arc<Metrics>) {
    let (node_builds, node_builds_writer) = reflector::store();
    let (pool_nodes, pool_nodes_writer) = reflector::store();
    let (daemonsets, daemonsets_writer) = reflector::store();
    let (pools, pools_writer) = reflector::store();
    let (heartbeat_feed, heartbeat_news, heartbeats_listed) = wiring::heartbeat_feed();
    let ctx = Arc::new(Context {
        client: client.clone(),
        namespace: settings.namespace.clone(),
        agent_image: settings.agent_image.clone(),
        agent_service_account: settings.agent_service_account.clone(),
        metrics,
        memory: std::sync::Mutex::default(),
        queue_places: tokio::sync::Mutex::const_new(()),
        status_delay: settings.status_delay,
        node_builds_listed: crate::watch::Listed::new(node_builds.clone(), "NodeBuild"),
        node_builds,
        node_build_index: std::sync::RwLock::default(),
        heartbeats: std::sync::RwLock::default(),
        pool: pool::cache::Caches::new(pool_nodes, heartbeats_listed.clone(), daemonsets),
        heartbeats_listed,
        pools_listed: crate::watch::Listed::new(pools.clone(), "BuilderPool"),
        pools,
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "kiln-controller".into(),
                instance: Some(settings.identity.clone()),
            },
        ),
    });
    let heartbeats = wiring::follow_heartbeats(ctx.clone(), heartbeat_feed);
    let pool_writers = wiring::PoolWriters {
        nodes: pool_nodes_writer,
        daemonsets: daemonsets_writer,
    };
    let build_writers = wiring::BuildWriters {
        node_builds: node_builds_writer,
        pools: pools_writer,
    };
    let both = async {
        tokio::join!(
            wiring::pool_controller(ctx.clone(), pool_writers, heartbeat_news.pools),
            wiring::build_controller(
                ctx,
                build_writers,
                heartbeat_news.builds,
                settings.concurrent_reconciles
            )
        )
    };
    // The heartbeat watch feeds both and runs as long as they do: they stop on a signal, and it
    // never ends on its own (so not in the `join!`, which would then never end).
    tokio::select! {
        _ = both => {}
        never = heartbeats => match never {},
    }
}

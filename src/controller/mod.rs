//! `kiln controller`: reconciles BuilderPools into builder DaemonSets (and, next, ImageBuilds
//! into NodeBuilds), behind leader election, serving `/healthz`, `/readyz` and `/metrics`.

pub mod build;
pub mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use kube::{Api, Client};
use tracing::{debug, info, warn};

use crate::api::heartbeat::{HEARTBEAT_LABEL, Heartbeat};
use crate::api::{BuilderPool, ImageBuild, NodeBuild};
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
    /// The builders' heartbeat Leases, likewise.
    pub heartbeat_leases: reflector::Store<Lease>,
    /// Whether [`Context::heartbeat_leases`] has listed once.
    pub heartbeat_leases_listed: crate::watch::Listed,
    /// Those Leases parsed, with a shared snapshot per pool ([`build::heartbeats`]).
    pub heartbeats: std::sync::RwLock<build::heartbeats::Heartbeats>,
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
}

/// Name of the leader election Lease.
pub const LEADER_LEASE: &str = "kiln-controller";

/// Runs the controller until it fails or loses leadership.
pub async fn run(client: Client, settings: Settings) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let (addr, serve) = {
        let metrics = metrics.clone();
        let ready = ready.clone();
        http::bind(
            settings.listen,
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
        .map_err(|source| Error::Listen {
            addr: settings.listen,
            source,
        })?
    };
    info!(%addr, "serving /healthz, /readyz and /metrics");
    tokio::spawn(serve);

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
    if settings.leader_election {
        // A standby waits here, possibly for long: it must still stop when told to.
        tokio::select! {
            acquired = elector.acquire() => acquired?,
            signal = crate::shutdown::signal() => {
                info!(signal, "stopping while standing by for leadership");
                return Ok(());
            }
        }
    }
    let (node_builds, node_builds_writer) = reflector::store();
    let (heartbeat_leases, leases_writer) = reflector::store();
    let (pool_nodes, pool_nodes_writer) = reflector::store();
    let (pool_leases, pool_leases_writer) = reflector::store();
    let (daemonsets, daemonsets_writer) = reflector::store();
    let (pools, pools_writer) = reflector::store();
    let pool_writers = PoolWriters {
        nodes: pool_nodes_writer,
        leases: pool_leases_writer,
        daemonsets: daemonsets_writer,
    };
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
        heartbeat_leases_listed: crate::watch::Listed::new(heartbeat_leases.clone(), "heartbeat Lease"),
        heartbeat_leases,
        heartbeats: std::sync::RwLock::default(),
        pool: pool::cache::Caches::new(pool_nodes, pool_leases, daemonsets),
        pools_listed: crate::watch::Listed::new(pools.clone(), "BuilderPool"),
        pools,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "kiln-controller".into(),
                instance: Some(settings.identity.clone()),
            },
        ),
    });
    let controllers = async {
        tokio::join!(
            pool_controller(ctx.clone(), pool_writers),
            build_controller(
                ctx,
                BuildWriters {
                    node_builds: node_builds_writer,
                    leases: leases_writer,
                    pools: pools_writer,
                }
            )
        );
    };
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

/// A controller over `api`'s objects, as `Controller::new` makes one, but whose cache holds them
/// without their managedFields ([`crate::watch::trim`]).
fn controller_for<K>(api: Api<K>) -> Controller<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let objects = watcher(api, watch_config())
        .default_backoff()
        .modify(crate::watch::trim)
        .reflect(writer)
        .applied_objects();
    Controller::for_stream(objects, reader)
}

/// How every controller watch lists ([`crate::watch::config`]).
fn watch_config() -> watcher::Config {
    crate::watch::config()
}

/// What fills the pool controller's caches ([`pool::cache`]).
struct PoolWriters {
    nodes: Writer<Node>,
    leases: Writer<Lease>,
    daemonsets: Writer<DaemonSet>,
}

/// The BuilderPool controller. Its watches fill the caches its reconciles read; heartbeat
/// renewals wake a pool only when they are news to it ([`pool::news`]).
async fn pool_controller(ctx: Arc<Context>, writers: PoolWriters) {
    let client = ctx.client.clone();
    let ns = ctx.namespace.clone();
    let builders = watch_config().labels("app.kubernetes.io/component=builder");
    let heartbeats = watch_config().labels(&format!("{HEARTBEAT_LABEL}=true"));
    let controller = controller_for(Api::<BuilderPool>::all(client.clone()));
    let store = controller.store();
    let all_pools = move || {
        store
            .state()
            .iter()
            .map(|p| ObjectRef::from_obj(&**p))
            .collect::<Vec<_>>()
    };
    let daemonsets = watcher(Api::<DaemonSet>::namespaced(client.clone(), &ns), builders.clone())
        .default_backoff()
        .modify(crate::watch::trim)
        .reflect(writers.daemonsets)
        .touched_objects();
    let nodes = watcher(Api::<Node>::all(client.clone()), watch_config())
        .default_backoff()
        .modify(crate::watch::trim)
        .reflect(writers.nodes)
        .touched_objects();
    let leases = heartbeat_news(
        watcher(Api::<Lease>::namespaced(client.clone(), &ns), heartbeats)
            .default_backoff()
            .modify(crate::watch::trim)
            .reflect(writers.leases),
        pool::news::Audience::Pool,
    );
    controller
        // Not `owns_stream`: kube maps an owner reference to a reference in the child's
        // namespace, which for the cluster-scoped pool is a second key, so a DaemonSet event and
        // a heartbeat could reconcile the same pool twice at once.
        .watches_stream(daemonsets, |ds| {
            let labels = ds.metadata.labels.as_ref();
            labels
                .and_then(|l| l.get(pool::render::POOL_LABEL))
                .map(|p| ObjectRef::<BuilderPool>::new(p))
        })
        .watches_stream(leases, |lease| {
            pool::reconcile::pool_of_lease(&lease).map(|p| ObjectRef::<BuilderPool>::new(&p))
        })
        // Builder pods: what the kubelet says about them appears in pool status.
        .watches(Api::<Pod>::namespaced(client.clone(), &ns), builders.clone(), |pod| {
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(pool::render::POOL_LABEL))
                .map(|p| ObjectRef::<BuilderPool>::new(p))
        })
        .watches_stream(nodes, move |_node| all_pools())
        .shutdown_on_signal()
        .run(timed_pool_reconcile, pool_error_policy, ctx)
        .for_each(|result| async move { log_outcome("BuilderPool", result) })
        .await;
}

/// The heartbeat Leases that are news (new, changed, back after expiry, deleted), out of every
/// event of the Lease watch ([`pool::news`]): what can change a pool's status or a waiting
/// build's placement.
fn heartbeat_news(
    events: impl futures::Stream<Item = Result<watcher::Event<Lease>, watcher::Error>> + Send + 'static,
    audience: pool::news::Audience,
) -> impl futures::Stream<Item = Result<Lease, watcher::Error>> + Send + 'static {
    let mut seen = pool::news::Seen::new(audience);
    events.flat_map(move |event| {
        let news = match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease)) => {
                let name = lease.metadata.name.clone().unwrap_or_default();
                Heartbeat::from_lease(&lease)
                    .and_then(|beat| seen.applied(&name, beat))
                    .map(|_| Ok(lease))
            }
            Ok(watcher::Event::Delete(lease)) => {
                let name = lease.metadata.name.clone().unwrap_or_default();
                seen.deleted(&name, pool::reconcile::pool_of_lease(&lease))
                    .map(|_| Ok(lease))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        };
        futures::stream::iter(news)
    })
}

/// Builds held by a pool's queue limit woken per attempt that ends: more than one, in case the
/// oldest waits for a node other than the one that freed a slot (placement), not all, so a
/// thousand held builds are not reconciled on every completion.
const WAKE_PER_FREED_SLOT: usize = 3;

/// What fills the build controller's caches.
struct BuildWriters {
    node_builds: Writer<NodeBuild>,
    leases: Writer<Lease>,
    pools: Writer<BuilderPool>,
}

/// The ImageBuild controller. Its NodeBuild, heartbeat and BuilderPool watches also fill the
/// caches its reconciles read (`Context::node_builds`, `Context::heartbeat_leases`,
/// `Context::pools`): a reconcile makes no list calls, and each watch event updates the cache
/// before it triggers a reconcile.
async fn build_controller(ctx: Arc<Context>, writers: BuildWriters) {
    let BuildWriters {
        node_builds,
        leases,
        pools,
    } = writers;
    let client = ctx.client.clone();
    let heartbeats = watch_config().labels(&format!("{HEARTBEAT_LABEL}=true"));
    let controller = controller_for(Api::<ImageBuild>::all(client.clone()));
    let store = controller.store();
    let index = ctx.clone();
    // A heartbeat wakes the builds it may concern (see `build::plan::woken_by`).
    let waiting = move |lease: Lease| {
        let Some(beat) = Heartbeat::from_lease(&lease) else {
            return Vec::new();
        };
        // First the builds a heartbeat could concern at all (an attempt under way only rules
        // more out): at rest, with every build finished, there are none and the NodeBuild cache
        // is not scanned, so renewals cost next to nothing however many builds there are.
        let candidates = store.state_filter(|b| build::plan::woken_by(b, &beat, false));
        if candidates.is_empty() {
            return Vec::new();
        }
        let Ok(attempts) = index.node_build_index.read() else {
            return Vec::new();
        };
        candidates
            .iter()
            .filter(|b| {
                let (ns, name) = (b.metadata.namespace.as_deref(), b.metadata.name.as_deref());
                let under_way = attempts.under_way(ns.unwrap_or_default(), name.unwrap_or_default());
                build::plan::woken_by(b, &beat, under_way)
            })
            .map(|b| ObjectRef::from_obj(&**b))
            .collect::<Vec<_>>()
    };
    // A pool's new policy (a new generation) wakes the builds it refused.
    let refused = controller.store();
    let pools = watcher(Api::<BuilderPool>::all(client.clone()), watch_config())
        .default_backoff()
        .modify(crate::watch::trim)
        .reflect(pools)
        .applied_objects()
        .predicate_filter(kube::runtime::predicates::generation, Default::default());
    let refused_by = move |pool: BuilderPool| {
        let name = pool.metadata.name.unwrap_or_default();
        refused
            .state_filter(|b| b.spec.pool() == name && build::policy::refused(b))
            .iter()
            .map(|b| ObjectRef::from_obj(&**b))
            .collect::<Vec<_>>()
    };
    let indexed = ctx.clone();
    let (freed_tx, freed_rx) = futures::channel::mpsc::unbounded::<String>();
    let node_builds = watcher(Api::<NodeBuild>::all(client.clone()), watch_config())
        .default_backoff()
        .modify(crate::watch::trim)
        .reflect(node_builds)
        // The index follows the cache before the event triggers a reconcile.
        .inspect_ok(move |event| {
            if let Ok(mut index) = indexed.node_build_index.write() {
                let freed = index.freed_by(event);
                index.apply(event);
                if let Some(pool) = freed {
                    let _ = freed_tx.unbounded_send(pool);
                }
            }
        })
        .touched_objects();
    // An attempt that ends frees a slot: the oldest builds its pool's queue limit holds may go.
    let held = controller.store();
    let room = freed_rx.flat_map(move |pool| {
        let mut waiting = held.state_filter(|b| build::plan::held_for_room(b, &pool));
        waiting.sort_by_key(|b| b.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let oldest: Vec<ObjectRef<ImageBuild>> = waiting
            .iter()
            .take(WAKE_PER_FREED_SLOT)
            .map(|b| ObjectRef::from_obj(&**b))
            .collect();
        futures::stream::iter(oldest)
    });
    // Only heartbeats that are news to waiting builds (a builder that can newly take them, see
    // `pool::news::Audience::Builds`) wake them: with 1,000 builds waiting and 500 builders
    // renewing every 5 s, waking them on every renewal (or every change in running builds)
    // saturated the controller in the scale run. A waiting build re-checks every 30 s anyway.
    let parsed = ctx.clone();
    let leases = heartbeat_news(
        watcher(Api::<Lease>::namespaced(client, &ctx.namespace), heartbeats)
            .default_backoff()
            .modify(crate::watch::trim)
            // Parsed before the cache takes the event: once the cache reads as listed, so do
            // the parsed heartbeats.
            .inspect_ok(move |event| {
                if let Ok(mut beats) = parsed.heartbeats.write() {
                    beats.apply(event);
                }
            })
            .reflect(leases),
        pool::news::Audience::Builds,
    );
    controller
        .owns_stream(node_builds)
        .watches_stream(leases, waiting)
        .watches_stream(pools, refused_by)
        .reconcile_on(room)
        .shutdown_on_signal()
        .run(timed_build_reconcile, build_error_policy, ctx)
        .for_each(|result| async move { log_outcome("ImageBuild", result) })
        .await;
}

/// Logs what a controller's run loop yields. Reconcile failures were logged by the error
/// policy already; an object deleted while its reconcile was queued is routine.
fn log_outcome<K, E, Q>(kind: &str, result: ControllerResult<K, E, Q>)
where
    K: kube::Resource,
    E: std::error::Error + 'static,
    Q: std::error::Error + 'static,
{
    match result {
        Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
        Err(controller::Error::ObjectNotFound(obj)) => {
            debug!(%obj, "{kind} deleted before its queued reconcile ran");
        }
        Err(e) => warn!(error = %e, "{kind} controller error"),
    }
}

type ControllerResult<K, E, Q> = Result<(ObjectRef<K>, Action), controller::Error<E, Q>>;

async fn timed_build_reconcile(build: Arc<ImageBuild>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let result = build::reconcile::reconcile(build, ctx.clone()).await;
    ctx.metrics.reconciled(
        "imagebuild",
        start.elapsed().as_secs_f64(),
        result.as_ref().err().map(Error::category),
    );
    result
}

fn build_error_policy(_build: Arc<ImageBuild>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(%error, "ImageBuild reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn timed_pool_reconcile(pool: Arc<BuilderPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let result = pool::reconcile::reconcile(pool, ctx.clone()).await;
    ctx.metrics.reconciled(
        "builderpool",
        start.elapsed().as_secs_f64(),
        result.as_ref().err().map(Error::category),
    );
    result
}

fn pool_error_policy(_pool: Arc<BuilderPool>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(%error, "BuilderPool reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

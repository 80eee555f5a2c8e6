//! How the two controllers are wired: which watches fill which caches, which events wake which
//! objects, and the run loops with their timing and error policies. The reconciles themselves
//! are in `build::reconcile` and `pool::reconcile`. One watch of the heartbeat Leases feeds both
//! controllers ([`follow_heartbeats`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use tracing::{debug, warn};

use super::heartbeats::follow::Follower;
use super::lanes::Lanes;
use super::{Context, Error, build, pool};
use crate::api::heartbeat::{HEARTBEAT_LABEL, Heartbeat};
use crate::api::{BuilderPool, ImageBuild, NodeBuild};
use crate::watch::Listed;

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
pub(super) struct PoolWriters {
    pub nodes: Writer<Node>,
    pub daemonsets: Writer<DaemonSet>,
}

/// The heartbeat watch's ends ([`follow_heartbeats`]).
pub(super) struct HeartbeatFeed {
    listed: oneshot::Sender<()>,
    pools: mpsc::UnboundedSender<String>,
    builds: mpsc::UnboundedSender<Heartbeat>,
}

/// What the heartbeat watch sends each controller: the pools it has news for, and the
/// heartbeats that are news to waiting builds ([`super::heartbeats::news`]).
pub(super) struct HeartbeatNews {
    pub pools: mpsc::UnboundedReceiver<String>,
    pub builds: mpsc::UnboundedReceiver<Heartbeat>,
}

/// The channels from the heartbeat watch to the controllers, and the gate that opens once it
/// has listed (`Context::heartbeats_listed`; it stops if the watch is dropped first).
pub(super) fn heartbeat_feed() -> (HeartbeatFeed, HeartbeatNews, Listed) {
    let (listed, listed_rx) = oneshot::channel();
    let (pools, pools_rx) = mpsc::unbounded();
    let (builds, builds_rx) = mpsc::unbounded();
    let news = HeartbeatNews {
        pools: pools_rx,
        builds: builds_rx,
    };
    let feed = HeartbeatFeed { listed, pools, builds };
    (feed, news, Listed::when(listed_rx, "heartbeat Lease"))
}

/// The one watch of the builders' heartbeat Leases, for both controllers: each event is parsed
/// once into the shared table (`Context::heartbeats`), which both reconciles read, and judged
/// for news once per audience ([`super::heartbeats::follow`]); what is news goes to the
/// controller it wakes. Each controller used to run its own watch of the same Leases, and
/// between them parse each event up to four times. Never returns: it runs as long as the
/// controllers it feeds (`controller::run` drops it when they stop).
pub(super) async fn follow_heartbeats(ctx: Arc<Context>, feed: HeartbeatFeed) -> Infallible {
    let HeartbeatFeed { listed, pools, builds } = feed;
    let mut listed = Some(listed);
    let selector = watch_config().labels(&format!("{HEARTBEAT_LABEL}=true"));
    let events = watcher(Api::<Lease>::namespaced(ctx.client.clone(), &ctx.namespace), selector)
        .default_backoff()
        .modify(crate::watch::trim);
    let mut events = std::pin::pin!(events);
    let mut follower = Follower::default();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            // The backoff retries; waiting reconciles wait on.
            Err(error) => {
                warn!(%error, "heartbeat Lease watch failed; retrying");
                continue;
            }
        };
        let done = matches!(event, watcher::Event::InitDone);
        // The table takes the event before anything it wakes runs, and has listed before the
        // gate opens: a reconcile never reads a table older than the event that woke it.
        let news = follower.follow(&ctx.heartbeats, event);
        if done && let Some(listed) = listed.take() {
            let _ = listed.send(());
        }
        // A controller that stopped has dropped its end: nothing left to wake.
        if let Some(pool) = news.pool_news {
            let _ = pools.unbounded_send(pool);
        }
        if let Some(beat) = news.build_news {
            let _ = builds.unbounded_send(beat);
        }
    }
    // The watcher retries forever, so this is not reached; were it, the controllers would see
    // no more heartbeat news, and reconciles still waiting for the list would stop.
    drop((listed, pools, builds));
    std::future::pending().await
}

/// The BuilderPool controller. Its watches fill the caches its reconciles read; heartbeat
/// renewals wake a pool only when they are news to it ([`super::heartbeats::news`]): `news`
/// names those pools ([`follow_heartbeats`]).
pub(super) async fn pool_controller(ctx: Arc<Context>, writers: PoolWriters, news: mpsc::UnboundedReceiver<String>) {
    let client = ctx.client.clone();
    let ns = ctx.namespace.clone();
    let builders = watch_config().labels("app.kubernetes.io/component=builder");
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
        .reconcile_on(news.map(|pool| ObjectRef::<BuilderPool>::new(&pool)))
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
        .run(
            timed("builderpool", pool::reconcile::reconcile),
            retry_after("BuilderPool", Duration::from_secs(5)),
            ctx,
        )
        .for_each(|result| async move { log_outcome("BuilderPool", result) })
        .await;
}

/// Builds held by a pool's queue limit woken per attempt that ends: more than one, in case the
/// oldest waits for a node other than the one that freed a slot (placement), not all, so a
/// thousand held builds are not reconciled on every completion.
const WAKE_PER_FREED_SLOT: usize = 3;

/// What fills the build controller's caches.
pub(super) struct BuildWriters {
    pub node_builds: Writer<NodeBuild>,
    pub pools: Writer<BuilderPool>,
}

/// The ImageBuild controller. Its NodeBuild and BuilderPool watches also fill the caches its
/// reconciles read (`Context::node_builds`, `Context::pools`), as the heartbeat watch fills
/// `Context::heartbeats` ([`follow_heartbeats`]; `beats` are the heartbeats that are news to
/// waiting builds): a reconcile makes no list calls, and each watch event updates the cache
/// before it triggers a reconcile.
pub(super) async fn build_controller(
    ctx: Arc<Context>,
    writers: BuildWriters,
    beats: mpsc::UnboundedReceiver<Heartbeat>,
    concurrency: u16,
) {
    let BuildWriters { node_builds, pools } = writers;
    let controller = controller_for(Api::<ImageBuild>::all(ctx.client.clone()));
    let builds = controller.store();
    let (attempts, freed) = node_build_events(&ctx, node_builds);
    let room = room_for_held(freed, builds.clone(), ctx.pools.clone());
    let (policies, refused_by) = pool_policies(&ctx, pools, builds.clone());
    let woken = woken_by_heartbeats(&ctx, beats, builds.clone());
    // Reconciles over the limit wait in line, outside kube's runner; `turns` wakes each in turn.
    let (lanes, turns) = Lanes::of(concurrency, move |build: &ObjectRef<ImageBuild>| {
        builds.get(build).is_some()
    });
    let reconcile = Lanes::around(
        lanes,
        |build: &ImageBuild| ObjectRef::from_obj(build),
        build::reconcile::outcome_unseen,
        timed("imagebuild", build::reconcile::reconcile),
    );
    controller
        .owns_stream(attempts)
        .reconcile_on(woken)
        .watches_stream(policies, refused_by)
        .reconcile_on(room)
        .reconcile_on(turns)
        .shutdown_on_signal()
        .run(reconcile, retry_after("ImageBuild", Duration::from_secs(2)), ctx)
        .for_each(|result| async move { log_outcome("ImageBuild", result) })
        .await;
}

/// The NodeBuild watch: it fills the cache (`writer`), then the index and the memory of created
/// attempts, before an event triggers its build's reconcile; and it names the pool of each
/// attempt that ends (a freed slot) on the second stream.
fn node_build_events(
    ctx: &Arc<Context>,
    writer: Writer<NodeBuild>,
) -> (
    impl futures::Stream<Item = Result<NodeBuild, watcher::Error>> + Send + 'static,
    mpsc::UnboundedReceiver<String>,
) {
    let indexed = ctx.clone();
    let (freed_tx, freed_rx) = mpsc::unbounded::<String>();
    let events = watcher(Api::<NodeBuild>::all(ctx.client.clone()), watch_config())
        .default_backoff()
        .modify(crate::watch::trim)
        .reflect(writer)
        .inspect_ok(move |event| {
            if let Ok(mut index) = indexed.node_build_index.write() {
                let freed = index.freed_by(event);
                index.apply(event);
                build::memory::shown(&indexed, event);
                if let Some(pool) = freed {
                    let _ = freed_tx.unbounded_send(pool);
                }
            }
        })
        .touched_objects();
    (events, freed_rx)
}

/// An attempt that ends frees a slot: the oldest builds its pool's queue limit holds may go.
/// Only a pool with a limit holds builds, so for the others no build is looked at (the scan
/// of every build per ended attempt was ~3 % of the controller's CPU in the scale run's waves).
/// A limit raised or removed is a new generation of the pool, which wakes them all
/// ([`pool_policies`]).
fn room_for_held(
    freed: mpsc::UnboundedReceiver<String>,
    builds: Store<ImageBuild>,
    pools: Store<BuilderPool>,
) -> impl futures::Stream<Item = ObjectRef<ImageBuild>> + Send + 'static {
    freed.flat_map(move |pool| {
        let limited = pools
            .get(&ObjectRef::new(&pool))
            .is_some_and(|p| p.spec.max_queued_builds.is_some());
        if !limited {
            return futures::stream::iter(Vec::new());
        }
        let mut waiting = builds.state_filter(|b| build::plan::held_for_room(b, &pool));
        waiting.sort_by_key(|b| b.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let oldest: Vec<ObjectRef<ImageBuild>> = waiting
            .iter()
            .take(WAKE_PER_FREED_SLOT)
            .map(|b| ObjectRef::from_obj(&**b))
            .collect();
        futures::stream::iter(oldest)
    })
}

/// The BuilderPool watch, which fills the pool cache (`writer`), with its new generations; and
/// what one wakes: the builds its policy refused (the new rules may allow them) and those its
/// queue limit holds (the limit may be raised or gone).
fn pool_policies(
    ctx: &Arc<Context>,
    writer: Writer<BuilderPool>,
    builds: Store<ImageBuild>,
) -> (
    impl futures::Stream<Item = Result<BuilderPool, watcher::Error>> + Send + 'static,
    impl Fn(BuilderPool) -> Vec<ObjectRef<ImageBuild>> + Send + Sync + 'static,
) {
    let policies = watcher(Api::<BuilderPool>::all(ctx.client.clone()), watch_config())
        .default_backoff()
        .modify(crate::watch::trim)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(kube::runtime::predicates::generation, Default::default());
    let refused_by = move |pool: BuilderPool| {
        let name = pool.metadata.name.unwrap_or_default();
        builds
            .state_filter(|b| {
                build::policy::refused(b) && b.spec.pool() == name || build::plan::held_for_room(b, &name)
            })
            .iter()
            .map(|b| ObjectRef::from_obj(&**b))
            .collect::<Vec<_>>()
    };
    (policies, refused_by)
}

/// The builds each heartbeat that is news to waiting builds wakes (see `build::plan::woken_by`).
/// Only such heartbeats (a builder that can newly take them, see
/// `heartbeats::news::Audience::Builds`) come here: with 1,000 builds waiting and 500 builders
/// renewing every 5 s, waking them on every renewal (or every change in running builds)
/// saturated the controller in the scale run. A waiting build re-checks every 30 s anyway. The
/// heartbeat watch judged them ([`follow_heartbeats`]) and updated the table the reconciles read
/// before sending them.
fn woken_by_heartbeats(
    ctx: &Arc<Context>,
    beats: mpsc::UnboundedReceiver<Heartbeat>,
    builds: Store<ImageBuild>,
) -> impl futures::Stream<Item = ObjectRef<ImageBuild>> + Send + 'static {
    let index = ctx.clone();
    let waiting = move |beat: Heartbeat| {
        // First the builds a heartbeat could concern at all (an attempt under way only rules
        // more out): at rest, with every build finished, there are none and the NodeBuild cache
        // is not scanned, so renewals cost next to nothing however many builds there are.
        let candidates = builds.state_filter(|b| build::plan::woken_by(b, &beat, false));
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
    beats.flat_map(move |beat| futures::stream::iter(waiting(beat)))
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

/// `reconcile`, with its duration and outcome counted in the metrics under `kind`.
fn timed<K, F>(
    kind: &'static str,
    reconcile: impl Fn(Arc<K>, Arc<Context>) -> F + Clone,
) -> impl Fn(Arc<K>, Arc<Context>) -> BoxFuture<'static, Result<Action, Error>> + Clone
where
    F: Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |object, ctx| {
        let metrics = ctx.metrics.clone();
        let reconciled = reconcile(object, ctx);
        async move {
            let start = Instant::now();
            let result = reconciled.await;
            let error = result.as_ref().err().map(Error::category);
            metrics.reconciled(kind, start.elapsed().as_secs_f64(), error);
            result
        }
        .boxed()
    }
}

/// The error policy: a warning naming `kind`, and another try after `after`.
fn retry_after<K>(kind: &'static str, after: Duration) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action {
    move |_object, error, _ctx| {
        warn!(%error, "{kind} reconcile failed; retrying");
        Action::requeue(after)
    }
}

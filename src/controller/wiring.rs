//! How the two controllers are wired: which watches fill which caches, which events wake which
//! objects, and the run loops with their timing and error policies. The reconciles themselves
//! are in `build::reconcile` and `pool::reconcile`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, reflector::store::Writer};
use tracing::{debug, warn};

use super::{Context, Error, build, pool};
use crate::api::heartbeat::{HEARTBEAT_LABEL, Heartbeat};
use crate::api::{BuilderPool, ImageBuild, NodeBuild};

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
    pub leases: Writer<Lease>,
    pub daemonsets: Writer<DaemonSet>,
}

/// The BuilderPool controller. Its watches fill the caches its reconciles read; heartbeat
/// renewals wake a pool only when they are news to it ([`pool::news`]).
pub(super) async fn pool_controller(ctx: Arc<Context>, writers: PoolWriters) {
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
pub(super) struct BuildWriters {
    pub node_builds: Writer<NodeBuild>,
    pub leases: Writer<Lease>,
    pub pools: Writer<BuilderPool>,
}

/// The ImageBuild controller. Its NodeBuild, heartbeat and BuilderPool watches also fill the
/// caches its reconciles read (`Context::node_builds`, `Context::heartbeat_leases`,
/// `Context::pools`): a reconcile makes no list calls, and each watch event updates the cache
/// before it triggers a reconcile.
pub(super) async fn build_controller(ctx: Arc<Context>, writers: BuildWriters) {
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

//! What the build controller remembers between reconciles, in memory: when it created each
//! NodeBuild (dispatch metrics; and so a reconcile reading a watch cache that has not caught up
//! neither creates it twice nor forgets its load), when it first saw each generation (status
//! pacing), and which finalizers and statuses it already wrote (so a stale cache does not make
//! it write them again). Lost on restart, which costs at most one repeated write each.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::watcher;

use crate::api::image_build::{ImageBuild, ImageBuildStatus};
use crate::api::node_build::{NodeBuild, NodeBuildPhase};
use crate::controller::Context;

/// What the build controller remembers between reconciles.
#[derive(Default)]
pub struct Memory {
    created: std::collections::HashMap<String, std::time::Instant>,
    queued: std::collections::HashMap<String, std::time::Instant>,
    generations: std::collections::HashMap<(String, i64), std::time::Instant>,
    /// NodeBuilds this process created, with their node, until the watch cache shows them.
    dispatched: std::collections::HashMap<String, (NodeBuild, std::time::Instant)>,
    /// ImageBuilds (uid) this process added the finalizer to.
    finalized: std::collections::HashMap<String, std::time::Instant>,
    /// The last status this process wrote per ImageBuild (uid).
    written: std::collections::HashMap<String, (ImageBuildStatus, std::time::Instant)>,
}

/// Generations remembered for pacing are forgotten after this long (their status is written
/// by then, or the build is gone).
const FORGET_GENERATIONS: Duration = Duration::from_secs(60);

/// How long a NodeBuild this process created counts as existing while the watch cache has not
/// shown it yet (so a reconcile that reads the cache just before it does creates nothing twice).
/// Once the cache shows it, the cache is its truth. 10 s was too short: in the scale run's
/// large waves the NodeBuild watch fell further behind, and 2,245 of 12,245 creates were
/// answered 409 AlreadyExists (a write each, for nothing).
const EXPECT_CREATED: Duration = Duration::from_secs(60);

fn node_build_key(nb: &NodeBuild) -> String {
    format!("{}/{}", nb.namespace().unwrap_or_default(), nb.name_any())
}

/// Records a NodeBuild this process is about to create (for the dispatch-latency metric, and so
/// [`just_created`] and [`assigned_load`] count it). Called before the create's request, with
/// no await since the decision: concurrent reconciles then see the node as busier at once; a
/// burst of them otherwise all took the node that looked idlest and overfilled it.
pub(super) fn remember_created(ctx: &Context, nb: &NodeBuild) {
    let Ok(mut t) = ctx.memory.lock() else { return };
    let now = std::time::Instant::now();
    t.created.retain(|_, at| now.duration_since(*at) < FORGET_GENERATIONS);
    t.created.insert(node_build_key(nb), now);
    t.dispatched
        .retain(|_, (_, at)| now.duration_since(*at) < EXPECT_CREATED);
    t.dispatched.insert(node_build_key(nb), (nb.clone(), now));
}

/// Puts a created NodeBuild, as the apiserver answered the create (with its creation time), in
/// place of the one remembered before the request, unless the watch has shown it since. The
/// status then reads the same start time from it as from the cache: without it, a build whose
/// attempt the cache did not show yet wrote an in-progress status with no start time, and a
/// second one when the cache caught up (2.5 status writes per build in the scale run's waves).
pub(super) fn confirm_created(ctx: &Context, mut created: NodeBuild) {
    crate::watch::trim(&mut created);
    let Ok(mut t) = ctx.memory.lock() else { return };
    if let Some((remembered, _)) = t.dispatched.get_mut(&node_build_key(&created)) {
        *remembered = created;
    }
}

/// Forgets the attempt a NodeBuild watch event shows: the cache is its truth from here, and
/// [`assigned_load`], which every reconcile runs, looks only at the few the cache does not show
/// yet (thousands at once in the scale run's waves otherwise, each compared and copied per
/// reconcile). Called under the index's write lock, as reconciles read the index before this
/// memory under its read lock (`reconcile::attempts`): none misses an attempt in both.
pub fn shown(ctx: &Context, event: &watcher::Event<NodeBuild>) {
    let (watcher::Event::Apply(nb) | watcher::Event::InitApply(nb)) = event else {
        return;
    };
    let Ok(mut t) = ctx.memory.lock() else { return };
    if !t.dispatched.is_empty() {
        t.dispatched.remove(&node_build_key(nb));
    }
}

/// Undoes [`remember_created`] for an attempt whose create failed.
pub(super) fn forget_created(ctx: &Context, nb: &NodeBuild) {
    let Ok(mut t) = ctx.memory.lock() else { return };
    let key = node_build_key(nb);
    t.created.remove(&key);
    t.dispatched.remove(&key);
}

/// True if this process created `nb` moments ago.
pub(super) fn just_created(ctx: &Context, nb: &NodeBuild) -> bool {
    ctx.memory.lock().is_ok_and(|t| {
        t.dispatched
            .get(&node_build_key(nb))
            .is_some_and(|(_, at)| at.elapsed() < EXPECT_CREATED)
    })
}

/// `build`'s attempts this process created moments ago that are not in `known` (the watch
/// cache's): the reconcile counts them as existing, so it neither creates them again nor
/// takes their nodes for new ones.
pub(super) fn just_created_attempts(ctx: &Context, build: &ImageBuild, known: &[NodeBuild]) -> Vec<NodeBuild> {
    let uid = build.uid();
    let Ok(t) = ctx.memory.lock() else {
        return Vec::new();
    };
    let ours = |nb: &NodeBuild| nb.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref());
    // Once the cache has shown an attempt, the cache is its truth (it may be deleted since): the
    // watch forgot it then ([`shown`]), and one `known` shows is not counted twice.
    let shown_in = |nb: &NodeBuild| known.iter().any(|k| k.name_any() == nb.name_any());
    t.dispatched
        .values()
        .filter(|(nb, at)| at.elapsed() < EXPECT_CREATED && ours(nb) && !shown_in(nb))
        .map(|(nb, _)| nb.clone())
        .collect()
}

/// Unfinished attempts per node: those the watch cache shows, and those this process created
/// moments ago that it does not show yet.
pub(super) fn assigned_load(ctx: &Context) -> BTreeMap<String, i32> {
    let Ok(index) = ctx.node_build_index.read() else {
        return BTreeMap::new();
    };
    let mut load: BTreeMap<String, i32> = index.load().iter().map(|(n, c)| (n.clone(), *c)).collect();
    if let Ok(t) = ctx.memory.lock() {
        for (nb, at) in t.dispatched.values() {
            let known = index.contains(&nb.namespace().unwrap_or_default(), &nb.name_any());
            if at.elapsed() < EXPECT_CREATED && !known {
                *load.entry(nb.spec.node_name.clone()).or_default() += 1;
            }
        }
    }
    load
}

/// How long this controller has known `build`'s current generation.
pub(super) fn known_for(ctx: &Context, build: &ImageBuild) -> Duration {
    let Ok(mut t) = ctx.memory.lock() else {
        return Duration::MAX;
    };
    let now = std::time::Instant::now();
    let key = (build.uid().unwrap_or_default(), build.metadata.generation.unwrap_or(1));
    if !t.generations.contains_key(&key) {
        t.generations
            .retain(|_, seen| now.duration_since(*seen) < FORGET_GENERATIONS);
    }
    now.duration_since(*t.generations.entry(key).or_insert(now))
}

/// Observes dispatch latency and queue wait for attempts that started since the last look.
pub(super) fn observe_timings(ctx: &Context, node_builds: &[NodeBuild]) {
    let Ok(mut t) = ctx.memory.lock() else { return };
    let now = std::time::Instant::now();
    for nb in node_builds {
        let key = format!("{}/{}", nb.namespace().unwrap_or_default(), nb.name_any());
        match nb.status.as_ref().and_then(|s| s.phase) {
            Some(NodeBuildPhase::Queued) => {
                t.queued.entry(key).or_insert(now);
            }
            Some(_) => {
                if let Some(created) = t.created.remove(&key) {
                    ctx.metrics.dispatched(now.duration_since(created).as_secs_f64());
                }
                if let Some(queued) = t.queued.remove(&key) {
                    ctx.metrics.queued(now.duration_since(queued).as_secs_f64());
                }
            }
            None => {}
        }
    }
}

/// How long a write this process made is trusted over a watch cache that does not show it.
const TRUST_OWN_WRITES: Duration = Duration::from_secs(60);

/// Records that this process added `build`'s finalizer.
pub(super) fn remember_finalizer(ctx: &Context, build: &ImageBuild) {
    let Ok(mut m) = ctx.memory.lock() else { return };
    let now = std::time::Instant::now();
    m.finalized.retain(|_, at| now.duration_since(*at) < TRUST_OWN_WRITES);
    m.finalized.insert(build.uid().unwrap_or_default(), now);
}

/// True if this process added `build`'s finalizer moments ago (the cache may not show it yet).
pub(super) fn finalizer_added(ctx: &Context, build: &ImageBuild) -> bool {
    let uid = build.uid().unwrap_or_default();
    ctx.memory
        .lock()
        .is_ok_and(|m| m.finalized.get(&uid).is_some_and(|at| at.elapsed() < TRUST_OWN_WRITES))
}

/// The status this process last wrote for `build`, if it did so moments ago. The controller is
/// the only writer of ImageBuild status, so when the watch cache shows something else it is
/// behind, and this is the truth to decide from (else a stale cache makes it compute, and
/// write, the same outcome again with new timestamps).
pub(super) fn remembered_status(ctx: &Context, build: &ImageBuild) -> Option<ImageBuildStatus> {
    let uid = build.uid().unwrap_or_default();
    let m = ctx.memory.lock().ok()?;
    m.written
        .get(&uid)
        .filter(|(_, at)| at.elapsed() < TRUST_OWN_WRITES)
        .map(|(status, _)| status.clone())
}

/// Records the status just written for `build`.
pub(super) fn remember_written(ctx: &Context, build: &ImageBuild, status: &ImageBuildStatus) {
    let Ok(mut m) = ctx.memory.lock() else { return };
    let now = std::time::Instant::now();
    m.written
        .retain(|_, (_, at)| now.duration_since(*at) < TRUST_OWN_WRITES);
    m.written.insert(build.uid().unwrap_or_default(), (status.clone(), now));
}

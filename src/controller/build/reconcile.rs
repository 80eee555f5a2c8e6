//! ImageBuild reconcile: read → validate → decide (`plan`) → apply → status.
//!
//! This file reads what the decision needs (the attempts, heartbeats, node labels, cache
//! affinity) and runs the steps; the decision is pure (`plan`), and carrying it out is
//! `apply` (with `grants` for Secret access). Creating a NodeBuild is the dispatch; names are
//! deterministic, so `AlreadyExists` means an earlier reconcile (or controller) already did it. A finalizer makes deletion cancel running attempts, wait (bounded) for
//! their agents, and remove images with `cleanup: Delete` (`deletion.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::debug;

use super::apply::{apply, publish, write_status};
use super::deletion::cleanup;
use super::index::Index;
use super::memory::{
    assigned_load, finalizer_added, just_created_attempts, observe_timings, remember_finalizer, remembered_status,
};
use super::plan::{self, Observed, Plan};
use super::policy;
use super::schedule::Candidate;
use crate::api::conditions::{self, Desired, READY, STALLED, Status};
use crate::api::heartbeat::Heartbeat;
use crate::api::image_build::{BuildPhase, ImageBuild};
use crate::api::image_policy::Decision;
use crate::api::node_build::{NodeBuild, NodeBuildPhase};
use crate::api::validation;
use crate::controller::{Context, Error};

/// Finalizer that lets deletion cancel running builds first.
pub const FINALIZER: &str = "kiln.dev/cancel-builds";
/// How long deletion waits for agents to confirm cancellation.
pub const CANCEL_GRACE: Duration = Duration::from_secs(30);

/// How often a build the image policy refused is checked again without any change to its pool.
const POLICY_RECHECK: Duration = Duration::from_secs(300);

/// Reconciles one ImageBuild: attempts → deletion or finalizer → validation → image policy →
/// decide → apply.
pub async fn reconcile(build: Arc<ImageBuild>, ctx: Arc<Context>) -> Result<Action, Error> {
    let build = with_remembered_status(&ctx, build);
    let ns = build.namespace().unwrap_or_default();
    debug!(build = %build.name_any(), generation = build.metadata.generation, "reconciling");
    let builds: Api<ImageBuild> = Api::namespaced(ctx.client.clone(), &ns);
    let node_builds = attempts(&ctx, &build).await?;
    if build.meta().deletion_timestamp.is_some() {
        return cleanup(&ctx, &builds, &build, &node_builds).await;
    }
    if let Some(again) = ensure_finalizer(&ctx, &builds, &build).await? {
        return Ok(again);
    }
    if let Err(invalid) = validation::image_build(&build.spec) {
        let message = format!("{invalid}; fix the spec (see `kiln validate`)");
        let stall = Stall {
            phase: BuildPhase::Failed,
            reason: "InvalidSpec",
            message,
        };
        return stall.write(&ctx, &builds, &build).await;
    }
    let generation = build.metadata.generation.unwrap_or(1);
    let first_dispatch = !node_builds.iter().any(|nb| nb.spec.generation == generation);
    if first_dispatch && let Decision::Denied { reason, .. } = policy::check(&ctx, &build).await? {
        // Not Failed: the build is not over, an admin may still allow its names (the pool's
        // watch then wakes it). Until then it waits for that change, or re-checks rarely
        // (a namespace's labels can change the decision too).
        let stall = Stall {
            phase: BuildPhase::Pending,
            reason: policy::REASON,
            message: format!("{reason}; nothing was built"),
        };
        stall.write(&ctx, &builds, &build).await?;
        return Ok(Action::requeue(POLICY_RECHECK));
    }
    let (plan, _place) = decide(&ctx, &build, node_builds, first_dispatch).await?;
    debug!(build = %build.name_any(), "decided");
    apply(&ctx, &builds, &build, plan).await
}

/// The build with the status this process last wrote, when the cache has not shown it yet.
fn with_remembered_status(ctx: &Context, build: Arc<ImageBuild>) -> Arc<ImageBuild> {
    match remembered_status(ctx, &build) {
        Some(status) if build.status.as_ref() != Some(&status) => {
            let mut current = (*build).clone();
            current.status = Some(status);
            Arc::new(current)
        }
        _ => build,
    }
}

/// The build's attempts: those in the cache and those this process created that the cache has
/// not shown yet.
async fn attempts(ctx: &Context, build: &ImageBuild) -> Result<Vec<NodeBuild>, Error> {
    ctx.node_builds_listed.wait().await.map_err(Error::CacheStopped)?;
    let node_builds = {
        // Both reads under the index's read lock: the watch forgets a created attempt
        // (`memory::shown`) under its write lock, so no attempt is missed in both.
        let index = ctx
            .node_build_index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut node_builds: Vec<NodeBuild> = attempts_in(ctx, &index, build)
            .iter()
            .map(|nb| (**nb).clone())
            .collect();
        let pending = just_created_attempts(ctx, build, &node_builds);
        node_builds.extend(pending);
        node_builds
    };
    observe_timings(ctx, &node_builds);
    Ok(node_builds)
}

/// Adds the deletion finalizer unless the build has it; `Some` when the reconcile should stop
/// and come again (the cached copy was stale).
async fn ensure_finalizer(
    ctx: &Context,
    builds: &Api<ImageBuild>,
    build: &ImageBuild,
) -> Result<Option<Action>, Error> {
    if build.finalizers().iter().any(|f| f == FINALIZER) || finalizer_added(ctx, build) {
        return Ok(None);
    }
    let mut finalizers = build.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    let merge = json!({"metadata": {"finalizers": finalizers, "resourceVersion": build.resource_version()}});
    match builds
        .patch(&build.name_any(), &PatchParams::default(), &Patch::Merge(&merge))
        .await
    {
        Ok(_) => remember_finalizer(ctx, build),
        // Our copy is stale: the watch brings the current one, and a reconcile with it.
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(Some(Action::requeue(Duration::from_millis(200)))),
        Err(e) => return Err(Error::kube("add finalizer")(e)),
    }
    debug!(build = %build.name_any(), "finalizer added");
    Ok(None)
}

/// Observes the builders and decides ([`plan::decide`]). What it reads (the attempts, the
/// heartbeats, node labels, loads) is dropped when it returns: thousands of reconciles wait on
/// API calls at once in a burst, and each used to hold its copies while it did (most of the
/// controller's peak memory in the scale run). With the plan comes the pool's queue place, when
/// the build may take one: it is held until the attempt is created.
async fn decide<'c>(
    ctx: &'c Context,
    build: &ImageBuild,
    node_builds: Vec<NodeBuild>,
    first_dispatch: bool,
) -> Result<(Plan, Option<tokio::sync::MutexGuard<'c, ()>>), Error> {
    let pool = build.spec.pool().to_owned();
    let heartbeats = cached_heartbeats(ctx, &pool).await?;
    let labels = node_labels(ctx, build).await?;
    debug!(build = %build.name_any(), "builders read");
    let affinity = if first_dispatch {
        affinity(ctx, build).await
    } else {
        None
    };
    let max_queued = ctx
        .pools
        .get(&ObjectRef::new(&pool))
        .and_then(|p| p.spec.max_queued_builds);
    // Under a queue limit, a build that may take a place counts and takes it alone.
    let place = if max_queued.is_some() && may_dispatch(ctx, build) {
        Some(ctx.queue_places.lock().await)
    } else {
        None
    };
    let finished = build
        .status
        .as_ref()
        .is_some_and(|s| s.phase.is_some_and(|p| p.is_finished()));
    let assigned = if first_dispatch || !finished {
        assigned_load(ctx)
    } else {
        BTreeMap::new()
    };
    let observed = Observed {
        build,
        node_builds: node_builds.iter().collect(),
        candidates: heartbeats
            .iter()
            .map(|h| Candidate {
                heartbeat: h,
                labels: labels.get(&h.node),
                assigned: assigned.get(h.node.as_str()).copied().unwrap_or(0),
                max_queued,
            })
            .collect(),
        affinity,
        now: Timestamp::now(),
    };
    Ok((plan::decide(&observed), place))
}

/// Whether this reconcile may create an attempt: the current generation has not finished and
/// has no attempt under way.
fn may_dispatch(ctx: &Context, build: &ImageBuild) -> bool {
    let status = build.status.as_ref();
    let finished = status.is_some_and(|s| {
        s.observed_generation == build.metadata.generation && s.phase.is_some_and(BuildPhase::is_finished)
    });
    let (ns, name) = (build.namespace().unwrap_or_default(), build.name_any());
    let under_way = ctx
        .node_build_index
        .read()
        .is_ok_and(|index| index.under_way(&ns, &name));
    !finished && !under_way
}

/// The build's attempts in the NodeBuild cache as it is now.
fn cached_attempts(ctx: &Context, build: &ImageBuild) -> Vec<Arc<NodeBuild>> {
    let index = ctx
        .node_build_index
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    attempts_in(ctx, &index, build)
}

/// The build's attempts in the NodeBuild cache, as `index` names them.
fn attempts_in(ctx: &Context, index: &Index, build: &ImageBuild) -> Vec<Arc<NodeBuild>> {
    let (ns, name, uid) = (build.namespace().unwrap_or_default(), build.name_any(), build.uid());
    // Only this object's attempts: a re-created ImageBuild of the same name has another uid.
    index
        .attempts_of(&ns, &name)
        .iter()
        .filter_map(|n| ctx.node_builds.get(&ObjectRef::new(n).within(&ns)))
        .filter(|nb| nb.owner_references().iter().any(|o| Some(&o.uid) == uid.as_ref()))
        .collect()
}

/// True if one of `build`'s attempts has finished and its status does not show that yet: the
/// reconcile writes an outcome (the wiring gives it a lane of its own). Reads only the caches.
pub fn outcome_unseen(build: &ImageBuild, ctx: &Context) -> bool {
    let shown = |attempt: &str| {
        build.status.as_ref().is_some_and(|s| {
            s.nodes
                .iter()
                .any(|n| n.node_build.as_deref() == Some(attempt) && n.phase.is_some_and(NodeBuildPhase::is_finished))
        })
    };
    cached_attempts(ctx, build).iter().any(|nb| {
        let finished = nb
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(NodeBuildPhase::is_finished);
        finished && !shown(&nb.name_any())
    })
}

/// The pool's heartbeats, as the heartbeat watch parsed them: a snapshot shared with every
/// other reconcile of the pool, the pool controller's too ([`crate::controller::heartbeats`]).
async fn cached_heartbeats(ctx: &Context, pool: &str) -> Result<Arc<[Heartbeat]>, Error> {
    ctx.heartbeats_listed.wait().await.map_err(Error::CacheStopped)?;
    Ok(crate::controller::heartbeats::of_pool(&ctx.heartbeats, pool))
}

/// Labels of the nodes, by name, when the placement selects on them (one list call); empty
/// otherwise, since the scheduler then does not look at labels.
async fn node_labels(ctx: &Context, build: &ImageBuild) -> Result<BTreeMap<String, BTreeMap<String, String>>, Error> {
    let Some(selector) = build
        .spec
        .placement
        .as_ref()
        .map(|p| &p.node_selector)
        .filter(|s| !s.is_empty())
    else {
        return Ok(BTreeMap::new());
    };
    let selector: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let list = nodes
        .list_metadata(&ListParams::default().labels(&selector.join(",")))
        .await
        .map_err(Error::kube("list nodes"))?;
    Ok(list
        .items
        .into_iter()
        .map(|n| (n.name_any(), n.labels().clone()))
        .collect())
}

/// The node that most recently built the same source and Dockerfile successfully.
async fn affinity(ctx: &Context, build: &ImageBuild) -> Option<String> {
    let key = super::naming::cache_key(&build.spec.recipe);
    ctx.node_build_index.read().ok()?.last_success(&key)
}

/// A build that cannot go on until someone changes something: its spec (`InvalidSpec`) or the
/// pool's image policy (`ImageNotAllowed`). Ready=False and Stalled=True, with the reason.
struct Stall {
    phase: BuildPhase,
    reason: &'static str,
    message: String,
}

impl Stall {
    /// Writes the stalled status, and a Warning event the first time, unless already written.
    async fn write(self, ctx: &Context, builds: &Api<ImageBuild>, build: &ImageBuild) -> Result<Action, Error> {
        let mut status = build.status.clone().unwrap_or_default();
        status.observed_generation = build.metadata.generation;
        status.phase = Some(self.phase);
        status.reason = Some(self.reason.into());
        status.message = Some(self.message.clone());
        status.conditions = conditions::merge(
            &status.conditions,
            &[
                Desired::new(READY, Status::False, self.reason, self.message.clone()),
                Desired::new(STALLED, Status::True, self.reason, self.message.clone()),
            ],
            build.metadata.generation,
            &Time(Timestamp::now()),
        );
        if build.status.as_ref() != Some(&status) {
            write_status(builds, build, &status).await?;
            publish(ctx, build, true, self.reason, &self.message).await;
        }
        Ok(Action::await_change())
    }
}

//! The decide step of the ImageBuild reconcile, as a pipeline of pure steps: observe (what the
//! reconcile read: [`Observed`]) → judge each attempt (`judge`) → dispatch first attempts and
//! retries (`dispatch`) → aggregate status, events and requeue (`aggregate`). No I/O; the
//! clock is an input, so every rule is unit-tested (`plan_tests.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::schedule::{Candidate, Unschedulable};
use super::{aggregate, dispatch, judge};
use crate::api::heartbeat::Heartbeat;
use crate::api::image_build::{BuildPhase, ImageBuild, ImageBuildStatus};
use crate::api::node_build::NodeBuild;

pub use dispatch::{BASE_BACKOFF, MAX_BACKOFF, UNSCHEDULABLE_RECHECK, backoff};

/// Everything the decision needs.
pub struct Observed<'a> {
    /// The ImageBuild.
    pub build: &'a ImageBuild,
    /// Its NodeBuilds, every generation.
    pub node_builds: Vec<&'a NodeBuild>,
    /// Builders of its pool, with their nodes' labels.
    pub candidates: Vec<Candidate<'a>>,
    /// The node that last built the same source and Dockerfile, if any.
    pub affinity: Option<String>,
    /// Now.
    pub now: Timestamp,
}

/// An event to publish on the ImageBuild.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `Normal` or `Warning`.
    pub warning: bool,
    /// CamelCase reason: Scheduled, Started, Succeeded, Failed, Retrying, Cancelled.
    pub reason: &'static str,
    /// Human-readable note.
    pub note: String,
}

/// What the reconcile should do.
#[derive(Debug, Default)]
pub struct Plan {
    /// NodeBuilds to create.
    pub create: Vec<NodeBuild>,
    /// NodeBuilds to cancel (`spec.cancel = true`).
    pub cancel: Vec<String>,
    /// The status to write (written only if it differs).
    pub status: ImageBuildStatus,
    /// Events to publish.
    pub events: Vec<Event>,
    /// Delete the ImageBuild (its TTL ran out).
    pub delete: bool,
    /// Reconcile again after this long even if nothing happens.
    pub requeue: Option<Duration>,
}

/// What every step knows about the build, derived once from [`Observed`].
pub(super) struct Scope<'a> {
    /// The ImageBuild.
    pub build: &'a ImageBuild,
    /// Its current generation.
    pub generation: i64,
    /// Its status as last written.
    pub previous: ImageBuildStatus,
    /// The pool's heartbeats by node.
    pub beats: BTreeMap<&'a str, &'a Heartbeat>,
    /// `placement.allNodes`.
    pub all_nodes: bool,
    /// Now.
    pub now: Timestamp,
}

/// What dispatching found besides NodeBuilds to create.
#[derive(Default)]
pub(super) struct Next {
    /// Times after which something changes by itself (a retry falls due, a deadline passes…).
    pub requeue: Vec<Duration>,
    /// Why no builder could take the build, if none could.
    pub unschedulable: Option<Unschedulable>,
}

/// Decides.
pub fn decide(o: &Observed<'_>) -> Plan {
    let scope = Scope {
        build: o.build,
        generation: o.build.metadata.generation.unwrap_or(1),
        previous: o.build.status.clone().unwrap_or_default(),
        beats: o
            .candidates
            .iter()
            .map(|c| (c.heartbeat.node.as_str(), c.heartbeat))
            .collect(),
        all_nodes: o.build.spec.placement.as_ref().is_some_and(|p| p.all_nodes),
        now: o.now,
    };
    let mut plan = Plan::default();
    judge::supersede_older_generations(o, &scope, &mut plan);
    let attempts = judge::current_attempts(o, &scope, &mut plan);
    let slots = judge::slots(&attempts, scope.all_nodes);
    if slots.is_empty() && finished_before(&scope) {
        return aggregate::keep_recorded_outcome(&scope, plan);
    }
    let mut next = Next::default();
    dispatch::first_attempts(o, &scope, &slots, &mut plan, &mut next);
    let states = dispatch::advance_slots(o, &scope, &slots, &mut plan, &mut next);
    aggregate::finish(&scope, &attempts, &slots, &states, next, &mut plan);
    plan
}

/// This generation finished and its attempts are gone since (deleted by hand, or by the
/// namespace's deletion, which removes NodeBuilds and ImageBuilds in no particular order):
/// the recorded outcome stands. Building again would surprise, and in a terminating namespace
/// could not even start.
fn finished_before(scope: &Scope<'_>) -> bool {
    scope.previous.observed_generation == Some(scope.generation)
        && scope.previous.phase.is_some_and(BuildPhase::is_finished)
}

/// Whether a heartbeat from `beat`'s builder can change what `build` does, and so is worth a
/// reconcile: an unfinished build of its pool with no attempt under way (waiting for a builder
/// to appear), or an allNodes build that has not been on that node yet (it joined). A build
/// whose attempt runs is not: its NodeBuild's changes wake it, and the attempt's node going
/// quiet is a requeue at that heartbeat's expiry. So renewals cost nothing per running build.
/// Only heartbeats that are news reach this test (`controller::heartbeats::news`): a plain
/// renewal wakes nothing, and a build waiting for a builder re-checks every 30 s regardless.
pub fn woken_by(build: &ImageBuild, beat: &Heartbeat, attempt_under_way: bool) -> bool {
    if build.spec.pool() != beat.pool {
        return false;
    }
    let status = build.status.as_ref();
    let finished = status.and_then(|s| s.phase).is_some_and(BuildPhase::is_finished);
    let all_nodes = build.spec.placement.as_ref().is_some_and(|p| p.all_nodes);
    let been_there = status.is_some_and(|s| s.nodes.iter().any(|n| n.name == beat.node));
    (!finished && !attempt_under_way) || (all_nodes && !been_there)
}

/// Whether `build` is held by its pool's queue limit (`maxQueuedBuilds`): a slot freeing on
/// one of `pool`'s nodes may let it go. Such builds are woken oldest first, a few per freed
/// slot (see `controller::wiring::room_for_held`), and all of them by a new generation of the
/// pool (its limit raised or removed); each re-checks every 30 s regardless.
pub fn held_for_room(build: &ImageBuild, pool: &str) -> bool {
    let status = build.status.as_ref();
    build.spec.pool() == pool
        && status.is_some_and(|s| s.reason.as_deref() == Some(super::schedule::QUEUE_FULL))
        && !status.and_then(|s| s.phase).is_some_and(BuildPhase::is_finished)
}

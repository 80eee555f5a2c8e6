//! Dispatching: first attempts where the scheduler puts the build (with allNodes, also on
//! builders that turned ready since), then per slot whether it is done, building, past its
//! deadline, or due for a retry — and on which node. A NodeBuild created here *is* the
//! dispatch.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Resource;
use kube::api::ObjectMeta;

use super::judge::{Attempt, Outcome, Slots, failed_attempts, is_renewal, name};
use super::naming::{CACHE_KEY_LABEL, GENERATION_LABEL, cache_key, node_build_name};
use super::plan::{Event, Next, Observed, Plan, Scope};
use super::schedule::{Unschedulable, choose};
use crate::api::image_build::{BuildPhase, ImageBuild};
use crate::api::node_build::{IMAGE_BUILD_LABEL, NODE_LABEL, NodeBuild, NodeBuildSpec, POOL_LABEL, WAITING_FOR_UPLOAD};

/// First retry delay; doubled per failure, capped at [`MAX_BACKOFF`].
pub const BASE_BACKOFF: SignedDuration = SignedDuration::from_secs(2);
/// Longest retry delay.
pub const MAX_BACKOFF: SignedDuration = SignedDuration::from_secs(120);
/// How often an unschedulable build is re-checked even without a heartbeat event.
pub const UNSCHEDULABLE_RECHECK: Duration = Duration::from_secs(30);

/// A slot's phase and, when it has one, the reason and message to report.
pub(super) type SlotState = (Option<BuildPhase>, Option<(String, String)>);

/// First attempts: where the scheduler puts the build at its first dispatch; with allNodes
/// also on every builder that turned ready since (a node joined the pool, or came back).
pub(super) fn first_attempts(
    o: &Observed<'_>,
    scope: &Scope<'_>,
    slots: &Slots<'_, '_>,
    plan: &mut Plan,
    next: &mut Next,
) {
    if !slots.is_empty() && !scope.all_nodes {
        return;
    }
    let build = scope.build;
    match choose(
        build.spec.placement.as_ref(),
        &build.spec.recipe.platforms,
        &o.candidates,
        &[],
        o.affinity.as_deref(),
        build.spec.pool(),
        scope.now,
    ) {
        Ok(nodes) => {
            // A first attempt's timeout starts now (with allNodes, per node).
            let deadline = deadline_of(scope, &[]);
            for node in nodes.into_iter().filter(|n| !slots.contains_key(&Some(n.clone()))) {
                // The first dispatch is in the status (`nodes`); a node joining later is news.
                if !slots.is_empty() {
                    plan.events.push(Event {
                        warning: false,
                        reason: "Scheduled",
                        note: format!("attempt 1 on node {node}, which joined the pool's ready builders"),
                    });
                }
                plan.create.push(node_build(scope, &node, 1, deadline));
            }
        }
        // Later, an allNodes build just has no new node to go to.
        Err(why) if slots.is_empty() => next.unschedulable = Some(why),
        Err(_) => {}
    }
}

/// Each slot's state, dispatching the retries that are due.
pub(super) fn advance_slots(
    o: &Observed<'_>,
    scope: &Scope<'_>,
    slots: &Slots<'_, '_>,
    plan: &mut Plan,
    next: &mut Next,
) -> Vec<SlotState> {
    let mut states = Vec::new();
    for (slot, attempts) in slots {
        let Some(last) = attempts.last() else { continue };
        // `timeoutSeconds` counts from the first attempt since the image was last lost: a
        // restore months later gets its own time.
        let lost = attempts
            .iter()
            .rposition(|a| is_renewal(&a.outcome))
            .map_or(0, |i| i + 1);
        let nbs: Vec<&NodeBuild> = attempts[lost..].iter().map(|a| a.nb).collect();
        let deadline = deadline_of(scope, &nbs);
        let deadline_passed = deadline.is_some_and(|d| scope.now >= d);
        if let Some(d) = deadline.filter(|_| !deadline_passed) {
            next.requeue.push(until(scope.now, d));
        }
        let state = if attempts.iter().any(|a| a.outcome == Outcome::Succeeded) {
            (Some(BuildPhase::Succeeded), None)
        } else if deadline_passed {
            if matches!(last.outcome, Outcome::Active { .. }) && !last.nb.spec.cancel {
                plan.cancel.push(name(last.nb));
            }
            (Some(BuildPhase::Failed), Some(deadline_reason(scope.build)))
        } else {
            match &last.outcome {
                Outcome::Active { running } => active(scope, last, *running, next),
                Outcome::Succeeded => (Some(BuildPhase::Succeeded), None),
                Outcome::Failed { .. } => after_failure(o, scope, slot, attempts, deadline, plan, next),
            }
        };
        states.push(state);
    }
    states
}

/// A slot whose latest attempt is still going: building, queued, or waiting for its context.
fn active(scope: &Scope<'_>, last: &Attempt<'_>, running: bool, next: &mut Next) -> SlotState {
    if let Some(hb) = scope.beats.get(last.nb.spec.node_name.as_str()) {
        next.requeue.push(until(scope.now, hb.expires()));
    }
    if running {
        return (Some(BuildPhase::Building), None);
    }
    let status = last.nb.status.as_ref();
    let waiting = status.filter(|s| s.reason.as_deref() == Some(WAITING_FOR_UPLOAD));
    let note = waiting.map(|s| {
        let message = s.message.clone().unwrap_or_default();
        (WAITING_FOR_UPLOAD.to_owned(), message)
    });
    (Some(BuildPhase::Pending), note)
}

/// A slot whose latest attempt failed: give up (a permanent reason, or `backoffLimit` used
/// up), wait for the backoff, or retry now — pinned, or where the scheduler says.
fn after_failure(
    o: &Observed<'_>,
    scope: &Scope<'_>,
    slot: &Option<String>,
    attempts: &[&Attempt<'_>],
    deadline: Option<Timestamp>,
    plan: &mut Plan,
    next: &mut Next,
) -> SlotState {
    let pending = (Some(BuildPhase::Pending), None);
    let Some(last) = attempts.last() else { return pending };
    let Outcome::Failed {
        reason,
        message,
        at,
        permanent,
    } = &last.outcome
    else {
        return pending;
    };
    let failures = failed_attempts(attempts.iter().copied());
    if let Some(failed) = given_up(scope.build, failures, reason, message, *permanent) {
        return failed;
    }
    let renewal = is_renewal(&last.outcome);
    let due = retry_due(*at, failures, renewal);
    if scope.now < due {
        next.requeue.push(until(scope.now, due));
        let note = format!(
            "attempt {} failed ({reason}): {message}; retrying",
            last.nb.spec.attempt
        );
        return (Some(BuildPhase::Pending), Some(("Retrying".into(), note)));
    }
    match retry_nodes(o, scope, slot, last, reason, renewal) {
        Ok(nodes) => {
            let attempt = last.nb.spec.attempt + 1;
            for node in nodes {
                plan.events.push(retry_event(last, reason, message, renewal, &node));
                plan.create.push(node_build(scope, &node, attempt, deadline));
            }
        }
        Err(why) => next.unschedulable = Some(why),
    }
    pending
}

/// The slot's end when the failure is permanent or `backoffLimit` is used up: `Failed`, with
/// the attempt's reason and message (and, for a used-up limit, how many attempts it took).
fn given_up(build: &ImageBuild, failures: i32, reason: &str, message: &str, permanent: bool) -> Option<SlotState> {
    let limit = build.spec.backoff_limit();
    if !permanent && failures <= limit {
        return None;
    }
    let why = if permanent {
        String::new()
    } else {
        format!(" (gave up after {failures} attempt(s); backoffLimit {limit})")
    };
    Some((
        Some(BuildPhase::Failed),
        Some((reason.to_owned(), format!("{message}{why}"))),
    ))
}

/// When the retry of an attempt that ended `at` is due: a renewal is no failure to back off
/// from and goes at once; a failure waits its backoff.
fn retry_due(at: Timestamp, failures: i32, renewal: bool) -> Timestamp {
    if renewal {
        at
    } else {
        at.saturating_add(backoff(failures)).unwrap_or(at)
    }
}

/// Where a retry goes. Pinned when the slot is a node's (allNodes), when the build names its
/// node, or for a renewal (a restore or a new revision goes where the image was: that node's
/// pods expect it there), and then only if that node's builder is ready; otherwise where the
/// scheduler says, away from a node that was lost.
fn retry_nodes(
    o: &Observed<'_>,
    scope: &Scope<'_>,
    slot: &Option<String>,
    last: &Attempt<'_>,
    reason: &str,
    renewal: bool,
) -> Result<Vec<String>, Unschedulable> {
    let build = scope.build;
    let placement = build.spec.placement.clone().unwrap_or_default();
    let pinned = slot
        .clone()
        .or(placement.node_name.clone())
        .or_else(|| renewal.then(|| last.nb.spec.node_name.clone()));
    match pinned {
        Some(node) if scope.beats.get(node.as_str()).is_some_and(|h| h.is_fresh(scope.now)) => Ok(vec![node]),
        Some(node) => Err(Unschedulable::no_builder(format!(
            "node {node:?} has no ready builder for the retry"
        ))),
        None => {
            let avoid: Vec<String> = if reason == "NodeLost" {
                vec![last.nb.spec.node_name.clone()]
            } else {
                Vec::new()
            };
            choose(
                Some(&placement),
                &build.spec.recipe.platforms,
                &o.candidates,
                &avoid,
                o.affinity.as_deref(),
                build.spec.pool(),
                scope.now,
            )
        }
    }
}

/// The event for the retry of `last` on `node`: `Rebuilding` for a renewal, else a warning,
/// `Retrying`.
fn retry_event(last: &Attempt<'_>, reason: &str, message: &str, renewal: bool, node: &str) -> Event {
    let attempt = last.nb.spec.attempt + 1;
    if renewal {
        Event {
            warning: false,
            reason: "Rebuilding",
            note: format!("{message} ({reason}): attempt {attempt}"),
        }
    } else {
        Event {
            warning: true,
            reason: "Retrying",
            note: format!(
                "attempt {} failed ({reason}); attempt {attempt} on node {node}",
                last.nb.spec.attempt
            ),
        }
    }
}

/// When a slot's time is up: `timeoutSeconds` from its first attempt (now, for a first
/// attempt) — the whole build's, or with allNodes each node's, so a node joining later gets
/// its own time.
fn deadline_of(scope: &Scope<'_>, attempts: &[&NodeBuild]) -> Option<Timestamp> {
    let start = attempts
        .iter()
        .filter_map(|nb| nb.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
        .min()
        .unwrap_or(scope.now);
    let timeout = scope.build.spec.timeout_seconds?;
    Some(
        start
            .saturating_add(SignedDuration::from_secs(timeout))
            .unwrap_or(scope.now),
    )
}

/// The reason and message of a build past its `timeoutSeconds`.
pub(super) fn deadline_reason(build: &ImageBuild) -> (String, String) {
    let secs = build.spec.timeout_seconds.unwrap_or_default();
    (
        "DeadlineExceeded".into(),
        format!("the build did not finish within timeoutSeconds ({secs}s) and was cancelled"),
    )
}

/// How long from `now` until `then` (plus a little, so the requeue lands after it).
pub(super) fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(then.duration_since(now)).unwrap_or_default() + Duration::from_millis(100)
}

/// Delay before retry number `failures` (1-based).
pub fn backoff(failures: i32) -> SignedDuration {
    let exp = u32::try_from(failures.saturating_sub(1)).unwrap_or(0).min(10);
    BASE_BACKOFF
        .checked_mul(1 << exp)
        .unwrap_or(MAX_BACKOFF)
        .min(MAX_BACKOFF)
}

/// The NodeBuild of attempt `attempt` on `node`.
fn node_build(scope: &Scope<'_>, node: &str, attempt: i32, deadline: Option<Timestamp>) -> NodeBuild {
    let build = scope.build;
    let ib = build.metadata.name.clone().unwrap_or_default();
    let pool = build.spec.pool().to_owned();
    let labels = BTreeMap::from([
        (IMAGE_BUILD_LABEL.to_owned(), ib.clone()),
        (NODE_LABEL.to_owned(), node.to_owned()),
        (POOL_LABEL.to_owned(), pool.clone()),
        (GENERATION_LABEL.to_owned(), scope.generation.to_string()),
        (CACHE_KEY_LABEL.to_owned(), cache_key(&build.spec.recipe)),
    ]);
    let owner = build.controller_owner_ref(&()).map(|mut o: OwnerReference| {
        o.block_owner_deletion = Some(true);
        o
    });
    let per_node = scope.all_nodes.then_some(node);
    NodeBuild {
        metadata: ObjectMeta {
            name: Some(node_build_name(&ib, scope.generation, per_node, attempt)),
            namespace: build.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: NodeBuildSpec {
            node_name: node.to_owned(),
            pool,
            image_build: ib,
            generation: scope.generation,
            attempt,
            deadline: deadline.map(Time),
            cancel: false,
            remove_image: false,
            pin: build.spec.pin,
            build: build.spec.recipe.clone(),
        },
        status: None,
    }
}

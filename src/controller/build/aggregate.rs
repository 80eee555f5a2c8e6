//! Aggregating: the ImageBuild's phase, kstatus conditions, per-node results, digest and
//! progress from its slots and attempts; events on transitions; TTL expiry and the next
//! requeue.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::dispatch::{SlotState, UNSCHEDULABLE_RECHECK, until};
use super::judge::{Attempt, Outcome, Slots, failed_attempts, is_renewal};
use super::plan::{Event, Next, Plan, Scope};
use crate::api::conditions::{self, Desired, READY, RECONCILING, STALLED, Status};
use crate::api::image_build::{
    BuildPhase, DigestKind, ImageBuild, ImageBuildStatus, NodeResult, Progress, SourceStatus,
};
use crate::api::node_build::{NodeBuild, NodeBuildPhase};
use crate::api::reference::Reference;

/// The plan of a build whose finished generation's attempts are gone: the recorded status
/// stands, and only its TTL still runs.
pub(super) fn keep_recorded_outcome(scope: &Scope<'_>, mut plan: Plan) -> Plan {
    if let Some(expiry) = ttl_expiry(scope.build, &scope.previous) {
        if scope.now >= expiry {
            plan.delete = true;
        } else {
            plan.requeue = Some(until(scope.now, expiry));
        }
    }
    plan.status = scope.previous.clone();
    plan
}

/// Completes `plan`: the status (phase, conditions, results), events on transitions, TTL and
/// the next requeue.
pub(super) fn finish(
    scope: &Scope<'_>,
    attempts: &[Attempt<'_>],
    slots: &Slots<'_, '_>,
    states: &[SlotState],
    mut next: Next,
    plan: &mut Plan,
) {
    let phase = phase_of(states, plan.create.is_empty());
    let mut status = results(scope, attempts, slots, phase);
    let (reason, message) = reason_and_message(scope, &status, states, &next);
    if next.unschedulable.is_some() {
        next.requeue.push(UNSCHEDULABLE_RECHECK);
    }
    let desired = match phase {
        BuildPhase::Succeeded => vec![Desired::new(READY, Status::True, &reason, message.clone())],
        BuildPhase::Failed => vec![
            Desired::new(READY, Status::False, &reason, message.clone()),
            Desired::new(STALLED, Status::True, &reason, message.clone()),
        ],
        _ => vec![
            Desired::new(READY, Status::False, &reason, message.clone()),
            Desired::new(RECONCILING, Status::True, &reason, message.clone()),
        ],
    };
    let previous = &scope.previous;
    status.conditions = conditions::merge(&previous.conditions, &desired, Some(scope.generation), &Time(scope.now));
    status.reason = Some(reason);
    status.message = Some(message);
    status.observed_generation = Some(scope.generation);
    transition_events(previous, &status, &mut plan.events);
    if let Some(expiry) = ttl_expiry(scope.build, &status) {
        if scope.now >= expiry {
            plan.delete = true;
        } else {
            next.requeue.push(until(scope.now, expiry));
        }
    }
    plan.requeue = next.requeue.into_iter().min();
    plan.status = status;
}

/// The build's phase from its slots': any failed fails it; all succeeded (and nothing left to
/// create) succeeds it; any building makes it Building; else Pending.
fn phase_of(states: &[SlotState], nothing_to_create: bool) -> BuildPhase {
    if states.is_empty() {
        BuildPhase::Pending
    } else if states.iter().any(|(p, _)| *p == Some(BuildPhase::Failed)) {
        BuildPhase::Failed
    } else if states.iter().all(|(p, _)| *p == Some(BuildPhase::Succeeded)) && nothing_to_create {
        BuildPhase::Succeeded
    } else if states.iter().any(|(p, _)| *p == Some(BuildPhase::Building)) {
        BuildPhase::Building
    } else {
        BuildPhase::Pending
    }
}

/// The conditions' reason and message for the aggregated phase.
fn reason_and_message(
    scope: &Scope<'_>,
    status: &ImageBuildStatus,
    states: &[SlotState],
    next: &Next,
) -> (String, String) {
    match status.phase.unwrap_or(BuildPhase::Pending) {
        BuildPhase::Succeeded => (
            "Succeeded".to_owned(),
            format!(
                "built {} on {}",
                scope.build.spec.recipe.image,
                status.node_names.clone().unwrap_or_default()
            ),
        ),
        BuildPhase::Failed => states
            .iter()
            .find(|(p, _)| *p == Some(BuildPhase::Failed))
            .and_then(|(_, r)| r.clone())
            .unwrap_or_else(|| ("Failed".into(), "the build failed".into())),
        BuildPhase::Building => ("Building".to_owned(), progress_message(status)),
        BuildPhase::Pending => match (&next.unschedulable, states.iter().find_map(|(_, r)| r.clone())) {
            (Some(why), _) => (why.reason.to_owned(), why.message.clone()),
            // Retrying, or WaitingForUpload: the slot says why it waits.
            (None, Some(note)) => note,
            _ => ("Queued".to_owned(), "waiting for the builder to start".to_owned()),
        },
    }
}

/// The status fields derived from the attempts: per-node results, digest, progress, times.
fn results(scope: &Scope<'_>, attempts: &[Attempt<'_>], slots: &Slots<'_, '_>, phase: BuildPhase) -> ImageBuildStatus {
    let targets = targets(attempts, slots);
    let nodes: Vec<NodeResult> = targets.iter().map(|a| node_result(a)).collect();
    let built = Built::of(&targets, phase, &scope.build.spec.recipe.image);
    let failed_attempts = failed_attempts(attempts);
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    ImageBuildStatus {
        phase: Some(phase),
        short_digest: built.digest.as_deref().map(short_digest),
        digest: built.digest,
        digest_kind: built.digest_kind,
        image_ref: built.image_ref,
        config_digest: built.config_digest,
        node_names: (!names.is_empty()).then(|| names.join(",")),
        nodes,
        source: built.source.or_else(|| {
            targets
                .iter()
                .filter_map(|a| a.nb.status.as_ref()?.source.clone())
                .next()
        }),
        progress: progress(&targets),
        failed_attempts: (failed_attempts > 0).then_some(failed_attempts),
        start_time: attempts
            .iter()
            .filter_map(|a| a.nb.metadata.creation_timestamp.clone())
            .min_by_key(|t| t.0),
        completion_time: completion_time(scope, phase),
        ..Default::default()
    }
}

/// What the succeeded attempts built, as the status reports it.
struct Built {
    /// The image's digest, when the build succeeded and every node built the same one.
    digest: Option<String>,
    digest_kind: Option<DigestKind>,
    /// `image@digest`, where the digest is a manifest's.
    image_ref: Option<String>,
    config_digest: Option<String>,
    /// The source the first succeeded attempt built (a git ref's commit).
    source: Option<SourceStatus>,
}

impl Built {
    fn of(targets: &[&Attempt<'_>], phase: BuildPhase, image: &str) -> Self {
        let succeeded: Vec<&NodeBuild> = targets
            .iter()
            .filter(|a| a.outcome == Outcome::Succeeded)
            .map(|a| a.nb)
            .collect();
        let digests: Vec<&str> = succeeded
            .iter()
            .filter_map(|nb| nb.status.as_ref()?.digest.as_deref())
            .collect();
        let same = digests.windows(2).all(|w| w[0] == w[1]);
        let digest = (phase == BuildPhase::Succeeded && same)
            .then(|| digests.first().map(|d| (*d).to_owned()))
            .flatten();
        let first = succeeded.first().and_then(|nb| nb.status.clone()).unwrap_or_default();
        let digest_kind = digest.as_ref().and(first.digest_kind);
        let image_ref = match (&digest, digest_kind) {
            (Some(d), Some(DigestKind::Manifest)) => Reference::parse(image).ok().map(|r| r.pinned(d)),
            _ => None,
        };
        Built {
            digest,
            digest_kind,
            image_ref,
            config_digest: (phase == BuildPhase::Succeeded)
                .then_some(first.config_digest)
                .flatten(),
            source: first.source,
        }
    }
}

/// A digest's first 12 hex digits, as `docker images` shows an ID.
fn short_digest(digest: &str) -> String {
    digest
        .split_once(':')
        .map_or(digest, |(_, h)| h)
        .chars()
        .take(12)
        .collect()
}

/// The build's progress: the least advanced of its running attempts'.
fn progress(targets: &[&Attempt<'_>]) -> Option<Progress> {
    targets
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Active { .. }))
        .filter_map(|a| a.nb.status.as_ref()?.progress.clone())
        .min_by_key(|p| (p.completed, p.total))
}

/// When a finished build finished: kept from the recorded status while the phase and the
/// generation stay, else now.
fn completion_time(scope: &Scope<'_>, phase: BuildPhase) -> Option<Time> {
    let previous = &scope.previous;
    phase.is_finished().then(|| {
        previous
            .completion_time
            .clone()
            .filter(|_| previous.phase == Some(phase) && previous.observed_generation == Some(scope.generation))
            .unwrap_or(Time(scope.now))
    })
}

/// The attempts the status reports on: with one slot only its latest attempt (earlier nodes
/// are history), else the latest attempt per node.
fn targets<'s, 'a>(attempts: &'s [Attempt<'a>], slots: &Slots<'s, 'a>) -> Vec<&'s Attempt<'a>> {
    if slots.len() == 1 && slots.keys().next().is_some_and(Option::is_none) {
        return slots
            .values()
            .next()
            .and_then(|v| v.last().copied())
            .into_iter()
            .collect();
    }
    let mut latest: BTreeMap<&str, &Attempt<'_>> = BTreeMap::new();
    for a in attempts {
        let e = latest.entry(a.nb.spec.node_name.as_str()).or_insert(a);
        if a.nb.spec.attempt > e.nb.spec.attempt {
            *e = a;
        }
    }
    latest.into_values().collect()
}

fn node_result(a: &Attempt<'_>) -> NodeResult {
    let s = a.nb.status.clone().unwrap_or_default();
    let (phase, message) = match &a.outcome {
        Outcome::Failed { reason, message, .. } if reason == "NodeLost" => {
            (Some(NodeBuildPhase::Failed), Some(message.clone()))
        }
        Outcome::Failed { message, .. } if is_renewal(&a.outcome) => (s.phase, Some(message.clone())),
        _ => (s.phase.or(Some(NodeBuildPhase::Queued)), s.message.clone()),
    };
    NodeResult {
        name: a.nb.spec.node_name.clone(),
        phase,
        node_build: a.nb.metadata.name.clone(),
        digest: s.digest.clone(),
        attempt: Some(a.nb.spec.attempt),
        start_time: s.start_time.clone(),
        completion_time: s.completion_time.clone(),
        missing_since: s.missing_since.clone(),
        pin: s.pin.clone(),
        image_size: s.image_size,
        message,
    }
}

/// When a finished build's `ttlSecondsAfterFinished` runs out, if it has one.
fn ttl_expiry(build: &ImageBuild, status: &ImageBuildStatus) -> Option<Timestamp> {
    let ttl = build.spec.ttl_seconds_after_finished?;
    let done = status.completion_time.as_ref()?.0;
    Some(done.saturating_add(SignedDuration::from_secs(ttl)).unwrap_or(done))
}

fn progress_message(status: &ImageBuildStatus) -> String {
    match &status.progress {
        Some(p) => format!(
            "step {}/{}{}",
            p.completed,
            p.total,
            p.current.as_ref().map(|c| format!(": {c}")).unwrap_or_default()
        ),
        None => "building".into(),
    }
}

/// Events on transitions that deserve a person's attention. A first attempt that succeeds
/// publishes none: the status says it all, and an event is an API write per build (per node
/// for allNodes), the largest avoidable cost at scale. Failures publish a Warning; a success
/// after retries closes the story its `Retrying` warnings opened.
fn transition_events(previous: &ImageBuildStatus, next: &ImageBuildStatus, events: &mut Vec<Event>) {
    if next.phase == previous.phase && next.observed_generation == previous.observed_generation {
        return;
    }
    match next.phase {
        Some(BuildPhase::Succeeded) if next.nodes.iter().any(|n| n.attempt.unwrap_or(1) > 1) => events.push(Event {
            warning: false,
            reason: "Succeeded",
            note: format!(
                "built {} after retries",
                next.image_ref
                    .clone()
                    .or_else(|| next.digest.clone())
                    .unwrap_or_default()
            ),
        }),
        Some(BuildPhase::Failed) => events.push(Event {
            warning: true,
            reason: "Failed",
            note: next.message.clone().unwrap_or_default(),
        }),
        _ => {}
    }
}

//! The decide step of the ImageBuild reconcile: from what was observed (the build, its
//! NodeBuilds, the pool's heartbeats), what to create, what to cancel, and what status to
//! report. Pure: no I/O, the clock is an input, so every rule is unit-tested.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Resource;
use kube::api::ObjectMeta;

use super::naming::{CACHE_KEY_LABEL, GENERATION_LABEL, cache_key, node_build_name};
use super::schedule::{Candidate, choose};
use crate::api::conditions::{self, Desired, READY, RECONCILING, STALLED, Status};
use crate::api::heartbeat::Heartbeat;
use crate::api::image_build::{BuildPhase, DigestKind, ImageBuild, ImageBuildStatus, NodeResult};
use crate::api::node_build::{IMAGE_BUILD_LABEL, NODE_LABEL, NodeBuild, NodeBuildPhase, NodeBuildSpec, POOL_LABEL};
use crate::api::reference::Reference;

/// First retry delay; doubled per failure, capped at [`MAX_BACKOFF`].
pub const BASE_BACKOFF: SignedDuration = SignedDuration::from_secs(2);
/// Longest retry delay.
pub const MAX_BACKOFF: SignedDuration = SignedDuration::from_secs(120);
/// How often an unschedulable build is re-checked even without a heartbeat event.
pub const UNSCHEDULABLE_RECHECK: Duration = Duration::from_secs(30);
/// Failure reasons that no retry can fix.
const PERMANENT: &[&str] = &[
    "DockerfileParse",
    "InvalidRequest",
    "InvalidSpec",
    "DeadlineExceeded",
    "SecretNotFound",
];

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

/// One slot's phase and, when it has one, the reason and message to report.
type Slot = (Option<BuildPhase>, Option<(String, String)>);

/// How an attempt stands, as the controller judges it.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Active {
        running: bool,
    },
    Succeeded,
    Failed {
        reason: String,
        message: String,
        at: Timestamp,
        permanent: bool,
    },
}

struct Attempt<'a> {
    nb: &'a NodeBuild,
    outcome: Outcome,
}

/// Decides.
pub fn decide(o: &Observed<'_>) -> Plan {
    let mut plan = Plan::default();
    let build = o.build;
    let generation = build.metadata.generation.unwrap_or(1);
    let previous = build.status.clone().unwrap_or_default();
    let beats: BTreeMap<&str, &Heartbeat> = o
        .candidates
        .iter()
        .map(|c| (c.heartbeat.node.as_str(), c.heartbeat))
        .collect();

    // Attempts of older generations are superseded.
    for nb in &o.node_builds {
        if nb.spec.generation != generation && !finished(nb) && !nb.spec.cancel {
            plan.cancel.push(name(nb));
            plan.events.push(Event {
                warning: false,
                reason: "Cancelled",
                note: format!("cancelled {} (superseded by generation {generation})", name(nb)),
            });
        }
    }
    let current: Vec<&NodeBuild> = o
        .node_builds
        .iter()
        .copied()
        .filter(|nb| nb.spec.generation == generation)
        .collect();
    let all_nodes = build.spec.placement.as_ref().is_some_and(|p| p.all_nodes);

    // Judge each attempt; attempts on lost nodes are cancelled and count as failed.
    let judged: Vec<Attempt<'_>> = current
        .iter()
        .map(|nb| {
            let outcome = judge(nb, beats.get(nb.spec.node_name.as_str()).copied(), o.now);
            if matches!(&outcome, Outcome::Failed { reason, .. } if reason == "NodeLost") && !nb.spec.cancel {
                plan.cancel.push(name(nb));
            }
            Attempt { nb, outcome }
        })
        .collect();

    // Slots: one per target node with allNodes, else one for the whole build.
    let mut slots: BTreeMap<Option<String>, Vec<&Attempt<'_>>> = BTreeMap::new();
    for a in &judged {
        let key = all_nodes.then(|| a.nb.spec.node_name.clone());
        slots.entry(key).or_default().push(a);
    }
    for attempts in slots.values_mut() {
        attempts.sort_by_key(|a| a.nb.spec.attempt);
    }

    // This generation finished and its attempts are gone since (deleted by hand, or by the
    // namespace's deletion, which removes NodeBuilds and ImageBuilds in no particular order):
    // the recorded outcome stands. Building again would surprise, and in a terminating
    // namespace could not even start.
    let finished_before =
        previous.observed_generation == Some(generation) && previous.phase.is_some_and(BuildPhase::is_finished);
    if slots.is_empty() && finished_before {
        let mut requeue = None;
        if let Some(expiry) = ttl_expiry(build, &previous) {
            if o.now >= expiry {
                plan.delete = true;
            } else {
                requeue = Some(until(o.now, expiry));
            }
        }
        plan.requeue = requeue;
        plan.status = previous;
        return plan;
    }

    // timeoutSeconds counts from a slot's first attempt: the whole build's, or with allNodes
    // each node's (a node that joins later gets its own time).
    let deadline_from = |attempts: &mut dyn Iterator<Item = &NodeBuild>| {
        let start = attempts
            .filter_map(|nb| nb.metadata.creation_timestamp.as_ref())
            .map(|t| t.0)
            .min();
        build.spec.timeout_seconds.map(|t| {
            start
                .unwrap_or(o.now)
                .saturating_add(SignedDuration::from_secs(t))
                .unwrap_or(o.now)
        })
    };
    let pool = build.spec.pool().to_owned();
    let limit = build.spec.backoff_limit();
    let mut requeue: Vec<Duration> = Vec::new();
    let mut unschedulable: Option<String> = None;
    let mut retrying = false;

    // First attempts: where `choose` puts the build at its first dispatch; with allNodes also
    // on every builder that turned ready since (a node joined the pool, or came back).
    if slots.is_empty() || all_nodes {
        match choose(
            build.spec.placement.as_ref(),
            &build.spec.recipe.platforms,
            &o.candidates,
            &[],
            o.affinity.as_deref(),
            &pool,
            o.now,
        ) {
            Ok(nodes) => {
                // A first attempt's timeout starts now (with allNodes, per node).
                let deadline = deadline_from(&mut std::iter::empty());
                for node in nodes.into_iter().filter(|n| !slots.contains_key(&Some(n.clone()))) {
                    let note = if slots.is_empty() {
                        format!("attempt 1 on node {node}")
                    } else {
                        format!("attempt 1 on node {node}, which joined the pool's ready builders")
                    };
                    plan.events.push(Event {
                        warning: false,
                        reason: "Scheduled",
                        note,
                    });
                    plan.create
                        .push(node_build(build, generation, &node, 1, all_nodes, deadline));
                }
            }
            // Later, an allNodes build just has no new node to go to.
            Err(why) if slots.is_empty() => unschedulable = Some(why.0),
            Err(_) => {}
        }
    }

    // Per slot: finished, running, or due for a retry.
    let mut slot_phase: Vec<Slot> = Vec::new();
    let mut any_deadline_passed = false;
    for (slot, attempts) in &slots {
        let Some(last) = attempts.last() else { continue };
        let deadline = deadline_from(&mut attempts.iter().map(|a| a.nb));
        let deadline_passed = deadline.is_some_and(|d| o.now >= d);
        any_deadline_passed |= deadline_passed;
        if let Some(d) = deadline.filter(|_| !deadline_passed) {
            requeue.push(until(o.now, d));
        }
        if attempts.iter().any(|a| a.outcome == Outcome::Succeeded) {
            slot_phase.push((Some(BuildPhase::Succeeded), None));
            continue;
        }
        match &last.outcome {
            Outcome::Active { running } => {
                if deadline_passed {
                    if !last.nb.spec.cancel {
                        plan.cancel.push(name(last.nb));
                    }
                    slot_phase.push((Some(BuildPhase::Failed), Some(deadline_reason(build))));
                } else {
                    slot_phase.push((
                        Some(if *running {
                            BuildPhase::Building
                        } else {
                            BuildPhase::Pending
                        }),
                        None,
                    ));
                    if let Some(hb) = beats.get(last.nb.spec.node_name.as_str()) {
                        requeue.push(until(o.now, hb.expires()));
                    }
                }
            }
            // Handled by the `any` above; kept for exhaustiveness.
            Outcome::Succeeded => slot_phase.push((Some(BuildPhase::Succeeded), None)),
            Outcome::Failed {
                reason,
                message,
                at,
                permanent,
            } => {
                let failures = i32::try_from(
                    attempts
                        .iter()
                        .filter(|a| matches!(a.outcome, Outcome::Failed { .. }))
                        .count(),
                )
                .unwrap_or(i32::MAX);
                if deadline_passed {
                    slot_phase.push((Some(BuildPhase::Failed), Some(deadline_reason(build))));
                } else if *permanent || failures > limit {
                    let why = if *permanent {
                        String::new()
                    } else {
                        format!(" (gave up after {failures} attempt(s); backoffLimit {limit})")
                    };
                    slot_phase.push((
                        Some(BuildPhase::Failed),
                        Some((reason.clone(), format!("{message}{why}"))),
                    ));
                } else {
                    let due = at.saturating_add(backoff(failures)).unwrap_or(*at);
                    retrying = true;
                    if o.now < due {
                        requeue.push(until(o.now, due));
                        slot_phase.push((
                            Some(BuildPhase::Pending),
                            Some((
                                "Retrying".into(),
                                format!(
                                    "attempt {} failed ({reason}): {message}; retrying",
                                    last.nb.spec.attempt
                                ),
                            )),
                        ));
                        continue;
                    }
                    let placement = build.spec.placement.clone().unwrap_or_default();
                    let pinned = slot.clone().or(placement.node_name.clone());
                    let avoid: Vec<String> = if reason == "NodeLost" {
                        vec![last.nb.spec.node_name.clone()]
                    } else {
                        Vec::new()
                    };
                    let target = match &pinned {
                        Some(node) if beats.get(node.as_str()).is_some_and(|h| h.is_fresh(o.now)) => {
                            Ok(vec![node.clone()])
                        }
                        Some(node) => Err(format!("node {node:?} has no ready builder for the retry")),
                        None => choose(
                            Some(&placement),
                            &build.spec.recipe.platforms,
                            &o.candidates,
                            &avoid,
                            o.affinity.as_deref(),
                            &pool,
                            o.now,
                        )
                        .map_err(|u| u.0),
                    };
                    match target {
                        Ok(nodes) => {
                            let attempt = last.nb.spec.attempt + 1;
                            for node in nodes {
                                plan.events.push(Event {
                                    warning: true,
                                    reason: "Retrying",
                                    note: format!(
                                        "attempt {} failed ({reason}); attempt {attempt} on node {node}",
                                        last.nb.spec.attempt
                                    ),
                                });
                                plan.create
                                    .push(node_build(build, generation, &node, attempt, all_nodes, deadline));
                            }
                            slot_phase.push((Some(BuildPhase::Pending), None));
                        }
                        Err(why) => {
                            unschedulable = Some(why);
                            slot_phase.push((Some(BuildPhase::Pending), None));
                        }
                    }
                }
            }
        }
    }

    // Aggregate.
    let phase = if slot_phase.is_empty() {
        BuildPhase::Pending
    } else if slot_phase.iter().any(|(p, _)| *p == Some(BuildPhase::Failed)) {
        BuildPhase::Failed
    } else if slot_phase.iter().all(|(p, _)| *p == Some(BuildPhase::Succeeded)) && plan.create.is_empty() {
        BuildPhase::Succeeded
    } else if slot_phase.iter().any(|(p, _)| *p == Some(BuildPhase::Building)) {
        BuildPhase::Building
    } else {
        BuildPhase::Pending
    };
    let failure = slot_phase
        .iter()
        .find(|(p, _)| *p == Some(BuildPhase::Failed))
        .and_then(|(_, r)| r.clone());
    let failure =
        failure.or_else(|| (phase == BuildPhase::Failed && any_deadline_passed).then(|| deadline_reason(build)));
    let note = slot_phase.iter().find_map(|(_, r)| r.clone());

    let mut status = aggregate(build, &judged, &slots, phase, o.now, &previous);
    let (reason, message) = match phase {
        BuildPhase::Succeeded => (
            "Succeeded".to_owned(),
            format!(
                "built {} on {}",
                build.spec.recipe.image,
                status.node_names.clone().unwrap_or_default()
            ),
        ),
        BuildPhase::Failed => failure.unwrap_or_else(|| ("Failed".into(), "the build failed".into())),
        BuildPhase::Building => ("Building".to_owned(), progress_message(&status)),
        BuildPhase::Pending => match (&unschedulable, &note) {
            (Some(why), _) => ("Unschedulable".to_owned(), why.clone()),
            (None, Some((r, m))) if retrying => (r.clone(), m.clone()),
            _ => ("Queued".to_owned(), "waiting for the builder to start".to_owned()),
        },
    };
    if unschedulable.is_some() {
        requeue.push(UNSCHEDULABLE_RECHECK);
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
    status.conditions = conditions::merge(&previous.conditions, &desired, Some(generation), &Time(o.now));
    status.reason = Some(reason);
    status.message = Some(message);
    status.observed_generation = Some(generation);

    transition_events(&previous, &status, &mut plan.events);

    // TTL after finishing.
    if let Some(expiry) = ttl_expiry(build, &status) {
        if o.now >= expiry {
            plan.delete = true;
        } else {
            requeue.push(until(o.now, expiry));
        }
    }
    plan.requeue = requeue.into_iter().min();
    plan.status = status;
    plan
}

/// Whether a heartbeat from `beat`'s builder can change what `build` does, and so is worth a
/// reconcile: an unfinished build of its pool (a builder appeared, went, or freed a slot), or
/// an allNodes build that has not been on that node yet (it joined). A renewal of anything
/// else is no news.
pub fn woken_by(build: &ImageBuild, beat: &Heartbeat) -> bool {
    if build.spec.pool() != beat.pool {
        return false;
    }
    let status = build.status.as_ref();
    let finished = status.and_then(|s| s.phase).is_some_and(BuildPhase::is_finished);
    let all_nodes = build.spec.placement.as_ref().is_some_and(|p| p.all_nodes);
    let been_there = status.is_some_and(|s| s.nodes.iter().any(|n| n.name == beat.node));
    !finished || (all_nodes && !been_there)
}

/// When a finished build's `ttlSecondsAfterFinished` runs out, if it has one.
fn ttl_expiry(build: &ImageBuild, status: &ImageBuildStatus) -> Option<Timestamp> {
    let ttl = build.spec.ttl_seconds_after_finished?;
    let done = status.completion_time.as_ref()?.0;
    Some(done.saturating_add(SignedDuration::from_secs(ttl)).unwrap_or(done))
}

fn deadline_reason(build: &ImageBuild) -> (String, String) {
    let secs = build.spec.timeout_seconds.unwrap_or_default();
    (
        "DeadlineExceeded".into(),
        format!("the build did not finish within timeoutSeconds ({secs}s) and was cancelled"),
    )
}

fn name(nb: &NodeBuild) -> String {
    nb.metadata.name.clone().unwrap_or_default()
}

fn finished(nb: &NodeBuild) -> bool {
    nb.status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(NodeBuildPhase::is_finished)
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
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

fn judge(nb: &NodeBuild, heartbeat: Option<&Heartbeat>, now: Timestamp) -> Outcome {
    let status = nb.status.clone().unwrap_or_default();
    let at = status.completion_time.as_ref().map(|t| t.0).unwrap_or(now);
    match status.phase {
        Some(NodeBuildPhase::Succeeded) => Outcome::Succeeded,
        Some(NodeBuildPhase::Failed) | Some(NodeBuildPhase::Cancelled) => {
            let reason = status.reason.clone().unwrap_or_else(|| "Failed".into());
            Outcome::Failed {
                permanent: PERMANENT.contains(&reason.as_str()),
                message: status.message.clone().unwrap_or_else(|| reason.clone()),
                reason,
                at,
            }
        }
        _ => {
            let lost = heartbeat.is_none_or(|h| !h.is_fresh(now));
            if lost {
                let since = heartbeat.map(Heartbeat::expires).unwrap_or(now);
                Outcome::Failed {
                    reason: "NodeLost".into(),
                    message: format!(
                        "node {}'s builder stopped heartbeating while the build was {}",
                        nb.spec.node_name,
                        if status.phase == Some(NodeBuildPhase::Running) {
                            "running"
                        } else {
                            "queued"
                        }
                    ),
                    at: since.min(now),
                    permanent: false,
                }
            } else {
                Outcome::Active {
                    running: status.phase == Some(NodeBuildPhase::Running),
                }
            }
        }
    }
}

fn node_build(
    build: &ImageBuild,
    generation: i64,
    node: &str,
    attempt: i32,
    all_nodes: bool,
    deadline: Option<Timestamp>,
) -> NodeBuild {
    let ib = build.metadata.name.clone().unwrap_or_default();
    let pool = build.spec.pool().to_owned();
    let labels = BTreeMap::from([
        (IMAGE_BUILD_LABEL.to_owned(), ib.clone()),
        (NODE_LABEL.to_owned(), node.to_owned()),
        (POOL_LABEL.to_owned(), pool.clone()),
        (GENERATION_LABEL.to_owned(), generation.to_string()),
        (CACHE_KEY_LABEL.to_owned(), cache_key(&build.spec.recipe)),
    ]);
    let owner = build.controller_owner_ref(&()).map(|mut o: OwnerReference| {
        o.block_owner_deletion = Some(true);
        o
    });
    NodeBuild {
        metadata: ObjectMeta {
            name: Some(node_build_name(&ib, generation, all_nodes.then_some(node), attempt)),
            namespace: build.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: NodeBuildSpec {
            node_name: node.to_owned(),
            pool,
            image_build: ib,
            generation,
            attempt,
            deadline: deadline.map(Time),
            cancel: false,
            build: build.spec.recipe.clone(),
        },
        status: None,
    }
}

fn aggregate(
    build: &ImageBuild,
    judged: &[Attempt<'_>],
    slots: &BTreeMap<Option<String>, Vec<&Attempt<'_>>>,
    phase: BuildPhase,
    now: Timestamp,
    previous: &ImageBuildStatus,
) -> ImageBuildStatus {
    // Latest attempt per node.
    let mut latest: BTreeMap<&str, &Attempt<'_>> = BTreeMap::new();
    for a in judged {
        let e = latest.entry(a.nb.spec.node_name.as_str()).or_insert(a);
        if a.nb.spec.attempt > e.nb.spec.attempt {
            *e = a;
        }
    }
    // With one slot, only the node of the latest attempt is a target; earlier nodes are history.
    let targets: Vec<&Attempt<'_>> = if slots.len() == 1 && slots.keys().next().is_some_and(Option::is_none) {
        slots
            .values()
            .next()
            .and_then(|v| v.last().copied())
            .into_iter()
            .collect()
    } else {
        latest.values().copied().collect()
    };
    let nodes: Vec<NodeResult> = targets
        .iter()
        .map(|a| {
            let s = a.nb.status.clone().unwrap_or_default();
            let (phase, message) = match &a.outcome {
                Outcome::Failed { reason, message, .. } if reason == "NodeLost" => {
                    (Some(NodeBuildPhase::Failed), Some(message.clone()))
                }
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
                message,
            }
        })
        .collect();
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
        (Some(d), Some(DigestKind::Manifest)) => Reference::parse(&build.spec.recipe.image).ok().map(|r| r.pinned(d)),
        _ => None,
    };
    let progress = targets
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Active { .. }))
        .filter_map(|a| a.nb.status.as_ref()?.progress.clone())
        .min_by_key(|p| (p.completed, p.total));
    let failed_attempts = i32::try_from(
        judged
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Failed { .. }))
            .count(),
    )
    .unwrap_or(i32::MAX);
    let start_time = judged
        .iter()
        .filter_map(|a| a.nb.metadata.creation_timestamp.clone())
        .min_by_key(|t| t.0);
    let finished = matches!(phase, BuildPhase::Succeeded | BuildPhase::Failed);
    let completion_time = finished.then(|| {
        previous
            .completion_time
            .clone()
            .filter(|_| previous.phase == Some(phase) && previous.observed_generation == build.metadata.generation)
            .unwrap_or(Time(now))
    });
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    ImageBuildStatus {
        phase: Some(phase),
        short_digest: digest
            .as_deref()
            .map(|d| d.split_once(':').map_or(d, |(_, h)| h).chars().take(12).collect()),
        digest,
        digest_kind,
        image_ref,
        config_digest: (phase == BuildPhase::Succeeded)
            .then(|| first.config_digest.clone())
            .flatten(),
        node_names: (!names.is_empty()).then(|| names.join(",")),
        nodes,
        resolved_source: first.resolved_source.clone(),
        progress,
        failed_attempts: (failed_attempts > 0).then_some(failed_attempts),
        start_time,
        completion_time,
        ..Default::default()
    }
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

fn transition_events(previous: &ImageBuildStatus, next: &ImageBuildStatus, events: &mut Vec<Event>) {
    for n in &next.nodes {
        let before = previous
            .nodes
            .iter()
            .find(|p| p.name == n.name && p.attempt == n.attempt)
            .and_then(|p| p.phase);
        if n.phase == Some(NodeBuildPhase::Running) && before != Some(NodeBuildPhase::Running) {
            events.push(Event {
                warning: false,
                reason: "Started",
                note: format!("attempt {} started on node {}", n.attempt.unwrap_or(1), n.name),
            });
        }
    }
    if next.phase != previous.phase || next.observed_generation != previous.observed_generation {
        match next.phase {
            Some(BuildPhase::Succeeded) => events.push(Event {
                warning: false,
                reason: "Succeeded",
                note: format!(
                    "built {}",
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
}

//! Judging attempts: how each NodeBuild of the current generation stands — active, succeeded,
//! or failed and whether a retry can help — counting attempts whose node stopped heartbeating
//! as failed (`NodeLost`), and grouping them into slots: one per target node with allNodes,
//! else one for the whole build.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::plan::{Event, Observed, Plan, Scope};
use crate::api::heartbeat::Heartbeat;
use crate::api::image_build::Restore;
use crate::api::node_build::{NodeBuild, NodeBuildPhase};

/// Failure reasons that no retry can fix.
const PERMANENT: &[&str] = &[
    "DockerfileParse",
    "InvalidRequest",
    "InvalidSpec",
    "DeadlineExceeded",
    "SecretNotFound",
    "SecretForbidden",
    "UploadTimeout",
    "ContextTooLarge",
    "ImageNotAllowed",
    "GitRefNotFound",
    "GitAccessDenied",
];

/// The reason of a succeeded attempt whose image its agent found gone from the node's store.
pub const IMAGE_MISSING: &str = "ImageMissing";
/// The reason of a finished attempt whose git ref has moved since (`source.git.poll`).
pub const NEW_REVISION: &str = "NewRevision";

/// Whether an attempt's image is outdated rather than failed (lost from the store, or built
/// from a commit its ref no longer names): rebuilt on its node, not counted against
/// `backoffLimit` or in `failedAttempts`, and `timeoutSeconds` counts afresh.
pub(super) fn is_renewal(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Failed { reason, .. } if reason == IMAGE_MISSING || reason == NEW_REVISION)
}

/// How many of `attempts` count as failed: a lost or outdated image is no failure of the
/// build, so it neither uses up `backoffLimit` nor shows in `failedAttempts`.
pub(super) fn failed_attempts<'a, 'n: 'a>(attempts: impl IntoIterator<Item = &'a Attempt<'n>>) -> i32 {
    let failed = attempts
        .into_iter()
        .filter(|a| matches!(a.outcome, Outcome::Failed { .. }) && !is_renewal(&a.outcome))
        .count();
    i32::try_from(failed).unwrap_or(i32::MAX)
}

/// How an attempt stands, as the controller judges it.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Outcome {
    /// Queued, waiting or building.
    Active {
        /// BuildKit is building it.
        running: bool,
    },
    /// The image is on the node.
    Succeeded,
    /// It ended without the image.
    Failed {
        /// CamelCase reason.
        reason: String,
        /// What happened.
        message: String,
        /// When.
        at: Timestamp,
        /// No retry can fix it.
        permanent: bool,
    },
}

/// One attempt and its outcome.
pub(super) struct Attempt<'a> {
    /// The NodeBuild.
    pub nb: &'a NodeBuild,
    /// How it stands.
    pub outcome: Outcome,
}

/// Attempts by slot (`None`: the build's one slot; `Some(node)` with allNodes), oldest first.
pub(super) type Slots<'s, 'a> = BTreeMap<Option<String>, Vec<&'s Attempt<'a>>>;

/// Cancels unfinished attempts of older generations: they are superseded.
pub(super) fn supersede_older_generations(o: &Observed<'_>, scope: &Scope<'_>, plan: &mut Plan) {
    let generation = scope.generation;
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
}

/// This generation's attempts, judged; attempts on lost nodes are cancelled.
pub(super) fn current_attempts<'a>(o: &Observed<'a>, scope: &Scope<'_>, plan: &mut Plan) -> Vec<Attempt<'a>> {
    o.node_builds
        .iter()
        .copied()
        .filter(|nb| nb.spec.generation == scope.generation)
        .map(|nb| {
            let beat = scope.beats.get(nb.spec.node_name.as_str()).copied();
            let outcome = judge(nb, beat, scope.now, scope.build.spec.restore.unwrap_or_default());
            if matches!(&outcome, Outcome::Failed { reason, .. } if reason == "NodeLost") && !nb.spec.cancel {
                plan.cancel.push(name(nb));
            }
            Attempt { nb, outcome }
        })
        .collect()
}

/// Groups attempts into slots, each sorted by attempt number.
pub(super) fn slots<'s, 'a>(attempts: &'s [Attempt<'a>], all_nodes: bool) -> Slots<'s, 'a> {
    let mut slots: Slots<'s, 'a> = BTreeMap::new();
    for a in attempts {
        let key = all_nodes.then(|| a.nb.spec.node_name.clone());
        slots.entry(key).or_default().push(a);
    }
    for attempts in slots.values_mut() {
        attempts.sort_by_key(|a| a.nb.spec.attempt);
    }
    slots
}

fn judge(nb: &NodeBuild, heartbeat: Option<&Heartbeat>, now: Timestamp, restore: Restore) -> Outcome {
    let status = nb.status.clone().unwrap_or_default();
    let at = status.completion_time.as_ref().map(|t| t.0).unwrap_or(now);
    if let Some(outcome) = moved(nb, at) {
        return outcome;
    }
    match status.phase {
        Some(NodeBuildPhase::Succeeded) => match &status.missing_since {
            None => Outcome::Succeeded,
            Some(since) => missing(nb, since.0, restore),
        },
        Some(NodeBuildPhase::Failed) | Some(NodeBuildPhase::Cancelled) => {
            let reason = status.reason.clone().unwrap_or_else(|| "Failed".into());
            Outcome::Failed {
                permanent: PERMANENT.contains(&reason.as_str()),
                message: status.message.clone().unwrap_or_else(|| reason.clone()),
                reason,
                at,
            }
        }
        _ if heartbeat.is_none_or(|h| !h.is_fresh(now)) => {
            let since = heartbeat.map(Heartbeat::expires).unwrap_or(now);
            let doing = if status.phase == Some(NodeBuildPhase::Running) {
                "running"
            } else {
                "queued"
            };
            Outcome::Failed {
                reason: "NodeLost".into(),
                message: format!(
                    "node {}'s builder stopped heartbeating while the build was {doing}",
                    nb.spec.node_name
                ),
                at: since.min(now),
                permanent: false,
            }
        }
        _ => Outcome::Active {
            running: status.phase == Some(NodeBuildPhase::Running),
        },
    }
}

/// A succeeded attempt whose image left the node's store: a failure that a rebuild on the
/// same node fixes, or, with `restore: Never`, one that stays.
fn missing(nb: &NodeBuild, since: Timestamp, restore: Restore) -> Outcome {
    let what = format!(
        "image {} is gone from node {}'s store (found at {since})",
        nb.spec.build.image, nb.spec.node_name
    );
    let message = match restore {
        Restore::Rebuild => format!("{what}; building it there again"),
        Restore::Never => format!(
            "{what}; spec.restore is Never, so it stays gone: set restore: Rebuild, or change the spec to build again"
        ),
    };
    Outcome::Failed {
        reason: IMAGE_MISSING.into(),
        message,
        at: since,
        permanent: restore == Restore::Never,
    }
}

/// A finished attempt (succeeded, or failed at its commit) whose ref its agent found moved to
/// another commit since: the new commit is built on that node.
fn moved(nb: &NodeBuild, at: Timestamp) -> Option<Outcome> {
    let status = nb.status.as_ref()?;
    if !matches!(status.phase, Some(NodeBuildPhase::Succeeded | NodeBuildPhase::Failed)) {
        return None;
    }
    let source = status.source.as_ref()?;
    let (built, latest) = (source.revision.as_deref()?, source.latest.as_deref()?);
    if built == latest {
        return None;
    }
    let short = |c: &str| c.chars().take(12).collect::<String>();
    let reference = match &nb.spec.build.source {
        crate::api::recipe::BuildSource::Git(g) => g.reference.clone().unwrap_or_else(|| "HEAD".into()),
        _ => "the ref".into(),
    };
    Some(Outcome::Failed {
        reason: NEW_REVISION.into(),
        message: format!(
            "{reference} moved to {} (attempt {} built {}); building it on node {}",
            short(latest),
            nb.spec.attempt,
            short(built),
            nb.spec.node_name
        ),
        at,
        permanent: false,
    })
}

/// The NodeBuild's name.
pub(super) fn name(nb: &NodeBuild) -> String {
    nb.metadata.name.clone().unwrap_or_default()
}

fn finished(nb: &NodeBuild) -> bool {
    nb.status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(NodeBuildPhase::is_finished)
}

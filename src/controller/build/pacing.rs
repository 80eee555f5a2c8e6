//! When a changed ImageBuild status is written: at once when it settles something (an
//! outcome, a stall) or keeps an in-progress status current, and otherwise only once the
//! generation has been in flight for the status delay, so a build that finishes sooner (a
//! cached one) goes from no status straight to its outcome in one write. An in-progress status
//! computed before the reconcile's own creates is never written: it lacks the attempts just
//! made (their node, their start), and the next reconcile, at once, writes them in one go.
//!
//! Pure: the reconcile supplies how long it has known the generation.

use std::time::Duration;

use crate::api::conditions::{self, STALLED};
use crate::api::image_build::{BuildPhase, ImageBuildStatus};

/// Default of the controller's `--status-delay-ms`: below what a person notices in
/// `kubectl get -w`, above a cached build's whole run.
pub const DEFAULT_STATUS_DELAY: Duration = Duration::from_millis(250);

/// Whether to write a status that differs from the recorded one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Write it now.
    Now,
    /// Not yet: look again after this long (the change may be overtaken by the outcome).
    After(Duration),
    /// Not this one: it was computed before the attempts this reconcile created. Reconcile
    /// again at once, with them.
    Again,
}

/// What the reconcile knows besides the two statuses.
#[derive(Clone, Copy, Debug)]
pub struct Moment {
    /// How long the reconcile has known this generation.
    pub known_for: Duration,
    /// The controller's status delay (`--status-delay-ms`).
    pub delay: Duration,
    /// Whether this reconcile created attempts after computing `next`.
    pub created: bool,
}

/// Decides for `next`, which differs from `previous`.
pub fn when(previous: &ImageBuildStatus, next: &ImageBuildStatus, at: Moment) -> Write {
    let settled = next.phase.is_some_and(BuildPhase::is_finished) || conditions::is_true(&next.conditions, STALLED);
    // Once a generation shows as in progress, what it shows is kept current.
    let shown = previous.observed_generation.is_some() && previous.observed_generation == next.observed_generation;
    if settled {
        Write::Now
    } else if at.created {
        // A held build dispatched as a slot frees, or a retry: written now, the status would
        // say "Queued" with no node and no start, and the next reconcile would write them.
        Write::Again
    } else if shown || at.known_for >= at.delay {
        Write::Now
    } else {
        Write::After(at.delay - at.known_for)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    const DELAY: Duration = Duration::from_millis(250);

    fn at(known_for: Duration) -> Moment {
        Moment {
            known_for,
            delay: DELAY,
            created: false,
        }
    }

    fn status(generation: i64, phase: BuildPhase, stalled: bool) -> ImageBuildStatus {
        let mut conditions = Vec::new();
        if stalled {
            conditions.push(Condition {
                type_: STALLED.into(),
                status: "True".into(),
                reason: "NoBuilder".into(),
                message: String::new(),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
                observed_generation: Some(generation),
            });
        }
        ImageBuildStatus {
            observed_generation: Some(generation),
            phase: Some(phase),
            conditions,
            ..Default::default()
        }
    }

    #[test]
    fn a_fresh_generation_in_progress_waits_for_the_delay_so_a_fast_build_writes_once() {
        let none = ImageBuildStatus::default();
        let building = status(1, BuildPhase::Building, false);
        assert_eq!(
            when(&none, &building, at(Duration::from_millis(40))),
            Write::After(Duration::from_millis(210))
        );
        assert_eq!(when(&none, &building, at(DELAY)), Write::Now);
        let done = status(1, BuildPhase::Succeeded, false);
        assert_eq!(when(&none, &done, at(Duration::ZERO)), Write::Now);
    }

    #[test]
    fn outcomes_stalls_and_an_already_shown_generation_are_written_at_once() {
        let none = ImageBuildStatus::default();
        let failed = status(1, BuildPhase::Failed, true);
        assert_eq!(when(&none, &failed, at(Duration::ZERO)), Write::Now);
        let stalled_pending = status(1, BuildPhase::Pending, true);
        assert_eq!(when(&none, &stalled_pending, at(Duration::ZERO)), Write::Now);
        let pending = status(1, BuildPhase::Pending, false);
        let building = status(1, BuildPhase::Building, false);
        assert_eq!(when(&pending, &building, at(Duration::ZERO)), Write::Now);
    }

    #[test]
    fn a_new_generation_of_a_finished_build_is_paced_like_a_new_build() {
        let old = status(1, BuildPhase::Succeeded, false);
        let next = status(2, BuildPhase::Pending, false);
        assert!(matches!(when(&old, &next, at(Duration::ZERO)), Write::After(_)));
    }

    #[test]
    fn a_status_computed_before_the_reconciles_creates_is_not_written_but_an_outcome_is() {
        let mut held = status(1, BuildPhase::Pending, false);
        held.reason = Some("QueueFull".into());
        let queued = status(1, BuildPhase::Pending, false);
        let created = Moment {
            created: true,
            ..at(Duration::from_secs(30))
        };
        assert_eq!(when(&held, &queued, created), Write::Again);
        assert_eq!(when(&ImageBuildStatus::default(), &queued, created), Write::Again);
        let failed = status(1, BuildPhase::Failed, true);
        assert_eq!(when(&held, &failed, created), Write::Now);
    }
}

//! When a changed ImageBuild status is written: at once when it settles something (an
//! outcome, a stall) or keeps an in-progress status current, and otherwise only once the
//! generation has been in flight for the status delay, so a build that finishes sooner (a
//! cached one) goes from no status straight to its outcome in one write.
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
}

/// Decides for `next`, which differs from `previous`, when the reconcile has known this
/// generation for `known_for`.
pub fn when(previous: &ImageBuildStatus, next: &ImageBuildStatus, known_for: Duration, delay: Duration) -> Write {
    let settled = next.phase.is_some_and(BuildPhase::is_finished) || conditions::is_true(&next.conditions, STALLED);
    // Once a generation shows as in progress, what it shows is kept current.
    let shown = previous.observed_generation.is_some() && previous.observed_generation == next.observed_generation;
    if settled || shown || known_for >= delay {
        Write::Now
    } else {
        Write::After(delay - known_for)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    const DELAY: Duration = Duration::from_millis(250);

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
            when(&none, &building, Duration::from_millis(40), DELAY),
            Write::After(Duration::from_millis(210))
        );
        assert_eq!(when(&none, &building, DELAY, DELAY), Write::Now);
        let done = status(1, BuildPhase::Succeeded, false);
        assert_eq!(when(&none, &done, Duration::ZERO, DELAY), Write::Now);
    }

    #[test]
    fn outcomes_stalls_and_an_already_shown_generation_are_written_at_once() {
        let none = ImageBuildStatus::default();
        let failed = status(1, BuildPhase::Failed, true);
        assert_eq!(when(&none, &failed, Duration::ZERO, DELAY), Write::Now);
        let stalled_pending = status(1, BuildPhase::Pending, true);
        assert_eq!(when(&none, &stalled_pending, Duration::ZERO, DELAY), Write::Now);
        let pending = status(1, BuildPhase::Pending, false);
        let building = status(1, BuildPhase::Building, false);
        assert_eq!(when(&pending, &building, Duration::ZERO, DELAY), Write::Now);
    }

    #[test]
    fn a_new_generation_of_a_finished_build_is_paced_like_a_new_build() {
        let old = status(1, BuildPhase::Succeeded, false);
        let next = status(2, BuildPhase::Pending, false);
        assert!(matches!(when(&old, &next, Duration::ZERO, DELAY), Write::After(_)));
    }
}

//! kstatus conditions (`Ready`, `Reconciling`, `Stalled`): constructing and merging them.
//!
//! kstatus (used by Flux, Argo CD and `kubectl wait`) reads an object as current when
//! `Ready=True` and `observedGeneration` matches; as in progress while `Reconciling=True`;
//! and as failed when `Stalled=True`. Abnormal-true conditions (`Reconciling`, `Stalled`) are
//! removed rather than set to `False` once they no longer hold.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The object has reached its desired state.
pub const READY: &str = "Ready";
/// The controller is still working towards the desired state.
pub const RECONCILING: &str = "Reconciling";
/// The controller cannot make progress without a change (a terminal failure).
pub const STALLED: &str = "Stalled";

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// `"True"`
    True,
    /// `"False"`
    False,
    /// `"Unknown"`
    Unknown,
}

impl Status {
    /// The string Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// A condition as a controller wants it, before timestamps are settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Condition type.
    pub type_: &'static str,
    /// Its status.
    pub status: Status,
    /// CamelCase reason.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
}

impl Desired {
    /// A desired condition.
    pub fn new(type_: &'static str, status: Status, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of that type exists with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Builds the complete new condition list from the desired ones.
///
/// Conditions not in `desired` are dropped. An empty message is replaced by the reason:
/// Kubernetes 1.20's server-side apply turns `""` into `null`, which the schema rejects. A condition whose status did not change keeps its
/// `lastTransitionTime`, so writing the same state twice yields an identical list and a
/// reconcile with nothing new writes nothing.
pub fn merge(existing: &[Condition], desired: &[Desired], generation: Option<i64>, now: &Time) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let last_transition_time = match find(existing, d.type_) {
                Some(old) if old.status == d.status.as_str() => old.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: d.type_.to_owned(),
                status: d.status.as_str().to_owned(),
                reason: d.reason.clone(),
                message: if d.message.is_empty() {
                    d.reason.clone()
                } else {
                    d.message.clone()
                },
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid timestamp"))
    }

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let first = merge(
            &[],
            &[Desired::new(READY, Status::False, "Building", "step 1/3")],
            Some(1),
            &at(10),
        );
        let second = merge(
            &first,
            &[Desired::new(READY, Status::False, "Building", "step 2/3")],
            Some(1),
            &at(20),
        );
        assert_eq!(second[0].last_transition_time, at(10));
        assert_eq!(second[0].message, "step 2/3");
    }

    #[test]
    fn empty_messages_become_the_reason() {
        let merged = merge(&[], &[Desired::new(READY, Status::True, "Succeeded", "")], None, &at(1));
        assert_eq!(merged[0].message, "Succeeded");
    }

    #[test]
    fn changed_status_moves_transition_time_and_drops_absent_conditions() {
        let first = merge(
            &[],
            &[
                Desired::new(READY, Status::False, "Building", ""),
                Desired::new(RECONCILING, Status::True, "Building", ""),
            ],
            Some(1),
            &at(10),
        );
        let second = merge(
            &first,
            &[Desired::new(READY, Status::True, "Succeeded", "")],
            Some(2),
            &at(30),
        );
        assert_eq!(second.len(), 1, "Reconciling is removed once it no longer holds");
        assert_eq!(second[0].last_transition_time, at(30));
        assert_eq!(second[0].observed_generation, Some(2));
        assert!(is_true(&second, READY));
        assert!(!is_true(&second, RECONCILING));
    }
}

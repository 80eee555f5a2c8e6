//! One step of the heartbeat Lease watch: parse the event's Lease once, update the shared table
//! ([`Heartbeats`]), and say what it is news to, for each controller ([`news`]). The watch and
//! the channels that carry the news are in `wiring`; this is the pure part.

use std::sync::{PoisonError, RwLock};

use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::watcher::Event;

use super::news::{Audience, Seen};
use super::{Heartbeats, Parsed, pool_of_lease};
use crate::api::heartbeat::Heartbeat;

/// What one Lease event wakes.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// The pool to reconcile, when the event is news to it ([`Audience::Pool`]).
    pub pool_news: Option<String>,
    /// The heartbeat to wake waiting builds with, when it is news to them
    /// ([`Audience::Builds`]; `build::plan::woken_by` picks the builds).
    pub build_news: Option<Heartbeat>,
}

/// The memory of the last heartbeat seen per Lease, one per audience.
pub struct Follower {
    pools: Seen,
    builds: Seen,
}

impl Default for Follower {
    fn default() -> Self {
        Self {
            pools: Seen::new(Audience::Pool),
            builds: Seen::new(Audience::Builds),
        }
    }
}

impl Follower {
    /// Follows one event of the watch: `table` takes it before anything it wakes runs, so a
    /// reconcile never reads a table older than the event that woke it. The Lease is parsed
    /// outside the lock, so reconciles reading snapshots wait only for the table's update.
    pub fn follow(&mut self, table: &RwLock<Heartbeats>, event: Event<Lease>) -> Outcome {
        let (parsed, outcome) = self.judge(event);
        // A panic elsewhere while holding the lock left at worst a stale snapshot; following
        // the watch on is better than a table that never changes again.
        table.write().unwrap_or_else(PoisonError::into_inner).apply(parsed);
        outcome
    }

    /// Parses the event's Lease and judges it for both audiences.
    fn judge(&mut self, event: Event<Lease>) -> (Event<Parsed>, Outcome) {
        match event {
            Event::Apply(lease) => {
                let parsed = Parsed::of(&lease);
                let outcome = self.applied(&parsed);
                (Event::Apply(parsed), outcome)
            }
            Event::InitApply(lease) => {
                let parsed = Parsed::of(&lease);
                let outcome = self.applied(&parsed);
                (Event::InitApply(parsed), outcome)
            }
            Event::Delete(lease) => {
                let parsed = Parsed::of(&lease);
                let outcome = self.deleted(&parsed, pool_of_lease(&lease));
                (Event::Delete(parsed), outcome)
            }
            Event::Init => (Event::Init, Outcome::default()),
            Event::InitDone => (Event::InitDone, Outcome::default()),
        }
    }

    fn applied(&mut self, parsed: &Parsed) -> Outcome {
        let Some(beat) = &parsed.beat else {
            return Outcome::default();
        };
        Outcome {
            pool_news: self.pools.applied(&parsed.lease, beat.clone()),
            build_news: self.builds.applied(&parsed.lease, beat.clone()).map(|_| beat.clone()),
        }
    }

    /// A deleted Lease is news to both: its pool loses a builder, and builds are woken with the
    /// Lease's last heartbeat when it parses, as they were when each controller had its watch.
    fn deleted(&mut self, parsed: &Parsed, pool: Option<String>) -> Outcome {
        Outcome {
            pool_news: self.pools.deleted(&parsed.lease, pool.clone()),
            build_news: self.builds.deleted(&parsed.lease, pool).and(parsed.beat.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::of_pool;
    use super::super::tests::{lease, nodes};
    use super::*;

    fn woke(outcome: &Outcome) -> (Option<&str>, Option<(&str, i64)>) {
        (
            outcome.pool_news.as_deref(),
            outcome
                .build_news
                .as_ref()
                .map(|b| (b.node.as_str(), b.renewed.as_second())),
        )
    }

    /// A follower and table that have listed `p/a` renewed at 100.
    fn listed() -> (Follower, RwLock<Heartbeats>) {
        let (mut f, t) = (Follower::default(), RwLock::default());
        f.follow(&t, Event::Init);
        f.follow(&t, Event::InitApply(lease("p", "a", 100)));
        f.follow(&t, Event::InitDone);
        (f, t)
    }

    #[test]
    fn a_new_builder_wakes_its_pool_and_builds() {
        let (mut f, t) = (Follower::default(), RwLock::default());
        assert_eq!(woke(&f.follow(&t, Event::Init)), (None, None));
        let first = f.follow(&t, Event::InitApply(lease("p", "a", 100)));
        assert_eq!(woke(&first), (Some("p"), Some(("a", 100))), "listed: new to both");
        assert_eq!(woke(&f.follow(&t, Event::InitDone)), (None, None));
        let joined = f.follow(&t, Event::Apply(lease("p", "b", 101)));
        assert_eq!(woke(&joined), (Some("p"), Some(("b", 101))));
        assert_eq!(nodes(&of_pool(&t, "p")), [("a", 100), ("b", 101)], "the table has both");
    }

    #[test]
    fn a_renewal_that_is_not_news_wakes_nothing_but_updates_the_table() {
        let (mut f, t) = listed();
        let renewed = f.follow(&t, Event::Apply(lease("p", "a", 105)));
        assert_eq!(renewed, Outcome::default());
        assert_eq!(nodes(&of_pool(&t, "p")), [("a", 105)]);
    }

    #[test]
    fn a_deletion_wakes_both() {
        let (mut f, t) = listed();
        let gone = f.follow(&t, Event::Delete(lease("p", "a", 105)));
        assert_eq!(woke(&gone), (Some("p"), Some(("a", 105))));
        assert!(of_pool(&t, "p").is_empty());
        let back = f.follow(&t, Event::Apply(lease("p", "a", 110)));
        assert_eq!(woke(&back), (Some("p"), Some(("a", 110))), "and so is its return");
    }

    #[test]
    fn a_deleted_lease_that_does_not_parse_wakes_its_pool_only() {
        let (mut f, t) = listed();
        let mut broken = lease("p", "a", 105);
        broken.spec = None;
        let gone = f.follow(&t, Event::Delete(broken));
        assert_eq!(woke(&gone), (Some("p"), None));
    }

    #[test]
    fn a_relist_replaces_the_table() {
        let (mut f, t) = listed();
        f.follow(&t, Event::Apply(lease("p", "b", 101)));
        f.follow(&t, Event::Init);
        // `a` was deleted while the watch was down; `b` renewed as before: not news.
        let relisted = f.follow(&t, Event::InitApply(lease("p", "b", 106)));
        assert_eq!(relisted, Outcome::default());
        assert_eq!(
            nodes(&of_pool(&t, "p")),
            [("a", 100), ("b", 101)],
            "the old table serves until InitDone"
        );
        f.follow(&t, Event::InitDone);
        assert_eq!(nodes(&of_pool(&t, "p")), [("b", 106)]);
    }

    #[test]
    fn a_busier_builder_is_news_to_its_pool_only() {
        let (mut f, t) = listed();
        let mut busy = lease("p", "a", 105);
        let capacity = r#"{"maxConcurrentBuilds":2,"running":1}"#;
        busy.metadata.annotations = Some([(crate::api::heartbeat::CAPACITY_ANNOTATION.into(), capacity.into())].into());
        let outcome = f.follow(&t, Event::Apply(busy));
        assert_eq!(woke(&outcome), (Some("p"), None), "builds do not wait for capacity");
    }
}

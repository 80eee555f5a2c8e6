//! Which heartbeat Lease events are news to a BuilderPool, so that renewals alone wake nothing.
//!
//! Every agent renews its Lease every few seconds; with hundreds of nodes, reconciling the pool
//! on each renewal kept the pool controller busy for nothing (a renewal changes no field of pool
//! status, see `status`). A renewal is news only when what the pool reports could change: a new
//! builder, a builder that went away, a change in what it reports (running builds, capacity,
//! platforms, BuildKit's version), or a renewal after the previous one had expired (the pool
//! may say the node is down). Expiry itself needs no event: the reconcile requeues at the
//! earliest expiry (`status::next_expiry`). Pure, apart from the memory of the last heartbeat
//! seen per Lease.

use std::collections::HashMap;

use k8s_openapi::jiff::Timestamp;

use crate::api::heartbeat::Heartbeat;

/// Whether `next` can change the status of its pool, given the previous heartbeat of the same
/// Lease and when `next` arrived.
pub fn is_news(prev: Option<&Heartbeat>, next: &Heartbeat, now: Timestamp) -> bool {
    let Some(prev) = prev else { return true };
    let (a, b) = (&prev.capacity, &next.capacity);
    prev.pool != next.pool
        || prev.node != next.node
        || !prev.is_fresh(now)
        || a.running != b.running
        || a.max_concurrent_builds != b.max_concurrent_builds
        || a.platforms != b.platforms
        || a.buildkit_version != b.buildkit_version
}

/// The last heartbeat seen per Lease (by name), to judge the next one.
#[derive(Default)]
pub struct Seen(HashMap<String, Heartbeat>);

impl Seen {
    /// Records a Lease's heartbeat; returns the pool to wake when it is news.
    pub fn applied(&mut self, lease: &str, beat: Heartbeat, now: Timestamp) -> Option<String> {
        let news = is_news(self.0.get(lease), &beat, now);
        let pool = beat.pool.clone();
        self.0.insert(lease.to_owned(), beat);
        news.then_some(pool)
    }

    /// Forgets a deleted Lease; returns its pool, which always has news.
    pub fn deleted(&mut self, lease: &str, pool: Option<String>) -> Option<String> {
        let known = self.0.remove(lease).map(|b| b.pool);
        pool.or(known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::heartbeat::test_beat;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    fn beat(renewed: i64, running: i32) -> Heartbeat {
        test_beat("n1", ts(renewed), running, &["linux/amd64"])
    }

    #[test]
    fn a_plain_renewal_is_not_news() {
        assert!(!is_news(Some(&beat(100, 0)), &beat(105, 0), ts(105)));
    }

    #[test]
    fn a_new_builder_a_change_and_a_return_are_news() {
        assert!(is_news(None, &beat(100, 0), ts(100)), "a new builder");
        assert!(is_news(Some(&beat(100, 0)), &beat(105, 1), ts(105)), "running changed");
        let mut upgraded = beat(105, 0);
        upgraded.capacity.buildkit_version = Some("v0.24.0".into());
        assert!(is_news(Some(&beat(100, 0)), &upgraded, ts(105)), "BuildKit changed");
        // The previous renewal expired (15 s): the pool may have said the node is down.
        assert!(
            is_news(Some(&beat(100, 0)), &beat(130, 0), ts(130)),
            "back after expiry"
        );
    }

    #[test]
    fn seen_wakes_the_pool_only_for_news() {
        let mut seen = Seen::default();
        assert_eq!(seen.applied("l", beat(100, 0), ts(100)), Some("default".into()));
        assert_eq!(seen.applied("l", beat(105, 0), ts(105)), None);
        assert_eq!(seen.applied("l", beat(110, 2), ts(110)), Some("default".into()));
        assert_eq!(
            seen.deleted("l", None),
            Some("default".into()),
            "a deleted Lease is news"
        );
        assert_eq!(
            seen.applied("l", beat(115, 2), ts(115)),
            Some("default".into()),
            "and so is its return"
        );
    }
}

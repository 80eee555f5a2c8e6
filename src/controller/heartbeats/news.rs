//! Which heartbeat Lease events are news to a BuilderPool, or to builds waiting for a builder,
//! so that renewals alone wake nothing.
//!
//! Every agent renews its Lease every few seconds; with hundreds of nodes, reconciling the pool
//! on each renewal kept the pool controller busy for nothing (a renewal changes no field of pool
//! status, see `pool::status`). A renewal is news only when what the pool reports could change:
//! a new builder, a builder that went away, a change in what it reports (running builds,
//! capacity, platforms, BuildKit's version), or a renewal after the previous one had expired
//! (the pool may say the node is down), judged by the gap between the renewals, never by when
//! one is read. Expiry itself needs no event: the reconcile requeues at the earliest expiry
//! (`pool::status::next_expiry`). Pure, apart from the memory of the last heartbeat seen per
//! Lease.

use std::collections::HashMap;

use crate::api::heartbeat::Heartbeat;

/// Who judges a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// The pool's status: everything it shows about a builder.
    Pool,
    /// Builds waiting for a builder: only a builder that can newly take them (a new one, one
    /// back after expiry, one with other platforms). A change in running builds is not: the
    /// controller places builds on busy builders too (the agent queues them), so a build never
    /// waits for capacity, only for a builder.
    Builds,
}

/// Whether `next` is news to `audience`, given the previous heartbeat of the same Lease.
pub fn is_news(audience: Audience, prev: Option<&Heartbeat>, next: &Heartbeat) -> bool {
    let Some(prev) = prev else { return true };
    let (a, b) = (&prev.capacity, &next.capacity);
    // Back after an expiry: judged by the gap between the two renewals, not by when this one is
    // read: a controller that falls behind its watch would otherwise take every renewal for a
    // return, wake every waiting build on each, and fall further behind (seen in the scale run).
    let returned = prev.expires() < next.renewed;
    let for_builds = prev.pool != next.pool || prev.node != next.node || returned || a.platforms != b.platforms;
    match audience {
        Audience::Builds => for_builds,
        Audience::Pool => {
            for_builds
                || a.running != b.running
                || a.max_concurrent_builds != b.max_concurrent_builds
                || a.buildkit_version != b.buildkit_version
        }
    }
}

/// The last heartbeat seen per Lease (by name), to judge the next one.
pub struct Seen {
    audience: Audience,
    last: HashMap<String, Heartbeat>,
}

impl Seen {
    /// Nothing seen yet.
    pub fn new(audience: Audience) -> Self {
        Self {
            audience,
            last: HashMap::new(),
        }
    }

    /// Records a Lease's heartbeat; returns the pool to wake when it is news.
    pub fn applied(&mut self, lease: &str, beat: Heartbeat) -> Option<String> {
        let news = is_news(self.audience, self.last.get(lease), &beat);
        let pool = beat.pool.clone();
        self.last.insert(lease.to_owned(), beat);
        news.then_some(pool)
    }

    /// Forgets a deleted Lease; returns its pool, which always has news.
    pub fn deleted(&mut self, lease: &str, pool: Option<String>) -> Option<String> {
        let known = self.last.remove(lease).map(|b| b.pool);
        pool.or(known)
    }
}

#[cfg(test)]
mod tests {
    use super::Audience::{Builds, Pool};
    use super::*;
    use crate::api::heartbeat::test_beat;
    use k8s_openapi::jiff::Timestamp;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    fn beat(renewed: i64, running: i32) -> Heartbeat {
        test_beat("n1", ts(renewed), running, &["linux/amd64"])
    }

    #[test]
    fn a_plain_renewal_is_not_news() {
        for audience in [Pool, Builds] {
            assert!(!is_news(audience, Some(&beat(100, 0)), &beat(105, 0)));
        }
    }

    #[test]
    fn a_new_builder_a_change_and_a_return_are_news_to_the_pool() {
        assert!(is_news(Pool, None, &beat(100, 0)), "a new builder");
        assert!(is_news(Pool, Some(&beat(100, 0)), &beat(105, 1)), "running changed");
        let mut upgraded = beat(105, 0);
        upgraded.capacity.buildkit_version = Some("v0.24.0".into());
        assert!(is_news(Pool, Some(&beat(100, 0)), &upgraded), "BuildKit changed");
        // The previous renewal expired (15 s): the pool may have said the node is down.
        assert!(is_news(Pool, Some(&beat(100, 0)), &beat(130, 0)), "back after expiry");
    }

    #[test]
    fn waiting_builds_hear_only_of_builders_that_can_newly_take_them() {
        assert!(is_news(Builds, None, &beat(100, 0)), "a new builder");
        assert!(is_news(Builds, Some(&beat(100, 0)), &beat(130, 0)), "back after expiry");
        let mut arm = beat(105, 0);
        arm.capacity.platforms.push("linux/arm64".into());
        assert!(is_news(Builds, Some(&beat(100, 0)), &arm), "new platforms");
        assert!(
            !is_news(Builds, Some(&beat(100, 0)), &beat(105, 1)),
            "a busier or idler builder: builds do not wait for capacity"
        );
    }

    #[test]
    fn seen_wakes_the_pool_only_for_news() {
        let mut seen = Seen::new(Pool);
        assert_eq!(seen.applied("l", beat(100, 0)), Some("default".into()));
        assert_eq!(seen.applied("l", beat(105, 0)), None);
        assert_eq!(seen.applied("l", beat(110, 2)), Some("default".into()));
        assert_eq!(
            seen.deleted("l", None),
            Some("default".into()),
            "a deleted Lease is news"
        );
        assert_eq!(
            seen.applied("l", beat(115, 2)),
            Some("default".into()),
            "and so is its return"
        );
    }
}

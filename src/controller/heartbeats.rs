//! The builders' heartbeats as both controllers read them. One watch of the heartbeat Leases
//! feeds both (`wiring::follow_heartbeats`); each Lease is parsed once, when its event arrives
//! ([`follow`]), into one table the pool and build reconciles share ([`Heartbeats`]), with each
//! pool's heartbeats as one snapshot, and judged once per audience for news ([`news`]), which
//! is what wakes a pool or waiting builds.
//!
//! Reconciles used to parse every heartbeat Lease of the cache into a fresh `Vec` each. In the
//! scale run (500 builders, thousands of builds reconciling at once) that was most of the
//! controller's allocations, and, since every reconcile held its copy across its API calls, most
//! of its peak memory. A snapshot is an `Arc`: a reconcile holds a pointer. The two controllers
//! also each ran a watch of the same Leases and parsed every event up to four times between
//! them. Pure: fed watcher events, following a relist the way kube's store does (a fresh table
//! from `Init` to `InitDone`, so Leases deleted while the watch was down disappear). Shared by
//! `build` and `pool`, so it imports from neither.

pub mod follow;
pub mod news;

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use crate::api::heartbeat::{Heartbeat, POOL_LABEL};

/// A heartbeat Lease as the table takes it: its name, and its heartbeat when it is one.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// The Lease's name.
    pub lease: String,
    /// The Lease parsed ([`Heartbeat::from_lease`]); `None` when malformed.
    pub beat: Option<Heartbeat>,
}

impl Parsed {
    /// Parses `lease`: the one parse its event gets.
    pub fn of(lease: &Lease) -> Self {
        Self {
            lease: lease.name_any(),
            beat: Heartbeat::from_lease(lease),
        }
    }
}

/// The pool a heartbeat Lease belongs to, by its label, whether or not the rest parses.
pub fn pool_of_lease(lease: &Lease) -> Option<String> {
    lease.labels().get(POOL_LABEL).cloned()
}

/// Every builder's latest heartbeat, by Lease name, and the snapshots handed out per pool.
#[derive(Default)]
pub struct Heartbeats {
    by_lease: HashMap<String, Heartbeat>,
    /// The table being filled by a relist, which replaces `by_lease` at `InitDone`.
    relisting: Option<HashMap<String, Heartbeat>>,
    /// Snapshots per pool, made on first read after a change to the pool.
    snapshots: HashMap<String, Arc<[Heartbeat]>>,
}

impl Heartbeats {
    /// Follows one event of the heartbeat Lease watch, its Lease parsed ([`Parsed`]).
    pub fn apply(&mut self, event: Event<Parsed>) {
        match event {
            Event::Apply(Parsed { lease, beat }) => {
                let old = self.by_lease.remove(&lease);
                self.forget_pool(old.as_ref());
                if let Some(beat) = beat {
                    self.forget_pool(Some(&beat));
                    self.by_lease.insert(lease, beat);
                }
            }
            Event::Delete(Parsed { lease, .. }) => {
                let old = self.by_lease.remove(&lease);
                self.forget_pool(old.as_ref());
            }
            Event::Init => self.relisting = Some(HashMap::new()),
            Event::InitApply(Parsed { lease, beat }) => {
                if let (Some(table), Some(beat)) = (self.relisting.as_mut(), beat) {
                    table.insert(lease, beat);
                }
            }
            Event::InitDone => {
                if let Some(table) = self.relisting.take() {
                    self.by_lease = table;
                    self.snapshots.clear();
                }
            }
        }
    }

    /// The pool's heartbeats, sorted by node, if a snapshot is made already.
    pub fn snapshot(&self, pool: &str) -> Option<Arc<[Heartbeat]>> {
        self.snapshots.get(pool).cloned()
    }

    /// The pool's heartbeats, sorted by node: the snapshot, made now if there is none.
    pub fn snapshot_or_make(&mut self, pool: &str) -> Arc<[Heartbeat]> {
        if let Some(s) = self.snapshots.get(pool) {
            return s.clone();
        }
        let mut beats: Vec<Heartbeat> = self.by_lease.values().filter(|b| b.pool == pool).cloned().collect();
        beats.sort_by(|a, b| a.node.cmp(&b.node));
        let snapshot: Arc<[Heartbeat]> = beats.into();
        self.snapshots.insert(pool.to_owned(), snapshot.clone());
        snapshot
    }

    fn forget_pool(&mut self, beat: Option<&Heartbeat>) {
        if let Some(beat) = beat {
            self.snapshots.remove(&beat.pool);
        }
    }
}

/// The pool's heartbeats from the shared table: a read lock when a snapshot exists, the write
/// lock only to make one. A poisoned lock (a panic elsewhere while holding it) is read through:
/// the table changes only in [`Heartbeats::apply`], which the watch goes on calling, whereas
/// reading no heartbeats would have the pool controller report every builder gone.
pub fn of_pool(table: &std::sync::RwLock<Heartbeats>, pool: &str) -> Arc<[Heartbeat]> {
    use std::sync::PoisonError;
    if let Some(s) = table.read().unwrap_or_else(PoisonError::into_inner).snapshot(pool) {
        return s;
    }
    table
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .snapshot_or_make(pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::heartbeat::{NODE_LABEL, POOL_LABEL, lease_name};
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use k8s_openapi::jiff::Timestamp;

    /// A heartbeat Lease of `pool` on `node`, renewed at second `renewed`.
    pub(super) fn lease(pool: &str, node: &str, renewed: i64) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(lease_name(pool, node)),
                labels: Some(
                    [
                        (POOL_LABEL.to_owned(), pool.to_owned()),
                        (NODE_LABEL.to_owned(), node.to_owned()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).expect("ts"))),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
        }
    }

    fn parsed(pool: &str, node: &str, renewed: i64) -> Parsed {
        Parsed::of(&lease(pool, node, renewed))
    }

    /// Each heartbeat's node and renewal second.
    pub(super) fn nodes(s: &[Heartbeat]) -> Vec<(&str, i64)> {
        s.iter().map(|b| (b.node.as_str(), b.renewed.as_second())).collect()
    }

    #[test]
    fn a_renewal_replaces_the_snapshot_of_its_pool_only() {
        let mut t = Heartbeats::default();
        t.apply(Event::Apply(parsed("p", "b", 10)));
        t.apply(Event::Apply(parsed("p", "a", 10)));
        t.apply(Event::Apply(parsed("q", "c", 10)));
        let p = t.snapshot_or_make("p");
        let q = t.snapshot_or_make("q");
        assert_eq!(nodes(&p), [("a", 10), ("b", 10)], "sorted by node, this pool's only");
        t.apply(Event::Apply(parsed("p", "a", 20)));
        assert!(t.snapshot("p").is_none(), "a renewal in p invalidates p's snapshot");
        assert!(t.snapshot("q").is_some_and(|s| Arc::ptr_eq(&s, &q)), "q's stays shared");
        assert_eq!(nodes(&t.snapshot_or_make("p")), [("a", 20), ("b", 10)]);
        assert_eq!(
            nodes(&p),
            [("a", 10), ("b", 10)],
            "a reconcile's snapshot does not change under it"
        );
    }

    #[test]
    fn a_relist_drops_leases_deleted_while_the_watch_was_down() {
        let mut t = Heartbeats::default();
        t.apply(Event::Apply(parsed("p", "a", 10)));
        t.apply(Event::Apply(parsed("p", "b", 10)));
        t.apply(Event::Delete(parsed("p", "b", 10)));
        assert_eq!(nodes(&t.snapshot_or_make("p")), [("a", 10)]);
        t.apply(Event::Init);
        t.apply(Event::InitApply(parsed("p", "c", 30)));
        assert_eq!(
            nodes(&t.snapshot_or_make("p")),
            [("a", 10)],
            "the old table serves until InitDone"
        );
        t.apply(Event::InitDone);
        assert_eq!(nodes(&t.snapshot_or_make("p")), [("c", 30)]);
    }
}

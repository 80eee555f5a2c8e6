//! The builders' heartbeats as the build controller's reconciles read them: each Lease parsed
//! once, when its watch event arrives, and each pool's heartbeats shared as one snapshot.
//!
//! Reconciles used to parse every heartbeat Lease of the cache into a fresh `Vec` each. In the
//! scale run (500 builders, thousands of builds reconciling at once) that was most of the
//! controller's allocations, and, since every reconcile held its copy across its API calls, most
//! of its peak memory. A snapshot is an `Arc`: a reconcile holds a pointer. Pure: fed watcher
//! events, following a relist the way kube's store does (a fresh table from `Init` to
//! `InitDone`, so Leases deleted while the watch was down disappear).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use crate::api::heartbeat::Heartbeat;

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
    /// Follows one event of the heartbeat Lease watch.
    pub fn apply(&mut self, event: &Event<Lease>) {
        match event {
            Event::Apply(lease) => {
                let name = lease.name_any();
                let old = self.by_lease.remove(&name);
                self.forget_pool(old.as_ref());
                if let Some(beat) = Heartbeat::from_lease(lease) {
                    self.forget_pool(Some(&beat));
                    self.by_lease.insert(name, beat);
                }
            }
            Event::Delete(lease) => {
                let old = self.by_lease.remove(&lease.name_any());
                self.forget_pool(old.as_ref());
            }
            Event::Init => self.relisting = Some(HashMap::new()),
            Event::InitApply(lease) => {
                if let (Some(table), Some(beat)) = (self.relisting.as_mut(), Heartbeat::from_lease(lease)) {
                    table.insert(lease.name_any(), beat);
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
/// lock only to make one. A poisoned lock reads as no heartbeats (nothing is dispatched; the
/// build is reconciled again).
pub fn of_pool(table: &std::sync::RwLock<Heartbeats>, pool: &str) -> Arc<[Heartbeat]> {
    if let Some(s) = table.read().ok().and_then(|t| t.snapshot(pool)) {
        return s;
    }
    table
        .write()
        .map(|mut t| t.snapshot_or_make(pool))
        .unwrap_or_else(|_| Arc::from(Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::heartbeat::{NODE_LABEL, POOL_LABEL, lease_name};
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use k8s_openapi::jiff::Timestamp;

    fn lease(pool: &str, node: &str, renewed: i64) -> Lease {
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

    fn nodes(s: &[Heartbeat]) -> Vec<(&str, i64)> {
        s.iter().map(|b| (b.node.as_str(), b.renewed.as_second())).collect()
    }

    #[test]
    fn a_renewal_replaces_the_snapshot_of_its_pool_only() {
        let mut t = Heartbeats::default();
        t.apply(&Event::Apply(lease("p", "b", 10)));
        t.apply(&Event::Apply(lease("p", "a", 10)));
        t.apply(&Event::Apply(lease("q", "c", 10)));
        let p = t.snapshot_or_make("p");
        let q = t.snapshot_or_make("q");
        assert_eq!(nodes(&p), [("a", 10), ("b", 10)], "sorted by node, this pool's only");
        t.apply(&Event::Apply(lease("p", "a", 20)));
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
        t.apply(&Event::Apply(lease("p", "a", 10)));
        t.apply(&Event::Apply(lease("p", "b", 10)));
        t.apply(&Event::Delete(lease("p", "b", 10)));
        assert_eq!(nodes(&t.snapshot_or_make("p")), [("a", 10)]);
        t.apply(&Event::Init);
        t.apply(&Event::InitApply(lease("p", "c", 30)));
        assert_eq!(
            nodes(&t.snapshot_or_make("p")),
            [("a", 10)],
            "the old table serves until InitDone"
        );
        t.apply(&Event::InitDone);
        assert_eq!(nodes(&t.snapshot_or_make("p")), [("c", 30)]);
    }
}

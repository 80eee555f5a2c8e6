//! Choosing node(s) for an attempt among the pool's ready builders. Pure.
//!
//! Filters, in order: fresh heartbeat, `placement.nodeName`, `placement.nodeSelector` (node
//! labels), platforms (the builder must list every requested platform), nodes to avoid (where
//! the previous attempt was lost), and for a single target the pool's queue limit
//! (`maxQueuedBuilds`). Then, for a single target, free capacity first, then cache affinity
//! (the node that last built the same source and Dockerfile), then the least busy, then the
//! name (so the choice is deterministic).

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use crate::api::heartbeat::Heartbeat;
use crate::api::image_build::Placement;

/// A builder as the scheduler sees it.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    /// Its heartbeat.
    pub heartbeat: &'a Heartbeat,
    /// The node's labels.
    pub labels: Option<&'a BTreeMap<String, String>>,
    /// Unfinished attempts the controller itself has on the node. A heartbeat's counts are
    /// seconds old; these are not, so a burst of builds spreads instead of piling onto the node
    /// whose last heartbeat looked idlest.
    pub assigned: i32,
    /// The pool's `maxQueuedBuilds`: how many attempts may wait on the node beyond its slots.
    pub max_queued: Option<i32>,
}

impl Candidate<'_> {
    /// Builds on the node now, as far as the controller can tell.
    fn load(&self) -> i32 {
        let cap = &self.heartbeat.capacity;
        (cap.running + cap.queued).max(self.assigned)
    }

    fn full(&self) -> bool {
        self.load() >= self.heartbeat.capacity.max_concurrent_builds
    }

    /// Whether the node's queue takes one more attempt. Counted from the controller's own
    /// NodeBuilds (`assigned`), which are exact and current, not from the heartbeat, which is
    /// seconds old and would hold builds back after a slot freed.
    fn has_room(&self) -> bool {
        self.max_queued
            .is_none_or(|q| self.assigned < self.heartbeat.capacity.max_concurrent_builds.saturating_add(q))
    }
}

/// Status reason of a build that waits because no builder has room, or none is ready.
pub const UNSCHEDULABLE: &str = "Unschedulable";
/// Status reason of a build held by the controller because every matching node's queue is at
/// the pool's `maxQueuedBuilds`.
pub const QUEUE_FULL: &str = "QueueFull";

/// Why nothing could be scheduled, phrased for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unschedulable {
    /// [`UNSCHEDULABLE`] or [`QUEUE_FULL`].
    pub reason: &'static str,
    /// What is missing, and what happens next.
    pub message: String,
}

impl Unschedulable {
    /// No builder can take the build.
    pub fn no_builder(message: String) -> Self {
        Self {
            reason: UNSCHEDULABLE,
            message,
        }
    }
}

/// Picks the target nodes: all matching ready builders for `allNodes`, otherwise one.
pub fn choose(
    placement: Option<&Placement>,
    platforms: &[String],
    candidates: &[Candidate<'_>],
    avoid: &[String],
    affinity: Option<&str>,
    pool: &str,
    now: Timestamp,
) -> Result<Vec<String>, Unschedulable> {
    let default = Placement::default();
    let placement = placement.unwrap_or(&default);
    let matching = matching(placement, platforms, candidates, pool, now)?;
    if placement.all_nodes {
        let mut nodes: Vec<String> = matching.iter().map(|c| c.heartbeat.node.clone()).collect();
        nodes.sort();
        return Ok(nodes);
    }
    one(matching, placement, avoid, affinity, pool)
}

/// The builders with a fresh heartbeat that fit the placement (`nodeName`, `nodeSelector`) and
/// build every platform, or what is missing.
fn matching<'c, 'a>(
    placement: &Placement,
    platforms: &[String],
    candidates: &'c [Candidate<'a>],
    pool: &str,
    now: Timestamp,
) -> Result<Vec<&'c Candidate<'a>>, Unschedulable> {
    if candidates.is_empty() {
        return Err(Unschedulable::no_builder(format!(
            "pool {pool:?} has no builders: check that the BuilderPool exists and its agents run"
        )));
    }
    let mut matching: Vec<&Candidate<'_>> = candidates.iter().filter(|c| c.heartbeat.is_fresh(now)).collect();
    if matching.is_empty() {
        return Err(Unschedulable::no_builder(format!(
            "no builder of pool {pool:?} is ready (no fresh heartbeat)"
        )));
    }
    if let Some(node) = &placement.node_name {
        matching.retain(|c| &c.heartbeat.node == node);
        if matching.is_empty() {
            return Err(Unschedulable::no_builder(format!(
                "node {node:?} has no ready builder in pool {pool:?}"
            )));
        }
    }
    if !placement.node_selector.is_empty() {
        matching.retain(|c| {
            c.labels
                .is_some_and(|l| placement.node_selector.iter().all(|(k, v)| l.get(k) == Some(v)))
        });
        if matching.is_empty() {
            let sel: Vec<String> = placement
                .node_selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            return Err(Unschedulable::no_builder(format!(
                "no ready builder's node matches nodeSelector {}",
                sel.join(",")
            )));
        }
    }
    if !platforms.is_empty() {
        matching.retain(|c| platforms.iter().all(|p| c.heartbeat.capacity.platforms.contains(p)));
        if matching.is_empty() {
            return Err(Unschedulable::no_builder(format!(
                "no ready builder supports platform(s) {}",
                platforms.join(", ")
            )));
        }
    }
    Ok(matching)
}

/// The one node for a single-node build among `matching`: not one an earlier attempt lost
/// (unless the build names its node, or there is no other), with room in its queue; of those,
/// one not yet full, then the cache's node (`affinity`), then the least loaded, then by name.
fn one(
    mut matching: Vec<&Candidate<'_>>,
    placement: &Placement,
    avoid: &[String],
    affinity: Option<&str>,
    pool: &str,
) -> Result<Vec<String>, Unschedulable> {
    if placement.node_name.is_none() && matching.len() > 1 {
        matching.retain(|c| !avoid.contains(&c.heartbeat.node));
        if matching.is_empty() {
            return Err(Unschedulable::no_builder(
                "every matching builder was lost during an earlier attempt".into(),
            ));
        }
    }
    if !matching.iter().any(|c| c.has_room()) {
        return Err(queue_full(&matching, pool));
    }
    matching.retain(|c| c.has_room());
    matching.sort_by(|a, b| {
        let key = |c: &Candidate<'_>| (c.full(), affinity != Some(c.heartbeat.node.as_str()));
        key(a)
            .cmp(&key(b))
            .then(a.load().cmp(&b.load()))
            .then(a.heartbeat.node.cmp(&b.heartbeat.node))
    });
    Ok(matching
        .first()
        .map(|c| vec![c.heartbeat.node.clone()])
        .unwrap_or_default())
}

/// Every matching builder's queue is at the pool's limit: the build waits in the controller.
fn queue_full(matching: &[&Candidate<'_>], pool: &str) -> Unschedulable {
    let limit = matching.iter().find_map(|c| c.max_queued).unwrap_or_default();
    let nodes: Vec<String> = matching
        .iter()
        .map(|c| format!("{} ({})", c.heartbeat.node, c.assigned))
        .collect();
    Unschedulable {
        reason: QUEUE_FULL,
        message: format!(
            "every matching builder's queue is full: attempts on each node {}, each takes maxConcurrentBuilds plus {limit} queued (BuilderPool {pool:?} spec.maxQueuedBuilds); the build waits here and goes to the first node with room, oldest first",
            nodes.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::heartbeat::test_beat;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    fn hb(node: &str, renewed: i64, running: i32, platforms: &[&str]) -> Heartbeat {
        test_beat(node, ts(renewed), running, platforms)
    }

    fn pick(
        placement: Option<&Placement>,
        beats: &[Heartbeat],
        labels: &BTreeMap<String, BTreeMap<String, String>>,
        affinity: Option<&str>,
    ) -> Result<Vec<String>, Unschedulable> {
        let candidates: Vec<Candidate<'_>> = beats
            .iter()
            .map(|h| Candidate {
                heartbeat: h,
                labels: labels.get(&h.node),
                assigned: 0,
                max_queued: None,
            })
            .collect();
        choose(placement, &[], &candidates, &[], affinity, "default", ts(100))
    }

    #[test]
    fn prefers_free_capacity_then_cache_affinity_then_least_busy() {
        let none = BTreeMap::new();
        let beats = [hb("a", 95, 1, &[]), hb("b", 95, 0, &[]), hb("c", 95, 2, &[])];
        assert_eq!(pick(None, &beats, &none, None), Ok(vec!["b".into()]));
        assert_eq!(
            pick(None, &beats, &none, Some("a")),
            Ok(vec!["a".into()]),
            "affinity beats load while there is room"
        );
        assert_eq!(
            pick(None, &beats, &none, Some("c")),
            Ok(vec!["b".into()]),
            "a full node loses its affinity"
        );
    }

    #[test]
    fn the_controllers_own_recent_attempts_count_as_load_before_a_heartbeat_shows_them() {
        // Every heartbeat says idle (they are seconds old); the controller just sent two
        // builds to "a", which is full with two slots, and one to "b".
        let beats = [hb("a", 95, 0, &[]), hb("b", 95, 0, &[]), hb("c", 95, 0, &[])];
        let assigned = BTreeMap::from([("a", 2), ("b", 1)]);
        let candidates: Vec<Candidate<'_>> = beats
            .iter()
            .map(|h| Candidate {
                heartbeat: h,
                labels: None,
                assigned: assigned.get(h.node.as_str()).copied().unwrap_or(0),
                max_queued: None,
            })
            .collect();
        let choice = choose(None, &[], &candidates, &[], Some("a"), "default", ts(100));
        assert_eq!(
            choice,
            Ok(vec!["c".into()]),
            "a full node loses its affinity, the idlest wins"
        );
    }

    #[test]
    fn stale_heartbeats_do_not_count() {
        let err = pick(None, &[hb("a", 50, 0, &[])], &BTreeMap::new(), None).expect_err("stale");
        assert!(
            err.message.contains("no builder of pool \"default\" is ready"),
            "{err:?}"
        );
        let err = pick(None, &[], &BTreeMap::new(), None).expect_err("none");
        assert!(err.message.contains("has no builders"), "{err:?}");
    }

    #[test]
    fn node_name_and_selector_and_platforms_filter() {
        let labels = BTreeMap::from([("a".to_owned(), BTreeMap::from([("gpu".to_owned(), "yes".to_owned())]))]);
        let beats = [
            hb("a", 95, 0, &["linux/amd64"]),
            hb("b", 95, 0, &["linux/amd64", "linux/arm64"]),
        ];
        let pinned = Placement {
            node_name: Some("zz".into()),
            ..Default::default()
        };
        assert!(
            pick(Some(&pinned), &beats, &labels, None)
                .expect_err("absent")
                .message
                .contains("\"zz\"")
        );
        let gpu = Placement {
            node_selector: BTreeMap::from([("gpu".into(), "yes".into())]),
            ..Default::default()
        };
        assert_eq!(pick(Some(&gpu), &beats, &labels, None), Ok(vec!["a".into()]));
        let candidates: Vec<Candidate<'_>> = beats
            .iter()
            .map(|h| Candidate {
                heartbeat: h,
                labels: None,
                assigned: 0,
                max_queued: None,
            })
            .collect();
        let arm = choose(
            None,
            &["linux/arm64".into()],
            &candidates,
            &[],
            None,
            "default",
            ts(100),
        );
        assert_eq!(arm, Ok(vec!["b".into()]));
        let riscv = choose(
            None,
            &["linux/riscv64".into()],
            &candidates,
            &[],
            None,
            "default",
            ts(100),
        );
        assert!(riscv.expect_err("none").message.contains("linux/riscv64"));
    }

    #[test]
    fn all_nodes_takes_every_ready_match_and_lost_nodes_are_avoided() {
        let beats = [hb("b", 95, 0, &[]), hb("a", 95, 2, &[]), hb("c", 10, 0, &[])];
        let all = Placement {
            all_nodes: true,
            ..Default::default()
        };
        assert_eq!(
            pick(Some(&all), &beats, &BTreeMap::new(), None),
            Ok(vec!["a".into(), "b".into()])
        );
        let candidates: Vec<Candidate<'_>> = beats
            .iter()
            .map(|h| Candidate {
                heartbeat: h,
                labels: None,
                assigned: 0,
                max_queued: None,
            })
            .collect();
        let elsewhere = choose(None, &[], &candidates, &["b".into()], None, "default", ts(100));
        assert_eq!(
            elsewhere,
            Ok(vec!["a".into()]),
            "a full node beats one that was just lost"
        );
    }

    #[test]
    fn a_full_queue_holds_single_builds_but_not_all_nodes_builds() {
        // Two nodes with two slots each and no queue allowed (maxQueuedBuilds 0). The
        // heartbeats say idle (they are seconds old); the controller's own count decides.
        let beats = [hb("a", 95, 0, &[]), hb("b", 95, 0, &[])];
        let with = |a: i32, b: i32| -> Vec<Candidate<'_>> {
            beats
                .iter()
                .map(|h| Candidate {
                    heartbeat: h,
                    labels: None,
                    assigned: if h.node == "a" { a } else { b },
                    max_queued: Some(0),
                })
                .collect()
        };
        let candidates = with(2, 1);
        let pick = |c: &[Candidate<'_>], p: Option<&Placement>| choose(p, &[], c, &[], Some("a"), "default", ts(100));
        assert_eq!(
            pick(&candidates, None),
            Ok(vec!["b".into()]),
            "a full queue loses its affinity"
        );
        let candidates = with(2, 2);
        let held = pick(&candidates, None).expect_err("both full");
        assert_eq!(held.reason, QUEUE_FULL);
        assert!(
            held.message.contains("a (2), b (2)") && held.message.contains("spec.maxQueuedBuilds"),
            "{held:?}"
        );
        let pinned = Placement {
            node_name: Some("a".into()),
            ..Default::default()
        };
        assert_eq!(pick(&with(2, 0), Some(&pinned)).map_err(|e| e.reason), Err(QUEUE_FULL));
        let all = Placement {
            all_nodes: true,
            ..Default::default()
        };
        assert_eq!(pick(&candidates, Some(&all)), Ok(vec!["a".into(), "b".into()]));
        let unlimited: Vec<Candidate<'_>> = with(50, 50)
            .into_iter()
            .map(|c| Candidate { max_queued: None, ..c })
            .collect();
        assert!(
            pick(&unlimited, None).is_ok(),
            "no limit set: builds go to a node and queue there"
        );
    }
}

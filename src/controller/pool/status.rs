//! Derives a BuilderPool's status from its nodes and their heartbeats.
//!
//! Pure, so the rules that keep status quiet are unit-tested: a heartbeat renewal alone does not
//! change status (`lastHeartbeat`, and the `running` count recorded with it, move only when
//! readiness flips, or for every node at once when one node's record is a minute old: one write
//! per pool per minute, not one per node), so a reconcile with nothing new computes an identical
//! status and writes nothing.
//!
//! Why `running` waits for the record: a pool's status lists every node, so it grows with the
//! pool (88 KB at 500 nodes), and every agent watches its pool. When `running` followed each
//! renewal, a busy pool's status was rewritten about once a second, and each write was sent to
//! every agent: in the scale run, 13 GB of watch events, 98 % of all the apiserver sent, and the
//! largest share of its CPU. The live count is in each node's heartbeat Lease.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::runtime::Unsupported;
use crate::api::builder_pool::{BuilderNode, BuilderPoolStatus, RuntimeKind};
use crate::api::conditions::{self, Desired, READY, RECONCILING, Status};
use crate::api::heartbeat::Heartbeat;

/// How stale a recorded `lastHeartbeat` may get before status is rewritten (for every node).
pub const HEARTBEAT_RECORD_INTERVAL: SignedDuration = SignedDuration::from_secs(60);

/// A node the pool selects, with its runtime.
#[derive(Clone, Debug)]
pub struct SelectedNode {
    /// Node name.
    pub name: String,
    /// Its flavour, or why kiln cannot build there.
    pub runtime: Result<RuntimeKind, Unsupported>,
    /// What keeps its builder pod from running, as the kubelet reports it (see `pods`).
    pub pod_problem: Option<String>,
}

/// Computes the pool status.
pub fn derive(
    generation: Option<i64>,
    nodes: &[SelectedNode],
    heartbeats: &[Heartbeat],
    previous: Option<&BuilderPoolStatus>,
    now: Timestamp,
) -> BuilderPoolStatus {
    let refresh = record_due(nodes, heartbeats, previous, now);
    let mut out: Vec<BuilderNode> = nodes
        .iter()
        .map(|node| {
            let prev = previous.and_then(|p| p.nodes.iter().find(|n| n.name == node.name));
            let beat = heartbeats.iter().find(|h| h.node == node.name);
            node_entry(node, beat, prev, now, refresh)
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    let unsupported: Vec<&str> = nodes
        .iter()
        .filter(|n| n.runtime.is_err())
        .map(|n| n.name.as_str())
        .collect();
    let desired = i32::try_from(nodes.len() - unsupported.len()).unwrap_or(i32::MAX);
    let ready = i32::try_from(out.iter().filter(|n| n.ready).count()).unwrap_or(i32::MAX);
    let wanted = desired_conditions(nodes, &out, &unsupported, desired, ready);
    let existing = previous.map(|p| p.conditions.as_slice()).unwrap_or_default();
    BuilderPoolStatus {
        observed_generation: generation,
        desired_nodes: desired,
        ready_nodes: ready,
        nodes: out,
        conditions: conditions::merge(existing, &wanted, generation, &Time(now)),
    }
}

/// One node's entry: why kiln cannot build there, or its builder's state from its heartbeat,
/// with what keeps its builder pod from running when it is not ready.
fn node_entry(
    node: &SelectedNode,
    beat: Option<&Heartbeat>,
    prev: Option<&BuilderNode>,
    now: Timestamp,
    refresh: bool,
) -> BuilderNode {
    match &node.runtime {
        Err(u) => {
            let version = if u.runtime_version.is_empty() {
                "unknown"
            } else {
                &u.runtime_version
            };
            BuilderNode {
                name: node.name.clone(),
                ready: false,
                message: Some(format!("{} ({version})", u.reason)),
                ..Default::default()
            }
        }
        Ok(kind) => {
            let mut entry = builder_node(&node.name, *kind, beat, prev, now, refresh);
            if let (false, Some(problem)) = (entry.ready, &node.pod_problem) {
                entry.message = Some(problem.clone());
            }
            entry
        }
    }
}

/// The pool's kstatus conditions: `Ready` when every node that can run a builder has a ready
/// one; otherwise which builders it waits for and, from the kubelet, why the first of them
/// waits (`Reconciling`); `NoNodes` when no node can run one.
fn desired_conditions(
    nodes: &[SelectedNode],
    out: &[BuilderNode],
    unsupported: &[&str],
    desired: i32,
    ready: i32,
) -> Vec<Desired> {
    let unsupported_note = if unsupported.is_empty() {
        String::new()
    } else {
        format!("; unsupported runtime on {}", unsupported.join(", "))
    };
    if desired == 0 {
        let message = if nodes.is_empty() {
            "no node matches the pool's nodeSelector".to_owned()
        } else {
            format!("no node can run a builder{unsupported_note}")
        };
        return vec![Desired::new(READY, Status::False, "NoNodes", message)];
    }
    if ready == desired {
        let message = format!("{ready}/{desired} builders ready{unsupported_note}");
        return vec![Desired::new(READY, Status::True, "BuildersReady", message)];
    }
    let waiting: Vec<&str> = out
        .iter()
        .filter(|n| !n.ready && n.runtime.is_some())
        .map(|n| n.name.as_str())
        .collect();
    // The first builder the kubelet has something to say about explains the wait.
    let cause = nodes
        .iter()
        .filter(|n| waiting.contains(&n.name.as_str()))
        .find_map(|n| n.pod_problem.as_ref().map(|p| format!(" ({}: {p})", n.name)))
        .unwrap_or_default();
    let message = format!(
        "{ready}/{desired} builders ready; waiting for {}{cause}{unsupported_note}",
        waiting.join(", ")
    );
    vec![
        Desired::new(READY, Status::False, "BuildersNotReady", message.clone()),
        Desired::new(RECONCILING, Status::True, "BuildersNotReady", message),
    ]
}

/// Whether some ready node's recorded `lastHeartbeat` is [`HEARTBEAT_RECORD_INTERVAL`] old: then
/// every node's record moves at once, so a pool of N nodes is rewritten once a minute, not N times.
fn record_due(
    nodes: &[SelectedNode],
    heartbeats: &[Heartbeat],
    previous: Option<&BuilderPoolStatus>,
    now: Timestamp,
) -> bool {
    let Some(previous) = previous else { return false };
    nodes.iter().any(|node| {
        let Some(beat) = heartbeats.iter().find(|h| h.node == node.name) else {
            return false;
        };
        let recorded = previous
            .nodes
            .iter()
            .find(|n| n.name == node.name)
            .and_then(|n| n.last_heartbeat.as_ref());
        beat.is_fresh(now) && recorded.is_some_and(|r| beat.renewed.duration_since(r.0) >= HEARTBEAT_RECORD_INTERVAL)
    })
}

fn builder_node(
    name: &str,
    kind: RuntimeKind,
    beat: Option<&Heartbeat>,
    prev: Option<&BuilderNode>,
    now: Timestamp,
    refresh: bool,
) -> BuilderNode {
    let Some(beat) = beat else {
        return BuilderNode {
            name: name.to_owned(),
            runtime: Some(kind),
            ready: false,
            last_heartbeat: prev.and_then(|p| p.last_heartbeat.clone()),
            message: Some("no heartbeat from the node's agent yet".to_owned()),
            ..Default::default()
        };
    };
    let ready = beat.is_fresh(now);
    let recorded = prev.and_then(|p| p.last_heartbeat.as_ref()).map(|t| t.0);
    let keep_recorded = !refresh && prev.is_some_and(|p| p.ready == ready) && recorded.is_some();
    let (last_heartbeat, running) = match prev {
        Some(p) if keep_recorded => (recorded, p.running),
        _ => (Some(beat.renewed), beat.capacity.running),
    };
    BuilderNode {
        name: name.to_owned(),
        runtime: Some(kind),
        ready,
        platforms: beat.capacity.platforms.clone(),
        running,
        capacity: Some(beat.capacity.max_concurrent_builds),
        buildkit_version: beat.capacity.buildkit_version.clone(),
        last_heartbeat: last_heartbeat.map(Time),
        message: (!ready).then(|| format!("heartbeat expired at {}: BuildKit or the agent is down", beat.expires())),
    }
}

/// When the status would next change by itself: the earliest expiry of a fresh heartbeat.
pub fn next_expiry(heartbeats: &[Heartbeat], now: Timestamp) -> Option<Timestamp> {
    heartbeats
        .iter()
        .filter(|h| h.is_fresh(now))
        .map(Heartbeat::expires)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::heartbeat::test_beat;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("ts")
    }

    fn beat(node: &str, renewed: i64, running: i32) -> Heartbeat {
        test_beat(node, ts(renewed), running, &["linux/amd64"])
    }

    fn nodes() -> Vec<SelectedNode> {
        vec![
            SelectedNode {
                name: "a".into(),
                runtime: Ok(RuntimeKind::Containerd),
                pod_problem: None,
            },
            SelectedNode {
                name: "b".into(),
                runtime: Ok(RuntimeKind::Docker),
                pod_problem: None,
            },
            SelectedNode {
                name: "c".into(),
                runtime: Err(Unsupported {
                    runtime_version: "cri-o://1.28".into(),
                    reason: "CRI-O is not supported".into(),
                }),
                pod_problem: None,
            },
        ]
    }

    #[test]
    fn counts_ready_builders_and_names_the_missing_and_unsupported() {
        let s = derive(Some(3), &nodes(), &[beat("a", 100, 1)], None, ts(105));
        assert_eq!((s.desired_nodes, s.ready_nodes), (2, 1));
        assert!(s.nodes[0].ready && !s.nodes[1].ready && !s.nodes[2].ready);
        assert_eq!(s.nodes[0].running, 1);
        assert!(
            s.nodes[2]
                .message
                .as_deref()
                .is_some_and(|m| m.contains("cri-o://1.28"))
        );
        let ready = conditions::find(&s.conditions, READY).expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "BuildersNotReady")
        );
        assert!(
            ready.message.contains("waiting for b") && ready.message.contains("unsupported runtime on c"),
            "{}",
            ready.message
        );
        assert!(conditions::is_true(&s.conditions, RECONCILING));
        assert_eq!(s.observed_generation, Some(3));
    }

    #[test]
    fn a_builder_pod_problem_explains_the_missing_builder() {
        let mut with_problem = nodes();
        let problem = "pod kiln-builder-x: container buildkitd is waiting: ImagePullBackOff";
        with_problem[1].pod_problem = Some(problem.into());
        with_problem[0].pod_problem = Some("stale: the builder is ready anyway".into());
        let s = derive(Some(1), &with_problem, &[beat("a", 100, 0)], None, ts(105));
        assert_eq!(s.nodes[1].message.as_deref(), Some(problem));
        assert_eq!(s.nodes[0].message, None, "a ready builder has nothing to explain");
        let ready = conditions::find(&s.conditions, READY).expect("Ready");
        assert!(
            ready.message.contains(&format!("waiting for b (b: {problem})")),
            "{}",
            ready.message
        );
    }

    #[test]
    fn all_ready_is_ready_and_expiry_makes_it_not_ready() {
        let beats = [beat("a", 100, 0), beat("b", 101, 0)];
        let s = derive(Some(1), &nodes(), &beats, None, ts(105));
        assert!(conditions::is_true(&s.conditions, READY));
        assert!(!conditions::is_true(&s.conditions, RECONCILING));
        assert_eq!(next_expiry(&beats, ts(105)), Some(ts(115)));
        let later = derive(Some(1), &nodes(), &beats, Some(&s), ts(116));
        assert_eq!(later.ready_nodes, 0);
        assert!(later.nodes[0].message.as_deref().is_some_and(|m| m.contains("expired")));
    }

    #[test]
    fn renewals_alone_do_not_change_status() {
        let first = derive(
            Some(1),
            &nodes(),
            &[beat("a", 100, 0), beat("b", 100, 0)],
            None,
            ts(101),
        );
        let renewed = derive(
            Some(1),
            &nodes(),
            &[beat("a", 105, 0), beat("b", 106, 0)],
            Some(&first),
            ts(107),
        );
        assert_eq!(first, renewed, "a renewal is not news");
        let busier = derive(
            Some(1),
            &nodes(),
            &[beat("a", 110, 2), beat("b", 111, 1)],
            Some(&renewed),
            ts(112),
        );
        assert_eq!(
            first, busier,
            "nor is a count of running builds, until the record is due"
        );
        let minute_later = derive(
            Some(1),
            &nodes(),
            &[beat("a", 161, 0), beat("b", 162, 0)],
            Some(&renewed),
            ts(163),
        );
        assert_eq!(
            minute_later.nodes[0].last_heartbeat,
            Some(Time(ts(161))),
            "recorded again after a minute"
        );
        let busy_minute_later = derive(
            Some(1),
            &nodes(),
            &[beat("a", 161, 2), beat("b", 162, 1)],
            Some(&renewed),
            ts(163),
        );
        assert_eq!(
            (busy_minute_later.nodes[0].running, busy_minute_later.nodes[1].running),
            (2, 1),
            "the running counts are recorded with the heartbeats"
        );
        let staggered = derive(
            Some(1),
            &nodes(),
            &[beat("a", 161, 0), beat("b", 150, 0)],
            Some(&renewed),
            ts(162),
        );
        assert_eq!(
            staggered.nodes[1].last_heartbeat,
            Some(Time(ts(150))),
            "every node's record moves with the first that is due: one write, not one per node"
        );
        let before_due = derive(
            Some(1),
            &nodes(),
            &[beat("a", 159, 0), beat("b", 150, 0)],
            Some(&renewed),
            ts(160),
        );
        assert_eq!(before_due, renewed, "nothing is due before a minute");
    }

    #[test]
    fn no_nodes_is_not_ready_with_a_reason() {
        let s = derive(Some(1), &[], &[], None, ts(1));
        let ready = conditions::find(&s.conditions, READY).expect("Ready");
        assert_eq!(ready.reason, "NoNodes");
        assert!(ready.message.contains("nodeSelector"));
    }
}

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher::Event;

use super::*;
use crate::api::node_build::{NodeBuildPhase, NodeBuildSpec, NodeBuildStatus};

fn nb(ns: &str, name: &str, build: &str, node: &str, phase: Option<NodeBuildPhase>, done: Option<i64>) -> NodeBuild {
    let mut nb = NodeBuild::new(
        name,
        NodeBuildSpec {
            node_name: node.into(),
            image_build: build.into(),
            ..Default::default()
        },
    );
    nb.metadata.namespace = Some(ns.into());
    nb.metadata.labels = Some(BTreeMap::from([
        (IMAGE_BUILD_LABEL.to_owned(), build.to_owned()),
        (CACHE_KEY_LABEL.to_owned(), format!("key-{build}")),
    ]));
    nb.status = phase.map(|p| NodeBuildStatus {
        phase: Some(p),
        completion_time: done.map(|s| Time(Timestamp::from_second(s).expect("ts"))),
        ..Default::default()
    });
    nb
}

fn index(events: &[Event<NodeBuild>]) -> Index {
    let mut index = Index::default();
    for e in events {
        index.apply(e);
    }
    index
}

#[test]
fn finds_a_builds_attempts_and_whether_one_is_under_way() {
    let running = nb("a", "web-1", "web", "n1", Some(NodeBuildPhase::Running), None);
    let failed = nb("a", "web-0", "web", "n2", Some(NodeBuildPhase::Failed), Some(10));
    let other_ns = nb("b", "web-9", "web", "n1", None, None);
    let i = index(&[
        Event::Apply(failed.clone()),
        Event::Apply(running.clone()),
        Event::Apply(other_ns),
    ]);
    assert_eq!(i.attempts_of("a", "web"), ["web-0", "web-1"]);
    assert_eq!(i.attempts_of("b", "web"), ["web-9"], "namespaces are apart");
    assert!(i.under_way("a", "web"));
    let mut done = running;
    done.status = Some(NodeBuildStatus {
        phase: Some(NodeBuildPhase::Succeeded),
        ..Default::default()
    });
    let i = index(&[Event::Apply(failed), Event::Apply(done)]);
    assert!(!i.under_way("a", "web"), "every attempt finished");
    assert!(i.attempts_of("a", "api").is_empty());
}

#[test]
fn counts_unfinished_attempts_per_node_through_their_lives() {
    let queued = nb("a", "x-1", "x", "n1", None, None);
    let mut i = index(&[
        Event::Apply(queued.clone()),
        Event::Apply(nb("a", "y-1", "y", "n1", None, None)),
    ]);
    assert_eq!(i.load().get("n1"), Some(&2));
    // The same attempt seen again (a status write) counts once.
    i.apply(&Event::Apply(nb(
        "a",
        "x-1",
        "x",
        "n1",
        Some(NodeBuildPhase::Running),
        None,
    )));
    assert_eq!(i.load().get("n1"), Some(&2));
    i.apply(&Event::Apply(nb(
        "a",
        "x-1",
        "x",
        "n1",
        Some(NodeBuildPhase::Succeeded),
        Some(5),
    )));
    assert_eq!(i.load().get("n1"), Some(&1));
    i.apply(&Event::Delete(nb("a", "y-1", "y", "n1", None, None)));
    assert_eq!(i.load().get("n1"), None, "nothing left on n1");
    assert!(i.contains("a", "x-1") && !i.contains("a", "y-1"));
}

#[test]
fn the_last_success_of_a_cache_key_wins_and_failures_do_not_count() {
    let i = index(&[
        Event::Apply(nb("a", "x-1", "x", "n1", Some(NodeBuildPhase::Succeeded), Some(100))),
        Event::Apply(nb("a", "x-2", "x", "n2", Some(NodeBuildPhase::Succeeded), Some(200))),
        Event::Apply(nb("a", "x-3", "x", "n3", Some(NodeBuildPhase::Failed), Some(300))),
    ]);
    assert_eq!(i.last_success("key-x").as_deref(), Some("n2"));
    assert_eq!(i.last_success("key-y"), None);
    let mut i = i;
    i.apply(&Event::Delete(nb("a", "x-2", "x", "n2", None, None)));
    assert_eq!(
        i.last_success("key-x").as_deref(),
        Some("n1"),
        "a deleted attempt is forgotten"
    );
}

#[test]
fn a_relist_forgets_what_was_deleted_while_the_watch_was_down() {
    let kept = nb("a", "x-1", "x", "n1", None, None);
    let gone = nb("a", "y-1", "y", "n2", None, None);
    let mut i = index(&[Event::Apply(kept.clone()), Event::Apply(gone)]);
    i.apply(&Event::Init);
    i.apply(&Event::InitApply(kept));
    assert!(i.contains("a", "y-1"), "the old table serves until the relist is done");
    i.apply(&Event::InitDone);
    assert!(!i.contains("a", "y-1"));
    assert!(i.attempts_of("a", "y").is_empty());
    assert_eq!(i.load().get("n2"), None);
    assert_eq!(i.load().get("n1"), Some(&1));
}

#[test]
fn an_attempt_that_ends_frees_a_slot_of_its_pool_once() {
    let mut queued = nb("ns", "b-1", "b", "n1", Some(NodeBuildPhase::Queued), None);
    queued.spec.pool = "fast".into();
    let mut done = queued.clone();
    done.status = Some(NodeBuildStatus {
        phase: Some(NodeBuildPhase::Succeeded),
        ..Default::default()
    });
    let mut idx = Index::default();
    assert_eq!(
        idx.freed_by(&Event::Apply(queued.clone())),
        None,
        "a new attempt frees nothing"
    );
    idx.apply(&Event::Apply(queued.clone()));
    assert_eq!(idx.freed_by(&Event::Apply(queued.clone())), None, "still queued");
    assert_eq!(idx.freed_by(&Event::Apply(done.clone())), Some("fast".into()));
    idx.apply(&Event::Apply(done.clone()));
    assert_eq!(idx.freed_by(&Event::Apply(done.clone())), None, "it ended once");
    assert_eq!(
        idx.freed_by(&Event::Delete(done)),
        None,
        "deleting a finished attempt frees nothing"
    );
    assert_eq!(
        idx.freed_by(&Event::Delete(queued.clone())),
        None,
        "an attempt that had finished frees nothing"
    );
    let mut other = queued;
    other.metadata.name = Some("b-2".into());
    idx.apply(&Event::Apply(other.clone()));
    assert_eq!(
        idx.freed_by(&Event::Delete(other)),
        Some("fast".into()),
        "deleted while queued"
    );
}

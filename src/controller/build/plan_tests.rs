//! Unit tests of the ImageBuild decide step.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;

use super::plan::{Observed, decide};
use super::schedule::Candidate;
use crate::api::conditions::{self, READY, RECONCILING, STALLED};
use crate::api::heartbeat::{Heartbeat, test_beat};
use crate::api::image_build::{BuildPhase, DigestKind, ImageBuild, ImageBuildSpec, Placement};
use crate::api::node_build::{NodeBuild, NodeBuildPhase, NodeBuildStatus};
use crate::api::recipe::{BuildRecipe, BuildSource, HttpSource};

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).expect("ts")
}

fn build(spec: impl FnOnce(&mut ImageBuildSpec)) -> ImageBuild {
    let mut s = ImageBuildSpec {
        recipe: BuildRecipe {
            image: "example.com/app:dev".into(),
            source: BuildSource::Http(HttpSource {
                url: "http://x/c.tar".into(),
                sha256: None,
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    spec(&mut s);
    ImageBuild {
        metadata: ObjectMeta {
            name: Some("app".into()),
            namespace: Some("dev".into()),
            uid: Some("uid-app".into()),
            generation: Some(1),
            ..Default::default()
        },
        spec: s,
        status: None,
    }
}

fn beat(node: &str, renewed: i64) -> Heartbeat {
    test_beat(node, ts(renewed), 0, &[])
}

fn plan_at(b: &ImageBuild, nbs: &[NodeBuild], beats: &[Heartbeat], now: i64) -> super::plan::Plan {
    decide(&Observed {
        build: b,
        node_builds: nbs.iter().collect(),
        candidates: beats
            .iter()
            .map(|h| Candidate {
                heartbeat: h,
                labels: None,
                assigned: 0,
                max_queued: None,
            })
            .collect(),
        affinity: None,
        now: ts(now),
    })
}

/// The NodeBuild a plan created, with a status as the agent would report it.
fn reported(
    mut nb: NodeBuild,
    created: i64,
    phase: NodeBuildPhase,
    reason: Option<&str>,
    done: Option<i64>,
) -> NodeBuild {
    nb.metadata.creation_timestamp = Some(Time(ts(created)));
    nb.status = Some(NodeBuildStatus {
        phase: Some(phase),
        reason: reason.map(Into::into),
        message: reason.map(|r| format!("{r}: step RUN exit 1")),
        completion_time: done.map(|d| Time(ts(d))),
        digest: (phase == NodeBuildPhase::Succeeded).then(|| format!("sha256:{}", "ab".repeat(32))),
        digest_kind: (phase == NodeBuildPhase::Succeeded).then_some(DigestKind::Manifest),
        ..Default::default()
    });
    nb
}

#[test]
fn first_reconcile_dispatches_one_attempt_to_a_ready_builder() {
    let b = build(|_| {});
    let p = plan_at(&b, &[], &[beat("n1", 0)], 1);
    assert_eq!(p.create.len(), 1);
    let nb = &p.create[0];
    assert_eq!(nb.metadata.name.as_deref(), Some("app-1-1"));
    assert_eq!(
        (nb.spec.node_name.as_str(), nb.spec.attempt, nb.spec.generation),
        ("n1", 1, 1)
    );
    assert_eq!(
        nb.metadata.owner_references.as_ref().map(|o| o[0].uid.as_str()),
        Some("uid-app")
    );
    assert_eq!(
        nb.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kiln.dev/node"))
            .map(String::as_str),
        Some("n1")
    );
    assert_eq!(p.status.phase, Some(BuildPhase::Pending));
    assert!(conditions::is_true(&p.status.conditions, RECONCILING));
    assert!(
        p.events.is_empty(),
        "a first dispatch is in the status, not an event: {:?}",
        p.events
    );
}

#[test]
fn no_ready_builder_is_unschedulable_with_a_reason_and_a_recheck() {
    let b = build(|s| {
        s.placement = Some(Placement {
            node_name: Some("n9".into()),
            ..Default::default()
        })
    });
    let p = plan_at(&b, &[], &[beat("n1", 0)], 1);
    assert!(p.create.is_empty());
    assert_eq!(p.status.reason.as_deref(), Some("Unschedulable"));
    assert!(p.status.message.as_deref().is_some_and(|m| m.contains("\"n9\"")));
    let reconciling = conditions::find(&p.status.conditions, RECONCILING).expect("Reconciling");
    assert_eq!(reconciling.reason, "Unschedulable");
    assert!(p.requeue.is_some(), "re-checked, not a hot loop and not forgotten");
}

#[test]
fn success_sets_ready_digest_and_image_ref() {
    let b = build(|_| {});
    let nb = plan_at(&b, &[], &[beat("n1", 0)], 1).create.remove(0);
    let done = reported(nb, 1, NodeBuildPhase::Succeeded, None, Some(5));
    let p = plan_at(&b, &[done], &[beat("n1", 0)], 6);
    assert_eq!(p.status.phase, Some(BuildPhase::Succeeded));
    assert!(conditions::is_true(&p.status.conditions, READY));
    assert!(!conditions::is_true(&p.status.conditions, RECONCILING));
    let digest = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(p.status.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(p.status.image_ref, Some(format!("example.com/app@{digest}")));
    assert_eq!(p.status.short_digest.as_deref(), Some("abababababab"));
    assert!(
        p.events.is_empty(),
        "a first-attempt success costs no event: {:?}",
        p.events
    );
    assert!(p.create.is_empty() && p.cancel.is_empty());
}

#[test]
fn failures_retry_with_backoff_then_stall_after_the_backoff_limit() {
    let b = build(|s| s.backoff_limit = Some(1));
    let first = plan_at(&b, &[], &[beat("n1", 0)], 1).create.remove(0);
    let failed = reported(first, 1, NodeBuildPhase::Failed, Some("StepFailed"), Some(3));
    let waiting = plan_at(&b, std::slice::from_ref(&failed), &[beat("n1", 3)], 4);
    assert!(waiting.create.is_empty(), "the retry waits for its backoff");
    assert_eq!(waiting.status.reason.as_deref(), Some("Retrying"));
    assert!(waiting.requeue.is_some_and(|d| d.as_secs() <= 2));
    let retry = plan_at(&b, std::slice::from_ref(&failed), &[beat("n1", 5)], 6);
    assert_eq!(retry.create[0].spec.attempt, 2);
    assert_eq!(retry.create[0].metadata.name.as_deref(), Some("app-1-2"));
    assert!(retry.events.iter().any(|e| e.reason == "Retrying" && e.warning));
    let second = reported(
        retry.create[0].clone(),
        6,
        NodeBuildPhase::Failed,
        Some("StepFailed"),
        Some(8),
    );
    let recovered = reported(retry.create[0].clone(), 6, NodeBuildPhase::Succeeded, None, Some(8));
    let success = plan_at(&b, &[failed.clone(), recovered], &[beat("n1", 8)], 9);
    assert!(
        success.events.iter().any(|e| e.reason == "Succeeded" && !e.warning),
        "a success after retries closes the story its warnings told: {:?}",
        success.events
    );
    let stalled = plan_at(&b, &[failed, second], &[beat("n1", 8)], 20);
    assert!(stalled.create.is_empty(), "no retries beyond backoffLimit");
    assert_eq!(stalled.status.phase, Some(BuildPhase::Failed));
    assert!(conditions::is_true(&stalled.status.conditions, STALLED));
    assert_eq!(stalled.status.reason.as_deref(), Some("StepFailed"));
    assert!(
        stalled
            .status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("exit 1") && m.contains("backoffLimit 1"))
    );
    assert_eq!(stalled.status.failed_attempts, Some(2));
}

#[test]
fn dockerfile_errors_are_not_retried() {
    let b = build(|_| {});
    let nb = plan_at(&b, &[], &[beat("n1", 0)], 1).create.remove(0);
    let failed = reported(nb, 1, NodeBuildPhase::Failed, Some("DockerfileParse"), Some(2));
    let p = plan_at(&b, &[failed], &[beat("n1", 0)], 30);
    assert!(p.create.is_empty());
    assert_eq!(p.status.phase, Some(BuildPhase::Failed));
}

#[test]
fn a_lost_node_is_cancelled_and_the_retry_goes_elsewhere() {
    let b = build(|_| {});
    let nb = plan_at(&b, &[], &[beat("n1", 0), beat("n2", 0)], 1).create.remove(0);
    let node = nb.spec.node_name.clone();
    let other = if node == "n1" { "n2" } else { "n1" };
    let running = reported(nb, 1, NodeBuildPhase::Running, None, None);
    // The builder on `node` stopped heartbeating at 0; its lease ran out at 15.
    let beats = [beat(&node, 0), beat(other, 40)];
    let p = plan_at(&b, &[running], &beats, 41);
    assert_eq!(p.cancel, vec!["app-1-1".to_owned()]);
    assert_eq!(p.create.len(), 1);
    assert_eq!(p.create[0].spec.node_name, other);
    assert!(p.events.iter().any(|e| e.note.contains("NodeLost")));
}

#[test]
fn deadline_cancels_and_stalls() {
    let b = build(|s| s.timeout_seconds = Some(2));
    let nb = plan_at(&b, &[], &[beat("n1", 0)], 0).create.remove(0);
    assert!(nb.spec.deadline.is_some());
    let running = reported(nb, 0, NodeBuildPhase::Running, None, None);
    let p = plan_at(&b, &[running], &[beat("n1", 2)], 3);
    assert_eq!(p.cancel, vec!["app-1-1".to_owned()]);
    assert_eq!(p.status.reason.as_deref(), Some("DeadlineExceeded"));
    assert!(conditions::is_true(&p.status.conditions, STALLED));
}

#[test]
fn a_new_generation_cancels_the_old_attempt_and_builds_anew() {
    let mut b = build(|_| {});
    let old = reported(
        plan_at(&b, &[], &[beat("n1", 0)], 0).create.remove(0),
        0,
        NodeBuildPhase::Running,
        None,
        None,
    );
    b.metadata.generation = Some(2);
    let p = plan_at(&b, &[old], &[beat("n1", 1)], 1);
    assert_eq!(p.cancel, vec!["app-1-1".to_owned()]);
    assert_eq!(p.create[0].metadata.name.as_deref(), Some("app-2-1"));
    assert_eq!(p.status.observed_generation, Some(2));
    assert!(p.status.conditions.iter().all(|c| c.observed_generation == Some(2)));
}

#[test]
fn all_nodes_builds_everywhere_and_reports_each_node() {
    let b = build(|s| {
        s.placement = Some(Placement {
            all_nodes: true,
            ..Default::default()
        })
    });
    let beats = [beat("n1", 0), beat("n2", 0)];
    let created = plan_at(&b, &[], &beats, 1).create;
    assert_eq!(created.len(), 2);
    let done: Vec<NodeBuild> = created
        .into_iter()
        .map(|nb| reported(nb, 1, NodeBuildPhase::Succeeded, None, Some(4)))
        .collect();
    let p = plan_at(&b, &done, &beats, 5);
    assert_eq!(p.status.phase, Some(BuildPhase::Succeeded));
    assert_eq!(p.status.nodes.len(), 2);
    assert_eq!(p.status.node_names.as_deref(), Some("n1,n2"));
}

#[test]
fn finished_builds_are_deleted_after_their_ttl() {
    let b = build(|s| s.ttl_seconds_after_finished = Some(10));
    let nb = reported(
        plan_at(&b, &[], &[beat("n1", 0)], 0).create.remove(0),
        0,
        NodeBuildPhase::Succeeded,
        None,
        Some(2),
    );
    let mut b2 = b.clone();
    b2.status = Some(plan_at(&b, std::slice::from_ref(&nb), &[beat("n1", 0)], 3).status);
    let early = plan_at(&b2, std::slice::from_ref(&nb), &[beat("n1", 0)], 5);
    assert!(!early.delete && early.requeue.is_some());
    let late = plan_at(&b2, &[nb], &[beat("n1", 0)], 14);
    assert!(late.delete);
}

#[test]
fn an_unchanged_world_yields_an_unchanged_status() {
    let b = build(|_| {});
    let nb = reported(
        plan_at(&b, &[], &[beat("n1", 0)], 0).create.remove(0),
        0,
        NodeBuildPhase::Running,
        None,
        None,
    );
    let mut b2 = b.clone();
    b2.status = Some(plan_at(&b, std::slice::from_ref(&nb), &[beat("n1", 0)], 1).status);
    let again = plan_at(&b2, &[nb], &[beat("n1", 2)], 3);
    assert_eq!(Some(&again.status), b2.status.as_ref());
    assert!(again.events.is_empty(), "no repeated events");
}

#[test]
fn a_finished_build_whose_attempts_are_gone_keeps_its_outcome() {
    let b = build(|s| s.ttl_seconds_after_finished = Some(100));
    let nb = reported(
        plan_at(&b, &[], &[beat("n1", 0)], 0).create.remove(0),
        0,
        NodeBuildPhase::Succeeded,
        None,
        Some(2),
    );
    let mut done = b.clone();
    done.status = Some(plan_at(&b, &[nb], &[beat("n1", 0)], 3).status);
    // The NodeBuild is deleted (by hand, or with its namespace): nothing is rebuilt.
    let after = plan_at(&done, &[], &[beat("n1", 0)], 4);
    assert!(after.create.is_empty(), "no new attempt: {:?}", after.create);
    assert_eq!(Some(&after.status), done.status.as_ref());
    assert!(after.events.is_empty());
    assert!(!after.delete && after.requeue.is_some(), "the TTL still counts");
    assert!(plan_at(&done, &[], &[beat("n1", 0)], 103).delete);

    // A spec change is a new generation: that one is built.
    let mut changed = done.clone();
    changed.metadata.generation = Some(2);
    assert_eq!(plan_at(&changed, &[], &[beat("n1", 0)], 5).create.len(), 1);
}

#[test]
fn all_nodes_builds_on_a_node_that_joins_later_with_its_own_timeout() {
    let b = build(|s| {
        s.placement = Some(Placement {
            all_nodes: true,
            ..Default::default()
        });
        s.timeout_seconds = Some(60);
    });
    let first = [beat("n1", 0), beat("n2", 0)];
    let done: Vec<NodeBuild> = plan_at(&b, &[], &first, 1)
        .create
        .into_iter()
        .map(|nb| reported(nb, 1, NodeBuildPhase::Succeeded, None, Some(4)))
        .collect();
    assert_eq!(plan_at(&b, &done, &first, 5).status.phase, Some(BuildPhase::Succeeded));

    // An hour later, long past the first attempts' timeout, n3's builder turns ready.
    let later = [beat("n1", 3600), beat("n2", 3600), beat("n3", 3600)];
    let p = plan_at(&b, &done, &later, 3601);
    assert_eq!(p.create.len(), 1, "one new attempt: {:?}", p.create);
    let joined = p.create[0].clone();
    assert_eq!(joined.spec.node_name, "n3");
    assert_ne!(p.status.phase, Some(BuildPhase::Succeeded), "not on every node yet");
    assert!(conditions::is_true(&p.status.conditions, RECONCILING));
    assert!(p.cancel.is_empty(), "nothing is cancelled");

    // Its own timeout counts from its own start: running at 3630 is still in time.
    let running = reported(joined, 3601, NodeBuildPhase::Running, None, None);
    let mut all = done.clone();
    all.push(running.clone());
    let renewed = [beat("n1", 3625), beat("n2", 3625), beat("n3", 3625)];
    let p = plan_at(&b, &all, &renewed, 3630);
    assert!(
        p.cancel.is_empty() && p.create.is_empty(),
        "{:?} {:?}",
        p.cancel,
        p.create
    );
    assert_eq!(p.status.phase, Some(BuildPhase::Building));

    let mut finished = done;
    finished.push(reported(running, 3601, NodeBuildPhase::Succeeded, None, Some(3640)));
    let renewed = [beat("n1", 3640), beat("n2", 3640), beat("n3", 3640)];
    let p = plan_at(&b, &finished, &renewed, 3641);
    assert_eq!(p.status.phase, Some(BuildPhase::Succeeded));
    assert_eq!(p.status.node_names.as_deref(), Some("n1,n2,n3"));
}

#[test]
fn heartbeats_wake_builds_waiting_for_a_builder_and_all_nodes_builds_on_new_nodes() {
    use super::plan::woken_by;
    let single = build(|_| {});
    assert!(
        woken_by(&single, &beat("n1", 0), false),
        "an unfinished build waiting for a builder"
    );
    assert!(
        !woken_by(&single, &beat("n1", 0), true),
        "a build whose attempt runs: renewals are no news to it"
    );
    let mut other_pool = beat("n1", 0);
    other_pool.pool = "gpu".into();
    assert!(!woken_by(&single, &other_pool, false));

    let nb = reported(
        plan_at(&single, &[], &[beat("n1", 0)], 0).create.remove(0),
        0,
        NodeBuildPhase::Succeeded,
        None,
        Some(2),
    );
    let mut done = single.clone();
    done.status = Some(plan_at(&single, &[nb], &[beat("n1", 0)], 3).status);
    assert!(!woken_by(&done, &beat("n2", 4), false), "a finished single-node build");

    let mut everywhere = done.clone();
    everywhere.spec.placement = Some(Placement {
        all_nodes: true,
        ..Default::default()
    });
    assert!(
        !woken_by(&everywhere, &beat("n1", 4), false),
        "a renewal from a node it is on"
    );
    assert!(woken_by(&everywhere, &beat("n2", 4), true), "a node it has not been on");
}

#[test]
fn an_attempt_waiting_for_its_upload_says_so_and_a_missing_upload_is_not_retried() {
    let b = build(|s| s.backoff_limit = Some(3));
    let nb = plan_at(&b, &[], &[beat("n1", 0)], 1).create.remove(0);
    let mut waiting = reported(nb.clone(), 1, NodeBuildPhase::Queued, Some("WaitingForUpload"), None);
    if let Some(s) = waiting.status.as_mut() {
        s.message = Some("waiting for the build context sha256:ab… to be uploaded".into());
    }
    let p = plan_at(&b, &[waiting], &[beat("n1", 2)], 3);
    assert_eq!(p.status.phase, Some(BuildPhase::Pending));
    let reconciling = conditions::find(&p.status.conditions, RECONCILING).expect("Reconciling");
    assert_eq!(reconciling.reason, "WaitingForUpload");
    assert!(reconciling.message.contains("uploaded"), "{}", reconciling.message);

    let timed_out = reported(nb, 1, NodeBuildPhase::Failed, Some("UploadTimeout"), Some(60));
    let p = plan_at(&b, &[timed_out], &[beat("n1", 60)], 61);
    assert!(p.create.is_empty(), "no retry: nobody is there to upload again");
    assert!(conditions::is_true(&p.status.conditions, STALLED));
    assert_eq!(p.status.reason.as_deref(), Some("UploadTimeout"));
}

#[test]
fn a_moved_git_ref_is_built_again_on_the_same_node_without_counting_as_a_failure() {
    use crate::api::image_build::SourceStatus;
    let b = build(|s| s.backoff_limit = Some(0));
    let beats = [beat("n1", 0), beat("n2", 0)];
    let mut nb = plan_at(&b, &[], &beats, 1).create.remove(0);
    let node = nb.spec.node_name.clone();
    nb = reported(nb, 1, NodeBuildPhase::Succeeded, None, Some(5));
    let moved = |nb: &mut NodeBuild, latest: Option<&str>| {
        if let Some(s) = nb.status.as_mut() {
            s.source = Some(SourceStatus {
                revision: Some("a".repeat(40)),
                latest: latest.map(str::to_owned),
            });
        }
    };
    moved(&mut nb, Some(&"a".repeat(40)));
    let same = plan_at(&b, std::slice::from_ref(&nb), &beats, 6);
    assert!(same.create.is_empty(), "the ref still names the built commit");
    assert_eq!(same.status.phase, Some(BuildPhase::Succeeded));

    moved(&mut nb, Some(&"b".repeat(40)));
    let p = plan_at(&b, std::slice::from_ref(&nb), &beats, 6);
    assert_eq!(p.create.len(), 1, "the new commit is built");
    assert_eq!(p.create[0].spec.node_name, node, "where the image is");
    assert_eq!(p.create[0].spec.attempt, 2);
    assert_eq!(p.status.failed_attempts, None, "backoffLimit 0 is not used up");
    assert!(!conditions::is_true(&p.status.conditions, STALLED));
    let event = p
        .events
        .iter()
        .find(|e| e.reason == "Rebuilding")
        .expect("a Rebuilding event");
    assert!(!event.warning && event.note.contains("bbbbbbbbbbbb"), "{event:?}");

    let second = reported(p.create[0].clone(), 7, NodeBuildPhase::Succeeded, None, Some(9));
    let done = plan_at(&b, &[nb, second], &beats, 10);
    assert_eq!(done.status.phase, Some(BuildPhase::Succeeded));
    assert!(done.create.is_empty());
}

//! The pool's queue limit end to end: with `maxQueuedBuilds`, a node never holds more attempts
//! than its slots plus that many; the rest wait in the controller, `Pending` with reason
//! `QueueFull` and a message naming the limit, and go oldest first as slots free, or at once
//! when the limit is raised. A held build's next status names the node it went to and when it
//! started (no status in between without them). Nothing is lost: every build ends Ready with
//! its own image. Real controller and agent, real apiserver, real BuildKit (Docker's).

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use kiln::api::conditions::{self, READY, STALLED};
use kiln::api::image_build::ImageBuildStatus;
use kiln::api::node_build::NodeBuild;
use kiln::api::{BuilderPool, ImageBuild};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use support::e2e::{POOL, Rig, Tuning};

const BUILDS: usize = 8;
/// Each build's RUN step: long enough that the later builds must wait for slots.
const STEP_SECONDS: u64 = 1;
/// A held build goes when a slot frees, not at its 30 s re-check: with six builds that took
/// 16 s here, and 71 s with the wake-up removed (re-checks alone). With eight, this bound is
/// about three times what the wake-ups need and short of what re-checks alone would take.
const RUN_WAIT: Duration = Duration::from_secs(75);
/// The running build while another is held: longer than [`RAISE_WAIT`] allows the held one.
const LONG_STEP_SECONDS: u64 = 25;
/// How soon a held build goes once the limit rises: well before the running build ends, and
/// before its 30 s re-check.
const RAISE_WAIT: Duration = Duration::from_secs(10);

fn reason(b: &ImageBuild) -> Option<&str> {
    b.status.as_ref()?.reason.as_deref()
}

fn is(b: &ImageBuild, type_: &str) -> bool {
    b.status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, type_))
}

#[tokio::test]
async fn a_full_node_queue_holds_builds_in_the_controller_and_loses_none() {
    let tuning = Tuning {
        agent: vec!["--max-concurrent-builds=1".into()],
        ..Default::default()
    };
    let rig = Rig::start_tuned(&["queue-a"], tuning).await;
    let client = rig.client().await;
    let pools: Api<BuilderPool> = Api::all(client.clone());
    set_queue_limit(&pools, 1, "set").await;
    let ns = rig.server.namespace(&client, "queue").await;
    let builds: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    let history = record_statuses(builds.clone());
    rig.server.apply_manifests(&queued_builds(&rig, &ns));

    let seen = follow_until_all_ready(&rig, &ns, &builds).await;
    assert!(
        seen.most_on_node <= 2,
        "the node held {} unfinished attempts; one slot plus one queued allowed",
        seen.most_on_node
    );
    let message = seen.held_message.expect("a build was held with reason QueueFull");
    assert!(
        message.contains("spec.maxQueuedBuilds") && message.contains("queue-a"),
        "the held build says why and where: {message}"
    );
    let history = history.lock().map(|h| h.clone()).unwrap_or_default();
    next_status_after_queue_full_names_node_and_start(&history);
    for i in 0..BUILDS {
        let file = rig.docker.image_file(&format!("kiln.local/{ns}/q:{i}"), "marker.txt");
        assert_eq!(file, Some(format!("build {i}").into_bytes()), "build {i}'s own image");
        let nbs = rig.node_builds(&ns, &format!("q-{i}")).await;
        assert_eq!(nbs.len(), 1, "build {i} ran once: {nbs:?}");
    }
    raising_the_limit_releases_a_held_build(&rig, &ns, &pools, &builds).await;
}

async fn set_queue_limit(pools: &Api<BuilderPool>, limit: i32, what: &str) {
    let patch = json!({"spec": {"maxQueuedBuilds": limit}});
    pools
        .patch(POOL, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("{what} the pool's queue limit: {e}"));
}

/// [`BUILDS`] ImageBuilds, each its own context and image, each with a RUN step of
/// [`STEP_SECONDS`], as one manifest.
fn queued_builds(rig: &Rig, ns: &str) -> String {
    (0..BUILDS)
        .map(|i| {
            let url = rig.context(&format!("{ns}-{i}"), &[("marker.txt", format!("build {i}").as_bytes())]);
            let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
                "metadata": {"name": format!("q-{i}"), "namespace": ns},
                "spec": {"image": format!("kiln.local/{ns}/q:{i}"), "source": {"http": {"url": url}},
                         "dockerfileInline": format!(
                             "FROM kiln-test/busybox:latest\nCOPY marker.txt /marker.txt\nRUN sleep {STEP_SECONDS} && echo {ns}-{i}\n")}});
            format!("---\n{build}\n")
        })
        .collect()
}

/// What the test saw while the builds ran.
struct Seen {
    /// The most unfinished attempts the node held at once.
    most_on_node: usize,
    /// The message of a build held with reason `QueueFull`, if one was.
    held_message: Option<String>,
}

/// Looks every 100 ms until every build is Ready (at most [`RUN_WAIT`]): how many attempts the
/// node holds, and what a held build says (it is never Stalled).
async fn follow_until_all_ready(rig: &Rig, ns: &str, builds: &Api<ImageBuild>) -> Seen {
    let attempts: Api<NodeBuild> = Api::namespaced(rig.client().await, ns);
    let mut seen = Seen {
        most_on_node: 0,
        held_message: None,
    };
    let deadline = Instant::now() + RUN_WAIT;
    loop {
        let nbs = attempts.list(&ListParams::default()).await.expect("list NodeBuilds");
        let unfinished = nbs
            .items
            .iter()
            .filter(|nb| {
                !nb.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(|p| p.is_finished())
            })
            .count();
        seen.most_on_node = seen.most_on_node.max(unfinished);
        let list = builds.list(&ListParams::default()).await.expect("list ImageBuilds");
        if let Some(held) = list.items.iter().find(|b| reason(b) == Some("QueueFull")) {
            assert!(!is(held, STALLED), "a held build is not Stalled: {:?}", held.status);
            seen.held_message = held.status.as_ref().and_then(|s| s.message.clone());
        }
        if list.items.iter().filter(|b| is(b, READY)).count() == BUILDS {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "not every build Ready: {:?}\n{}",
            list.items
                .iter()
                .map(|b| (b.metadata.name.clone(), reason(b).map(str::to_owned)))
                .collect::<Vec<_>>(),
            rig.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A held build's next status, after `QueueFull`, names the node it went to and its start:
/// no status in between without them.
fn next_status_after_queue_full_names_node_and_start(history: &BTreeMap<String, Vec<ImageBuildStatus>>) {
    for (name, statuses) in history {
        let Some(held) = statuses.iter().position(|s| s.reason.as_deref() == Some("QueueFull")) else {
            continue;
        };
        let next = statuses[held..]
            .iter()
            .find(|s| s.reason.as_deref() != Some("QueueFull"));
        assert!(
            next.is_some_and(|s| !s.nodes.is_empty() && s.start_time.is_some()),
            "{name}'s next status after QueueFull names its node and start: {next:?}\nall: {statuses:?}"
        );
    }
}

/// Raising the limit lets a held build go at once, not when a slot frees or at its re-check:
/// with the limit at 0 and a long build running, a second build is held; raised to 1, it is
/// dispatched within [`RAISE_WAIT`], while the long one still runs.
async fn raising_the_limit_releases_a_held_build(
    rig: &Rig,
    ns: &str,
    pools: &Api<BuilderPool>,
    builds: &Api<ImageBuild>,
) {
    set_queue_limit(pools, 0, "lower").await;
    let url = rig.context(&format!("{ns}-raise"), &[("marker.txt", b"raise")]);
    let build = |name: &str, step: &str| {
        json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"image": format!("kiln.local/{ns}/{name}:v1"), "source": {"http": {"url": url}},
                     "dockerfileInline": format!("FROM kiln-test/busybox:latest\nCOPY marker.txt /m\nRUN {step} && echo {ns}-{name}\n")}})
    };
    rig.server
        .apply_manifests(&build("long", &format!("sleep {LONG_STEP_SECONDS}")).to_string());
    rig.wait_for(ns, "long", RUN_WAIT, "Building", |b| {
        b.status.as_ref().and_then(|s| s.phase) == Some(kiln::api::image_build::BuildPhase::Building)
    })
    .await;
    rig.server.apply_manifests(&build("held", "true").to_string());
    rig.wait_for(ns, "held", RUN_WAIT, "QueueFull", |b| reason(b) == Some("QueueFull"))
        .await;
    let raised = Instant::now();
    set_queue_limit(pools, 1, "raise").await;
    support::kiln::eventually(RAISE_WAIT, "the held build dispatched", || async {
        (!rig.node_builds(ns, "held").await.is_empty()).then_some(())
    })
    .await;
    let long = builds.get("long").await.expect("long");
    assert!(
        !is(&long, READY),
        "the held build went when the limit rose, not when the running one ended ({:?} after the raise)",
        raised.elapsed()
    );
}

/// Every status each build of `builds` is written with, in order (from a watch started before
/// the builds are created).
fn record_statuses(builds: Api<ImageBuild>) -> Arc<Mutex<BTreeMap<String, Vec<ImageBuildStatus>>>> {
    let history = Arc::new(Mutex::new(BTreeMap::<String, Vec<ImageBuildStatus>>::new()));
    let seen = history.clone();
    tokio::spawn(async move {
        let mut events = watcher(builds, watcher::Config::default()).applied_objects().boxed();
        while let Some(Ok(build)) = events.next().await {
            let (Some(name), Some(status)) = (build.metadata.name.clone(), build.status) else {
                continue;
            };
            if let Ok(mut h) = seen.lock() {
                let statuses = h.entry(name).or_default();
                if statuses.last() != Some(&status) {
                    statuses.push(status);
                }
            }
        }
    });
    history
}

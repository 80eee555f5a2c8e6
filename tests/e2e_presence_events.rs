//! A built image removed from the node's store is noticed from the store's own events
//! (Docker's `/events`), not the periodic check: the agent here checks once an hour. Its own
//! test binary, so its rig (one node, its own apiserver) shares nothing with
//! `e2e_presence.rs`'s, whose agent checks every second.

mod support;

use std::time::Duration;

use kiln::api::ImageBuild;
use kiln::api::conditions::{self, READY};
use serde_json::json;
use support::e2e::{Rig, Tuning};

const BUILD_WAIT: Duration = Duration::from_secs(90);

fn is(b: &ImageBuild, type_: &str) -> bool {
    b.status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, type_))
}

fn attempt(b: &ImageBuild) -> Option<i32> {
    b.status.as_ref()?.nodes.first()?.attempt
}

fn remove(rig: &Rig, image: &str) {
    let (ok, _, err) = rig.docker.docker(&["rmi", image]);
    assert!(ok, "docker rmi {image}: {err}");
}

/// With a presence interval far longer than the test, only the store's removal events can
/// bring the image back: Docker's `/events` wakes the agent's check.
#[tokio::test]
async fn a_removal_is_noticed_from_the_stores_events_not_the_interval() {
    let tuning = Tuning {
        agent: vec!["--presence-interval-seconds=3600".into()],
        ..Default::default()
    };
    let rig = Rig::start_tuned(&["presence-events"], tuning).await;
    let ns = rig.server.namespace(&rig.client().await, "events").await;
    let image = format!("kiln.local/{ns}/app:v1");
    let url = rig.context(&format!("{ns}-app"), &[("marker.txt", b"events")]);
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": "app", "namespace": ns},
        "spec": {"image": image, "source": {"http": {"url": url}},
                 "dockerfileInline": "FROM kiln-test/busybox:latest\nCOPY marker.txt /marker.txt\n"}});
    rig.server.apply_manifests(&build.to_string());
    rig.wait_for(&ns, "app", BUILD_WAIT, "Ready", |b| is(b, READY)).await;

    let removed = std::time::Instant::now();
    remove(&rig, &image);
    rig.wait_for(&ns, "app", BUILD_WAIT, "restored (attempt 2 Ready)", |b| {
        is(b, READY) && attempt(b) == Some(2)
    })
    .await;
    println!(
        "removed → restored in {:.1} s with a 3600 s presence interval",
        removed.elapsed().as_secs_f64()
    );
    assert_eq!(rig.docker.image_file(&image, "marker.txt"), Some(b"events".to_vec()));
}

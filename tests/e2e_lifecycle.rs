//! An ImageBuild's life after it starts, end to end: deleting it cancels the running step and
//! leaves nothing behind, a timeout cancels it as `DeadlineExceeded`, a spec change cancels the
//! running attempt and builds the new generation, a TTL deletes it once finished, and deleting
//! its namespace neither rebuilds nor retries. kiln's controller and agents as they run in
//! production, a real apiserver and a real BuildKit (Docker's). No mocks.

mod support;

use std::time::Duration;

use kiln::api::ImageBuild;
use kiln::api::image_build::BuildPhase;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use support::e2e::{Rig, is_ready, is_stalled};
use tokio::sync::OnceCell;

const BUILD_WAIT: Duration = Duration::from_secs(90);

async fn rig() -> &'static Rig {
    static RIG: OnceCell<Rig> = OnceCell::const_new();
    RIG.get_or_init(|| Rig::start(&["node-a", "node-b"])).await
}

#[tokio::test]
async fn deleting_a_running_build_cancels_it_and_leaves_nothing_behind() {
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "del").await;
    let url = rig.context(&ns, &[("d", b"d")]);
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "slow"}, "spec": {
        "image": format!("kiln.local/{ns}/slow:v1"),
        "source": {"http": {"url": url}},
        "dockerfileInline": format!("FROM kiln-test/busybox:latest\nRUN echo {ns} && sleep 120\n"),
    }});
    api.patch("slow", &PatchParams::apply("test"), &Patch::Apply(&build))
        .await
        .expect("apply");
    rig.wait_for(&ns, "slow", BUILD_WAIT, "Building", |b| {
        b.status.as_ref().and_then(|s| s.phase) == Some(BuildPhase::Building)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(sleeping(rig), "the RUN step is running in BuildKit");
    api.delete("slow", &DeleteParams::default()).await.expect("delete");
    support::kiln::eventually(Duration::from_secs(40), "ImageBuild gone", || async {
        api.get_opt("slow").await.ok().flatten().is_none().then_some(())
    })
    .await;
    assert!(rig.node_builds(&ns, "slow").await.is_empty(), "no NodeBuild left");
    support::kiln::eventually(Duration::from_secs(10), "the RUN step stopped", || async {
        (!sleeping(rig)).then_some(())
    })
    .await;
}

/// True while a `sleep 120` runs under the Docker daemon (only the deletion test uses it; the
/// shell may exec the sleep, so the command line cannot carry the test's namespace).
fn sleeping(rig: &Rig) -> bool {
    rig.docker
        .descendant_processes()
        .iter()
        .any(|(_, cmd)| cmd.contains("sleep 120"))
}

#[tokio::test]
async fn a_build_past_its_timeout_is_cancelled_as_deadline_exceeded() {
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "timeout").await;
    let url = rig.context(&ns, &[("t", b"t")]);
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "late"}, "spec": {
        "image": format!("kiln.local/{ns}/late:v1"),
        "source": {"http": {"url": url}},
        "dockerfileInline": "FROM kiln-test/busybox:latest\nRUN sleep 30\n",
        "timeoutSeconds": 2,
    }});
    api.patch("late", &PatchParams::apply("test"), &Patch::Apply(&build))
        .await
        .expect("apply");
    let done = rig.wait_for(&ns, "late", BUILD_WAIT, "Stalled", is_stalled).await;
    let status = done.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(rig.node_builds(&ns, "late").await.len(), 1, "a deadline is not retried");
}

#[tokio::test]
async fn a_spec_change_cancels_the_running_attempt_and_builds_the_new_generation() {
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "regen").await;
    let url = rig.context(&ns, &[("g", b"g")]);
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    let spec = |dockerfile: &str| {
        json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "gen"}, "spec": {
            "image": format!("kiln.local/{ns}/gen:v1"),
            "source": {"http": {"url": url}},
            "dockerfileInline": dockerfile,
        }})
    };
    api.patch(
        "gen",
        &PatchParams::apply("test"),
        &Patch::Apply(spec("FROM kiln-test/busybox:latest\nRUN sleep 60\n")),
    )
    .await
    .expect("apply");
    rig.wait_for(&ns, "gen", BUILD_WAIT, "Building", |b| {
        b.status.as_ref().and_then(|s| s.phase) == Some(BuildPhase::Building)
    })
    .await;
    api.patch(
        "gen",
        &PatchParams::apply("test"),
        &Patch::Apply(spec("FROM scratch\nCOPY g /g\n")),
    )
    .await
    .expect("change");
    let done = rig
        .wait_for(&ns, "gen", BUILD_WAIT, "Ready for generation 2", |b| {
            is_ready(b) && b.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
        })
        .await;
    assert!(
        done.status
            .expect("status")
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(2))
    );
    let attempts = rig.node_builds(&ns, "gen").await;
    let old = attempts
        .iter()
        .find(|nb| nb.spec.generation == 1)
        .expect("first generation's attempt");
    assert_eq!(
        old.status.as_ref().and_then(|s| s.phase),
        Some(kiln::api::node_build::NodeBuildPhase::Cancelled)
    );
}

#[tokio::test]
async fn finished_builds_are_deleted_after_ttl_seconds_after_finished() {
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "ttl").await;
    let url = rig.context(&ns, &[("t", b"t")]);
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "brief"}, "spec": {
        "image": format!("kiln.local/{ns}/brief:v1"),
        "source": {"http": {"url": url}},
        "dockerfileInline": "FROM scratch\nCOPY t /t\n",
        "ttlSecondsAfterFinished": 2,
    }});
    api.patch("brief", &PatchParams::apply("test"), &Patch::Apply(&build))
        .await
        .expect("apply");
    rig.wait_for(&ns, "brief", BUILD_WAIT, "Ready", is_ready).await;
    rig.wait_gone(&ns, "brief", Duration::from_secs(30)).await;
}

/// Deleting a namespace removes its NodeBuilds and ImageBuilds in no particular order (the
/// namespace controller; this apiserver has none, so the test deletes the NodeBuilds as it
/// would). A finished build keeps its outcome, a running one stops on its node, and the
/// controller neither rebuilds nor retries creates the terminating namespace refuses.
#[tokio::test]
async fn deleting_the_namespace_neither_rebuilds_nor_retries() {
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "nsdel").await;
    let url = rig.context(&ns, &[("n", b"n")]);
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    for (name, dockerfile) in [
        ("done", "FROM scratch\nCOPY n /n\n".to_owned()),
        (
            "running",
            format!("FROM kiln-test/busybox:latest\nRUN echo {ns} && sleep 97\n"),
        ),
    ] {
        let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": name}, "spec": {
            "image": format!("kiln.local/{ns}/{name}:v1"),
            "source": {"http": {"url": url}},
            "dockerfileInline": dockerfile,
        }});
        api.patch(name, &PatchParams::apply("test"), &Patch::Apply(&build))
            .await
            .expect("apply");
    }
    let done = rig.wait_for(&ns, "done", BUILD_WAIT, "Ready", is_ready).await;
    rig.wait_for(&ns, "running", BUILD_WAIT, "Building", |b| {
        b.status.as_ref().and_then(|s| s.phase) == Some(BuildPhase::Building)
    })
    .await;
    let running_sleep = || {
        rig.docker
            .descendant_processes()
            .iter()
            .any(|(_, cmd)| cmd.contains("sleep 97"))
    };
    support::kiln::eventually(Duration::from_secs(20), "the RUN step running", || async {
        running_sleep().then_some(())
    })
    .await;

    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("delete namespace");
    let node_builds: Api<kiln::api::NodeBuild> = Api::namespaced(client.clone(), &ns);
    node_builds
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .expect("delete NodeBuilds");
    support::kiln::eventually(Duration::from_secs(20), "the RUN step stopped", || async {
        (!running_sleep()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let after = api.get("done").await.expect("done");
    assert!(is_ready(&after), "{:?}", after.status);
    assert_eq!(
        after.status.as_ref().and_then(|s| s.digest.clone()),
        done.status.as_ref().and_then(|s| s.digest.clone()),
        "the finished build keeps its outcome"
    );
    let left = node_builds.list(&ListParams::default()).await.expect("list").items;
    assert!(left.is_empty(), "no new attempt: {left:?}");
    let log = rig
        .controller
        .lock()
        .expect("lock")
        .as_ref()
        .map(|c| std::fs::read_to_string(c.process.log()).unwrap_or_default())
        .unwrap_or_default();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(ns.as_str()) && l.contains("reconcile failed"))
        .collect();
    assert!(failures.is_empty(), "the controller retried: {failures:#?}");
}

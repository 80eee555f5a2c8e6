//! Agents dying mid-build: a restarted agent fails the orphaned attempt so it is retried, and a
//! node whose heartbeat stops has its attempt retried on another node. Real processes, real
//! apiserver, real BuildKit.

mod support;

use std::time::Duration;

use kiln::api::ImageBuild;
use kiln::api::image_build::BuildPhase;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::e2e::{Rig, is_ready};
use tokio::sync::OnceCell;

async fn rig() -> &'static Rig {
    static RIG: OnceCell<Rig> = OnceCell::const_new();
    RIG.get_or_init(|| Rig::start(&["restart-a", "lost-a", "lost-b"])).await
}

fn building(b: &ImageBuild) -> bool {
    b.status.as_ref().and_then(|s| s.phase) == Some(BuildPhase::Building)
}

#[tokio::test]
async fn an_agent_killed_mid_build_fails_the_attempt_and_the_retry_succeeds() {
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "agent").await;
    let url = rig.context(&ns, &[("r", b"r")]);
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "phoenix"}, "spec": {
        "image": format!("kiln.local/{ns}/phoenix:v1"),
        "source": {"http": {"url": url}},
        "dockerfileInline": format!("FROM kiln-test/busybox:latest\nARG SLEEP=0\nRUN echo {ns} && sleep $SLEEP\n"),
        "buildArgs": {"SLEEP": "6"},
        "placement": {"nodeName": "restart-a"},
    }});
    api.patch("phoenix", &PatchParams::apply("test"), &Patch::Apply(&build))
        .await
        .expect("apply");
    rig.wait_for(&ns, "phoenix", Duration::from_secs(60), "Building", building)
        .await;
    rig.kill_agent("restart-a");
    rig.start_agent("restart-a");
    let done = rig
        .wait_for(&ns, "phoenix", Duration::from_secs(90), "Ready", is_ready)
        .await;
    let attempts = rig.node_builds(&ns, "phoenix").await;
    assert_eq!(attempts.len(), 2, "the orphaned attempt plus one retry");
    let first = attempts.iter().find(|nb| nb.spec.attempt == 1).expect("attempt 1");
    assert_eq!(
        first.status.as_ref().and_then(|s| s.reason.as_deref()),
        Some("AgentRestarted")
    );
    assert_eq!(done.status.expect("status").failed_attempts, Some(1));
}

#[tokio::test]
async fn a_node_that_stops_heartbeating_loses_its_attempt_to_another_node() {
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "lost").await;
    let url = rig.context(&ns, &[("l", b"l")]);
    // Only the lost-* nodes qualify.
    for node in ["lost-a", "lost-b"] {
        let label = json!({"metadata": {"labels": {"kiln.dev/lost-test": "true"}}});
        Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
            .patch(node, &PatchParams::default(), &Patch::Merge(&label))
            .await
            .expect("label node");
    }
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "nomad"}, "spec": {
        "image": format!("kiln.local/{ns}/nomad:v1"),
        "source": {"http": {"url": url}},
        "dockerfileInline": format!("FROM kiln-test/busybox:latest\nRUN echo {ns} && sleep 4\n"),
        "placement": {"nodeSelector": {"kiln.dev/lost-test": "true"}},
    }});
    api.patch("nomad", &PatchParams::apply("test"), &Patch::Apply(&build))
        .await
        .expect("apply");
    let running = rig
        .wait_for(&ns, "nomad", Duration::from_secs(60), "Building", building)
        .await;
    let first_node = running.status.expect("status").nodes[0].name.clone();
    let other = if first_node == "lost-a" { "lost-b" } else { "lost-a" };
    rig.kill_agent(&first_node);
    let done = rig
        .wait_for(&ns, "nomad", Duration::from_secs(90), "Ready", is_ready)
        .await;
    let status = done.status.expect("status");
    assert_eq!(status.nodes.len(), 1);
    assert_eq!(status.nodes[0].name, other, "retried on the other node");
    let attempts = rig.node_builds(&ns, "nomad").await;
    let lost = attempts.iter().find(|nb| nb.spec.attempt == 1).expect("attempt 1");
    assert!(
        lost.spec.cancel,
        "the lost attempt is cancelled, so it stops if its node comes back"
    );
    rig.start_agent(&first_node);
}

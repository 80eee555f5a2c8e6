//! A controller killed mid-build and restarted neither loses nor duplicates the build.

mod support;

use std::time::Duration;

use kiln::api::ImageBuild;
use kiln::api::conditions::{self, READY};
use kiln::api::image_build::BuildPhase;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::e2e::Rig;

#[tokio::test]
async fn a_restarted_controller_runs_the_build_once() {
    let rig = Rig::start(&["only"]).await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "restart").await;
    let url = rig.context(&ns, &[("c", b"c")]);
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "once"}, "spec": {
        "image": format!("kiln.local/{ns}/once:v1"),
        "source": {"http": {"url": url}},
        "dockerfileInline": format!("FROM kiln-test/busybox:latest\nRUN echo {ns} && sleep 4\n"),
    }});
    api.patch("once", &PatchParams::apply("test"), &Patch::Apply(&build))
        .await
        .expect("apply");
    rig.wait_for(&ns, "once", Duration::from_secs(60), "Building", |b| {
        b.status.as_ref().and_then(|s| s.phase) == Some(BuildPhase::Building)
    })
    .await;
    rig.kill_controller();
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.start_controller();
    rig.wait_for(&ns, "once", Duration::from_secs(90), "Ready", |b| {
        b.status
            .as_ref()
            .is_some_and(|s| conditions::is_true(&s.conditions, READY))
    })
    .await;
    assert_eq!(
        rig.node_builds(&ns, "once").await.len(),
        1,
        "one NodeBuild: the restarted controller adopted it"
    );
    let agent_log = std::fs::read_to_string(rig.server.dir.join("agent-only.log")).unwrap_or_default();
    let solves = agent_log
        .lines()
        .filter(|l| l.contains("build started") && l.contains("once-1-1"))
        .count();
    assert_eq!(solves, 1, "BuildKit ran the build once:\n{agent_log}");
}

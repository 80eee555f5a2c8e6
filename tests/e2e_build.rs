//! ImageBuild end to end, from apply to outcome: kubectl as a user types it, kiln's controller
//! and agents as they run in production, a real apiserver and a real BuildKit (Docker's). No
//! mocks. What happens to a build after it starts (deletion, timeout, a new generation, TTL, its
//! namespace's deletion) is in `e2e_lifecycle.rs`.

mod support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kiln::api::ImageBuild;
use kiln::api::conditions::{self, READY};
use kiln::api::image_build::BuildPhase;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use support::e2e::{Rig, image_build_yaml, is_ready, is_stalled};
use tokio::sync::OnceCell;

const BUILD_WAIT: Duration = Duration::from_secs(90);

async fn rig() -> &'static Rig {
    static RIG: OnceCell<Rig> = OnceCell::const_new();
    RIG.get_or_init(|| Rig::start(&["node-a", "node-b"])).await
}

/// Runs a shell command line as a user would type it, with the rig's kubeconfig.
fn sh(rig: &Rig, line: &str) -> (bool, String) {
    let out = Command::new("bash")
        .args(["-c", line])
        .env("KUBECONFIG", rig.server.kubeconfig())
        .output()
        .expect("bash");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn kubectl_apply_and_wait_builds_the_image_on_the_node() {
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "ok").await;
    let marker = format!("hello from {ns}");
    let url = rig.context(&ns, &[("hello.txt", marker.as_bytes())]);
    let spec = json!({
        "image": format!("kiln.local/{ns}/hello:v1"),
        "source": {"http": {"url": url}},
        "dockerfileInline": "FROM kiln-test/busybox:latest\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt\n",
    });
    let file = rig.server.dir.join(format!("{ns}-build.yaml"));
    std::fs::write(&file, image_build_yaml("hello", spec)).expect("write manifest");

    let line = format!(
        "kubectl apply -n {ns} -f {} && kubectl wait -n {ns} --for=condition=Ready imagebuild/hello --timeout=90s",
        file.display()
    );
    let (ok, out) = sh(rig, &line);
    assert!(
        ok,
        "kubectl apply && kubectl wait failed:\n{out}\n{}",
        rig.diagnostics()
    );

    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    let build = api.get("hello").await.expect("build");
    let status = build.status.expect("status");
    assert_eq!(status.phase, Some(BuildPhase::Succeeded));
    assert_eq!(status.observed_generation, Some(1));
    let digest = status.digest.clone().expect("digest in status");
    let in_store = rig
        .docker
        .image_id(&format!("kiln.local/{ns}/hello:v1"))
        .expect("image in the node's store");
    assert_eq!(
        digest,
        in_store.trim(),
        "status digest is the image in the node's store"
    );
    let file = rig
        .docker
        .image_file(&format!("kiln.local/{ns}/hello:v1"), "hello.txt")
        .expect("file in image");
    assert_eq!(file, marker.as_bytes());
    assert_eq!(status.nodes.len(), 1);

    let (_, printed) = sh(rig, &format!("kubectl get ib -n {ns}"));
    assert!(
        printed.contains("Succeeded") && printed.contains(&digest[7..19]),
        "{printed}"
    );

    let events: Api<Event> = Api::namespaced(client, &ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    // A first attempt that succeeds is told by its status alone: events are API writes, and
    // only what needs a person's attention (failures, retries) earns one.
    assert!(reasons.is_empty(), "no events for a plain success: {reasons:?}");
    let metrics = rig
        .controller
        .lock()
        .expect("lock")
        .as_ref()
        .and_then(|c| c.get("/metrics"))
        .unwrap_or_default();
    for family in [
        "kiln_builds_total{result=\"succeeded\"}",
        "kiln_dispatch_latency_seconds_count",
        "kiln_build_duration_seconds_count",
    ] {
        assert!(metrics.contains(family), "{family} in /metrics:\n{metrics}");
    }
}

#[tokio::test]
async fn a_failing_step_stalls_with_the_step_exit_code_and_log_tail() {
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "fail").await;
    let url = rig.context(&ns, &[("x", b"x")]);
    let spec = json!({
        "image": format!("kiln.local/{ns}/broken:v1"),
        "source": {"http": {"url": url}},
        "dockerfileInline": "FROM kiln-test/busybox:latest\nRUN echo about to fail && exit 3\n",
        "backoffLimit": 1,
    });
    let file = rig.server.dir.join(format!("{ns}-build.yaml"));
    std::fs::write(&file, image_build_yaml("broken", spec)).expect("write manifest");
    let line = format!(
        "kubectl apply -n {ns} -f {} && kubectl wait -n {ns} --for=condition=Stalled imagebuild/broken --timeout=90s",
        file.display()
    );
    let (ok, out) = sh(rig, &line);
    assert!(
        ok,
        "waiting on Stalled returns once the build gave up:\n{out}\n{}",
        rig.diagnostics()
    );

    let build = rig.wait_for(&ns, "broken", BUILD_WAIT, "Stalled", is_stalled).await;
    let status = build.status.expect("status");
    assert_eq!(status.phase, Some(BuildPhase::Failed));
    assert!(!conditions::is_true(&status.conditions, READY));
    assert_eq!(status.reason.as_deref(), Some("StepFailed"));
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("exit code: 3") || message.contains("exit code 3"),
        "{message}"
    );
    assert!(
        message.contains("about to fail"),
        "the log tail is in the message: {message}"
    );
    assert_eq!(
        rig.node_builds(&ns, "broken").await.len(),
        2,
        "one attempt plus backoffLimit 1 retry, no more"
    );
    assert_eq!(status.failed_attempts, Some(2));
}

#[tokio::test]
async fn all_nodes_builds_on_every_node_including_one_that_joins_later() {
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "all").await;
    let url = rig.context(&ns, &[("a.txt", b"a")]);
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "everywhere"}, "spec": {
        "image": format!("kiln.local/{ns}/all:v1"),
        "source": {"http": {"url": url}},
        "dockerfileInline": "FROM scratch\nCOPY a.txt /a.txt\n",
        "placement": {"allNodes": true},
    }});
    api.patch("everywhere", &PatchParams::apply("test"), &Patch::Apply(&build))
        .await
        .expect("apply");
    let done = rig.wait_for(&ns, "everywhere", BUILD_WAIT, "Ready", is_ready).await;
    let status = done.status.expect("status");
    let nodes: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    // Every ready builder (other tests may add nodes to the pool meanwhile).
    assert!(nodes.contains(&"node-a") && nodes.contains(&"node-b"), "{nodes:?}");
    assert!(status.nodes.iter().all(|n| n.digest.is_some()), "{:?}", status.nodes);
    let one_per_node = |nbs: &[kiln::api::NodeBuild], nodes: &[&str]| {
        for node in nodes {
            let n = nbs.iter().filter(|nb| nb.spec.node_name == *node).count();
            assert_eq!(n, 1, "one NodeBuild on {node}: {nbs:?}");
        }
    };
    one_per_node(&rig.node_builds(&ns, "everywhere").await, &nodes);

    // A node whose builder turns ready later gets the image too: "every node" keeps meaning it.
    let joined = format!("join-{ns}");
    rig.add_node(&client, &joined).await;
    rig.start_agent(&joined);
    let done = rig
        .wait_for(&ns, "everywhere", BUILD_WAIT, "Ready on the joined node", |b| {
            is_ready(b)
                && b.status
                    .as_ref()
                    .is_some_and(|s| s.nodes.iter().any(|n| n.name == joined && n.digest.is_some()))
        })
        .await;
    let status = done.status.expect("status");
    let nodes: Vec<&str> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    one_per_node(&rig.node_builds(&ns, "everywhere").await, &nodes);
    // The joined builder stays: stopping it would leave a node other tests' builds may be
    // scheduled to until its heartbeat expires.
}

#[tokio::test]
async fn a_node_without_a_builder_is_unschedulable_until_its_agent_starts() {
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "pin").await;
    let node = format!("late-{ns}");
    rig.add_node(&client, &node).await;
    let url = rig.context(&ns, &[("p.txt", b"p")]);
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "pinned"}, "spec": {
        "image": format!("kiln.local/{ns}/pinned:v1"),
        "source": {"http": {"url": url}},
        "dockerfileInline": "FROM scratch\nCOPY p.txt /p.txt\n",
        "placement": {"nodeName": node},
    }});
    api.patch("pinned", &PatchParams::apply("test"), &Patch::Apply(&build))
        .await
        .expect("apply");
    let waiting = rig
        .wait_for(&ns, "pinned", Duration::from_secs(30), "Unschedulable", |b| {
            b.status
                .as_ref()
                .is_some_and(|s| s.reason.as_deref() == Some("Unschedulable"))
        })
        .await;
    let reconciling = conditions::find(&waiting.status.as_ref().expect("status").conditions, "Reconciling")
        .cloned()
        .expect("Reconciling");
    assert_eq!(
        (reconciling.status.as_str(), reconciling.reason.as_str()),
        ("True", "Unschedulable")
    );
    assert!(reconciling.message.contains(&node), "{}", reconciling.message);
    rig.start_agent(&node);
    let done = rig.wait_for(&ns, "pinned", BUILD_WAIT, "Ready", is_ready).await;
    assert_eq!(done.status.expect("status").nodes[0].name, node);
}

/// Build secrets reach the build through a grant that exists only while the build runs: the
/// agents hold no right to Secrets of their own, so before (and after) the build the agent's
/// identity is refused the Secret; during it the RUN step sees the value; the value is in no
/// layer of the image.
#[tokio::test]
async fn agents_read_a_builds_secrets_only_while_it_runs() {
    use k8s_openapi::api::core::v1::Secret;
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "secrets").await;
    let value = format!("s3cr3t-{}", &ns[ns.len() - 8..]);
    rig.server.apply_manifests(
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token", "namespace": &ns},
                "stringData": {"value": &value}})
        .to_string(),
    );
    let agent = rig
        .server
        .client_as_service_account(support::e2e::NS, "kiln-agent")
        .await;
    let as_agent: Api<Secret> = Api::namespaced(agent, &ns);
    let refused = |r: Result<Secret, kube::Error>| matches!(r, Err(kube::Error::Api(e)) if e.code == 403);
    assert!(
        refused(as_agent.get("token").await),
        "no build references it: the agent is refused"
    );

    let url = rig.context(&ns, &[("x", b"x")]);
    let spec = json!({
        "image": format!("kiln.local/{ns}/secret:v1"),
        "source": {"http": {"url": url}},
        "dockerfileInline": format!(
            "FROM kiln-test/busybox:latest\nRUN --mount=type=secret,id=tok test \"$(cat /run/secrets/tok)\" = \"{value}\" && echo ok > /ok\n"
        ),
        "secrets": [{"id": "tok", "secretKeyRef": {"name": "token", "key": "value"}}],
        "backoffLimit": 0,
    });
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
                       "metadata": {"name": "withsecret", "namespace": &ns}, "spec": spec});
    rig.server.apply_manifests(&build.to_string());
    let built = rig
        .wait_for(&ns, "withsecret", BUILD_WAIT, "Ready or Stalled", |b| {
            is_ready(b) || is_stalled(b)
        })
        .await;
    assert!(
        is_ready(&built),
        "the RUN step saw the value: {:?}\n{}",
        built.status,
        rig.diagnostics()
    );
    let layers = rig.docker.image_export(&format!("kiln.local/{ns}/secret:v1"));
    assert!(
        !layers
            .iter()
            .any(|(_, data)| String::from_utf8_lossy(data).contains(&value)),
        "the value is in no file of the image"
    );
    support::kiln::eventually(Duration::from_secs(20), "the grant to be revoked", || async {
        refused(as_agent.get("token").await).then_some(())
    })
    .await;
}

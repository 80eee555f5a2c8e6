//! The image-name policy end to end: tenants (each a namespace with its own developer identity)
//! apply ImageBuilds with kubectl; kiln's controller and agents, a real apiserver and a real
//! BuildKit (Docker's) decide what reaches the node's image store. A refused name leaves the
//! image already stored under it untouched, compared by image ID.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kiln::api::conditions::{self, READY, STALLED};
use kiln::api::node_build::{NodeBuild, NodeBuildPhase};
use kiln::api::{BuilderPool, ImageBuild};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::e2e::{POOL, Rig, image_build_yaml};
use tokio::sync::OnceCell;

const BUILD_WAIT: Duration = Duration::from_secs(90);
/// The busybox the rig's Docker holds; the tests give it the name a tenant must not take.
const BUSYBOX: &str = "kiln-test/busybox:latest";

async fn rig() -> &'static Rig {
    static RIG: OnceCell<Rig> = OnceCell::const_new();
    RIG.get_or_init(|| Rig::start(&["node-a"])).await
}

/// The tests share the pool, and one of them changes its policy: they take turns.
static POLICY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A tenant: a namespace whose developer may build there (kiln's developer role) and nothing
/// more; returns the namespace and that developer's kubeconfig.
async fn tenant(rig: &Rig, prefix: &str) -> (String, PathBuf) {
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, prefix).await;
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "dev-builds", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kiln-developer"},
        "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": ns}]});
    rig.server.apply_manifests(&binding.to_string());
    let kubeconfig = rig.server.service_account_kubeconfig(&ns, "dev").await;
    (ns, kubeconfig)
}

/// `kubectl apply` of one ImageBuild as the tenant; panics if the apiserver refuses it.
fn apply_as(rig: &Rig, kubeconfig: &Path, ns: &str, name: &str, image: &str, marker: &str) {
    let url = rig.context(&format!("{ns}-{name}"), &[("marker.txt", marker.as_bytes())]);
    let spec = json!({"image": image, "source": {"http": {"url": url}},
                      "dockerfileInline": format!("FROM {BUSYBOX}\nCOPY marker.txt /marker.txt\n")});
    let file = rig.server.dir.join(format!("{ns}-{name}.yaml"));
    std::fs::write(&file, image_build_yaml(name, spec)).expect("write manifest");
    let out = Command::new("kubectl")
        .args(["apply", "-n", ns, "-f"])
        .arg(&file)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl apply as the tenant: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn condition<'a>(
    b: &'a ImageBuild,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    b.status.as_ref().and_then(|s| conditions::find(&s.conditions, type_))
}

fn refused(b: &ImageBuild) -> bool {
    condition(b, STALLED).is_some_and(|c| c.status == "True" && c.reason == "ImageNotAllowed")
}

fn ready(b: &ImageBuild) -> bool {
    b.status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, READY))
}

/// Waits until the build is refused; checks that it stays refused with nothing dispatched.
async fn assert_refused(rig: &Rig, ns: &str, name: &str, naming: &[&str]) -> String {
    let build = rig
        .wait_for(ns, name, BUILD_WAIT, "Stalled/ImageNotAllowed", refused)
        .await;
    let message = condition(&build, STALLED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    for part in naming {
        assert!(message.contains(part), "the refusal names {part:?}: {message}");
    }
    assert!(!ready(&build), "a refused build is not Ready");
    assert!(
        rig.node_builds(ns, name).await.is_empty(),
        "nothing was dispatched for {ns}/{name}"
    );
    message
}

#[tokio::test]
async fn tenants_build_only_their_own_names_and_a_refused_name_keeps_its_image() {
    let _turn = POLICY.lock().await;
    let rig = rig().await;
    let client = rig.client().await;
    let (a, a_config) = tenant(rig, "tenant-a").await;
    let (b, b_config) = tenant(rig, "tenant-b").await;

    // Tenant B builds under its own prefix: allowed by the default policy.
    let b_image = format!("kiln.local/{b}/app:v1");
    apply_as(rig, &b_config, &b, "app", &b_image, "tenant b");
    rig.wait_for(&b, "app", BUILD_WAIT, "Ready", ready).await;
    let b_id = rig.docker.image_id(&b_image).expect("tenant B's image is in the store");

    // An image the node already runs under a Docker Hub name.
    let (ok, _, err) = rig.docker.docker(&["tag", BUSYBOX, "busybox:latest"]);
    assert!(ok, "docker tag: {err}");
    let hub_id = rig
        .docker
        .image_id("docker.io/library/busybox:latest")
        .expect("busybox");

    // Tenant A may take neither.
    apply_as(rig, &a_config, &a, "hub", "busybox", "tenant a");
    let message = assert_refused(
        rig,
        &a,
        "hub",
        &[
            "docker.io/library/busybox:latest",
            &format!("kiln.local/{a}/**"),
            "spec.allowedImages",
        ],
    )
    .await;
    assert!(message.contains("default policy"), "{message}");
    apply_as(rig, &a_config, &a, "squat", &b_image, "tenant a");
    assert_refused(rig, &a, "squat", &[&b_image]).await;

    // A Warning event says why, where `kubectl describe` shows it.
    let events: Api<Event> = Api::namespaced(client.clone(), &a);
    support::kiln::eventually(Duration::from_secs(30), "an ImageNotAllowed event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ImageNotAllowed") && e.type_.as_deref() == Some("Warning"))
            .then_some(())
    })
    .await;

    // Under its own prefix tenant A builds.
    let a_image = format!("kiln.local/{a}/app:v1");
    apply_as(rig, &a_config, &a, "own", &a_image, "tenant a");
    rig.wait_for(&a, "own", BUILD_WAIT, "Ready", ready).await;
    let a_file = rig.docker.image_file(&a_image, "marker.txt");
    assert_eq!(
        a_file.as_deref(),
        Some(&b"tenant a"[..]),
        "tenant A's own image holds its file"
    );

    // A NodeBuild made by hand (no controller in the way) with tenant B's name: the agent
    // refuses it before building.
    let by_hand = hand_made_node_build(rig, &a, &b_image).await;
    assert_eq!(by_hand.0, Some(NodeBuildPhase::Failed));
    assert_eq!(by_hand.1.as_deref(), Some("ImageNotAllowed"), "{:?}", by_hand.2);
    assert!(
        by_hand
            .2
            .as_deref()
            .unwrap_or_default()
            .contains("refused by the agent")
    );

    assert_eq!(
        rig.docker.image_id(&b_image),
        Some(b_id),
        "tenant B's image is untouched"
    );
    assert_eq!(
        rig.docker.image_id("docker.io/library/busybox:latest"),
        Some(hub_id),
        "busybox is untouched"
    );
}

/// Creates a NodeBuild for node-a directly, as an admin, and waits for its outcome: phase,
/// reason, message.
async fn hand_made_node_build(
    rig: &Rig,
    ns: &str,
    image: &str,
) -> (Option<NodeBuildPhase>, Option<String>, Option<String>) {
    let url = rig.context(&format!("{ns}-by-hand"), &[("marker.txt", b"by hand")]);
    let nb: NodeBuild = serde_json::from_value(json!({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "NodeBuild",
        "metadata": {"name": "by-hand", "namespace": ns,
                     "labels": {"kiln.dev/node": "node-a", "kiln.dev/pool": POOL, "kiln.dev/image-build": "by-hand"}},
        "spec": {"nodeName": "node-a", "pool": POOL, "imageBuild": "by-hand", "generation": 1, "attempt": 1,
                 "build": {"image": image, "source": {"http": {"url": url}},
                           "dockerfileInline": format!("FROM {BUSYBOX}\nCOPY marker.txt /marker.txt\n")}}}))
    .expect("NodeBuild");
    let api: Api<NodeBuild> = Api::namespaced(rig.client().await, ns);
    api.create(&PostParams::default(), &nb).await.expect("create NodeBuild");
    support::kiln::eventually(BUILD_WAIT, "the agent's outcome of the hand-made NodeBuild", || async {
        let nb = api.get("by-hand").await.ok()?;
        let status = nb.status?;
        status
            .phase
            .is_some_and(NodeBuildPhase::is_finished)
            .then_some((status.phase, status.reason, status.message))
    })
    .await
}

/// An admin widens the pool's policy: the refused build goes on by itself, and a rule that
/// selects namespaces by label applies to a namespace with that label only.
#[tokio::test]
async fn a_policy_change_frees_the_builds_it_now_allows() {
    let _turn = POLICY.lock().await;
    let rig = rig().await;
    let client = rig.client().await;
    let (c, c_config) = tenant(rig, "tenant-c").await;
    let (d, d_config) = tenant(rig, "tenant-d").await;
    let (e, e_config) = tenant(rig, "tenant-e").await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let label = json!({"metadata": {"labels": {"kiln.dev/base-images": "true"}}});
    namespaces
        .patch(&d, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("label namespace");

    let shared = format!("kiln.local/shared-{c}/tool:v1");
    apply_as(rig, &c_config, &c, "tool", &shared, "shared tool");
    assert_refused(rig, &c, "tool", &[&shared]).await;

    let pools: Api<BuilderPool> = Api::all(client.clone());
    let policy = json!({"spec": {"allowedImages": [
        {"patterns": ["kiln.local/{{namespace}}/**"]},
        {"namespaces": [c], "patterns": [format!("kiln.local/shared-{c}/**")]},
        {"namespaceSelector": {"matchLabels": {"kiln.dev/base-images": "true"}}, "patterns": [format!("kiln.local/base-{d}/*:*")]},
    ]}});
    pools
        .patch(POOL, &PatchParams::default(), &Patch::Merge(&policy))
        .await
        .expect("patch the pool's policy");
    let freed = rig
        .wait_for(&c, "tool", BUILD_WAIT, "Ready after the policy change", ready)
        .await;
    assert!(
        condition(&freed, STALLED).is_none_or(|s| s.status != "True"),
        "no longer Stalled: {:?}",
        freed.status
    );

    // By label: d has it, e does not.
    let base = |ns: &str| format!("kiln.local/base-{d}/os:{ns}");
    apply_as(rig, &d_config, &d, "base", &base(&d), "base d");
    rig.wait_for(&d, "base", BUILD_WAIT, "Ready", ready).await;
    apply_as(rig, &e_config, &e, "base", &base(&e), "base e");
    assert_refused(rig, &e, "base", &["spec.allowedImages[0]"]).await;
    assert!(
        rig.docker.image_id(&base(&e)).is_none(),
        "nothing was stored for tenant E"
    );

    // Back to the default for the other test.
    let reset = json!({"spec": {"allowedImages": null}});
    pools
        .patch(POOL, &PatchParams::default(), &Patch::Merge(&reset))
        .await
        .expect("reset the pool's policy");
}

/// A pod bound to node-a, created as an admin (no kubelet here: it stays Pending, which is
/// live all the same).
async fn pod_on_node(rig: &Rig, ns: &str, name: &str, image: &str) {
    let pods: Api<Pod> = Api::namespaced(rig.client().await, ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": image}]}}))
    .expect("Pod");
    pods.create(&PostParams::default(), &pod).await.expect("create Pod");
}

/// Tenant F's name is allowed by the policy, but while a pod of tenant G on the node runs it,
/// the agent does not overwrite it; F's own pods do not stop it, nor does G's pod once it names
/// the image by digest.
#[tokio::test]
async fn a_name_another_namespaces_pod_uses_on_the_node_is_not_overwritten() {
    let _turn = POLICY.lock().await;
    let rig = rig().await;
    let (f, f_config) = tenant(rig, "tenant-f").await;
    let (g, _) = tenant(rig, "tenant-g").await;
    let image = format!("kiln.local/{f}/web:v1");

    pod_on_node(rig, &f, "own-web", &image).await;
    apply_as(rig, &f_config, &f, "web-1", &image, "one");
    let built = rig.wait_for(&f, "web-1", BUILD_WAIT, "Ready", ready).await;
    let first = rig.docker.image_id(&image).expect("F's image is in the store");

    pod_on_node(rig, &g, "borrower", &image).await;
    apply_as(rig, &f_config, &f, "web-2", &image, "two");
    let refused_build = rig
        .wait_for(&f, "web-2", BUILD_WAIT, "Stalled/ImageNotAllowed", refused)
        .await;
    let message = condition(&refused_build, STALLED)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    for part in [&format!("{g}/borrower"), "node-a", "by digest", "refused by the agent"] {
        assert!(message.contains(part), "the refusal names {part:?}: {message}");
    }
    assert_eq!(
        rig.docker.image_id(&image).as_deref(),
        Some(first.as_str()),
        "the image G runs is untouched"
    );
    assert_eq!(
        rig.docker.image_file(&image, "marker.txt").as_deref(),
        Some(&b"one"[..])
    );

    // G pins what it runs; F's next build goes ahead.
    let digest = built.status.and_then(|s| s.digest).expect("status.digest");
    let pinned = json!({"spec": {"containers": [{"name": "app", "image": format!("kiln.local/{f}/web@{digest}")}]}});
    let pods: Api<Pod> = Api::namespaced(rig.client().await, &g);
    pods.patch("borrower", &PatchParams::default(), &Patch::Strategic(&pinned))
        .await
        .expect("pin the pod's image by digest");
    apply_as(rig, &f_config, &f, "web-3", &image, "three");
    rig.wait_for(&f, "web-3", BUILD_WAIT, "Ready", ready).await;
    assert_eq!(
        rig.docker.image_file(&image, "marker.txt").as_deref(),
        Some(&b"three"[..])
    );
}

//! Built images over their lifetime: the agent notices when one leaves its node's store (here
//! `docker rmi`, as the kubelet's image GC or `crictl rmi` would), the build stops being Ready
//! with reason `ImageMissing` naming the node, and `spec.restore` decides what follows:
//! `Rebuild` (the default) builds it on that node again, `Never` only reports it. Real
//! controller and agent, real apiserver, real BuildKit (Docker's).

mod support;

use std::time::Duration;

use kiln::api::ImageBuild;
use kiln::api::conditions::{self, READY, STALLED};
use serde_json::json;
use support::e2e::{Rig, Tuning};
use tokio::sync::OnceCell;

const BUILD_WAIT: Duration = Duration::from_secs(90);
const NODE: &str = "presence-a";

async fn rig() -> &'static Rig {
    static RIG: OnceCell<Rig> = OnceCell::const_new();
    RIG.get_or_init(|| {
        let tuning = Tuning {
            agent: vec!["--presence-interval-seconds=1".into()],
            ..Default::default()
        };
        Rig::start_tuned(&[NODE], tuning)
    })
    .await
}

fn is(b: &ImageBuild, type_: &str) -> bool {
    b.status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, type_))
}

fn reason(b: &ImageBuild) -> Option<&str> {
    b.status.as_ref()?.reason.as_deref()
}

fn attempt(b: &ImageBuild) -> Option<i32> {
    b.status.as_ref()?.nodes.first()?.attempt
}

/// Applies a build of `image` holding `marker.txt`, and waits until it is Ready.
async fn built(rig: &Rig, ns: &str, name: &str, image: &str, restore: Option<&str>) -> ImageBuild {
    let url = rig.context(&format!("{ns}-{name}"), &[("marker.txt", name.as_bytes())]);
    let mut spec = json!({"image": image, "source": {"http": {"url": url}},
        "dockerfileInline": "FROM kiln-test/busybox:latest\nCOPY marker.txt /marker.txt\n"});
    if let Some(r) = restore {
        spec["restore"] = json!(r);
    }
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": name, "namespace": ns}, "spec": spec});
    rig.server.apply_manifests(&build.to_string());
    rig.wait_for(ns, name, BUILD_WAIT, "Ready", |b| is(b, READY)).await
}

/// `kiln images -A -o json` as the admin, parsed; the row of build `ns/name`.
fn image_row(rig: &Rig, ns: &str, name: &str) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["images", "-A", "-o", "json", "--node", NODE])
        .env("KUBECONFIG", rig.server.kubeconfig())
        .output()
        .expect("run kiln images");
    assert!(
        out.status.success(),
        "kiln images: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("kiln images -o json parses");
    let build = format!("{ns}/{name}");
    rows.into_iter()
        .find(|r| r["build"] == build.as_str())
        .unwrap_or_else(|| panic!("no row for {build}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn remove(rig: &Rig, image: &str) {
    let (ok, _, err) = rig.docker.docker(&["rmi", image]);
    assert!(ok, "docker rmi {image}: {err}");
}

#[tokio::test]
async fn a_lost_image_is_built_again_on_its_node() {
    let rig = rig().await;
    let ns = rig.server.namespace(&rig.client().await, "restore").await;
    let image = format!("kiln.local/{ns}/app:v1");
    let before = built(rig, &ns, "app", &image, None).await;
    let digest = before.status.and_then(|s| s.digest).expect("status.digest");
    assert_eq!(rig.docker.image_id(&image).as_ref(), Some(&digest));

    remove(rig, &image);
    let restored = rig
        .wait_for(&ns, "app", BUILD_WAIT, "Ready again, by a second attempt", |b| {
            is(b, READY) && attempt(b) == Some(2)
        })
        .await;
    let status = restored.status.expect("status");
    let node = status.nodes.first().expect("a node");
    assert_eq!(node.name, NODE, "rebuilt where it was lost");
    assert!(node.missing_since.is_none(), "{node:?}");
    assert_eq!(rig.docker.image_file(&image, "marker.txt"), Some(b"app".to_vec()));
    assert_eq!(
        rig.docker.image_id(&image),
        status.digest,
        "status.digest is the restored image"
    );
    assert_eq!(
        status.digest.as_ref(),
        Some(&digest),
        "rebuilt from cache: the same image"
    );
    assert_eq!(status.failed_attempts, None, "a lost image is no failed attempt");
}

#[tokio::test]
async fn with_restore_never_a_lost_image_is_reported_and_stays_lost() {
    let rig = rig().await;
    let ns = rig.server.namespace(&rig.client().await, "never").await;
    let image = format!("kiln.local/{ns}/app:v1");
    built(rig, &ns, "app", &image, Some("Never")).await;

    // `kiln images` lists it on its node, with the pod there that uses it.
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"nodeName": NODE, "containers": [{"name": "web", "image": image}]}}))
    .expect("pod");
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(rig.client().await, &ns);
    pods.create(&Default::default(), &pod).await.expect("create pod");
    let row = image_row(rig, &ns, "app");
    assert_eq!(row["node"], NODE);
    assert_eq!(row["names"][0], image.as_str());
    assert_eq!(row["present"], true);
    assert_eq!(row["pods"], json!([format!("{ns}/web")]), "{row}");
    let size = rig
        .docker
        .docker(&["image", "inspect", "--format", "{{.Size}}", &image])
        .1;
    assert_eq!(row["size"].to_string(), size.trim(), "the size Docker reports: {row}");
    assert_eq!(row["pinned"], serde_json::Value::Null, "not asked to pin: {row}");

    remove(rig, &image);
    let lost = rig
        .wait_for(&ns, "app", BUILD_WAIT, "Stalled/ImageMissing", |b| {
            is(b, STALLED) && reason(b) == Some("ImageMissing")
        })
        .await;
    assert!(!is(&lost, READY));
    let status = lost.status.expect("status");
    let message = status.message.clone().unwrap_or_default();
    assert!(message.contains(NODE) && message.contains("restore"), "{message}");
    assert!(
        status.nodes.first().is_some_and(|n| n.missing_since.is_some()),
        "{:?}",
        status.nodes
    );

    // A few checks later: still reported, nothing rebuilt.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let builds: kube::Api<ImageBuild> = kube::Api::namespaced(rig.client().await, &ns);
    let later = builds.get("app").await.expect("get");
    assert_eq!(reason(&later), Some("ImageMissing"));
    assert_eq!(rig.node_builds(&ns, "app").await.len(), 1, "no second attempt");
    assert!(rig.docker.image_id(&image).is_none(), "still gone");
    let row = image_row(rig, &ns, "app");
    assert_eq!(row["present"], false, "{row}");
    assert!(row["missingSince"].is_string(), "{row}");
}

/// The events of `ns` with `reason`, as (type, message).
async fn events(rig: &Rig, ns: &str, reason: &str) -> Vec<(String, String)> {
    let api: kube::Api<k8s_openapi::api::core::v1::Event> = kube::Api::namespaced(rig.client().await, ns);
    api.list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| (e.type_.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

async fn event(rig: &Rig, ns: &str, reason: &str) -> (String, String) {
    support::kiln::eventually(BUILD_WAIT, &format!("a {reason} event"), || async {
        events(rig, ns, reason).await.into_iter().next()
    })
    .await
}

#[tokio::test]
async fn cleanup_delete_removes_the_image_unless_a_pod_uses_it() {
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "cleanup").await;
    let builds: kube::Api<ImageBuild> = kube::Api::namespaced(client.clone(), &ns);

    // No pod uses it: deleting the build removes the image from the node.
    let gone = format!("kiln.local/{ns}/gone:v1");
    built(rig, &ns, "gone", &gone, None).await;
    builds
        .patch(
            "gone",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"cleanup": "Delete"}})),
        )
        .await
        .expect("set cleanup");
    rig.wait_for(&ns, "gone", BUILD_WAIT, "Ready at generation 2", |b| {
        is(b, READY) && b.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
    })
    .await;
    assert!(rig.docker.image_id(&gone).is_some());
    builds.delete("gone", &Default::default()).await.expect("delete");
    rig.wait_gone(&ns, "gone", BUILD_WAIT).await;
    assert!(
        rig.docker.image_id(&gone).is_none(),
        "{gone} is still in Docker's store"
    );
    let (kind, message) = event(rig, &ns, "ImageRemoved").await;
    assert_eq!(kind, "Normal");
    assert!(message.contains(&gone) && message.contains(NODE), "{message}");

    // A pod on the node uses it: the image stays, and a Warning says which pod.
    let used = format!("kiln.local/{ns}/used:v1");
    let url = rig.context(&format!("{ns}-used"), &[("marker.txt", b"used")]);
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": "used", "namespace": ns},
        "spec": {"image": used, "source": {"http": {"url": url}}, "cleanup": "Delete", "pin": true,
                 "dockerfileInline": "FROM kiln-test/busybox:latest\nCOPY marker.txt /marker.txt\n"}});
    rig.server.apply_manifests(&build.to_string());
    let ready = rig.wait_for(&ns, "used", BUILD_WAIT, "Ready", |b| is(b, READY)).await;
    // Docker's store cannot pin: the node's result says so instead of pretending.
    let pin = ready
        .status
        .as_ref()
        .and_then(|s| s.nodes.first())
        .and_then(|n| n.pin.clone());
    let pin = pin.expect("status.nodes[].pin for spec.pin");
    assert_eq!(pin.state, kiln::api::node_build::PinState::Unsupported, "{pin:?}");
    assert!(pin.message.contains("Docker"), "{pin:?}");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "runner", "namespace": ns},
        "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": used}]}}))
    .expect("pod");
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client.clone(), &ns);
    pods.create(&Default::default(), &pod).await.expect("create pod");
    builds.delete("used", &Default::default()).await.expect("delete");
    rig.wait_gone(&ns, "used", BUILD_WAIT).await;
    assert!(rig.docker.image_id(&used).is_some(), "an image a pod uses was removed");
    let (kind, message) = event(rig, &ns, "ImageKept").await;
    assert_eq!(kind, "Warning");
    assert!(message.contains(&format!("{ns}/runner")), "{message}");
    assert!(
        events(rig, &ns, "ImageRemoved").await.len() == 1,
        "only the first build's image was removed"
    );
}

/// `kiln rmi`: an image no build names changes nothing (exit 2); an image two builds name is
/// removed through both, each reported, and both builds are gone (exit 0).
#[tokio::test]
async fn kiln_rmi_removes_an_image_and_the_builds_that_keep_it() {
    let rig = rig().await;
    let ns = rig.server.namespace(&rig.client().await, "rmi").await;
    let image = format!("kiln.local/{ns}/tool:v1");
    built(rig, &ns, "tool", &image, None).await;
    let kiln = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .args(["-n", &ns])
            .env("KUBECONFIG", rig.server.kubeconfig())
            .output()
            .expect("run kiln rmi")
    };

    let out = kiln(&["rmi", &format!("kiln.local/{ns}/other:v1")]);
    assert_eq!(out.status.code(), Some(2), "an image no build names");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no ImageBuild"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(rig.docker.image_id(&image).is_some(), "nothing changed");

    // A second build of the same recipe names the same image: rmi deletes both, waits for
    // both, and reports each.
    let url = rig.context(&format!("{ns}-tool"), &[("marker.txt", b"tool")]);
    let twin = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": "tool-twin", "namespace": &*ns},
        "spec": {"image": &image, "source": {"http": {"url": url}},
                 "dockerfileInline": "FROM kiln-test/busybox:latest\nCOPY marker.txt /marker.txt\n"}});
    rig.server.apply_manifests(&twin.to_string());
    rig.wait_for(&ns, "tool-twin", BUILD_WAIT, "Ready", |b| is(b, READY))
        .await;

    let out = kiln(&["rmi", &image, "-o", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let outcomes: serde_json::Value = serde_json::from_slice(&out.stdout).expect("kiln rmi -o json parses");
    let reported: Vec<(&str, &str)> = outcomes
        .as_array()
        .expect("a list of outcomes")
        .iter()
        .map(|o| {
            (
                o["build"].as_str().unwrap_or_default(),
                o["result"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        reported,
        [("tool", "ImageRemoved"), ("tool-twin", "ImageRemoved")],
        "{outcomes}"
    );
    assert!(
        rig.docker.image_id(&image).is_none(),
        "{image} is still in Docker's store"
    );
    let builds: kube::Api<ImageBuild> = kube::Api::namespaced(rig.client().await, &ns);
    for name in ["tool", "tool-twin"] {
        assert!(rig.node_builds(&ns, name).await.is_empty());
        assert!(builds.get_opt(name).await.expect("get").is_none(), "{name} is deleted");
    }
}

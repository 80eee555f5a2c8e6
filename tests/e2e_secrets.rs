//! Build secrets end to end, with the apiserver's audit log recording every request and response
//! body: a build uses a Secret of its own namespace, another names a Secret that exists only in
//! a different namespace; neither value appears in any object, event, kiln log, build log or
//! audit record.

mod support;

use std::path::Path;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kiln::api::ImageBuild;
use kiln::api::conditions::{self, READY, STALLED};
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::json;
use support::apiserver::{AUDIT_LOG, record_audit_log};
use support::e2e::Rig;
use tokio::sync::OnceCell;

const BUILD_WAIT: Duration = Duration::from_secs(90);

async fn rig() -> &'static Rig {
    static RIG: OnceCell<Rig> = OnceCell::const_new();
    RIG.get_or_init(|| async {
        record_audit_log();
        Rig::start(&["node-a"]).await
    })
    .await
}

async fn create_secret(client: &kube::Client, ns: &str, name: &str, value: &str) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some([("value".to_owned(), ByteString(value.as_bytes().to_vec()))].into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create Secret");
}

fn condition_true(b: &ImageBuild, type_: &str) -> bool {
    b.status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, type_))
}

/// Files under `dir` (not etcd's data, where the apiserver stores Secrets as they are) whose
/// bytes contain one of `needles`.
fn files_containing(dir: &Path, needles: &[&str], found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "etcd") {
                files_containing(&path, needles, found);
            }
        } else if let Ok(bytes) = std::fs::read(&path) {
            let text = String::from_utf8_lossy(&bytes);
            if needles.iter().any(|n| text.contains(n)) {
                found.push(path.display().to_string());
            }
        }
    }
}

#[tokio::test]
async fn secret_values_appear_in_no_object_log_or_audit_record() {
    use base64::Engine;
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "secrets").await;
    let other = rig.server.namespace(&client, "elsewhere").await;
    let ours = format!("ours-{}", uuid::Uuid::new_v4().simple());
    let theirs = format!("theirs-{}", uuid::Uuid::new_v4().simple());
    create_secret(&client, &ns, "token", &ours).await;
    create_secret(&client, &other, "theirs", &theirs).await;

    // The RUN step proves it saw the value by its hash: the value itself is nowhere in the spec.
    let hash = kiln::api::short_sha256(ours.as_bytes(), 32);
    let url = rig.context(&ns, &[("x", b"x")]);
    let spec = |secret: &str, image: &str| {
        json!({"image": image, "source": {"http": {"url": url}}, "backoffLimit": 0,
               "dockerfileInline": format!(
                   "FROM kiln-test/busybox:latest\nRUN --mount=type=secret,id=tok test \"$(sha256sum < /run/secrets/tok | cut -d' ' -f1)\" = {hash} && echo checked\n"),
               "secrets": [{"id": "tok", "secretKeyRef": {"name": secret, "key": "value"}}]})
    };
    let build = |name: &str, spec: serde_json::Value| {
        json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
               "metadata": {"name": name, "namespace": &ns}, "spec": spec})
        .to_string()
    };
    rig.server
        .apply_manifests(&build("uses-ours", spec("token", &format!("kiln.local/{ns}/ours:v1"))));
    rig.server.apply_manifests(&build(
        "names-theirs",
        spec("theirs", &format!("kiln.local/{ns}/theirs:v1")),
    ));

    let used = rig
        .wait_for(&ns, "uses-ours", BUILD_WAIT, "Ready or Stalled", |b| {
            condition_true(b, READY) || condition_true(b, STALLED)
        })
        .await;
    assert!(
        condition_true(&used, READY),
        "the RUN step saw the value: {:?}\n{}",
        used.status,
        rig.diagnostics()
    );
    let refused = rig
        .wait_for(&ns, "names-theirs", BUILD_WAIT, "Stalled", |b| {
            condition_true(b, STALLED)
        })
        .await;
    let reason = refused.status.as_ref().and_then(|s| s.reason.clone());
    assert_eq!(
        reason.as_deref(),
        Some("SecretNotFound"),
        "another namespace's Secret is not found from this one: {:?}",
        refused.status
    );

    // Nowhere: not in objects or events (the audit log holds every response body, and the API
    // is asked directly too), not in kiln's logs or build logs, not in the audit records.
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    let (ours_b64, theirs_b64) = (b64(&ours), b64(&theirs));
    let needles = [ours.as_str(), theirs.as_str(), ours_b64.as_str(), theirs_b64.as_str()];
    let audit = rig.server.dir.join(AUDIT_LOG);
    let records = std::fs::read_to_string(&audit).expect("the apiserver wrote its audit log");
    assert!(
        records.contains("\"resource\":\"imagebuilds\"") && records.contains("\"resource\":\"nodebuilds\""),
        "the audit log records kiln's objects"
    );
    assert!(
        records.contains("\"resource\":\"secrets\"") && records.contains("responseObject"),
        "the audit log records the agent's Secret reads and response bodies"
    );
    for kind in ["imagebuilds", "nodebuilds", "events", "leases"] {
        let (ok, out, err) = rig.server.kubectl(&["get", kind, "-A", "-o", "json"]);
        assert!(ok, "kubectl get {kind}: {err}");
        for needle in needles {
            assert!(!out.contains(needle), "a Secret's value is in the {kind}");
        }
    }
    let mut found = Vec::new();
    files_containing(&rig.server.dir, &needles, &mut found);
    assert!(found.is_empty(), "a Secret's value is in {found:?}");
}

//! GitOps health: `contrib/argocd/health.lua`, Argo CD's health check for ImageBuild, run by a
//! real Lua 5.1 (Argo CD runs it with gopher-lua, a Lua 5.1) against ImageBuilds exactly as the
//! apiserver returns them after a real kiln built them (controller, agent, Docker's BuildKit):
//! Ready is Healthy, Stalled is Degraded, a waiting build and an unobserved generation are
//! Progressing, each with kiln's reason in the message. Also: the argocd-cm snippet embeds the
//! same script, and the Argo CD and Flux recipes order the build before the app that runs it.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::e2e::Rig;
use tokio::sync::OnceCell;

const BUILD_WAIT: Duration = Duration::from_secs(90);
/// The argocd-cm key Argo CD (≥ 2.1) reads a health check for group kiln.dev, kind ImageBuild from.
const ARGOCD_KEY: &str = "resource.customizations.health.kiln.dev_ImageBuild";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// What Argo CD would show: the health status and its message.
#[derive(Debug)]
struct Health {
    status: String,
    message: String,
}

/// The Lua 5.1 interpreter (Debian's `lua5.1`, which `hack/test-env.sh` installs).
fn lua() -> &'static str {
    let found = Command::new("lua5.1")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`lua5.1` not found: run `make test-env` (hack/test-env.sh installs Debian's lua5.1)"
    );
    "lua5.1"
}

/// Evaluates `contrib/argocd/health.lua` for `obj` as Argo CD does: `obj` is a global table and
/// the script's return value is the health.
fn health(obj: &Value) -> Health {
    let script = repo("contrib/argocd/health.lua");
    let driver = format!(
        "obj = {}\nlocal hs = dofile({})\nassert(type(hs) == \"table\", \"health.lua returns a table\")\n\
         io.write(tostring(hs.status), \"\\n\", tostring(hs.message))\n",
        lua_value(obj),
        lua_string(&script.display().to_string()),
    );
    let mut child = Command::new(lua())
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lua5.1");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(driver.as_bytes())
        .expect("write the driver");
    let out = child.wait_with_output().expect("lua5.1 output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "health.lua failed for {obj}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, message) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    let health = Health {
        status: status.to_owned(),
        message: message.to_owned(),
    };
    assert!(
        ["Healthy", "Progressing", "Degraded", "Suspended", "Missing"].contains(&health.status.as_str()),
        "a status Argo CD knows: {health:?}"
    );
    eprintln!("health.lua: {} | {}", health.status, health.message);
    health
}

// JSON is turned into a Lua table constructor here rather than decoded by lua-cjson inside Lua:
// the test then needs only the interpreter, and the table is what Argo CD hands the script
// (objects and arrays become tables, numbers Lua numbers, null nil — cjson would give a
// `cjson.null` userdata instead of nil).
fn lua_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua_value).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A Lua string literal holding exactly the bytes of `s` (`\ddd` escapes, always three digits).
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
    out.push('"');
    out
}

const ARGOCD_CM_HEADER: &str = r"# Generated from contrib/argocd/health.lua (tests/gitops_health.rs checks it; to regenerate:
# KILN_BLESS=1 cargo test --test gitops_health argocd_cm). Merge it into Argo CD's argocd-cm:
#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file contrib/argocd/argocd-cm.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
";

/// `contrib/argocd/argocd-cm.yaml` as it must be: a header and health.lua, indented.
fn rendered_argocd_cm(script: &str) -> String {
    let mut out = String::from(ARGOCD_CM_HEADER);
    out.push_str(&format!("  {ARGOCD_KEY}: |\n"));
    for line in script.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out
}

#[test]
fn argocd_cm_embeds_exactly_health_lua() {
    let script = std::fs::read_to_string(repo("contrib/argocd/health.lua")).expect("health.lua");
    let path = repo("contrib/argocd/argocd-cm.yaml");
    let expected = rendered_argocd_cm(&script);
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&path, &expected).expect("write argocd-cm.yaml");
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "contrib/argocd/argocd-cm.yaml drifted from health.lua: run \
         `KILN_BLESS=1 cargo test --test gitops_health argocd_cm` and commit the result"
    );
    // What Argo CD reads back from the ConfigMap is the script, byte for byte.
    let cm: serde_yaml::Value = serde_yaml::from_str(&actual).expect("argocd-cm.yaml is YAML");
    assert_eq!(cm["data"][ARGOCD_KEY].as_str(), Some(script.as_str()));
}

#[test]
fn objects_kiln_has_not_fully_reported_on_get_a_clear_health() {
    let meta = json!({"name": "app", "namespace": "team", "generation": 1});
    let cases = [
        // Just created: no status at all.
        (
            json!({"metadata": meta}),
            "Progressing",
            "waiting for kiln to observe generation 1",
        ),
        (
            json!({"metadata": meta, "status": {"observedGeneration": 1, "conditions": []}}),
            "Progressing",
            "waiting for kiln",
        ),
        // An older kiln, or a status written by hand: phase Failed without Stalled.
        (
            json!({"metadata": meta, "status": {"observedGeneration": 1, "phase": "Failed",
                   "reason": "StepFailed", "message": "RUN make: exit code 2"}}),
            "Degraded",
            "StepFailed: RUN make: exit code 2",
        ),
        // containerd nodes report a manifest digest, and with it imageRef.
        (
            json!({"metadata": meta, "status": {"observedGeneration": 1, "phase": "Succeeded",
                   "imageRef": "example.com/app@sha256:3f1c0a9e2b4d", "shortDigest": "3f1c0a9e2b4d",
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded",
                                   "message": "built example.com/app:1 on node-a"}]}}),
            "Healthy",
            "built example.com/app:1 on node-a: example.com/app@sha256:3f1c0a9e2b4d",
        ),
    ];
    for (obj, status, message) in cases {
        let h = health(&obj);
        assert_eq!((h.status.as_str(), h.message.as_str()), (status, message), "{obj}");
    }
}

fn yaml_docs(path: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(repo(path)).expect(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML"))
        .collect()
}

/// The recipes apply the build before the app, the app asks for the image the build makes, and
/// the kubelet is not told to pull it; the ImageBuilds pass `kiln validate`.
#[test]
fn the_recipes_build_the_image_before_the_deployment_that_runs_it() {
    let container = |deploy: &serde_yaml::Value| deploy["spec"]["template"]["spec"]["containers"][0].clone();
    for (build, deploy) in [
        (
            "contrib/argocd/example/app/imagebuild.yaml",
            "contrib/argocd/example/app/deployment.yaml",
        ),
        (
            "contrib/flux/builds/imagebuild.yaml",
            "contrib/flux/app/deployment.yaml",
        ),
    ] {
        let (build, deploy) = (&yaml_docs(build)[0], &yaml_docs(deploy)[0]);
        let c = container(deploy);
        assert_eq!(
            c["image"], build["spec"]["image"],
            "the Deployment runs the built image"
        );
        assert!(
            matches!(c["imagePullPolicy"].as_str(), Some("IfNotPresent" | "Never")),
            "{c:?}"
        );
    }
    let wave = |path: &str| -> i64 {
        let doc = &yaml_docs(path)[0];
        doc["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]
            .as_str()
            .and_then(|w| w.parse().ok())
            .expect("a sync-wave annotation")
    };
    assert!(
        wave("contrib/argocd/example/app/imagebuild.yaml") < wave("contrib/argocd/example/app/deployment.yaml"),
        "Argo CD syncs the build in an earlier wave"
    );
    let flux = yaml_docs("contrib/flux/kustomizations.yaml");
    let (builds, app) = (&flux[0], &flux[1]);
    assert_eq!(
        builds["spec"]["wait"].as_bool(),
        Some(true),
        "Flux health-checks the builds"
    );
    assert!(
        builds["spec"]["timeout"].as_str().is_some(),
        "a timeout longer than a build"
    );
    assert_eq!(app["spec"]["dependsOn"][0]["name"], builds["metadata"]["name"]);
    assert_eq!(
        builds["spec"]["healthCheckExprs"][0]["kind"].as_str(),
        Some("ImageBuild")
    );

    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["validate", "-f"])
        .arg(repo("contrib/argocd/example/app/imagebuild.yaml"))
        .arg("-f")
        .arg(repo("contrib/flux/builds/imagebuild.yaml"))
        .output()
        .expect("run kiln validate");
    assert!(
        out.status.success(),
        "kiln validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn rig() -> &'static Rig {
    static RIG: OnceCell<Rig> = OnceCell::const_new();
    RIG.get_or_init(|| Rig::start(&["gitops-a"])).await
}

fn image_build(ns: &str, name: &str, spec: Value) -> String {
    json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
    .to_string()
}

/// The ImageBuild as the apiserver serves it (what Argo CD's cache holds), once `done` holds.
async fn object_when(rig: &Rig, ns: &str, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let client = rig.client().await;
    let path = format!("/apis/kiln.dev/v1alpha1/namespaces/{ns}/imagebuilds/{name}");
    let deadline = std::time::Instant::now() + BUILD_WAIT;
    loop {
        let request = http::Request::get(path.as_str()).body(Vec::new()).expect("request");
        if let Ok(text) = client.request_text(request).await
            && let Ok(obj) = serde_json::from_str::<Value>(&text)
            && done(&obj)
        {
            return obj;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what} of {ns}/{name}\n{}",
            rig.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn condition_true(obj: &Value, kind: &str) -> bool {
    obj["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == kind && c["status"] == "True"))
}

fn reason(obj: &Value) -> &str {
    obj["status"]["reason"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_built_image_is_healthy_and_its_next_generation_progressing_until_kiln_observes_it() {
    let rig = rig().await;
    let ns = rig.server.namespace(&rig.client().await, "gitops-ok").await;
    let url = rig.context(&ns, &[("a.txt", b"a")]);
    let spec = json!({"image": format!("kiln.local/{ns}/ok:v1"), "source": {"http": {"url": url}},
                      "dockerfileInline": "FROM scratch\nCOPY a.txt /a.txt\n"});
    rig.server.apply_manifests(&image_build(&ns, "ok", spec));
    let ready = object_when(rig, &ns, "ok", "Ready", |o| condition_true(o, "Ready")).await;

    let h = health(&ready);
    assert_eq!(h.status, "Healthy", "{h:?}\n{ready:#}");
    assert!(h.message.contains(&format!("built kiln.local/{ns}/ok:v1")), "{h:?}");
    // Docker nodes report the image ID (no imageRef); containerd nodes the pinned reference.
    let pinned = ready["status"]["imageRef"].as_str();
    let short = ready["status"]["shortDigest"].as_str().expect("shortDigest");
    assert!(h.message.contains(pinned.unwrap_or(short)), "{h:?}");

    // A spec change in git bumps metadata.generation; until kiln has seen it, the old Ready says
    // nothing about the new spec. The same real object, with only its generation bumped:
    let observed = ready["status"]["observedGeneration"]
        .as_i64()
        .expect("observedGeneration");
    assert_eq!(ready["metadata"]["generation"].as_i64(), Some(observed));
    let mut stale = ready.clone();
    stale["metadata"]["generation"] = json!(observed + 1);
    let h = health(&stale);
    assert_eq!(h.status, "Progressing", "{h:?}");
    assert!(
        h.message
            .contains(&format!("waiting for kiln to observe generation {}", observed + 1)),
        "{h:?}"
    );
}

#[tokio::test]
async fn a_failed_build_is_degraded_with_kilns_reason_and_the_step_output() {
    let rig = rig().await;
    let ns = rig.server.namespace(&rig.client().await, "gitops-fail").await;
    let url = rig.context(&ns, &[("x", b"x")]);
    let spec = json!({"image": format!("kiln.local/{ns}/broken:v1"), "source": {"http": {"url": url}},
                      "dockerfileInline": "FROM kiln-test/busybox:latest\nRUN echo about to fail && exit 3\n",
                      "backoffLimit": 0});
    rig.server.apply_manifests(&image_build(&ns, "broken", spec));
    let stalled = object_when(rig, &ns, "broken", "Stalled", |o| condition_true(o, "Stalled")).await;

    let h = health(&stalled);
    assert_eq!(h.status, "Degraded", "{h:?}\n{stalled:#}");
    assert!(h.message.starts_with("StepFailed: "), "kiln's reason first: {h:?}");
    assert!(
        h.message.contains("exit code") && h.message.contains("about to fail"),
        "the failed step and its output: {h:?}"
    );
}

#[tokio::test]
async fn builds_that_wait_are_progressing_and_say_what_they_wait_for() {
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "gitops-wait").await;

    // Pinned to a node that has no builder: Reconciling, Unschedulable.
    let node = format!("nobuilder-{ns}");
    rig.add_node(&client, &node).await;
    let url = rig.context(&ns, &[("p", b"p")]);
    let spec = json!({"image": format!("kiln.local/{ns}/pinned:v1"), "source": {"http": {"url": url}},
                      "dockerfileInline": "FROM scratch\nCOPY p /p\n", "placement": {"nodeName": node}});
    rig.server.apply_manifests(&image_build(&ns, "pinned", spec));
    let pinned = object_when(rig, &ns, "pinned", "Unschedulable", |o| reason(o) == "Unschedulable").await;
    assert!(condition_true(&pinned, "Reconciling"), "{pinned:#}");
    let h = health(&pinned);
    assert_eq!(h.status, "Progressing", "{h:?}");
    assert!(
        h.message.starts_with("Unschedulable: ") && h.message.contains(&node),
        "{h:?}"
    );

    // An upload source whose bytes never come (kiln build was interrupted): WaitingForUpload.
    let digest = format!("sha256:{}", "0".repeat(64));
    let spec = json!({"image": format!("kiln.local/{ns}/upload:v1"),
                      "source": {"upload": {"digest": digest, "size": 10}}, "dockerfileInline": "FROM scratch\n"});
    rig.server.apply_manifests(&image_build(&ns, "upload", spec));
    let waiting = object_when(rig, &ns, "upload", "WaitingForUpload", |o| {
        reason(o) == "WaitingForUpload"
    })
    .await;
    let h = health(&waiting);
    assert_eq!(h.status, "Progressing", "{h:?}\n{waiting:#}");
    assert!(h.message.starts_with("WaitingForUpload: "), "{h:?}");
}

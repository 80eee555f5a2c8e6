//! The Helm chart (`charts/kiln`), run through Helm's own engine (helm-python-sdk, Helm v4):
//! lint is clean; it renders with the defaults and with every value set; the schema rejects a
//! misspelt key and a wrong type; what it renders is exactly what kiln's own renderer makes
//! for the same values (`kiln manifests`, `kiln install`), so the two cannot drift; and every
//! object, and every file of `deploy/`, passes a server-side dry-run apply on a real apiserver.

mod support;

use kiln::deploy::{Install, Values};
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::helm::{helm, render as helm_render, repo};
use support::python::venv_python;

fn all_values() -> Value {
    let text = std::fs::read_to_string(repo("tests/helm/all-values.yaml")).expect("all-values.yaml");
    serde_yaml::from_str(&text).expect("YAML")
}

fn key(o: &Value) -> String {
    format!("{}/{}/{}", o["kind"], o["metadata"]["namespace"], o["metadata"]["name"])
}

/// The same objects, compared one by one (order aside), with what differs printed.
fn assert_same(helm: &[Value], ours: &[Value], case: &str) {
    let mut helm: Vec<&Value> = helm.iter().collect();
    let mut ours: Vec<&Value> = ours.iter().collect();
    helm.sort_by_key(|o| key(o));
    ours.sort_by_key(|o| key(o));
    let names = |v: &[&Value]| v.iter().map(|o| key(o)).collect::<Vec<_>>();
    assert_eq!(names(&helm), names(&ours), "{case}: the same objects");
    for (h, o) in helm.iter().zip(&ours) {
        assert_eq!(h, o, "{case}: {} differs between Helm and kiln's renderer", key(h));
    }
}

#[test]
fn the_chart_lints_clean_and_its_schema_rejects_typos_and_wrong_types() {
    let Some(python) = venv_python() else { return };
    let chart = repo("charts/kiln");
    let chart = chart.to_str().expect("path");
    let lint = helm(&python, &["lint", chart]);
    assert_eq!(lint["errors"], json!([]), "{lint}");
    let serious: Vec<&Value> = lint["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["severity"].as_i64().unwrap_or(0) >= 2)
        .collect();
    assert!(serious.is_empty(), "warnings or errors: {serious:?}");

    let valid = helm(&python, &["validate", chart, &all_values().to_string()]);
    assert_eq!(valid["ok"], true, "every documented value is accepted: {valid}");
    let typo = helm(&python, &["validate", chart, r#"{"controler": {"replicas": 2}}"#]);
    assert_eq!(typo["ok"], false);
    assert!(
        typo["error"].as_str().is_some_and(|e| e.contains("controler")),
        "{typo}"
    );
    let wrong = helm(&python, &["validate", chart, r#"{"controller": {"replicas": "two"}}"#]);
    assert_eq!(wrong["ok"], false);
    assert!(
        wrong["error"].as_str().is_some_and(|e| e.contains("replicas")),
        "{wrong}"
    );
    let nested = helm(
        &python,
        &[
            "validate",
            chart,
            r#"{"defaultPool": {"spec": {"maxConcurrentBuilds": "4"}}}"#,
        ],
    );
    assert_eq!(nested["ok"], false, "the pool's spec is checked too: {nested}");
}

#[test]
fn helm_and_kilns_renderer_make_the_same_objects() {
    let Some(python) = venv_python() else { return };
    for (case, values, release, namespace) in [
        ("defaults", json!({}), "kiln", "kiln-system"),
        ("every value set", all_values(), "platform", "builds"),
        (
            "a release not named kiln",
            json!({"developerRoles": {"enabled": false}}),
            "team",
            "team-kiln",
        ),
    ] {
        let rendered = helm_render(&python, &values, release, namespace);
        // As `kiln install -f FILE` reads them: merged into the defaults the way Helm merges.
        let file = tempfile::NamedTempFile::new().expect("tempfile");
        std::fs::write(file.path(), values.to_string()).expect("write");
        let path = file.path().display().to_string();
        let parsed = Values::with_overrides(&[path], &[]).expect("values fit kiln's Values");
        let install = Install {
            values: parsed,
            release: release.into(),
            namespace: namespace.into(),
        };
        let ours = kiln::deploy::objects(&install, "Helm");
        assert_same(&rendered, &ours, case);
    }
}

/// A CRD standing in for the Prometheus Operator's, so the monitors can be dry-run applied
/// (the apiserver checks their metadata; their spec is the operator's business).
fn monitor_crd(kind: &str, plural: &str) -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": format!("{plural}.monitoring.coreos.com")},
           "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                    "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase()},
                    "versions": [{"name": "v1", "served": true, "storage": true,
                                  "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}})
}

#[tokio::test]
async fn every_rendered_object_and_deploy_file_passes_a_server_side_dry_run() {
    let Some(python) = venv_python() else { return };
    let server = ApiServer::shared().await;
    server.apply_manifests(
        &json!({"apiVersion": "v1", "kind": "List", "items": [
            monitor_crd("ServiceMonitor", "servicemonitors"), monitor_crd("PodMonitor", "podmonitors"),
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "builds"}},
            // A dry run does not create the Namespace that deploy/kiln.yaml begins with.
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kiln-system"}},
        ]})
        .to_string(),
    );
    let dry_run = |label: &str, yaml: &str| {
        let file = server.dir.join(format!("dry-run-{label}.yaml"));
        std::fs::write(&file, yaml).expect("write");
        let (ok, out, err) = server.kubectl(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=kiln-test",
            "-f",
            &file.display().to_string(),
        ]);
        assert!(ok, "{label}: {err}\n{out}");
        out
    };
    // The monitors' CRDs need a moment before the apiserver serves them.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let rendered = helm_render(&python, &all_values(), "platform", "builds");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": rendered});
    let out = dry_run("chart", &list.to_string());
    assert_eq!(out.lines().count(), rendered.len(), "one line per object: {out}");
    let text = std::fs::read_to_string(repo("deploy/kiln.yaml")).expect("deploy/kiln.yaml");
    dry_run("deploy-kiln", &text);
    // The CRDs carry CEL rules, which a 1.20 apiserver drops on create (Helm's way of
    // installing crds/) but refuses under server-side apply: create them, as Helm would.
    let file = repo("deploy/crds.yaml");
    let (ok, out, err) = server.kubectl(&[
        "create",
        "--dry-run=server",
        "--validate=false",
        "-f",
        &file.display().to_string(),
    ]);
    let exists = err.contains("AlreadyExists") || err.contains("already exists");
    assert!(ok || exists, "deploy/crds.yaml: {err}\n{out}");
}

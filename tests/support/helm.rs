//! Helm's engine for tests (tests/helm/helm.py, helm-python-sdk in the test virtualenv):
//! lint, schema validation, and rendering `charts/kiln` into objects.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// A path in the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `helm.py ARGS` with `python`; returns what it prints (JSON).
pub fn helm(python: &Path, args: &[&str]) -> Value {
    let out = Command::new(python)
        .arg(repo("tests/helm/helm.py"))
        .args(args)
        .output()
        .expect("run Helm's engine");
    assert!(
        out.status.success(),
        "helm.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("helm.py prints JSON")
}

/// `charts/kiln` rendered by Helm for `values`: the objects, NOTES.txt left out.
pub fn render(python: &Path, values: &Value, release: &str, namespace: &str) -> Vec<Value> {
    let chart = repo("charts/kiln");
    let files = helm(
        python,
        &[
            "render",
            chart.to_str().expect("path"),
            &values.to_string(),
            release,
            namespace,
        ],
    );
    let mut names: Vec<&String> = files.as_object().expect("files").keys().collect();
    names.sort();
    let mut objects = Vec::new();
    for name in names.into_iter().filter(|n| n.ends_with(".yaml")) {
        let text = files[name].as_str().expect("text");
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v: Value = serde::Deserialize::deserialize(doc).expect("rendered YAML parses");
            if !v.is_null() {
                objects.push(v);
            }
        }
    }
    objects
}

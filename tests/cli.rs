//! The `kiln` command line as a user or script runs it: help, version, exit codes, JSON output.

use std::process::{Command, Output};

fn kiln(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kiln");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("kiln exits")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn help_and_version() {
    let help = kiln(&["--help"], None);
    assert!(help.status.success());
    for command in ["crds", "validate"] {
        assert!(stdout(&help).contains(command), "--help lists {command}");
        let sub = kiln(&[command, "--help"], None);
        assert!(sub.status.success(), "{command} --help works");
    }
    let version = kiln(&["--version"], None);
    let printed = stdout(&version).trim().to_owned();
    let revision = printed
        .strip_prefix(&format!("kiln {} (", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("kiln <version> (<revision>): {printed}"));
    assert!(
        revision == "unknown" || (revision.len() == 12 && revision.chars().all(|c| c.is_ascii_hexdigit())),
        "the git revision it was built from: {printed}"
    );
    let bad = kiln(&["no-such-command"], None);
    assert_eq!(bad.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn crds_for_old_servers_leave_out_cel() {
    let all = kiln(&["crds"], None);
    assert!(stdout(&all).contains("x-kubernetes-validations"));
    let old = kiln(&["crds", "--kube-version", "v1.20.2"], None);
    assert!(old.status.success());
    assert!(!stdout(&old).contains("x-kubernetes-validations"));
    assert!(stdout(&old).contains("imagebuilds.kiln.dev"));
}

#[test]
fn validate_accepts_the_examples() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let files: Vec<String> = std::fs::read_dir(dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path().display().to_string())
        .collect();
    let mut args = vec!["validate", "-f"];
    args.extend(files.iter().map(String::as_str));
    let out = kiln(&args, None);
    assert!(out.status.success(), "{}", stdout(&out));
}

#[test]
fn validate_reports_every_problem_with_its_field_and_exits_2() {
    let manifest = r#"
apiVersion: kiln.dev/v1alpha1
kind: ImageBuild
metadata: {name: broken}
spec:
  image: Example.com/App
  source: {git: {url: "https://example.com/r.git", subPath: "../up"}}
  dockerfile: Dockerfile
  dockerfileInline: "FROM scratch"
  placement: {nodeName: n1, allNodes: true}
---
apiVersion: kiln.dev/v1alpha1
kind: BuilderPool
metadata: {name: default}
spec: {gc: {keepDuration: 48h, keepStorageMiB: 100}}
---
apiVersion: kiln.dev/v1alpha1
kind: BuilderPool
metadata: {name: typo}
spec: {gc: {keepStorageMB: 100}}
"#;
    let out = kiln(&["validate", "-o", "json", "-f", "-"], Some(manifest));
    assert_eq!(out.status.code(), Some(2), "invalid input exits 2");
    let verdicts: serde_json::Value = serde_json::from_slice(&out.stdout).expect("-o json prints JSON");
    assert_eq!(verdicts[0]["valid"], false);
    assert_eq!(verdicts[1]["valid"], true, "the pool is fine");
    assert_eq!(
        verdicts[2]["errors"][0]["field"], "spec.gc.keepStorageMB",
        "a misspelt field is reported, not dropped"
    );
    let fields: Vec<&str> = verdicts[0]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    for field in ["spec.image", "spec", "spec.placement", "spec.source.git.subPath"] {
        assert!(fields.contains(&field), "{field} reported in {fields:?}");
    }
}

//! `kiln build` from a local directory, as a developer runs it: only a kubeconfig (a
//! ServiceAccount bound to the `kiln-developer` roles of `kiln manifests`), the context sent to
//! the node's agent through the apiserver (pods/proxy), a real BuildKit (Docker's). Also
//! `kiln get` and `kiln logs`. The recipes in `contrib/` (Tilt, kubectl) are in
//! `cli_recipes.rs`.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::cli::{MAX_CONTEXT_MIB, NODES, copy_dir, developer, kiln, rig, text, uploaded_bytes};
use support::e2e::agent_ip;

#[tokio::test]
async fn kiln_build_sends_a_local_directory_and_prints_the_image() {
    let Some(_) = agent_ip() else {
        eprintln!("SKIPPED: agents cannot be reached through the apiserver here (no private address; run as root)");
        return;
    };
    let rig = rig().await;
    let (ns, kubeconfig) = developer(rig, "build").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let app = dir.path().join("app");
    copy_dir(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/testdata/app")
            .as_path(),
        &app,
    );
    let tag = format!("kiln.local/{ns}/app:v1");
    let app_dir = app.to_str().expect("utf-8 path");

    let before = uploaded_bytes(rig);
    let out = kiln(
        &kubeconfig,
        &["build", "-t", &tag, "-o", "json", "--progress", "plain", app_dir],
    );
    assert!(out.status.success(), "{}\n{}", text(&out), rig.diagnostics());
    let result: Value = serde_json::from_slice(&out.stdout).expect("-o json is JSON");
    let digest = result["digest"].as_str().expect("digest").to_owned();
    assert_eq!(result["image"], json!(tag));
    assert_eq!(result["succeeded"], true);
    assert_eq!(result["namespace"], json!(ns));
    assert!(NODES.iter().any(|n| result["nodes"][0]["name"] == *n), "{result}");
    assert_eq!(
        rig.docker.image_id(&tag).as_deref(),
        Some(digest.as_str()),
        "the digest is the image in the node's store"
    );
    assert_eq!(
        rig.docker.image_file(&tag, "app/hello.txt").as_deref(),
        Some(&b"hello from a local directory\n"[..]),
        "a file of the context is in the image"
    );
    let sent = result["context"]["uploadedBytes"].as_u64().expect("uploadedBytes");
    assert_eq!(sent, result["context"]["bytes"].as_u64().expect("bytes"), "{result}");
    assert!(uploaded_bytes(rig) - before >= sent as f64);

    // The same context again: the agent holds it, nothing is sent.
    let before = uploaded_bytes(rig);
    let out = kiln(&kubeconfig, &["build", "-t", &tag, "-o", "json", app_dir]);
    assert!(out.status.success(), "{}", text(&out));
    let again: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(again["context"]["uploadedBytes"], 0, "{again}");
    assert_eq!(uploaded_bytes(rig), before, "the agent received nothing");
    assert_eq!(again["digest"], json!(digest), "same context, same image");
    assert_ne!(again["name"], result["name"], "every kiln build is a new ImageBuild");

    // One file changed: a new context goes up and the image changes.
    std::fs::write(app.join("hello.txt"), "changed\n").expect("write");
    let out = kiln(&kubeconfig, &["build", "-t", &tag, "-q", app_dir]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_ne!(printed, digest, "-q prints the new image");
    assert_eq!(rig.docker.image_id(&tag).as_deref(), Some(printed.as_str()));
    assert_eq!(
        rig.docker.image_file(&tag, "app/hello.txt").as_deref(),
        Some(&b"changed\n"[..])
    );

    // kiln get lists them; kiln logs shows a build's log.
    let out = kiln(&kubeconfig, &["get", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
    let name = result["name"].as_str().expect("name");
    let out = kiln(&kubeconfig, &["logs", name]);
    assert!(out.status.success(), "{}", text(&out));
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("COPY . /app/"), "{log}");
}

/// A context with a `.dockerignore` (Docker's documented cases, `**`, `!` re-includes) and a
/// symlink to a file outside the context: the image holds exactly what Docker would send, and
/// the symlink arrives as a symlink, not as the target's content.
#[tokio::test]
async fn dockerignore_and_symlinks_shape_the_context_as_docker_would() {
    let Some(_) = agent_ip() else { return };
    let rig = rig().await;
    let (ns, kubeconfig) = developer(rig, "ignore").await;
    let outside = tempfile::tempdir().expect("tempdir");
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, format!("outside-the-context-{ns}")).expect("write");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let files = [
        ("Dockerfile", "FROM scratch\nCOPY . /ctx/\n"),
        (
            ".dockerignore",
            "# Docker's examples\n*/temp*\n*.md\n!README*.md\nREADME-secret.md\n**/*.log\nbuild/\n!build/keep.txt\n",
        ),
        ("README.md", "readme"),
        ("README-secret.md", "secret readme"),
        ("notes.md", "notes"),
        ("temp.txt", "root temp stays"),
        ("sub/temporary.txt", "excluded by */temp*"),
        ("sub/keep.txt", "kept"),
        ("a/b/c/debug.log", "excluded by **/*.log"),
        ("build/out.bin", "excluded"),
        ("build/keep.txt", "re-included"),
    ];
    for (path, content) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }
    std::os::unix::fs::symlink(&secret, root.join("leak")).expect("symlink");
    let tag = format!("kiln.local/{ns}/ignore:v1");
    let out = kiln(&kubeconfig, &["build", "-t", &tag, "-q", root.to_str().expect("path")]);
    assert!(out.status.success(), "{}\n{}", text(&out), rig.diagnostics());
    let image = rig.docker.image_export(&tag);
    let has = |p: &str| {
        image
            .iter()
            .any(|(path, _)| path.trim_end_matches('/') == format!("ctx/{p}"))
    };
    for kept in [
        "README.md",
        "temp.txt",
        "sub/keep.txt",
        "build/keep.txt",
        "Dockerfile",
        ".dockerignore",
        "leak",
    ] {
        assert!(
            has(kept),
            "{kept} is in the image: {:?}",
            image.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
    }
    for left_out in [
        "README-secret.md",
        "notes.md",
        "sub/temporary.txt",
        "a/b/c/debug.log",
        "build/out.bin",
    ] {
        assert!(!has(left_out), "{left_out} is left out");
    }
    let marker = format!("outside-the-context-{ns}");
    assert!(
        !image
            .iter()
            .any(|(_, data)| String::from_utf8_lossy(data).contains(&marker)),
        "the symlink's target outside the context did not leak into the image"
    );
}

/// A context over the pool's limit is refused before anything is created: exit 1, a message
/// naming the limit, no ImageBuild.
#[tokio::test]
async fn a_context_over_the_pools_limit_is_refused_and_nothing_is_created() {
    let rig = rig().await;
    let (ns, kubeconfig) = developer(rig, "big").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY . /\n").expect("write");
    let big: Vec<u8> = (0..(MAX_CONTEXT_MIB + 1) * 1024 * 1024)
        .map(|i| (i * 7919 % 251) as u8)
        .collect();
    std::fs::write(dir.path().join("big.bin"), big).expect("write");
    let out = kiln(
        &kubeconfig,
        &[
            "build",
            "-t",
            &format!("kiln.local/{ns}/big:1"),
            dir.path().to_str().expect("path"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("limit of {MAX_CONTEXT_MIB} MiB")) && err.contains(".dockerignore"),
        "{err}"
    );
    let out = kiln(&kubeconfig, &["get", "-o", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list, json!([]), "nothing was created in {ns}");
}

/// Exit codes scripts rely on: a failing RUN is 1 with the step's output on stderr; a bad flag
/// or a missing -t is 2 with usage; nothing is created for the latter.
#[tokio::test]
async fn failures_and_usage_errors_have_their_exit_codes() {
    let Some(_) = agent_ip() else { return };
    let rig = rig().await;
    let (ns, kubeconfig) = developer(rig, "fail").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = dir.path().to_str().expect("path");
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {}\nRUN echo boom-before-failing && exit 3\n",
            support::docker::BUSYBOX
        ),
    )
    .expect("write");
    let out = kiln(
        &kubeconfig,
        &[
            "build",
            "-t",
            &format!("kiln.local/{ns}/fail:1"),
            "--progress",
            "plain",
            ctx,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("boom-before-failing"),
        "the step's log is on stderr: {err}"
    );
    assert!(err.contains("exit code 3"), "{err}");

    let out = kiln(&kubeconfig, &["build", "--no-such-flag", "-t", "x:1", ctx]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"), "{}", text(&out));
    let out = kiln(&kubeconfig, &["build", ctx]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("-t NAME"),
        "{}",
        text(&out)
    );
}

/// Ctrl-C while a RUN step runs: the build is cancelled in the cluster (the ImageBuild goes, the
/// RUN process ends) and kiln exits 130.
#[tokio::test]
async fn interrupting_kiln_build_cancels_the_build_in_the_cluster() {
    let Some(_) = agent_ip() else { return };
    let rig = rig().await;
    let (ns, kubeconfig) = developer(rig, "sigint").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {}\nRUN sleep 61\n", support::docker::BUSYBOX),
    )
    .expect("write");
    let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "build",
            "-t",
            &format!("kiln.local/{ns}/sleepy:1"),
            "-o",
            "json",
            dir.path().to_str().expect("path"),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln build");
    let sleeping = || {
        rig.docker
            .descendant_processes()
            .iter()
            .any(|(_, c)| c.contains("sleep 61"))
    };
    support::kiln::eventually(Duration::from_secs(60), "the RUN step to run", || async {
        sleeping().then_some(())
    })
    .await;
    let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    assert!(sent.is_ok_and(|s| s.success()));
    let out = child.wait_with_output().expect("wait for kiln");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let out = kiln(&kubeconfig, &["get", "-o", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list, json!([]), "the ImageBuild is gone");
    support::kiln::eventually(Duration::from_secs(30), "the RUN step to end", || async {
        (!sleeping()).then_some(())
    })
    .await;
}

/// `--all-nodes`: every node of the pool gets the context and builds the image.
#[tokio::test]
async fn all_nodes_sends_the_context_to_every_node() {
    let Some(_) = agent_ip() else { return };
    let rig = rig().await;
    let (ns, kubeconfig) = developer(rig, "all").await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY . /all/\n").expect("write");
    std::fs::write(dir.path().join("marker.txt"), format!("on every node {ns}")).expect("write");
    let out = kiln(
        &kubeconfig,
        &[
            "build",
            "-t",
            &format!("kiln.local/{ns}/all:v1"),
            "--all-nodes",
            "-o",
            "json",
        ]
        .into_iter()
        .chain([dir.path().to_str().expect("path")])
        .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}\n{}", text(&out), rig.diagnostics());
    let result: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let nodes: Vec<&str> = result["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(nodes.len(), NODES.len(), "{result}");
    let bytes = result["context"]["bytes"].as_u64().expect("bytes");
    assert_eq!(
        result["context"]["uploadedBytes"].as_u64(),
        Some(bytes * NODES.len() as u64),
        "one upload per node: {result}"
    );
}

/// An attempt whose context never comes says so (Reconciling, WaitingForUpload) and then fails
/// with UploadTimeout (this rig's agents wait 20 s), which is not retried.
#[tokio::test]
async fn an_upload_that_never_comes_times_out_clearly() {
    let rig = rig().await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "noupload").await;
    let digest = format!("sha256:{}", "0".repeat(64));
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "orphan", "namespace": &ns},
        "spec": {"image": format!("kiln.local/{ns}/orphan:1"), "source": {"upload": {"digest": digest, "size": 10}},
                 "dockerfileInline": "FROM scratch\n", "backoffLimit": 3}});
    rig.server.apply_manifests(&build.to_string());
    let reason = |b: &kiln::api::ImageBuild| b.status.as_ref().and_then(|s| s.reason.clone()).unwrap_or_default();
    rig.wait_for(&ns, "orphan", Duration::from_secs(30), "WaitingForUpload", |b| {
        reason(b) == "WaitingForUpload"
    })
    .await;
    let failed = rig
        .wait_for(&ns, "orphan", Duration::from_secs(60), "UploadTimeout", |b| {
            reason(b) == "UploadTimeout"
        })
        .await;
    let status = failed.status.expect("status");
    assert!(kiln::api::conditions::is_true(
        &status.conditions,
        kiln::api::conditions::STALLED
    ));
    assert_eq!(status.failed_attempts, Some(1), "not retried");
    assert!(status.message.unwrap_or_default().contains("run kiln build again"));
}

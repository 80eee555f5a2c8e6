//! The recipes in `contrib/` that drive kiln from other tools, run as those tools run them:
//! the Tilt extension (evaluated by Google's Starlark, its command run with Tilt's EXPECTED_REF)
//! and the `kubectl apply` + `kubectl wait` recipe, against a real apiserver, kiln's controller
//! and agents, and a real BuildKit (Docker's).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use support::cli::{copy_dir, developer, repo_file, rig, text};
use support::e2e::agent_ip;

/// The Tilt extension hands Tilt's custom_build what Tilt needs (no push, no local Docker, the
/// user's kwargs passed through), evaluated by Google's Starlark as Tilt does; and its command,
/// run by a shell with EXPECTED_REF set as Tilt sets it, puts exactly that image on the node.
#[tokio::test]
async fn the_tilt_extension_builds_expected_ref_with_kiln_build() {
    let (Some(python), Some(_)) = (support::python::venv_python(), agent_ip()) else {
        return;
    };
    let script = "kiln_build('example.com/tilt-app', '.', build_args={'V': \"it's\"}, \
                  live_update=[sync('./src', '/app/src')], ignore=['tmp'], match_in_env_vars=True)\n\
                  kiln_build('example.com/other', 'svc', deps=['svc/src'], dockerfile='docker/Dockerfile', extra_args=['--target', 'dev'])";
    let out = Command::new(&python)
        .arg(repo_file("tests/tilt/eval_tiltfile.py"))
        .arg(repo_file("contrib/tilt/Tiltfile"))
        .arg(script)
        .output()
        .expect("run the Starlark evaluator");
    assert!(out.status.success(), "{}", text(&out));
    let calls: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per custom_build call"))
        .collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let first = &calls[0];
    assert_eq!(first["ref"], "example.com/tilt-app");
    assert_eq!(first["deps"], json!(["."]), "the context is the default dependency");
    let kwargs = &first["kwargs"];
    assert_eq!(kwargs["disable_push"], true);
    assert_eq!(kwargs["skips_local_docker"], true);
    assert_eq!(
        kwargs["live_update"],
        json!([{"sync": ["./src", "/app/src"]}]),
        "kwargs pass through"
    );
    assert_eq!(kwargs["ignore"], json!(["tmp"]));
    assert_eq!(kwargs["match_in_env_vars"], true);
    assert!(
        kwargs["command_bat"]
            .as_str()
            .is_some_and(|c| c.contains("%EXPECTED_REF%"))
    );
    let second = &calls[1];
    assert_eq!(second["deps"], json!(["svc/src"]));
    let command = second["command"].as_str().expect("command");
    assert!(
        command.contains("'-f' 'docker/Dockerfile'")
            && command.contains("'--target' 'dev'")
            && command.ends_with("'svc'"),
        "{command}"
    );

    // Tilt runs the command with sh -c in the Tiltfile's directory, EXPECTED_REF set.
    let rig = rig().await;
    let (ns, kubeconfig) = developer(rig, "tilt").await;
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&repo_file("tests/testdata/app"), dir.path());
    let expected = format!(
        // What Tilt's default_registry('kiln.local/<ns>') makes of example.com/tilt-app.
        "kiln.local/{ns}/example.com_tilt-app:tilt-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kiln")).parent().expect("bin dir");
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let command = first["command"].as_str().expect("command");
    let out = Command::new("sh")
        .args(["-c", command])
        .current_dir(dir.path())
        .env("EXPECTED_REF", &expected)
        .env("PATH", path)
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .output()
        .expect("sh");
    assert!(out.status.success(), "{command}\n{}\n{}", text(&out), rig.diagnostics());
    assert!(
        rig.docker.image_id(&expected).is_some(),
        "{expected} is in the node's store"
    );
}

/// The pure-kubectl recipe for git/http sources: creates an ImageBuild named from
/// $EXPECTED_REF's tag, returns 0 once it is Ready, and 1 at once when it stalls.
#[tokio::test]
async fn the_kubectl_recipe_waits_for_ready_and_fails_fast_on_a_stall() {
    let rig = rig().await;
    let (ns, kubeconfig) = developer(rig, "recipe").await;
    let script = repo_file("contrib/tilt/imagebuild.sh");
    let run = |url: &str, expected: &str| {
        Command::new("bash")
            .arg(&script)
            .args(["--http", url, "--namespace", &ns, "--timeout", "2m"])
            .env("EXPECTED_REF", expected)
            .env("KUBECONFIG", &kubeconfig)
            .stdin(Stdio::null())
            .output()
            .expect("run imagebuild.sh")
    };
    let good = rig.context(
        &format!("{ns}-good"),
        &[
            ("Dockerfile", b"FROM scratch\nCOPY hello.txt /\n"),
            ("hello.txt", b"hi\n"),
        ],
    );
    let expected = format!(
        "kiln.local/{ns}/recipe:tilt-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let out = run(&good, &expected);
    assert!(out.status.success(), "{}\n{}", text(&out), rig.diagnostics());
    assert!(
        rig.docker.image_id(&expected).is_some(),
        "{expected} is in the node's store"
    );

    let bad = rig.context(
        &format!("{ns}-bad"),
        &[("Dockerfile", b"FROM scratch\nCOPY missing.txt /\n")],
    );
    let out = run(&bad, &format!("kiln.local/{ns}/recipe:tilt-bad0123456789ab"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("failed: SourceFetch") || err.contains("failed: BuildFailed"),
        "the stall's reason, not the timeout, ended the wait: {}",
        text(&out)
    );
}

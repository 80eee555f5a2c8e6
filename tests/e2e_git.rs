//! Git sources end to end: the agent resolves the ref to a commit, BuildKit (Docker's) builds
//! exactly that commit, and `status.source.revision` and the image's OCI labels say which. A
//! moved branch builds the new commit; a ref the repository lacks stalls with a clear reason.
//! The repository is served by `git daemon` on loopback.

mod support;

use std::time::Duration;

use kiln::api::ImageBuild;
use kiln::api::conditions::{self, READY, STALLED};
use serde_json::json;
use support::e2e::Rig;
use support::git::GitServer;

const BUILD_WAIT: Duration = Duration::from_secs(90);
const DOCKERFILE: &str = "FROM kiln-test/busybox:latest\nCOPY version.txt /version.txt\n";

fn revision(b: &ImageBuild) -> Option<String> {
    b.status.as_ref()?.source.as_ref()?.revision.clone()
}

fn is(b: &ImageBuild, type_: &str, generation: i64) -> bool {
    b.status
        .as_ref()
        .is_some_and(|s| s.observed_generation == Some(generation) && conditions::is_true(&s.conditions, type_))
}

/// The image's label `key`, as Docker shows it.
fn label(rig: &Rig, image: &str, key: &str) -> String {
    let format = format!("{{{{index .Config.Labels \"{key}\"}}}}");
    let (ok, out, err) = rig.docker.docker(&["image", "inspect", "--format", &format, image]);
    assert!(ok, "docker image inspect {image}: {err}");
    out.trim().to_owned()
}

fn apply(rig: &Rig, ns: &str, name: &str, image: &str, git: serde_json::Value, attempt: u32) {
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"image": image, "source": {"git": git}, "dockerfileInline": DOCKERFILE,
                 "labels": {"example.com/attempt": attempt.to_string()}}});
    rig.server.apply_manifests(&build.to_string());
}

#[tokio::test]
async fn a_branch_builds_the_commit_it_names_and_reports_it() {
    let rig = Rig::start(&["git-a"]).await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "git").await;
    let git = GitServer::start();
    let ids = git.create_repo("app", &[&[("version.txt", "v1\n")], &[("version.txt", "v2\n")]], "v2");
    let url = git.url("app");
    let image = format!("kiln.local/{ns}/app:main");

    apply(&rig, &ns, "app", &image, json!({"url": url, "ref": "main"}), 1);
    let built = rig.wait_for(&ns, "app", BUILD_WAIT, "Ready", |b| is(b, READY, 1)).await;
    assert_eq!(
        revision(&built).as_ref(),
        Some(&ids[1]),
        "status.source.revision is main's commit"
    );
    assert_eq!(rig.docker.image_file(&image, "version.txt"), Some(b"v2\n".to_vec()));
    assert_eq!(label(&rig, &image, "org.opencontainers.image.revision"), ids[1]);
    assert_eq!(label(&rig, &image, "org.opencontainers.image.source"), url);

    // The branch moves; the next generation builds (and reports) the new commit.
    let moved = git.commit("app", &[("version.txt", "v3\n")]);
    apply(&rig, &ns, "app", &image, json!({"url": url, "ref": "main"}), 2);
    let rebuilt = rig
        .wait_for(&ns, "app", BUILD_WAIT, "Ready again", |b| is(b, READY, 2))
        .await;
    assert_eq!(revision(&rebuilt), Some(moved.clone()));
    assert_eq!(rig.docker.image_file(&image, "version.txt"), Some(b"v3\n".to_vec()));
    assert_eq!(label(&rig, &image, "org.opencontainers.image.revision"), moved);

    // A tag still names the older commit.
    let tagged = format!("kiln.local/{ns}/app:v2");
    apply(&rig, &ns, "tagged", &tagged, json!({"url": url, "ref": "v2"}), 1);
    let built = rig
        .wait_for(&ns, "tagged", BUILD_WAIT, "Ready", |b| is(b, READY, 1))
        .await;
    assert_eq!(revision(&built).as_ref(), Some(&ids[1]));
    assert_eq!(rig.docker.image_file(&tagged, "version.txt"), Some(b"v2\n".to_vec()));
}

#[tokio::test]
async fn a_ref_the_repository_lacks_stalls_and_names_what_it_has() {
    let rig = Rig::start(&["git-a"]).await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "git-missing").await;
    let git = GitServer::start();
    git.create_repo("app", &[&[("version.txt", "v1\n")]], "v1");
    let image = format!("kiln.local/{ns}/app:x");
    apply(
        &rig,
        &ns,
        "missing",
        &image,
        json!({"url": git.url("app"), "ref": "no-such-branch"}),
        1,
    );
    let stalled = rig
        .wait_for(&ns, "missing", BUILD_WAIT, "Stalled", |b| is(b, STALLED, 1))
        .await;
    let status = stalled.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("GitRefNotFound"), "{status:?}");
    let message = status.message.unwrap_or_default();
    assert!(
        message.contains("\"no-such-branch\"") && message.contains("main"),
        "{message}"
    );
    assert!(rig.docker.image_id(&image).is_none(), "nothing was built");
}

/// A private repository over HTTP: the source's Secret gives the token to both the agent (to
/// resolve the ref) and BuildKit (to fetch); without it the build stalls on access.
#[tokio::test]
async fn a_private_repository_builds_with_the_sources_secret() {
    let rig = Rig::start(&["git-a"]).await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "git-private").await;
    let git = GitServer::start();
    let ids = git.create_repo("app", &[&[("version.txt", "private\n")]], "v1");
    let url = format!("{}/app.git", git.serve_http(Some("git-token-for-kiln")));
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
        "metadata": {"name": "git-cred", "namespace": ns},
        "stringData": {"username": "kiln", "password": "git-token-for-kiln"}});
    rig.server.apply_manifests(&secret.to_string());

    let image = format!("kiln.local/{ns}/private:main");
    let source = json!({"url": url, "ref": "main", "secretRef": {"name": "git-cred"}});
    apply(&rig, &ns, "private", &image, source, 1);
    let built = rig
        .wait_for(&ns, "private", BUILD_WAIT, "Ready", |b| is(b, READY, 1))
        .await;
    assert_eq!(revision(&built).as_ref(), Some(&ids[0]));
    assert_eq!(
        rig.docker.image_file(&image, "version.txt"),
        Some(b"private\n".to_vec())
    );

    apply(
        &rig,
        &ns,
        "anonymous",
        &format!("kiln.local/{ns}/anonymous:main"),
        json!({"url": url, "ref": "main"}),
        1,
    );
    let denied = rig
        .wait_for(&ns, "anonymous", BUILD_WAIT, "Stalled", |b| is(b, STALLED, 1))
        .await;
    let status = denied.status.expect("status");
    assert_eq!(status.reason.as_deref(), Some("GitAccessDenied"), "{status:?}");
    assert!(status.message.unwrap_or_default().contains("secretRef"));
}

/// `source.git.poll`: the agent asks the remote every interval (here a private one, with the
/// source's token, so the agents' Secret grant outlives the first build), and a moved branch
/// is built on the same node within the same generation.
#[tokio::test]
async fn a_polled_branch_builds_each_new_commit_on_its_node() {
    let rig = Rig::start(&["git-a", "git-b"]).await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "git-poll").await;
    let git = GitServer::start();
    let ids = git.create_repo("app", &[&[("version.txt", "one\n")]], "v1");
    let url = format!("{}/app.git", git.serve_http(Some("poll-token")));
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/basic-auth",
        "metadata": {"name": "git-cred", "namespace": ns},
        "stringData": {"username": "kiln", "password": "poll-token"}});
    rig.server.apply_manifests(&secret.to_string());
    let image = format!("kiln.local/{ns}/polled:main");
    let source = json!({"url": url, "ref": "main", "secretRef": {"name": "git-cred"},
                        "poll": {"intervalSeconds": 5}});
    apply(&rig, &ns, "polled", &image, source, 1);
    let built = rig
        .wait_for(&ns, "polled", BUILD_WAIT, "Ready", |b| is(b, READY, 1))
        .await;
    assert_eq!(revision(&built).as_ref(), Some(&ids[0]));
    let node = built
        .status
        .as_ref()
        .and_then(|s| s.nodes.first())
        .map(|n| n.name.clone());

    // Nothing moves: no new attempt.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        rig.node_builds(&ns, "polled").await.len(),
        1,
        "an unmoved ref builds nothing"
    );

    let moved = git.commit("app", &[("version.txt", "two\n")]);
    let started = std::time::Instant::now();
    let rebuilt = rig
        .wait_for(&ns, "polled", BUILD_WAIT, "Ready at the new commit", |b| {
            is(b, READY, 1) && revision(b).as_ref() == Some(&moved)
        })
        .await;
    println!(
        "moved branch built and Ready {:.1} s after the commit (interval 5 s)",
        started.elapsed().as_secs_f64()
    );
    let status = rebuilt.status.expect("status");
    assert_eq!(
        status.nodes.first().map(|n| n.name.clone()),
        node,
        "built where the image was"
    );
    assert_eq!(status.failed_attempts, None, "a moved ref is no failed attempt");
    assert_eq!(rig.docker.image_file(&image, "version.txt"), Some(b"two\n".to_vec()));
    assert_eq!(label(&rig, &image, "org.opencontainers.image.revision"), moved);
    let attempts = rig.node_builds(&ns, "polled").await;
    assert_eq!(attempts.len(), 2, "one more attempt, same generation");
    assert!(attempts.iter().all(|nb| nb.spec.generation == 1));
}

//! The node image store client against real stores: Docker's API and containerd's images
//! service (the test Docker daemon's own containerd, in a namespace of the test's).

mod support;

use std::process::Command;

use kiln::store::{ImageStore, Pinning, Removal, StoreError};
use support::docker::{BUSYBOX, DockerDaemon};

/// `ctr import` of the same content into two namespaces at once can fail on containerd's
/// ingest lock: the tests that import take turns.
static IMPORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The name the busybox test image has in containerd once imported.
const IMPORTED: &str = "docker.io/kiln-test/busybox:latest";

/// `ctr` against `socket` in `namespace`; its output.
fn ctr(socket: &std::path::Path, namespace: &str, args: &[&str]) -> String {
    let out = Command::new("ctr")
        .args(["--address", &socket.display().to_string(), "--namespace", namespace])
        .args(args)
        .output()
        .expect("run ctr");
    assert!(
        out.status.success(),
        "ctr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Copies the test busybox image from Docker into containerd's `namespace` ([`IMPORTED`]).
fn import_busybox(docker: &DockerDaemon, socket: &std::path::Path, namespace: &str) {
    // Its own directory: the tests run at once, and a shared name was overwritten under one.
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("busybox.tar");
    let (ok, _, err) = docker.docker(&["save", "-o", &archive.display().to_string(), BUSYBOX]);
    assert!(ok, "docker save: {err}");
    ctr(
        socket,
        namespace,
        &["images", "import", "--no-unpack", &archive.display().to_string()],
    );
    let _ = std::fs::remove_file(&archive);
}

#[tokio::test]
async fn docker_says_which_images_it_has_and_removes_a_name() {
    let docker = DockerDaemon::shared();
    let store = ImageStore::Docker(docker.socket().to_owned());
    let name = "kiln.local/store-test/docker:v1";
    let (ok, _, err) = docker.docker(&["tag", BUSYBOX, name]);
    assert!(ok, "docker tag: {err}");
    assert!(store.exists(name).await.expect("ask"), "a tagged image is there");
    assert!(store.exists(BUSYBOX).await.expect("ask"));
    assert!(!store.exists("kiln.local/store-test/none:v1").await.expect("ask"));

    assert_eq!(store.remove(name).await.expect("remove"), Removal::Removed);
    assert!(!store.exists(name).await.expect("ask"), "the name is gone");
    assert!(
        store.exists(BUSYBOX).await.expect("ask"),
        "the image keeps its other name"
    );
    assert_eq!(store.remove(name).await.expect("remove again"), Removal::Absent);

    // An image whose only name a container uses: Docker keeps it and says why.
    let lone = "kiln.local/store-test/lone:v1";
    let dir = tempfile::tempdir().expect("tempdir");
    let tarball = dir.path().join("lone.tar");
    std::fs::write(&tarball, support::http::tar(&[("f.txt", b"x")])).expect("write tarball");
    let (ok, _, err) = docker.docker(&["import", &tarball.display().to_string(), lone]);
    let _ = std::fs::remove_file(&tarball);
    assert!(ok, "docker import: {err}");
    let (ok, container, err) = docker.docker(&["create", lone, "/nonexistent"]);
    assert!(ok, "docker create: {err}");
    match store.remove(lone).await {
        Err(StoreError::InUse { detail, .. }) => assert!(detail.contains("container"), "{detail}"),
        other => panic!("a used image is kept: {other:?}"),
    }
    assert!(store.exists(lone).await.expect("ask"));
    let (ok, _, err) = docker.docker(&["rm", container.trim()]);
    assert!(ok, "docker rm: {err}");
    assert_eq!(store.remove(lone).await.expect("remove"), Removal::Removed);
}

#[tokio::test]
async fn containerd_says_which_images_it_has_and_removes_a_name() {
    let _turn = IMPORTS.lock().await;
    let docker = DockerDaemon::shared();
    let socket = docker.containerd_socket();
    let namespace = format!("kiln-store-{}", std::process::id());
    import_busybox(docker, &socket, &namespace);
    let name = IMPORTED;

    let store = ImageStore::Containerd {
        socket: socket.clone(),
        namespace: namespace.clone(),
    };
    assert!(store.exists(name).await.expect("ask"), "the imported image is there");
    // Its size as the manifest lists it: the config and the (one) layer, as `ctr` counts too.
    let size = store
        .size(name)
        .await
        .expect("size")
        .expect("an imported image has a size");
    let listed = ctr(&socket, &namespace, &["images", "ls"]);
    assert!(
        size > 100_000 && size < 20 << 20,
        "busybox is about a MiB, not {size}: {listed}"
    );
    assert_eq!(store.size("docker.io/kiln-test/none:v1").await.expect("size"), None);
    let elsewhere = ImageStore::Containerd {
        socket,
        namespace: "kiln-store-empty".into(),
    };
    assert!(
        !elsewhere.exists(name).await.expect("ask"),
        "namespaces are separate stores"
    );
    assert_eq!(store.remove(name).await.expect("remove"), Removal::Removed);
    assert!(!store.exists(name).await.expect("ask"));
    assert_eq!(store.remove(name).await.expect("remove again"), Removal::Absent);

    let nowhere = ImageStore::Containerd {
        socket: "/nonexistent/containerd.sock".into(),
        namespace,
    };
    let err = nowhere.exists(name).await.expect_err("no socket");
    assert!(err.to_string().contains("/nonexistent/containerd.sock"), "{err}");
}

#[tokio::test]
async fn pinning_labels_the_image_in_containerd_and_says_whether_it_holds() {
    let _turn = IMPORTS.lock().await;
    let docker = DockerDaemon::shared();
    let socket = docker.containerd_socket();
    let namespace = format!("kiln-pin-{}", std::process::id());
    import_busybox(docker, &socket, &namespace);
    let name = IMPORTED;
    assert!(!ctr(&socket, &namespace, &["images", "ls"]).contains("io.cri-containerd.pinned"));

    let store = ImageStore::Containerd {
        socket: socket.clone(),
        namespace: namespace.clone(),
    };
    let answer = store.pin(name).await.expect("pin");
    let listed = ctr(&socket, &namespace, &["images", "ls"]);
    let row = listed.lines().find(|l| l.starts_with(name)).unwrap_or_default();
    assert!(
        row.contains("io.cri-containerd.pinned=pinned"),
        "the label is on the image: {listed}"
    );
    assert!(
        store.exists(name).await.expect("ask"),
        "the image is unchanged otherwise"
    );
    // Whether it holds depends on this machine's containerd: 1.7+ honours the label.
    let version = Command::new("containerd")
        .arg("--version")
        .output()
        .expect("containerd --version");
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    let honours = version
        .split_whitespace()
        .nth(2)
        .and_then(|v| kiln::store::version_at_least(v, (1, 7)))
        .expect("containerd's version");
    println!("containerd {}: {answer:?}", version.trim());
    match answer {
        Pinning::Labelled { runtime } => assert!(honours && runtime.starts_with("containerd"), "{version}: {runtime}"),
        Pinning::Unsupported(why) => assert!(!honours && why.contains("1.7"), "{version}: {why}"),
    }

    let err = store
        .pin("docker.io/kiln-test/none:v1")
        .await
        .expect_err("no such image");
    assert!(err.to_string().contains("none:v1"), "{err}");
    assert_eq!(store.remove(name).await.expect("clean up"), Removal::Removed);

    let docker_store = ImageStore::Docker(docker.socket().to_owned());
    match docker_store.pin(BUSYBOX).await.expect("ask Docker") {
        Pinning::Unsupported(why) => assert!(why.contains("Docker"), "{why}"),
        other => panic!("Docker's store cannot pin: {other:?}"),
    }
}

/// The stores' removal events: Docker's `/events` and containerd's `/images/delete`.
#[tokio::test]
async fn removals_are_reported_by_the_stores_event_streams() {
    let _turn = IMPORTS.lock().await;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let docker = DockerDaemon::shared();
    let socket = docker.containerd_socket();
    let namespace = format!("kiln-events-{}", std::process::id());
    let stores = [
        ("docker", ImageStore::Docker(docker.socket().to_owned())),
        (
            "containerd",
            ImageStore::Containerd {
                socket: socket.clone(),
                namespace: namespace.clone(),
            },
        ),
    ];
    for (what, store) in stores {
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let follower = tokio::spawn(async move {
            let count = move || {
                counter.fetch_add(1, Ordering::SeqCst);
            };
            store.follow_removals(&count).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let name = format!("kiln.local/store-events/{what}:v1");
        if what == "docker" {
            let (ok, _, err) = docker.docker(&["tag", BUSYBOX, &name]);
            assert!(ok, "docker tag: {err}");
            let (ok, _, err) = docker.docker(&["rmi", &name]);
            assert!(ok, "docker rmi: {err}");
        } else {
            import_busybox(docker, &socket, &namespace);
            ctr(&socket, &namespace, &["images", "rm", IMPORTED]);
        }
        support::kiln::eventually(
            std::time::Duration::from_secs(10),
            &format!("{what}'s removal event"),
            || {
                let n = seen.load(Ordering::SeqCst);
                async move { (n > 0).then_some(()) }
            },
        )
        .await;
        follower.abort();
    }
}

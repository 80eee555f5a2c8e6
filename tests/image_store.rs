//! The node image store client against real stores: Docker's API and containerd's images
//! service (the test Docker daemon's own containerd, in a namespace of the test's).

mod support;

use std::process::Command;

use kiln::store::{ImageStore, Removal, StoreError};
use support::docker::{BUSYBOX, DockerDaemon};

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
    let tarball = std::env::temp_dir().join(format!("kiln-store-{}.tar", std::process::id()));
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
    let docker = DockerDaemon::shared();
    let socket = docker.containerd_socket();
    let namespace = format!("kiln-store-{}", std::process::id());
    let archive = std::env::temp_dir().join(format!("{namespace}.tar"));
    let (ok, _, err) = docker.docker(&["save", "-o", &archive.display().to_string(), BUSYBOX]);
    assert!(ok, "docker save: {err}");
    let import = Command::new("ctr")
        .args(["--address", &socket.display().to_string(), "--namespace", &namespace])
        .args(["images", "import", "--no-unpack", &archive.display().to_string()])
        .output()
        .expect("run ctr");
    let _ = std::fs::remove_file(&archive);
    assert!(
        import.status.success(),
        "ctr import: {}",
        String::from_utf8_lossy(&import.stderr)
    );
    let name = "docker.io/kiln-test/busybox:latest";

    let store = ImageStore::Containerd {
        socket: socket.clone(),
        namespace: namespace.clone(),
    };
    assert!(store.exists(name).await.expect("ask"), "the imported image is there");
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

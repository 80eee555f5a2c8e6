//! Unit tests of context parsing, request validation and the SolveRequest kiln sends.

use super::*;

fn git(url: &str, r: Option<&str>, d: Option<&str>) -> Context {
    Context::Git {
        url: url.into(),
        reference: r.map(Into::into),
        subdir: d.map(Into::into),
    }
}

#[test]
fn parses_contexts() {
    assert_eq!(
        Context::parse("https://github.com/org/app.git#main:docker").unwrap(),
        git("https://github.com/org/app.git", Some("main"), Some("docker"))
    );
    assert_eq!(
        Context::parse("git://127.0.0.1/r.git#:sub").unwrap(),
        git("git://127.0.0.1/r.git", None, Some("sub"))
    );
    assert_eq!(
        Context::parse("git@github.com:org/app.git#v1").unwrap(),
        git("git@github.com:org/app.git", Some("v1"), None)
    );
    assert_eq!(
        Context::parse("http://127.0.0.1:8080/sha256:abc.tar").unwrap(),
        Context::Http {
            url: "http://127.0.0.1:8080/sha256:abc.tar".into()
        }
    );
    assert!(Context::parse("./local/dir").is_err());
    assert!(Context::parse("https://host/ctx.tar#frag").is_err());
    assert_eq!(
        git("git://h/r.git", Some("main"), Some("/a/b/")).to_url(),
        "git://h/r.git#main:a/b"
    );
}

fn base() -> BuildRequest {
    BuildRequest::new(
        Context::Http {
            url: "http://127.0.0.1:1/c.tar".into(),
        },
        Dockerfile::Path("Dockerfile".into()),
    )
}

#[test]
fn solve_request_sets_legacy_and_new_exporter_fields() {
    let mut r = base();
    r.export.names = vec!["a:1".into(), "b:2".into()];
    r.export.unpack = true;
    let s = solve_request(&r, "ref1", "sess1", WorkerKind::Containerd).unwrap();
    assert_eq!(s.exporter_deprecated, "image");
    assert_eq!(s.exporter_attrs_deprecated["name"], "a:1,b:2");
    assert_eq!(s.exporter_attrs_deprecated["unpack"], "true");
    assert_eq!(s.exporter_attrs_deprecated["push"], "false");
    assert_eq!(s.exporters.len(), 1);
    assert_eq!(s.exporters[0].r#type, "image");
    assert_eq!(s.frontend, "dockerfile.v0");
    assert_eq!(s.session, "sess1");
    assert_eq!(s.r#ref, "ref1");
    assert_eq!(s.frontend_attrs["context"], "http://127.0.0.1:1/c.tar");

    let m = solve_request(&r, "ref1", "sess1", WorkerKind::Moby).unwrap();
    assert_eq!(m.exporter_deprecated, "moby");
    assert_eq!(m.exporter_attrs_deprecated.len(), 1);
    r.export.push = true;
    assert!(solve_request(&r, "ref1", "sess1", WorkerKind::Moby).is_err());
}

#[test]
fn frontend_attrs() {
    let mut r = base();
    r.target = Some("final".into());
    r.build_args.insert("V".into(), "1".into());
    r.labels.insert("org.example".into(), "x".into());
    r.platforms = vec!["linux/amd64".into(), "linux/arm64".into()];
    r.no_cache = true;
    r.network = Network::None;
    let s = solve_request(&r, "r", "s", WorkerKind::Moby).unwrap();
    let a = &s.frontend_attrs;
    assert_eq!(a["target"], "final");
    assert_eq!(a["build-arg:V"], "1");
    assert_eq!(a["label:org.example"], "x");
    assert_eq!(a["platform"], "linux/amd64,linux/arm64");
    assert_eq!(a["no-cache"], "");
    assert_eq!(a["force-network-mode"], "none");
    assert!(s.entitlements.is_empty());
    r.network = Network::Host;
    let s = solve_request(&r, "r", "s", WorkerKind::Moby).unwrap();
    assert_eq!(s.entitlements, vec!["network.host".to_string()]);
}

#[test]
fn from_images_prefer_the_nodes_store_on_every_worker_unless_pull_is_always() {
    let mut r = base();
    for worker in [WorkerKind::Moby, WorkerKind::Containerd] {
        let s = solve_request(&r, "r", "s", worker).unwrap();
        assert_eq!(s.frontend_attrs["image-resolve-mode"], "local", "{worker:?}");
    }
    r.pull = Pull::Always;
    let s = solve_request(&r, "r", "s", WorkerKind::Containerd).unwrap();
    assert_eq!(s.frontend_attrs["image-resolve-mode"], "pull");
}

#[test]
fn git_subdir_becomes_contextsubdir() {
    let r = BuildRequest::new(
        git("git://h/r.git", Some("v1"), Some("/app/")),
        Dockerfile::Path("./docker/Dockerfile".into()),
    );
    let s = solve_request(&r, "r", "s", WorkerKind::Moby).unwrap();
    assert_eq!(s.frontend_attrs["context"], "git://h/r.git#v1");
    assert_eq!(s.frontend_attrs["contextsubdir"], "app");
    assert_eq!(s.frontend_attrs["filename"], "app/docker/Dockerfile");
    let mut r = r;
    r.dockerfile = Dockerfile::Inline("FROM scratch".into());
    let s = solve_request(&r, "r", "s", WorkerKind::Moby).unwrap();
    assert_eq!(s.frontend_attrs["contextsubdir"], "app");
    assert_eq!(s.frontend_attrs["filename"], "Dockerfile");
}

#[test]
fn inline_dockerfile_goes_in_as_inputs() {
    let mut r = base();
    r.dockerfile = Dockerfile::Inline("FROM scratch\n".into());
    let s = solve_request(&r, "r", "s", WorkerKind::Moby).unwrap();
    assert!(!s.frontend_attrs.contains_key("context"));
    assert!(s.frontend_inputs.contains_key("context"));
    assert!(s.frontend_inputs.contains_key("dockerfile"));
}

#[test]
fn https_git_without_dot_git_uses_inputs() {
    let r = BuildRequest::new(
        git("https://example.com/org/repo", Some("main"), None),
        Dockerfile::Path("Dockerfile".into()),
    );
    let s = solve_request(&r, "r", "s", WorkerKind::Moby).unwrap();
    assert!(!s.frontend_attrs.contains_key("context"));
    assert_eq!(s.frontend_inputs.len(), 2);
}

#[test]
fn debug_redacts_secrets_and_auth() {
    let mut r = base();
    r.secrets.insert("token".into(), b"hunter2-very-secret".to_vec());
    r.registry_auth = Some(br#"{"auths":{"x":{"auth":"c2VjcmV0"}}}"#.to_vec());
    let d = format!("{r:?}");
    assert!(d.contains("token=<19 bytes redacted>"), "{d}");
    assert!(!d.contains("hunter2"), "{d}");
    assert!(!d.contains("c2VjcmV0"), "{d}");
}

#[test]
fn validation() {
    let mut r = base();
    r.platforms = vec!["amd64".into()];
    assert!(r.validate().is_err());
    let mut r = base();
    r.secrets.insert(String::new(), vec![]);
    assert!(r.validate().is_err());
    let mut r = base();
    r.export.push = true;
    assert!(r.validate().is_err());
}

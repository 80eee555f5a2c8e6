//! Resolving a git source's ref to its commit against real remotes: `git daemon` (git://) and
//! `git http-backend` (smart HTTP), on loopback. What git itself says (`git rev-parse` in the
//! bare repository) is the expected answer.

mod support;

use kiln::git::{GitError, resolve};
use support::git::{GitServer, git};

/// A repository with two commits on `main` (tagged `v1`), a branch `old` and an annotated tag
/// `rel` at the first, and a branch named like the tag `v1` at the first too.
fn repository(server: &GitServer) -> (String, String) {
    let ids = server.create_repo("app", &[&[("a.txt", "one")], &[("a.txt", "two")]], "v1");
    let bare = server.bare("app");
    git(&bare, &["branch", "old", &ids[0]]);
    git(&bare, &["branch", "v1", &ids[0]]);
    git(&bare, &["tag", "-a", "rel", "-m", "release", &ids[0]]);
    (ids[0].clone(), ids[1].clone())
}

fn rev_parse(server: &GitServer, what: &str) -> String {
    git(&server.bare("app"), &["rev-parse", &format!("{what}^{{commit}}")])
}

#[tokio::test]
async fn refs_resolve_as_git_resolves_them_over_git_and_http() {
    let server = GitServer::start();
    let (first, second) = repository(&server);
    let http = format!("{}/app.git", server.serve_http(None));
    for url in [server.url("app"), http] {
        let got = |r: Option<&'static str>| {
            let url = url.clone();
            async move { resolve(&url, r, None).await }
        };
        assert_eq!(got(None).await.expect("HEAD"), Some(second.clone()), "{url}: HEAD");
        for (name, expected) in [
            ("main", &second),
            ("old", &first),
            ("rel", &first),
            ("refs/heads/v1", &first),
        ] {
            assert_eq!(
                got(Some(name)).await.expect(name).as_ref(),
                Some(expected),
                "{url}: {name}"
            );
            assert_eq!(&rev_parse(&server, name), expected, "git agrees on {name}");
        }
        assert_eq!(
            got(Some("v1")).await.expect("v1"),
            Some(rev_parse(&server, "v1")),
            "{url}: the tag wins over the branch of the same name, as in git"
        );
        match got(Some("nope")).await {
            Err(e @ GitError::RefNotFound { .. }) => {
                let text = e.to_string();
                assert!(text.contains("\"nope\"") && text.contains("main"), "{text}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_private_http_remote_needs_the_token_and_no_message_shows_it() {
    let server = GitServer::start();
    let (_, second) = repository(&server);
    let base = server.serve_http(Some("s3cret-token"));
    let url = format!("{base}/app.git");
    match resolve(&url, Some("main"), None).await {
        Err(e @ GitError::Denied { status: 401, .. }) => {
            assert!(e.to_string().contains("secretRef"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let got = resolve(&url, Some("main"), Some("s3cret-token"))
        .await
        .expect("with the token");
    assert_eq!(got, Some(second));
    let with_userinfo = url.replace("http://", "http://user:s3cret-token@");
    let wrong = resolve(&with_userinfo, Some("nope"), None)
        .await
        .expect_err("no such ref");
    assert!(!wrong.to_string().contains("s3cret"), "{wrong}");
    let denied = resolve(&url.replace("http://", "http://user:wrong@"), None, None)
        .await
        .expect_err("wrong password");
    assert!(
        !denied.to_string().contains("wrong@"),
        "credentials in the URL never show: {denied}"
    );
}

#[tokio::test]
async fn an_unreachable_remote_says_so() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let err = resolve(&format!("git://127.0.0.1:{port}/app.git"), Some("main"), None)
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, GitError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

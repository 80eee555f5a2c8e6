//! Failures a user must be able to act on, and cancellation, against a real
//! BuildKit (Docker's embedded one, started privately by `support::docker`).

mod support;

use std::time::{Duration, Instant};

use kiln::buildkit::{BuildRequest, Client, Context, Dockerfile, Endpoint, Error, Network, ProgressEvent};
use support::buildkit::{build, client, render, tarball_request};
use support::docker::{BUSYBOX, DockerDaemon};
use support::git::GitServer;
use support::http::FileServer;

/// A served context with `a.txt` beside the Dockerfile.
fn request(dockerfile: &str) -> (FileServer, BuildRequest) {
    tarball_request(dockerfile, &[("a.txt", b"a\n")], "fail")
}

#[tokio::test]
async fn a_failing_run_reports_its_exit_code_and_log_tail() {
    let client = client().await;
    let (_s, req) = request(&format!(
        "FROM {BUSYBOX}\nRUN for i in $(seq 1 25); do echo line $i; done; echo oops; exit 3\n"
    ));
    let (result, events) = build(&client, req).await;
    let err = result.expect_err("the build must fail");
    match &err {
        Error::StepFailed {
            step,
            exit_code,
            log_tail,
            ..
        } => {
            assert!(step.contains("RUN for i in"), "{step}");
            assert_eq!(*exit_code, Some(3));
            assert_eq!(log_tail.len(), 20, "{log_tail:?}");
            assert_eq!(log_tail.last().map(String::as_str), Some("oops"));
            assert_eq!(log_tail[0], "line 7");
        }
        other => panic!("expected StepFailed, got {other:?}\n{}", render(&events)),
    }
    let msg = err.to_string();
    assert!(msg.contains("failed with exit code 3"), "{msg}");
    assert!(msg.contains("\n  line 25\n  oops"), "{msg}");
    let plain = render(&events);
    assert!(plain.contains(" ERROR: "), "{plain}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ProgressEvent::StepFailed { canceled: false, .. }))
    );
}

#[tokio::test]
async fn a_dockerfile_syntax_error_reports_its_line() {
    let client = client().await;
    let (_s, req) = request("FROM scratch\nCOPY a.txt /a.txt\nFROBNICATE everything\n");
    let (result, events) = build(&client, req).await;
    match result {
        Err(Error::DockerfileParse { line, message }) => {
            assert_eq!(line, Some(3));
            assert!(message.contains("unknown instruction: FROBNICATE"), "{message}");
        }
        other => panic!("expected DockerfileParse, got {other:?}\n{}", render(&events)),
    }

    let (_s, req) = request("FROM scratch\nCOPY onlyone\n");
    let err = build(&client, req).await.0.expect_err("must fail");
    assert!(matches!(err, Error::DockerfileParse { line: Some(2), .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("Dockerfile parse error on line 2: "),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_context_is_a_source_fetch_error() {
    let client = client().await;
    let server = FileServer::start(&[]);
    let mut req = BuildRequest::new(
        Context::Http {
            url: server.url("/nope.tar"),
        },
        Dockerfile::default(),
    );
    req.network = Network::None;
    let (result, events) = build(&client, req).await;
    match result {
        Err(Error::SourceFetch { message }) => assert!(message.contains("404"), "{message}"),
        other => panic!("expected SourceFetch, got {other:?}\n{}", render(&events)),
    }

    let git = GitServer::start();
    git.create_repo("r", &[&[("Dockerfile", "FROM scratch\n")]], "t");
    let req = BuildRequest::new(
        Context::parse(&format!("{}#no-such-branch", git.url("r"))).expect("parse"),
        Dockerfile::default(),
    );
    let (result, events) = build(&client, req).await;
    assert!(
        matches!(result, Err(Error::SourceFetch { .. })),
        "{result:?}\n{}",
        render(&events)
    );
}

#[tokio::test]
async fn an_unreachable_daemon_says_so() {
    let err = Client::connect(&Endpoint::parse("unix:///nonexistent/buildkitd.sock").unwrap(), None)
        .await
        .expect_err("no daemon there");
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("unix:///nonexistent/buildkitd.sock"), "{err}");

    let err = Client::connect(
        &Endpoint::parse("docker-unix:///nonexistent/docker.sock").unwrap(),
        None,
    )
    .await
    .expect_err("no docker there");
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");

    let err = Endpoint::parse("ftp://example").expect_err("bad scheme");
    assert!(err.to_string().contains("unsupported scheme"), "{err}");
}

/// Processes of the build still running under dockerd.
fn build_processes(daemon: &DockerDaemon, marker: &str) -> Vec<(u32, String)> {
    daemon
        .descendant_processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(marker) || cmd == "sleep 60")
        .collect()
}

/// Starts a `RUN … sleep 60` build and waits until the step is running.
async fn start_sleeper(client: &Client, marker: &str) -> (FileServer, kiln::buildkit::BuildHandle) {
    let (server, req) = request(&format!(
        "FROM {BUSYBOX}\nRUN echo {marker} && sleep 60 && echo never\n"
    ));
    let mut handle = client.build(req).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), handle.next_event())
            .await
            .expect("the RUN step never printed");
        match ev {
            Some(ProgressEvent::Log { line, .. }) if line == marker => break,
            Some(_) => {}
            None => panic!("the build ended before the RUN step ran"),
        }
    }
    (server, handle)
}

async fn assert_gone(daemon: &DockerDaemon, marker: &str, since: Instant) {
    loop {
        let left = build_processes(daemon, marker);
        if left.is_empty() {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(2),
            "BuildKit still runs the step 2 s after cancelling: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn cancelling_a_running_build_stops_it_within_two_seconds() {
    let daemon = DockerDaemon::shared();
    let client = client().await;
    let marker = format!("sleeper-{}", uuid::Uuid::new_v4().simple());
    let (_s, handle) = start_sleeper(&client, &marker).await;
    assert!(
        !build_processes(daemon, &marker).is_empty(),
        "the step should be running now"
    );
    let t = Instant::now();
    let result = handle.cancel().await;
    assert!(t.elapsed() < Duration::from_secs(2), "cancel took {:?}", t.elapsed());
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert_gone(daemon, &marker, t).await;
}

#[tokio::test]
async fn dropping_the_handle_cancels_the_build() {
    let daemon = DockerDaemon::shared();
    let client = client().await;
    let marker = format!("dropped-{}", uuid::Uuid::new_v4().simple());
    let (_s, handle) = start_sleeper(&client, &marker).await;
    assert!(!build_processes(daemon, &marker).is_empty());
    let t = Instant::now();
    drop(handle);
    assert_gone(daemon, &marker, t).await;
}

//! Builds against a real BuildKit (Docker's embedded one, started privately
//! by `support::docker`): contexts, Dockerfile features, results, progress.

mod support;

use kiln::buildkit::{Context, DigestKind, Dockerfile, ProgressEvent, WorkerKind};
use support::buildkit::{build, client, http_context, render, request, unique};
use support::docker::{BUSYBOX, DockerDaemon};
use support::git::GitServer;
use support::http::{FileServer, tar_gz};

fn logs(events: &[ProgressEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ProgressEvent::Log { line, .. } => Some(line.clone()),
            _ => None,
        })
        .collect()
}

fn text(daemon: &DockerDaemon, image: &str, path: &str) -> Option<String> {
    daemon
        .image_file(image, path)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
}

#[tokio::test]
async fn lists_dockers_worker() {
    let client = client().await;
    let workers = client.workers().await.expect("workers");
    assert_eq!(workers.len(), 1, "{workers:?}");
    let w = &workers[0];
    assert_eq!(w.kind, WorkerKind::Moby);
    assert!(w.platforms.iter().any(|p| p == "linux/amd64"), "{:?}", w.platforms);
    // Docker 20.10 (BuildKit v0.8) reports neither labels nor a version.
    assert_eq!(w.buildkit_version, None);
    assert_eq!(client.worker_kind().await.expect("kind"), WorkerKind::Moby);
}

#[tokio::test]
async fn scratch_copy_from_http_tarball_reports_the_image_id() {
    let daemon = DockerDaemon::shared();
    let client = client().await;
    let (_server, ctx) = http_context(
        "FROM scratch\nCOPY hello.txt /hello.txt\n",
        &[("hello.txt", b"hello from kiln\n")],
    );
    let name = unique("scratch");
    let (out, events) = build(&client, request(ctx, Dockerfile::default(), &name)).await;
    let out = out.unwrap_or_else(|e| panic!("{e}\n{}", render(&events)));
    assert_eq!(out.digest_kind, DigestKind::ImageId);
    assert!(out.digest.starts_with("sha256:"), "{}", out.digest);
    assert_eq!(
        daemon.image_id(&name).as_deref(),
        Some(out.digest.as_str()),
        "the digest is what `docker image inspect` reports"
    );
    assert_eq!(out.config_digest.as_deref(), Some(out.digest.as_str()));
    assert_eq!(out.image_names, vec![name.clone()]);
    assert_eq!(text(daemon, &name, "/hello.txt").as_deref(), Some("hello from kiln"));
}

#[tokio::test]
async fn gzipped_tarball_context_and_dockerfile_in_a_subdirectory() {
    let daemon = DockerDaemon::shared();
    let client = client().await;
    let ctx_tar = tar_gz(&[
        ("docker/app.Dockerfile", b"FROM scratch\nCOPY data/ /data/\n"),
        ("data/x.txt", b"x\n"),
    ]);
    let server = FileServer::start(&[("/sha256:abc.tar.gz", ctx_tar)]);
    let name = unique("gz");
    let req = request(
        Context::Http {
            url: server.url("/sha256:abc.tar.gz"),
        },
        Dockerfile::Path("docker/app.Dockerfile".into()),
        &name,
    );
    let (out, events) = build(&client, req).await;
    out.unwrap_or_else(|e| panic!("{e}\n{}", render(&events)));
    assert_eq!(text(daemon, &name, "/data/x.txt").as_deref(), Some("x"));
}

#[tokio::test]
async fn busybox_run_steps_run_and_their_output_is_logged() {
    let daemon = DockerDaemon::shared();
    let client = client().await;
    let dockerfile =
        format!("FROM {BUSYBOX}\nRUN echo built-by-kiln > /greeting\nRUN cat /greeting && echo to-stderr >&2\n");
    let (_server, ctx) = http_context(&dockerfile, &[]);
    let name = unique("busybox");
    let (out, events) = build(&client, request(ctx, Dockerfile::default(), &name)).await;
    out.unwrap_or_else(|e| panic!("{e}\n{}", render(&events)));
    assert_eq!(text(daemon, &name, "/greeting").as_deref(), Some("built-by-kiln"));
    let lines = logs(&events);
    assert!(lines.contains(&"built-by-kiln".to_string()), "{lines:?}");
    assert!(events.iter().any(|e| matches!(
        e,
        ProgressEvent::Log { stream: kiln::buildkit::LogStream::Stderr, line, .. } if line == "to-stderr"
    )));
    let plain = render(&events);
    assert!(plain.contains("RUN cat /greeting"), "{plain}");
    assert!(
        plain
            .lines()
            .any(|l| l.starts_with('#') && l.ends_with(" built-by-kiln")),
        "{plain}"
    );
}

#[tokio::test]
async fn multi_stage_build_stops_at_target() {
    let daemon = DockerDaemon::shared();
    let client = client().await;
    let dockerfile = format!(
        "FROM {BUSYBOX} AS builder\nRUN echo compiled > /artifact\n\
         FROM {BUSYBOX} AS tester\nRUN echo tested > /tested\n\
         FROM scratch AS final\nCOPY --from=builder /artifact /artifact\n"
    );
    let (_server, ctx) = http_context(&dockerfile, &[]);

    let final_name = unique("final");
    let (out, events) = build(&client, request(ctx.clone(), Dockerfile::default(), &final_name)).await;
    out.unwrap_or_else(|e| panic!("{e}\n{}", render(&events)));
    let files: Vec<String> = daemon.image_export(&final_name).into_iter().map(|(p, _)| p).collect();
    assert!(files.contains(&"artifact".to_string()), "{files:?}");
    assert!(
        !files.iter().any(|p| p.starts_with("bin")),
        "final stage is scratch: {files:?}"
    );
    assert!(!render(&events).contains("echo tested"), "unused stage was not built");

    let builder_name = unique("builder");
    let mut req = request(ctx, Dockerfile::default(), &builder_name);
    req.target = Some("builder".into());
    let (out, events) = build(&client, req).await;
    out.unwrap_or_else(|e| panic!("{e}\n{}", render(&events)));
    assert_eq!(text(daemon, &builder_name, "/artifact").as_deref(), Some("compiled"));
    assert!(daemon.image_file(&builder_name, "/bin/busybox").is_some());
}

#[tokio::test]
async fn a_build_arg_changes_the_output() {
    let daemon = DockerDaemon::shared();
    let client = client().await;
    let dockerfile = format!("FROM {BUSYBOX}\nARG FLAVOUR=plain\nRUN echo \"$FLAVOUR\" > /flavour\n");
    let (_server, ctx) = http_context(&dockerfile, &[]);

    let mut digests = Vec::new();
    for flavour in [None, Some("vanilla"), Some("chocolate")] {
        let name = unique("arg");
        let mut req = request(ctx.clone(), Dockerfile::default(), &name);
        if let Some(f) = flavour {
            req.build_args.insert("FLAVOUR".into(), f.into());
        }
        let (out, events) = build(&client, req).await;
        let out = out.unwrap_or_else(|e| panic!("{e}\n{}", render(&events)));
        assert_eq!(
            text(daemon, &name, "/flavour").as_deref(),
            Some(flavour.unwrap_or("plain"))
        );
        digests.push(out.digest);
    }
    assert_ne!(digests[0], digests[1]);
    assert_ne!(digests[1], digests[2]);
}

#[tokio::test]
async fn labels_reach_the_image_config() {
    let daemon = DockerDaemon::shared();
    let client = client().await;
    let (_server, ctx) = http_context("FROM scratch\nCOPY f /\n", &[("f", b"f")]);
    let name = unique("labels");
    let mut req = request(ctx, Dockerfile::default(), &name);
    req.labels.insert("dev.kiln.build".into(), "yes".into());
    let (out, events) = build(&client, req).await;
    out.unwrap_or_else(|e| panic!("{e}\n{}", render(&events)));
    let (ok, label, err) = daemon.docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"dev.kiln.build\"}}",
        &name,
    ]);
    assert!(ok, "{err}");
    assert_eq!(label, "yes");
}

#[tokio::test]
async fn git_context_over_loopback_with_ref_and_subdir() {
    let daemon = DockerDaemon::shared();
    let client = client().await;
    let git = GitServer::start();
    let dockerfile = "FROM scratch\nCOPY version.txt /version.txt\n";
    let commits = git.create_repo(
        "app",
        &[
            &[
                ("app/Dockerfile", dockerfile),
                ("app/version.txt", "v1\n"),
                ("README", "x"),
            ],
            &[("app/version.txt", "v2\n")],
        ],
        "release",
    );

    for (reference, expect) in [
        (Some("main"), "v2"),
        (Some("release"), "v2"),
        (Some(commits[0].as_str()), "v1"),
    ] {
        let name = unique("git");
        let ctx = Context::Git {
            url: git.url("app"),
            reference: reference.map(String::from),
            subdir: Some("app".into()),
        };
        let (out, events) = build(&client, request(ctx, Dockerfile::default(), &name)).await;
        out.unwrap_or_else(|e| panic!("#{reference:?}: {e}\n{}", render(&events)));
        assert_eq!(
            text(daemon, &name, "/version.txt").as_deref(),
            Some(expect),
            "#{reference:?}"
        );
    }

    // The same through the `url#ref:subdir` syntax, with an inline Dockerfile.
    let name = unique("git-inline");
    let ctx = Context::parse(&format!("{}#main:app", git.url("app"))).expect("parse");
    let inline = Dockerfile::Inline("FROM scratch\nCOPY version.txt /from-inline.txt\n".into());
    let (out, events) = build(&client, request(ctx, inline, &name)).await;
    out.unwrap_or_else(|e| panic!("{e}\n{}", render(&events)));
    assert_eq!(text(daemon, &name, "/from-inline.txt").as_deref(), Some("v2"));
}

#[tokio::test]
async fn inline_dockerfile_with_an_http_context() {
    let daemon = DockerDaemon::shared();
    let client = client().await;
    // The context's own Dockerfile must be ignored in favour of the inline one.
    let (_server, ctx) = http_context("FROM scratch\nCOPY wrong.txt /\n", &[("data.txt", b"data\n")]);
    let name = unique("inline");
    let inline = Dockerfile::Inline(format!("FROM {BUSYBOX}\nCOPY data.txt /data.txt\nRUN cat /data.txt\n"));
    let (out, events) = build(&client, request(ctx, inline, &name)).await;
    out.unwrap_or_else(|e| panic!("{e}\n{}", render(&events)));
    assert_eq!(text(daemon, &name, "/data.txt").as_deref(), Some("data"));
    assert!(logs(&events).contains(&"data".to_string()));
}

/// Checks the event-stream contract: each step starts before it ends, step
/// numbers appear in increasing order, summaries never go backwards.
fn assert_well_ordered(events: &[ProgressEvent]) {
    let mut started = std::collections::HashSet::new();
    let mut max_step = 0;
    let mut last_completed = 0;
    for e in events {
        match e {
            ProgressEvent::StepStarted { step, .. } if started.insert(*step) => {
                assert_eq!(*step, max_step + 1, "steps are numbered in order: {events:#?}");
                max_step = *step;
            }
            ProgressEvent::StepCompleted { step, .. }
            | ProgressEvent::StepFailed { step, .. }
            | ProgressEvent::Log { step, .. } => {
                assert!(started.contains(step), "step {step} ended before it started");
            }
            ProgressEvent::Progress(p) => {
                assert!(p.completed >= last_completed, "completed went backwards: {events:#?}");
                assert!(p.completed <= p.total);
                last_completed = p.completed;
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn progress_counts_steps_in_order_and_a_rebuild_is_cached() {
    let client = client().await;
    let dockerfile = format!(
        "FROM {BUSYBOX}\nCOPY a.txt /a.txt\nRUN cat /a.txt > /b.txt\nRUN echo {} > /c.txt\n",
        uuid::Uuid::new_v4()
    );
    let (_server, ctx) = http_context(&dockerfile, &[("a.txt", b"a\n")]);
    let req = request(ctx, Dockerfile::default(), &unique("progress"));

    let (first, events1) = build(&client, req.clone()).await;
    let first = first.unwrap_or_else(|e| panic!("{e}\n{}", render(&events1)));
    assert_well_ordered(&events1);
    let final1 = first.summary.clone();
    assert_eq!(final1.completed, final1.total, "{final1:?}");
    // [1/4] FROM, [2/4] COPY, [3/4] RUN, [4/4] RUN at least, plus exporting.
    assert!(final1.total >= 5, "{final1:?}");
    let step_names: Vec<String> = events1
        .iter()
        .filter_map(|e| match e {
            ProgressEvent::StepStarted { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    for n in ["[2/4] COPY a.txt /a.txt", "[3/4] RUN cat /a.txt > /b.txt"] {
        assert!(step_names.iter().any(|s| s == n), "{n} in {step_names:?}");
    }
    let pos = |n: &str| step_names.iter().position(|s| s.starts_with(n));
    assert!(pos("[2/4]") < pos("[3/4]") && pos("[3/4]") < pos("[4/4]"));
    let cached_first = |events: &[ProgressEvent], prefix: &str| {
        events
            .iter()
            .any(|e| matches!(e, ProgressEvent::StepCompleted { name, cached: true, .. } if name.starts_with(prefix)))
    };
    assert!(!cached_first(&events1, "[3/4]"), "first build runs the step");

    let (second, events2) = build(&client, req.clone()).await;
    let second = second.unwrap_or_else(|e| panic!("{e}\n{}", render(&events2)));
    assert_well_ordered(&events2);
    assert_eq!(second.digest, first.digest, "identical build, identical image");
    for prefix in ["[2/4]", "[3/4]", "[4/4]"] {
        assert!(cached_first(&events2, prefix), "{prefix} cached:\n{}", render(&events2));
    }
    assert!(second.summary.cached >= 3, "{:?}", second.summary);
    assert!(render(&events2).contains(" CACHED"));

    // no_cache runs the steps again.
    let mut fresh = req;
    fresh.no_cache = true;
    let (third, events3) = build(&client, fresh).await;
    third.unwrap_or_else(|e| panic!("{e}\n{}", render(&events3)));
    assert!(!cached_first(&events3, "[3/4]"), "{}", render(&events3));
}

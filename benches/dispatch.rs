//! Dispatch overhead of the whole kiln pipeline on a cached build, against a real apiserver,
//! real BuildKit (Docker's) and kiln's controller and agent as processes, with their default
//! settings.
//!
//! For 50 ImageBuilds of the same (cached) content it measures, with client-side watches,
//! creation → Ready seen (total) and NodeBuild Succeeded → ImageBuild Ready seen
//! (aggregation); the API writes per build, counted by the apiserver; and where the time goes,
//! step by step, from the controller's and agent's debug logs (wall-clock timestamps on this
//! machine). Then the same build as a bare BuildKit Solve through kiln's client. Prints
//! p50/p99 and the ratio of the total to the bare Solve. Figures are from one noisy run on a
//! shared machine: compare ratios, not absolute numbers.
//!
//! `cargo bench --bench dispatch` (needs `make test-env`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::TryStreamExt;
use k8s_openapi::jiff::Timestamp;
use kiln::api::conditions::{self, READY};
use kiln::api::node_build::NodeBuildPhase;
use kiln::api::{ImageBuild, NodeBuild};
use kiln::buildkit::{BuildRequest, Client, Context, Dockerfile, Endpoint, Network};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use support::api_requests::Requests;
use support::e2e::Rig;

const BUILDS: usize = 50;
const DOCKERFILE: &str = "FROM scratch\nCOPY bench.txt /bench.txt\n";

/// The steps of one build as the processes log them, in order: (who, message, key field).
const STEPS: &[(&str, &str, &str)] = &[
    ("controller", "reconciling", "build"),
    ("controller", "dispatched", "build"),
    ("agent", "observed a new attempt", "node_build"),
    ("agent", "starting the solve", "node_build"),
    ("agent", "build started", "node_build"),
    ("agent", "build succeeded", "node_build"),
    ("agent", "status written", "node_build"),
    ("controller", "status written", "build"),
];
/// What happens between the previous mark and each step (the first from the user's create).
const STAGES: &[&str] = &[
    "create -> controller reconciles (watch, queue)",
    "reconcile: reads, finalizer, NodeBuild create",
    "NodeBuild create -> agent sees it (watch)",
    "agent prepares the request",
    "BuildKit: connect/session, solve submitted",
    "BuildKit solve (cached)",
    "agent writes the outcome",
    "controller sees it, writes Ready",
    "Ready write -> a watcher sees it",
];

#[derive(Default)]
struct Seen {
    node_done: HashMap<String, Instant>,
    ready: HashMap<String, (Instant, SystemTime)>,
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // SAFETY: set before any thread exists; the rig's processes read it when they start.
    unsafe { std::env::set_var("KILN_TEST_LOG", "info,kiln=debug,kube=warn") };
    tokio::runtime::Runtime::new().expect("runtime").block_on(run());
}

async fn run() {
    let rig = Rig::start(&["bench-node"]).await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "bench").await;
    let url = rig.context("bench", &[("bench.txt", b"kiln dispatch benchmark")]);
    let seen = Arc::new(Mutex::new(Seen::default()));
    watch(&client, &ns, seen.clone());

    let make = |name: &str| -> ImageBuild {
        serde_json::from_value(json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": name},
            "spec": {"image": format!("kiln.local/{ns}/app:v1"), "source": {"http": {"url": url}}, "dockerfileInline": DOCKERFILE}}))
        .expect("build")
    };
    let builds: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    // Warm BuildKit's cache and the pipeline.
    builds
        .create(&PostParams::default(), &make("warm"))
        .await
        .expect("create");
    wait_ready(&seen, "warm").await;

    let requests_before = Requests::read(&client).await;
    let mut created = HashMap::new();
    for i in 0..BUILDS {
        let name = format!("b{i}");
        let t = (Instant::now(), SystemTime::now());
        builds
            .create(&PostParams::default(), &make(&name))
            .await
            .expect("create");
        created.insert(name.clone(), t);
        wait_ready(&seen, &name).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = Requests::read(&client).await.since(&requests_before).writes_to(&[
        "imagebuilds",
        "nodebuilds",
        "events",
        "rolebindings",
        "secrets",
    ]);

    let logs = Logs::read(&rig);
    let (mut aggregate, mut total, mut started) = (Vec::new(), Vec::new(), Vec::new());
    let mut stages: Vec<Vec<f64>> = vec![Vec::new(); STAGES.len()];
    {
        let s = seen.lock().expect("lock");
        for (name, (t0, wall0)) in &created {
            let (ready, ready_wall) = s.ready[name];
            aggregate.push(ms(ready.saturating_duration_since(s.node_done[name])));
            total.push(ms(ready - *t0));
            if let Some(marks) = logs.marks(name, *wall0) {
                // The agent's "starting the solve": from here the build is running.
                started.push(ms(marks[3].duration_since(*wall0).unwrap_or_default()));
                let mut previous = *wall0;
                for (i, mark) in marks.into_iter().chain([ready_wall]).enumerate() {
                    stages[i].push(ms(mark.duration_since(previous).unwrap_or_default()));
                    previous = mark;
                }
            }
        }
    }
    let bare = bare_solves(&rig, &url, &ns).await;

    let row = |what: &str, v: &[f64]| {
        if v.is_empty() {
            return println!("{what:<46} (not in the logs)");
        }
        println!(
            "{what:<46} p50 {:>7.1} ms   p99 {:>7.1} ms",
            percentile(v.to_vec(), 0.5),
            percentile(v.to_vec(), 0.99)
        )
    };
    println!("kiln dispatch benchmark: {BUILDS} cached builds, one node (Docker's BuildKit)");
    row("NodeBuild Succeeded -> ImageBuild Ready seen", &aggregate);
    row("create -> the solve starts (Running)", &started);
    row("create -> Ready seen (apply->Ready)", &total);
    row("bare Solve through kiln's client (20 runs)", &bare);
    println!(
        "apply->Ready / bare Solve (p50): {:.1}x   (p99: {:.1}x)",
        percentile(total.clone(), 0.5) / percentile(bare.clone(), 0.5),
        percentile(total.clone(), 0.99) / percentile(bare.clone(), 0.5)
    );
    println!(
        "API writes per build: {:.1}\n{writes}",
        writes.total() as f64 / BUILDS as f64
    );
    println!(
        "where the time goes (from the processes' logs, {} builds):",
        stages[0].len()
    );
    for (what, v) in STAGES.iter().zip(&stages) {
        row(&format!("  {what}"), v);
    }
    let example = format!("b{}", BUILDS / 2);
    println!("one build's trace ({example}), ms after its create:");
    let wall0 = created[&example].1;
    for (who, t, line) in logs.mentioning(&example) {
        let at = ms(t.duration_since(wall0).unwrap_or_default());
        let text = line.split_once(": ").map_or(line.as_str(), |(_, m)| m);
        println!("  {at:>7.1}  {who:<10} {text}");
    }
}

/// Timestamps what a client watching NodeBuilds and ImageBuilds would see.
fn watch(client: &kube::Client, ns: &str, seen: Arc<Mutex<Seen>>) {
    let nb_seen = seen.clone();
    let node_builds: Api<NodeBuild> = Api::namespaced(client.clone(), ns);
    tokio::spawn(watcher(node_builds, watcher::Config::default()).try_for_each(move |e| {
        let seen = nb_seen.clone();
        async move {
            if let watcher::Event::Apply(nb) = e
                && nb.status.as_ref().and_then(|s| s.phase) == Some(NodeBuildPhase::Succeeded)
                && let Ok(mut s) = seen.lock()
            {
                s.node_done.entry(nb.spec.image_build).or_insert_with(Instant::now);
            }
            Ok(())
        }
    }));
    let builds: Api<ImageBuild> = Api::namespaced(client.clone(), ns);
    tokio::spawn(watcher(builds, watcher::Config::default()).try_for_each(move |e| {
        let seen = seen.clone();
        async move {
            if let watcher::Event::Apply(b) = e
                && b.status
                    .as_ref()
                    .is_some_and(|s| conditions::is_true(&s.conditions, READY))
                && let Ok(mut s) = seen.lock()
            {
                s.ready
                    .entry(b.metadata.name.clone().unwrap_or_default())
                    .or_insert_with(|| (Instant::now(), SystemTime::now()));
            }
            Ok(())
        }
    }));
}

/// The same build as a bare Solve through kiln's BuildKit client, 20 times.
async fn bare_solves(rig: &Rig, url: &str, ns: &str) -> Vec<f64> {
    let endpoint = Endpoint::parse(&rig.docker.endpoint()).expect("endpoint");
    let bk = Client::connect(&endpoint, None).await.expect("connect");
    let mut bare = Vec::new();
    for _ in 0..20 {
        let mut req = BuildRequest::new(
            Context::Http { url: url.to_owned() },
            Dockerfile::Inline(DOCKERFILE.into()),
        );
        req.export.names = vec![format!("kiln.bench/{ns}/bare:v1")];
        req.network = Network::None;
        let t = Instant::now();
        bk.build(req).await.expect("build").wait().await.expect("solve");
        bare.push(ms(t.elapsed()));
    }
    bare
}

/// The controller's and agent's log lines: (who, timestamp, line).
struct Logs(Vec<(&'static str, SystemTime, String)>);

impl Logs {
    fn read(rig: &Rig) -> Logs {
        let mut lines = Vec::new();
        for (who, file) in [
            ("controller", "controller-controller-1.log"),
            ("agent", "agent-bench-node.log"),
        ] {
            let text = std::fs::read_to_string(rig.server.dir.join(file)).unwrap_or_default();
            for line in text.lines() {
                let Some((stamp, _)) = line.split_once(' ') else {
                    continue;
                };
                if let Ok(t) = stamp.parse::<Timestamp>() {
                    lines.push((who, SystemTime::from(t), line.to_owned()));
                }
            }
        }
        Logs(lines)
    }

    /// Lines about build `name` or its attempts.
    fn mentioning(&self, name: &str) -> Vec<&(&'static str, SystemTime, String)> {
        let (build, attempt) = (format!("build={name}"), format!("node_build={name}-"));
        self.0
            .iter()
            .filter(|(_, _, line)| {
                line.split_whitespace()
                    .any(|tok| tok == build || tok.starts_with(&attempt))
            })
            .collect()
    }

    /// The time of each of [`STEPS`] for build `name` (its first attempt), if all are logged.
    fn marks(&self, name: &str, after: SystemTime) -> Option<Vec<SystemTime>> {
        let attempt = format!("{name}-1-1");
        STEPS
            .iter()
            .map(|(who, message, key)| {
                let field = format!("{key}={}", if *key == "build" { name } else { &attempt });
                self.0
                    .iter()
                    .find(|(w, t, line)| {
                        w == who
                            && *t >= after
                            && line.contains(&format!(": {message}"))
                            && line.split_whitespace().any(|tok| tok == field)
                    })
                    .map(|(_, t, _)| *t)
            })
            .collect()
    }
}

async fn wait_ready(seen: &Arc<Mutex<Seen>>, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // The two watches are independent streams: wait until both have reported this build.
        let complete = seen
            .lock()
            .is_ok_and(|s| s.ready.contains_key(name) && s.node_done.contains_key(name));
        if complete {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} not Ready (and seen by both watches) within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

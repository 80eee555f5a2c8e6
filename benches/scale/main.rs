//! Scale harness (issue 13): kiln's real controller against the real apiserver with simulated
//! builder nodes (see `harness.rs`), measuring dispatch latency under load, throughput, API
//! writes per build, controller and agent CPU and memory, and the apiserver's own write
//! capacity as the baseline.
//!
//! - `cargo test --bench scale` (in `make test`): a smoke of 200 builds over 20 nodes that
//!   asserts every build is Ready, every attempt was solved exactly once, and the write budget.
//! - `cargo bench --bench scale` (`make bench`): 10,000 builds over 500 nodes in growing waves,
//!   1,000 at once, allNodes over 500 nodes, and the idle cost; writes `bench/results.json`,
//!   from which `hack/bench-report.py` makes `bench/REPORT.md` and its plots.

#[path = "../../tests/support/mod.rs"]
mod support;

mod baseline;
mod harness;
mod runs;
mod usage;

use std::time::{Duration, Instant};

use baseline::Baseline;
use harness::{Harness, Shape};
use kiln::api::ImageBuild;
use kube::api::{Api, ListParams};
use runs::RunSpec;
use serde::Serialize;
use support::api_requests::Requests;
use usage::cpu_seconds;

#[tokio::main]
async fn main() {
    // The agents run in this process: their warnings (and more with KILN_BENCH_LOG) go to stderr.
    let filter = std::env::var("KILN_BENCH_LOG").unwrap_or_else(|_| "warn,kube=error".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    if std::env::args().any(|a| a == "--bench") {
        full().await;
    } else {
        smoke().await;
    }
}

/// The `make test` smoke: correctness and the write budget under concurrency.
async fn smoke() {
    // Delays longer than the run: the budget is about which writes a build costs, not about
    // whether this (busy) machine finishes a simulated 20 ms build within 250 ms.
    let shape = Shape {
        nodes: 20,
        slots: 32,
        per_build: Duration::from_millis(20),
        controller_flags: vec!["--status-delay-ms=60000".into()],
        progress_delay: Duration::from_secs(60),
    };
    let h = Harness::start(&shape).await;
    let spec = RunSpec {
        name: "smoke",
        waves: vec![200],
        namespaces: 4,
        all_nodes: false,
        timeout: Duration::from_secs(180),
    };
    let r = runs::run(&h, &spec).await;
    // Kept after the run (the apiserver's directory is not): for reading when a figure surprises.
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("scale-smoke-controller.log");
    let _ = std::fs::copy(h.server.dir.join("controller-scale-controller.log"), &log);
    println!(
        "scale smoke: controller log {}\nscale smoke: {} builds over {} simulated nodes in {:.1} s ({:.0}/s); create->Ready p50 {:.0} ms p99 {:.0} ms; {:.2} writes per build",
        log.display(),
        r.builds,
        r.nodes,
        r.seconds,
        r.builds_per_second,
        r.create_to_ready_ms.p50,
        r.create_to_ready_ms.p99,
        r.writes_per_build
    );
    assert_eq!(r.not_ready, 0, "builds not Ready:\n{}", h.controller.log_tail());
    assert_eq!(r.attempts, r.builds, "one attempt per build, no retries");
    assert_eq!(r.attempts_solved_more_than_once, 0, "an attempt was solved twice");
    assert!(
        r.writes_per_build <= 5.0,
        "{:.2} API writes per build, over the budget of 5: {:?}",
        r.writes_per_build,
        r.writes
    );
}

/// Everything `make bench` reports.
#[derive(Serialize)]
struct Results {
    nodes: usize,
    per_build_ms: u64,
    slots_per_node: i32,
    baseline: Baseline,
    /// Kiln's own objects and verbs ([`baseline::kiln_shaped`]).
    kiln_shaped_baseline: Baseline,
    runs: Vec<runs::RunResult>,
    idle: Idle,
}

/// `make bench`'s shape, or a smaller one for a quick look: `KILN_BENCH_NODES` (default 500),
/// `KILN_BENCH_WAVES` (the waves run's sizes, e.g. `1000,2000`), `KILN_BENCH_RUNS` (which
/// runs, e.g. `waves`) and `KILN_BENCH_CONTROLLER_FLAGS` (extra controller flags, e.g.
/// `--status-delay-ms=5000`). A run shaped so writes its results under target/, not bench/.
fn knob(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

async fn full() {
    let nodes = knob("KILN_BENCH_NODES").map_or(500, |n| n.parse().expect("KILN_BENCH_NODES: a number"));
    let custom = [
        "KILN_BENCH_NODES",
        "KILN_BENCH_WAVES",
        "KILN_BENCH_RUNS",
        "KILN_BENCH_CONTROLLER_FLAGS",
    ]
    .iter()
    .any(|k| knob(k).is_some());
    let shape = Shape {
        nodes,
        slots: 2,
        per_build: Duration::from_millis(200),
        controller_flags: knob("KILN_BENCH_CONTROLLER_FLAGS")
            .map(|f| f.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        ..Shape::default()
    };
    let started = Instant::now();
    let h = Harness::start(&shape).await;
    eprintln!(
        "scale: {} simulated nodes ready in {:.0} s",
        h.nodes.len(),
        started.elapsed().as_secs_f64()
    );
    let baseline = baseline::small(&h, 2000).await;
    let shaped = baseline::kiln_shaped(&h, &finished_build(&h).await, 2000).await;
    for (name, b) in [("small writes", &baseline), ("kiln-shaped writes", &shaped)] {
        eprintln!(
            "scale: apiserver baseline, {name}: {:.0} writes/s, apiserver {:.0} % and etcd {:.0} % of a core",
            b.writes_per_second,
            100.0 * b.usage.apiserver.cpu_share_of_one_core,
            100.0 * b.usage.etcd.cpu_share_of_one_core,
        );
    }
    let specs = [
        RunSpec {
            name: "waves",
            waves: knob("KILN_BENCH_WAVES").map_or_else(
                || vec![100, 250, 500, 1000, 2000, 3000, 3150],
                |w| {
                    w.split(',')
                        .map(|n| n.trim().parse().expect("KILN_BENCH_WAVES: numbers"))
                        .collect()
                },
            ),
            namespaces: 10,
            all_nodes: false,
            timeout: Duration::from_secs(1200),
        },
        RunSpec {
            name: "burst",
            waves: vec![1000],
            namespaces: 10,
            all_nodes: false,
            timeout: Duration::from_secs(600),
        },
        RunSpec {
            name: "allnodes",
            waves: vec![1, 1, 1],
            namespaces: 1,
            all_nodes: true,
            timeout: Duration::from_secs(600),
        },
    ];
    let only = knob("KILN_BENCH_RUNS");
    let mut results = Vec::new();
    for spec in specs
        .iter()
        .filter(|s| only.as_deref().is_none_or(|o| o.split(',').any(|n| n.trim() == s.name)))
    {
        let r = runs::run(&h, spec).await;
        eprintln!(
            "scale: {}: {} builds in {:.0} s, {:.1} builds/s, {:.2} writes per build, {} not Ready; controller RSS max {:.0} MiB, {:.0} MiB at the end; CPU (share of a core) controller {:.0} %, agents {:.0} %, apiserver {:.0} %, etcd {:.0} %",
            r.name,
            r.builds,
            r.seconds,
            r.builds_per_second,
            r.writes_per_build,
            r.not_ready,
            r.usage.controller.max_rss_mib,
            r.usage.controller.end_rss_mib,
            100.0 * r.usage.controller.cpu_share_of_one_core,
            100.0 * r.usage.agents.cpu_share_of_one_core,
            100.0 * r.usage.apiserver.cpu_share_of_one_core,
            100.0 * r.usage.etcd.cpu_share_of_one_core,
        );
        results.push(r);
    }
    let idle = idle(&h, Duration::from_secs(45)).await;
    let out = Results {
        nodes: h.nodes.len(),
        per_build_ms: shape.per_build.as_millis() as u64,
        slots_per_node: shape.slots,
        baseline,
        kiln_shaped_baseline: shaped,
        runs: results,
        idle,
    };
    let path = if custom {
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("scale-results.json")
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results.json")
    };
    std::fs::create_dir_all(path.parent().expect("parent")).expect("bench/");
    std::fs::write(&path, serde_json::to_string_pretty(&out).expect("json")).expect("write results");
    eprintln!("scale: wrote {}", path.display());
}

/// A build kiln has just finished, as the apiserver holds it: the payload of the kiln-shaped
/// baseline.
async fn finished_build(h: &Harness) -> ImageBuild {
    let spec = RunSpec {
        name: "warmup",
        waves: vec![1],
        namespaces: 1,
        all_nodes: false,
        timeout: Duration::from_secs(120),
    };
    let r = runs::run(h, &spec).await;
    assert_eq!(
        r.not_ready,
        0,
        "the warm-up build is not Ready:\n{}",
        h.controller.log_tail()
    );
    let builds: Api<ImageBuild> = Api::all(h.admin.clone());
    let list = builds
        .list(&ListParams::default().labels(&format!("{}=warmup", runs::RUN_LABEL)))
        .await
        .expect("list the warm-up build");
    list.items.into_iter().next().expect("the warm-up build")
}

/// Idle cost: every build finished, every node ready; what the cluster does in `window`.
#[derive(Serialize)]
struct Idle {
    seconds: f64,
    lease_periods: f64,
    requests: std::collections::BTreeMap<String, u64>,
    /// Requests other than the agents' own (heartbeat Lease writes and their watches), per
    /// node per lease period: the controller's idle cost.
    controller_requests_per_node_per_lease_period: f64,
    controller_cpu_share_of_one_core: f64,
}

async fn idle(h: &Harness, window: Duration) -> Idle {
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pid = h.controller.process.pid().to_string();
    let before = Requests::read(&h.admin).await;
    let cpu0 = cpu_seconds(&pid);
    tokio::time::sleep(window).await;
    let cpu = cpu_seconds(&pid) - cpu0;
    let delta = Requests::read(&h.admin).await.since(&before);
    let agents: u64 = delta
        .0
        .iter()
        // The agents' own: their heartbeat writes, their NodeBuild watches, and their watches of
        // the pool, which the apiserver counts as GETs (a watch of one named object, by
        // `metadata.name`, is a request on that object).
        .filter(|(k, _)| {
            k.resource == "leases" && k.is_write()
                || k.resource == "nodebuilds" && k.verb == "WATCH"
                || k.resource == "builderpools" && k.verb == "GET"
        })
        .map(|(_, v)| *v)
        .sum();
    let periods = window.as_secs_f64() / 15.0;
    Idle {
        seconds: window.as_secs_f64(),
        lease_periods: periods,
        requests: delta.0.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        controller_requests_per_node_per_lease_period: (delta.total() - agents) as f64 / h.nodes.len() as f64 / periods,
        controller_cpu_share_of_one_core: cpu / window.as_secs_f64(),
    }
}

//! One measured run of the scale harness: create builds (in waves, at once, or allNodes), wait
//! for every one to be Ready as a watching client sees it, and collect latency, throughput,
//! API requests and writes (from the apiserver's own counters), CPU and memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, stream};
use kiln::api::ImageBuild;
use kiln::api::conditions::{self, READY};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::Serialize;
use serde_json::json;

use crate::harness::Harness;
use crate::support::api_requests::{Counters, Requests};
use crate::usage::{UsageProbe, Usages};

/// Label that ties a run's ImageBuilds together.
pub const RUN_LABEL: &str = "kiln.dev/scale-run";
/// Resources whose writes a build causes (leases and pool status follow the clock).
pub const BUILD_RESOURCES: &[&str] = &["imagebuilds", "nodebuilds", "events", "rolebindings", "secrets"];

/// What to run.
pub struct RunSpec {
    /// Name (also the label value).
    pub name: &'static str,
    /// Wave sizes: each wave is created at once, the next when it is all Ready.
    pub waves: Vec<usize>,
    /// Namespaces the builds are spread over (round robin).
    pub namespaces: usize,
    /// `placement.allNodes`.
    pub all_nodes: bool,
    /// Give up waiting for a wave after this long.
    pub timeout: Duration,
}

/// Percentiles of a sample, in ms.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Spread {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    fn of(v: &[f64]) -> Spread {
        if v.is_empty() {
            return Spread::default();
        }
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[(((v.len() - 1) as f64) * p).round() as usize];
        Spread {
            p50: at(0.5),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// One wave's figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Wave {
    pub builds: usize,
    pub seconds: f64,
    pub builds_per_second: f64,
    /// Creation → the simulated builder starts the solve (dispatch plus queue).
    pub create_to_start_ms: Spread,
    /// Creation → a watcher sees Ready.
    pub create_to_ready_ms: Spread,
    /// The wave's longest wait to start over its median one.
    pub max_over_median_start: f64,
}

impl Spread {
    /// The longest over the median (0 for an empty sample).
    fn max_over_median(&self) -> f64 {
        if self.p50 > 0.0 { self.max / self.p50 } else { 0.0 }
    }
}

/// Everything measured in one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunResult {
    pub name: String,
    pub nodes: usize,
    pub builds: usize,
    pub not_ready: usize,
    pub seconds: f64,
    pub builds_per_second: f64,
    pub waves: Vec<Wave>,
    pub create_to_start_ms: Spread,
    pub create_to_ready_ms: Spread,
    /// Worst queue wait over the median one, over all the run's builds (starvation check).
    pub max_over_median_start: f64,
    /// The same within each wave, the largest: a build against the others created with it, not
    /// against the median of waves of other sizes.
    pub max_over_median_start_in_a_wave: f64,
    pub median_start_ms_by_namespace: BTreeMap<String, f64>,
    pub attempts: usize,
    pub attempts_solved_more_than_once: usize,
    pub writes_per_build: f64,
    pub requests_per_build: f64,
    pub writes: BTreeMap<String, u64>,
    /// Every request the apiserver counted during the run (all actors, heartbeats included).
    pub requests: BTreeMap<String, u64>,
    /// MiB of watch events the apiserver sent during the run, per kind (all watchers).
    pub watch_mib_by_kind: BTreeMap<String, f64>,
    /// Watches the apiserver closed during the run because the watcher's buffer was full (each
    /// one a re-watch by its client).
    pub watchers_closed_unresponsive: usize,
    /// Events the apiserver's watch caches replayed to resumed watches during the run.
    pub watch_events_replayed: u64,
    #[serde(flatten)]
    pub usage: Usages,
    /// Seconds from the run's start at which each build was seen Ready (throughput plot).
    pub ready_at_seconds: Vec<f64>,
}

/// Runs `spec` on `h`.
pub async fn run(h: &Harness, spec: &RunSpec) -> RunResult {
    let namespaces = make_namespaces(h, spec).await;
    let watch = watch_ready(h, spec.name).await;
    let ready = watch.ready.clone();
    let apiserver = ApiserverProbe::start(h).await;
    let usage = UsageProbe::start(h);
    let started = (Instant::now(), SystemTime::now());
    let mut created: Vec<(String, String, SystemTime)> = Vec::new();
    let mut waves = Vec::new();
    for (w, &size) in spec.waves.iter().enumerate() {
        let wave_start = Instant::now();
        let made = create_wave(h, spec, &namespaces, w, size).await;
        wait_ready(&ready, &made, spec.timeout).await;
        let seconds = wave_start.elapsed().as_secs_f64();
        let (starts, readies) = latencies(h, &ready, &made);
        let start_spread = Spread::of(&starts);
        waves.push(Wave {
            builds: size,
            seconds,
            builds_per_second: size as f64 / seconds,
            max_over_median_start: start_spread.max_over_median(),
            create_to_start_ms: start_spread,
            create_to_ready_ms: Spread::of(&readies),
        });
        created.extend(made);
    }
    let seconds = started.0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let apiserver = apiserver.stop(h).await;
    let usage = usage.stop(seconds).await;
    summarize(h, spec, &ready, &created, started.1, seconds, waves, apiserver, usage)
}

/// What the apiserver counted during a run: requests, watch bytes per kind, watchers it closed
/// as unresponsive, and events it replayed to resumed watches.
struct ApiserverSide {
    requests: Requests,
    watch_mib_by_kind: BTreeMap<String, f64>,
    watchers_closed_unresponsive: usize,
    watch_events_replayed: u64,
}

/// The apiserver's counters at a run's start.
struct ApiserverProbe {
    at_start: Counters,
    closed: usize,
}

impl ApiserverProbe {
    async fn start(h: &Harness) -> Self {
        Self {
            at_start: Counters::read(&h.admin).await,
            closed: h.server.watchers_closed_unresponsive(),
        }
    }

    /// What the counters moved by since the start.
    async fn stop(self, h: &Harness) -> ApiserverSide {
        let now = Counters::read(&h.admin).await;
        let before = &self.at_start;
        let watch_mib_by_kind = now
            .watch_bytes_by_kind
            .into_iter()
            .map(|(kind, bytes)| {
                let sent = bytes - before.watch_bytes_by_kind.get(&kind).copied().unwrap_or(0.0);
                (kind, sent / (1024.0 * 1024.0))
            })
            .filter(|(_, mib)| *mib > 0.0)
            .collect();
        ApiserverSide {
            requests: now.requests.since(&before.requests),
            watch_mib_by_kind,
            watchers_closed_unresponsive: h.server.watchers_closed_unresponsive().saturating_sub(self.closed),
            watch_events_replayed: (now.events_replayed - before.events_replayed).max(0.0) as u64,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    h: &Harness,
    spec: &RunSpec,
    ready: &Ready,
    created: &[(String, String, SystemTime)],
    t0: SystemTime,
    seconds: f64,
    waves: Vec<Wave>,
    apiserver: ApiserverSide,
    usage: Usages,
) -> RunResult {
    let requests = &apiserver.requests;
    let (starts, readies) = latencies(h, ready, created);
    let solves = h.simulated.solves();
    let seen = ready.lock().map(|r| r.clone()).unwrap_or_default();
    let mut by_namespace: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (ns, name, at) in created {
        let (start, _) = latencies(h, ready, &[(ns.clone(), name.clone(), *at)]);
        by_namespace.entry(ns.clone()).or_default().extend(start);
    }
    let prefixes: Vec<String> = created.iter().map(|(ns, name, _)| format!("{ns}/{name}-")).collect();
    let ours: Vec<_> = solves
        .iter()
        .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p.as_str())))
        .collect();
    let start_spread = Spread::of(&starts);
    let in_a_wave = waves.iter().map(|w| w.max_over_median_start).fold(0.0, f64::max);
    let writes = requests.writes_to(BUILD_RESOURCES);
    let builds = created.len().max(1) as f64;
    RunResult {
        name: spec.name.into(),
        nodes: h.nodes.len(),
        builds: created.len(),
        not_ready: created
            .iter()
            .filter(|(ns, n, _)| !seen.contains_key(&format!("{ns}/{n}")))
            .count(),
        seconds,
        builds_per_second: created.len() as f64 / seconds,
        waves,
        max_over_median_start: start_spread.max_over_median(),
        max_over_median_start_in_a_wave: in_a_wave,
        create_to_start_ms: start_spread,
        create_to_ready_ms: Spread::of(&readies),
        median_start_ms_by_namespace: by_namespace
            .into_iter()
            .map(|(ns, v)| (ns, Spread::of(&v).p50))
            .collect(),
        attempts: ours.len(),
        attempts_solved_more_than_once: ours.iter().filter(|(_, s)| s.count > 1).count(),
        writes_per_build: writes.total() as f64 / builds,
        requests_per_build: requests.total() as f64 / builds,
        writes: writes.0.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        requests: requests.0.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        watch_mib_by_kind: apiserver.watch_mib_by_kind,
        watchers_closed_unresponsive: apiserver.watchers_closed_unresponsive,
        watch_events_replayed: apiserver.watch_events_replayed,
        usage,
        ready_at_seconds: seen
            .values()
            .filter_map(|t| t.duration_since(t0).ok())
            .map(|d| d.as_secs_f64())
            .collect(),
    }
}

type Ready = Arc<Mutex<HashMap<String, SystemTime>>>;

async fn make_namespaces(h: &Harness, spec: &RunSpec) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..spec.namespaces.max(1) {
        out.push(h.server.namespace(&h.admin, &format!("scale-{}-{i}", spec.name)).await);
    }
    out
}

/// Records when a watcher first sees each of the run's builds Ready.
/// The run's watch of its builds, recording when each is first seen Ready. It lists from the
/// apiserver's watch cache, as kiln's own watches do ([`kiln::watch::config`]), and has listed
/// before the run creates anything: a first version listed from etcd in pages, and in the runs
/// after the waves that list of 10,000+ builds took up to 28 s, during which the run's builds
/// were not seen Ready and the apiserver served the list beside them. It keeps watching through
/// errors (kube's backoff), and stops when the run is over (dropped).
struct ReadyWatch {
    ready: Ready,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch_ready(h: &Harness, run: &str) -> ReadyWatch {
    let ready: Ready = Arc::default();
    let seen = ready.clone();
    let api: Api<ImageBuild> = Api::all(h.admin.clone());
    let config = kiln::watch::config().labels(&format!("{RUN_LABEL}={run}"));
    let (listed_tx, listed) = tokio::sync::oneshot::channel();
    let mut listed_tx = Some(listed_tx);
    let task = tokio::spawn(watcher(api, config).default_backoff().for_each(move |e| {
        let seen = seen.clone();
        if let Ok(watcher::Event::InitDone) = &e
            && let Some(tx) = listed_tx.take()
        {
            let _ = tx.send(());
        }
        async move {
            if let Ok(watcher::Event::Apply(b) | watcher::Event::InitApply(b)) = e
                && b.status
                    .as_ref()
                    .is_some_and(|s| conditions::is_true(&s.conditions, READY))
                && let Ok(mut s) = seen.lock()
            {
                let key = format!(
                    "{}/{}",
                    b.metadata.namespace.clone().unwrap_or_default(),
                    b.metadata.name.clone().unwrap_or_default()
                );
                s.entry(key).or_insert_with(SystemTime::now);
            }
        }
    }));
    if tokio::time::timeout(Duration::from_secs(60), listed).await.is_err() {
        eprintln!("scale: the run's watch of its builds had not listed after 60 s; running anyway");
    }
    ReadyWatch { ready, task }
}

/// Creates one wave at once (64 requests in flight); returns (namespace, name, created at).
async fn create_wave(
    h: &Harness,
    spec: &RunSpec,
    namespaces: &[String],
    wave: usize,
    size: usize,
) -> Vec<(String, String, SystemTime)> {
    stream::iter(0..size)
        .map(|i| {
            let ns = namespaces[i % namespaces.len()].clone();
            let name = format!("w{wave}-b{i}");
            let api: Api<ImageBuild> = Api::namespaced(h.admin.clone(), &ns);
            // Each build its own recipe, as distinct builds are: no cache affinity pulls them together.
            let build: ImageBuild = serde_json::from_value(json!({
                "apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
                "metadata": {"name": name, "labels": {RUN_LABEL: spec.name}},
                "spec": {"image": format!("kiln.local/{ns}/app:{name}"),
                         "source": {"http": {"url": "http://127.0.0.1:9/context.tar"}},
                         "dockerfileInline": format!("FROM scratch\nLABEL build={name}\n"),
                         "placement": {"allNodes": spec.all_nodes}}}))
            .expect("ImageBuild");
            async move {
                let at = SystemTime::now();
                create_retrying(&api, &build).await;
                (ns, name, at)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await
}

/// Creates `build`, retrying what an overloaded apiserver answers for a while (500 "resource
/// quota evaluation timed out", 429, 504) as a client would; an AlreadyExists after a retry
/// means an earlier try landed.
async fn create_retrying(api: &Api<ImageBuild>, build: &ImageBuild) {
    let mut tries = 0;
    loop {
        match api.create(&PostParams::default(), build).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if tries > 0 && s.is_already_exists() => return,
            Err(kube::Error::Api(s)) if matches!(s.code, 429 | 500 | 503 | 504) && tries < 10 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200 * tries)).await;
            }
            Err(e) => panic!("create ImageBuild: {e}"),
        }
    }
}

async fn wait_ready(ready: &Ready, made: &[(String, String, SystemTime)], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let done = ready
            .lock()
            .is_ok_and(|r| made.iter().all(|(ns, n, _)| r.contains_key(&format!("{ns}/{n}"))));
        if done || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Per build: creation → first solve start, and creation → Ready seen (ms).
fn latencies(h: &Harness, ready: &Ready, made: &[(String, String, SystemTime)]) -> (Vec<f64>, Vec<f64>) {
    let solves = h.simulated.solves();
    let seen = ready.lock().map(|r| r.clone()).unwrap_or_default();
    let ms = |from: SystemTime, to: SystemTime| to.duration_since(from).unwrap_or_default().as_secs_f64() * 1000.0;
    let mut starts = Vec::new();
    let mut readies = Vec::new();
    for (ns, name, at) in made {
        let prefix = format!("{ns}/{name}-");
        if let Some(first) = solves
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, s)| s.first_start)
            .min()
        {
            starts.push(ms(*at, first));
        }
        if let Some(t) = seen.get(&format!("{ns}/{name}")) {
            readies.push(ms(*at, *t));
        }
    }
    (starts, readies)
}

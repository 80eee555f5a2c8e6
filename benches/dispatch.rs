//! Dispatch overhead of the whole kiln pipeline on a cached build, against a real apiserver,
//! real BuildKit (Docker's) and kiln's controller and agent as processes.
//!
//! For 50 ImageBuilds of the same (cached) content it measures, with client-side watches:
//! creation → the agent reports the NodeBuild Running (dispatch), NodeBuild Succeeded →
//! ImageBuild Ready seen by a watcher (aggregation), and creation → Ready (total); then the
//! same build as a bare BuildKit Solve through kiln's client. Prints p50/p99 and the ratio of
//! the total to the bare Solve. Figures are from one noisy run on a shared machine: compare
//! ratios, not absolute numbers.
//!
//! `cargo bench --bench dispatch` (needs `make test-env`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use kiln::api::conditions::{self, READY};
use kiln::api::node_build::NodeBuildPhase;
use kiln::api::{ImageBuild, NodeBuild};
use kiln::buildkit::{BuildRequest, Client, Context, Dockerfile, Endpoint, Network};
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use support::e2e::Rig;

const BUILDS: usize = 50;
const DOCKERFILE: &str = "FROM scratch\nCOPY bench.txt /bench.txt\n";

#[derive(Default)]
struct Seen {
    running: HashMap<String, Instant>,
    node_done: HashMap<String, Instant>,
    ready: HashMap<String, Instant>,
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let rig = Rig::start(&["bench-node"]).await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "bench").await;
    let url = rig.context("bench", &[("bench.txt", b"kiln dispatch benchmark")]);
    let seen = Arc::new(Mutex::new(Seen::default()));

    // Watchers timestamp what a client would see.
    let nb_seen = seen.clone();
    let node_builds: Api<NodeBuild> = Api::namespaced(client.clone(), &ns);
    tokio::spawn(watcher(node_builds, watcher::Config::default()).try_for_each(move |e| {
        let seen = nb_seen.clone();
        async move {
            if let watcher::Event::Apply(nb) = e {
                let now = Instant::now();
                let build = nb.spec.image_build.clone();
                let phase = nb.status.as_ref().and_then(|s| s.phase);
                if let Ok(mut s) = seen.lock() {
                    if matches!(phase, Some(NodeBuildPhase::Running | NodeBuildPhase::Succeeded)) {
                        s.running.entry(build.clone()).or_insert(now);
                    }
                    if phase == Some(NodeBuildPhase::Succeeded) {
                        s.node_done.entry(build).or_insert(now);
                    }
                }
            }
            Ok(())
        }
    }));
    let ib_seen = seen.clone();
    let builds: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    tokio::spawn(
        watcher(builds.clone(), watcher::Config::default()).try_for_each(move |e| {
            let seen = ib_seen.clone();
            async move {
                if let watcher::Event::Apply(b) = e
                    && b.status
                        .as_ref()
                        .is_some_and(|s| conditions::is_true(&s.conditions, READY))
                    && let Ok(mut s) = seen.lock()
                {
                    s.ready
                        .entry(b.metadata.name.clone().unwrap_or_default())
                        .or_insert_with(Instant::now);
                }
                Ok(())
            }
        }),
    );

    let make = |name: &str| -> ImageBuild {
        serde_json::from_value(json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": name},
            "spec": {"image": format!("kiln.bench/{ns}/app:v1"), "source": {"http": {"url": url}}, "dockerfileInline": DOCKERFILE}}))
        .expect("build")
    };
    // Warm BuildKit's cache and the pipeline.
    builds
        .create(&PostParams::default(), &make("warm"))
        .await
        .expect("create");
    wait_ready(&seen, "warm").await;

    let mut created = HashMap::new();
    for i in 0..BUILDS {
        let name = format!("b{i}");
        let t = Instant::now();
        builds
            .create(&PostParams::default(), &make(&name))
            .await
            .expect("create");
        created.insert(name.clone(), t);
        wait_ready(&seen, &name).await;
    }
    let (mut dispatch, mut aggregate, mut total) = (Vec::new(), Vec::new(), Vec::new());
    {
        let s = seen.lock().expect("lock");
        for (name, t0) in &created {
            dispatch.push(ms(s.running[name] - *t0));
            aggregate.push(ms(s.ready[name].saturating_duration_since(s.node_done[name])));
            total.push(ms(s.ready[name] - *t0));
        }
    }

    // The same build as a bare Solve through kiln's BuildKit client.
    let endpoint = Endpoint::parse(&rig.docker.endpoint()).expect("endpoint");
    let bk = Client::connect(&endpoint, None).await.expect("connect");
    let mut bare = Vec::new();
    for _ in 0..20 {
        let mut req = BuildRequest::new(
            Context::Http { url: url.clone() },
            Dockerfile::Inline(DOCKERFILE.into()),
        );
        req.export.names = vec![format!("kiln.bench/{ns}/bare:v1")];
        req.network = Network::None;
        let t = Instant::now();
        bk.build(req).await.expect("build").wait().await.expect("solve");
        bare.push(ms(t.elapsed()));
    }
    let row = |what: &str, v: &[f64]| {
        println!(
            "{what:<44} p50 {:>7.1} ms   p99 {:>7.1} ms",
            percentile(v.to_vec(), 0.5),
            percentile(v.to_vec(), 0.99)
        )
    };
    println!("kiln dispatch benchmark: {BUILDS} cached builds, one node (Docker's BuildKit)");
    row("create -> agent reports Running (dispatch)", &dispatch);
    row("NodeBuild Succeeded -> ImageBuild Ready seen", &aggregate);
    row("create -> Ready seen (apply->Ready)", &total);
    row("bare Solve through kiln's client (20 runs)", &bare);
    println!(
        "apply->Ready / bare Solve (p50): {:.1}x",
        percentile(total.clone(), 0.5) / percentile(bare.clone(), 0.5)
    );
}

async fn wait_ready(seen: &Arc<Mutex<Seen>>, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // The two watches are independent streams: wait until both have reported this build.
        let complete = seen.lock().is_ok_and(|s| {
            s.ready.contains_key(name) && s.running.contains_key(name) && s.node_done.contains_key(name)
        });
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

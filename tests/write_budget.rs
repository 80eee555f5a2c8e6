//! The API write budget of a build, counted by the apiserver itself (`apiserver_request_total`):
//! every create, patch, apply and delete any actor (user, controller, agent) makes for a build,
//! leases and pool status aside (they follow the heartbeat clock, not the builds). A regression
//! test: kiln's writes are its cost at scale (issue 13's goal is ≤ 5 for a single-node build).
//!
//! Then the idle cost: with every build finished and every builder renewing its heartbeat, the
//! controller makes no API call (issue 13: ≤ 1 request per node per lease period).
//!
//! Runs in its own test binary so the apiserver sees no other test's requests.

mod support;

use std::time::{Duration, Instant};

use kiln::api::ImageBuild;
use kiln::api::conditions::{self, READY};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::api_requests::Requests;
use support::e2e::{Rig, Tuning};

const BUILDS: u64 = 5;
/// Writes a cached single-node build may cost, all actors together.
const SINGLE_NODE_BUDGET: u64 = 5;
/// Writes per node of a cached allNodes build (its NodeBuild's create and final status)…
const PER_NODE_BUDGET: u64 = 2;
/// …plus the build's own: the user's create, the finalizer and the outcome.
const ALL_NODES_FIXED: u64 = 3;

fn ready(b: &ImageBuild) -> bool {
    b.status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, READY))
}

/// Counters once they stop moving (trailing status writes land after Ready is visible).
async fn settled(client: &Client) -> Requests {
    let mut last = Requests::read(client).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = Requests::read(client).await;
        let moved = now.since(&last).writes_to(KILN_RESOURCES).total();
        if moved == 0 || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Everything a build can make kiln write. Not counted, because they follow the clock and not
/// the builds: leases (heartbeats, leader election) and the pools' status, which shows each
/// builder's running count as its heartbeat samples it (at most one write per renewal).
const KILN_RESOURCES: &[&str] = &["imagebuilds", "nodebuilds", "events", "rolebindings", "secrets", "pods"];

/// Longer than three heartbeat renewals (5 s) and the pool's requeue at the next expiry (~10 s).
const IDLE_WINDOW: Duration = Duration::from_secs(17);

/// What the controller reads or writes besides leases (the agents' heartbeats and its own
/// leader election, which follow the clock by design).
const CONTROLLER_RESOURCES: &[&str] = &[
    "nodes",
    "daemonsets",
    "configmaps",
    "pods",
    "builderpools",
    "imagebuilds",
    "nodebuilds",
    "events",
    "secrets",
    "rolebindings",
];

/// Creates `name` and waits for it to be Ready.
async fn build_ready(rig: &Rig, api: &Api<ImageBuild>, ns: &str, build: ImageBuild) {
    let name = build.metadata.name.clone().unwrap_or_default();
    api.create(&PostParams::default(), &build).await.expect("create");
    rig.wait_for(ns, &name, Duration::from_secs(90), "Ready", ready).await;
}

// One test, two phases: the apiserver's counters are global, so nothing may run beside it.
#[tokio::test]
async fn builds_stay_within_the_api_write_budget() {
    // A long progress/status delay makes the count independent of this machine's speed: the
    // test pins which writes a build that finishes within the delay costs, whatever its time.
    let tuning = Tuning {
        controller: vec!["--status-delay-ms=20000".into()],
        agent: vec!["--progress-delay-ms=20000".into()],
    };
    let nodes = ["budget-a", "budget-b", "budget-c"];
    let rig = Rig::start_tuned(&nodes, tuning).await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "budget").await;
    let url = rig.context("budget", &[("budget.txt", b"write budget")]);
    let api: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    let make = |name: &str, all_nodes: bool| -> ImageBuild {
        serde_json::from_value(
            json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": name},
            "spec": {"image": format!("kiln.local/{ns}/budget:v1"), "source": {"http": {"url": url}},
                     "dockerfileInline": "FROM scratch\nCOPY budget.txt /budget.txt\n",
                     "placement": {"allNodes": all_nodes}}}),
        )
        .expect("ImageBuild")
    };
    // Warm BuildKit's cache on every node, so each measured build is the cached one users repeat.
    build_ready(&rig, &api, &ns, make("warm", true)).await;

    let before = settled(&client).await;
    for i in 0..BUILDS {
        build_ready(&rig, &api, &ns, make(&format!("one-{i}"), false)).await;
    }
    let after = settled(&client).await;
    let writes = after.since(&before).writes_to(KILN_RESOURCES);
    let per_build = writes.total() as f64 / BUILDS as f64;
    println!("API writes for {BUILDS} cached single-node builds ({per_build:.1} per build):\n{writes}");
    assert!(
        writes.total() <= SINGLE_NODE_BUDGET * BUILDS,
        "{per_build:.1} API writes per single-node build, over the budget of {SINGLE_NODE_BUDGET}:\n{writes}\n{}",
        rig.diagnostics()
    );

    let before = settled(&client).await;
    for i in 0..BUILDS {
        build_ready(&rig, &api, &ns, make(&format!("all-{i}"), true)).await;
    }
    let after = settled(&client).await;
    let writes = after.since(&before).writes_to(KILN_RESOURCES);
    let n = nodes.len() as u64;
    let per_node = writes.writes_to(&["nodebuilds"]).total() as f64 / (BUILDS * n) as f64;
    println!(
        "API writes for {BUILDS} cached allNodes builds over {n} nodes ({:.1} per build, {per_node:.1} NodeBuild writes per node):\n{writes}",
        writes.total() as f64 / BUILDS as f64
    );
    assert!(
        writes.total() <= (PER_NODE_BUDGET * n + ALL_NODES_FIXED) * BUILDS,
        "allNodes builds over {n} nodes cost more than {PER_NODE_BUDGET} writes per node plus {ALL_NODES_FIXED}:\n{writes}\n{}",
        rig.diagnostics()
    );

    // Idle: renewals are no news, the pool's reads come from watch caches, nothing is applied
    // again. The one write allowed is the pool's `lastHeartbeat` refresh (once a minute).
    let before = settled(&client).await;
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle = Requests::read(&client).await.since(&before);
    let calls = idle.calls_to(CONTROLLER_RESOURCES);
    let refresh = calls.writes_to(&["builderpools"]).total();
    let lease_lists: u64 = idle
        .0
        .iter()
        .filter(|(k, _)| k.resource == "leases" && k.verb == "LIST")
        .map(|(_, v)| *v)
        .sum();
    println!("API requests in {IDLE_WINDOW:?} of rest with {n} builders:\n{idle}");
    assert!(
        calls.total() - refresh == 0 && refresh <= 1 && lease_lists == 0,
        "an idle controller made API calls (beyond one lastHeartbeat refresh):\n{calls}\nLIST leases: {lease_lists}\n{}",
        rig.diagnostics()
    );
}

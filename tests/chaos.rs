//! Chaos: rounds of builds during which one part of the system fails at a random moment — the
//! controller or an agent is killed (SIGKILL), BuildKit's daemon crashes and restarts, a node's
//! agent freezes until its heartbeat Lease expires, or the apiserver crashes and restarts — and
//! invariants checked after every round. Real processes, real apiserver, real BuildKit.
//!
//! `make test` runs one round per kind of fault; `make chaos` runs `KILN_CHAOS_ROUNDS` (30 by
//! default). `KILN_CHAOS_SEED` repeats a run's random choices (each run prints its seed);
//! `KILN_CHAOS_ONLY=<fault>` (e.g. `RestartApiServer`) injects only that kind.
//!
//! Invariants, after each round: every ImageBuild is Ready (each was asked to succeed) with the
//! digest of the image stored under its name, and that image holds the build's own content (no
//! image half-written or left from another build under the name); no build is lost; every
//! NodeBuild belongs to an existing ImageBuild and has finished; no two attempts of one build
//! ran on the same node at the same time.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kiln::api::ImageBuild;
use kiln::api::conditions::{self, READY, STALLED};
use kiln::api::node_build::NodeBuild;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::json;
use support::e2e::{LEASE_SECONDS, Rig};

const NODES: [&str; 2] = ["chaos-a", "chaos-b"];
const BUILDS_PER_ROUND: usize = 3;
/// How long a round's builds may take to finish. The invariant is that nothing is lost, not a
/// speed: after an apiserver restart kube's controller-wide trigger backoff still stretches
/// recovery to minutes (43–238 s seen; docs/chaos.md), so the bound leaves room for it.
const ROUND_WAIT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillController,
    KillAgent,
    CrashBuildKit,
    ExpireLease,
    RestartApiServer,
}

const FAULTS: [Fault; 5] = [
    Fault::KillController,
    Fault::KillAgent,
    Fault::CrashBuildKit,
    Fault::ExpireLease,
    Fault::RestartApiServer,
];

/// xorshift64*: enough randomness to vary fault timing, and repeatable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn is_true(b: &ImageBuild, type_: &str) -> bool {
    b.status
        .as_ref()
        .is_some_and(|s| conditions::is_true(&s.conditions, type_))
}

#[tokio::test]
async fn builds_survive_crashes_restarts_and_lost_leases() {
    let rounds = env_u64("KILN_CHAOS_ROUNDS").unwrap_or(FAULTS.len() as u64);
    let seed =
        env_u64("KILN_CHAOS_SEED").unwrap_or_else(|| u64::try_from(Timestamp::now().as_nanosecond()).unwrap_or(1) | 1);
    eprintln!("chaos: {rounds} rounds, seed {seed} (KILN_CHAOS_SEED={seed} repeats them)");
    let mut rng = Rng(seed);
    let rig = Rig::start(&NODES).await;
    eprintln!("chaos: logs in {}", rig.server.dir.display());
    let mut faults: BTreeMap<Fault, u32> = BTreeMap::new();
    let mut builds = 0;
    let started = Instant::now();
    for round in 0..rounds {
        // Every kind once before any twice; what varies is when, and which node.
        let kinds: Vec<Fault> = match std::env::var("KILN_CHAOS_ONLY") {
            Ok(only) => FAULTS.iter().copied().filter(|f| format!("{f:?}") == only).collect(),
            Err(_) => FAULTS.to_vec(),
        };
        assert!(!kinds.is_empty(), "KILN_CHAOS_ONLY names none of {FAULTS:?}");
        let fault = kinds[usize::try_from(round % kinds.len() as u64).unwrap_or(0)];
        let delay = Duration::from_millis(rng.below(2500));
        let took = Instant::now();
        let names = run_round(&rig, round, fault, delay, &mut rng).await;
        builds += names.len();
        *faults.entry(fault).or_default() += 1;
        eprintln!(
            "chaos: round {round}: {fault:?} after {delay:?}: {} builds Ready, invariants hold ({:.1}s)",
            names.len(),
            took.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "chaos: {rounds} rounds, {builds} builds, faults {faults:?}, invariant violations 0, {:.0}s",
        started.elapsed().as_secs_f64()
    );
}

/// One round: builds, one fault at `delay`, recovery, then the invariants. Returns the builds.
async fn run_round(rig: &Rig, round: u64, fault: Fault, delay: Duration, rng: &mut Rng) -> Vec<String> {
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, &format!("chaos-{round}")).await;
    let mut names = Vec::new();
    for i in 0..BUILDS_PER_ROUND {
        let name = format!("b{i}");
        let marker = format!("{ns}/{name}/{}", uuid::Uuid::new_v4().simple());
        let url = rig.context(&format!("{ns}-{name}"), &[("marker.txt", marker.as_bytes())]);
        let sleep = 1 + rng.below(3);
        let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": name, "namespace": ns, "annotations": {"chaos/marker": marker}},
            "spec": {"image": format!("kiln.local/{ns}/{name}:v1"), "source": {"http": {"url": url}},
                     "backoffLimit": 6,
                     "dockerfileInline": format!(
                         "FROM kiln-test/busybox:latest\nCOPY marker.txt /marker.txt\nRUN sleep {sleep} && cp /marker.txt /built.txt\n")}});
        rig.server.apply_manifests(&build.to_string());
        names.push(name);
    }
    tokio::time::sleep(delay).await;
    inject(rig, fault, rng).await;
    let api: Api<ImageBuild> = Api::namespaced(rig.client().await, &ns);
    for name in &names {
        let b = finished(rig, &api, &ns, name).await;
        assert!(
            is_true(&b, READY),
            "round {round} ({fault:?}): {ns}/{name} was asked to succeed: {:?}\n{}",
            b.status,
            rig.diagnostics()
        );
    }
    check_invariants(rig, &api, &ns, &names, round, fault).await;
    names
}

/// Waits for `name` to be Ready or Stalled, for at most [`ROUND_WAIT`]. Meanwhile a controller
/// that exited is started again, as the kubelet would: after an apiserver outage longer than
/// its leader Lease the controller stops on purpose (another replica may lead by then).
async fn finished(rig: &Rig, api: &Api<ImageBuild>, ns: &str, name: &str) -> ImageBuild {
    let deadline = Instant::now() + ROUND_WAIT;
    loop {
        if rig.restart_controller_if_exited() {
            eprintln!("chaos: the controller had exited (lost its Lease); started again, as the kubelet would");
        }
        if let Ok(b) = api.get(name).await
            && (is_true(&b, READY) || is_true(&b, STALLED))
        {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {ROUND_WAIT:?} waiting for Ready or Stalled of {ns}/{name}\n{}",
            rig.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn inject(rig: &Rig, fault: Fault, rng: &mut Rng) {
    let node = NODES[usize::try_from(rng.below(NODES.len() as u64)).unwrap_or(0)];
    match fault {
        Fault::KillController => {
            rig.kill_controller();
            tokio::time::sleep(Duration::from_millis(rng.below(1500))).await;
            rig.start_controller();
        }
        Fault::KillAgent => {
            rig.kill_agent(node);
            tokio::time::sleep(Duration::from_millis(rng.below(1500))).await;
            rig.start_agent(node);
        }
        Fault::CrashBuildKit => rig.docker.crash_and_restart_dockerd(),
        Fault::ExpireLease => {
            // Frozen (SIGSTOP) past its Lease's expiry, as a node that drops off the network
            // while its builds go on, then back: its attempts are NodeLost meanwhile.
            let pid = rig.agents.lock().expect("lock").get(node).map(|a| a.pid());
            if let Some(pid) = pid {
                signal(pid, "-STOP");
                tokio::time::sleep(Duration::from_secs(LEASE_SECONDS + 3)).await;
                signal(pid, "-CONT");
            }
        }
        Fault::RestartApiServer => rig.server.crash_and_restart().await,
    }
}

/// When one attempt ran: start, completion, and the NodeBuild's name.
type Span = (Timestamp, Timestamp, String);

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// Whether every build is Ready with the digest of the image stored under its name, holding
/// what it built.
fn settled(rig: &Rig, builds: &[ImageBuild]) -> bool {
    builds.iter().all(|b| {
        let image = &b.spec.recipe.image;
        let marker = b.annotations().get("chaos/marker").cloned().unwrap_or_default();
        let digest = b.status.as_ref().and_then(|s| s.digest.clone());
        is_true(b, READY)
            && digest.is_some()
            && digest == rig.docker.image_id(image)
            && rig.docker.image_file(image, "built.txt").as_deref() == Some(marker.as_bytes())
    })
}

async fn check_invariants(rig: &Rig, api: &Api<ImageBuild>, ns: &str, names: &[String], round: u64, fault: Fault) {
    let at = format!("round {round} ({fault:?}) in {ns}");
    // Not lost, Ready, and the image under its name is this build's, whole: once kiln has
    // settled. The two nodes share one store, so an attempt cancelled on a frozen node can still
    // finish its export when the node is back, over the retry's image; kiln then sees its image
    // gone from the store and builds it again (`spec.restore`). Seen once in CI (ExpireLease):
    // a Ready build's digest unset when the check listed it, most likely mid-rebuild.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut list = api.list(&ListParams::default()).await.expect("list ImageBuilds");
    while !settled(rig, &list.items) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        list = api.list(&ListParams::default()).await.expect("list ImageBuilds");
    }
    assert_eq!(list.items.len(), names.len(), "{at}: no build is lost");
    for b in &list.items {
        let name = b.name_any();
        let status = b.status.clone().unwrap_or_default();
        let image = &b.spec.recipe.image;
        let stored = rig.docker.image_id(image);
        assert!(stored.is_some(), "{at}: {image} is in the store");
        assert_eq!(status.digest, stored, "{at}: {name}'s digest is the stored image's");
        let marker = b.annotations().get("chaos/marker").cloned().unwrap_or_default();
        assert_eq!(
            rig.docker.image_file(image, "built.txt").as_deref(),
            Some(marker.as_bytes()),
            "{at}: {image} holds what {name} built"
        );
    }
    // Every attempt finished (eventually: a cancelled attempt on a frozen node ends when the
    // node is back), belongs to a build, and none overlapped another of its build on a node.
    let node_builds: Api<NodeBuild> = Api::namespaced(rig.client().await, ns);
    let attempts = support::kiln::eventually(Duration::from_secs(60), "every attempt finished", || async {
        let list = node_builds.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .all(|nb| {
                nb.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(|p| p.is_finished())
            })
            .then_some(list.items)
    })
    .await;
    for nb in &attempts {
        let owner = nb.owner_references().first().map(|o| o.name.clone());
        assert!(
            owner.as_ref().is_some_and(|o| names.contains(o)),
            "{at}: {} is owned by one of the round's builds, not orphaned",
            nb.name_any()
        );
    }
    let mut by_build_node: BTreeMap<(String, String), Vec<Span>> = BTreeMap::new();
    for nb in &attempts {
        let status = nb.status.clone().unwrap_or_default();
        let (Some(start), Some(end)) = (status.start_time, status.completion_time) else {
            continue; // never started: it cannot overlap
        };
        by_build_node
            .entry((nb.spec.image_build.clone(), nb.spec.node_name.clone()))
            .or_default()
            .push((start.0, end.0, nb.name_any()));
    }
    for ((build, node), mut spans) in by_build_node {
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{at}: attempts {} and {} of {build} ran at once on {node}",
                pair[0].2,
                pair[1].2
            );
        }
    }
}

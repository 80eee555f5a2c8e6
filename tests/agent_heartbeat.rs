//! `kiln agent` against a real BuildKit: its Lease carries the node's capacity and is renewed
//! while BuildKit answers; when BuildKit stops answering the controller reports the builder
//! not ready within the lease duration, and ready again once BuildKit is back.

mod support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kiln::api::BuilderPool;
use kiln::api::heartbeat::{Heartbeat, lease_name};
use kube::api::Api;
use support::e2e::{LEASE_SECONDS, NS, POOL, Rig};
use support::kiln::eventually;

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test]
async fn heartbeats_follow_buildkit_and_carry_the_nodes_capacity() {
    let rig = Rig::start(&["beat-node"]).await;
    let client = rig.client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    let name = lease_name(POOL, "beat-node");
    let first = eventually(Duration::from_secs(30), "the agent's lease", || async {
        leases.get_opt(&name).await.ok().flatten()
    })
    .await;
    let beat = Heartbeat::from_lease(&first).expect("a heartbeat lease");
    assert_eq!((beat.pool.as_str(), beat.node.as_str()), (POOL, "beat-node"));
    let capacity = &beat.capacity;
    assert_eq!(capacity.worker, "moby", "Docker's embedded BuildKit");
    assert_eq!(capacity.runtime, "docker");
    assert_eq!(capacity.max_concurrent_builds, 2);
    assert_eq!(capacity.running, 0);
    assert!(
        capacity.platforms.iter().any(|p| p == "linux/amd64"),
        "{:?}",
        capacity.platforms
    );
    assert!(capacity.agent.starts_with("beat-node-"), "{}", capacity.agent);

    // Renewed while BuildKit answers.
    let renewed = eventually(Duration::from_secs(LEASE_SECONDS * 2), "a renewal", || async {
        let b = Heartbeat::from_lease(&leases.get(&name).await.ok()?)?;
        (b.renewed > beat.renewed).then_some(b)
    })
    .await;
    assert!(renewed.is_fresh(k8s_openapi::jiff::Timestamp::now()));
    let pools: Api<BuilderPool> = Api::all(client.clone());
    // This node's entry, not the pool's count: other tests of this binary run their own nodes
    // in the same pool side by side.
    let ready = |want: bool| {
        let pools = pools.clone();
        async move {
            let status = pools.get(POOL).await.ok()?.status?;
            let node = status.nodes.iter().find(|n| n.name == "beat-node")?;
            (node.ready == want).then_some(node.clone())
        }
    };
    eventually(Duration::from_secs(20), "the builder ready in pool status", || {
        ready(true)
    })
    .await;

    // BuildKit stops answering (dockerd frozen): no more heartbeats, the builder turns not ready.
    signal(rig.docker.dockerd_pid, "-STOP");
    let stalled = tokio::time::timeout(Duration::from_secs(LEASE_SECONDS * 3), async {
        eventually(Duration::from_secs(LEASE_SECONDS * 4), "the builder not ready", || {
            ready(false)
        })
        .await
    })
    .await;
    signal(rig.docker.dockerd_pid, "-CONT");
    let node = stalled.unwrap_or_else(|_| panic!("builder still ready with BuildKit frozen\n{}", rig.diagnostics()));
    assert!(
        !node.ready && node.message.as_deref().is_some_and(|m| m.contains("heartbeat expired")),
        "{node:?}"
    );

    // BuildKit answers again: heartbeats resume and the builder is ready again.
    let back = tokio::time::timeout(Duration::from_secs(LEASE_SECONDS * 4), async {
        eventually(
            Duration::from_secs(LEASE_SECONDS * 5),
            "the builder ready again",
            || ready(true),
        )
        .await
    })
    .await;
    if back.is_err() {
        let lease = leases.get(&name).await.ok().and_then(|l| l.spec);
        let status = pools.get(POOL).await.ok().and_then(|p| p.status);
        let reconciles = rig
            .controller
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(|c| c.counter("kiln_reconciles_total", &["builderpool"])));
        panic!(
            "builder not ready again with BuildKit back\nlease: {lease:?}\npool status: {status:?}\npool reconciles: {reconciles:?}\n{}",
            rig.diagnostics()
        );
    }
}

/// The kubelet stops a builder pod with SIGTERM; the agent (PID 1 in its container, where an
/// unhandled SIGTERM is ignored) must exit on it rather than hold up every rollout and pool
/// deletion for the whole grace period until SIGKILL.
#[tokio::test]
async fn the_agent_exits_on_sigterm() {
    let rig = Rig::start(&["term-node"]).await;
    let client = rig.client().await;
    let leases: Api<Lease> = Api::namespaced(client, NS);
    let name = lease_name(POOL, "term-node");
    eventually(Duration::from_secs(30), "the agent's lease", || async {
        leases.get_opt(&name).await.ok().flatten()
    })
    .await;
    assert!(
        rig.terminate_agent("term-node", Duration::from_secs(20)),
        "the agent ignored SIGTERM\n{}",
        rig.diagnostics()
    );
    let log = std::fs::read_to_string(rig.server.dir.join("agent-term-node.log")).unwrap_or_default();
    assert!(log.contains("SIGTERM"), "the agent says why it stops: {log}");
}

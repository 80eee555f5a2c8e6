//! Two `kiln controller` replicas: only the Lease holder reconciles, and when it dies the other
//! takes over within the lease duration; a leader stopped gracefully hands the Lease over.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kiln::api::BuilderPool;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::apiserver::ApiServer;
use support::kiln::{ControllerProcess, eventually};

const LEASE_SECONDS: u64 = 4;

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

/// Stops a replica as a rollout does (SIGTERM) and waits for it to exit.
fn stop_gracefully(replica: &mut ControllerProcess, what: &str) {
    let term = std::process::Command::new("kill")
        .args(["-TERM", &replica.process.pid().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    assert!(
        replica.process.wait_exit(Duration::from_secs(20)),
        "{what} ignored SIGTERM:\n{}",
        replica.log_tail()
    );
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over_when_it_dies() {
    let server = ApiServer::shared().await;
    let client = server.client().await;
    let ns = server.namespace(&client, "leader").await;
    let lease_arg = format!("--lease-duration-seconds={LEASE_SECONDS}");
    let mut first = ControllerProcess::start(server, &ns, "replica-a", &[&lease_arg]);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let leader = eventually(Duration::from_secs(20), "a leader", || async {
        leases
            .get_opt("kiln-controller")
            .await
            .ok()
            .flatten()
            .and_then(|l| holder(&l))
    })
    .await;
    assert_eq!(leader, "replica-a");
    let mut second = ControllerProcess::start(server, &ns, "replica-b", &[&lease_arg]);
    eventually(Duration::from_secs(10), "replica-b serving probes", || async {
        second.get("/healthz")
    })
    .await;

    // Work arrives: only the leader acts on it.
    let name = format!("lead-{ns}");
    let pool = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "BuilderPool", "metadata": {"name": name},
                      "spec": {"nodeSelector": {"kiln.dev/test": ns}}});
    Api::<BuilderPool>::all(client.clone())
        .patch(&name, &PatchParams::apply("kiln-test"), &Patch::Apply(&pool))
        .await
        .expect("pool");
    eventually(Duration::from_secs(20), "the leader reconciling", || async {
        (first.counter("kiln_reconciles_total", &["builderpool"]) > 0.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        second.counter("kiln_reconciles_total", &["builderpool"]),
        0.0,
        "the standby must not act"
    );
    assert_eq!(
        holder(&leases.get("kiln-controller").await.expect("lease")).as_deref(),
        Some("replica-a")
    );

    // A standby told to stop while it waits for leadership (SIGTERM, as on a rollout) stops at
    // once instead of waiting out the pod's grace period.
    let mut third = ControllerProcess::start(server, &ns, "replica-c", &[&lease_arg]);
    eventually(Duration::from_secs(10), "replica-c ready, standing by", || async {
        third.get("/readyz")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_gracefully(&mut third, "a standby");
    assert!(third.log_tail().contains("standing by"), "{}", third.log_tail());

    // The leader dies without a word; the standby takes over within the lease duration.
    let killed = Instant::now();
    first.process.kill();
    eventually(Duration::from_secs(LEASE_SECONDS * 3), "replica-b leading", || async {
        let l = leases.get("kiln-controller").await.ok()?;
        (holder(&l).as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    println!(
        "standby took over {:?} after the leader was killed (lease {LEASE_SECONDS}s)",
        killed.elapsed()
    );
    eventually(Duration::from_secs(20), "the new leader reconciling", || async {
        (second.counter("kiln_reconciles_total", &["builderpool"]) > 0.0).then_some(())
    })
    .await;

    // The new leader is stopped as a rollout stops it (SIGTERM): it gives the Lease up on its
    // way out, so a standby need not wait for it to expire.
    let standby = ControllerProcess::start(server, &ns, "replica-d", &[&lease_arg]);
    eventually(Duration::from_secs(10), "replica-d ready, standing by", || async {
        standby.get("/readyz")
    })
    .await;
    stop_gracefully(&mut second, "the leader");
    let after = leases.get("kiln-controller").await.expect("lease");
    assert_ne!(
        holder(&after).as_deref(),
        Some("replica-b"),
        "a leader that stopped gracefully still holds the Lease:\n{}",
        second.log_tail()
    );
    eventually(Duration::from_secs(LEASE_SECONDS * 3), "replica-d leading", || async {
        let l = leases.get("kiln-controller").await.ok()?;
        (holder(&l).as_deref() == Some("replica-d")).then_some(())
    })
    .await;
}

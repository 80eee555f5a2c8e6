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
    let start = |name: &str| ControllerProcess::start(server, &ns, name, &[&lease_arg]);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let mut first = start("replica-a");
    wait_for_holder(&leases, "replica-a", Duration::from_secs(20)).await;
    let mut second = start("replica-b");
    eventually(Duration::from_secs(10), "replica-b serving probes", || async {
        second.get("/healthz")
    })
    .await;
    only_the_leader_acts(&client, &ns, &leases, &first, &second).await;

    // A standby told to stop while it waits for leadership (SIGTERM, as on a rollout) stops at
    // once instead of waiting out the pod's grace period.
    let mut third = start("replica-c");
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
    wait_for_holder(&leases, "replica-b", Duration::from_secs(LEASE_SECONDS * 3)).await;
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
    let standby = start("replica-d");
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
    wait_for_holder(&leases, "replica-d", Duration::from_secs(LEASE_SECONDS * 3)).await;
}

/// Waits until the leader Lease names `replica`.
async fn wait_for_holder(leases: &Api<Lease>, replica: &str, within: Duration) {
    eventually(within, &format!("{replica} leading"), || async {
        let l = leases.get_opt("kiln-controller").await.ok().flatten()?;
        (holder(&l).as_deref() == Some(replica)).then_some(())
    })
    .await;
}

/// Work arrives (a pool): the leader reconciles it, the standby does not, and the leader keeps
/// the Lease.
async fn only_the_leader_acts(
    client: &kube::Client,
    ns: &str,
    leases: &Api<Lease>,
    leader: &ControllerProcess,
    standby: &ControllerProcess,
) {
    let name = format!("lead-{ns}");
    let pool = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "BuilderPool", "metadata": {"name": name},
                      "spec": {"nodeSelector": {"kiln.dev/test": ns}}});
    Api::<BuilderPool>::all(client.clone())
        .patch(&name, &PatchParams::apply("kiln-test"), &Patch::Apply(&pool))
        .await
        .expect("pool");
    eventually(Duration::from_secs(20), "the leader reconciling", || async {
        (leader.counter("kiln_reconciles_total", &["builderpool"]) > 0.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        standby.counter("kiln_reconciles_total", &["builderpool"]),
        0.0,
        "the standby must not act"
    );
    assert_eq!(
        holder(&leases.get("kiln-controller").await.expect("lease")).as_deref(),
        Some("replica-a")
    );
}

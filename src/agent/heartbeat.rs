//! The heartbeat loop: while BuildKit answers `ListWorkers`, renew this (pool, node)'s Lease with
//! the builder's capacity; when it does not, stop renewing so the Lease expires and the
//! controller stops sending builds here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tracing::{info, warn};

use super::{Settings, State};
use crate::api::heartbeat::{CAPACITY_ANNOTATION, Capacity, HEARTBEAT_LABEL, NODE_LABEL, POOL_LABEL, lease_name};
use crate::buildkit::{Client, WorkerInfo, WorkerKind};

/// How long one readiness check of BuildKit may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Field manager of the agent's Lease writes.
pub const FIELD_MANAGER: &str = "kiln-agent";

/// What one check of BuildKit found.
enum Check {
    Up(Vec<WorkerInfo>),
    Down(String),
}

/// Heartbeats forever.
pub async fn run(client: kube::Client, settings: Settings, state: Arc<State>) {
    let leases: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let name = lease_name(&settings.pool, &settings.node);
    let interval = (settings.lease_duration / 3).max(Duration::from_secs(1));
    let mut buildkit: Option<Client> = None;
    let mut was_up: Option<bool> = None;
    loop {
        let check = check(&settings, &mut buildkit).await;
        let up = matches!(check, Check::Up(_));
        state.buildkit_ready.store(up, Ordering::Relaxed);
        match check {
            Check::Up(workers) => {
                if was_up != Some(true) {
                    info!(buildkit = %settings.buildkit, "BuildKit answers; heartbeating");
                }
                let capacity = capacity(&settings, &state, &workers);
                if let Err(e) = renew(&leases, &name, &settings, &capacity).await {
                    warn!(error = %e, lease = %name, "cannot renew the heartbeat lease");
                }
            }
            Check::Down(reason) => {
                if was_up != Some(false) {
                    warn!(%reason, "BuildKit does not answer; heartbeats stop until it does");
                }
                buildkit = None;
            }
        }
        was_up = Some(up);
        tokio::time::sleep(interval).await;
    }
}

/// Asks BuildKit for its workers, giving up after [`CHECK_TIMEOUT`] (a hung daemon is down).
async fn check(settings: &Settings, buildkit: &mut Option<Client>) -> Check {
    match tokio::time::timeout(CHECK_TIMEOUT, ask(settings, buildkit)).await {
        Ok(check) => check,
        Err(_) => {
            *buildkit = None;
            Check::Down(format!("BuildKit did not answer within {CHECK_TIMEOUT:?}"))
        }
    }
}

async fn ask(settings: &Settings, buildkit: &mut Option<Client>) -> Check {
    if settings.simulated.is_some() {
        return Check::Up(vec![super::simulated::SimulatedBuildKit::worker()]);
    }
    if buildkit.is_none() {
        match Client::connect(&settings.buildkit, settings.tls.clone()).await {
            Ok(c) => *buildkit = Some(c),
            Err(e) => return Check::Down(e.to_string()),
        }
    }
    let Some(client) = buildkit.as_ref() else {
        return Check::Down("not connected".into());
    };
    match client.workers().await {
        Ok(workers) if !workers.is_empty() => Check::Up(workers),
        Ok(_) => Check::Down("BuildKit reports no workers".into()),
        Err(e) => Check::Down(e.to_string()),
    }
}

/// The capacity reported in the heartbeat.
pub fn capacity(settings: &Settings, state: &State, workers: &[WorkerInfo]) -> Capacity {
    let mut platforms: Vec<String> = workers.iter().flat_map(|w| w.platforms.iter().cloned()).collect();
    platforms.dedup();
    let primary = workers.first();
    Capacity {
        max_concurrent_builds: settings.max_concurrent_builds,
        running: state.running.load(Ordering::Relaxed),
        queued: state.queued.load(Ordering::Relaxed),
        platforms,
        buildkit_version: primary.and_then(|w| w.buildkit_version.clone()),
        worker: primary.map(|w| worker_name(w.kind)).unwrap_or_default().to_owned(),
        runtime: settings.runtime.clone(),
        agent: settings.identity.clone(),
    }
}

fn worker_name(kind: WorkerKind) -> &'static str {
    match kind {
        WorkerKind::Moby => "moby",
        WorkerKind::Containerd => "containerd",
        WorkerKind::Oci => "oci",
        WorkerKind::Unknown => "unknown",
    }
}

async fn renew(leases: &Api<Lease>, name: &str, settings: &Settings, capacity: &Capacity) -> Result<(), kube::Error> {
    let labels = BTreeMap::from([
        (HEARTBEAT_LABEL, "true"),
        (POOL_LABEL, settings.pool.as_str()),
        (NODE_LABEL, settings.node.as_str()),
    ]);
    let capacity_json = serde_json::to_string(capacity).unwrap_or_default();
    let seconds = i32::try_from(settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "labels": labels, "annotations": {CAPACITY_ANNOTATION: capacity_json}},
        "spec": {
            "holderIdentity": settings.identity,
            "leaseDurationSeconds": seconds,
            "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(Timestamp::now()),
        },
    });
    leases
        .patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&lease))
        .await?;
    Ok(())
}

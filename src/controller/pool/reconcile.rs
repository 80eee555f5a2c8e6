//! BuilderPool reconcile: read nodes and heartbeats → validate → render → apply → status.
//!
//! Everything that decides is pure (`runtime`, `render`, `status`); this file only reads and
//! writes. It reads the watch caches (`cache`, and the heartbeat table both controllers share,
//! `controller::heartbeats`), not the API. Every write is a server-side apply of the complete
//! desired state, made only when it would change something (`applied`), so running it twice
//! changes nothing the second time, and status is written only when it differs: a reconcile
//! with nothing new makes no API call at all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::applied;
use super::render::{self, Input, POOL_LABEL};
use super::runtime::{self, RUNTIME_LABEL};
use super::status::{self, SelectedNode};
use crate::api::BuilderPool;
use crate::api::builder_pool::{BuilderPoolStatus, RuntimeKind};
use crate::api::conditions::{self, Desired, READY, STALLED, Status};
use crate::api::heartbeat::Heartbeat;
use crate::api::validation;
use crate::controller::{Context, Error, FIELD_MANAGER, STATUS_FIELD_MANAGER};

/// Field manager for the runtime label kiln puts on nodes.
pub const NODE_FIELD_MANAGER: &str = "kiln-controller-nodes";
/// Re-check pools at least this often even when nothing happens.
const RESYNC: Duration = Duration::from_secs(300);

/// Reconciles one BuilderPool: validate → select and label its nodes → one DaemonSet per
/// runtime flavour among them → status from the nodes and their heartbeats.
pub async fn reconcile(pool: Arc<BuilderPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    if pool.meta().deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the DaemonSets.
        return Ok(Action::await_change());
    }
    if let Err(invalid) = validation::builder_pool(&pool.spec) {
        stall_invalid(&ctx, &pool, &invalid.to_string()).await?;
        return Ok(Action::await_change());
    }
    ctx.pool.ready().await?;
    let (mut selected, labelled) = select_nodes(&ctx, &pool);
    ensure_builders(&ctx, &pool, &selected, &labelled).await?;
    // `ready` waited for the heartbeat watch to list; the table is the one the build controller
    // reads, and this pool's snapshot is shared with its reconciles.
    let heartbeats = crate::controller::heartbeats::of_pool(&ctx.heartbeats, &pool.name_any());
    let now = Timestamp::now();
    explain_unready(&ctx, &pool.name_any(), &mut selected, &heartbeats, now).await?;
    let next = status::derive(
        pool.metadata.generation,
        &selected,
        &heartbeats,
        pool.status.as_ref(),
        now,
    );
    if pool.status.as_ref() != Some(&next) {
        write_status(&ctx, &pool, next).await?;
    }
    Ok(Action::requeue(next_check(&heartbeats, now)))
}

/// An invalid spec: `Stalled` with what is wrong; nothing is rendered.
async fn stall_invalid(ctx: &Context, pool: &BuilderPool, invalid: &str) -> Result<(), Error> {
    warn!(pool = %pool.name_any(), %invalid, "invalid BuilderPool");
    let conditions = vec![
        Desired::new(READY, Status::False, "InvalidSpec", invalid.to_owned()),
        Desired::new(STALLED, Status::True, "InvalidSpec", invalid.to_owned()),
    ];
    let mut next = pool.status.clone().unwrap_or_default();
    next.observed_generation = pool.metadata.generation;
    next.conditions = conditions::merge(&next.conditions, &conditions, pool.metadata.generation, &now_time());
    write_status(ctx, pool, next).await
}

/// Labels the selected nodes with their detected runtime (when the pool detects it), applies
/// a DaemonSet per runtime flavour among them and prunes those of flavours no longer there.
async fn ensure_builders(
    ctx: &Context,
    pool: &BuilderPool,
    selected: &[SelectedNode],
    labelled: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let detected = pool.spec.runtime.as_ref().is_none_or(|r| r.kind == RuntimeKind::Auto);
    if detected {
        label_nodes(ctx, selected, labelled).await?;
    }
    let flavours: BTreeSet<RuntimeKind> = match pool.spec.runtime.as_ref().map(|r| r.kind) {
        Some(kind) if kind != RuntimeKind::Auto => BTreeSet::from([kind]),
        _ => selected
            .iter()
            .filter_map(|n| n.runtime.as_ref().ok().copied())
            .collect(),
    };
    apply_builders(ctx, pool, &flavours, detected).await?;
    prune_builders(ctx, &pool.name_any(), &flavours).await
}

/// Pod problems only explain builders that are not ready: while every builder heartbeats (the
/// usual case, and every renewal reconciles the pool) the pods are not read.
async fn explain_unready(
    ctx: &Context,
    pool: &str,
    selected: &mut [SelectedNode],
    heartbeats: &[Heartbeat],
    now: Timestamp,
) -> Result<(), Error> {
    let all_ready = selected
        .iter()
        .filter(|n| n.runtime.is_ok())
        .all(|n| heartbeats.iter().any(|h| h.node == n.name && h.is_fresh(now)));
    if all_ready {
        return Ok(());
    }
    let problems = pod_problems(ctx, pool).await?;
    for node in selected {
        node.pod_problem = problems.get(&node.name).cloned();
    }
    Ok(())
}

/// Just after the next heartbeat expires (a builder may turn unready), at most [`RESYNC`].
fn next_check(heartbeats: &[Heartbeat], now: Timestamp) -> Duration {
    status::next_expiry(heartbeats, now)
        .and_then(|t| t.duration_since(now).try_into().ok())
        .map(|d: Duration| d + Duration::from_millis(200))
        .unwrap_or(RESYNC)
        .min(RESYNC)
}

/// What the kubelet reports about the pool's builder pods that are not running, by node.
async fn pod_problems(ctx: &Context, pool: &str) -> Result<BTreeMap<String, String>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let params = ListParams::default().labels(&format!("{POOL_LABEL}={pool}"));
    let list = pods.list(&params).await.map_err(Error::kube("list builder pods"))?;
    Ok(list
        .items
        .iter()
        .filter_map(|pod| {
            let node = pod.spec.as_ref()?.node_name.clone().unwrap_or_default();
            Some((node, super::pods::problem(pod)?))
        })
        .collect())
}

/// Nodes matching the pool's nodeSelector, each with its runtime.
/// Also returns each node's current runtime label, so labelling needs no further reads.
fn select_nodes(ctx: &Context, pool: &BuilderPool) -> (Vec<SelectedNode>, BTreeMap<String, String>) {
    let nodes = ctx.pool.nodes_matching(&pool.spec.node_selector);
    let labelled = nodes
        .iter()
        .filter_map(|node| Some((node.name_any(), node.labels().get(RUNTIME_LABEL)?.clone())))
        .collect();
    let selected = nodes
        .iter()
        .map(|node| SelectedNode {
            name: node.name_any(),
            runtime: runtime::resolve(pool.spec.runtime.as_ref(), node),
            pod_problem: None,
        })
        .collect();
    (selected, labelled)
}

/// Records each node's detected runtime in a label the DaemonSets select on.
async fn label_nodes(
    ctx: &Context,
    selected: &[SelectedNode],
    labelled: &BTreeMap<String, String>,
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    for node in selected {
        let Ok(kind) = &node.runtime else { continue };
        if labelled.get(&node.name).map(String::as_str) == Some(runtime::slug(*kind)) {
            continue;
        }
        let patch = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node.name, "labels": {RUNTIME_LABEL: runtime::slug(*kind)}},
        });
        nodes
            .patch(
                &node.name,
                &PatchParams::apply(NODE_FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(Error::kube("label node"))?;
        info!(node = %node.name, runtime = runtime::slug(*kind), "labelled node with its runtime");
    }
    Ok(())
}

async fn apply_builders(
    ctx: &Context,
    pool: &BuilderPool,
    flavours: &BTreeSet<RuntimeKind>,
    detected: bool,
) -> Result<(), Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let daemonsets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let configs: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    for &kind in flavours {
        let input = Input {
            pool,
            kind,
            detected,
            namespace: &ctx.namespace,
            default_agent_image: &ctx.agent_image,
            service_account: &ctx.agent_service_account,
        };
        let rendered = render::render(&input).map_err(Error::Render)?;
        let name = rendered.daemonset.name_any();
        let fingerprint = applied::fingerprint(&[
            &serde_json::to_value(&rendered.daemonset).unwrap_or_default(),
            &serde_json::to_value(&rendered.config).unwrap_or_default(),
        ]);
        let live = ctx.pool.daemonset_version(&ctx.namespace, &name);
        if !ctx.pool.applied().needs_apply(&name, fingerprint, live.as_deref()) {
            continue;
        }
        if let Some(config) = &rendered.config {
            configs
                .patch(&config.name_any(), &params, &Patch::Apply(config))
                .await
                .map_err(Error::kube("apply buildkitd ConfigMap"))?;
        }
        let applied = daemonsets
            .patch(&name, &params, &Patch::Apply(&rendered.daemonset))
            .await
            .map_err(Error::kube("apply builder DaemonSet"))?;
        ctx.pool
            .applied()
            .record(&name, fingerprint, applied.resource_version());
    }
    Ok(())
}

/// Deletes this pool's DaemonSets (and configs) for flavours no node needs any more.
async fn prune_builders(ctx: &Context, pool: &str, keep: &BTreeSet<RuntimeKind>) -> Result<(), Error> {
    let keep: BTreeSet<&str> = keep.iter().map(|k| runtime::slug(*k)).collect();
    let daemonsets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let configs: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    for ds in ctx.pool.daemonsets_of(pool) {
        let flavour = ds.labels().get(RUNTIME_LABEL).cloned().unwrap_or_default();
        if !keep.contains(flavour.as_str()) {
            let name = ds.name_any();
            info!(%pool, daemonset = %name, "removing builders for a runtime no selected node has");
            ctx.pool.applied().forget(&name);
            match daemonsets.delete(&name, &DeleteParams::background()).await {
                // Already gone (the cache lags behind a delete): nothing to do.
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(Error::kube("delete DaemonSet")(e)),
            }
            match configs.delete(&name, &DeleteParams::background()).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => return Err(Error::kube("delete ConfigMap")(e)),
            }
        }
    }
    Ok(())
}

async fn write_status(ctx: &Context, pool: &BuilderPool, status: BuilderPoolStatus) -> Result<(), Error> {
    let api: Api<BuilderPool> = Api::all(ctx.client.clone());
    let patch = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "BuilderPool", "status": status});
    api.patch_status(
        &pool.name_any(),
        &PatchParams::apply(STATUS_FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube("write BuilderPool status"))?;
    Ok(())
}

fn now_time() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now())
}

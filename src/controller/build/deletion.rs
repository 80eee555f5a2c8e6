//! Deleting an ImageBuild, in its finalizer: cancel unfinished attempts and wait for the
//! agents (bounded by [`CANCEL_GRACE`]), remove the image from the nodes with `cleanup: Delete`
//! (bounded by [`removal::REMOVAL_GRACE`]), delete the attempts, revoke the agents' Secret
//! grant, then release the finalizer.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::apply::{cancel, publish};
use super::reconcile::{CANCEL_GRACE, FINALIZER};
use super::{grants, removal};
use crate::api::image_build::{ImageBuild, ImageBuildSpec};
use crate::api::node_build::{NodeBuild, NodeBuildPhase};
use crate::controller::{Context, Error};

/// Deletion: cancel unfinished attempts, wait for the agents (bounded), remove the images
/// with `cleanup: Delete` (bounded), delete the attempts, revoke the grant, then release the
/// finalizer.
pub(super) async fn cleanup(
    ctx: &Context,
    builds: &Api<ImageBuild>,
    build: &ImageBuild,
    node_builds: &[NodeBuild],
) -> Result<Action, Error> {
    if !build.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let ns = build.namespace().unwrap_or_default();
    let api: Api<NodeBuild> = Api::namespaced(ctx.client.clone(), &ns);
    let unfinished: Vec<&NodeBuild> = node_builds
        .iter()
        .filter(|nb| {
            !nb.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(NodeBuildPhase::is_finished)
        })
        .collect();
    let waited = build
        .meta()
        .deletion_timestamp
        .as_ref()
        .map(|t| Timestamp::now().duration_since(t.0).as_secs_f64())
        .unwrap_or_default();
    if !unfinished.is_empty() && waited < CANCEL_GRACE.as_secs_f64() {
        cancel_unfinished(ctx, &api, build, &unfinished).await?;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if !unfinished.is_empty() {
        warn!(build = %build.name_any(), "agents did not confirm cancellation within {CANCEL_GRACE:?}; deleting anyway");
    }
    if ImageBuildSpec::removes_images_on_delete(build)
        && let Some(wait) = remove_images(ctx, &api, build, node_builds, waited).await?
    {
        return Ok(wait);
    }
    for nb in node_builds {
        match api.delete(&nb.name_any(), &DeleteParams::background()).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(Error::kube("delete NodeBuild")(e)),
        }
    }
    if grants::reads_secrets(&build.spec.recipe) {
        grants::revoke(ctx, build).await?;
    }
    release_finalizer(builds, build).await
}

/// Asks the agents of the attempts not asked yet to cancel, with an event for each.
async fn cancel_unfinished(
    ctx: &Context,
    api: &Api<NodeBuild>,
    build: &ImageBuild,
    unfinished: &[&NodeBuild],
) -> Result<(), Error> {
    for nb in unfinished.iter().filter(|nb| !nb.spec.cancel) {
        cancel(api, &nb.name_any()).await?;
        let note = format!(
            "cancelling {} on node {} (ImageBuild deleted)",
            nb.name_any(),
            nb.spec.node_name
        );
        publish(ctx, build, false, "Cancelled", &note).await;
    }
    Ok(())
}

/// Removes kiln's finalizer (guarded by the resource version read), so the build goes.
async fn release_finalizer(builds: &Api<ImageBuild>, build: &ImageBuild) -> Result<Action, Error> {
    let remaining: Vec<String> = build.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": build.resource_version()}});
    match builds
        .patch(&build.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) | Err(kube::Error::Api(_)) => Ok(Action::await_change()),
        Err(e) => Err(Error::kube("remove finalizer")(e)),
    }
}

/// `cleanup: Delete`: asks the agents to remove the image, and waits for their answers (at
/// most [`removal::REMOVAL_GRACE`] from the deletion request); then one event per node.
async fn remove_images(
    ctx: &Context,
    api: &Api<NodeBuild>,
    build: &ImageBuild,
    node_builds: &[NodeBuild],
    waited: f64,
) -> Result<Option<Action>, Error> {
    let removals = removal::judge(node_builds);
    for name in &removals.ask {
        let patch = json!({"spec": {"removeImage": true}});
        match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(Error::kube("ask an agent to remove an image")(e)),
        }
    }
    let pending = !removals.ask.is_empty() || !removals.waiting.is_empty();
    if pending && waited < removal::REMOVAL_GRACE.as_secs_f64() {
        return Ok(Some(Action::requeue(Duration::from_secs(1))));
    }
    let late = removals.waiting.iter().map(|(_, node)| removal::unanswered(node));
    for (warning, reason, note) in removals.events.iter().cloned().chain(late) {
        publish(ctx, build, warning, reason, &note).await;
    }
    Ok(None)
}

//! Carrying out a reconcile's plan: the ImageBuild controller's writes. Creating the planned
//! NodeBuilds (the dispatch), cancelling, events, revoking Secret grants, writing the status
//! when the pacing rule says so (`pacing`), and deleting a build whose TTL ran out.

use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use super::memory::{confirm_created, forget_created, just_created, known_for, remember_created, remember_written};
use super::plan::Plan;
use super::{grants, pacing};
use crate::api::image_build::{BuildPhase, ImageBuild, ImageBuildStatus};
use crate::api::node_build::NodeBuild;
use crate::controller::{Context, Error, STATUS_FIELD_MANAGER};

/// Carries out `plan` in order: create the attempts, cancel, publish the events, revoke a
/// finished build's Secret grants, count a build that just finished, write (or pace) the
/// status, delete a build whose TTL ran out.
pub(super) async fn apply(
    ctx: &Context,
    builds: &Api<ImageBuild>,
    build: &ImageBuild,
    plan: Plan,
) -> Result<Action, Error> {
    let ns = build.namespace().unwrap_or_default();
    let node_builds: Api<NodeBuild> = Api::namespaced(ctx.client.clone(), &ns);
    let created = match create_planned(ctx, &node_builds, build, &plan.create).await {
        Ok(created) => created,
        Err(None) => return Ok(Action::await_change()),
        Err(Some(e)) => return Err(e),
    };
    for name in &plan.cancel {
        cancel(&node_builds, name).await?;
    }
    for event in &plan.events {
        publish(ctx, build, event.warning, event.reason, &event.note).await;
    }
    let finished = matches!(plan.status.phase, Some(BuildPhase::Succeeded | BuildPhase::Failed));
    if finished
        && plan.create.is_empty()
        && grants::reads_secrets(&build.spec.recipe)
        && !grants::polls_with_secret(&build.spec.recipe)
    {
        grants::revoke(ctx, build).await?;
    }
    if finished && build.status.as_ref().and_then(|s| s.phase) != plan.status.phase {
        count_finished(ctx, &plan.status);
    }
    let requeue = pace_status(ctx, builds, build, &plan.status, created, plan.requeue).await?;
    if plan.delete {
        info!(build = %build.name_any(), "ttlSecondsAfterFinished passed; deleting");
        builds
            .delete(&build.name_any(), &DeleteParams::background())
            .await
            .map_err(Error::kube("delete expired ImageBuild"))?;
        return Ok(Action::await_change());
    }
    Ok(requeue.map(Action::requeue).unwrap_or_else(Action::await_change))
}

/// Creates the planned attempts, less those an earlier reconcile created that the watch cache
/// does not show yet; each is counted on its node before the first await, and forgotten again
/// if its create fails. Whether any was created, or the error (none when the namespace is
/// being deleted: nothing to start, no error).
async fn create_planned(
    ctx: &Context,
    node_builds: &Api<NodeBuild>,
    build: &ImageBuild,
    planned: &[NodeBuild],
) -> Result<bool, Option<Error>> {
    let to_create: Vec<&NodeBuild> = planned.iter().filter(|nb| !just_created(ctx, nb)).collect();
    for nb in &to_create {
        remember_created(ctx, nb);
    }
    match create_attempts(ctx, node_builds, build, &to_create).await {
        Ok(()) => Ok(!to_create.is_empty()),
        Err((failed_from, e)) => {
            for nb in &to_create[failed_from..] {
                forget_created(ctx, nb);
            }
            Err(e)
        }
    }
}

/// Counts a build that just finished in the metrics, with its time from first attempt to end.
fn count_finished(ctx: &Context, status: &ImageBuildStatus) {
    let seconds = match (&status.start_time, &status.completion_time) {
        (Some(s), Some(c)) => c.0.duration_since(s.0).as_secs_f64(),
        _ => 0.0,
    };
    let result = if status.phase == Some(BuildPhase::Succeeded) {
        "succeeded"
    } else {
        "failed"
    };
    ctx.metrics.build_finished(result, seconds);
}

/// Writes `status` if it differs from the recorded one and the pacing rule says now; returns
/// when to reconcile again: `requeue`, or sooner when the write is deferred (or, after this
/// reconcile `created` attempts, at once).
async fn pace_status(
    ctx: &Context,
    builds: &Api<ImageBuild>,
    build: &ImageBuild,
    status: &ImageBuildStatus,
    created: bool,
    requeue: Option<Duration>,
) -> Result<Option<Duration>, Error> {
    let previous = build.status.clone().unwrap_or_default();
    if previous == *status {
        return Ok(requeue);
    }
    let at = pacing::Moment {
        known_for: known_for(ctx, build),
        delay: ctx.status_delay,
        created,
    };
    Ok(match pacing::when(&previous, status, at) {
        pacing::Write::Now => {
            write_status(builds, build, status).await?;
            remember_written(ctx, build, status);
            requeue
        }
        pacing::Write::After(wait) => Some(requeue.map_or(wait, |r| r.min(wait))),
        pacing::Write::Again => Some(Duration::ZERO),
    })
}

/// Creates the attempts in order, after granting the agents the build's Secrets if it reads
/// any. On failure, returns the index of the first one not created, and the error (none when
/// the namespace is being deleted: nothing to start, no error).
async fn create_attempts(
    ctx: &Context,
    node_builds: &Api<NodeBuild>,
    build: &ImageBuild,
    attempts: &[&NodeBuild],
) -> Result<(), (usize, Option<Error>)> {
    if !attempts.is_empty() && grants::reads_secrets(&build.spec.recipe) {
        grants::ensure(ctx, build).await.map_err(|e| (0, Some(e)))?;
    }
    for (i, nb) in attempts.iter().enumerate() {
        match node_builds.create(&PostParams::default(), nb).await {
            Ok(created) => {
                info!(build = %build.name_any(), node_build = %nb.name_any(), node = %nb.spec.node_name, "dispatched");
                confirm_created(ctx, created);
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(kube::Error::Api(s)) if namespace_terminating(&s) => {
                debug!(build = %build.name_any(), "namespace terminating; not dispatching");
                return Err((i, None));
            }
            Err(e) => return Err((i, Some(Error::kube("create NodeBuild")(e)))),
        }
    }
    Ok(())
}

/// The apiserver refused a create because the namespace is being deleted.
fn namespace_terminating(status: &kube::core::Status) -> bool {
    status
        .details
        .as_ref()
        .is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
}

pub(super) async fn cancel(node_builds: &Api<NodeBuild>, name: &str) -> Result<(), Error> {
    let patch = json!({"spec": {"cancel": true}});
    match node_builds
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
        Err(e) => Err(Error::kube("cancel NodeBuild")(e)),
    }
}

pub(super) async fn write_status(
    builds: &Api<ImageBuild>,
    build: &ImageBuild,
    status: &crate::api::image_build::ImageBuildStatus,
) -> Result<(), Error> {
    let patch = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "status": status});
    builds
        .patch_status(
            &build.name_any(),
            &PatchParams::apply(STATUS_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::kube("write ImageBuild status"))?;
    debug!(build = %build.name_any(), phase = ?status.phase, "status written");
    Ok(())
}

pub(super) async fn publish(ctx: &Context, build: &ImageBuild, warning: bool, reason: &str, note: &str) {
    let event = KubeEvent {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.to_owned(),
        note: Some(note.to_owned()),
        action: "Build".to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &build.object_ref(&())).await {
        warn!(error = %e, reason, "cannot publish event");
    }
}

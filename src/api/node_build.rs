//! `NodeBuild`: one attempt of an `ImageBuild` on one node, written by the controller and
//! executed (and reported on) by that node's agent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Borrow;

use super::image_build::{DigestKind, Progress, SourceStatus};
use super::recipe::BuildRecipe;

/// Label carrying the node a NodeBuild is bound to, so each agent watches only its own.
pub const NODE_LABEL: &str = "kiln.dev/node";
/// Label carrying the name of the owning ImageBuild.
pub const IMAGE_BUILD_LABEL: &str = "kiln.dev/image-build";
/// Label carrying the pool a NodeBuild runs in.
pub const POOL_LABEL: &str = "kiln.dev/pool";
/// The reason an agent reports while an attempt waits for its uploaded context.
pub const WAITING_FOR_UPLOAD: &str = "WaitingForUpload";

/// One attempt of an ImageBuild on one node, like a Pod is one run of a Job.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "NodeBuild",
    namespaced,
    category = "kiln",
    status = "NodeBuildStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "One attempt of an ImageBuild on one node; created by the controller, run by that node's agent.",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "Attempt", type_ = "integer", json_path = ".spec.attempt"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.digest", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct NodeBuildSpec {
    /// The node that runs this attempt. Fixed at creation.
    #[schemars(length(min = 1, max = 253))]
    pub node_name: String,
    /// The BuilderPool whose builder on `nodeName` runs it.
    #[schemars(length(min = 1, max = 253))]
    pub pool: String,
    /// Name of the owning ImageBuild (same namespace).
    #[schemars(length(min = 1, max = 253))]
    pub image_build: String,
    /// The ImageBuild `metadata.generation` this attempt builds.
    #[schemars(range(min = 1))]
    pub generation: i64,
    /// Attempt number, starting at 1.
    #[schemars(range(min = 1))]
    pub attempt: i32,
    /// Cancel the attempt if it has not finished by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    /// Set by the controller to ask the agent to stop this attempt.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
    /// Set by the controller when the ImageBuild is deleted with `cleanup: Delete`: the agent
    /// removes this attempt's image from the node's store, unless a live pod uses it, and
    /// reports what it did in `status.imageRemoval`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove_image: bool,
    /// Protect the built image from the kubelet's image garbage collection where the node's
    /// runtime can (the ImageBuild's `spec.pin`); the agent reports in `status.pin`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pin: bool,
    /// What to build, resolved from the ImageBuild.
    pub build: BuildRecipe,
}

/// Lifecycle of one attempt.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NodeBuildPhase {
    /// Waiting for the agent (or for a free build slot on the node).
    Queued,
    /// BuildKit is building it.
    Running,
    /// The image is in the node's image store.
    Succeeded,
    /// The attempt failed; see `reason` and `message`.
    Failed,
    /// Stopped on request (`spec.cancel`, deletion, or deadline).
    Cancelled,
}

impl NodeBuildPhase {
    /// True once the attempt can no longer change.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// A builder pod's agent, reachable with the pods/proxy (or pods/portforward) subresource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentEndpoint {
    /// Namespace of the builder pod (kiln's).
    pub namespace: String,
    /// Name of the builder pod.
    pub pod: String,
    /// The agent's port in the pod.
    pub port: i32,
}

/// What the agent reports about one attempt.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeBuildStatus {
    /// Queued, Running, Succeeded, Failed or Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<NodeBuildPhase>,
    /// Since when the image this attempt built is gone from the node's store, as its agent
    /// found (unset while it is there, or not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_since: Option<Time>,
    /// kstatus conditions of this attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The agent instance that ran the attempt (changes when the agent restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Where that agent is reached through the apiserver: for `kiln build` to upload the
    /// context to, and for `kiln logs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_endpoint: Option<AgentEndpoint>,
    /// Position in the node's queue while `Queued` (0 = next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i32>,
    /// The image digest produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Whether `digest` is a manifest digest or Docker's image ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_kind: Option<DigestKind>,
    /// The image config digest, when BuildKit reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
    /// The exact source built: for a git source, the commit its ref named when the attempt
    /// started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStatus>,
    /// Steps done so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// When BuildKit started the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the attempt finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// A CamelCase word for why the attempt ended, e.g. `StepFailed`, `AgentRestarted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human-readable explanation, e.g. the failed step and its last log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The built image's size in bytes, as the node's store reports it (Docker: unpacked;
    /// containerd: its manifest's config and compressed layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<i64>,
    /// Whether the image is protected from the kubelet's image garbage collection
    /// (`spec.pin`), and why not where it cannot be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<PinResult>,
    /// What the agent did when asked to remove the image (`spec.removeImage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_removal: Option<ImageRemoval>,
}

/// Whether a built image is pinned on its node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PinResult {
    /// `Pinned` (the runtime and the kubelet keep it), `Unsupported` (they cannot: the message
    /// says which and from which version they can), or `Failed`.
    pub state: PinState,
    /// What was done, and the versions that decide it.
    pub message: String,
}

/// How pinning ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PinState {
    /// Labelled, and honoured by the node's containerd and kubelet.
    Pinned,
    /// The node's runtime or kubelet does not honour pins: the image garbage collector may
    /// still remove it (`restore: Rebuild` then builds it again).
    #[default]
    Unsupported,
    /// The label could not be set.
    Failed,
}

/// The agent's answer to `spec.removeImage`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageRemoval {
    /// `Removed` (or already gone), `Kept` (a pod or container uses it), or `Failed`.
    pub outcome: RemovalOutcome,
    /// What was removed or kept, and why.
    pub message: String,
}

/// How a removal ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RemovalOutcome {
    /// The image's names are gone from the node's store (or were already).
    #[default]
    Removed,
    /// A live pod or a container on the node uses it, so it stays.
    Kept,
    /// The store could not be asked, or refused.
    Failed,
}

/// Of each build's attempts among `node_builds`, the succeeded ones of its newest generation:
/// older generations' images were replaced on purpose, and only the newest is judged.
pub fn newest_succeeded<T: std::borrow::Borrow<NodeBuild>>(node_builds: &[T]) -> Vec<&T> {
    use kube::ResourceExt;
    let key = |nb: &NodeBuild| (nb.namespace().unwrap_or_default(), nb.spec.image_build.clone());
    let mut newest: std::collections::HashMap<(String, String), i64> = std::collections::HashMap::new();
    for nb in node_builds.iter().map(Borrow::borrow) {
        let generation = newest.entry(key(nb)).or_insert(nb.spec.generation);
        *generation = (*generation).max(nb.spec.generation);
    }
    node_builds
        .iter()
        .filter(|t| {
            let nb: &NodeBuild = (*t).borrow();
            newest.get(&key(nb)) == Some(&nb.spec.generation)
                && nb.status.as_ref().and_then(|s| s.phase) == Some(NodeBuildPhase::Succeeded)
        })
        .collect()
}

//! `ImageBuild`: the user's request to build one image, and the status kiln reports back.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::recipe::BuildRecipe;

/// A request to build one container image on the node(s) that will run it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "ImageBuild",
    namespaced,
    shortname = "ib",
    category = "kiln",
    status = "ImageBuildStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A request to build one container image on the node(s) that will run it.",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Nodes", type_ = "string", json_path = ".status.nodeNames"),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.shortDigest"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.reason"),
    printcolumn(name = "Image-Ref", type_ = "string", json_path = ".status.imageRef", priority = 1)
)]
#[serde(rename_all = "camelCase")]
// The recipe's own rule is repeated here: schemars drops extensions of flattened structs.
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.dockerfile) && has(self.dockerfileInline))",
     "message": "set either dockerfile or dockerfileInline, not both"},
    {"rule": "!(has(self.placement) && has(self.placement.nodeName) && has(self.placement.allNodes) && self.placement.allNodes)",
     "message": "placement.nodeName and placement.allNodes are mutually exclusive"}
]))]
pub struct ImageBuildSpec {
    /// What to build.
    #[serde(flatten)]
    pub recipe: BuildRecipe,

    /// Where to build: by default one ready node of the `default` pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,

    /// Give up an attempt after this many seconds (it is cancelled and the build fails with
    /// reason `DeadlineExceeded`). Unset means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<i64>,

    /// How many times a failed attempt is retried before the build fails. Defaults to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 20))]
    pub backoff_limit: Option<i32>,

    /// Delete the ImageBuild this many seconds after it finished (succeeded or failed).
    /// Unset keeps it until it is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,

    /// What happens when a built image disappears from a node's store (the kubelet's image
    /// garbage collection, a replaced node, `crictl rmi`): `Rebuild` (the default) builds it
    /// there again, mostly from cache; `Never` only reports it (`Stalled`, reason
    /// `ImageMissing`). The agents check their stores every `--presence-interval-seconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<Restore>,

    /// What happens to the built image when this ImageBuild is deleted: `Keep` (the default)
    /// leaves it in the nodes' stores; `Delete` has each node's agent remove it, unless a live
    /// pod on that node uses it (then it stays, and an `ImageKept` event names the pod). The
    /// annotation `kiln.dev/cleanup: Delete` asks the same without editing the spec (`kiln rmi`
    /// uses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<Cleanup>,

    /// Protect the image from the kubelet's image garbage collection where the node can: the
    /// CRI label `io.cri-containerd.pinned=pinned`, honoured by containerd 1.7+ with a kubelet
    /// 1.29+. `status.nodes[].pin` says per node whether it holds (`Pinned`) or cannot
    /// (`Unsupported`, e.g. Docker's store or an older containerd or kubelet).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pin: bool,
}

/// What happens to a build's image when the build is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Cleanup {
    /// Leave it in the nodes' stores.
    #[default]
    Keep,
    /// Remove it from the nodes it was built on, unless a pod uses it.
    Delete,
}

/// Annotation that asks for `cleanup: Delete` at deletion without changing the spec (a spec
/// change is a new generation, and so a new build).
pub const CLEANUP_ANNOTATION: &str = "kiln.dev/cleanup";

/// What happens to a build whose image left a node's store.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Restore {
    /// Build it on that node again.
    #[default]
    Rebuild,
    /// Report it, and leave it to the user.
    Never,
}

/// Which builders may run the build.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// The BuilderPool to use. Defaults to `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub pool: Option<String>,
    /// Build on exactly this node (never moved elsewhere, even if the node is lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub node_name: Option<String>,
    /// Build only on nodes with all these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Build on every ready node of the pool that matches, so the image is everywhere; nodes
    /// whose builder turns ready later (a node joining) get it too, each with its own
    /// `timeoutSeconds`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_nodes: bool,
}

/// Default retry count when `backoffLimit` is unset.
pub const DEFAULT_BACKOFF_LIMIT: i32 = 2;
/// Default pool when `placement.pool` is unset.
pub const DEFAULT_POOL: &str = "default";

impl ImageBuildSpec {
    /// The pool this build runs in.
    pub fn pool(&self) -> &str {
        self.placement
            .as_ref()
            .and_then(|p| p.pool.as_deref())
            .unwrap_or(DEFAULT_POOL)
    }

    /// Whether deleting `build` removes its image from the nodes: `spec.cleanup: Delete`, or
    /// the [`CLEANUP_ANNOTATION`] set to `Delete`.
    pub fn removes_images_on_delete(build: &ImageBuild) -> bool {
        build.spec.cleanup == Some(Cleanup::Delete)
            || build
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CLEANUP_ANNOTATION))
                .is_some_and(|v| v == "Delete")
    }

    /// Retries allowed after the first attempt.
    pub fn backoff_limit(&self) -> i32 {
        self.backoff_limit.unwrap_or(DEFAULT_BACKOFF_LIMIT)
    }
}

/// Lifecycle of an `ImageBuild`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BuildPhase {
    /// Accepted; waiting for a builder.
    Pending,
    /// Running on at least one node.
    Building,
    /// The image exists on every target node.
    Succeeded,
    /// Gave up: see `reason` and `message`.
    Failed,
}

impl BuildPhase {
    /// True once the generation's outcome is settled (Succeeded or Failed).
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// What kind of digest `digest` is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DigestKind {
    /// The image manifest digest (containerd nodes); `imageRef` pins it.
    Manifest,
    /// Docker's image ID, the config digest (Docker-runtime nodes have no manifest).
    ImageID,
}

/// What kiln observed and decided about an `ImageBuild`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageBuildStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Building, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BuildPhase>,
    /// kstatus conditions: `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The image digest (see `digestKind`); identical on every node when it is a manifest digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Whether `digest` is a manifest digest or Docker's image ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_kind: Option<DigestKind>,
    /// The first 12 hex digits of `digest`, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_digest: Option<String>,
    /// `name@digest`, when the digest is a manifest digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
    /// The image config digest, when BuildKit reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
    /// The nodes the build targets, comma-separated, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_names: Option<String>,
    /// One entry per target node: the latest attempt there.
    // Always sent, even empty: server-side apply on Kubernetes 1.20 turns a list whose last
    // owned item is dropped into `null`, which the schema refuses (tests/api_schema.rs).
    #[serde(default)]
    #[schemars(schema_with = "node_results")]
    pub nodes: Vec<NodeResult>,
    /// The exact source built: for a git source, the commit its ref named when the build ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStatus>,
    /// Steps done so far on the slowest node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Failed attempts so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<i32>,
    /// When the first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the build finished (succeeded or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// A CamelCase word for why the build is in its phase, e.g. `StepFailed`, `Unschedulable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human-readable explanation, e.g. the failed step and its last log lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn node_results(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    super::schema::list_map::<NodeResult>(generator, "name")
}

/// The outcome on one node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeResult {
    /// Node name.
    pub name: String,
    /// Phase of the latest attempt on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<super::node_build::NodeBuildPhase>,
    /// The NodeBuild of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_build: Option<String>,
    /// The image digest on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Attempt number (1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// When the attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the attempt finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// When the agent found this node's image gone from its store (unset while it is there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_since: Option<Time>,
    /// The image's size on this node, in bytes, as its store reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<i64>,
    /// Whether the image is pinned on this node (`spec.pin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<super::node_build::PinResult>,
    /// Why the attempt ended as it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a source resolved to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The git commit built (full id). Unset for sources that are not git, and for SSH remotes,
    /// which the agent cannot ask (BuildKit fetches them by ref).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The commit the ref names now, when the agent polling it (`source.git.poll`) found it
    /// moved past `revision`: the controller then builds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<String>,
}

/// Build progress in steps.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Steps finished (including cached ones).
    pub completed: i32,
    /// Steps known so far.
    pub total: i32,
    /// Steps answered from cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<i32>,
    /// Name of the step running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
}

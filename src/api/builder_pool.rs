//! `BuilderPool`: where BuildKit builders run (which nodes) and how (images, runtime, limits).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSetUpdateStrategy;
use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::image_policy::ImageRule;

/// The BuildKit image used when `buildkitImage` is unset (pinned). v0.24 is the first release
/// that finds a `FROM name:tag` in containerd's image store without asking its registry
/// (moby/buildkit 43580f9), which node-local builds depend on.
pub const DEFAULT_BUILDKIT_IMAGE: &str = "moby/buildkit:v0.24.0";
/// Builds per node at once when `maxConcurrentBuilds` is unset.
pub const DEFAULT_MAX_CONCURRENT_BUILDS: i32 = 2;

/// A set of nodes that run a BuildKit builder and a kiln agent, and how they run them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kiln.dev",
    version = "v1alpha1",
    kind = "BuilderPool",
    category = "kiln",
    status = "BuilderPoolStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A set of nodes that run a BuildKit builder and a kiln agent, and how they run them.",
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desiredNodes"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyNodes"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct BuilderPoolSpec {
    /// Run builders only on nodes with all these labels. Empty selects every node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for the builder pods, e.g. to build on control-plane nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// The BuildKit image for the `buildkitd` container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub buildkit_image: Option<String>,
    /// The kiln image for the `agent` container. Defaults to the controller's own image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub agent_image: Option<String>,
    /// Which container runtime the builders share images with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeSpec>,
    /// Builds one node runs at once; more wait in its queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrent_builds: Option<i32>,
    /// Builds one node holds waiting for a free slot, beyond `maxConcurrentBuilds`. More wait
    /// in the controller (`Pending`, reason `QueueFull`) and go, oldest first, to the first
    /// matching node with room. Unset: no limit, every build goes to a node at once and waits
    /// in its agent's queue. `allNodes` builds are never held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_queued_builds: Option<i32>,
    /// BuildKit's own step parallelism per build (`max-parallelism`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub max_parallelism: Option<i32>,
    /// BuildKit cache garbage collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc: Option<GcSpec>,
    /// Resources of the `buildkitd` container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// PriorityClass of the builder pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// How the builder DaemonSet rolls out changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<DaemonSetUpdateStrategy>,
    /// Host directory for the pool's BuildKit state (cache, snapshots) on every node, mounted
    /// with Bidirectional propagation. Defaults to `/var/lib/kiln/pools/<pool>`. Two pools must
    /// not share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/\S+$"))]
    pub state_dir: Option<String>,
    /// Build contexts uploaded by `kiln build`: size limit, how long an attempt waits for its
    /// upload, and how long and how many the agents keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploads: Option<UploadsSpec>,
    /// The network `RUN` steps get. Defaults to `Default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_network: Option<RunNetwork>,
    /// Which image names builds in each namespace may write into the nodes' image stores, as
    /// rules of namespaces and name patterns; a build may write a name when a rule that applies
    /// to its namespace has a matching pattern. Unset: each namespace builds only names under
    /// `kiln.local/<namespace>/` (see docs/image-policy.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_images: Vec<ImageRule>,
}

/// The network of a build's `RUN` steps.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RunNetwork {
    /// BuildKit's sandbox network (Docker's default bridge, or buildkitd's CNI/host setup).
    #[default]
    Default,
    /// No network at all: builds that must not reach anything (air-gapped clusters, or a
    /// Docker daemon without a bridge network).
    None,
    /// The node's network (the `network.host` entitlement, which kiln grants its buildkitd).
    Host,
}

/// The container runtime whose image store builds land in.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// `Auto` detects it per node from `status.nodeInfo.containerRuntimeVersion` and labels.
    #[serde(default)]
    pub kind: RuntimeKind,
    /// Path of the runtime's socket on the node; overrides the detected one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/\S+$"))]
    pub socket: Option<String>,
    /// containerd's root directory on the node (its `root` setting), mounted into buildkitd;
    /// overrides the flavour's default (`/var/lib/containerd`, k3s: `/var/lib/rancher`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/\S+$"))]
    pub root: Option<String>,
    /// containerd snapshotter BuildKit unpacks into; must match the kubelet's. Defaults to `overlayfs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9_-]+$"))]
    pub snapshotter: Option<String>,
}

/// A container runtime flavour.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum RuntimeKind {
    /// Detect per node.
    #[default]
    Auto,
    /// containerd at `/run/containerd/containerd.sock`.
    Containerd,
    /// k3s or RKE2's embedded containerd at `/run/k3s/containerd/containerd.sock`.
    K3s,
    /// MicroK8s' containerd at `/var/snap/microk8s/common/run/containerd.sock`.
    MicroK8s,
    /// Docker (dockershim or cri-dockerd): Docker's embedded BuildKit, no buildkitd container.
    Docker,
}

/// Uploaded build contexts on the builders.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadsSpec {
    /// Largest context accepted, in MiB. Defaults to 2048.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "maxContextMiB")]
    #[schemars(range(min = 1))]
    pub max_context_mib: Option<i64>,
    /// How long an attempt waits for its context before failing with `UploadTimeout`.
    /// Defaults to 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub wait_seconds: Option<i64>,
    /// Contexts not used for this long are deleted, as a Go duration. Defaults to `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub keep_duration: Option<String>,
    /// Total size of the kept contexts per node, in MiB; the least recently used go first.
    /// Defaults to 10240.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "maxStoreMiB")]
    #[schemars(range(min = 1))]
    pub max_store_mib: Option<i64>,
}

/// Largest uploaded context when the pool sets none, in MiB.
pub const DEFAULT_MAX_CONTEXT_MIB: i64 = 2048;
/// How long an attempt waits for its upload when the pool sets nothing.
pub const DEFAULT_UPLOAD_WAIT_SECONDS: i64 = 300;
/// How long unused contexts are kept when the pool sets nothing.
pub const DEFAULT_CONTEXT_KEEP: &str = "24h";
/// Total size of kept contexts per node when the pool sets none, in MiB.
pub const DEFAULT_CONTEXT_STORE_MIB: i64 = 10240;

/// BuildKit cache garbage collection.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcSpec {
    /// Collect garbage at all. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Keep at most this much cache, in MiB. Defaults to 10% of the disk (BuildKit's default).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "keepStorageMiB")]
    #[schemars(range(min = 1))]
    pub keep_storage_mib: Option<i64>,
    /// Keep cache used within this long, as a Go duration such as `48h` or `90m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    pub keep_duration: Option<String>,
}

/// What the controller knows about a pool's builders.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuilderPoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes that should run a builder.
    #[serde(default)]
    pub desired_nodes: i32,
    /// Nodes whose builder answers and heartbeats.
    #[serde(default)]
    pub ready_nodes: i32,
    /// One entry per selected node.
    // Always sent, even empty (the last node gone): see `ImageBuildStatus::nodes`.
    #[serde(default)]
    #[schemars(schema_with = "builder_nodes")]
    pub nodes: Vec<BuilderNode>,
    /// kstatus conditions: `Ready`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::conditions")]
    pub conditions: Vec<Condition>,
}

fn builder_nodes(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    super::schema::list_map::<BuilderNode>(generator, "name")
}

/// One node's builder.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuilderNode {
    /// Node name.
    pub name: String,
    /// The runtime detected (or configured) on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeKind>,
    /// Whether the builder heartbeats and accepts builds.
    #[serde(default)]
    pub ready: bool,
    /// Platforms the builder can build for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// Builds running at `lastHeartbeat`, recorded with it (when readiness flips, or once a
    /// minute), so a busy pool's status is not rewritten at every renewal; the node's heartbeat
    /// Lease carries the live count.
    #[serde(default)]
    pub running: i32,
    /// Builds the node runs at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<i32>,
    /// BuildKit version, when the daemon reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildkit_version: Option<String>,
    /// Last heartbeat from the node's agent, as recorded (when readiness flips, or once a
    /// minute; the Lease has every renewal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Time>,
    /// Why the builder is not ready, e.g. an unsupported runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

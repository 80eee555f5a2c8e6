//! The kiln API (`kiln.dev/v1alpha1`): custom resource types and their pure helpers.
//!
//! - [`ImageBuild`]: a user's request to build one image (namespaced, like a Job).
//! - [`NodeBuild`]: one attempt of an `ImageBuild` on one node (namespaced, like a Pod).
//! - [`BuilderPool`]: where and how BuildKit builders run (cluster-scoped).
//! - [`image_policy`]: which image names builds in each namespace may write to the nodes.
//! - [`pod_images`]: whether a build would replace an image a pod of another namespace uses.
//!
//! Everything here is free of I/O, so the controller, the agent and the CLI share it and it is
//! tested without a server.

// The derive's `printcolumn(...)` lists repeat `type_ = "string"`, which clippy's
// duplicated_attributes lint mistakes for repeated attributes.
#[allow(clippy::duplicated_attributes)]
pub mod builder_pool;
pub mod conditions;
pub mod crds;
pub mod heartbeat;
#[allow(clippy::duplicated_attributes)]
pub mod image_build;
pub mod image_pattern;
pub mod image_policy;
#[allow(clippy::duplicated_attributes)]
pub mod node_build;
pub mod pod_images;
pub mod recipe;
pub mod reference;
mod schema;
pub mod validation;

pub use builder_pool::{BuilderPool, BuilderPoolSpec, BuilderPoolStatus};
pub use image_build::{ImageBuild, ImageBuildSpec, ImageBuildStatus};
pub use node_build::{NodeBuild, NodeBuildSpec, NodeBuildStatus};
pub use recipe::BuildRecipe;

/// The API group of every kiln resource.
pub const GROUP: &str = "kiln.dev";
/// The served and stored API version.
pub const VERSION: &str = "v1alpha1";

/// The first `bytes` bytes of the SHA-256 of `data`, as lowercase hex: short stable names and
/// hashes (object-name suffixes, config hashes, cache keys).
pub fn short_sha256(data: &[u8], bytes: usize) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .take(bytes)
        .map(|b| format!("{b:02x}"))
        .collect()
}

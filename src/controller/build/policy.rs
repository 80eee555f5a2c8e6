//! The image-name policy at dispatch: a build that would write a name its pool does not allow
//! its namespace is refused before any attempt exists (`Stalled`, reason `ImageNotAllowed`,
//! the message naming the rule), and tried again when the pool's policy changes.
//!
//! The decision itself is pure ([`crate::api::image_policy`]); this reads its inputs: the pool
//! from the controller's cache, and the namespace's labels only when a rule selects by them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

use crate::api::BuilderPool;
use crate::api::image_build::ImageBuild;
use crate::api::image_policy::{self, Decision};
use crate::controller::{Context, Error};

/// Status and event reason of a refused build.
pub const REASON: &str = "ImageNotAllowed";

/// Whether the build's status says the policy refused it (so a policy change may free it).
pub fn refused(build: &ImageBuild) -> bool {
    build.status.as_ref().and_then(|s| s.reason.as_deref()) == Some(REASON)
}

/// Decides whether the build's pool allows all its names in its namespace. A pool that does not
/// exist has no rules, so the default policy applies to it.
pub async fn check(ctx: &Context, build: &ImageBuild) -> Result<Decision, Error> {
    ctx.pools_listed.wait().await.map_err(Error::CacheStopped)?;
    let pool_name = build.spec.pool();
    let pool = ctx.pools.get(&ObjectRef::<BuilderPool>::new(pool_name));
    let rules = pool
        .as_ref()
        .map(|p| p.spec.allowed_images.as_slice())
        .unwrap_or_default();
    let namespace = build.namespace().unwrap_or_default();
    let labels = if image_policy::reads_namespace_labels(rules) {
        namespace_labels(ctx, &namespace).await?
    } else {
        BTreeMap::new()
    };
    Ok(image_policy::decide_for_pool(
        pool_name,
        rules,
        &namespace,
        &labels,
        &build.spec.recipe.image_names().collect::<Vec<_>>(),
    ))
}

/// The namespace's labels (one read; only for pools whose rules select namespaces by label).
async fn namespace_labels(ctx: &Context, namespace: &str) -> Result<BTreeMap<String, String>, Error> {
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let found = namespaces
        .get_opt(namespace)
        .await
        .map_err(Error::kube("read the build's namespace for the image policy"))?;
    Ok(found.map(|n| n.labels().clone()).unwrap_or_default())
}

//! Grants the agents read access to Secrets only where and while a build needs them: a
//! RoleBinding in the build's namespace (owned by the ImageBuild) binds the agents'
//! ServiceAccount to the `<agent>-secrets` ClusterRole (get secrets) before attempts that
//! reference a Secret are created, and is deleted once the build finishes or goes. The agents
//! hold no cluster-wide right to Secrets; the controller needs only `bind` on that one role.

use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::api::image_build::ImageBuild;
use crate::api::node_build::IMAGE_BUILD_LABEL;
use crate::api::recipe::{BuildRecipe, BuildSource};
use crate::controller::{Context, Error, FIELD_MANAGER};

/// True if building `recipe` reads a Secret: build secrets, registry credentials, git credentials.
pub fn reads_secrets(recipe: &BuildRecipe) -> bool {
    !recipe.secrets.is_empty()
        || recipe.push.as_ref().is_some_and(|p| p.secret_ref.is_some())
        || matches!(&recipe.source, BuildSource::Git(g) if g.secret_ref.is_some())
}

/// True if the agents keep reading the recipe's git Secret after the build finished: they
/// poll the remote (`source.git.poll`) with its token, so the grant stays until deletion.
pub fn polls_with_secret(recipe: &BuildRecipe) -> bool {
    matches!(&recipe.source, BuildSource::Git(g) if g.secret_ref.is_some() && g.poll.is_some())
}

/// The grant's name for `build`.
fn name(build: &ImageBuild) -> String {
    format!("kiln-secrets-{}", build.name_any())
}

/// The ClusterRole granting `get` on Secrets, named after the agents' ServiceAccount.
pub fn secrets_role(agent_service_account: &str) -> String {
    format!("{agent_service_account}-secrets")
}

/// Makes sure the agents may read Secrets in `build`'s namespace.
pub async fn ensure(ctx: &Context, build: &ImageBuild) -> Result<(), Error> {
    let ns = build.namespace().unwrap_or_default();
    let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name(build), "namespace": ns,
                     "labels": {IMAGE_BUILD_LABEL: build.name_any(), "app.kubernetes.io/managed-by": FIELD_MANAGER},
                     "ownerReferences": build.controller_owner_ref(&()).into_iter().collect::<Vec<_>>()},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": secrets_role(&ctx.agent_service_account)},
        "subjects": [{"kind": "ServiceAccount", "name": ctx.agent_service_account, "namespace": ctx.namespace}],
    });
    api.patch(
        &name(build),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&binding),
    )
    .await
    .map_err(Error::kube("grant the agents the build's Secrets"))?;
    Ok(())
}

/// Removes the grant (the build finished, or is being deleted).
pub async fn revoke(ctx: &Context, build: &ImageBuild) -> Result<(), Error> {
    let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &build.namespace().unwrap_or_default());
    match api.delete(&name(build), &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::kube("revoke the agents' grant")(e)),
    }
}

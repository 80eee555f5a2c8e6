//! The commit a git source's ref names, resolved by the agent just before it builds
//! ([`crate::git`]), so the build uses exactly that commit and its status and image say which.

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;

use super::request::{Refusal, secret_value};
use crate::api::recipe::{BuildRecipe, BuildSource};
use crate::git::{self, GitError};

/// The token of a git source's `secretRef` (key `password` of a basic-auth Secret), if it
/// names one.
pub async fn token(client: &Client, namespace: &str, recipe: &BuildRecipe) -> Result<Option<String>, Refusal> {
    let BuildSource::Git(source) = &recipe.source else {
        return Ok(None);
    };
    let Some(secret) = &source.secret_ref else {
        return Ok(None);
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let value = secret_value(&secrets, &secret.name, "password").await?;
    String::from_utf8(value).map(Some).map_err(|_| {
        (
            "InvalidSpec",
            format!("the password of Secret {:?} is not UTF-8 text", secret.name),
        )
    })
}

/// The commit to build, for a git source the agent can ask; `None` otherwise.
pub async fn resolve(recipe: &BuildRecipe, token: Option<&str>) -> Result<Option<String>, Refusal> {
    let BuildSource::Git(source) = &recipe.source else {
        return Ok(None);
    };
    git::resolve(&source.url, source.reference.as_deref(), token)
        .await
        .map_err(|e| (reason_of(&e), e.to_string()))
}

/// The status reason for a failed resolution; the controller retries only `SourceFetch`.
fn reason_of(e: &GitError) -> &'static str {
    match e {
        GitError::RefNotFound { .. } | GitError::NoHead => "GitRefNotFound",
        GitError::Denied { .. } => "GitAccessDenied",
        GitError::Unreachable { .. } | GitError::Remote(_) | GitError::Protocol(_) => "SourceFetch",
    }
}

//! Turns a NodeBuild's recipe into a BuildKit request: the context (git, http, or an uploaded
//! tarball served to BuildKit by this agent), Dockerfile, arguments, image names, and the
//! referenced Secrets' values (read at build time, never stored). Also names the status reason
//! for each BuildKit error.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;

use super::contexts::ContextDigest;
use crate::api::recipe::{BuildRecipe, BuildSource, PullPolicy};
use crate::api::reference::Reference;
use crate::buildkit::{self, BuildRequest, Context, Dockerfile, Network};

/// The OCI annotation for the commit an image was built from.
pub const REVISION_LABEL: &str = "org.opencontainers.image.revision";
/// The OCI annotation for the repository an image was built from.
pub const SOURCE_LABEL: &str = "org.opencontainers.image.source";

/// A failure before BuildKit is asked: the status reason and message.
pub type Refusal = (&'static str, String);

/// Builds the request for `recipe` of a NodeBuild in `namespace`. `contexts_url` is where this
/// agent serves uploaded contexts to BuildKit (`http://…/contexts/<token>`). `revision` is the
/// commit a git source's ref resolved to: it is what BuildKit fetches, and the image's
/// `org.opencontainers.image.revision` and `.source` labels say so (unless the recipe sets them).
pub async fn build_request(
    client: &Client,
    namespace: &str,
    recipe: &BuildRecipe,
    network: Network,
    contexts_url: &str,
    revision: Option<&str>,
) -> Result<BuildRequest, Refusal> {
    let context = context(recipe, contexts_url, revision)?;
    let dockerfile = match (&recipe.dockerfile_inline, &recipe.dockerfile) {
        (Some(text), _) => Dockerfile::Inline(text.clone()),
        (None, Some(path)) => Dockerfile::Path(path.clone()),
        (None, None) => Dockerfile::default(),
    };
    let mut request = BuildRequest::new(context, dockerfile);
    request.target = recipe.target.clone();
    request.build_args = recipe.build_args.clone();
    request.labels = labels(recipe, revision);
    request.platforms = recipe.platforms.clone();
    request.no_cache = recipe.no_cache;
    request.pull = match recipe.pull.unwrap_or_default() {
        PullPolicy::IfNotPresent => buildkit::Pull::PreferLocal,
        PullPolicy::Always => buildkit::Pull::Always,
    };
    request.network = network;
    let mut names = Vec::new();
    for r in recipe.image_names() {
        let parsed = Reference::parse(r).map_err(|e| ("InvalidSpec", format!("image {r:?}: {e}")))?;
        names.push(parsed.tagged().to_string());
    }
    request.export = buildkit::Export {
        names,
        push: recipe.push.as_ref().is_some_and(|p| p.enabled),
        unpack: true,
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for s in &recipe.secrets {
        let value = secret_value(&secrets, &s.secret_key_ref.name, &s.secret_key_ref.key).await?;
        request.secrets.insert(s.id.clone(), value);
    }
    if let Some(auth) = recipe.push.as_ref().and_then(|p| p.secret_ref.as_ref()) {
        request.registry_auth = Some(secret_value(&secrets, &auth.name, ".dockerconfigjson").await?);
    }
    Ok(request)
}

/// Where BuildKit fetches the context: the git repository at `revision` (else the recipe's
/// ref), the HTTP URL, or, for an upload, this agent's own URL for its digest.
fn context(recipe: &BuildRecipe, contexts_url: &str, revision: Option<&str>) -> Result<Context, Refusal> {
    Ok(match &recipe.source {
        BuildSource::Git(g) => Context::Git {
            url: g.url.clone(),
            reference: revision.map(str::to_owned).or_else(|| g.reference.clone()),
            subdir: g.sub_path.clone(),
        },
        BuildSource::Http(h) => Context::Http { url: h.url.clone() },
        BuildSource::Upload(u) => {
            let digest = ContextDigest::parse(&u.digest).ok_or_else(|| {
                (
                    "InvalidSpec",
                    format!("upload digest {:?} is not sha256:<64 hex>", u.digest),
                )
            })?;
            Context::Http {
                url: format!("{contexts_url}/{}", digest.file_name()),
            }
        }
    })
}

/// The image's labels: the recipe's, and for a git source the commit built and where from
/// (OCI's `revision` and `source`), unless the recipe sets them.
fn labels(recipe: &BuildRecipe, revision: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = recipe.labels.clone();
    if let (BuildSource::Git(g), Some(commit)) = (&recipe.source, revision) {
        let oci = [
            (REVISION_LABEL, commit.to_owned()),
            (SOURCE_LABEL, crate::git::without_credentials(&g.url)),
        ];
        for (key, value) in oci {
            labels.entry(key.to_owned()).or_insert(value);
        }
    }
    labels
}

/// A key of a Secret. The controller grants this agent read access in the build's namespace
/// just before it creates the attempt; a refusal is retried for a few seconds, the time the
/// apiserver's authorizer takes to see a new RoleBinding.
pub(super) async fn secret_value(
    secrets: &Api<Secret>,
    name: &str,
    key: &str,
) -> Result<Vec<u8>, (&'static str, String)> {
    let mut tries = 0;
    let secret = loop {
        match secrets.get_opt(name).await {
            Ok(s) => break s,
            Err(kube::Error::Api(e)) if e.code == 403 && tries < 20 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(kube::Error::Api(e)) if e.code == 403 => {
                return Err((
                    "SecretForbidden",
                    format!(
                        "kiln's agent may not read Secret {name:?}: the controller grants that while a build that references it runs; check the controller's RBAC (bind on the agent-secrets ClusterRole)"
                    ),
                ));
            }
            Err(e) => return Err(("SecretNotFound", format!("cannot read Secret {name:?}: {e}"))),
        }
    };
    let secret = secret.ok_or_else(|| {
        (
            "SecretNotFound",
            format!("Secret {name:?} does not exist in the ImageBuild's namespace"),
        )
    })?;
    secret
        .data
        .and_then(|mut d| d.remove(key))
        .map(|b| b.0)
        .ok_or_else(|| ("SecretNotFound", format!("Secret {name:?} has no key {key:?}")))
}

/// The status reason for a BuildKit error.
pub fn reason_of(e: &buildkit::Error) -> &'static str {
    match e {
        buildkit::Error::DockerfileParse { .. } => "DockerfileParse",
        buildkit::Error::StepFailed { .. } => "StepFailed",
        buildkit::Error::SourceFetch { .. } => "SourceFetch",
        buildkit::Error::Auth { .. } => "RegistryAuth",
        buildkit::Error::Cancelled => "Cancelled",
        buildkit::Error::Unreachable { .. } => "BuildKitUnavailable",
        buildkit::Error::InvalidRequest(_) => "InvalidRequest",
        _ => "BuildFailed",
    }
}

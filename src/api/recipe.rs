//! What to build: the part of an `ImageBuild` that is copied, resolved, into each `NodeBuild`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Everything BuildKit needs to produce the image, independent of where it runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.dockerfile) && has(self.dockerfileInline))",
     "message": "set either dockerfile or dockerfileInline, not both"}
]))]
pub struct BuildRecipe {
    /// The image reference to produce, e.g. `example.com/team/app:dev` (Tilt passes
    /// `$EXPECTED_REF`). The built image is stored on the node under this name.
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[^\s]+$"))]
    pub image: String,

    /// More names for the same image (full references), stored alongside `image`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::string_set")]
    pub additional_tags: Vec<String>,

    /// Where the build context comes from: exactly one of `git`, `http` or `upload`.
    pub source: BuildSource,

    /// Path of the Dockerfile inside the context. Defaults to `Dockerfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub dockerfile: Option<String>,

    /// A Dockerfile given inline; the context still comes from `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub dockerfile_inline: Option<String>,

    /// The stage of a multi-stage Dockerfile to build. Defaults to the last stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub target: Option<String>,

    /// Build arguments (`ARG`) by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub build_args: BTreeMap<String, String>,

    /// Build secrets for `RUN --mount=type=secret,id=ID`, read from Secrets in the same
    /// namespace when the build runs. Their values are never copied into any object or log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "build_secrets")]
    pub secrets: Vec<BuildSecret>,

    /// Target platforms as `os/arch[/variant]`, e.g. `linux/amd64`. Defaults to the node's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::schema::platforms")]
    pub platforms: Vec<String>,

    /// Labels (`LABEL`) added to the image config.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Build every step anew, ignoring BuildKit's cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,

    /// When `FROM` images are fetched from their registry. `IfNotPresent` (the default) uses an
    /// image the node already has — one kiln built, or one loaded by hand — without contacting
    /// any registry, and pulls only what is missing; `Always` asks the registry for every `FROM`
    /// first, as `docker build --pull` does, so a moved tag is picked up. BuildKit's cache keys
    /// hold the base image's resolved digest, so a base that resolves differently rebuilds what
    /// depends on it either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullPolicy>,

    /// Also push the image to its registry. Off by default: kiln's point is that the image
    /// is already where it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushSpec>,
}

impl BuildRecipe {
    /// Every name the build writes: `image`, then each of `additionalTags`.
    pub fn image_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.image.as_str()).chain(self.additional_tags.iter().map(String::as_str))
    }

    /// The image names as stores know them (`app:dev` is `docker.io/library/app:dev`);
    /// names that do not parse are left out (validation refuses them first).
    pub fn normalised_names(&self) -> Vec<String> {
        self.image_names()
            .filter_map(|n| super::reference::Reference::parse(n).ok())
            .map(|r| r.tagged().to_string())
            .collect()
    }
}

fn build_secrets(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    super::schema::list_map::<BuildSecret>(generator, "id")
}

/// When `FROM` images are fetched from their registry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Use the node's image when it has one; pull only missing images.
    #[default]
    IfNotPresent,
    /// Always resolve `FROM` images against their registry (`docker build --pull`).
    Always,
}

/// The build context: exactly one of its fields is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BuildSource {
    /// A git repository, fetched by BuildKit.
    Git(GitSource),
    /// An http(s) URL of a tarball (optionally compressed), fetched by BuildKit.
    Http(HttpSource),
    /// A context tarball uploaded by `kiln build`, addressed by its digest.
    Upload(UploadSource),
}

impl Default for BuildSource {
    fn default() -> Self {
        BuildSource::Http(HttpSource::default())
    }
}

/// A git repository as the build context.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// Repository URL: `https://…/repo.git`, `git://…`, or `git@host:path`.
    #[schemars(length(min = 1), regex(pattern = r"^(https?://|git://|ssh://|git@)\S+$"))]
    pub url: String,
    /// Branch, tag or commit to build. Defaults to the remote's default branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "ref")]
    #[schemars(length(min = 1))]
    pub reference: Option<String>,
    /// Directory inside the repository to use as the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub sub_path: Option<String>,
    /// A Secret in the same namespace with credentials for the repository
    /// (`kubernetes.io/basic-auth`: key `password` is used as the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// Build again when the ref moves: the agents holding the build's image ask the remote
    /// every `intervalSeconds` which commit the ref names, and a new commit is built on their
    /// nodes under the same image name (the tag then names the new commit's image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll: Option<GitPoll>,
}

/// How often to ask a git remote whether the ref moved.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitPoll {
    /// Seconds between two questions to the remote (at least 5; a minute or more is kind to
    /// shared git hosts).
    #[schemars(range(min = 5))]
    pub interval_seconds: i64,
}

/// An http(s) tarball as the build context.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    /// URL of a tar archive (plain, gzip, bzip2 or xz).
    #[schemars(length(min = 1), regex(pattern = r"^https?://\S+$"))]
    pub url: String,
    /// Expected SHA-256 of the archive, as 64 hex digits; the build fails on a mismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: Option<String>,
}

/// A context uploaded by `kiln build`: a tarball the CLI sends to the agent of each node an
/// attempt is bound to, through the apiserver; the agent builds once it holds these bytes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UploadSource {
    /// Content digest of the uploaded context tarball, `sha256:<64 hex>`.
    #[schemars(regex(pattern = r"^sha256:[a-f0-9]{64}$"))]
    pub digest: String,
    /// Size of the tarball in bytes; an agent refuses a context over its pool's limit before
    /// anything is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub size: Option<i64>,
}

/// A reference to an object in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectReference {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A build secret taken from a key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildSecret {
    /// The id used in the Dockerfile: `RUN --mount=type=secret,id=<id>`.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[A-Za-z0-9_.-]+$"))]
    pub id: String,
    /// The Secret key holding the value.
    pub secret_key_ref: SecretKeySelector,
}

/// A key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Pushing the built image to its registry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushSpec {
    /// Push after building.
    #[serde(default)]
    pub enabled: bool,
    /// A `kubernetes.io/dockerconfigjson` Secret with credentials for the registry; also used
    /// to pull private base images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
}

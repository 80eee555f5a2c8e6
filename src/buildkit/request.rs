//! What to build ([`BuildRequest`]) and its translation into a `SolveRequest`
//! for the `dockerfile.v0` frontend.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use bollard_buildkit_proto::moby::buildkit::v1 as control;
use bollard_buildkit_proto::pb;

use super::Error;
use super::build_context::Context;
use super::llb;
use super::worker::WorkerKind;

/// The session secret a git context's token is served as: the id the dockerfile frontend's own
/// git sources ask for, and the one kiln's git LLB names.
pub const GIT_AUTH_TOKEN: &str = "GIT_AUTH_TOKEN";

/// Which Dockerfile to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dockerfile {
    /// A path inside the context (`Dockerfile`, `docker/app.Dockerfile`).
    Path(String),
    /// The Dockerfile's text, given directly.
    Inline(String),
}

impl Default for Dockerfile {
    fn default() -> Self {
        Dockerfile::Path("Dockerfile".to_string())
    }
}

/// Where the image goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Export {
    /// Image references to create (`registry/app:tag`); may be empty.
    pub names: Vec<String>,
    /// Push to the registry (containerd/OCI workers only).
    pub push: bool,
    /// Unpack into the worker's snapshotter, so containers start without an
    /// unpack step (containerd worker).
    pub unpack: bool,
}

/// Network for `RUN` steps (the frontend's `force-network-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// BuildKit's default (a sandboxed network with outbound access). On
    /// Docker started with `--bridge=none` this fails (`could not find bridge
    /// docker0`): use [`Network::None`] there.
    #[default]
    Default,
    /// No network at all in `RUN` steps.
    None,
    /// The host's network; needs the daemon to allow the `network.host`
    /// entitlement.
    Host,
}

/// Where `FROM` images are looked up (the frontend's `image-resolve-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pull {
    /// Use an image already in the worker's store (containerd namespace `k8s.io`, or Docker's
    /// image store) without contacting its registry; pull only what is missing. BuildKit's
    /// default on a containerd worker asks the registry first and falls back to the store
    /// only after that fails, which for a node-local image means DNS timeouts on every build.
    #[default]
    PreferLocal,
    /// Resolve every `FROM` against its registry first (`docker build --pull`).
    Always,
}

impl Pull {
    /// The frontend's value for `image-resolve-mode`.
    pub fn resolve_mode(self) -> &'static str {
        match self {
            Pull::PreferLocal => "local",
            Pull::Always => "pull",
        }
    }
}

/// One Dockerfile build.
///
/// `Debug` prints secret ids but never their values, and no registry credentials.
#[derive(Clone)]
pub struct BuildRequest {
    /// The build context.
    pub context: Context,
    /// The Dockerfile: a path in the context, or inline text.
    pub dockerfile: Dockerfile,
    /// The stage to build (`--target`).
    pub target: Option<String>,
    /// `ARG` values (`--build-arg`).
    pub build_args: BTreeMap<String, String>,
    /// Image labels (`--label`).
    pub labels: BTreeMap<String, String>,
    /// Target platforms (`linux/amd64`, …); the worker's default when empty.
    pub platforms: Vec<String>,
    /// Ignore the build cache for every stage.
    pub no_cache: bool,
    /// Where `FROM` images come from.
    pub pull: Pull,
    /// Exporter settings.
    pub export: Export,
    /// Build secrets by id, for `RUN --mount=type=secret,id=…`. Served by the
    /// session's Secrets service; masked out of logs, progress and errors.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// Registry credentials as Docker config JSON (the `.dockerconfigjson` of
    /// a `kubernetes.io/dockerconfigjson` Secret), for private base images and
    /// `push`.
    pub registry_auth: Option<Vec<u8>>,
    /// Network of `RUN` steps.
    pub network: Network,
    /// Extra frontend attributes passed verbatim (escape hatch; e.g.
    /// `image-resolve-mode`, `add-hosts`). They override kiln's own.
    pub extra_frontend_attrs: BTreeMap<String, String>,
}

impl fmt::Debug for BuildRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secrets: Vec<String> = self
            .secrets
            .iter()
            .map(|(k, v)| format!("{k}=<{} bytes redacted>", v.len()))
            .collect();
        f.debug_struct("BuildRequest")
            .field("context", &self.context)
            .field("dockerfile", &self.dockerfile)
            .field("target", &self.target)
            .field("build_args", &self.build_args)
            .field("labels", &self.labels)
            .field("platforms", &self.platforms)
            .field("no_cache", &self.no_cache)
            .field("pull", &self.pull)
            .field("export", &self.export)
            .field("secrets", &secrets)
            .field(
                "registry_auth",
                &self
                    .registry_auth
                    .as_ref()
                    .map(|a| format!("<{} bytes redacted>", a.len())),
            )
            .field("network", &self.network)
            .field("extra_frontend_attrs", &self.extra_frontend_attrs)
            .finish()
    }
}

impl BuildRequest {
    /// A request for `context` with the given Dockerfile and defaults elsewhere.
    pub fn new(context: Context, dockerfile: Dockerfile) -> Self {
        BuildRequest {
            context,
            dockerfile,
            target: None,
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            platforms: Vec::new(),
            no_cache: false,
            pull: Pull::default(),
            export: Export::default(),
            secrets: BTreeMap::new(),
            registry_auth: None,
            network: Network::default(),
            extra_frontend_attrs: BTreeMap::new(),
        }
    }

    /// Checks the request without contacting BuildKit.
    pub fn validate(&self) -> Result<(), Error> {
        self.context.validate()?;
        match &self.dockerfile {
            Dockerfile::Path(p) if p.trim().is_empty() => {
                return Err(Error::InvalidRequest("the Dockerfile path is empty".into()));
            }
            Dockerfile::Inline(t) if t.trim().is_empty() => {
                return Err(Error::InvalidRequest("the inline Dockerfile is empty".into()));
            }
            _ => {}
        }
        for k in self.build_args.keys().chain(self.labels.keys()) {
            if k.is_empty() || k.contains('=') {
                return Err(Error::InvalidRequest(format!(
                    "build arg / label name {k:?} must be non-empty and contain no '='"
                )));
            }
        }
        for id in self.secrets.keys() {
            if id.is_empty() || id.contains(',') || id.contains('=') {
                return Err(Error::InvalidRequest(format!(
                    "secret id {id:?} must be non-empty and contain no ',' or '='"
                )));
            }
        }
        for p in &self.platforms {
            let parts: Vec<&str> = p.split('/').collect();
            if !(2..=3).contains(&parts.len()) || parts.iter().any(|s| s.is_empty()) {
                return Err(Error::InvalidRequest(format!(
                    "platform {p:?} must look like os/arch or os/arch/variant"
                )));
            }
        }
        for n in &self.export.names {
            if n.is_empty() || n.contains(',') || n.chars().any(char::is_whitespace) {
                return Err(Error::InvalidRequest(format!(
                    "image name {n:?} must be a single non-empty reference"
                )));
            }
        }
        if self.export.push && self.export.names.is_empty() {
            return Err(Error::InvalidRequest("push needs at least one image name".into()));
        }
        Ok(())
    }
}

/// The exporter for a worker: `moby` on Docker, `image` elsewhere.
pub(crate) fn exporter_for(export: &Export, worker: WorkerKind) -> Result<(String, HashMap<String, String>), Error> {
    let mut attrs = HashMap::new();
    if !export.names.is_empty() {
        attrs.insert("name".to_string(), export.names.join(","));
    }
    match worker {
        WorkerKind::Moby => {
            if export.push {
                return Err(Error::InvalidRequest(
                    "push is not possible on Docker's embedded BuildKit: its moby exporter only stores into Docker's image store".into(),
                ));
            }
            Ok(("moby".to_string(), attrs))
        }
        WorkerKind::Containerd | WorkerKind::Oci | WorkerKind::Unknown => {
            attrs.insert("push".to_string(), export.push.to_string());
            attrs.insert("unpack".to_string(), export.unpack.to_string());
            Ok(("image".to_string(), attrs))
        }
    }
}

/// Builds the `SolveRequest` for the `dockerfile.v0` frontend.
///
/// Exporter fields 3/4 (read by BuildKit ≤ v0.12, and Docker 20.10) and 13
/// (v0.13+) are both set, as BuildKit's own Go client does.
pub(crate) fn solve_request(
    req: &BuildRequest,
    build_ref: &str,
    session_id: &str,
    worker: WorkerKind,
) -> Result<control::SolveRequest, Error> {
    req.validate()?;
    let (mut attrs, inputs) = source_inputs(req);
    let entitlements = build_options(req, &mut attrs);
    let (exporter, exporter_attrs) = exporter_for(&req.export, worker)?;
    Ok(control::SolveRequest {
        r#ref: build_ref.to_string(),
        session: session_id.to_string(),
        frontend: "dockerfile.v0".to_string(),
        frontend_attrs: attrs,
        frontend_inputs: inputs,
        exporter_deprecated: exporter.clone(),
        exporter_attrs_deprecated: exporter_attrs.clone(),
        exporters: vec![control::Exporter {
            r#type: exporter,
            attrs: exporter_attrs,
        }],
        entitlements,
        ..Default::default()
    })
}

/// Where the frontend finds the context and the Dockerfile: attributes (`context`,
/// `contextsubdir`, `filename`) and LLB inputs, by the kind of Dockerfile and context.
fn source_inputs(req: &BuildRequest) -> (HashMap<String, String>, HashMap<String, pb::Definition>) {
    let context = &req.context;
    let git_token = req.secrets.contains_key(GIT_AUTH_TOKEN);
    let mut attrs: HashMap<String, String> = HashMap::new();
    let mut inputs = HashMap::new();
    let subdir = context.subdir();
    if let Some(d) = &subdir {
        attrs.insert("contextsubdir".into(), d.clone());
    }
    match &req.dockerfile {
        Dockerfile::Path(path) => {
            // The frontend reads the Dockerfile from the unscoped checkout,
            // so a path relative to the subdirectory gets it as a prefix.
            let path = path.trim_start_matches("./").trim_start_matches('/');
            let filename = match &subdir {
                Some(d) => format!("{d}/{path}"),
                None => path.to_string(),
            };
            attrs.insert("filename".into(), filename);
            let native = match context {
                Context::Git { url, .. } => Context::frontend_detects_git(url),
                Context::Http { .. } => true,
            };
            if native {
                attrs.insert("context".into(), context.frontend_url());
            } else {
                // The frontend would take an https URL without `.git` for a
                // tarball: hand it the git checkout as both inputs instead.
                let def = context.to_llb(git_token);
                inputs.insert("context".to_string(), def.clone());
                inputs.insert("dockerfile".to_string(), def);
            }
        }
        Dockerfile::Inline(text) => {
            // With a `context` attribute the frontend ignores its inputs
            // (BuildKit v0.8 builder/build.go), so the context goes in as an
            // input too, built from the same URL.
            attrs.insert("filename".into(), "Dockerfile".into());
            inputs.insert("context".to_string(), context.to_llb(git_token));
            inputs.insert(
                "dockerfile".to_string(),
                llb::single_file("Dockerfile", text.as_bytes()),
            );
        }
    }
    (attrs, inputs)
}

/// The build's options as frontend attributes (target, build args, labels, platforms, cache,
/// resolve mode, network, extra attributes); returns the entitlements they need.
fn build_options(req: &BuildRequest, attrs: &mut HashMap<String, String>) -> Vec<String> {
    if let Some(t) = req.target.as_deref().filter(|t| !t.is_empty()) {
        attrs.insert("target".into(), t.to_string());
    }
    for (k, v) in &req.build_args {
        attrs.insert(format!("build-arg:{k}"), v.clone());
    }
    for (k, v) in &req.labels {
        attrs.insert(format!("label:{k}"), v.clone());
    }
    if !req.platforms.is_empty() {
        attrs.insert("platform".into(), req.platforms.join(","));
    }
    if req.no_cache {
        attrs.insert("no-cache".into(), String::new());
    }
    attrs.insert("image-resolve-mode".into(), req.pull.resolve_mode().into());
    let mut entitlements = Vec::new();
    match req.network {
        Network::Default => {}
        Network::None => {
            attrs.insert("force-network-mode".into(), "none".into());
        }
        Network::Host => {
            attrs.insert("force-network-mode".into(), "host".into());
            entitlements.push("network.host".to_string());
        }
    }
    for (k, v) in &req.extra_frontend_attrs {
        attrs.insert(k.clone(), v.clone());
    }
    entitlements
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;

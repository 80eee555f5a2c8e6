//! What to build ([`BuildRequest`]) and its translation into a `SolveRequest`
//! for the `dockerfile.v0` frontend.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use bollard_buildkit_proto::moby::buildkit::v1 as control;

use super::Error;
use super::llb;
use super::worker::WorkerKind;

/// The session secret a git context's token is served as: the id the dockerfile frontend's own
/// git sources ask for, and the one kiln's git LLB names.
pub const GIT_AUTH_TOKEN: &str = "GIT_AUTH_TOKEN";

/// Where the build context comes from. BuildKit fetches it itself; there is
/// no local file sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Context {
    /// A git repository: `git://`, `https://…/repo.git`, `git@host:repo.git`.
    Git {
        /// Repository URL without the `#fragment`.
        url: String,
        /// Branch, tag or commit. When `None`, BuildKit picks: v0.8 (Docker
        /// 20.10) always uses `master`, newer releases the remote's default
        /// branch — so set it.
        reference: Option<String>,
        /// Subdirectory of the checkout to use as the context.
        subdir: Option<String>,
    },
    /// An http(s) URL of a tar archive (optionally gzip/bzip2/xz compressed),
    /// e.g. the agent's loopback server for uploaded contexts.
    Http {
        /// The archive's URL.
        url: String,
    },
}

impl Context {
    /// Parses the `buildctl`/`docker build` context syntax: a git URL with
    /// optional `#ref:subdir`, or an http(s) URL of a tarball. An http(s) URL is
    /// git when its path ends in `.git` (as BuildKit decides).
    pub fn parse(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        let (base, fragment) = match s.split_once('#') {
            Some((b, f)) => (b, Some(f)),
            None => (s, None),
        };
        let is_http = base.starts_with("http://") || base.starts_with("https://");
        let is_git = base.starts_with("git://")
            || base.starts_with("git@")
            || base.starts_with("ssh://")
            || base.starts_with("github.com/")
            || (is_http && base.ends_with(".git"));
        if is_git {
            let (reference, subdir) = match fragment {
                Some(f) => match f.split_once(':') {
                    Some((r, d)) => (r, d),
                    None => (f, ""),
                },
                None => ("", ""),
            };
            let opt = |v: &str| (!v.is_empty()).then(|| v.to_string());
            return Ok(Context::Git {
                url: base.to_string(),
                reference: opt(reference),
                subdir: opt(subdir),
            });
        }
        if is_http {
            if fragment.is_some() {
                return Err(Error::InvalidRequest(format!(
                    "context {s:?}: a #fragment is only meaningful for git URLs (end the repository URL in .git)"
                )));
            }
            return Ok(Context::Http { url: s.to_string() });
        }
        Err(Error::InvalidRequest(format!(
            "context {s:?} is neither a git URL (git://, https://….git, git@…) nor an http(s) tarball URL"
        )))
    }

    /// The `#ref:subdir` fragment of a git context.
    fn git_fragment(reference: &Option<String>, subdir: &Option<String>) -> String {
        let r = reference.as_deref().unwrap_or("");
        match subdir.as_deref().map(|d| d.trim_matches('/')) {
            Some(d) if !d.is_empty() => format!("{r}:{d}"),
            _ => r.to_string(),
        }
    }

    /// The value of the frontend's `context` attribute.
    pub fn to_url(&self) -> String {
        match self {
            Context::Git { url, reference, subdir } => {
                let frag = Self::git_fragment(reference, subdir);
                if frag.is_empty() {
                    url.clone()
                } else {
                    format!("{url}#{frag}")
                }
            }
            Context::Http { url } => url.clone(),
        }
    }

    /// True when the dockerfile frontend recognises this URL as git by itself
    /// (BuildKit v0.8 `detectGitContext`).
    fn frontend_detects_git(url: &str) -> bool {
        url.starts_with("git://")
            || url.starts_with("git@")
            || url.starts_with("github.com/")
            || ((url.starts_with("http://") || url.starts_with("https://")) && url.ends_with(".git"))
    }

    fn validate(&self) -> Result<(), Error> {
        match self {
            Context::Git { url, reference, .. } => {
                if url.is_empty() || url.contains('#') {
                    return Err(Error::InvalidRequest(format!(
                        "git context url {url:?} must be non-empty and carry no #fragment (use reference/subdir)"
                    )));
                }
                if reference.as_deref().is_some_and(|r| r.contains(':')) {
                    return Err(Error::InvalidRequest(format!(
                        "git reference {reference:?} must not contain ':'"
                    )));
                }
            }
            Context::Http { url } => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(Error::InvalidRequest(format!(
                        "http context {url:?} must start with http:// or https://"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The git subdirectory, normalised (`None` for the repository root).
    fn subdir(&self) -> Option<String> {
        match self {
            Context::Git { subdir: Some(d), .. } => {
                let d = d.trim_matches('/');
                (!d.is_empty() && d != ".").then(|| d.to_string())
            }
            _ => None,
        }
    }

    /// The context's URL for the frontend, *without* a git subdirectory:
    /// BuildKit v0.8's git source rejects `#ref:subdir` ("subdir not
    /// supported yet"), so the subdirectory goes in the frontend's
    /// `contextsubdir` attribute instead, which every version honours.
    fn frontend_url(&self) -> String {
        match self {
            Context::Git { url, reference, .. } => match reference.as_deref() {
                Some(r) if !r.is_empty() => format!("{url}#{r}"),
                _ => url.clone(),
            },
            Context::Http { url } => url.clone(),
        }
    }

    /// This context (without a git subdirectory, see [`Self::frontend_url`])
    /// as an LLB definition, for `FrontendInputs["context"]`; with `git_token`, a git
    /// checkout authenticates with the session secret [`GIT_AUTH_TOKEN`].
    fn to_llb(&self, git_token: bool) -> bollard_buildkit_proto::pb::Definition {
        match self {
            Context::Git { url, reference, .. } => llb::git_context(
                url,
                reference.as_deref().unwrap_or(""),
                git_token.then_some(GIT_AUTH_TOKEN),
            ),
            Context::Http { url } => llb::http_tarball_context(url),
        }
    }
}

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

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;

//! Where a build's context comes from ([`Context`]): a git repository or an http(s) tarball,
//! parsed from `docker build`'s syntax and handed to the dockerfile frontend as BuildKit v0.8
//! understands it.

use super::Error;
use super::llb;
use super::request::GIT_AUTH_TOKEN;

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
    pub(super) fn frontend_detects_git(url: &str) -> bool {
        url.starts_with("git://")
            || url.starts_with("git@")
            || url.starts_with("github.com/")
            || ((url.starts_with("http://") || url.starts_with("https://")) && url.ends_with(".git"))
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
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
    pub(super) fn subdir(&self) -> Option<String> {
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
    pub(super) fn frontend_url(&self) -> String {
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
    pub(super) fn to_llb(&self, git_token: bool) -> bollard_buildkit_proto::pb::Definition {
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

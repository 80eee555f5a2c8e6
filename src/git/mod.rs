//! Which commit a git source's ref names, asked of the remote as `git ls-remote` does (over
//! `git://` and smart HTTP(S)), so the agent builds exactly that commit and reports it.
//!
//! SSH remotes (`ssh://`, `git@host:path`) are not asked: that needs an SSH client and keys the
//! agent does not hold. BuildKit fetches them by ref, and the status carries no revision.

pub mod refs;
mod transport;

use std::time::Duration;

/// How long asking a remote may take.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The largest ref advertisement read (repositories with many tags send megabytes).
const MAX_ADVERTISEMENT: usize = 16 * 1024 * 1024;

/// Why a ref could not be resolved. Messages never hold credentials: URLs are shown without
/// their user information.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The remote could not be reached or answered with an HTTP error.
    #[error("cannot ask {url} for its refs: {detail}")]
    Unreachable {
        /// The remote, without credentials.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The remote refused: authentication or authorisation.
    #[error(
        "{url} refused to list its refs (HTTP {status}); if the repository is private, give the git source a secretRef"
    )]
    Denied {
        /// The remote, without credentials.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The remote answered with an error line.
    #[error("the git remote says: {0}")]
    Remote(String),
    /// The answer was not a ref advertisement.
    #[error("the remote's answer is not a git ref advertisement: {0}")]
    Protocol(String),
    /// No ref of that name.
    #[error(
        "ref {reference:?} is neither a branch nor a tag of the repository (it has: {known}); name a branch, a tag or a full commit id"
    )]
    RefNotFound {
        /// The ref asked for.
        reference: String,
        /// Some of the refs it has, short names.
        known: String,
    },
    /// No ref given, and the remote has no HEAD.
    #[error("the repository has no HEAD (is it empty?); name a branch or a tag")]
    NoHead,
}

/// The commit `reference` (unset: the remote's HEAD) names in the repository at `url`; `None`
/// for remotes this cannot ask (SSH). A full commit id is its own answer, without asking.
/// `token` authenticates over HTTP(S), as BuildKit's `GIT_AUTH_TOKEN` does.
pub async fn resolve(url: &str, reference: Option<&str>, token: Option<&str>) -> Result<Option<String>, GitError> {
    if let Some(r) = reference.filter(|r| refs::is_object_id(r)) {
        return Ok(Some(r.to_owned()));
    }
    let shown = without_credentials(url);
    let ask = async {
        let answer = if url.starts_with("git://") {
            transport::git_daemon(url).await
        } else if url.starts_with("http://") || url.starts_with("https://") {
            transport::smart_http(url, token).await
        } else {
            return Ok(None);
        };
        answer.map(Some)
    };
    let advertisement = tokio::time::timeout(TIMEOUT, ask)
        .await
        .map_err(|_| GitError::Unreachable {
            url: shown.clone(),
            detail: format!("no answer within {}s", TIMEOUT.as_secs()),
        })?;
    let Some(advertisement) = advertisement.map_err(|e| e.shown_as(&shown))? else {
        return Ok(None);
    };
    let refs = refs::parse_advertisement(&advertisement)?;
    refs::pick(&refs, reference).map(Some)
}

/// `url` without `user:password@`, for messages and image labels.
pub fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{path}"),
        None => url.to_owned(),
    }
}

impl GitError {
    /// The same error, naming the remote as `shown` (transport errors know the raw URL).
    fn shown_as(self, shown: &str) -> Self {
        match self {
            GitError::Unreachable { detail, .. } => GitError::Unreachable {
                url: shown.to_owned(),
                detail,
            },
            GitError::Denied { status, .. } => GitError::Denied {
                url: shown.to_owned(),
                status,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        assert_eq!(
            without_credentials("https://x-access-token:s3cret@git.example/a/b.git"),
            "https://git.example/a/b.git"
        );
        assert_eq!(without_credentials("git://host:9418/r.git"), "git://host:9418/r.git");
        assert_eq!(without_credentials("git@host:r.git"), "git@host:r.git");
        assert_eq!(
            without_credentials("https://host/a@b"),
            "https://host/a@b",
            "an @ in the path stays"
        );
    }

    #[tokio::test]
    async fn a_full_commit_id_and_an_ssh_remote_ask_nobody() {
        let id = "0123456789abcdef0123456789abcdef01234567";
        let got = resolve("https://unreachable.invalid/r.git", Some(id), None).await;
        assert_eq!(got.ok().flatten().as_deref(), Some(id));
        let got = resolve("git@unreachable.invalid:r.git", Some("main"), None).await;
        assert!(matches!(got, Ok(None)));
    }
}

//! Fetching a remote's ref advertisement: `git://` (the git daemon's TCP protocol) and smart
//! HTTP(S) (`GET <url>/info/refs?service=git-upload-pack`). Protocol v0, which every server
//! speaks.

use base64::Engine;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{GitError, MAX_ADVERTISEMENT};

/// Default port of `git://`.
const GIT_PORT: u16 = 9418;
/// Redirects followed over HTTP.
const MAX_REDIRECTS: usize = 3;

fn unreachable(url: &str, detail: impl std::fmt::Display) -> GitError {
    GitError::Unreachable {
        url: url.to_owned(),
        detail: detail.to_string(),
    }
}

/// The advertisement of `git://host[:port]/path`.
pub async fn git_daemon(url: &str) -> Result<Vec<u8>, GitError> {
    let rest = url.trim_start_matches("git://");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if path.is_empty() {
        return Err(unreachable(url, "the URL names no repository path"));
    }
    let address = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:{GIT_PORT}")
    };
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|e| unreachable(url, e))?;
    let request = format!("git-upload-pack {path}\0host={authority}\0");
    let line = format!("{:04x}{request}", request.len() + 4);
    stream
        .write_all(line.as_bytes())
        .await
        .map_err(|e| unreachable(url, e))?;
    let mut data = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while !complete(&data) {
        let n = stream.read(&mut chunk).await.map_err(|e| unreachable(url, e))?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&chunk[..n]);
        if data.len() > MAX_ADVERTISEMENT {
            return Err(GitError::Protocol(format!(
                "the advertisement is over {MAX_ADVERTISEMENT} bytes"
            )));
        }
    }
    // A flush says we want nothing; the daemon then closes.
    let _ = stream.write_all(b"0000").await;
    Ok(data)
}

/// Whether `data` holds a whole advertisement: pkt-lines up to a flush after at least one line
/// (an error line ends it too).
fn complete(data: &[u8]) -> bool {
    let mut at = 0;
    let mut lines = 0;
    while let Some(head) = data.get(at..at + 4) {
        let Some(n) = std::str::from_utf8(head)
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
        else {
            return true; // not pkt-lines: let the parser say so
        };
        if n < 4 {
            if lines > 0 {
                return true;
            }
            at += 4;
            continue;
        }
        if data.len() < at + n {
            return false;
        }
        if data[at + 4..at + n].starts_with(b"ERR ") {
            return true;
        }
        lines += 1;
        at += n;
    }
    false
}

/// The advertisement of a smart-HTTP remote, with `token` as git's basic credentials (user
/// `x-access-token`, as BuildKit sends `GIT_AUTH_TOKEN`) or the URL's own user information.
pub async fn smart_http(url: &str, token: Option<&str>) -> Result<Vec<u8>, GitError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| unreachable(url, format!("no TLS roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let (base, userinfo) = split_userinfo(url);
    let auth = match (token, userinfo) {
        (Some(t), _) => Some(format!("x-access-token:{t}")),
        (None, Some(u)) => Some(u),
        (None, None) => None,
    };
    let mut target = format!("{}/info/refs?service=git-upload-pack", base.trim_end_matches('/'));
    for _ in 0..=MAX_REDIRECTS {
        let mut request = http::Request::get(&target)
            .header("user-agent", "git/2.0 (kiln)")
            .header("accept", "application/x-git-upload-pack-advertisement");
        if let Some(a) = &auth {
            let encoded = base64::engine::general_purpose::STANDARD.encode(a);
            request = request.header("authorization", format!("Basic {encoded}"));
        }
        let request = request.body(Empty::new()).map_err(|e| unreachable(url, e))?;
        let response = client.request(request).await.map_err(|e| unreachable(url, e))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| unreachable(url, format!("HTTP {status} without a Location")))?;
            target = location.to_owned();
            continue;
        }
        if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
            return Err(GitError::Denied {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(unreachable(url, format!("HTTP {status}")));
        }
        let smart = response
            .headers()
            .get("content-type")
            .and_then(|c| c.to_str().ok())
            .is_some_and(|c| c.starts_with("application/x-git-upload-pack-advertisement"));
        if !smart {
            return Err(GitError::Protocol(
                "the server does not speak git's smart HTTP protocol".into(),
            ));
        }
        let body = Limited::new(response.into_body(), MAX_ADVERTISEMENT)
            .collect()
            .await
            .map_err(|e| unreachable(url, e))?;
        return Ok(body.to_bytes().to_vec());
    }
    Err(unreachable(url, format!("more than {MAX_REDIRECTS} redirects")))
}

/// `https://user:pass@host/p` → (`https://host/p`, `user:pass`).
fn split_userinfo(url: &str) -> (String, Option<String>) {
    let stripped = super::without_credentials(url);
    if stripped == url {
        return (stripped, None);
    }
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let userinfo = authority.rsplit_once('@').map(|(u, _)| u.to_owned());
    (stripped, userinfo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advertisement_is_complete_at_its_flush() {
        let line = format!("{:04x}{} HEAD\n", 4 + 40 + 6, "1".repeat(40));
        assert!(!complete(line.as_bytes()), "no flush yet");
        assert!(!complete(&line.as_bytes()[..10]), "a line cut short");
        assert!(complete(format!("{line}0000").as_bytes()));
        assert!(complete(b"000fERR denied\n"), "an error ends it");
    }

    #[test]
    fn userinfo_is_split_off() {
        assert_eq!(
            split_userinfo("https://u:p@host/r.git"),
            ("https://host/r.git".to_owned(), Some("u:p".to_owned()))
        );
        assert_eq!(
            split_userinfo("https://host/r.git"),
            ("https://host/r.git".to_owned(), None)
        );
    }
}

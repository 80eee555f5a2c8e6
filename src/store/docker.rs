//! Docker's image store through its API socket: `GET /images/{name}/json`, `DELETE
//! /images/{name}`, and `GET /events` filtered to image deletions and untags.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::{Removal, StoreError};

fn unreachable(socket: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unreachable {
        socket: socket.display().to_string(),
        detail: e.to_string(),
    }
}

/// Sends one request on a fresh connection; the response, its body still to read.
async fn send(
    socket: &Path,
    method: http::Method,
    path: &str,
) -> Result<http::Response<hyper::body::Incoming>, StoreError> {
    let stream = UnixStream::connect(socket).await.map_err(|e| unreachable(socket, e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(socket, e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| StoreError::Refused(e.to_string()))?;
    sender.send_request(request).await.map_err(|e| unreachable(socket, e))
}

/// One request on a fresh connection: the status and the body.
async fn request(socket: &Path, method: http::Method, path: &str) -> Result<(http::StatusCode, String), StoreError> {
    let response = send(socket, method, path).await?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Docker's error message out of its JSON body (`{"message": "…"}`), or the body.
fn message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}

/// Whether Docker has an image named `name`.
pub async fn exists(socket: &Path, name: &str) -> Result<bool, StoreError> {
    let (status, body) = request(socket, http::Method::GET, &format!("/images/{name}/json")).await?;
    match status {
        http::StatusCode::OK => Ok(true),
        http::StatusCode::NOT_FOUND => Ok(false),
        other => Err(StoreError::Refused(format!("HTTP {other}: {}", message(&body)))),
    }
}

/// The image's size as Docker reports it (`Size`: its unpacked layers); `Ok(None)` if there is
/// no such image.
pub async fn size(socket: &Path, name: &str) -> Result<Option<u64>, StoreError> {
    let (status, body) = request(socket, http::Method::GET, &format!("/images/{name}/json")).await?;
    match status {
        http::StatusCode::OK => Ok(serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["Size"].as_u64())),
        http::StatusCode::NOT_FOUND => Ok(None),
        other => Err(StoreError::Refused(format!("HTTP {other}: {}", message(&body)))),
    }
}

/// Removes the name `name` from Docker's store.
pub async fn remove(socket: &Path, name: &str) -> Result<Removal, StoreError> {
    let (status, body) = request(socket, http::Method::DELETE, &format!("/images/{name}")).await?;
    match status {
        http::StatusCode::OK => Ok(Removal::Removed),
        http::StatusCode::NOT_FOUND => Ok(Removal::Absent),
        http::StatusCode::CONFLICT => Err(StoreError::InUse {
            name: name.to_owned(),
            detail: message(&body),
        }),
        other => Err(StoreError::Refused(format!("HTTP {other}: {}", message(&body)))),
    }
}

/// Docker's `/events` filter `{"type":["image"],"event":["delete","untag"]}`, URL-encoded.
const REMOVALS: &str =
    "/events?filters=%7B%22type%22%3A%5B%22image%22%5D%2C%22event%22%3A%5B%22delete%22%2C%22untag%22%5D%7D";

/// Calls `removed` on every image deletion or untag Docker reports, until the stream ends
/// (an error: Docker went away).
pub async fn follow_removals(socket: &Path, removed: &(dyn Fn() + Send + Sync)) -> Result<(), StoreError> {
    let response = send(socket, http::Method::GET, REMOVALS).await?;
    if !response.status().is_success() {
        return Err(StoreError::Refused(format!("HTTP {} from /events", response.status())));
    }
    let mut body = response.into_body();
    // Each event is one JSON object; which name it was does not matter: the check asks again.
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| unreachable(socket, e))?;
        if frame.data_ref().is_some_and(|d| !d.is_empty()) {
            removed();
        }
    }
    Err(unreachable(socket, "the event stream ended"))
}

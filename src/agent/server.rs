//! The agent's HTTP API on its pod port, reached through the apiserver (pods/proxy or
//! port-forward): probes, metrics, build logs (followed while the build runs) and context
//! uploads; and, on a listener of its own, the contexts served to the node's BuildKit.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio_util::io::ReaderStream;

use super::State;
use super::contexts::{ContextDigest, ContextStore, PutError};
use super::logs::LogStore;

/// A response body: a string, a file, or a followed log.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// What the API serves from.
pub struct Api {
    /// Readiness and counters.
    pub state: Arc<State>,
    /// Build logs.
    pub logs: LogStore,
    /// Uploaded contexts.
    pub contexts: Arc<ContextStore>,
}

/// Binds `addr` and serves `route` there; returns the bound address and the serving future.
pub async fn serve<F, Fut>(addr: SocketAddr, route: F) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let serving = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let route = route.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let route = route.clone();
                    async move { Ok::<_, Infallible>(route(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    Ok((local, serving))
}

impl Api {
    /// Routes one request of the agent's pod port.
    pub async fn route(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/healthz") => text(StatusCode::OK, "ok"),
            (Method::GET, "/readyz") if self.state.buildkit_ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ok"),
            (Method::GET, "/readyz") => text(StatusCode::SERVICE_UNAVAILABLE, "BuildKit is not answering"),
            (Method::GET, "/metrics") => text(StatusCode::OK, self.metrics()),
            (Method::GET, p) if p.starts_with("/logs/") => {
                let follow = query.split('&').any(|kv| kv == "follow=true" || kv == "follow=1");
                self.log(p.trim_start_matches("/logs/"), follow).await
            }
            (method, p) if p.starts_with("/v1/contexts/") => {
                let Some(digest) = ContextDigest::parse(p.trim_start_matches("/v1/contexts/")) else {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "a context is named sha256:<64 lowercase hex digits>",
                    );
                };
                match method {
                    Method::HEAD if self.contexts.has(&digest).await => text(StatusCode::OK, ""),
                    Method::HEAD => text(StatusCode::NOT_FOUND, ""),
                    Method::PUT => self.upload(&digest, req).await,
                    _ => text(StatusCode::METHOD_NOT_ALLOWED, "use PUT to upload, HEAD to check"),
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found"),
        }
    }

    async fn upload(&self, digest: &ContextDigest, req: Request<Incoming>) -> Response<Body> {
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let body = req.into_body().into_data_stream();
        match self.contexts.put(digest, declared, body).await {
            Ok(true) => text(StatusCode::CREATED, "stored"),
            Ok(false) => text(StatusCode::OK, "already here"),
            Err(e @ PutError::NotWanted(_)) => text(StatusCode::CONFLICT, e.to_string()),
            Err(e @ PutError::TooLarge { .. }) => text(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
            Err(e @ (PutError::Mismatch { .. } | PutError::Interrupted { .. })) => {
                text(StatusCode::BAD_REQUEST, e.to_string())
            }
            Err(e @ PutError::Io(_)) => text(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
        }
    }

    fn metrics(&self) -> String {
        let s = &self.state;
        format!(
            "# HELP kiln_agent_builds_running Builds running on this node.\n# TYPE kiln_agent_builds_running gauge\nkiln_agent_builds_running {}\n\
             # HELP kiln_agent_builds_queued Builds waiting for a slot on this node.\n# TYPE kiln_agent_builds_queued gauge\nkiln_agent_builds_queued {}\n\
             # HELP kiln_agent_context_upload_bytes_total Bytes received by context uploads.\n# TYPE kiln_agent_context_upload_bytes_total counter\nkiln_agent_context_upload_bytes_total {}\n\
             # HELP kiln_agent_context_uploads_total Contexts stored from uploads.\n# TYPE kiln_agent_context_uploads_total counter\nkiln_agent_context_uploads_total {}\n",
            s.running.load(Ordering::Relaxed),
            s.queued.load(Ordering::Relaxed),
            self.contexts.received_bytes(),
            self.contexts.uploads(),
        )
    }

    /// A build's log; with `follow`, streamed until its build ends.
    async fn log(&self, rest: &str, follow: bool) -> Response<Body> {
        let Some(path) = rest.split_once('/').and_then(|(ns, name)| self.logs.path(ns, name)) else {
            return text(StatusCode::BAD_REQUEST, "logs are at /logs/<namespace>/<nodebuild>");
        };
        let Ok(file) = tokio::fs::File::open(&path).await else {
            return text(StatusCode::NOT_FOUND, "no log for that build on this node");
        };
        if !follow {
            return with_type(Response::new(file_body(file)), "text/plain; charset=utf-8");
        }
        let logs = self.logs.clone();
        let stream = futures::stream::unfold((file, logs, path, false), |(mut file, logs, path, done)| async move {
            if done {
                return None;
            }
            loop {
                let mut chunk = vec![0; 64 * 1024];
                match file.read(&mut chunk).await {
                    Ok(0) if logs.is_open(&path) => tokio::time::sleep(Duration::from_millis(100)).await,
                    // Closed: one last read, as lines may have landed since the read above.
                    Ok(0) => {
                        let mut rest = Vec::new();
                        let _ = file.read_to_end(&mut rest).await;
                        return (!rest.is_empty())
                            .then(|| (Ok(Frame::data(Bytes::from(rest))), (file, logs, path, true)));
                    }
                    Ok(n) => {
                        chunk.truncate(n);
                        return Some((Ok(Frame::data(Bytes::from(chunk))), (file, logs, path, false)));
                    }
                    Err(e) => return Some((Err(e), (file, logs, path, true))),
                }
            }
        });
        with_type(
            Response::new(BodyExt::boxed(StreamBody::new(stream))),
            "text/plain; charset=utf-8",
        )
    }
}

/// Serves stored contexts to the node's BuildKit at `/contexts/<token>/sha256-<hex>.tar`, with
/// the digest as ETag so BuildKit skips the download of a context it already has. The token is
/// a per-agent secret: the listener may be on the pod's address (Docker nodes, where BuildKit
/// runs in dockerd on the host), and only BuildKit should read contexts.
pub async fn serve_context(contexts: Arc<ContextStore>, token: Arc<str>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let Some(file_name) = path
        .strip_prefix("/contexts/")
        .and_then(|p| p.strip_prefix(&*token))
        .and_then(|p| p.strip_prefix('/'))
    else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let digest = file_name
        .strip_prefix("sha256-")
        .and_then(|h| h.strip_suffix(".tar"))
        .and_then(|h| ContextDigest::parse(&format!("sha256:{h}")));
    let Some(digest) = digest else {
        return text(StatusCode::NOT_FOUND, "no such context on this node");
    };
    if !contexts.has(&digest).await {
        return text(StatusCode::NOT_FOUND, "no such context on this node");
    }
    let etag = format!("\"{digest}\"");
    let matches = req
        .headers()
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim() == etag));
    let response = if matches {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let Ok(mut file) = tokio::fs::File::open(contexts.path(&digest)).await else {
            return text(StatusCode::NOT_FOUND, "no such context on this node");
        };
        let len = file.seek(std::io::SeekFrom::End(0)).await.unwrap_or(0);
        let _ = file.seek(std::io::SeekFrom::Start(0)).await;
        let mut r = Response::new(if req.method() == Method::HEAD {
            empty()
        } else {
            file_body(file)
        });
        if let Ok(v) = len.to_string().parse() {
            r.headers_mut().insert(CONTENT_LENGTH, v);
        }
        with_type(r, "application/x-tar")
    };
    let mut response = response;
    if let Ok(v) = etag.parse() {
        response.headers_mut().insert(ETAG, v);
    }
    response
}

fn file_body(file: tokio::fs::File) -> Body {
    let frames = ReaderStream::new(file).map(|chunk| chunk.map(Frame::data));
    BodyExt::boxed(StreamBody::new(frames))
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let full = Full::new(Bytes::from(body.into())).map_err(|never| match never {});
    let mut r = Response::new(full.boxed());
    *r.status_mut() = status;
    with_type(r, "text/plain; charset=utf-8")
}

fn with_type(mut r: Response<Body>, content_type: &'static str) -> Response<Body> {
    r.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

//! A tiny HTTP server for probes, metrics and logs (`/healthz`, `/readyz`, `/metrics`, …).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
pub use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A response: status, content type, body.
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Reply {
    /// `200 OK` with a text body.
    pub fn ok(body: impl Into<String>) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// A text reply with another status.
    pub fn status(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Routes a request path (with query) to a reply.
pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Binds `addr`; returns the bound address and a future serving requests until dropped.
pub async fn bind(addr: SocketAddr, handler: Handler) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let serve = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str().to_owned())
                            .unwrap_or_default();
                        let reply = handler(&path);
                        let mut response = Response::new(Full::new(Bytes::from(reply.body)));
                        *response.status_mut() = reply.status;
                        if let Ok(v) = reply.content_type.parse() {
                            response.headers_mut().insert(http::header::CONTENT_TYPE, v);
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    Ok((local, serve))
}

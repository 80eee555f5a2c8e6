//! Dialling BuildKit: unix socket, TCP (optionally mTLS), and Docker's API
//! socket upgraded to h2c by `POST /grpc` or `POST /session`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Uri};

use super::Error;
use super::endpoint::{Endpoint, TlsConfig};

/// How long dialling may take before the daemon counts as unreachable.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens a unix-socket connection to Docker, sends `POST {path}` asking to
/// upgrade to h2c with the extra headers, and returns the raw upgraded stream
/// (on which the caller then speaks HTTP/2 with prior knowledge).
pub(crate) async fn docker_upgrade(
    socket: &Path,
    path: &str,
    headers: &[(&str, String)],
) -> Result<Upgraded, BoxError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the upgraded stream is closed; errors there surface on
        // the gRPC side.
        let _ = conn.with_upgrades().await;
    });
    let mut req = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::HOST, "docker")
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "h2c");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let req = req.body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body = match resp.into_body().collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
            Err(_) => String::new(),
        };
        return Err(format!(
            "Docker answered {status} to POST {path} instead of 101 Switching Protocols{}{}",
            if body.is_empty() { "" } else { ": " },
            body
        )
        .into());
    }
    Ok(hyper::upgrade::on(resp).await?)
}

fn unreachable(endpoint: &Endpoint, e: impl std::fmt::Display) -> Error {
    Error::Unreachable {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    }
}

/// Full error chain of a transport error (tonic's Display is terse).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        src = inner.source();
    }
    s
}

/// Connects a gRPC channel to the Control service behind `endpoint`.
pub(crate) async fn connect(endpoint: &Endpoint, tls: Option<&TlsConfig>) -> Result<Channel, Error> {
    if tls.is_some() && !matches!(endpoint, Endpoint::Tcp { .. }) {
        return Err(Error::Tls(format!(
            "TLS settings were given for {endpoint}, but only tcp:// endpoints use TLS"
        )));
    }
    let base = |uri: String| {
        tonic::transport::Endpoint::from_shared(uri)
            .map(|e| {
                e.connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(20))
            })
            .map_err(|e| unreachable(endpoint, e))
    };
    let channel = match endpoint {
        Endpoint::Unix(path) => {
            let path: PathBuf = path.clone();
            base("http://buildkitd".into())?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { UnixStream::connect(path).await.map(TokioIo::new) }
                }))
                .await
        }
        Endpoint::DockerUnix(path) => {
            let path: PathBuf = path.clone();
            base("http://docker".into())?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { docker_upgrade(&path, "/grpc", &[]).await }
                }))
                .await
        }
        Endpoint::Tcp { host, port } => {
            let host_uri = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            match tls {
                Some(tls) => {
                    tls.validate()?;
                    let mut cfg = ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(&tls.ca))
                        .domain_name(tls.server_name.clone().unwrap_or_else(|| host.clone()));
                    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                        cfg = cfg.identity(Identity::from_pem(cert, key));
                    }
                    base(format!("https://{host_uri}:{port}"))?
                        .tls_config(cfg)
                        .map_err(|e| Error::Tls(error_chain(&e)))?
                        .connect()
                        .await
                }
                None => base(format!("http://{host_uri}:{port}"))?.connect().await,
            }
        }
    };
    channel.map_err(|e| unreachable(endpoint, error_chain(&e)))
}

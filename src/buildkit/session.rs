//! The BuildKit session: a gRPC *server* kiln runs for the daemon over one
//! stream, serving health checks, registry credentials and build secrets.
//!
//! Transport: on Docker, `POST /session` upgraded to h2c; on buildkitd, the
//! `Control.Session` bidi stream whose `BytesMessage`s carry the raw HTTP/2
//! bytes. Either way the daemon is the HTTP/2 client and kiln the server.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bollard_buildkit_proto::health::health_check_response::ServingStatus;
use bollard_buildkit_proto::health::health_server::{Health, HealthServer};
use bollard_buildkit_proto::health::{HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};
use bollard_buildkit_proto::moby::buildkit::v1::BytesMessage;
use bollard_buildkit_proto::moby::buildkit::v1::control_client::ControlClient;
use bollard_buildkit_proto::moby::filesync::v1::auth_server::{Auth, AuthServer};
use bollard_buildkit_proto::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse, GetTokenAuthorityRequest,
    GetTokenAuthorityResponse, VerifyTokenAuthorityRequest, VerifyTokenAuthorityResponse,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::Error;
use super::auth::RegistryAuth;
use super::transport::{docker_upgrade, error_chain};

const HEADER_UUID: &str = "X-Docker-Expose-Session-Uuid";
const HEADER_NAME: &str = "X-Docker-Expose-Session-Name";
const HEADER_SHAREDKEY: &str = "X-Docker-Expose-Session-Sharedkey";
const HEADER_METHOD: &str = "X-Docker-Expose-Session-Grpc-Method";

/// The methods the session serves, announced to the daemon.
const METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/moby.filesync.v1.Auth/Credentials",
    "/moby.filesync.v1.Auth/FetchToken",
    "/moby.filesync.v1.Auth/GetTokenAuthority",
    "/moby.filesync.v1.Auth/VerifyTokenAuthority",
    "/moby.buildkit.secrets.v1.Secrets/GetSecret",
];

/// What one build's session answers.
#[derive(Clone, Default)]
pub(crate) struct SessionData {
    pub secrets: Arc<BTreeMap<String, Vec<u8>>>,
    pub auth: Option<Arc<RegistryAuth>>,
}

#[derive(Clone)]
struct HealthService;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(&self, _request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    async fn list(&self, _request: Request<HealthListRequest>) -> Result<Response<HealthListResponse>, Status> {
        Err(Status::unimplemented("health list is not served"))
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(&self, _request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("health watch is not served"))
    }
}

#[derive(Clone)]
struct SecretsService(Arc<BTreeMap<String, Vec<u8>>>);

#[tonic::async_trait]
impl Secrets for SecretsService {
    async fn get_secret(&self, request: Request<GetSecretRequest>) -> Result<Response<GetSecretResponse>, Status> {
        let id = request.into_inner().id;
        match self.0.get(&id) {
            Some(data) => {
                tracing::debug!(secret_id = %id, "serving build secret");
                Ok(Response::new(GetSecretResponse { data: data.clone() }))
            }
            None => Err(Status::not_found(format!("secret {id:?} was not given to this build"))),
        }
    }
}

#[derive(Clone)]
struct AuthService(Option<Arc<RegistryAuth>>);

#[tonic::async_trait]
impl Auth for AuthService {
    async fn credentials(&self, request: Request<CredentialsRequest>) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        let creds = self.0.as_ref().and_then(|a| a.credentials(&host));
        tracing::debug!(registry = %host, found = creds.is_some(), "registry credentials asked");
        Ok(Response::new(match creds {
            Some(c) => CredentialsResponse {
                username: c.username.clone(),
                secret: c.secret.clone(),
            },
            // Empty answer = anonymous access.
            None => CredentialsResponse::default(),
        }))
    }

    // The daemon falls back to fetching tokens itself with `Credentials`
    // when these answer Unimplemented (BuildKit util/resolver/authorizer.go).
    async fn fetch_token(&self, _request: Request<FetchTokenRequest>) -> Result<Response<FetchTokenResponse>, Status> {
        Err(Status::unimplemented("token fetching is left to the daemon"))
    }

    async fn get_token_authority(
        &self,
        _request: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("no token authority"))
    }

    async fn verify_token_authority(
        &self,
        _request: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unimplemented("no token authority"))
    }
}

fn routes(data: &SessionData) -> Routes {
    Routes::new(HealthServer::new(HealthService))
        .add_service(AuthServer::new(AuthService(data.auth.clone())))
        .add_service(SecretsServer::new(SecretsService(data.secrets.clone())))
}

async fn serve<I>(io: I, data: SessionData)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = TowerToHyperService::new(routes(&data));
    let result = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(io, svc)
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %error_chain(&e), "BuildKit session connection ended");
    }
}

/// A running session; dropping it closes the session.
pub(crate) struct Session {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A fresh session ID.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Opens session `id` through Docker's `POST /session`.
pub(crate) async fn start_docker(socket: &Path, id: String, data: SessionData) -> Result<Session, Error> {
    let mut headers = vec![
        (HEADER_UUID, id.clone()),
        (HEADER_NAME, "kiln".to_string()),
        (HEADER_SHAREDKEY, id.clone()),
    ];
    headers.extend(METHODS.iter().map(|m| (HEADER_METHOD, m.to_string())));
    let upgraded = docker_upgrade(socket, "/session", &headers)
        .await
        .map_err(|e| Error::Unreachable {
            endpoint: format!("docker-unix://{}", socket.display()),
            reason: format!("opening the build session: {e}"),
        })?;
    let task = tokio::spawn(serve(upgraded, data));
    Ok(Session { tasks: vec![task] })
}

/// Opens session `id` over the `Control.Session` stream (buildkitd): the stream's messages
/// carry the bytes of an HTTP/2 connection on which this side serves the session.
pub(crate) async fn start_grpc(
    control: &ControlClient<Channel>,
    id: String,
    data: SessionData,
) -> Result<Session, Error> {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (out_tx, out_rx) = mpsc::channel::<BytesMessage>(16);
    let mut request = Request::new(ReceiverStream::new(out_rx));
    session_headers(request.metadata_mut(), &id)?;
    let (read_half, write_half) = tokio::io::split(theirs);
    let inbound = tokio::spawn(daemon_to_us(control.clone(), request, write_half));
    let outbound = tokio::spawn(us_to_daemon(read_half, out_tx));
    let server = tokio::spawn(serve(TokioIo::new(ours), data));
    Ok(Session {
        tasks: vec![inbound, outbound, server],
    })
}

/// The headers that expose the session: its id (also the shared key), name and methods.
fn session_headers(md: &mut tonic::metadata::MetadataMap, id: &str) -> Result<(), Error> {
    let mut insert = |k: &'static str, v: &str| -> Result<(), Error> {
        let value = v
            .parse()
            .map_err(|_| Error::Protocol(format!("invalid session header value {v:?}")))?;
        md.append(tonic::metadata::MetadataKey::from_static(k), value);
        Ok(())
    };
    insert("x-docker-expose-session-uuid", id)?;
    insert("x-docker-expose-session-name", "kiln")?;
    insert("x-docker-expose-session-sharedkey", id)?;
    for m in METHODS {
        insert("x-docker-expose-session-grpc-method", m)?;
    }
    Ok(())
}

/// Daemon → us: opens the stream and writes its messages' bytes into the duplex.
async fn daemon_to_us<W: AsyncWrite + Unpin>(
    mut control: ControlClient<Channel>,
    request: Request<ReceiverStream<BytesMessage>>,
    mut write_half: W,
) {
    let mut stream = match control.session(request).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            tracing::warn!(error = %e, "BuildKit refused the session stream");
            return;
        }
    };
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(m) => {
                if write_half.write_all(&m.data).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "session stream ended");
                break;
            }
        }
    }
    let _ = write_half.shutdown().await;
}

/// Us → daemon: the duplex's bytes as the stream's messages.
async fn us_to_daemon<R: AsyncRead + Unpin>(mut read_half: R, out_tx: mpsc::Sender<BytesMessage>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match read_half.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let message = BytesMessage {
                    data: buf[..n].to_vec(),
                };
                if out_tx.send(message).await.is_err() {
                    break;
                }
            }
        }
    }
}

//! [`Client`]: connect, list workers, run builds; [`BuildHandle`]: one running build.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use base64::Engine;
use bollard_buildkit_proto::moby::buildkit::v1::control_client::ControlClient;
use bollard_buildkit_proto::moby::buildkit::v1::{ListWorkersRequest, SolveRequest, StatusRequest, StatusResponse};
use futures::Stream;
use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::Error;
use super::auth::RegistryAuth;
use super::endpoint::{Endpoint, TlsConfig};
use super::error::classify;
use super::progress::{ProgressEvent, ProgressSummary, Tracker};
use super::redact::Redactor;
use super::request::{BuildRequest, solve_request};
use super::session::{self, Session, SessionData};
use super::transport::{self, error_chain};
use super::worker::{WorkerInfo, WorkerKind, primary_kind};

/// Largest gRPC message accepted from the daemon (status batches can be big).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// How long to keep reading `Status` after `Solve` returned, so the last
/// vertex updates and logs are not lost (BuildKit closes the stream itself
/// right after the job ends; this only bounds a misbehaving daemon).
const STATUS_DRAIN: Duration = Duration::from_secs(2);

/// The same after a cancellation, kept short so that `cancel()` returns well
/// within two seconds.
const CANCEL_DRAIN: Duration = Duration::from_millis(1500);

/// A connection to one BuildKit daemon. Cheap to clone; clones share the
/// connection (one HTTP/2 connection multiplexes every call).
#[derive(Clone)]
pub struct Client {
    endpoint: Endpoint,
    control: ControlClient<Channel>,
    kind: Arc<OnceCell<WorkerKind>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("worker_kind", &self.kind.get())
            .finish()
    }
}

/// What kind of digest [`BuildOutput::digest`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestKind {
    /// The image manifest's digest (containerd/OCI workers): `name@digest` pulls exactly this image.
    Manifest,
    /// Docker's image ID (the config digest): Docker's classic image store
    /// has no manifest for a locally built image.
    ImageId,
}

/// The result of a successful build.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildOutput {
    /// The build's ref (BuildKit job ID).
    pub build_ref: String,
    /// `containerimage.digest`.
    pub digest: String,
    /// Whether `digest` is a manifest digest or Docker's image ID.
    pub digest_kind: DigestKind,
    /// The image config's digest, when known (`containerimage.config.digest`;
    /// on Docker 20.10 the image ID is the config digest).
    pub config_digest: Option<String>,
    /// The names the image was stored (and pushed) under.
    pub image_names: Vec<String>,
    /// The exporter's full response, for keys kiln does not interpret.
    pub exporter_response: BTreeMap<String, String>,
    /// Final step counts.
    pub summary: ProgressSummary,
    /// The build's duration as BuildKit reports it (first step start to last
    /// step completion), when it reported steps.
    pub buildkit_duration: Option<Duration>,
}

/// True when the call failed in the connection, not in BuildKit (tonic
/// reports those as a status whose source is the transport error).
fn is_transport_failure(s: &tonic::Status) -> bool {
    std::error::Error::source(s).is_some() || s.message() == "transport error"
}

fn status_error(endpoint: &Endpoint, s: &tonic::Status, redactor: &Redactor) -> Error {
    let msg = redactor.redact(s.message());
    if is_transport_failure(s) {
        return Error::Unreachable {
            endpoint: endpoint.to_string(),
            reason: redactor.redact(&error_chain(s)),
        };
    }
    match s.code() {
        tonic::Code::Unavailable => Error::Unreachable {
            endpoint: endpoint.to_string(),
            reason: msg,
        },
        tonic::Code::Unimplemented => Error::Protocol(format!(
            "the daemon does not implement this call ({msg}); is {endpoint} really BuildKit?"
        )),
        _ => classify(&msg, s.code(), None),
    }
}

impl Client {
    /// Connects to the daemon. `tls` is only for `tcp://` endpoints.
    ///
    /// The connection is established here, so an unreachable daemon fails
    /// now with [`Error::Unreachable`].
    pub async fn connect(endpoint: &Endpoint, tls: Option<TlsConfig>) -> Result<Client, Error> {
        let channel = transport::connect(endpoint, tls.as_ref()).await?;
        let control = ControlClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(Client {
            endpoint: endpoint.clone(),
            control,
            kind: Arc::new(OnceCell::new()),
        })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Lists the daemon's workers.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, Error> {
        let resp = self
            .control
            .clone()
            .list_workers(ListWorkersRequest::default())
            .await
            .map_err(|s| status_error(&self.endpoint, &s, &Redactor::default()))?;
        let via_docker = self.endpoint.is_docker();
        Ok(resp
            .into_inner()
            .record
            .into_iter()
            .map(|r| WorkerInfo::from_record(r, via_docker))
            .collect())
    }

    /// The kind of the daemon's default worker (asked once, then remembered).
    pub async fn worker_kind(&self) -> Result<WorkerKind, Error> {
        self.kind
            .get_or_try_init(|| async {
                let workers = self.workers().await?;
                Ok(primary_kind(&workers, self.endpoint.is_docker()))
            })
            .await
            .copied()
    }

    async fn open_session(&self, id: String, data: SessionData) -> Result<Session, Error> {
        match &self.endpoint {
            Endpoint::DockerUnix(path) => session::start_docker(path, id, data).await,
            _ => session::start_grpc(&self.control, id, data).await,
        }
    }

    /// Starts a build. Returns once BuildKit has been asked to solve; follow
    /// it with the returned handle. Dropping the handle cancels the build.
    pub async fn build(&self, request: BuildRequest) -> Result<BuildHandle, Error> {
        request.validate()?;
        let auth = match &request.registry_auth {
            Some(json) => Some(Arc::new(RegistryAuth::from_docker_config(json)?)),
            None => None,
        };
        let mut secret_values: Vec<&[u8]> = request.secrets.values().map(|v| v.as_slice()).collect();
        if let Some(a) = &auth {
            secret_values.extend(a.secrets().map(str::as_bytes));
        }
        let redactor = Redactor::new(secret_values);
        let kind = self.worker_kind().await?;
        let build_ref = uuid::Uuid::new_v4().simple().to_string();
        let session_id = session::new_id();
        // Everything that can be rejected without the daemon is, before the
        // session is opened.
        let solve = solve_request(&request, &build_ref, &session_id, kind)?;
        let session = self
            .open_session(
                session_id,
                SessionData {
                    secrets: Arc::new(request.secrets.clone()),
                    auth,
                },
            )
            .await?;
        tracing::debug!(build_ref = %build_ref, endpoint = %self.endpoint, ?kind, "starting BuildKit solve");

        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (result_tx, result_rx) = oneshot::channel();
        let (cancel_tx, cancel_rx) = oneshot::channel();
        let driver = Driver {
            control: self.control.clone(),
            endpoint: self.endpoint.clone(),
            build_ref: build_ref.clone(),
            kind,
            names: request.export.names.clone(),
            redactor,
            events: events_tx,
        };
        tokio::spawn(async move {
            let result = driver.run(solve, cancel_rx, session).await;
            let _ = result_tx.send(result);
        });
        Ok(BuildHandle {
            build_ref,
            events: events_rx,
            result: Some(result_rx),
            cancel: Some(cancel_tx),
        })
    }
}

struct Driver {
    control: ControlClient<Channel>,
    endpoint: Endpoint,
    build_ref: String,
    kind: WorkerKind,
    names: Vec<String>,
    redactor: Redactor,
    events: mpsc::UnboundedSender<ProgressEvent>,
}

impl Driver {
    fn emit(&self, events: Vec<ProgressEvent>) {
        for e in events {
            // The receiver may be gone (the caller only waits); that's fine.
            let _ = self.events.send(e);
        }
    }

    /// Runs the Solve while following its status, until it ends or is cancelled; then takes
    /// the status that is still coming (bounded), ends the session, and reads the result.
    async fn run(
        self,
        solve_req: SolveRequest,
        mut cancel: oneshot::Receiver<()>,
        session: Session,
    ) -> Result<BuildOutput, Error> {
        let mut tracker = Tracker::new(self.redactor.clone());
        let (mut status_rx, status_task) = self.follow_status();
        let mut solve_client = self.control.clone();
        let mut solve = Box::pin(async move { solve_client.solve(solve_req).await });
        let mut status_open = true;
        let outcome = loop {
            tokio::select! {
                res = &mut solve => break Some(res),
                // An explicit cancel, or the handle was dropped.
                _ = &mut cancel => break None,
                msg = status_rx.recv(), if status_open => match msg {
                    Some(m) => self.emit(tracker.apply(m)),
                    None => status_open = false,
                },
            }
        };
        // Dropping the Solve call resets its HTTP/2 stream; BuildKit cancels
        // the job's context and kills running steps.
        drop(solve);
        let cancelled = outcome.is_none();
        if status_open {
            let drain = async {
                while let Some(m) = status_rx.recv().await {
                    self.emit(tracker.apply(m));
                }
            };
            let limit = if cancelled { CANCEL_DRAIN } else { STATUS_DRAIN };
            if tokio::time::timeout(limit, drain).await.is_err() {
                status_task.abort();
            }
        }
        self.emit(tracker.finish());
        drop(session);
        match outcome {
            None => Err(Error::Cancelled),
            Some(Ok(resp)) => self.output(resp.into_inner().exporter_response.into_iter().collect(), &tracker),
            Some(Err(status)) => Err(self.solve_error(&status, &tracker)),
        }
    }

    /// The build's status stream (the same ref), read concurrently with the Solve: its
    /// messages, and the task that reads them.
    fn follow_status(&self) -> (mpsc::Receiver<StatusResponse>, tokio::task::JoinHandle<()>) {
        let (status_tx, status_rx) = mpsc::channel(64);
        let mut status_client = self.control.clone();
        let status_ref = self.build_ref.clone();
        let task = tokio::spawn(async move {
            let mut stream = match status_client.status(StatusRequest { r#ref: status_ref }).await {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    tracing::debug!(error = %e, "BuildKit status stream not opened");
                    return;
                }
            };
            while let Some(item) = stream.next().await {
                match item {
                    Ok(msg) => {
                        if status_tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "BuildKit status stream ended");
                        return;
                    }
                }
            }
        });
        (status_rx, task)
    }

    /// What a failed Solve means: BuildKit unreachable (the transport failed, or it answered
    /// Unavailable before any step), or the build's own failure, with its failed step.
    fn solve_error(&self, status: &tonic::Status, tracker: &Tracker) -> Error {
        let msg = self.redactor.redact(status.message());
        tracing::debug!(build_ref = %self.build_ref, code = ?status.code(), error = %msg, "BuildKit solve failed");
        if is_transport_failure(status) || (status.code() == tonic::Code::Unavailable && tracker.summary().total == 0) {
            return Error::Unreachable {
                endpoint: self.endpoint.to_string(),
                reason: self.redactor.redact(&error_chain(status)),
            };
        }
        classify(&msg, status.code(), tracker.failed_step())
    }

    fn output(&self, response: BTreeMap<String, String>, tracker: &Tracker) -> Result<BuildOutput, Error> {
        let digest = response
            .get("containerimage.digest")
            .filter(|d| !d.is_empty())
            .cloned()
            .ok_or_else(|| {
                Error::Protocol(format!(
                    "the exporter reported no image digest (response keys: {:?})",
                    response.keys().collect::<Vec<_>>()
                ))
            })?;
        let descriptor_media_type = response
            .get("containerimage.descriptor")
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
            .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(String::from));
        let digest_kind = match (self.kind, descriptor_media_type) {
            (_, Some(mt)) if mt.contains("manifest") || mt.contains("index") => DigestKind::Manifest,
            (WorkerKind::Moby, _) => DigestKind::ImageId,
            _ => DigestKind::Manifest,
        };
        let config_digest = response
            .get("containerimage.config.digest")
            .filter(|d| !d.is_empty())
            .cloned()
            .or_else(|| (digest_kind == DigestKind::ImageId).then(|| digest.clone()));
        let image_names = match response.get("image.name").filter(|n| !n.is_empty()) {
            Some(n) => n.split(',').map(|s| s.trim().to_string()).collect(),
            None => self.names.clone(),
        };
        Ok(BuildOutput {
            build_ref: self.build_ref.clone(),
            digest,
            digest_kind,
            config_digest,
            image_names,
            exporter_response: response,
            summary: tracker.summary(),
            buildkit_duration: tracker.span(),
        })
    }
}

/// A running build: a stream of [`ProgressEvent`]s, then a result.
///
/// Dropping the handle before the build finished cancels it in BuildKit.
#[derive(Debug)]
pub struct BuildHandle {
    build_ref: String,
    events: mpsc::UnboundedReceiver<ProgressEvent>,
    result: Option<oneshot::Receiver<Result<BuildOutput, Error>>>,
    cancel: Option<oneshot::Sender<()>>,
}

impl BuildHandle {
    /// A handle over channels some other backend drives: its events, its result, and the
    /// signal it receives on cancellation. For stand-ins only (the scale harness's simulated
    /// builders, `agent::simulated`); BuildKit builds come from [`Client::build`].
    pub fn from_channels(
        build_ref: String,
        events: mpsc::UnboundedReceiver<ProgressEvent>,
        result: oneshot::Receiver<Result<BuildOutput, Error>>,
        cancel: oneshot::Sender<()>,
    ) -> Self {
        Self {
            build_ref,
            events,
            result: Some(result),
            cancel: Some(cancel),
        }
    }

    /// The build's ref (BuildKit's job ID for it).
    pub fn build_ref(&self) -> &str {
        &self.build_ref
    }

    /// The next progress event; `None` once the build is over and every event
    /// was taken.
    pub async fn next_event(&mut self) -> Option<ProgressEvent> {
        self.events.recv().await
    }

    async fn result(&mut self) -> Result<BuildOutput, Error> {
        match self.result.take() {
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Err(Error::Protocol("the build task ended without a result".into()))),
            None => Err(Error::Protocol("the build result was already taken".into())),
        }
    }

    /// Waits for the build to finish (events not yet taken are discarded).
    pub async fn wait(mut self) -> Result<BuildOutput, Error> {
        let r = self.result().await;
        self.cancel = None;
        r
    }

    /// Cancels the build and waits until BuildKit has stopped it (bounded by
    /// about two seconds). Returns [`Error::Cancelled`], or the result if the
    /// build finished first.
    pub async fn cancel(mut self) -> Result<BuildOutput, Error> {
        if let Some(c) = self.cancel.take() {
            let _ = c.send(());
        }
        self.result().await
    }
}

impl Drop for BuildHandle {
    fn drop(&mut self) {
        if let Some(c) = self.cancel.take() {
            let _ = c.send(());
        }
    }
}

impl Stream for BuildHandle {
    type Item = ProgressEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<ProgressEvent>> {
        self.events.poll_recv(cx)
    }
}

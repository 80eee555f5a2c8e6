//! Talks to a builder pod's agent through the apiserver — the pods/proxy subresource, or a
//! port-forward — so `kiln build` and `kiln logs` need nothing but a kubeconfig: no NodePort,
//! Service or ingress. Uploads stream from a file with progress; logs stream back.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use kube::client::ConfigExt;
use kube::{Api, Client, Config};
use tower::{BoxError, ServiceBuilder, ServiceExt};

use crate::api::node_build::AgentEndpoint;

/// How requests reach the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// The pods/proxy subresource: one HTTP hop through the apiserver to the pod's IP.
    #[default]
    Proxy,
    /// A port-forward through the apiserver and the node's kubelet.
    PortForward,
}

/// Why talking to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig cannot make a client.
    #[error("cannot use the kubeconfig to reach the agent: {0}")]
    Config(String),
    /// The request did not get through.
    #[error("cannot reach the agent of pod {pod} through the apiserver ({via}): {reason}")]
    Unreachable {
        /// The pod.
        pod: String,
        /// proxy or port-forward.
        via: &'static str,
        /// What failed.
        reason: String,
    },
    /// The agent (or the apiserver) answered with an error.
    #[error("the agent of pod {pod} answered {status}: {message}")]
    Refused {
        /// The pod.
        pod: String,
        /// HTTP status.
        status: StatusCode,
        /// The body of the answer.
        message: String,
    },
    /// The context file cannot be read.
    #[error("cannot read the packed context {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

type RequestBody = BoxBody<Bytes, std::io::Error>;
type HttpService =
    tower::util::BoxCloneSyncService<Request<RequestBody>, http::Response<hyper::body::Incoming>, BoxError>;

/// A client for agents, from the same kubeconfig as the Kubernetes client.
#[derive(Clone)]
pub struct AgentClient {
    client: Client,
    http: HttpService,
    transport: Transport,
}

/// A streamed response body.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

impl AgentClient {
    /// A client using `config` (the kubeconfig's cluster and credentials).
    pub fn new(config: &Config, client: Client, transport: Transport) -> Result<Self, Error> {
        let https = config
            .rustls_https_connector()
            .map_err(|e| Error::Config(e.to_string()))?;
        let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build::<_, RequestBody>(https);
        let auth = config.auth_layer().map_err(|e| Error::Config(e.to_string()))?;
        let headers = config.extra_headers_layer().map_err(|e| Error::Config(e.to_string()))?;
        let service = ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .layer(headers)
            .option_layer(auth)
            .map_err(BoxError::from)
            .service(hyper.map_err(BoxError::from));
        Ok(Self {
            client,
            http: tower::util::BoxCloneSyncService::new(service),
            transport,
        })
    }

    /// Sends the context tarball at `file` (`size` bytes) as `digest`; `sent` counts bytes as
    /// they go. Returns true if the agent stored it, false if it already had it.
    pub async fn upload(
        &self,
        agent: &AgentEndpoint,
        digest: &str,
        file: &Path,
        size: u64,
        sent: Arc<AtomicU64>,
    ) -> Result<bool, Error> {
        let read = |source| Error::Read {
            path: file.display().to_string(),
            source,
        };
        let handle = tokio::fs::File::open(file).await.map_err(read)?;
        let frames = tokio_util::io::ReaderStream::with_capacity(handle, 256 * 1024).map(move |chunk| {
            let chunk = chunk?;
            sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Frame::data(chunk))
        });
        let body = BodyExt::boxed(StreamBody::new(frames));
        let path = format!("/v1/contexts/{digest}");
        let (status, text) = self.send(agent, Method::PUT, &path, body, Some(size)).await?;
        match status {
            StatusCode::CREATED => Ok(true),
            StatusCode::OK => Ok(false),
            status => Err(Error::Refused {
                pod: agent.pod.clone(),
                status,
                message: text.trim().to_owned(),
            }),
        }
    }

    /// The log of NodeBuild `namespace/name` on `agent`; with `follow`, streamed until the
    /// build ends.
    pub async fn log(
        &self,
        agent: &AgentEndpoint,
        namespace: &str,
        name: &str,
        follow: bool,
    ) -> Result<ByteStream, Error> {
        let path = format!("/logs/{namespace}/{name}{}", if follow { "?follow=true" } else { "" });
        let response = self.request(agent, Method::GET, &path, empty(), None).await?;
        if !response.status().is_success() {
            let status = response.status();
            let message = collect(response.into_body()).await.unwrap_or_default();
            return Err(Error::Refused {
                pod: agent.pod.clone(),
                status,
                message,
            });
        }
        let stream = response.into_body().into_data_stream().map_err(BoxError::from);
        Ok(Box::pin(stream))
    }

    async fn send(
        &self,
        agent: &AgentEndpoint,
        method: Method,
        path: &str,
        body: RequestBody,
        length: Option<u64>,
    ) -> Result<(StatusCode, String), Error> {
        let response = self.request(agent, method, path, body, length).await?;
        let status = response.status();
        let text = collect(response.into_body()).await.unwrap_or_default();
        Ok((status, text))
    }

    async fn request(
        &self,
        agent: &AgentEndpoint,
        method: Method,
        path: &str,
        body: RequestBody,
        length: Option<u64>,
    ) -> Result<http::Response<hyper::body::Incoming>, Error> {
        let unreachable = |via: &'static str, reason: String| Error::Unreachable {
            pod: format!("{}/{}", agent.namespace, agent.pod),
            via,
            reason,
        };
        match self.transport {
            Transport::Proxy => {
                let uri = format!(
                    "/api/v1/namespaces/{}/pods/{}:{}/proxy{path}",
                    agent.namespace, agent.pod, agent.port
                );
                let request = build(method, &uri, body, length).map_err(|e| unreachable("proxy", e))?;
                self.http
                    .clone()
                    .oneshot(request)
                    .await
                    .map_err(|e| unreachable("proxy", e.to_string()))
            }
            Transport::PortForward => {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &agent.namespace);
                let port = u16::try_from(agent.port).map_err(|e| unreachable("port-forward", e.to_string()))?;
                let mut forwarder = pods
                    .portforward(&agent.pod, &[port])
                    .await
                    .map_err(|e| unreachable("port-forward", e.to_string()))?;
                let stream = forwarder
                    .take_stream(port)
                    .ok_or_else(|| unreachable("port-forward", "no stream for the port".into()))?;
                let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| unreachable("port-forward", e.to_string()))?;
                tokio::spawn(async move {
                    let _ = connection.await;
                    drop(forwarder);
                });
                let request = build(method, path, body, length).map_err(|e| unreachable("port-forward", e))?;
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| unreachable("port-forward", e.to_string()))
            }
        }
    }
}

fn build(method: Method, uri: &str, body: RequestBody, length: Option<u64>) -> Result<Request<RequestBody>, String> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(http::header::HOST, "kiln-agent");
    if let Some(len) = length {
        request = request.header(http::header::CONTENT_LENGTH, len);
    }
    request.body(body).map_err(|e| e.to_string())
}

fn empty() -> RequestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

async fn collect(body: hyper::body::Incoming) -> Option<String> {
    let bytes = body.collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

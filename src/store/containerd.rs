//! containerd's image store through its images service (`containerd.services.images.v1`), in
//! one namespace (the `containerd-namespace` header). Only the calls kiln needs, with their
//! messages written out here (no containerd protos are vendored): images `Get`, `Delete` and
//! `Update` (one label), the content service's `Read` (manifests, for sizes), the version
//! service's `Version`, and the events service's `Subscribe` to image deletions.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Uri};

use super::{Removal, StoreError};

/// `GetImageRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct GetImageRequest {
    #[prost(string, tag = "1")]
    name: String,
}

/// `DeleteImageRequest`; `sync` waits for the content to be garbage collected.
#[derive(Clone, PartialEq, prost::Message)]
struct DeleteImageRequest {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(bool, tag = "2")]
    sync: bool,
}

/// `Image`, as far as an update of its labels needs it.
#[derive(Clone, PartialEq, prost::Message)]
struct Image {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(map = "string, string", tag = "2")]
    labels: std::collections::HashMap<String, String>,
}

/// `google.protobuf.FieldMask`.
#[derive(Clone, PartialEq, prost::Message)]
struct FieldMask {
    #[prost(string, repeated, tag = "1")]
    paths: Vec<String>,
}

/// `UpdateImageRequest`: only the fields the mask names change.
#[derive(Clone, PartialEq, prost::Message)]
struct UpdateImageRequest {
    #[prost(message, optional, tag = "1")]
    image: Option<Image>,
    #[prost(message, optional, tag = "2")]
    update_mask: Option<FieldMask>,
}

/// `Descriptor`, as far as sizes need it.
#[derive(Clone, PartialEq, prost::Message)]
struct Descriptor {
    #[prost(string, tag = "1")]
    media_type: String,
    #[prost(string, tag = "2")]
    digest: String,
    #[prost(int64, tag = "3")]
    size: i64,
}

/// `GetImageResponse` with the image's target.
#[derive(Clone, PartialEq, prost::Message)]
struct GetImageResponse {
    #[prost(message, optional, tag = "1")]
    image: Option<ImageWithTarget>,
}

/// `Image` with its target descriptor.
#[derive(Clone, PartialEq, prost::Message)]
struct ImageWithTarget {
    #[prost(message, optional, tag = "3")]
    target: Option<Descriptor>,
}

/// `ReadContentRequest`: the whole blob.
#[derive(Clone, PartialEq, prost::Message)]
struct ReadContentRequest {
    #[prost(string, tag = "1")]
    digest: String,
}

/// `ReadContentResponse`: one chunk.
#[derive(Clone, PartialEq, prost::Message)]
struct ReadContentResponse {
    #[prost(bytes = "vec", tag = "2")]
    data: Vec<u8>,
}

/// `VersionResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct VersionResponse {
    #[prost(string, tag = "1")]
    version: String,
}

/// Any answer whose fields kiln does not read (`GetImageResponse`, `Empty`).
#[derive(Clone, PartialEq, prost::Message)]
struct Ignored {}

const GET: &str = "/containerd.services.images.v1.Images/Get";
const DELETE: &str = "/containerd.services.images.v1.Images/Delete";
const UPDATE: &str = "/containerd.services.images.v1.Images/Update";
const VERSION: &str = "/containerd.services.version.v1.Version/Version";
const SUBSCRIBE: &str = "/containerd.services.events.v1.Events/Subscribe";
const READ: &str = "/containerd.services.content.v1.Content/Read";
/// A manifest or index larger than this is not read (real ones are a few KiB).
const MAX_MANIFEST: usize = 4 << 20;

/// `SubscribeRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct SubscribeRequest {
    #[prost(string, repeated, tag = "1")]
    filters: Vec<String>,
}

/// `Envelope`, as far as kiln reads it.
#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    #[prost(string, tag = "2")]
    namespace: String,
}

/// The CRI label that keeps an image from the kubelet's image garbage collection (containerd
/// 1.7+, kubelet 1.29+), and its value.
pub const PINNED_LABEL: (&str, &str) = ("io.cri-containerd.pinned", "pinned");

fn unreachable(socket: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unreachable {
        socket: socket.display().to_string(),
        detail: e.to_string(),
    }
}

/// An error with its sources (tonic's own message is terse: "transport error").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

async fn channel(socket: &Path) -> Result<Channel, StoreError> {
    let path: PathBuf = socket.to_owned();
    tonic::transport::Endpoint::from_static("http://containerd")
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| unreachable(socket, chain(&e)))
}

/// A gRPC client on the socket, ready for a call.
async fn ready(socket: &Path) -> Result<tonic::client::Grpc<Channel>, StoreError> {
    let mut grpc = tonic::client::Grpc::new(channel(socket).await?);
    grpc.ready().await.map_err(|e| unreachable(socket, e))?;
    Ok(grpc)
}

/// `message` as a request scoped to `namespace` (containerd's `containerd-namespace` header).
fn in_namespace<M>(message: M, namespace: &str) -> Result<tonic::Request<M>, StoreError> {
    let mut request = tonic::Request::new(message);
    let value = namespace
        .parse()
        .map_err(|_| StoreError::Refused(format!("namespace {namespace:?} is not a valid header value")))?;
    request.metadata_mut().insert("containerd-namespace", value);
    Ok(request)
}

/// One unary call in `namespace`; `Ok(None)` when containerd answers NotFound.
async fn call_for<M, R>(
    socket: &Path,
    namespace: &str,
    method: &'static str,
    message: M,
) -> Result<Option<R>, StoreError>
where
    M: prost::Message + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = ready(socket).await?;
    let request = in_namespace(message, namespace)?;
    let codec = tonic_prost::ProstCodec::<M, R>::default();
    match grpc
        .unary(request, http::uri::PathAndQuery::from_static(method), codec)
        .await
    {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) if s.code() == tonic::Code::Unavailable => Err(unreachable(socket, s.message())),
        Err(s) => Err(StoreError::Refused(format!("{:?}: {}", s.code(), s.message()))),
    }
}

/// One unary call whose answer is not read; `Ok(false)` when containerd answers NotFound.
async fn call<M>(socket: &Path, namespace: &str, method: &'static str, message: M) -> Result<bool, StoreError>
where
    M: prost::Message + Send + Sync + 'static,
{
    Ok(call_for::<M, Ignored>(socket, namespace, method, message)
        .await?
        .is_some())
}

/// Whether containerd has an image named `name` in `namespace`.
pub async fn exists(socket: &Path, namespace: &str, name: &str) -> Result<bool, StoreError> {
    let request = GetImageRequest { name: name.to_owned() };
    call(socket, namespace, GET, request).await
}

/// Removes the image record `name` from `namespace` (its content goes with containerd's
/// garbage collection once nothing else refers to it).
pub async fn remove(socket: &Path, namespace: &str, name: &str) -> Result<Removal, StoreError> {
    let request = DeleteImageRequest {
        name: name.to_owned(),
        sync: false,
    };
    let found = call(socket, namespace, DELETE, request).await?;
    Ok(if found { Removal::Removed } else { Removal::Absent })
}

/// Sets the CRI pinned label on the image `name` in `namespace`; `Ok(false)` if there is no
/// such image.
pub async fn pin(socket: &Path, namespace: &str, name: &str) -> Result<bool, StoreError> {
    let (key, value) = PINNED_LABEL;
    let request = UpdateImageRequest {
        image: Some(Image {
            name: name.to_owned(),
            labels: [(key.to_owned(), value.to_owned())].into(),
        }),
        update_mask: Some(FieldMask {
            paths: vec![format!("labels.{key}")],
        }),
    };
    call(socket, namespace, UPDATE, request).await
}

/// containerd's version, e.g. `1.6.20~ds1` or `v1.7.24`.
pub async fn version(socket: &Path) -> Result<String, StoreError> {
    let answer: Option<VersionResponse> = call_for(socket, "default", VERSION, Ignored {}).await?;
    Ok(answer.map(|v| v.version).unwrap_or_default())
}

/// Calls `removed` on every image deletion in `namespace` that containerd publishes, until the
/// stream ends (an error: containerd went away).
pub async fn follow_removals(
    socket: &Path,
    namespace: &str,
    removed: &(dyn Fn() + Send + Sync),
) -> Result<(), StoreError> {
    let mut grpc = ready(socket).await?;
    let request = tonic::Request::new(SubscribeRequest {
        filters: vec![r#"topic=="/images/delete""#.to_owned()],
    });
    let codec = tonic_prost::ProstCodec::<SubscribeRequest, Envelope>::default();
    let mut events = grpc
        .server_streaming(request, http::uri::PathAndQuery::from_static(SUBSCRIBE), codec)
        .await
        .map_err(|s| unreachable(socket, s.message()))?
        .into_inner();
    loop {
        match events.message().await {
            Ok(Some(envelope)) if envelope.namespace == namespace => removed(),
            Ok(Some(_)) => {}
            Ok(None) => return Err(unreachable(socket, "the event stream ended")),
            Err(s) => return Err(unreachable(socket, s.message())),
        }
    }
}

/// The image's size as its manifest lists it (config plus compressed layers, what a registry
/// would transfer); for an index, its first manifest's. `Ok(None)` if there is no such image.
pub async fn size(socket: &Path, namespace: &str, name: &str) -> Result<Option<u64>, StoreError> {
    let request = GetImageRequest { name: name.to_owned() };
    let answer: Option<GetImageResponse> = call_for(socket, namespace, GET, request).await?;
    let Some(mut target) = answer.and_then(|a| a.image).and_then(|i| i.target) else {
        return Ok(None);
    };
    for _ in 0..2 {
        let blob = read(socket, namespace, &target.digest).await?;
        let json: serde_json::Value = serde_json::from_slice(&blob)
            .map_err(|e| StoreError::Refused(format!("manifest {} is not JSON: {e}", target.digest)))?;
        if let Some(first) = json["manifests"].as_array().and_then(|m| m.first()) {
            target = Descriptor {
                media_type: first["mediaType"].as_str().unwrap_or_default().to_owned(),
                digest: first["digest"].as_str().unwrap_or_default().to_owned(),
                size: first["size"].as_i64().unwrap_or_default(),
            };
            continue;
        }
        let sizes = json["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(std::iter::once(&json["config"]))
            .filter_map(|d| d["size"].as_u64());
        return Ok(Some(sizes.sum()));
    }
    Err(StoreError::Refused(format!("image {name}: an index of indexes")))
}

/// A blob of the content store, whole (bounded by [`MAX_MANIFEST`]).
async fn read(socket: &Path, namespace: &str, digest: &str) -> Result<Vec<u8>, StoreError> {
    let mut grpc = ready(socket).await?;
    let request = in_namespace(
        ReadContentRequest {
            digest: digest.to_owned(),
        },
        namespace,
    )?;
    let codec = tonic_prost::ProstCodec::<ReadContentRequest, ReadContentResponse>::default();
    let mut chunks = grpc
        .server_streaming(request, http::uri::PathAndQuery::from_static(READ), codec)
        .await
        .map_err(|s| StoreError::Refused(format!("read {digest}: {:?}: {}", s.code(), s.message())))?
        .into_inner();
    let mut blob = Vec::new();
    while let Some(chunk) = chunks
        .message()
        .await
        .map_err(|s| StoreError::Refused(format!("read {digest}: {}", s.message())))?
    {
        blob.extend_from_slice(&chunk.data);
        if blob.len() > MAX_MANIFEST {
            return Err(StoreError::Refused(format!("{digest} is larger than a manifest")));
        }
    }
    Ok(blob)
}

//! BuildKit client: Dockerfile builds over BuildKit's gRPC Control API, with a session.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kiln::buildkit::Error> {
//! use kiln::buildkit::{BuildRequest, Client, Context, Dockerfile, Endpoint, PlainRenderer};
//!
//! let endpoint: Endpoint = "unix:///run/buildkit/buildkitd.sock".parse()?;
//! let client = Client::connect(&endpoint, None).await?;
//! let mut req = BuildRequest::new(
//!     Context::parse("https://github.com/org/app.git#main:docker")?,
//!     Dockerfile::Path("Dockerfile".into()),
//! );
//! req.export.names = vec!["registry.local/app:dev".into()];
//! let mut build = client.build(req).await?;
//! let mut plain = PlainRenderer::new();
//! while let Some(event) = build.next_event().await {
//!     for line in plain.render(&event) {
//!         println!("{line}");
//!     }
//! }
//! let out = build.wait().await?;
//! println!("{} ({:?})", out.digest, out.digest_kind);
//! # Ok(()) }
//! ```
//!
//! # Endpoints
//! [`Endpoint`] accepts `unix:///path` (buildkitd; production), `tcp://host:port`
//! (with a [`TlsConfig`] for mTLS) and `docker-unix:///var/run/docker.sock`
//! (Docker's embedded BuildKit: `POST /grpc` upgraded to h2c carries the
//! Control service; `POST /session` carries the session).
//!
//! # Design decisions
//! - **Generated types from `bollard-buildkit-proto`**, not our own protos:
//!   it is maintained with bollard's BuildKit support, is generated with the
//!   same tonic/prost 0.14 we use, and already contains everything needed
//!   (Control, LLB `pb`, Health, Auth, Secrets) with `tonic` servers for the
//!   session side. Own protos would mean vendoring a dozen `.proto` files with
//!   gogoproto imports and running `protoc` in `build.rs` on every machine
//!   (Debian's protoc is old), for no gain. Its protos are BuildKit v0.17+; the
//!   field numbers are stable since v0.8, so they work against Docker 20.10's
//!   v0.8 (verified by the tests).
//! - **Solve with the `dockerfile.v0` frontend directly** (as `buildctl` ≤ v0.10
//!   and BuildKit's `client.Solve` do), not through the gateway API: one call,
//!   works from v0.8 on. Exporter fields 3/4 (legacy, the only ones v0.8 reads)
//!   and 13 (`Exporters`, v0.13+) are both set. The exporter comes from
//!   `ListWorkers`: `moby` with `name` on Docker's worker, `image` with `name`,
//!   `push`, `unpack` elsewhere.
//! - **Inline Dockerfiles** travel as LLB in `FrontendInputs`: `dockerfile` is
//!   a scratch + `mkfile /Dockerfile`. Because the frontend ignores inputs once
//!   a `context` attribute names a git/http context (v0.8 `builder/build.go`),
//!   the context is then passed as an input too, as LLB we build from the same
//!   URL (a git source, or an http source + unpacking copy, exactly what the
//!   frontend builds itself). No file-sync session is needed.
//! - **Session** (health, registry auth from Docker config JSON, build secrets)
//!   is served by tonic services on a hyper HTTP/2 server over the session
//!   stream: Docker's upgraded `/session` connection, or buildkitd's
//!   `Control.Session` bidi stream (raw HTTP/2 bytes in `BytesMessage`s). One
//!   session per build, so a build's secrets are never visible to another.
//! - **Secrets are masked** by kiln (BuildKit prints them verbatim if a step
//!   does): every log line, step name and error message passes a [`Redactor`].
//! - **Cancellation** is dropping the `Solve` call (an HTTP/2 stream reset):
//!   BuildKit cancels the job's context and kills running steps.
//!
//! See `docs/buildkit.md` for what was verified against Docker's embedded
//! BuildKit (v0.8), including local-only base images.

mod auth;
mod build_context;
mod client;
mod endpoint;
mod error;
mod llb;
mod progress;
mod redact;
mod request;
mod session;
mod transport;
mod worker;

pub use auth::{Credentials, RegistryAuth};
pub use build_context::Context;
pub use client::{BuildHandle, BuildOutput, Client, DigestKind};
pub use endpoint::{DEFAULT_BUILDKIT_SOCKET, DEFAULT_DOCKER_SOCKET, Endpoint, TlsConfig};
pub use error::Error;
pub use progress::{LOG_TAIL_LINES, LogStream, PlainRenderer, ProgressEvent, ProgressSummary};
pub use redact::{MASK, Redactor};
pub use request::{BuildRequest, Dockerfile, Export, GIT_AUTH_TOKEN, Network, Pull};
pub use worker::{LABEL_CONTAINERD_NAMESPACE, LABEL_EXECUTOR, LABEL_SNAPSHOTTER, WorkerInfo, WorkerKind};

/// The error of a build; the same type as [`Error`].
pub type BuildError = Error;

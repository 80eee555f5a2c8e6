//! Shared helpers for tests that drive BuildKit directly: a client on the shared Docker daemon,
//! context tarballs served on loopback, requests without network, and a build run to the end.

use kiln::buildkit::{
    BuildOutput, BuildRequest, Client, Context, Dockerfile, Endpoint, Error, Network, PlainRenderer, ProgressEvent,
};

use super::docker::DockerDaemon;
use super::http::{FileServer, tar};

/// A client of the test binary's shared Docker daemon.
pub async fn client() -> Client {
    let daemon = DockerDaemon::shared();
    let endpoint = Endpoint::parse(&daemon.endpoint()).expect("endpoint");
    Client::connect(&endpoint, None).await.expect("connect")
}

/// `kiln-test/<repo>:<random tag>`, so parallel tests never share an image name.
pub fn unique(repo: &str) -> String {
    format!("kiln-test/{repo}:{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Serves a context tarball holding `Dockerfile` and `files`.
pub fn http_context(dockerfile: &str, files: &[(&str, &[u8])]) -> (FileServer, Context) {
    let mut all: Vec<(&str, &[u8])> = vec![("Dockerfile", dockerfile.as_bytes())];
    all.extend_from_slice(files);
    let server = FileServer::start(&[("/context.tar", tar(&all))]);
    let ctx = Context::Http {
        url: server.url("/context.tar"),
    };
    (server, ctx)
}

/// A request exporting to `name`; dockerd runs with `--bridge=none`, so `RUN` gets no network.
pub fn request(ctx: Context, dockerfile: Dockerfile, name: &str) -> BuildRequest {
    let mut req = BuildRequest::new(ctx, dockerfile);
    req.export.names = vec![name.to_string()];
    req.network = Network::None;
    req
}

/// A request for a served tarball with `Dockerfile` and `files`, exported to a unique name in
/// `repo`. Keep the server alive while the build runs.
pub fn tarball_request(dockerfile: &str, files: &[(&str, &[u8])], repo: &str) -> (FileServer, BuildRequest) {
    let (server, ctx) = http_context(dockerfile, files);
    (server, request(ctx, Dockerfile::default(), &unique(repo)))
}

/// Runs a build to the end, collecting its progress events.
pub async fn build(client: &Client, req: BuildRequest) -> (Result<BuildOutput, Error>, Vec<ProgressEvent>) {
    let mut handle = client.build(req).await.expect("start build");
    let mut events = Vec::new();
    while let Some(e) = handle.next_event().await {
        events.push(e);
    }
    (handle.wait().await, events)
}

/// The events as `buildctl --progress=plain` would print them.
pub fn render(events: &[ProgressEvent]) -> String {
    let mut r = PlainRenderer::new();
    events.iter().flat_map(|e| r.render(e)).collect::<Vec<_>>().join("\n")
}

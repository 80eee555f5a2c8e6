//! The BuildKit client's own overhead on a fully cached build.
//!
//! Starts a private Docker daemon (as the tests do), warms the cache, then
//! runs the same build 20 times and compares, per build, our wall time (from
//! `Client::build` to the result: session setup, Solve, Status drain) with
//! BuildKit's own duration for it (first vertex start to last vertex
//! completion, from the Status stream). Prints medians and the ratio.
//!
//! `cargo bench --bench buildkit_overhead` (needs `hack/docker-env.sh`).

// The test helpers this benchmark needs (not the whole `tests/support`).
#[path = "../tests/support/docker.rs"]
mod docker;
#[path = "../tests/support/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../tests/support/process.rs"]
mod process;

use std::time::{Duration, Instant};

use docker::{BUSYBOX, DockerDaemon};
use http::{FileServer, tar};
use kiln::buildkit::{BuildRequest, Client, Context, Dockerfile, Endpoint, Network};

const RUNS: usize = 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A bare `Solve` over Docker's `/grpc` with no session, no Status stream
/// and no kiln code: the daemon's floor for the same cached build.
async fn raw_solve_floor(docker: std::path::PathBuf, context_url: &str) -> f64 {
    use bollard_buildkit_proto::moby::buildkit::v1::{SolveRequest, control_client::ControlClient};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let channel = tonic::transport::Endpoint::from_static("http://docker")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let docker = docker.clone();
            async move {
                let mut s = tokio::net::UnixStream::connect(docker).await?;
                s.write_all(b"POST /grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
                    .await?;
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    head.push(s.read_u8().await?);
                }
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .expect("raw channel");
    let mut control = ControlClient::new(channel);
    let mut times = Vec::new();
    for i in 0..=RUNS {
        let req = SolveRequest {
            r#ref: uuid::Uuid::new_v4().simple().to_string(),
            frontend: "dockerfile.v0".into(),
            frontend_attrs: [
                ("context".to_string(), context_url.to_string()),
                ("force-network-mode".to_string(), "none".to_string()),
            ]
            .into(),
            exporter_deprecated: "moby".into(),
            exporter_attrs_deprecated: [("name".to_string(), "kiln-bench/scratch:latest".to_string())].into(),
            ..Default::default()
        };
        let t = Instant::now();
        control.solve(req).await.expect("raw solve");
        if i > 0 {
            times.push(ms(t.elapsed()));
        }
    }
    median(times)
}

async fn measure(client: &Client, label: &str, req: &BuildRequest) {
    // Warm the cache.
    client
        .build(req.clone())
        .await
        .expect("start")
        .wait()
        .await
        .expect("warm-up build");
    let (mut wall, mut bk, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        let out = client
            .build(req.clone())
            .await
            .expect("start")
            .wait()
            .await
            .expect("build");
        let w = t.elapsed();
        let b = out.buildkit_duration.unwrap_or_default();
        assert!(out.summary.cached > 0, "the build should be cached");
        wall.push(ms(w));
        bk.push(ms(b));
        if !b.is_zero() {
            ratio.push(w.as_secs_f64() / b.as_secs_f64());
        }
    }
    let (w, b, r) = (median(wall), median(bk), median(ratio));
    println!(
        "{label:<34} wall {w:>7.1} ms   BuildKit {b:>7.1} ms   ratio {r:>5.2}   overhead {:>6.1} ms   (median of {RUNS})",
        w - b
    );
}

fn main() {
    let daemon = DockerDaemon::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let endpoint = Endpoint::parse(&daemon.endpoint()).expect("endpoint");
        let t = Instant::now();
        let client = Client::connect(&endpoint, None).await.expect("connect");
        client.worker_kind().await.expect("workers");
        println!(
            "connect + ListWorkers (docker-unix, /grpc upgrade): {:.1} ms",
            ms(t.elapsed())
        );

        let server = FileServer::start(&[
            (
                "/scratch.tar",
                tar(&[
                    ("Dockerfile", b"FROM scratch\nCOPY a.txt /a.txt\n".as_slice()),
                    ("a.txt", b"a\n".as_slice()),
                ]),
            ),
            (
                "/busybox.tar",
                tar(&[("Dockerfile", format!("FROM {BUSYBOX}\nRUN echo hi > /hi\n").as_bytes())]),
            ),
        ]);
        for (label, path) in [
            ("scratch + COPY (cached)", "/scratch.tar"),
            ("busybox + RUN (cached)", "/busybox.tar"),
        ] {
            let mut req = BuildRequest::new(Context::Http { url: server.url(path) }, Dockerfile::default());
            req.network = Network::None;
            req.export.names = vec![format!("kiln-bench/{}:latest", &path[1..path.len() - 4])];
            measure(&client, &format!("docker-unix  {label}"), &req).await;
        }

        let floor = raw_solve_floor(daemon.socket().to_path_buf(), &server.url("/scratch.tar")).await;
        println!("bare Solve, no session/Status (floor) scratch + COPY   wall {floor:>7.1} ms   (median of {RUNS})");

        // The same through the Control.Session stream (unix:// endpoint).
        let socket = daemon.grpc_unix_proxy();
        let unix = Endpoint::parse(&format!("unix://{}", socket.display())).expect("endpoint");
        let client = Client::connect(&unix, None).await.expect("connect unix");
        let mut req = BuildRequest::new(
            Context::Http {
                url: server.url("/scratch.tar"),
            },
            Dockerfile::default(),
        );
        req.network = Network::None;
        req.export.names = vec!["kiln-bench/scratch:latest".into()];
        measure(&client, "unix (gRPC session) scratch+COPY", &req).await;
    });
}

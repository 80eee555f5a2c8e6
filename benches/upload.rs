//! `kiln build`'s context upload and its no-change rebuild, against a real apiserver, a real
//! BuildKit (Docker's) and kiln's controller and agent as processes.
//!
//! - Upload throughput of one context (200 MiB of incompressible files with `--bench`; 8 MiB
//!   as a smoke in `make test`): kiln's upload through the apiserver (pods/proxy, as `kiln
//!   build` sends it), the same bytes through the same apiserver path into a sink that only
//!   reads them (the transport's own limit), and the same bytes sent straight to the agent's
//!   address, without the apiserver.
//! - A no-change `kiln build` end to end (pack, create, nothing uploaded, cached build, print),
//!   median of 20 (3 in the smoke), next to the bare BuildKit Solve of the same cached build.
//!
//! Figures come from one run on a shared 2-core machine: compare the ratios.
//! `cargo bench --bench upload` (needs `make test-env`, root for the agents' bridge address).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use kiln::api::node_build::{AgentEndpoint, NodeBuild};
use kiln::buildkit::{BuildRequest, Client, Context, Dockerfile, Endpoint, Network};
use kiln::cli::agent_client::{AgentClient, Transport};
use kiln::context::{IgnoreRules, PackOptions};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use support::e2e::{NS, Rig, agent_ip};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Writes `mib` MiB of incompressible data in 8 files, plus a Dockerfile, into `dir`.
fn make_context(dir: &Path, mib: usize, salt: &str) {
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\nCOPY . /ctx/\n").expect("Dockerfile");
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ salt.len() as u64;
    for f in 0..8 {
        let mut file = std::fs::File::create(dir.join(format!("blob-{f}.bin"))).expect("create");
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..mib / 8 {
            for b in chunk.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b.copy_from_slice(&state.to_le_bytes()[..b.len()]);
            }
            file.write_all(&chunk).expect("write");
        }
    }
    std::fs::write(dir.join("salt.txt"), salt).expect("salt");
}

/// Packs `dir`; returns the tarball, its digest and size.
fn pack(dir: &Path) -> (tempfile::NamedTempFile, String, u64) {
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    let ignore = IgnoreRules::empty();
    let opts = PackOptions {
        root: dir,
        ignore: &ignore,
    };
    let packed = kiln::context::pack(opts, std::io::BufWriter::new(file.as_file()), &mut |_| {}).expect("pack");
    (file, packed.digest, packed.size)
}

/// Creates an ImageBuild of an uploaded context and returns the agent endpoint of its attempt
/// once that attempt waits for the upload.
async fn awaiting_upload(rig: &Rig, ns: &str, name: &str, digest: &str, size: u64) -> AgentEndpoint {
    let ib = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": name, "namespace": ns},
        "spec": {"image": format!("kiln.local/{ns}/upload:{name}"), "source": {"upload": {"digest": digest, "size": size}},
                 "dockerfileInline": "FROM scratch\nCOPY . /ctx/\n", "backoffLimit": 0}});
    rig.server.apply_manifests(&ib.to_string());
    let api: Api<NodeBuild> = Api::namespaced(rig.client().await, ns);
    support::kiln::eventually(Duration::from_secs(60), "an attempt waiting for its upload", || async {
        let list = api
            .list(&ListParams::default().labels(&format!("kiln.dev/image-build={name}")))
            .await
            .ok()?;
        let status = list.items.first()?.status.clone()?;
        (status.reason.as_deref() == Some("WaitingForUpload"))
            .then_some(status.agent_endpoint)
            .flatten()
    })
    .await
}

/// A server that reads whole request bodies and answers 201, with a Pod object for it (as the
/// rig's agents have), so the apiserver proxies to it.
fn start_sink(rig: &Rig) -> AgentEndpoint {
    let ip = agent_ip().expect("bridge address");
    let listener = std::net::TcpListener::bind((ip, 0)).expect("bind sink");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || drain(stream));
        }
    });
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "upload-sink", "namespace": NS},
        "spec": {"containers": [{"name": "sink", "image": "sink"}]}});
    rig.server.apply_manifests(&pod.to_string());
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
    let (ok, _, err) = rig.server.kubectl(&[
        "-n",
        NS,
        "patch",
        "pod",
        "upload-sink",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
    assert!(ok, "{err}");
    AgentEndpoint {
        namespace: NS.into(),
        pod: "upload-sink".into(),
        port: i32::from(port),
    }
}

/// Reads one HTTP/1.1 request with a Content-Length body (or chunked, till its end) and answers.
fn drain(mut stream: std::net::TcpStream) {
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    loop {
        let Ok(n) = stream.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..end]).to_lowercase();
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut left = length.saturating_sub(head.len() - end - 4);
            while left > 0 {
                let Ok(n) = stream.read(&mut buf) else { return };
                if n == 0 {
                    return;
                }
                left = left.saturating_sub(n);
            }
            let _ = stream.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
    }
}

/// PUTs `file` straight to the agent at `addr` (no apiserver); returns the time taken.
fn put_direct(addr: &str, digest: &str, file: &Path, size: u64) -> Duration {
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the agent");
    write!(
        stream,
        "PUT /v1/contexts/{digest} HTTP/1.1\r\nHost: agent\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut f = std::fs::File::open(file).expect("open");
    std::io::copy(&mut f, &mut stream).expect("send");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    started.elapsed()
}

fn mib_per_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / took.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (mib, runs) = if full { (200, 20) } else { (8, 3) };
    if agent_ip().is_none() {
        println!("upload benchmark SKIPPED: agents need the bridge address (run as root)");
        return;
    }
    let rig = Rig::start(&["bench-node"]).await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "upload").await;
    let kubeconfig = rig.server.kubeconfig();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("config");
    let agents = AgentClient::new(&config, client.clone(), Transport::Proxy).expect("agent client");

    // Three contexts of the same size, so each upload is new to the agent.
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let mut packed = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        make_context(d.path(), mib, &format!("salt-{i}"));
        let started = Instant::now();
        let p = pack(d.path());
        if i == 0 {
            println!("pack {mib} MiB: {:.0} MiB/s", mib_per_s(p.2, started.elapsed()));
        }
        packed.push(p);
    }

    let (file, digest, size) = &packed[0];
    let endpoint = awaiting_upload(&rig, &ns, "via-proxy", digest, *size).await;
    let started = Instant::now();
    agents
        .upload(&endpoint, digest, file.path(), *size, Arc::new(AtomicU64::new(0)))
        .await
        .expect("upload through pods/proxy");
    let kiln_proxy = started.elapsed();

    let sink = start_sink(&rig);
    let started = Instant::now();
    agents
        .upload(&sink, digest, file.path(), *size, Arc::new(AtomicU64::new(0)))
        .await
        .expect("same bytes into the sink");
    let bare_proxy = started.elapsed();

    let (file2, digest2, size2) = &packed[1];
    awaiting_upload(&rig, &ns, "direct", digest2, *size2).await;
    let addr = rig.agent_addr("bench-node").expect("agent address");
    let direct = put_direct(&addr, digest2, file2.path(), *size2);

    println!("upload of {mib} MiB ({size} bytes):");
    println!(
        "  kiln, through the apiserver (pods/proxy)   {:>8.1} MiB/s",
        mib_per_s(*size, kiln_proxy)
    );
    println!(
        "  same bytes, same path, into a sink         {:>8.1} MiB/s",
        mib_per_s(*size, bare_proxy)
    );
    println!(
        "  straight to the agent (no apiserver)       {:>8.1} MiB/s",
        mib_per_s(*size2, direct)
    );
    println!(
        "  kiln / bare transport: {:.2}",
        bare_proxy.as_secs_f64() / kiln_proxy.as_secs_f64()
    );

    no_change_rebuild(&rig, &kubeconfig, &ns, runs).await;
}

/// A no-change `kiln build` end to end against the bare Solve of the same cached build.
async fn no_change_rebuild(rig: &Rig, kubeconfig: &Path, ns: &str, runs: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\nCOPY . /ctx/\n").expect("write");
    std::fs::write(dir.path().join("app.txt"), "no change").expect("write");
    let kiln = |_: usize| {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "build",
                "-t",
                &format!("kiln.local/{ns}/nochange:1"),
                "-n",
                ns,
                "-o",
                "json",
            ])
            .arg(dir.path())
            .env("KUBECONFIG", kubeconfig)
            .output()
            .expect("kiln build");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let result: Value = serde_json::from_slice(&out.stdout).expect("json");
        (
            started.elapsed(),
            result["context"]["uploadedBytes"].as_u64().unwrap_or(u64::MAX),
        )
    };
    kiln(0); // the first build uploads and fills the cache
    let mut e2e = Vec::new();
    for i in 0..runs {
        let (took, uploaded) = kiln(i);
        assert_eq!(uploaded, 0, "a no-change rebuild uploads nothing");
        e2e.push(took.as_secs_f64() * 1000.0);
    }
    let (tar, _, _) = pack(dir.path());
    let url = {
        let mut bytes = Vec::new();
        std::fs::File::open(tar.path())
            .expect("open")
            .read_to_end(&mut bytes)
            .expect("read");
        rig.files.put("/nochange.tar", bytes);
        rig.files.url("/nochange.tar")
    };
    let endpoint = Endpoint::parse(&rig.docker.endpoint()).expect("endpoint");
    let bk = Client::connect(&endpoint, None).await.expect("connect");
    let mut bare = Vec::new();
    for i in 0..=runs {
        let mut req = BuildRequest::new(
            Context::Http { url: url.clone() },
            Dockerfile::Inline("FROM scratch\nCOPY . /ctx/\n".into()),
        );
        req.export.names = vec!["kiln.bench/nochange-bare:1".into()];
        req.network = Network::None;
        let started = Instant::now();
        bk.build(req).await.expect("build").wait().await.expect("solve");
        if i > 0 {
            bare.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let (k, b) = (median(e2e), median(bare));
    println!(
        "no-change rebuild, median of {runs}: kiln build end to end {k:.0} ms, bare Solve {b:.0} ms, ratio {:.1}x",
        k / b
    );
}

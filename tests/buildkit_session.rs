//! The session and the transports, against a real BuildKit (Docker's
//! embedded one, started privately by `support::docker`): build secrets,
//! registry credentials, and the `unix://` and `tcp://` + mTLS endpoints
//! with the `Control.Session` stream.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln::buildkit::{BuildRequest, Client, Endpoint, Error, MASK, TlsConfig};
use support::buildkit::{build, render, tarball_request};
use support::docker::{BUSYBOX, DockerDaemon};
use support::http::FileServer;
use support::process::{Supervised, free_port, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "kiln-s3cr3t-Value-9f2c41";

fn request(dockerfile: &str) -> (FileServer, BuildRequest) {
    tarball_request(dockerfile, &[], "session")
}

/// Builds with a secret and checks that the step saw it while it appears
/// nowhere a user could see it: not in the image, progress, logs or errors.
async fn secret_round_trip(client: &Client) {
    let daemon = DockerDaemon::shared();
    // Unique per call, so that concurrent tests do not share cached steps.
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let (_s, mut req) = request(&format!(
        "FROM {BUSYBOX}\n\
         RUN --mount=type=secret,id=token echo {nonce} && \
           test \"$(cat /run/secrets/token)\" = \"{SECRET}\" && echo secret-matched > /ok \
           && cat /run/secrets/token && echo && echo \"again: $(cat /run/secrets/token)\"\n\
         RUN --mount=type=secret,id=token,required cat /run/secrets/token >&2; exit 7\n"
    ));
    req.secrets.insert("token".into(), SECRET.as_bytes().to_vec());
    assert!(!format!("{req:?}").contains(SECRET), "Debug leaks the secret");

    let (result, events) = build(client, req.clone()).await;
    // The second RUN prints the secret to stderr and fails: the error and
    // its log tail must be masked too.
    let err = result.expect_err("the second step exits 7");
    let err_text = format!("{err} {err:?}");
    assert!(matches!(err, Error::StepFailed { exit_code: Some(7), .. }), "{err:?}");
    assert!(!err_text.contains(SECRET), "error leaks the secret: {err_text}");
    assert!(err_text.contains(MASK), "{err_text}");
    let plain = render(&events);
    assert!(!plain.contains(SECRET), "progress leaks the secret:\n{plain}");
    assert!(!format!("{events:?}").contains(SECRET));
    assert!(plain.contains(&format!("again: {MASK}")), "{plain}");

    // Now just the first step: the secret was visible to RUN, not stored.
    let (_s2, mut ok_req) = request(&format!(
        "FROM {BUSYBOX}\n\
         RUN --mount=type=secret,id=token echo {nonce} && \
           test \"$(cat /run/secrets/token)\" = \"{SECRET}\" && echo secret-matched > /ok\n"
    ));
    ok_req.secrets = req.secrets.clone();
    let name = ok_req.export.names[0].clone();
    let (result, events) = build(client, ok_req).await;
    result.unwrap_or_else(|e| panic!("{e}\n{}", render(&events)));
    let files = daemon.image_export(&name);
    let ok = files.iter().find(|(p, _)| p == "ok").map(|(_, d)| d.clone());
    assert_eq!(
        ok.as_deref(),
        Some(b"secret-matched\n".as_slice()),
        "RUN saw the secret"
    );
    for (path, data) in &files {
        assert!(
            !data.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the secret ended up in the image at {path}"
        );
    }
    assert!(!files.iter().any(|(p, _)| p.starts_with("run/secrets/token")));
}

#[tokio::test]
async fn secrets_reach_run_but_not_the_image_or_logs_via_docker_session() {
    let daemon = DockerDaemon::shared();
    let client = Client::connect(&Endpoint::parse(&daemon.endpoint()).unwrap(), None)
        .await
        .expect("connect");
    secret_round_trip(&client).await;
}

#[tokio::test]
async fn unix_endpoint_with_the_control_session_stream() {
    // A unix socket speaking the Control API directly (as buildkitd's does):
    // the client dials it plainly and runs its session over Control.Session.
    let daemon = DockerDaemon::shared();
    let socket = daemon.grpc_unix_proxy();
    let endpoint = Endpoint::parse(&format!("unix://{}", socket.display())).unwrap();
    let client = Client::connect(&endpoint, None).await.expect("connect");
    let workers = client.workers().await.expect("workers");
    assert!(!workers.is_empty());
    secret_round_trip(&client).await;
}

#[tokio::test]
async fn a_secret_that_was_not_given_fails_the_step() {
    let daemon = DockerDaemon::shared();
    let client = Client::connect(&Endpoint::parse(&daemon.endpoint()).unwrap(), None)
        .await
        .expect("connect");
    let (_s, req) = request(&format!(
        "FROM {BUSYBOX}\nRUN --mount=type=secret,id=absent,required cat /run/secrets/absent\n"
    ));
    let (result, events) = build(&client, req).await;
    let err = result.expect_err("required secret missing");
    assert!(err.to_string().contains("absent"), "{err}\n{}", render(&events));
}

// ---------------------------------------------------------------- mTLS

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A CA, a server certificate for 127.0.0.1/`buildkitd`, and a client
    /// certificate, all made with the openssl CLI.
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n).display().to_string();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mk_ca = |ca: &str| {
            let mut args = vec!["req", "-x509", "-days", "1", "-subj"];
            let subj = format!("/CN={ca}");
            args.push(&subj);
            args.extend_from_slice(&ec);
            let (key, pem) = (p(&format!("{ca}.key")), p(&format!("{ca}.pem")));
            args.extend_from_slice(&["-keyout", &key, "-out", &pem]);
            run("openssl", &args);
        };
        mk_ca("ca");
        mk_ca("other-ca");
        for (name, ext) in [
            (
                "server",
                "subjectAltName=DNS:buildkitd,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(p(&format!("{name}.ext")), ext).expect("ext");
            let subj = format!("/CN=kiln-{name}");
            let (key, csr) = (p(&format!("{name}.key")), p(&format!("{name}.csr")));
            let mut args = vec!["req", "-new", "-subj", &subj];
            args.extend_from_slice(&ec);
            args.extend_from_slice(&["-keyout", &key, "-out", &csr]);
            run("openssl", &args);
            let (pem, extf, ca, cakey) = (
                p(&format!("{name}.pem")),
                p(&format!("{name}.ext")),
                p("ca.pem"),
                p("ca.key"),
            );
            run(
                "openssl",
                &[
                    "x509",
                    "-req",
                    "-days",
                    "1",
                    "-in",
                    &csr,
                    "-CA",
                    &ca,
                    "-CAkey",
                    &cakey,
                    "-CAcreateserial",
                    "-extfile",
                    &extf,
                    "-out",
                    &pem,
                ],
            );
        }
        Pki { dir }
    }
}

/// `POST /grpc` upgrade on Docker's socket, async.
async fn upgrade(docker: &Path) -> std::io::Result<tokio::net::UnixStream> {
    let mut s = tokio::net::UnixStream::connect(docker).await?;
    s.write_all(
        b"POST /grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n",
    )
    .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await?);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other("upgrade refused"));
    }
    Ok(s)
}

/// A TLS server on loopback that requires a client certificate signed by
/// the test CA (as buildkitd with `--tlscacert` does) and forwards the
/// decrypted HTTP/2 to Docker's BuildKit.
async fn mtls_front(pki: &Pki, docker: PathBuf) -> u16 {
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(pki.path("ca.pem")).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add root");
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .expect("verifier");
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(pki.path("server.pem"))
        .expect("server cert")
        .map(|c| c.expect("cert"))
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.path("server.key")).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let docker = docker.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = upgrade(&docker).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn tcp_endpoint_with_mutual_tls() {
    let daemon = DockerDaemon::shared();
    let pki = Pki::new();
    let port = mtls_front(&pki, daemon.socket().to_path_buf()).await;
    let endpoint = Endpoint::parse(&format!("tcp://127.0.0.1:{port}")).unwrap();

    let tls = TlsConfig::from_files(
        pki.path("ca.pem"),
        Some(&pki.path("client.pem")),
        Some(&pki.path("client.key")),
    )
    .expect("tls files");
    let client = Client::connect(&endpoint, Some(tls.clone()))
        .await
        .expect("mTLS connect");
    assert!(!client.workers().await.expect("workers").is_empty());
    let (_s, mut req) = request(&format!(
        "FROM {BUSYBOX}\nRUN --mount=type=secret,id=t cat /run/secrets/t\n"
    ));
    req.secrets.insert("t".into(), b"over-mtls".to_vec());
    let (result, events) = build(&client, req).await;
    result.unwrap_or_else(|e| panic!("{e}\n{}", render(&events)));
    assert!(render(&events).contains(MASK));

    // By name, as a cluster would address it.
    let named = tls.clone().with_server_name("buildkitd");
    let client = Client::connect(&endpoint, Some(named)).await.expect("server name");
    client.workers().await.expect("workers by name");

    // No client certificate: the server refuses the handshake.
    let anonymous = TlsConfig {
        cert: None,
        key: None,
        ..tls.clone()
    };
    let outcome = match Client::connect(&endpoint, Some(anonymous)).await {
        Err(e) => Err(e),
        Ok(c) => c.workers().await.map(|_| ()),
    };
    assert!(matches!(outcome, Err(Error::Unreachable { .. })), "{outcome:?}");

    // A server certificate from a CA we do not trust.
    let wrong_ca = TlsConfig {
        ca: std::fs::read(pki.path("other-ca.pem")).expect("other ca"),
        ..tls.clone()
    };
    let err = Client::connect(&endpoint, Some(wrong_ca))
        .await
        .expect_err("untrusted server");
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");

    // TLS settings on a non-tcp endpoint are a configuration error.
    let err = Client::connect(&Endpoint::parse(&daemon.endpoint()).unwrap(), Some(tls))
        .await
        .expect_err("tls on docker-unix");
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
}

// ---------------------------------------------------------------- registry auth

/// Debian's `docker-registry` on loopback with htpasswd auth.
struct Registry {
    _proc: Supervised,
    _dir: tempfile::TempDir,
    host: String,
}

impl Registry {
    fn start(user: &str, password: &str) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let htpasswd = run("htpasswd", &["-Bbn", user, password]);
        std::fs::write(dir.path().join("htpasswd"), htpasswd).expect("htpasswd");
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: kiln-test\n    path: {d}/htpasswd\n"
            ),
        )
        .expect("config");
        let proc = Supervised::spawn(
            "docker-registry",
            "docker-registry",
            &["serve".into(), format!("{d}/config.yml")],
            &[],
            &dir.path().join("registry.log"),
            None,
        );
        let host = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&host).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "registry did not start: {}",
                proc.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            _proc: proc,
            _dir: dir,
            host,
        }
    }
}

fn docker_config(host: &str, user: &str, password: &str) -> Vec<u8> {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#).into_bytes()
}

#[tokio::test]
async fn registry_credentials_come_from_the_docker_config_json() {
    let daemon = DockerDaemon::shared();
    let registry = Registry::start("kiln", "hunter2-registry");
    let private = format!("{}/private/busybox:latest", registry.host);
    // Put busybox into the private registry, then forget the local name so
    // that BuildKit must pull (and authenticate).
    for args in [
        vec!["tag", BUSYBOX, private.as_str()],
        vec!["login", "-u", "kiln", "-p", "hunter2-registry", registry.host.as_str()],
        vec!["push", private.as_str()],
        vec!["logout", registry.host.as_str()],
        vec!["rmi", private.as_str()],
    ] {
        let (ok, out, err) = daemon.docker(&args);
        assert!(ok, "docker {args:?}: {out} {err}");
    }
    let client = Client::connect(&Endpoint::parse(&daemon.endpoint()).unwrap(), None)
        .await
        .expect("connect");
    let dockerfile = format!("FROM {private}\nRUN echo pulled > /pulled\n");

    // No credentials: the registry says 401.
    let (_s, req) = request(&dockerfile);
    let (result, events) = build(&client, req).await;
    assert!(
        matches!(result, Err(Error::Auth { .. })),
        "{result:?}\n{}",
        render(&events)
    );
    if let Err(e) = &result {
        println!("without credentials: {e}");
    }

    // Wrong password.
    let (_s, mut req) = request(&dockerfile);
    req.registry_auth = Some(docker_config(&registry.host, "kiln", "wrong-password"));
    let (result, events) = build(&client, req).await;
    let err = result.expect_err("wrong password");
    println!("wrong password: {err}");
    assert!(matches!(err, Error::Auth { .. }), "{err:?}\n{}", render(&events));
    assert!(!err.to_string().contains("wrong-password"));

    // The right ones, served by the session's Auth service.
    let (_s, mut req) = request(&dockerfile);
    req.registry_auth = Some(docker_config(&registry.host, "kiln", "hunter2-registry"));
    let name = req.export.names[0].clone();
    let (result, events) = build(&client, req).await;
    result.unwrap_or_else(|e| panic!("{e}\n{}", render(&events)));
    assert!(!render(&events).contains("hunter2-registry"));
    assert_eq!(
        daemon.image_file(&name, "/pulled").as_deref(),
        Some(b"pulled\n".as_slice())
    );
}

//! A real kube-apiserver + etcd for tests, envtest style, from `$KUBEBUILDER_ASSETS`.
//!
//! One server per test binary (startup costs seconds), shared by its tests; each test gets its
//! own namespace. Certificates are made with `openssl` (`certs.rs`): a CA, a serving cert for
//! 127.0.0.1, and an admin client cert in `system:masters`. RBAC authorization is on, so clients
//! acting as a ServiceAccount see exactly the permissions a cluster would give them.
//! Both processes are supervised (see `process.rs`) and stop when the test binary exits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::OnceCell;

use super::certs::{make_certs, pem_to_der, write_kubeconfig};
use super::process::{Supervised, free_port};

/// A running apiserver with the kiln CRDs installed.
pub struct ApiServer {
    /// Base URL, e.g. `https://127.0.0.1:41234`.
    pub url: String,
    /// Directory with certificates, the kubeconfig and logs.
    pub dir: PathBuf,
    ca_pem: String,
    _etcd: Supervised,
    apiserver: std::sync::Mutex<Supervised>,
    /// kube-apiserver's arguments, to start it again.
    apiserver_args: Vec<String>,
}

static SHARED: OnceCell<ApiServer> = OnceCell::const_new();
/// Whether this binary's apiserver writes an audit log ([`record_audit_log`]).
static AUDIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The audit log's file name in [`ApiServer::dir`].
pub const AUDIT_LOG: &str = "audit.log";

/// Makes this binary's apiserver, when it starts, log every request with its request and
/// response bodies to [`AUDIT_LOG`], except Secrets' (metadata only: the tests create them).
/// Call before the first [`ApiServer::shared`].
pub fn record_audit_log() {
    AUDIT.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn audit_flags(dir: &Path) -> Vec<String> {
    if !AUDIT.load(std::sync::atomic::Ordering::SeqCst) {
        return Vec::new();
    }
    let policy = dir.join("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
         - level: Metadata\n  resources: [{group: \"\", resources: [secrets]}]\n\
         - level: RequestResponse\n",
    )
    .expect("write audit policy");
    vec![
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", dir.join(AUDIT_LOG).display()),
    ]
}

/// What the watch cache logs when it closes a watcher that did not take its events in time.
const UNRESPONSIVE_WATCHER: &str = "Forcing watcher close due to unresponsiveness";

/// The directory holding `kube-apiserver` and `etcd`.
pub fn assets_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("KUBEBUILDER_ASSETS") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var("KILN_CACHE").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/kiln")
    });
    cache.join("envtest/bin")
}

impl ApiServer {
    /// The apiserver shared by this test binary, started on first use.
    pub async fn shared() -> &'static ApiServer {
        SHARED.get_or_init(|| async { ApiServer::start().await }).await
    }

    async fn start() -> ApiServer {
        let assets = assets_dir();
        for bin in ["kube-apiserver", "etcd"] {
            assert!(
                assets.join(bin).is_file(),
                "{bin} not found in {} — run `make test-env` (or set KUBEBUILDER_ASSETS)",
                assets.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("kiln-apiserver-")
            .tempdir()
            .expect("temp dir")
            .keep();
        make_certs(&dir);

        let (client_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let etcd = Supervised::spawn(
            "etcd",
            &assets.join("etcd").to_string_lossy(),
            &strings(&[
                "--name=kiln-test",
                &format!("--data-dir={}", dir.join("etcd").display()),
                &format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                &format!("--initial-cluster=kiln-test=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync=true",
            ]),
            &[],
            &dir.join("etcd.log"),
            Some(&dir),
        );
        let d = |f: &str| dir.join(f).display().to_string();
        let mut flags = audit_flags(&dir);
        let apiserver_args = {
            flags.extend(strings(&[
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={api_port}"),
                "--insecure-port=0",
                &format!("--etcd-servers=http://127.0.0.1:{client_port}"),
                &format!("--cert-dir={}", d("certs")),
                &format!("--tls-cert-file={}", d("server.crt")),
                &format!("--tls-private-key-file={}", d("server.key")),
                &format!("--client-ca-file={}", d("ca.crt")),
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--authorization-mode=RBAC",
                &format!("--service-account-issuer=https://127.0.0.1:{api_port}"),
                &format!("--service-account-key-file={}", d("sa.pub")),
                &format!("--service-account-signing-key-file={}", d("sa.key")),
                "--disable-admission-plugins=ServiceAccount",
                "--endpoint-reconciler-type=none",
                "--event-ttl=1h",
                // One log line per watcher the watch cache closes because its buffer was full
                // ("Forcing watcher close due to unresponsiveness"): 1.20 has no metric for it.
                "--vmodule=cacher=1",
            ]));
            flags
        };
        let apiserver = Supervised::spawn(
            "kube-apiserver",
            &assets.join("kube-apiserver").to_string_lossy(),
            &apiserver_args,
            &[],
            &dir.join("kube-apiserver.log"),
            None,
        );
        let url = format!("https://127.0.0.1:{api_port}");
        let ca_pem = std::fs::read_to_string(dir.join("ca.crt")).expect("ca.crt");
        write_kubeconfig(&dir, &url, &ca_pem);
        let server = ApiServer {
            url,
            dir,
            ca_pem,
            _etcd: etcd,
            apiserver: std::sync::Mutex::new(apiserver),
            apiserver_args,
        };
        server.wait_ready().await;
        server.install_crds().await;
        server
    }

    /// Path of an admin kubeconfig (for `kubectl --kubeconfig`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A client with cluster-admin rights, bound to the calling test's runtime.
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig()).expect("read kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig is valid");
        Client::try_from(config).expect("client")
    }

    /// A bearer token for ServiceAccount `name` in `namespace` (created if missing).
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let admin = self.client().await;
        let sas: Api<ServiceAccount> = Api::namespaced(admin, namespace);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => panic!("create ServiceAccount {namespace}/{name}: {e}"),
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![self.url.clone()]),
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        sas.create_token_request(name, &PostParams::default(), &request)
            .await
            .expect("TokenRequest")
            .status
            .expect("token status")
            .token
            .expect("token in TokenRequest status")
    }

    /// A client that acts as ServiceAccount `name` in `namespace` (created if missing), with
    /// only the rights RBAC grants it.
    pub async fn client_as_service_account(&self, namespace: &str, name: &str) -> Client {
        let token = self.service_account_token(namespace, name).await;
        let mut config = Config::new(self.url.parse().expect("url"));
        config.root_cert = Some(vec![pem_to_der(&self.ca_pem)]);
        config.auth_info.token = Some(token.into());
        config.default_namespace = namespace.to_owned();
        Client::try_from(config).expect("client")
    }

    /// A kubeconfig file acting as ServiceAccount `name` in `namespace`, for kiln processes
    /// that must run with exactly the RBAC of their install manifests.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        use base64::Engine;
        let token = self.service_account_token(namespace, name).await;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let path = self.dir.join(format!("kubeconfig-{namespace}-{name}"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\n\
             users:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: sa\n    namespace: {namespace}\n\
             current-context: t\n",
            url = self.url
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Applies YAML or JSON manifests with `kubectl apply --server-side`.
    pub fn apply_manifests(&self, yaml: &str) {
        let file = self
            .dir
            .join(format!("manifests-{}.yaml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&file, yaml).expect("write manifests");
        // Tests of one binary may apply the same objects at once; the loser of a create race
        // gets AlreadyExists, and applying again then updates the object.
        let mut attempt = 0;
        loop {
            let (ok, _, err) = self.kubectl(&[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                &file.display().to_string(),
            ]);
            if ok {
                break;
            }
            attempt += 1;
            assert!(
                attempt < 5 && (err.contains("AlreadyExists") || err.contains("the object has been modified")),
                "kubectl apply failed: {err}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Creates a fresh namespace for one test.
    pub async fn namespace(&self, client: &Client, prefix: &str) -> String {
        let name = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        name
    }

    /// Runs `kubectl` against this server; returns (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .expect("kubectl is installed");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Watchers the apiserver's watch cache has closed so far because they did not take their
    /// events in time (their buffer was full), as its log records them (`--vmodule=cacher=1`).
    pub fn watchers_closed_unresponsive(&self) -> usize {
        std::fs::read_to_string(self.dir.join("kube-apiserver.log"))
            .map(|log| log.matches(UNRESPONSIVE_WATCHER).count())
            .unwrap_or(0)
    }

    /// The PIDs of kube-apiserver and etcd (the apiserver's current one, after a restart), for
    /// measuring their CPU and memory.
    pub fn pids(&self) -> (u32, u32) {
        let apiserver = self.apiserver.lock().map(|a| a.pid()).unwrap_or(0);
        (apiserver, self._etcd.pid())
    }

    /// Kills kube-apiserver with SIGKILL, as a crash would, and starts it again on the same
    /// etcd, ports and certificates; returns once it is ready. For the chaos harness.
    pub async fn crash_and_restart(&self) {
        {
            let mut apiserver = self.apiserver.lock().expect("lock");
            apiserver.kill();
            *apiserver = Supervised::spawn(
                "kube-apiserver",
                &assets_dir().join("kube-apiserver").to_string_lossy(),
                &self.apiserver_args,
                &[],
                &self.dir.join("kube-apiserver.log"),
                None,
            );
        }
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = self.client().await;
        loop {
            let ready = client
                .request_text(http::Request::get("/readyz").body(Vec::new()).expect("request"))
                .await
                .is_ok_and(|body| body.trim() == "ok");
            let default_ns = ready
                && Api::<Namespace>::all(client.clone())
                    .get_opt("default")
                    .await
                    .ok()
                    .flatten()
                    .is_some();
            if default_ns {
                return;
            }
            let (running, tail) = {
                let apiserver = self.apiserver.lock().expect("lock");
                (apiserver.is_running(), apiserver.log_tail(30))
            };
            assert!(
                Instant::now() < deadline && running,
                "kube-apiserver did not become ready in 60 s; log tail:\n{tail}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn install_crds(&self) {
        let client = self.client().await;
        let version = client.apiserver_version().await.expect("server version");
        let minor = version
            .minor
            .trim_end_matches('+')
            .parse()
            .expect("numeric minor version");
        let crds: Api<CustomResourceDefinition> = Api::all(client);
        for crd in kiln::api::crds::for_server(minor) {
            let name = crd.metadata.name.clone().expect("CRD name");
            crds.patch(&name, &PatchParams::apply("kiln-test").force(), &Patch::Apply(&crd))
                .await
                .unwrap_or_else(|e| panic!("install CRD {name}: {e}"));
        }
        for crd in kiln::api::crds::all() {
            let name = crd.metadata.name.expect("CRD name");
            wait_established(&crds, &name).await;
        }
    }
}

/// Waits until a CRD reports `Established=True`.
pub async fn wait_established(crds: &Api<CustomResourceDefinition>, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let established = crds.get(name).await.ok().and_then(|c| c.status).is_some_and(|s| {
            s.conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return;
        }
        assert!(Instant::now() < deadline, "CRD {name} not Established within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

//! Runs kiln's own binary (controller, agent) as the processes they are in production.

use std::time::{Duration, Instant};

use super::apiserver::ApiServer;
use super::process::{Supervised, free_port};

/// The controller's environment. `KILN_HEAPTRACK_RAW=FILE` runs it under heaptrack's preload
/// library, writing the raw trace to FILE (read with `heaptrack_interpret < FILE | gzip >
/// x.gz; heaptrack_print x.gz`): how the scale run's memory is profiled (docs/performance.md).
fn controller_env(kubeconfig: &std::path::Path) -> Vec<(String, String)> {
    let mut env = vec![
        ("KUBECONFIG".into(), kubeconfig.display().to_string()),
        ("RUST_LOG".into(), log_filter()),
    ];
    if let Some(raw) = std::env::var_os("KILN_HEAPTRACK_RAW") {
        env.push(("LD_PRELOAD".into(), "/usr/lib/heaptrack/libheaptrack_preload.so".into()));
        env.push(("DUMP_HEAPTRACK_OUTPUT".into(), raw.to_string_lossy().into_owned()));
    }
    env
}

/// A running `kiln controller`.
pub struct ControllerProcess {
    /// The supervised process.
    pub process: Supervised,
    /// Its /metrics and probe address.
    pub addr: String,
}

impl ControllerProcess {
    /// Starts `kiln controller` against `server` as cluster-admin, in `namespace`.
    pub fn start(server: &ApiServer, namespace: &str, identity: &str, extra: &[&str]) -> Self {
        Self::start_with(server, &server.kubeconfig(), namespace, identity, extra)
    }

    /// Starts `kiln controller` with the identity in `kubeconfig`.
    pub fn start_with(
        server: &ApiServer,
        kubeconfig: &std::path::Path,
        namespace: &str,
        identity: &str,
        extra: &[&str],
    ) -> Self {
        let port = free_port();
        let mut args = vec![
            "controller".to_owned(),
            format!("--namespace={namespace}"),
            format!("--listen=127.0.0.1:{port}"),
            format!("--identity={identity}"),
            "--agent-image=kiln.dev/kiln:test".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let log = server.dir.join(format!("controller-{identity}.log"));
        let process = Supervised::spawn(
            &format!("kiln controller {identity}"),
            env!("CARGO_BIN_EXE_kiln"),
            &args,
            &controller_env(kubeconfig),
            &log,
            None,
        );
        Self {
            process,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    /// GETs a path on the controller's HTTP server; `None` while it is not answering.
    pub fn get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: kiln\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.0 200").then(|| body.to_owned())
    }

    /// Sum of a counter in `/metrics` whose line contains all `parts`.
    pub fn counter(&self, name: &str, parts: &[&str]) -> f64 {
        let body = self.get("/metrics").unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    /// The controller's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail(40)
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `RUST_LOG` of the kiln processes tests start: `$KILN_TEST_LOG`, else info without kube's
/// chatter (the dispatch benchmark asks for `kiln=debug` to time each step).
pub fn log_filter() -> String {
    std::env::var("KILN_TEST_LOG").unwrap_or_else(|_| "info,kube=warn".to_owned())
}

//! `kiln agent`: run the per-node agent (normally the sidecar in a builder DaemonSet pod).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::exit;
use crate::agent::contexts::Limits;
use crate::agent::{self, Settings};
use crate::api::builder_pool::{
    DEFAULT_CONTEXT_KEEP, DEFAULT_CONTEXT_STORE_MIB, DEFAULT_MAX_CONTEXT_MIB, DEFAULT_UPLOAD_WAIT_SECONDS,
};
use crate::api::node_build::AgentEndpoint;
use crate::buildkit::{Endpoint, Network, TlsConfig};
use crate::store::ImageStore;

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// The BuilderPool this builder belongs to.
    #[arg(long)]
    pool: String,
    /// The node this agent runs on.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// kiln's namespace (heartbeat Leases live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kiln-system")]
    namespace: String,
    /// The local BuildKit: unix:///…, tcp://host:port or docker-unix:///var/run/docker.sock.
    #[arg(long, default_value = "unix:///run/kiln/buildkitd.sock")]
    buildkit_addr: String,
    /// Directory with ca.pem, cert.pem and key.pem for a tcp:// BuildKit with mTLS.
    #[arg(long)]
    buildkit_tls_dir: Option<PathBuf>,
    /// The node's runtime flavour, reported in heartbeats.
    #[arg(long, default_value = "containerd")]
    runtime: String,
    /// Builds this node runs at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(i32).range(1..=64))]
    max_concurrent_builds: i32,
    /// Address of the agent's API (probes, metrics, logs, context uploads).
    #[arg(long, default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
    /// This agent instance's identity. Defaults to the pod name, else host and PID.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The builder pod this agent runs in, in --namespace; clients upload contexts and read logs
    /// through it (pods/proxy). Without it, uploaded contexts cannot reach this agent.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Directory for uploaded build contexts (the pool's state directory on the node).
    #[arg(long, default_value = "/var/lib/kiln/contexts")]
    contexts_dir: PathBuf,
    /// Largest uploaded context accepted, in MiB.
    #[arg(long, default_value_t = DEFAULT_MAX_CONTEXT_MIB, value_parser = clap::value_parser!(i64).range(1..))]
    max_context_mib: i64,
    /// Seconds an attempt waits for its uploaded context.
    #[arg(long, default_value_t = DEFAULT_UPLOAD_WAIT_SECONDS, value_parser = clap::value_parser!(i64).range(1..))]
    upload_wait_seconds: i64,
    /// Uploaded contexts unused for this long are deleted (a duration such as 24h or 90m).
    #[arg(long, default_value = DEFAULT_CONTEXT_KEEP)]
    context_keep: String,
    /// Total size of kept contexts, in MiB; the least recently used go first.
    #[arg(long, default_value_t = DEFAULT_CONTEXT_STORE_MIB, value_parser = clap::value_parser!(i64).range(1..))]
    context_store_mib: i64,
    /// Where BuildKit fetches uploaded contexts from this agent: loopback where buildkitd shares
    /// the pod's network; the pod's IP on Docker nodes (BuildKit runs in dockerd on the host).
    #[arg(long, default_value = "127.0.0.1:0")]
    context_listen: SocketAddr,
    /// Network of RUN steps: default (BuildKit's), none, or host.
    #[arg(long, default_value = "default", value_parser = ["default", "none", "host"])]
    network: String,
    /// Directory for build logs (bounded, one file per build).
    #[arg(long, default_value = "/var/log/kiln")]
    log_dir: PathBuf,
    /// buildkitd's TMPDIR as mounted into the agent; recreated before each build if missing.
    #[arg(long)]
    buildkit_tmp: Option<PathBuf>,
    /// Seconds a heartbeat stays valid; renewed every third of it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..))]
    lease_duration_seconds: u64,
    /// Milliseconds a build runs before the agent reports it `Running` (and its progress): a
    /// build done sooner, such as a cached one, goes straight to its outcome in one API write.
    #[arg(long, default_value_t = agent::DEFAULT_PROGRESS_DELAY_MS)]
    progress_delay_ms: u64,
    /// Seconds between checks that the images built on this node are still in its store (a
    /// lost one is reported, and restored per the build's `spec.restore`).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    presence_interval_seconds: u64,
    /// containerd's socket as mounted into the agent, to check image presence on containerd
    /// nodes (Docker nodes use the Docker socket of --buildkit-addr).
    #[arg(long)]
    containerd_socket: Option<PathBuf>,
    /// The containerd namespace the kubelet's images are in.
    #[arg(long, default_value = "k8s.io")]
    containerd_namespace: String,
}

pub(super) fn run(args: Args) -> u8 {
    let settings = match settings(args) {
        Ok(s) => s,
        Err(message) => {
            eprintln!("error: {message}");
            return exit::INVALID;
        }
    };
    super::block_on(async move {
        let Some(client) = super::kube_client().await else {
            return exit::FAILURE;
        };
        match agent::run(client, settings).await {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        }
    })
}

/// The agent's settings from its flags, or which flag is wrong and why.
fn settings(args: Args) -> Result<Settings, String> {
    let buildkit = Endpoint::parse(&args.buildkit_addr).map_err(|e| format!("--buildkit-addr: {e}"))?;
    let tls = args
        .buildkit_tls_dir
        .as_ref()
        .map(TlsConfig::from_dir)
        .transpose()
        .map_err(|e| format!("--buildkit-tls-dir: {e}"))?;
    let keep = args.context_keep.parse::<kube::core::Duration>().map_err(|_| {
        format!(
            "--context-keep {:?} is not a duration such as 24h or 90m",
            args.context_keep
        )
    })?;
    let mib = |m: i64| u64::try_from(m).unwrap_or(0) * 1024 * 1024;
    let context_limits = Limits {
        max_context: mib(args.max_context_mib),
        keep: keep.into(),
        max_total: mib(args.context_store_mib),
    };
    let image_store = match (&args.containerd_socket, &buildkit) {
        (Some(socket), _) => Some(ImageStore::Containerd {
            socket: socket.clone(),
            namespace: args.containerd_namespace.clone(),
        }),
        (None, Endpoint::DockerUnix(socket)) => Some(ImageStore::Docker(socket.clone())),
        (None, _) => None,
    };
    let endpoint = args.pod_name.clone().map(|pod| AgentEndpoint {
        namespace: args.namespace.clone(),
        pod,
        port: i32::from(args.listen.port()),
    });
    Ok(Settings {
        pool: args.pool,
        node: args.node_name,
        namespace: args.namespace,
        identity: args.identity.unwrap_or_else(super::default_identity),
        buildkit,
        tls,
        runtime: args.runtime,
        max_concurrent_builds: args.max_concurrent_builds,
        listen: args.listen,
        lease_duration: Duration::from_secs(args.lease_duration_seconds),
        network: match args.network.as_str() {
            "none" => Network::None,
            "host" => Network::Host,
            _ => Network::Default,
        },
        log_dir: args.log_dir,
        endpoint,
        contexts_dir: args.contexts_dir,
        context_limits,
        upload_wait: Duration::from_secs(u64::try_from(args.upload_wait_seconds).unwrap_or(1)),
        context_listen: args.context_listen,
        buildkit_tmp: args.buildkit_tmp,
        progress_delay: Duration::from_millis(args.progress_delay_ms),
        simulated: None,
        image_store,
        presence_interval: Duration::from_secs(args.presence_interval_seconds),
    })
}

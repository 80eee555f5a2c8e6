//! `kiln controller`: run the controller (normally as the kiln-system Deployment).

use std::net::SocketAddr;
use std::time::Duration;

use super::exit;
use crate::controller::{self, Settings};

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// Namespace where builders, heartbeats and the leader Lease live.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kiln-system")]
    namespace: String,
    /// kiln image for the agents of pools that name none.
    #[arg(long, env = "KILN_AGENT_IMAGE", default_value = concat!("kiln.dev/kiln:", env!("CARGO_PKG_VERSION")))]
    agent_image: String,
    /// The ServiceAccount builder pods run as.
    #[arg(long, default_value = "kiln-agent")]
    agent_service_account: String,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Act without leader election (only safe with exactly one replica).
    #[arg(long)]
    no_leader_election: bool,
    /// This replica's identity in the leader Lease. Defaults to the pod name, else host and PID.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader holds the Lease without renewing it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..))]
    lease_duration_seconds: u64,
    /// Milliseconds a new ImageBuild generation goes without an in-progress status: a build
    /// that finishes sooner (a cached one) gets its outcome in one status write.
    #[arg(long, default_value_t = crate::controller::build::pacing::DEFAULT_STATUS_DELAY.as_millis() as u64)]
    status_delay_ms: u64,
    /// ImageBuild reconciles that run at once, at most (0: no limit). Each waits on API calls;
    /// a thousand builds created together otherwise hold a thousand requests and connections
    /// to the apiserver at once.
    #[arg(long, default_value_t = crate::controller::DEFAULT_CONCURRENT_RECONCILES)]
    concurrent_reconciles: u16,
}

pub(super) fn run(args: Args) -> u8 {
    super::block_on(async move {
        let Some(client) = super::kube_client().await else {
            return exit::FAILURE;
        };
        let identity = args.identity.unwrap_or_else(super::default_identity);
        let settings = Settings {
            namespace: args.namespace,
            agent_image: args.agent_image,
            agent_service_account: args.agent_service_account,
            listen: args.listen,
            leader_election: !args.no_leader_election,
            identity,
            lease_duration: Duration::from_secs(args.lease_duration_seconds),
            status_delay: Duration::from_millis(args.status_delay_ms),
            concurrent_reconciles: args.concurrent_reconciles,
        };
        match controller::run(client, settings).await {
            Ok(()) => exit::OK,
            Err(e) => {
                tracing::error!(error = %e, "controller stopped");
                eprintln!("error: {e}");
                exit::FAILURE
            }
        }
    })
}

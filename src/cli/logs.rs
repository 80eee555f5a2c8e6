//! `kiln logs NAME [-f]`: a build's log from the agent of each node it ran on (the latest
//! attempt per node), through the apiserver; `-f` follows it until the build ends.

use std::collections::BTreeMap;
use std::io::Write;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use super::agent_client::{AgentClient, Transport};
use super::exit;
use super::kube_args::KubeArgs;
use crate::api::node_build::{IMAGE_BUILD_LABEL, NodeBuild};

/// `kiln logs` flags.
#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// The ImageBuild.
    name: String,
    /// Follow the log until the build ends.
    #[arg(short, long)]
    follow: bool,
    /// Only the attempt on this node (with allNodes builds).
    #[arg(long)]
    node: Option<String>,
    /// How to reach the agents through the apiserver.
    #[arg(long, value_enum, default_value_t = Transport::Proxy, env = "KILN_UPLOAD_VIA")]
    via: Transport,
    #[command(flatten)]
    kube: KubeArgs,
}

pub(super) fn run(args: Args) -> u8 {
    super::block_on(async move {
        let conn = match args.kube.connect_or_exit().await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let agents = match AgentClient::new(&conn.config, conn.client.clone(), args.via) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::INVALID;
            }
        };
        let api: Api<NodeBuild> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let selector = format!("{IMAGE_BUILD_LABEL}={}", args.name);
        let attempts = match api.list(&ListParams::default().labels(&selector)).await {
            Ok(l) => l.items,
            Err(e) => {
                eprintln!("error: cannot read the attempts of {}: {e}", args.name);
                return exit::FAILURE;
            }
        };
        let latest = latest_per_node(attempts, args.node.as_deref());
        if latest.is_empty() {
            eprintln!(
                "error: imagebuild/{} in namespace {} has no attempt{} yet",
                args.name,
                conn.namespace,
                args.node
                    .as_deref()
                    .map(|n| format!(" on node {n}"))
                    .unwrap_or_default()
            );
            return exit::FAILURE;
        }
        let prefix = latest.len() > 1;
        let mut code = exit::OK;
        for (node, nb) in latest {
            if let Err(message) = print_log(&agents, &conn.namespace, &node, &nb, args.follow, prefix).await {
                eprintln!("error: {message}");
                code = exit::FAILURE;
            }
        }
        code
    })
}

/// The latest attempt on each node (of the latest generation), or on `only` that node.
fn latest_per_node(attempts: Vec<NodeBuild>, only: Option<&str>) -> BTreeMap<String, NodeBuild> {
    let mut latest: BTreeMap<String, NodeBuild> = BTreeMap::new();
    for nb in attempts {
        if only.is_some_and(|n| n != nb.spec.node_name) {
            continue;
        }
        let newer = latest
            .get(&nb.spec.node_name)
            .is_none_or(|o| (o.spec.generation, o.spec.attempt) < (nb.spec.generation, nb.spec.attempt));
        if newer {
            latest.insert(nb.spec.node_name.clone(), nb);
        }
    }
    latest
}

/// Copies the log of attempt `nb` on `node` from its agent to stdout (each line prefixed with
/// the node when several are shown), following it while it grows if `follow`.
async fn print_log(
    agents: &AgentClient,
    namespace: &str,
    node: &str,
    nb: &NodeBuild,
    follow: bool,
    prefix: bool,
) -> Result<(), String> {
    let Some(agent) = nb.status.as_ref().and_then(|s| s.agent_endpoint.clone()) else {
        return Err(format!("the attempt on {node} has not started; no log yet"));
    };
    let mut stream = agents
        .log(&agent, namespace, &nb.name_any(), follow)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    while let Some(Ok(chunk)) = stream.next().await {
        let text = String::from_utf8_lossy(&chunk);
        let text = if prefix {
            prefixed(node, &text)
        } else {
            text.into_owned()
        };
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
    Ok(())
}

fn prefixed(node: &str, text: &str) -> String {
    text.split_inclusive('\n').map(|l| format!("[{node}] {l}")).collect()
}

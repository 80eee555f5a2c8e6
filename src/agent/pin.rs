//! Pinning a built image (`spec.pin`): the CRI label `io.cri-containerd.pinned=pinned` on each
//! of its names in the node's containerd, then an honest answer for `status.pin`: `Pinned` only
//! when both the node's containerd (1.7+) and its kubelet (1.29+) honour the label, else
//! `Unsupported` naming what does not. Part of the outcome write: pinning costs no API write.

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::Api;

use crate::api::node_build::{PinResult, PinState};
use crate::store::{ImageStore, Pinning, version_at_least};

/// The first kubelet release whose image garbage collection skips pinned images.
const KUBELET_HONOURS: (u32, u32) = (1, 29);

/// Pins `names` on `node`'s store and says whether it holds.
pub async fn pin(client: &Client, node: &str, store: Option<&ImageStore>, names: &[String]) -> PinResult {
    let Some(store) = store else {
        return result(
            PinState::Unsupported,
            format!("the agent on node {node} has no access to the node's image store, so nothing was pinned"),
        );
    };
    let mut runtime = String::new();
    for name in names {
        match store.pin(name).await {
            Ok(Pinning::Labelled { runtime: r }) => runtime = r,
            Ok(Pinning::Unsupported(why)) => {
                return result(PinState::Unsupported, format!("{why}; not pinned on node {node}"));
            }
            Err(e) => return result(PinState::Failed, format!("cannot pin {name} on node {node}: {e}")),
        }
    }
    let kubelet = kubelet_version(client, node).await;
    let labelled = format!("labelled {} io.cri-containerd.pinned=pinned", names.join(", "));
    match kubelet.as_deref().map(|v| (v, version_at_least(v, KUBELET_HONOURS))) {
        Some((v, Some(true))) => result(
            PinState::Pinned,
            format!("{labelled}; {runtime} and kubelet {v} keep it from image garbage collection"),
        ),
        Some((v, Some(false))) => result(
            PinState::Unsupported,
            format!("{labelled}; {runtime} honours it, but kubelet {v} on node {node} does not (1.29 and later do)"),
        ),
        _ => result(
            PinState::Pinned,
            format!(
                "{labelled}; {runtime} honours it; the kubelet's version on node {node} is unknown (pins hold from 1.29)"
            ),
        ),
    }
}

fn result(state: PinState, message: String) -> PinResult {
    PinResult { state, message }
}

async fn kubelet_version(client: &Client, node: &str) -> Option<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get(node).await.ok()?;
    Some(node.status?.node_info?.kubelet_version)
}

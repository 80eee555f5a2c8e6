//! Removing a deleted build's image from this node's store (`cleanup: Delete`). The controller
//! sets `spec.removeImage` on the build's succeeded attempts; the agent removes each of the
//! attempt's image names unless a live pod on the node uses it (by tag, or by the attempt's
//! digest), and answers in `status.imageRemoval`: `Removed`, `Kept` (naming the pods or the
//! store's reason) or `Failed`. Asked once per attempt; the answer is retried until it lands.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use kube::{Client, ResourceExt};
use tracing::{info, warn};

use super::node_pods::NodePods;
use super::status::StatusWriter;
use crate::api::node_build::{ImageRemoval, NodeBuild, RemovalOutcome};
use crate::api::pod_images;
use crate::store::{ImageStore, Removal, StoreError};

/// Removes images when asked, one task per attempt.
pub struct Remover {
    client: Client,
    node: String,
    store: Option<ImageStore>,
    pods: Arc<NodePods>,
    /// Attempts (uid) whose removal is under way or answered by this agent.
    started: Mutex<HashSet<String>>,
}

impl Remover {
    /// A remover for `node`'s store (none when the agent was not given one), whose live pods
    /// are `pods`.
    pub fn new(client: Client, node: &str, store: Option<ImageStore>, pods: Arc<NodePods>) -> Arc<Self> {
        Arc::new(Self {
            client,
            node: node.to_owned(),
            store,
            pods,
            started: Mutex::default(),
        })
    }

    /// Starts removing `nb`'s image if it asks for that and has no answer yet.
    pub fn observe(self: &Arc<Self>, nb: &NodeBuild) {
        let asked = nb.spec.remove_image && nb.status.as_ref().is_some_and(|s| s.image_removal.is_none());
        if !asked {
            return;
        }
        let uid = nb.uid().unwrap_or_default();
        let first = self.started.lock().is_ok_and(|mut started| started.insert(uid));
        if !first {
            return;
        }
        let (this, nb) = (self.clone(), nb.clone());
        tokio::spawn(async move {
            let answer = this.remove(&nb).await;
            info!(namespace = %nb.namespace().unwrap_or_default(), node_build = %nb.name_any(), outcome = ?answer.outcome, message = %answer.message, "image removal");
            let mut status = nb.status.clone().unwrap_or_default();
            status.image_removal = Some(answer);
            StatusWriter::new(&this.client, &nb).write_outcome(&status).await;
        });
    }

    async fn remove(&self, nb: &NodeBuild) -> ImageRemoval {
        let Some(store) = &self.store else {
            return failed(format!(
                "the agent on node {} was started without access to the node's image store (--containerd-socket, or Docker's socket); the image stays",
                self.node
            ));
        };
        let names = nb.spec.build.normalised_names();
        let digest = nb.status.as_ref().and_then(|s| s.digest.as_deref());
        let pods = match self.pods.live().await {
            Ok(pods) => pods,
            Err(e) => {
                warn!(error = %e, "cannot tell the node's pods before removing an image");
                return failed(format!(
                    "cannot tell the pods of node {} to check that none uses the image ({e}); the image stays",
                    self.node
                ));
            }
        };
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let users = pod_images::users(&refs, digest, &self.node, &pods);
        if !users.is_empty() {
            return ImageRemoval {
                outcome: RemovalOutcome::Kept,
                message: format!(
                    "kept {} on node {}: used by pod(s) {}; delete those pods, then remove it with kiln rmi or the runtime's own tool",
                    names.join(", "),
                    self.node,
                    users.join(", ")
                ),
            };
        }
        remove_all(store, &names, &self.node).await
    }
}

/// Removes every name; the first refusal decides the answer (the names removed before it are
/// said).
async fn remove_all(store: &ImageStore, names: &[String], node: &str) -> ImageRemoval {
    let mut removed = Vec::new();
    for name in names {
        match store.remove(name).await {
            Ok(Removal::Removed) => removed.push(name.clone()),
            Ok(Removal::Absent) => removed.push(format!("{name} (already gone)")),
            Err(e @ StoreError::InUse { .. }) => {
                return ImageRemoval {
                    outcome: RemovalOutcome::Kept,
                    message: format!("kept {name} on node {node}: {e}{}", done_before(&removed)),
                };
            }
            Err(e) => {
                return failed(format!(
                    "cannot remove {name} from node {node}: {e}{}",
                    done_before(&removed)
                ));
            }
        }
    }
    ImageRemoval {
        outcome: RemovalOutcome::Removed,
        message: format!("removed {} from node {node}", removed.join(", ")),
    }
}

fn done_before(removed: &[String]) -> String {
    if removed.is_empty() {
        String::new()
    } else {
        format!(" (removed before: {})", removed.join(", "))
    }
}

fn failed(message: String) -> ImageRemoval {
    ImageRemoval {
        outcome: RemovalOutcome::Failed,
        message,
    }
}

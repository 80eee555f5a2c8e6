//! Whether the images this node's builds made are still in its store. Soon after the store
//! reports a removal (Docker's `/events`, containerd's `/images/delete`), and every interval as
//! a backstop, the agent asks the store about each name of the newest generation's succeeded
//! attempts, and writes a change (`status.missingSince` set, or cleared when the name is back)
//! to that attempt: one write per change, none while nothing changes. The controller then
//! reports or restores the loss (`spec.restore`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::status::StatusWriter;
use crate::api::node_build::{NodeBuild, newest_succeeded};
use crate::api::reference::Reference;
use crate::store::{ImageStore, StoreError};

/// How long a check waits after a removal event, for the rest of a burst.
const SETTLE: Duration = Duration::from_millis(300);
/// How long before following the store's events again after the stream broke.
const RECONNECT: Duration = Duration::from_secs(5);

/// Follows the store's removal events, reconnecting, and wakes the check on each. Says once
/// when the store has no events to follow (the periodic check still runs), and once when it
/// does again.
async fn follow_removals(store: ImageStore, wake: Arc<Notify>) {
    let mut failing = false;
    loop {
        let notify = || wake.notify_one();
        let followed = store.follow_removals(&notify).await;
        if let Err(e) = followed
            && !failing
        {
            warn!(error = %e, "cannot follow the image store's events; removals are found by the periodic check");
            failing = true;
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// Checks this node's store against its attempts, forever.
pub struct Presence {
    /// The node's image store.
    pub store: ImageStore,
    /// This node's NodeBuilds, as the executor's watch keeps them.
    pub node_builds: Store<NodeBuild>,
    /// Writes the changes.
    pub client: Client,
    /// How often.
    pub interval: Duration,
}

impl Presence {
    /// Checks every interval, and soon after the store reports a removal; says once when the
    /// store cannot be asked, and again once it can.
    pub async fn run(self) {
        let wake = Arc::new(Notify::new());
        tokio::spawn(follow_removals(self.store.clone(), wake.clone()));
        let mut failing = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.interval) => {}
                () = wake.notified() => {
                    // One check for a burst of removals (an image's names go one by one).
                    tokio::time::sleep(SETTLE).await;
                }
            }
            match self.check().await {
                Ok(()) if failing => {
                    info!("the image store answers again; image presence is checked");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    warn!(error = %e, "cannot check which built images are still on this node");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }

    /// One pass over the newest generation's succeeded attempts of every build on this node.
    async fn check(&self) -> Result<(), StoreError> {
        for nb in newest_succeeded(&self.node_builds.state()) {
            // Being removed on purpose (`cleanup: Delete`): its answer must not be overwritten.
            if nb.spec.remove_image {
                continue;
            }
            let Some(status) = nb.status.as_ref() else { continue };
            let gone = self.gone(nb).await?;
            let missing_since = match (&status.missing_since, gone.first()) {
                (None, Some(name)) => {
                    info!(namespace = %nb.namespace().unwrap_or_default(), node_build = %nb.name_any(), image = %name, "a built image is gone from the node's store");
                    Some(Time(Timestamp::now()))
                }
                (Some(_), None) => {
                    info!(namespace = %nb.namespace().unwrap_or_default(), node_build = %nb.name_any(), "a built image is back in the node's store");
                    None
                }
                _ => continue,
            };
            let mut next = status.clone();
            next.missing_since = missing_since;
            StatusWriter::new(&self.client, nb).write(&next).await;
        }
        Ok(())
    }

    /// The attempt's image names (normalised) that the store does not have.
    async fn gone(&self, nb: &NodeBuild) -> Result<Vec<String>, StoreError> {
        let mut gone = Vec::new();
        for name in nb.spec.build.image_names() {
            let Ok(reference) = Reference::parse(name) else {
                continue;
            };
            let name = reference.tagged().to_string();
            if !self.store.exists(&name).await? {
                gone.push(name);
            }
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::node_build::{NodeBuildPhase, NodeBuildSpec, NodeBuildStatus};

    fn nb(build: &str, generation: i64, attempt: i32, phase: NodeBuildPhase) -> Arc<NodeBuild> {
        let mut nb = NodeBuild::new(
            &format!("{build}-{generation}-{attempt}"),
            NodeBuildSpec {
                image_build: build.into(),
                generation,
                attempt,
                ..Default::default()
            },
        );
        nb.metadata.namespace = Some("ns".into());
        nb.status = Some(NodeBuildStatus {
            phase: Some(phase),
            ..Default::default()
        });
        Arc::new(nb)
    }

    #[test]
    fn only_the_newest_generations_successes_are_checked() {
        let all = [
            nb("a", 1, 1, NodeBuildPhase::Succeeded),
            nb("a", 2, 1, NodeBuildPhase::Failed),
            nb("a", 2, 2, NodeBuildPhase::Succeeded),
            nb("b", 1, 1, NodeBuildPhase::Succeeded),
            nb("c", 3, 1, NodeBuildPhase::Running),
        ];
        let names: Vec<String> = newest_succeeded(&all).iter().map(|n| n.name_any()).collect();
        assert_eq!(names, ["a-2-2", "b-1-1"]);
    }
}

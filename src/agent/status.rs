//! Writing a NodeBuild's status as the agent: one writer per attempt (server-side apply under
//! the field manager [`STATUS_FIELD_MANAGER`]), whose intermediate reports (`Queued`,
//! `Running`, progress) are written once and whose outcome write is retried until it lands.
//! Intermediate reports of a build come from the task that runs it, before its outcome, so
//! none lands after it.

use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{debug, warn};

use crate::api::node_build::{NodeBuild, NodeBuildStatus};

/// Field manager of the agent's status writes.
pub const STATUS_FIELD_MANAGER: &str = "kiln-agent";
/// How long an attempt's outcome write is retried before the agent gives up on it.
const OUTCOME_RETRY: Duration = Duration::from_secs(600);

/// Writes one NodeBuild's status (server-side apply under the agent's field manager).
#[derive(Clone)]
pub struct StatusWriter {
    api: Api<NodeBuild>,
    name: String,
}

impl StatusWriter {
    /// A writer of `nb`'s status, as the agent (server-side apply, field manager
    /// [`STATUS_FIELD_MANAGER`]).
    pub(super) fn new(client: &Client, nb: &NodeBuild) -> Self {
        Self {
            api: Api::namespaced(client.clone(), &nb.namespace().unwrap_or_default()),
            name: nb.name_any(),
        }
    }

    /// An intermediate report: lost if it fails (a later one, or the outcome, follows).
    pub(super) async fn write(&self, status: &NodeBuildStatus) {
        if let Err(e) = self.patch(status).await {
            warn!(node_build = %self.name, error = %e, "cannot write NodeBuild status");
        }
    }

    /// The outcome: nothing else would ever report it, so it is retried (with backoff, for up
    /// to [`OUTCOME_RETRY`]) until it lands or the attempt is gone. Seen in the chaos harness:
    /// right after an apiserver restart, its authorizer refuses requests (403) for a few
    /// seconds; an outcome lost then left the attempt `Running` until something else noticed.
    pub(super) async fn write_outcome(&self, status: &NodeBuildStatus) {
        let started = Instant::now();
        let mut pause = Duration::from_millis(200);
        let mut failures = 0u32;
        loop {
            let e = match self.patch(status).await {
                Ok(()) => return,
                // Only the object's own NotFound means it is gone. Right after an apiserver
                // restart, kiln's API is not served yet and every request gets a bare
                // "404 page not found": giving up then lost outcomes (seen in the chaos harness).
                Err(kube::Error::Api(s)) if s.code == 404 && s.reason == "NotFound" => {
                    debug!(node_build = %self.name, "the attempt is gone; its outcome is not written");
                    return;
                }
                Err(kube::Error::Api(s)) if s.code == 422 => {
                    warn!(node_build = %self.name, error = %s.message, "the apiserver refuses this outcome");
                    return;
                }
                Err(e) => e,
            };
            failures += 1;
            if started.elapsed() >= OUTCOME_RETRY {
                warn!(node_build = %self.name, error = %e, failures, "giving up writing the outcome");
                return;
            }
            if failures == 1 || failures.is_multiple_of(10) {
                warn!(node_build = %self.name, error = %e, failures, "cannot write the outcome yet; retrying");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    async fn patch(&self, status: &NodeBuildStatus) -> Result<(), kube::Error> {
        let patch = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "NodeBuild", "status": status});
        self.api
            .patch_status(
                &self.name,
                &PatchParams::apply(STATUS_FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        debug!(node_build = %self.name, phase = ?status.phase, "status written");
        Ok(())
    }
}

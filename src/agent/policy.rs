//! The agent's own check of the image-name policy, just before a build starts: a NodeBuild
//! created by hand (or by anything other than kiln's controller) writes no name its pool does
//! not allow its namespace. The controller refuses such builds before dispatch; this is the
//! second, independent check, on the node whose image store is at stake.
//!
//! The pool comes from a watch of that one BuilderPool (no API call per build); the namespace's
//! labels are read only when a rule selects namespaces by label. Then the node's live pods are
//! listed (from the apiserver's watch cache, field-selected to this node): a name that a pod of
//! another namespace uses here is not written either ([`crate::api::pod_images`]).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use super::request::Refusal;
use crate::api::BuilderPool;
use crate::api::image_policy::{self, Decision};
use crate::api::pod_images;
use crate::api::recipe::BuildRecipe;
use crate::watch::Listed;

/// Status reason of a refused attempt; the controller does not retry it.
pub const REASON: &str = "ImageNotAllowed";
/// How long a build waits for the pool's first listing before it is refused (and retried).
const LIST_WAIT: Duration = Duration::from_secs(30);

/// This agent's pool, as a watch keeps it, and the check built on it.
pub struct PolicyGuard {
    client: Client,
    pool: String,
    node: String,
    store: Store<BuilderPool>,
    listed: Listed,
    writer: Mutex<Option<Writer<BuilderPool>>>,
}

impl PolicyGuard {
    /// A guard for `pool` on `node`; its cache fills once [`PolicyGuard::watch`] runs.
    pub fn new(client: Client, pool: &str, node: &str) -> Self {
        let (store, writer) = reflector::store();
        Self {
            client,
            pool: pool.to_owned(),
            node: node.to_owned(),
            listed: Listed::new(store.clone(), "BuilderPool"),
            store,
            writer: Mutex::new(Some(writer)),
        }
    }

    /// Keeps the pool's cache, forever (a second call waits forever and does nothing).
    pub async fn watch(&self) {
        let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) else {
            return futures::future::pending().await;
        };
        let api: Api<BuilderPool> = Api::all(self.client.clone());
        // Spread by node, not by pool: every agent of a pool would otherwise reconnect at the
        // same moment (500 requests at once in the scale run's idle window).
        let config = crate::watch::spread_config(&self.node).fields(&format!("metadata.name={}", self.pool));
        watcher(api, config)
            .default_backoff()
            .modify(crate::watch::trim)
            .reflect(writer)
            .for_each(|event| async move {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "BuilderPool watch failed; retrying");
                }
            })
            .await;
    }

    /// Refuses the attempt when the pool does not allow one of its names in `namespace`.
    pub async fn check(&self, namespace: &str, recipe: &BuildRecipe) -> Result<(), Refusal> {
        let unavailable = |why: String| {
            (
                "PolicyUnavailable",
                format!(
                    "the agent cannot check the image policy of BuilderPool {}: {why}; check the agent's RBAC (get, list and watch builderpools; get namespaces; list pods)",
                    self.pool
                ),
            )
        };
        match tokio::time::timeout(LIST_WAIT, self.listed.wait()).await {
            Ok(Ok(())) => {}
            Ok(Err(what)) => return Err(unavailable(format!("its {what} watch stopped"))),
            Err(_) => return Err(unavailable(format!("no listing within {}s", LIST_WAIT.as_secs()))),
        }
        let pool = self.store.get(&ObjectRef::new(&self.pool));
        let rules = pool
            .as_ref()
            .map(|p| p.spec.allowed_images.as_slice())
            .unwrap_or_default();
        let labels = if image_policy::reads_namespace_labels(rules) {
            let namespaces: Api<Namespace> = Api::all(self.client.clone());
            match namespaces.get_opt(namespace).await {
                Ok(found) => found.map(|n| n.labels().clone()).unwrap_or_default(),
                Err(e) => return Err(unavailable(format!("cannot read namespace {namespace}: {e}"))),
            }
        } else {
            BTreeMap::new()
        };
        let names: Vec<&str> = recipe.image_names().collect();
        if let Decision::Denied { reason, .. } =
            image_policy::decide_for_pool(&self.pool, rules, namespace, &labels, &names)
        {
            return Err((REASON, format!("{reason}; refused by the agent, nothing was built")));
        }
        let pods = live_pods(&self.client, &self.node)
            .await
            .map_err(|e| unavailable(format!("cannot list the pods of node {}: {e}", self.node)))?;
        match pod_images::used_elsewhere(namespace, &names, &pods) {
            None => Ok(()),
            Some(used) => Err((
                REASON,
                format!(
                    "image {} is used by pod {} on node {}, which is in another namespace, and a build in {namespace} must not replace it; build another name, or have that pod name its image by digest; refused by the agent, nothing was built",
                    used.image, used.pod, self.node
                ),
            )),
        }
    }
}

/// The pods bound to `node` that have not finished, from the apiserver's watch cache.
pub(super) async fn live_pods(client: &Client, node: &str) -> Result<Vec<Pod>, kube::Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    let fields = format!("spec.nodeName={node},status.phase!=Succeeded,status.phase!=Failed");
    let list = pods.list(&ListParams::default().fields(&fields).match_any()).await?;
    Ok(list.items)
}

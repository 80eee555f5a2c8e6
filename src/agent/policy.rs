//! The agent's own check of the image-name policy, just before a build starts: a NodeBuild
//! created by hand (or by anything other than kiln's controller) writes no name its pool does
//! not allow its namespace. The controller refuses such builds before dispatch; this is the
//! second, independent check, on the node whose image store is at stake.
//!
//! The pool's rules come from a metadata-only watch of that one BuilderPool and a read of the
//! pool when its generation moves (no API call per build); the namespace's labels are read only
//! when a rule selects namespaces by label. Then the node's live pods are asked, as the
//! agent's watch of them keeps them ([`super::node_pods`]): a name that a pod of another
//! namespace uses here is not written either ([`crate::api::pod_images`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::oneshot;

use super::LIST_WAIT;
use super::node_pods::NodePods;
use super::request::Refusal;
use crate::api::BuilderPool;
use crate::api::image_policy::{self, Decision, ImageRule};
use crate::api::pod_images;
use crate::api::recipe::BuildRecipe;
use crate::watch::Listed;

/// Status reason of a refused attempt; the controller does not retry it.
pub const REASON: &str = "ImageNotAllowed";
/// The longest pause between reads of a pool whose new generation could not be read.
const READ_RETRY_MAX: Duration = Duration::from_secs(30);

/// The pool's rules as last read, and the object and generation they are of (none: there is no
/// pool). The uid tells a pool deleted and created again, at generation 1 again, from the old one.
#[derive(Clone, Debug, Default)]
struct Known {
    version: Option<(String, i64)>,
    rules: Arc<Vec<ImageRule>>,
}

/// The uid and generation of `meta`, when it has both.
fn version_of(meta: &kube::api::ObjectMeta) -> Option<(String, i64)> {
    Some((meta.uid.clone()?, meta.generation?))
}

/// This agent's pool, as a watch keeps it, and the check built on it.
///
/// The watch is metadata-only. A pool's status lists every node (88 KB at 500 nodes) and is
/// rewritten as nodes come and go; a full watch sent every rewrite to every agent, to decode and
/// drop, when the agent reads only the spec. The spec is read (one GET) when the generation moves.
pub struct PolicyGuard {
    client: Client,
    pool: String,
    node: String,
    known: Mutex<Known>,
    listed: Listed,
    opened: Mutex<Option<oneshot::Sender<()>>>,
    pods: Arc<NodePods>,
}

impl PolicyGuard {
    /// A guard for `pool` on `node` (whose live pods are `pods`); it knows the pool once
    /// [`PolicyGuard::watch`] runs.
    pub fn new(client: Client, pool: &str, node: &str, pods: Arc<NodePods>) -> Self {
        let (opened, listed) = oneshot::channel();
        Self {
            client,
            pool: pool.to_owned(),
            node: node.to_owned(),
            known: Mutex::default(),
            listed: Listed::when(listed, "BuilderPool"),
            opened: Mutex::new(Some(opened)),
            pods,
        }
    }

    /// Keeps the pool's rules, forever (a second call waits forever and does nothing).
    pub async fn watch(&self) {
        let Some(opened) = self.opened.lock().ok().and_then(|mut o| o.take()) else {
            return futures::future::pending().await;
        };
        let api: Api<BuilderPool> = Api::all(self.client.clone());
        // Spread by node, not by pool: every agent of a pool would otherwise reconnect at the
        // same moment (500 requests at once in the scale run's idle window).
        let config = crate::watch::spread_config(&self.node).fields(&format!("metadata.name={}", self.pool));
        let mut opened = Some(opened);
        let mut seen_in_listing = false;
        let metadata: Api<PartialObjectMeta<BuilderPool>> = Api::all(self.client.clone());
        let mut events = watcher(metadata, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => seen_in_listing = false,
                Ok(watcher::Event::InitApply(meta) | watcher::Event::Apply(meta)) => {
                    seen_in_listing = true;
                    self.follow(&api, version_of(&meta.metadata)).await;
                }
                Ok(watcher::Event::Delete(_)) => self.set(Known::default()),
                Ok(watcher::Event::InitDone) => {
                    // A listing from the watch cache can lag a pool created moments ago: read it
                    // before taking its absence (the default rules) for the truth.
                    if !seen_in_listing {
                        self.set(Known::default());
                        self.follow(&api, None).await;
                    }
                    if let Some(tx) = opened.take() {
                        let _ = tx.send(());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "BuilderPool watch failed; retrying"),
            }
        }
    }

    /// Reads the pool when the watch shows a version the guard does not know, until it can
    /// (backing off): an admin's new rules must not be missed for want of one read.
    async fn follow(&self, api: &Api<BuilderPool>, version: Option<(String, i64)>) {
        let known = self.known.lock().ok().and_then(|k| k.version.clone());
        if known.is_some() && known == version {
            return;
        }
        let mut pause = Duration::from_secs(1);
        loop {
            match api.get_opt(&self.pool).await {
                Ok(Some(pool)) => {
                    return self.set(Known {
                        version: version_of(&pool.metadata),
                        rules: Arc::new(pool.spec.allowed_images),
                    });
                }
                Ok(None) => return self.set(Known::default()),
                Err(e) => {
                    tracing::warn!(pool = %self.pool, error = %e, "cannot read the BuilderPool's new spec; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(READ_RETRY_MAX);
                }
            }
        }
    }

    fn set(&self, known: Known) {
        if let Ok(mut k) = self.known.lock() {
            *k = known;
        }
    }

    /// Refuses the attempt when the pool does not allow one of its names in `namespace`.
    pub async fn check(&self, namespace: &str, recipe: &BuildRecipe) -> Result<(), Refusal> {
        let unavailable = |why: String| {
            (
                "PolicyUnavailable",
                format!(
                    "the agent cannot check the image policy of BuilderPool {}: {why}; check the agent's RBAC (get, list and watch builderpools; get namespaces; list and watch pods)",
                    self.pool
                ),
            )
        };
        match tokio::time::timeout(LIST_WAIT, self.listed.wait()).await {
            Ok(Ok(())) => {}
            Ok(Err(what)) => return Err(unavailable(format!("its {what} watch stopped"))),
            Err(_) => return Err(unavailable(format!("no listing within {}s", LIST_WAIT.as_secs()))),
        }
        let rules = self.known.lock().map(|k| k.rules.clone()).unwrap_or_default();
        let rules = rules.as_slice();
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
        let pods = self
            .pods
            .live()
            .await
            .map_err(|e| unavailable(format!("cannot tell the pods of node {}: {e}", self.node)))?;
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

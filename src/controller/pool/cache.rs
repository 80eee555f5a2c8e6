//! The pool controller's watch caches: nodes and builder DaemonSets, as its own watches keep
//! them, so a reconcile with nothing to change makes no API call. Heartbeats are not here: one
//! watch keeps them for both controllers (`controller::heartbeats`), and [`Caches::ready`]
//! waits for it too.
//!
//! Each watch fills its cache before the event triggers a reconcile (`wiring::pool_controller`),
//! so a reconcile never reads a cache older than the event that woke it.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::applied::Applied;
use super::render::POOL_LABEL;
use crate::controller::Error;
use crate::watch::Listed;

/// The caches, and what the controller last applied.
pub struct Caches {
    /// Every Node.
    pub nodes: Store<Node>,
    /// Every builder DaemonSet in kiln's namespace.
    pub daemonsets: Store<DaemonSet>,
    /// The last apply per DaemonSet ([`Applied`]).
    pub applied: Mutex<Applied>,
    /// Whether each watch has listed once.
    listed: [Listed; 3],
}

impl Caches {
    /// Empty caches over the given stores; `heartbeats` is the heartbeat watch's gate
    /// (`Context::heartbeats_listed`).
    pub fn new(nodes: Store<Node>, heartbeats: Listed, daemonsets: Store<DaemonSet>) -> Self {
        let listed = [
            Listed::new(nodes.clone(), "Node"),
            heartbeats,
            Listed::new(daemonsets.clone(), "builder DaemonSet"),
        ];
        Self {
            nodes,
            daemonsets,
            applied: Mutex::default(),
            listed,
        }
    }

    /// Waits until every watch has listed once, the heartbeat watch included.
    pub async fn ready(&self) -> Result<(), Error> {
        for listed in &self.listed {
            listed.wait().await.map_err(Error::CacheStopped)?;
        }
        Ok(())
    }

    /// Nodes whose labels include every pair of `selector`.
    pub fn nodes_matching(&self, selector: &std::collections::BTreeMap<String, String>) -> Vec<Arc<Node>> {
        let mut nodes = self
            .nodes
            .state_filter(|node| selector.iter().all(|(k, v)| node.labels().get(k) == Some(v)));
        nodes.sort_by_key(|n| n.name_any());
        nodes
    }

    /// The pool's builder DaemonSets.
    pub fn daemonsets_of(&self, pool: &str) -> Vec<Arc<DaemonSet>> {
        self.daemonsets
            .state_filter(|ds| ds.labels().get(POOL_LABEL).map(String::as_str) == Some(pool))
    }

    /// The resourceVersion of a builder DaemonSet in the cache.
    pub fn daemonset_version(&self, namespace: &str, name: &str) -> Option<String> {
        self.daemonsets
            .get(&ObjectRef::new(name).within(namespace))
            .and_then(|ds| ds.resource_version())
    }

    /// The memory of applies; a poisoned lock (a panic elsewhere) only costs an extra apply.
    pub fn applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

//! The live pods bound to this node, as one watch keeps them: what the image-name check and
//! image removal read before writing or removing a name, with no API call per build.
//!
//! The watch is field-selected to the node (`spec.nodeName`, the field the apiserver's pod
//! watch cache indexes, as the kubelet's own watch is), so other nodes' pod changes cost it
//! nothing. It replaced a pod list per build: 10,000 requests in the scale run's waves, each on
//! the build's way to its start.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};

use super::LIST_WAIT;
use crate::watch::Listed;

/// Why the node's pods cannot be told.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No listing yet; the watch's last error, if it had one.
    #[error("no listing of the node's pods within {}s{}", LIST_WAIT.as_secs(), last.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    NotListed {
        /// The watch's last error.
        last: Option<String>,
    },
    /// The watch ended for good.
    #[error("the node's pod watch stopped")]
    Stopped,
}

/// This node's live pods, kept by [`NodePods::watch`].
pub struct NodePods {
    client: Client,
    node: String,
    store: Store<Pod>,
    writer: Mutex<Option<Writer<Pod>>>,
    listed: Listed,
    last_error: Mutex<Option<String>>,
}

impl NodePods {
    /// The pods of `node`, known once [`NodePods::watch`] has listed them.
    pub fn new(client: Client, node: &str) -> Arc<Self> {
        let (store, writer) = reflector::store();
        Arc::new(Self {
            client,
            node: node.to_owned(),
            listed: Listed::new(store.clone(), "Pod"),
            store,
            writer: Mutex::new(Some(writer)),
            last_error: Mutex::default(),
        })
    }

    /// Keeps the store, forever (a second call waits forever and does nothing).
    pub async fn watch(&self) {
        let Some(writer) = self.writer.lock().ok().and_then(|mut w| w.take()) else {
            return futures::future::pending().await;
        };
        let api: Api<Pod> = Api::all(self.client.clone());
        let fields = format!(
            "spec.nodeName={},status.phase!=Succeeded,status.phase!=Failed",
            self.node
        );
        let config = crate::watch::spread_config(&self.node).fields(&fields);
        let mut events = watcher(api, config)
            .default_backoff()
            .modify(crate::watch::trim)
            .reflect(writer)
            .boxed();
        while let Some(event) = events.next().await {
            if let Err(e) = event {
                tracing::warn!(node = %self.node, error = %e, "pod watch failed; retrying");
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some(e.to_string());
                }
            }
        }
    }

    /// The node's pods that have not finished, once the watch has listed them (waiting up to
    /// [`LIST_WAIT`] for that; past it, the build is refused and retried, or the image kept).
    pub async fn live(&self) -> Result<Vec<Arc<Pod>>, Error> {
        match tokio::time::timeout(LIST_WAIT, self.listed.wait()).await {
            Ok(Ok(())) => Ok(self.store.state()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::NotListed {
                last: self.last_error.lock().ok().and_then(|l| l.clone()),
            }),
        }
    }
}

//! How kiln's watches list and reconnect, for every role (controller and agent alike), and how
//! reconciles wait for the caches those watches fill. [`patient`]: a watch that pauses before
//! resuming when the apiserver ended it early (the agents' NodeBuild watch).

mod patient;

pub use patient::patient;

use futures::future::{BoxFuture, FutureExt, Shared};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;

/// A watch that lists from the apiserver's watch cache (`resourceVersion=0`), as client-go's
/// informers do, rather than with a quorum read from etcd. The watch that follows brings the
/// cache up to date; after a watch expires, a relist of thousands of NodeBuilds by hundreds of
/// agents does not cost etcd a full read each (in the scale run it made the apiserver answer
/// 504 and 429 for minutes).
pub fn config() -> watcher::Config {
    let mut config = watcher::Config::default().any_semantic();
    // Unpaged: kube drops `resourceVersion=0` from a list with a limit (the apiserver would
    // ignore the limit), which silently turned every list back into an etcd read.
    config.page_size = None;
    config
}

/// [`config`] whose watch requests last 240–289 s, spread by `key` (a node name), so that
/// clients started together do not all reconnect, and relist, at the same moment.
pub fn spread_config(key: &str) -> watcher::Config {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    config().timeout(240 + u32::try_from(h.finish() % 50).unwrap_or(0))
}

/// Drops what kiln never reads from an object before it is cached: its managedFields, often
/// the largest part of a small object (one entry per writer, each listing every field it set).
/// Dropping them took the scale run's controller from 1,165 to 831 MiB with 10,000 builds cached.
pub fn trim<K: kube::Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Resolves once a watch cache has listed once, for any number of waiters at a time.
///
/// kube's `Store::wait_until_ready` keeps a single waker: of several reconciles waiting at
/// once (every controller start with work queued), only the last is woken, and the others hang
/// forever, holding their object's slot so that nothing reconciles it again. Seen as a pool that
/// never turned ready again after a builder came back. A `Shared` future wakes every waiter.
/// A watch that fills no store opens its gate with a future of its own ([`Listed::when`]).
#[derive(Clone)]
pub struct Listed(Shared<BoxFuture<'static, Result<(), &'static str>>>);

impl Listed {
    /// A gate on `store`, whose kind is named `what` in the error when its watch stops for good.
    pub fn new<K>(store: Store<K>, what: &'static str) -> Self
    where
        K: kube::Resource + Clone + Send + Sync + 'static,
        K::DynamicType: std::hash::Hash + Eq + Clone + Send + Sync,
    {
        Self::when(async move { store.wait_until_ready().await }, what)
    }

    /// A gate that opens when `listed` resolves `Ok` (e.g. a `oneshot::Receiver` the watch
    /// answers at its first `InitDone`); `Err`, as when the watch's end of it is dropped, stops
    /// it for good, with `what` named in the error.
    pub fn when<F, E>(listed: F, what: &'static str) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        Self(listed.map(move |r| r.map_err(|_| what)).boxed().shared())
    }

    /// Waits until the cache has listed once; `Err` names the cache whose writer is gone.
    pub async fn wait(&self) -> Result<(), &'static str> {
        self.0.clone().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector;
    use std::time::Duration;

    #[test]
    fn trimmed_objects_keep_everything_but_managed_fields() {
        let mut cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "labels": {"k": "v"},
                         "managedFields": [{"manager": "kiln", "operation": "Apply"}]},
            "data": {"x": "y"},
        }))
        .expect("configmap");
        let before = cm.clone();
        trim(&mut cm);
        assert_eq!(cm.metadata.managed_fields, None);
        cm.metadata.managed_fields = before.metadata.managed_fields.clone();
        assert_eq!(cm, before, "nothing else changed");
    }

    type Waiter = tokio::task::JoinHandle<Result<(), &'static str>>;

    /// Three tasks waiting on `listed`, once they all wait.
    async fn three_waiting(listed: &Listed) -> Vec<Waiter> {
        let waiters = (0..3)
            .map(|_| {
                let listed = listed.clone();
                tokio::spawn(async move { listed.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        waiters
    }

    /// Asserts every waiter woke with `Ok`, and that a later one passes at once.
    async fn all_woken(listed: &Listed, waiters: Vec<Waiter>) {
        for waiter in waiters {
            let woke = tokio::time::timeout(Duration::from_secs(5), waiter).await;
            assert!(matches!(woke, Ok(Ok(Ok(())))), "a waiter was never woken: {woke:?}");
        }
        assert_eq!(listed.wait().await, Ok(()), "and later waiters pass at once");
    }

    #[tokio::test]
    async fn every_waiter_wakes_when_the_cache_has_listed() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let listed = Listed::new(store, "ConfigMap");
        let waiters = three_waiting(&listed).await;
        writer.apply_watcher_event(&watcher::Event::InitDone);
        all_woken(&listed, waiters).await;
    }

    #[tokio::test]
    async fn a_gate_without_a_store_wakes_every_waiter_or_stops() {
        let (listed_tx, listed_rx) = futures::channel::oneshot::channel::<()>();
        let listed = Listed::when(listed_rx, "Lease");
        let waiters = three_waiting(&listed).await;
        assert_eq!(listed_tx.send(()), Ok(()));
        all_woken(&listed, waiters).await;

        let (gone_tx, gone_rx) = futures::channel::oneshot::channel::<()>();
        let stopped = Listed::when(gone_rx, "Lease");
        let waiter = tokio::spawn({
            let stopped = stopped.clone();
            async move { stopped.wait().await }
        });
        drop(gone_tx); // the watch is gone before it listed
        let woke = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(woke, Ok(Ok(Err("Lease")))), "the waiter hears why: {woke:?}");
    }

    #[test]
    fn lists_come_from_the_watch_cache_unpaged() {
        let c = config();
        assert_eq!(c.list_semantic, watcher::ListSemantic::Any);
        assert_eq!(c.page_size, None, "kube sends resourceVersion=0 only without a limit");
    }

    #[test]
    fn spread_timeouts_stay_in_range_and_differ_between_nodes() {
        let timeouts: std::collections::BTreeSet<u32> = (0..100)
            .map(|i| spread_config(&format!("node-{i}")).timeout.unwrap_or(0))
            .collect();
        assert!(timeouts.iter().all(|t| (240..290).contains(t)));
        assert!(timeouts.len() > 20, "spread over the range: {timeouts:?}");
    }
}

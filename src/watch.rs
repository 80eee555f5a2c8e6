//! How kiln's watches list and reconnect, for every role (controller and agent alike).

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

#[cfg(test)]
mod tests {
    use super::*;

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

//! An index over the NodeBuild watch cache, kept from the watch events that fill the cache, so a
//! reconcile finds its own attempts, the load per node and the node that last built a cache key
//! without scanning every NodeBuild.
//!
//! Each of those was a scan of the whole cache per reconcile: with 10,000 NodeBuilds and
//! hundreds of thousands of reconciles in the scale run, the controller spent its time there and
//! fell behind its watches. The index holds keys and a few fields, never objects: the objects
//! stay in the cache (`Context::node_builds`) and are read from it by key. Pure: it is fed
//! watcher events, and follows a relist the way kube's store does (a fresh table from `Init`
//! to `InitDone`, so objects deleted while the watch was down disappear).

use std::collections::{HashMap, HashSet};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use super::naming::CACHE_KEY_LABEL;
use crate::api::node_build::{IMAGE_BUILD_LABEL, NodeBuild};

/// A NodeBuild's namespace and name.
pub type Key = (String, String);

/// What the index keeps of one NodeBuild.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    /// The ImageBuild it belongs to (`kiln.dev/image-build`).
    build: Option<String>,
    /// Its node.
    node: String,
    /// Not finished yet.
    unfinished: bool,
    /// Its cache key and completion time, when it succeeded.
    succeeded: Option<(String, Option<Timestamp>)>,
}

impl Entry {
    fn of(nb: &NodeBuild) -> Self {
        let phase = nb.status.as_ref().and_then(|s| s.phase);
        let succeeded = (phase == Some(crate::api::node_build::NodeBuildPhase::Succeeded))
            .then(|| nb.labels().get(CACHE_KEY_LABEL).cloned())
            .flatten()
            .map(|key| {
                let at = nb.status.as_ref().and_then(|s| s.completion_time.as_ref()).map(|t| t.0);
                (key, at)
            });
        Self {
            build: nb.labels().get(IMAGE_BUILD_LABEL).cloned(),
            node: nb.spec.node_name.clone(),
            unfinished: !phase.is_some_and(|p| p.is_finished()),
            succeeded,
        }
    }
}

/// The tables, all derived from `entries`.
#[derive(Default)]
struct Tables {
    entries: HashMap<Key, Entry>,
    /// NodeBuild names by (namespace, ImageBuild name).
    by_build: HashMap<Key, HashSet<String>>,
    /// Unfinished NodeBuilds per node.
    load: HashMap<String, i32>,
    /// Succeeded NodeBuilds by cache key.
    by_cache_key: HashMap<String, HashSet<Key>>,
}

impl Tables {
    fn insert(&mut self, key: Key, entry: Entry) {
        self.remove(&key);
        if let Some(build) = &entry.build {
            let owner = (key.0.clone(), build.clone());
            self.by_build.entry(owner).or_default().insert(key.1.clone());
        }
        if entry.unfinished {
            *self.load.entry(entry.node.clone()).or_default() += 1;
        }
        if let Some((cache_key, _)) = &entry.succeeded {
            self.by_cache_key
                .entry(cache_key.clone())
                .or_default()
                .insert(key.clone());
        }
        self.entries.insert(key, entry);
    }

    fn remove(&mut self, key: &Key) {
        let Some(old) = self.entries.remove(key) else { return };
        if let Some(build) = old.build {
            let owner = (key.0.clone(), build);
            if let Some(names) = self.by_build.get_mut(&owner) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.by_build.remove(&owner);
                }
            }
        }
        if old.unfinished
            && let Some(n) = self.load.get_mut(&old.node)
        {
            *n -= 1;
            if *n <= 0 {
                self.load.remove(&old.node);
            }
        }
        if let Some((cache_key, _)) = old.succeeded
            && let Some(keys) = self.by_cache_key.get_mut(&cache_key)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_cache_key.remove(&cache_key);
            }
        }
    }
}

/// The index, fed by [`Index::apply`].
#[derive(Default)]
pub struct Index {
    live: Tables,
    /// The table a relist is filling, swapped in at `InitDone`.
    relisting: Option<Tables>,
}

fn key_of(nb: &NodeBuild) -> Key {
    (nb.namespace().unwrap_or_default(), nb.name_any())
}

impl Index {
    /// Follows one watcher event, as kube's store does.
    pub fn apply(&mut self, event: &Event<NodeBuild>) {
        match event {
            Event::Apply(nb) => self.live.insert(key_of(nb), Entry::of(nb)),
            Event::Delete(nb) => self.live.remove(&key_of(nb)),
            Event::Init => self.relisting = Some(Tables::default()),
            Event::InitApply(nb) => self
                .relisting
                .get_or_insert_with(Tables::default)
                .insert(key_of(nb), Entry::of(nb)),
            Event::InitDone => {
                if let Some(fresh) = self.relisting.take() {
                    self.live = fresh;
                }
            }
        }
    }

    /// The pool of the attempt whose end `event` records (it finished, or went away
    /// unfinished): a slot on its node frees, so a build held by the pool's queue limit may go.
    /// Call before [`Index::apply`]. Relists free nothing (a held build re-checks by itself).
    pub fn freed_by(&self, event: &Event<NodeBuild>) -> Option<String> {
        let (nb, ended) = match event {
            Event::Apply(nb) => (nb, !Entry::of(nb).unfinished),
            Event::Delete(nb) => (nb, true),
            _ => return None,
        };
        let was_unfinished = self.live.entries.get(&key_of(nb)).is_some_and(|e| e.unfinished);
        (was_unfinished && ended).then(|| nb.spec.pool.clone())
    }

    /// Names of the NodeBuilds labelled as attempts of ImageBuild `build` in `namespace`.
    pub fn attempts_of(&self, namespace: &str, build: &str) -> Vec<String> {
        let owner = (namespace.to_owned(), build.to_owned());
        let mut names: Vec<String> = self.live.by_build.get(&owner).into_iter().flatten().cloned().collect();
        names.sort();
        names
    }

    /// Whether ImageBuild `build` in `namespace` has an unfinished attempt.
    pub fn under_way(&self, namespace: &str, build: &str) -> bool {
        let owner = (namespace.to_owned(), build.to_owned());
        self.live.by_build.get(&owner).is_some_and(|names| {
            names.iter().any(|name| {
                self.live
                    .entries
                    .get(&(namespace.to_owned(), name.clone()))
                    .is_some_and(|e| e.unfinished)
            })
        })
    }

    /// Whether the cache holds this NodeBuild.
    pub fn contains(&self, namespace: &str, name: &str) -> bool {
        self.live.entries.contains_key(&(namespace.to_owned(), name.to_owned()))
    }

    /// Unfinished NodeBuilds per node.
    pub fn load(&self) -> &HashMap<String, i32> {
        &self.live.load
    }

    /// The node whose latest successful attempt for `cache_key` completed last.
    pub fn last_success(&self, cache_key: &str) -> Option<String> {
        let keys = self.live.by_cache_key.get(cache_key)?;
        keys.iter()
            .filter_map(|k| self.live.entries.get(k).map(|e| (e, k)))
            .max_by_key(|(e, k)| (e.succeeded.as_ref().and_then(|(_, at)| *at), (*k).clone()))
            .map(|(e, _)| e.node.clone())
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;

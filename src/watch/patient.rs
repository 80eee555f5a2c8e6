//! A watch that, when the apiserver ends it long before its timeout, pauses before it resumes.
//!
//! kube's `watcher` resumes at once from the last resource version it saw. The apiserver's
//! watch cache replays to a resumed watch every event of the kind since that version, matching
//! each against the watch's selector, before it sends anything new; and it ends a watch whose
//! 10-event buffer fills meanwhile (the "unresponsive" close of v1.20's cacher). An agent whose
//! last own event is seconds old resumes thousands of events back, is closed again during the
//! replay, and resumes again: in the scale run's waves 500 agents did that ~600 times a second,
//! and the replays took a fifth of the apiserver's CPU (`cacheWatcher.process` over its init
//! events, in a profile). A watch the apiserver cut short is a sign it is overloaded; pausing
//! before resuming, as clients back off after errors, lets it catch up.
//!
//! Otherwise it behaves as kube's `watcher` with [`super::config`]: it lists from the watch
//! cache (unpaged), then watches from the list's version; a `410 Gone` relists; errors are
//! yielded and retried with backoff. Its events feed a reflector `Writer` as `watcher`'s do.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Longest pause after a failed list or watch request.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Beyond its timeout, how long a watch may stay silent before it is taken for a dead
/// connection and resumed.
const IDLE_GRACE: Duration = Duration::from_secs(30);

/// Watches `api` as `config` says (its selectors and timeout), pausing `pause` before resuming
/// a watch that ended well before its timeout. The watch runs in a task of its own until the
/// stream is dropped.
pub fn patient<K>(
    api: Api<K>,
    config: watcher::Config,
    pause: Duration,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let reader = tx.clone();
    tokio::spawn(async move {
        let mut run = Run { api, config, pause, tx };
        tokio::select! {
            () = run.forever() => {}
            () = reader.closed() => {}
        }
    });
    ReceiverStream::new(rx)
}

/// Whether a watch that lasted `lasted` was ended by the apiserver before its `timeout`
/// (minus a few seconds of slack: the apiserver's own clock ends it on time).
fn cut_short(lasted: Duration, timeout: Option<u32>) -> bool {
    timeout.is_some_and(|t| lasted + Duration::from_secs(5) < Duration::from_secs(u64::from(t)))
}

struct Run<K> {
    api: Api<K>,
    config: watcher::Config,
    pause: Duration,
    tx: mpsc::Sender<Result<Event<K>, watcher::Error>>,
}

/// How a watch request ended.
enum Ended {
    /// Resume from this version.
    Resume(String),
    /// The version is gone (410): list again.
    Relist,
}

impl<K> Run<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    async fn forever(&mut self) {
        loop {
            let Some(mut version) = self.list().await else { return };
            loop {
                match self.watch(&version).await {
                    Some(Ended::Resume(v)) => version = v,
                    Some(Ended::Relist) => break,
                    None => return,
                }
            }
        }
    }

    /// Lists until a list succeeds; `None` when the stream's reader is gone.
    async fn list(&mut self) -> Option<String> {
        let mut params = ListParams::default().match_any();
        params.label_selector = self.config.label_selector.clone();
        params.field_selector = self.config.field_selector.clone();
        let mut backoff = Backoff::default();
        loop {
            match self.api.list(&params).await {
                Ok(list) => {
                    let version = list.metadata.resource_version.filter(|v| !v.is_empty());
                    let Some(version) = version else {
                        self.send(Err(watcher::Error::NoResourceVersion)).await?;
                        backoff.wait().await;
                        continue;
                    };
                    self.send(Ok(Event::Init)).await?;
                    for item in list.items {
                        self.send(Ok(Event::InitApply(item))).await?;
                    }
                    self.send(Ok(Event::InitDone)).await?;
                    return Some(version);
                }
                Err(e) => {
                    self.send(Err(watcher::Error::InitialListFailed(e))).await?;
                    backoff.wait().await;
                }
            }
        }
    }

    /// One watch request from `version`, to its end; `None` when the reader is gone.
    async fn watch(&mut self, version: &str) -> Option<Ended> {
        let params = WatchParams {
            label_selector: self.config.label_selector.clone(),
            field_selector: self.config.field_selector.clone(),
            timeout: self.config.timeout,
            ..WatchParams::default()
        };
        let mut backoff = Backoff::default();
        let mut stream = loop {
            match self.api.watch(&params, version).await {
                Ok(stream) => break stream.boxed(),
                Err(e) => {
                    self.send(Err(watcher::Error::WatchStartFailed(e))).await?;
                    backoff.wait().await;
                }
            }
        };
        let started = Instant::now();
        let idle = Duration::from_secs(u64::from(self.config.timeout.unwrap_or(290))) + IDLE_GRACE;
        let mut version = version.to_owned();
        while let Ok(Some(event)) = tokio::time::timeout(idle, stream.next()).await {
            match event {
                Ok(WatchEvent::Added(obj) | WatchEvent::Modified(obj)) => {
                    version = obj.resource_version().unwrap_or(version);
                    self.send(Ok(Event::Apply(obj))).await?;
                }
                Ok(WatchEvent::Deleted(obj)) => {
                    version = obj.resource_version().unwrap_or(version);
                    self.send(Ok(Event::Delete(obj))).await?;
                }
                Ok(WatchEvent::Bookmark(mark)) => version = mark.metadata.resource_version,
                Ok(WatchEvent::Error(status)) => {
                    let gone = status.code == 410;
                    self.send(Err(watcher::Error::WatchError(status))).await?;
                    if gone {
                        return Some(Ended::Relist);
                    }
                }
                Err(e) => self.send(Err(watcher::Error::WatchFailed(e))).await?,
            }
        }
        if cut_short(started.elapsed(), self.config.timeout) {
            tracing::debug!(lasted = ?started.elapsed(), pause = ?self.pause, "watch ended early; pausing before resuming");
            tokio::time::sleep(self.pause).await;
        }
        Some(Ended::Resume(version))
    }

    async fn send(&self, item: Result<Event<K>, watcher::Error>) -> Option<()> {
        self.tx.send(item).await.ok()
    }
}

/// Doubling pauses from 1 s up to [`MAX_BACKOFF`].
#[derive(Default)]
struct Backoff(u32);

impl Backoff {
    async fn wait(&mut self) {
        let pause = Duration::from_secs(1u64 << self.0.min(5)).min(MAX_BACKOFF);
        self.0 += 1;
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_is_cut_short_when_it_ends_well_before_its_timeout() {
        assert!(cut_short(Duration::from_millis(800), Some(240)));
        assert!(cut_short(Duration::from_secs(200), Some(240)));
        assert!(!cut_short(Duration::from_secs(239), Some(240)), "ended at its timeout");
        assert!(!cut_short(Duration::from_secs(241), Some(240)));
        assert!(
            !cut_short(Duration::from_secs(1), None),
            "no timeout: nothing to compare"
        );
    }
}

//! Follows one build from creation to its outcome: sends the context to each node whose
//! attempt waits for it, streams each attempt's log from its agent, reports why the build
//! waits, and returns once the ImageBuild is Ready or Stalled — or, on Ctrl-C, once it is
//! cancelled in the cluster.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use kube::api::{Api, DeleteParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use super::output::Progress;
use crate::api::conditions::{self, READY, STALLED};
use crate::api::image_build::ImageBuild;
use crate::api::node_build::{IMAGE_BUILD_LABEL, NodeBuild, NodeBuildPhase, WAITING_FOR_UPLOAD};
use crate::cli::agent_client::AgentClient;

/// What to follow.
pub struct Followed {
    /// The cluster.
    pub client: Client,
    /// The agents, through the apiserver.
    pub agents: AgentClient,
    /// The build's namespace.
    pub namespace: String,
    /// The build's name.
    pub name: String,
    /// The packed context.
    pub context: PathBuf,
    /// Its digest.
    pub digest: String,
    /// Its size.
    pub size: u64,
}

/// How the build ended.
pub enum Outcome {
    /// Ready: the image is on the node(s).
    Ready(Box<ImageBuild>),
    /// Stalled: it failed.
    Stalled(Box<ImageBuild>),
    /// Interrupted (Ctrl-C); the build was cancelled in the cluster.
    Interrupted,
}

/// Why following failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The watch of the build broke for good.
    #[error("lost track of the build: {0}")]
    Watch(String),
    /// The ImageBuild was deleted by someone else.
    #[error("the ImageBuild was deleted before it finished")]
    Deleted,
    /// The context could not be sent.
    #[error("cannot send the build context to node {node}: {reason}")]
    Upload {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
}

/// Counters for the result.
#[derive(Default)]
pub struct Stats {
    /// Bytes sent to agents.
    pub uploaded: Arc<AtomicU64>,
}

enum Seen {
    Build(ImageBuild),
    BuildGone,
    Attempt(NodeBuild),
    UploadFailed(String, String),
}

/// Follows the build until it ends.
pub async fn follow(f: &Followed, progress: Arc<Progress>, stats: &Stats) -> Result<Outcome, Error> {
    let builds: Api<ImageBuild> = Api::namespaced(f.client.clone(), &f.namespace);
    let attempts: Api<NodeBuild> = Api::namespaced(f.client.clone(), &f.namespace);
    let (tx, mut rx) = mpsc::unbounded_channel::<Seen>();
    let watches = spawn_watches(&builds, &attempts, &f.name, tx.clone());
    let outcome = follow_events(f, &builds, &mut rx, tx, progress, stats).await;
    for w in watches {
        w.abort();
    }
    outcome
}

async fn follow_events(
    f: &Followed,
    builds: &Api<ImageBuild>,
    rx: &mut mpsc::UnboundedReceiver<Seen>,
    tx: mpsc::UnboundedSender<Seen>,
    progress: Arc<Progress>,
    stats: &Stats,
) -> Result<Outcome, Error> {
    let mut uploading = BTreeSet::new();
    let mut logging = BTreeSet::new();
    let mut last_note = String::new();
    loop {
        let seen = tokio::select! {
            seen = rx.recv() => seen,
            _ = tokio::signal::ctrl_c() => {
                progress.event("interrupted: cancelling the build in the cluster");
                cancel(builds, &f.name).await;
                return Ok(Outcome::Interrupted);
            }
        };
        match seen {
            None => return Err(Error::Watch("the watches ended".into())),
            Some(Seen::BuildGone) => return Err(Error::Deleted),
            Some(Seen::UploadFailed(node, reason)) => return Err(Error::Upload { node, reason }),
            Some(Seen::Build(ib)) => {
                if let Some(outcome) = settled(&ib) {
                    return Ok(outcome);
                }
                let status = ib.status.clone().unwrap_or_default();
                let note = format!(
                    "{}: {}",
                    status.reason.unwrap_or_default(),
                    status.message.unwrap_or_default()
                );
                if note != last_note && note != ": " {
                    progress.note(&note);
                    last_note = note;
                }
            }
            Some(Seen::Attempt(nb)) => {
                let status = nb.status.clone().unwrap_or_default();
                let node = nb.spec.node_name.clone();
                let Some(agent) = status.agent_endpoint.clone() else {
                    continue;
                };
                let waiting = status.reason.as_deref() == Some(WAITING_FOR_UPLOAD);
                if waiting && uploading.insert((node.clone(), agent.pod.clone())) {
                    spawn_upload(f, node.clone(), agent.clone(), progress.clone(), stats, tx.clone());
                }
                if status.phase == Some(NodeBuildPhase::Running) && logging.insert(nb.name_any()) {
                    spawn_log(f, node, agent, nb.name_any(), progress.clone());
                }
            }
        }
    }
}

/// Ready or Stalled for the current generation, if it is either.
fn settled(ib: &ImageBuild) -> Option<Outcome> {
    let status = ib.status.as_ref()?;
    if status.observed_generation != ib.metadata.generation {
        return None;
    }
    let current = |t: &str| {
        conditions::find(&status.conditions, t)
            .is_some_and(|c| c.status == "True" && c.observed_generation == ib.metadata.generation)
    };
    if current(READY) {
        Some(Outcome::Ready(Box::new(ib.clone())))
    } else if current(STALLED) {
        Some(Outcome::Stalled(Box::new(ib.clone())))
    } else {
        None
    }
}

/// Watches the build and its attempts (with backoff on errors) into `tx`, until aborted.
fn spawn_watches(
    builds: &Api<ImageBuild>,
    attempts: &Api<NodeBuild>,
    name: &str,
    tx: mpsc::UnboundedSender<Seen>,
) -> [tokio::task::JoinHandle<()>; 2] {
    let by_name = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut build_events = watcher(builds.clone(), by_name).default_backoff().boxed();
    let build_tx = tx.clone();
    let builds_task = tokio::spawn(async move {
        while let Some(event) = build_events.next().await {
            let seen = match event {
                Ok(watcher::Event::Apply(ib) | watcher::Event::InitApply(ib)) => Seen::Build(ib),
                Ok(watcher::Event::Delete(_)) => Seen::BuildGone,
                // Watch errors are retried by the watcher; keep going.
                _ => continue,
            };
            if build_tx.send(seen).is_err() {
                return;
            }
        }
    });
    let by_label = watcher::Config::default().labels(&format!("{IMAGE_BUILD_LABEL}={name}"));
    let mut attempt_events = watcher(attempts.clone(), by_label).default_backoff().boxed();
    let attempts_task = tokio::spawn(async move {
        while let Some(event) = attempt_events.next().await {
            if let Ok(watcher::Event::Apply(nb) | watcher::Event::InitApply(nb)) = event
                && tx.send(Seen::Attempt(nb)).is_err()
            {
                return;
            }
        }
    });
    [builds_task, attempts_task]
}

fn spawn_upload(
    f: &Followed,
    node: String,
    agent: crate::api::node_build::AgentEndpoint,
    progress: Arc<Progress>,
    stats: &Stats,
    tx: mpsc::UnboundedSender<Seen>,
) {
    let (agents, file, digest, size) = (f.agents.clone(), f.context.clone(), f.digest.clone(), f.size);
    let sent = stats.uploaded.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        progress.note(&format!("sending the context to {node} ({})", human_bytes(size)));
        let before = sent.load(Ordering::Relaxed);
        match agents.upload(&agent, &digest, &file, size, sent.clone()).await {
            Ok(stored) => {
                let bytes = sent.load(Ordering::Relaxed) - before;
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let what = if stored { "sent" } else { "already there" };
                progress.event(&format!(
                    "context {what} to {node}: {} in {:.2}s ({}/s)",
                    human_bytes(bytes),
                    secs,
                    human_bytes((bytes as f64 / secs) as u64)
                ));
            }
            Err(e) => {
                let _ = tx.send(Seen::UploadFailed(node, e.to_string()));
            }
        }
    });
}

fn spawn_log(
    f: &Followed,
    node: String,
    agent: crate::api::node_build::AgentEndpoint,
    attempt: String,
    progress: Arc<Progress>,
) {
    let (agents, namespace) = (f.agents.clone(), f.namespace.clone());
    tokio::spawn(async move {
        let Ok(stream) = agents.log(&agent, &namespace, &attempt, true).await else {
            return;
        };
        let mut pending = String::new();
        let mut stream = stream.into_stream();
        while let Some(Ok(chunk)) = stream.next().await {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                progress.log(&node, line.trim_end());
            }
        }
        if !pending.is_empty() {
            progress.log(&node, pending.trim_end());
        }
    });
}

/// Deletes the ImageBuild (its finalizer cancels the attempts on the nodes) and waits up to
/// half a minute for it to be gone.
async fn cancel(builds: &Api<ImageBuild>, name: &str) {
    let _ = builds.delete(name, &DeleteParams::default()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(None) = builds.get_opt(name).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

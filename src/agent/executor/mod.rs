//! Runs this node's NodeBuilds on the local BuildKit.
//!
//! A label-selected watch sees only NodeBuilds bound to this node and pool. An attempt whose
//! context is uploaded (`kiln build`) first waits for those bytes, reporting `WaitingForUpload`
//! and where to send them, without taking a slot. Each unfinished one runs once a build slot is
//! free (`--max-concurrent-builds`; only those that have to wait report `Queued`, with their
//! position), as the steps in [`solve`]. A build is reported `Running` only once it has run for
//! `--progress-delay-ms`, and its progress at most about once a second after that; the outcome
//! always (retried until it lands), never overtaken by an intermediate write
//! ([`super::status`]). So a cached build costs one status write; a pinned one (`spec.pin`)
//! carries its pin in that same write. Solves share one kept BuildKit connection. Cancellation
//! (`spec.cancel`, deletion, or the deadline) cancels the BuildKit solve. An attempt left
//! `Running` by an earlier agent instance is failed with `AgentRestarted`, so the controller
//! retries it instead of waiting forever. Finished attempts asked to remove their image
//! (`spec.removeImage`) go to [`super::cleanup`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{Mutex, Semaphore, watch};
use tracing::{debug, info, warn};

mod solve;

use super::cleanup::Remover;
use super::contexts::{ContextDigest, ContextStore, Wanted};
use super::logs::LogStore;
use super::node_pods::NodePods;
use super::policy::PolicyGuard;
use super::status::StatusWriter;
use super::{Settings, State};
use crate::api::node_build::{NODE_LABEL, NodeBuild, NodeBuildPhase, NodeBuildStatus, POOL_LABEL, WAITING_FOR_UPLOAD};
use crate::api::recipe::BuildSource;
use crate::buildkit::Client as BuildKit;

/// How long an ended attempt is remembered: longer than any watch lag or re-list.
const ENDED_MEMORY: Duration = Duration::from_secs(3600);
/// Minimum time between two progress writes of one build.
const THROTTLE: Duration = Duration::from_secs(1);
/// How long the NodeBuild watch waits before it resumes after the apiserver ended it early
/// ([`crate::watch::patient`]).
const RESUME_PAUSE: Duration = Duration::from_secs(1);

/// Why a running build is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Run,
    Cancel,
    Deleted,
}

struct Tracked {
    stop: watch::Sender<Stop>,
}

/// The executor's shared pieces.
pub struct Executor {
    client: Client,
    settings: Settings,
    state: Arc<State>,
    logs: LogStore,
    contexts: Arc<ContextStore>,
    /// Where BuildKit fetches uploaded contexts from this agent.
    contexts_url: String,
    slots: Arc<Semaphore>,
    tracked: Mutex<HashMap<(String, String), Tracked>>,
    queue: Mutex<Vec<(String, String)>>,
    /// The pool's image-name policy, checked before every build.
    policy: PolicyGuard,
    /// The connection to the node's BuildKit, kept between builds.
    buildkit: Mutex<Option<BuildKit>>,
    /// Attempts (by uid) this agent has written an outcome for. A watch can still deliver
    /// older states of them, e.g. its `Queued` report when the stream lags behind a busy
    /// apiserver: those must not run the attempt again.
    ended: std::sync::Mutex<HashMap<String, Instant>>,
    /// This node's NodeBuilds as the watch sees them (read by [`super::presence`]), and the
    /// writer the watch fills it with until [`Executor::run`] takes it.
    cache: Store<NodeBuild>,
    cache_writer: std::sync::Mutex<Option<Writer<NodeBuild>>>,
    /// Removes the images of deleted builds that ask for it (`spec.removeImage`).
    remover: Arc<Remover>,
    /// The node's live pods, read by the policy check and the remover.
    pods: Arc<NodePods>,
}

impl Executor {
    /// An executor for this node.
    pub fn new(
        client: Client,
        settings: Settings,
        state: Arc<State>,
        logs: LogStore,
        contexts: Arc<ContextStore>,
        contexts_url: String,
    ) -> Arc<Self> {
        let slots = Arc::new(Semaphore::new(
            usize::try_from(settings.max_concurrent_builds).unwrap_or(1).max(1),
        ));
        let (cache, writer) = reflector::store();
        let pods = NodePods::new(client.clone(), &settings.node);
        Arc::new(Self {
            cache,
            cache_writer: std::sync::Mutex::new(Some(writer)),
            policy: PolicyGuard::new(client.clone(), &settings.pool, &settings.node, pods.clone()),
            remover: Remover::new(
                client.clone(),
                &settings.node,
                settings.image_store.clone(),
                pods.clone(),
            ),
            pods,
            client,
            settings,
            state,
            logs,
            contexts,
            contexts_url,
            slots,
            tracked: Mutex::default(),
            queue: Mutex::default(),
            buildkit: Mutex::default(),
            ended: std::sync::Mutex::default(),
        })
    }

    /// This node's NodeBuilds, as the executor's watch keeps them.
    pub fn node_builds(&self) -> Store<NodeBuild> {
        self.cache.clone()
    }

    /// Watches this node's NodeBuilds and runs them, forever.
    pub async fn run(self: Arc<Self>) {
        // The pool's and the pods' watches live exactly as long as the executor's.
        tokio::select! {
            () = self.policy.watch() => {}
            () = self.pods.watch() => {}
            () = self.clone().follow() => {}
        }
    }

    async fn follow(self: Arc<Self>) {
        let api: Api<NodeBuild> = Api::all(self.client.clone());
        let selector = format!(
            "{NODE_LABEL}={},{POOL_LABEL}={}",
            self.settings.node, self.settings.pool
        );
        // Relists come from the apiserver's watch cache, and each node's agent reconnects at
        // its own time (`crate::watch`).
        let config = crate::watch::spread_config(&self.settings.node).labels(&selector);
        // Every agent's watch gets every NodeBuild event and replays those it missed when it
        // resumes: after an early end (an overloaded apiserver), it pauses first.
        let events = crate::watch::patient(api, config, RESUME_PAUSE);
        let mut stream = match self.cache_writer.lock().ok().and_then(|mut w| w.take()) {
            Some(writer) => events.reflect(writer).boxed(),
            None => events.boxed(),
        };
        loop {
            match stream.try_next().await {
                Ok(Some(event)) => match event {
                    watcher::Event::Apply(nb) | watcher::Event::InitApply(nb) => self.clone().observe(nb).await,
                    watcher::Event::Delete(nb) => self.deleted(&nb).await,
                    watcher::Event::Init | watcher::Event::InitDone => {}
                },
                Ok(None) => return,
                Err(e) => {
                    warn!(error = %e, "NodeBuild watch failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn observe(self: Arc<Self>, nb: NodeBuild) {
        self.remover.observe(&nb);
        let key = (nb.namespace().unwrap_or_default(), nb.name_any());
        let status = nb.status.clone().unwrap_or_default();
        if status.phase.is_some_and(NodeBuildPhase::is_finished) || self.has_ended(&nb) {
            return;
        }
        if let Some(t) = self.tracked.lock().await.get(&key) {
            if nb.spec.cancel {
                let _ = t.stop.send(Stop::Cancel);
            }
            return;
        }
        // Left running by an earlier instance of this agent: BuildKit's solve died with it.
        let ours = status.agent.as_deref() == Some(self.settings.identity.as_str());
        if status.phase == Some(NodeBuildPhase::Running) && !ours {
            info!(node_build = %key.1, "failing an attempt an earlier agent instance left running");
            let why = "the agent restarted while this attempt was running; the controller retries it";
            self.finish(&nb, NodeBuildPhase::Failed, "AgentRestarted", why, &status)
                .await;
            return;
        }
        if nb.spec.cancel {
            self.finish(
                &nb,
                NodeBuildPhase::Cancelled,
                "Cancelled",
                "cancelled before it started",
                &status,
            )
            .await;
            return;
        }
        debug!(node_build = %key.1, node = %self.settings.node, resource_version = ?nb.resource_version(), "observed a new attempt");
        let (tx, rx) = watch::channel(Stop::Run);
        self.tracked.lock().await.insert(key.clone(), Tracked { stop: tx });
        tokio::spawn(async move {
            self.execute(nb, rx).await;
            self.tracked.lock().await.remove(&key);
        });
    }

    /// True if this agent already wrote `nb`'s outcome (the event is older than that).
    fn has_ended(&self, nb: &NodeBuild) -> bool {
        let uid = nb.uid().unwrap_or_default();
        self.ended.lock().is_ok_and(|e| e.contains_key(&uid))
    }

    /// Remembers that `nb`'s outcome is written, for [`ENDED_MEMORY`].
    fn mark_ended(&self, nb: &NodeBuild) {
        if let Ok(mut ended) = self.ended.lock() {
            let now = Instant::now();
            ended.retain(|_, at| now.duration_since(*at) < ENDED_MEMORY);
            ended.insert(nb.uid().unwrap_or_default(), now);
        }
    }

    async fn deleted(&self, nb: &NodeBuild) {
        if let Ok(mut ended) = self.ended.lock() {
            ended.remove(&nb.uid().unwrap_or_default());
        }
        let key = (nb.namespace().unwrap_or_default(), nb.name_any());
        if let Some(t) = self.tracked.lock().await.get(&key) {
            let _ = t.stop.send(Stop::Deleted);
        }
    }

    async fn execute(self: &Arc<Self>, nb: NodeBuild, mut stop: watch::Receiver<Stop>) {
        let key = (nb.namespace().unwrap_or_default(), nb.name_any());
        let mut status = nb.status.clone().unwrap_or_default();
        status.agent = Some(self.settings.identity.clone());
        status.agent_endpoint = self.settings.endpoint.clone();
        let Ok(_context) = self.context_ready(&nb, &mut status, &mut stop).await else {
            return;
        };
        // A free slot is taken at once, with nothing to report; only a build that has to wait
        // says so (Queued, with its position).
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => self.wait_for_slot(&nb, &key, &mut status, &mut stop).await,
        };
        let Some(permit) = permit else {
            if *stop.borrow() == Stop::Cancel {
                self.finish(
                    &nb,
                    NodeBuildPhase::Cancelled,
                    "Cancelled",
                    "cancelled while queued",
                    &status,
                )
                .await;
            }
            return;
        };
        self.state.running.fetch_add(1, Ordering::Relaxed);
        let outcome = self.build(&nb, &mut status, &mut stop, &self.write_target(&nb)).await;
        // The slot is free once BuildKit is done, before the outcome is written: the controller
        // counts the attempt as finished when it sees that write (its watch can deliver it before
        // the write's own response returns here), and may send the next attempt at once; holding
        // the slot until then made that attempt report Queued for nothing.
        drop(permit);
        self.state.running.fetch_sub(1, Ordering::Relaxed);
        if let Some(mut done) = outcome {
            if done.phase == Some(NodeBuildPhase::Succeeded) {
                self.record_image(&nb, &mut done).await;
            }
            self.write_target(&nb).write_outcome(&done).await;
            self.mark_ended(&nb);
        }
    }

    /// Reports the build `Queued` with its position and waits for a slot (none if stopped).
    async fn wait_for_slot(
        &self,
        nb: &NodeBuild,
        key: &(String, String),
        status: &mut NodeBuildStatus,
        stop: &mut watch::Receiver<Stop>,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.queue.lock().await.push(key.clone());
        self.state.queued.fetch_add(1, Ordering::Relaxed);
        status.phase = Some(NodeBuildPhase::Queued);
        status.queue_position = self.queue_position(key).await;
        self.write(nb, status).await;
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.ok(),
            _ = stopped(stop) => None,
        };
        self.queue.lock().await.retain(|k| k != key);
        self.state.queued.fetch_sub(1, Ordering::Relaxed);
        permit
    }

    /// For an uploaded context: holds it (accepted for upload, safe from garbage collection)
    /// and, while it is not on the node, reports `WaitingForUpload` with where to send it and
    /// waits, up to the pool's limit. `Err` when the attempt ended meanwhile (status written).
    async fn context_ready(
        &self,
        nb: &NodeBuild,
        status: &mut NodeBuildStatus,
        stop: &mut watch::Receiver<Stop>,
    ) -> Result<Option<Wanted>, ()> {
        let BuildSource::Upload(upload) = &nb.spec.build.source else {
            return Ok(None);
        };
        let Some(digest) = ContextDigest::parse(&upload.digest) else {
            let why = format!("upload digest {:?} is not sha256:<64 hex>", upload.digest);
            self.finish(nb, NodeBuildPhase::Failed, "InvalidSpec", &why, status)
                .await;
            return Err(());
        };
        let limit = self.contexts.limits().max_context;
        if let Some(size) = upload.size.and_then(|s| u64::try_from(s).ok()).filter(|s| *s > limit) {
            let why = format!(
                "the context is {size} bytes, over pool {}'s limit of {limit} bytes (spec.uploads.maxContextMiB); shrink it with a .dockerignore",
                self.settings.pool
            );
            self.finish(nb, NodeBuildPhase::Failed, "ContextTooLarge", &why, status)
                .await;
            return Err(());
        }
        let held = self.contexts.want(&digest);
        if self.contexts.has(&digest).await {
            return Ok(Some(held));
        }
        let wait = self.settings.upload_wait;
        status.phase = Some(NodeBuildPhase::Queued);
        status.reason = Some(WAITING_FOR_UPLOAD.to_owned());
        status.message = Some(format!(
            "waiting for the build context {digest}{} to be uploaded to this node (kiln build sends it); gives up after {}s",
            upload.size.map(|s| format!(" ({s} bytes)")).unwrap_or_default(),
            wait.as_secs()
        ));
        self.write(nb, status).await;
        tokio::select! {
            here = self.contexts.wait_for(&digest, wait) => {
                if here {
                    status.reason = None;
                    status.message = None;
                    return Ok(Some(held));
                }
                let why = format!("no build context arrived within {}s (spec.uploads.waitSeconds); run kiln build again", wait.as_secs());
                self.finish(nb, NodeBuildPhase::Failed, "UploadTimeout", &why, status).await;
            }
            why = stopped(stop) => {
                if why == Stop::Cancel {
                    self.finish(nb, NodeBuildPhase::Cancelled, "Cancelled", "cancelled while waiting for its context", status).await;
                }
            }
        }
        Err(())
    }

    async fn queue_position(&self, key: &(String, String)) -> Option<i32> {
        let queue = self.queue.lock().await;
        queue.iter().position(|k| k == key).and_then(|p| i32::try_from(p).ok())
    }

    /// Writes the final status of an attempt that ends without a build.
    async fn finish(
        &self,
        nb: &NodeBuild,
        phase: NodeBuildPhase,
        reason: &str,
        message: &str,
        status: &NodeBuildStatus,
    ) {
        let done = finished(&self.settings, phase, reason, message, status);
        self.write_target(nb).write_outcome(&done).await;
        self.mark_ended(nb);
    }

    async fn write(&self, nb: &NodeBuild, status: &NodeBuildStatus) {
        self.write_target(nb).write(status).await;
    }

    /// What the node's store says about a built image, in its outcome (no write of its own):
    /// its size, and its pin (`spec.pin`).
    async fn record_image(&self, nb: &NodeBuild, done: &mut NodeBuildStatus) {
        let names = nb.spec.build.normalised_names();
        let store = self.settings.image_store.as_ref();
        if let (Some(store), Some(name)) = (store, names.first()) {
            match store.size(name).await {
                Ok(size) => done.image_size = size.and_then(|s| i64::try_from(s).ok()),
                Err(e) => debug!(error = %e, "cannot read the built image's size"),
            }
        }
        if nb.spec.pin {
            done.pin = Some(super::pin::pin(&self.client, &self.settings.node, store, &names).await);
        }
    }

    fn write_target(&self, nb: &NodeBuild) -> StatusWriter {
        StatusWriter::new(&self.client, nb)
    }
}

/// Waits until the build is asked to stop, and says why.
async fn stopped(stop: &mut watch::Receiver<Stop>) -> Stop {
    stop.wait_for(|s| *s != Stop::Run)
        .await
        .map(|v| *v)
        .unwrap_or(Stop::Cancel)
}

fn finished(
    settings: &Settings,
    phase: NodeBuildPhase,
    reason: &str,
    message: &str,
    current: &NodeBuildStatus,
) -> NodeBuildStatus {
    let mut s = current.clone();
    s.phase = Some(phase);
    s.agent = Some(settings.identity.clone());
    s.queue_position = None;
    s.reason = Some(reason.to_owned());
    s.message = Some(if message.is_empty() {
        reason.to_owned()
    } else {
        message.to_owned()
    });
    s.completion_time = Some(Time(Timestamp::now()));
    s
}

//! One attempt on BuildKit, as named steps: [`Executor::checks`] (policy, the node's pods, the
//! git ref, the request), start the solve over the kept connection, [`Executor::follow_solve`] its
//! progress (and the `Running` report) until it ends, is stopped or reaches its deadline, and
//! [`outcome`] (the final status).

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tokio::sync::watch;
use tracing::{debug, info};

use super::{Executor, Stop, THROTTLE, finished, stopped};
use crate::agent::Settings;
use crate::agent::logs::BuildLog;
use crate::agent::request::{Refusal, build_request, reason_of};
use crate::agent::revision;
use crate::agent::status::StatusWriter;
use crate::api::image_build::{DigestKind as ApiDigestKind, Progress, SourceStatus};
use crate::api::node_build::{NodeBuild, NodeBuildPhase, NodeBuildStatus};
use crate::api::recipe::BuildRecipe;
use crate::buildkit::{
    BuildHandle, BuildOutput, BuildRequest, Client as BuildKit, DigestKind, Error as BuildKitError, GIT_AUTH_TOKEN,
    PlainRenderer, ProgressEvent,
};

/// Why a solve was stopped before it ended: a status reason and message.
type Stopped = Option<(&'static str, String)>;

impl Executor {
    /// Runs one build; returns the final status to write (none when the NodeBuild is gone).
    pub(super) async fn build(
        &self,
        nb: &NodeBuild,
        status: &mut NodeBuildStatus,
        stop: &mut watch::Receiver<Stop>,
        progress: &StatusWriter,
    ) -> Option<NodeBuildStatus> {
        let (ns, name) = (nb.namespace().unwrap_or_default(), nb.name_any());
        status.phase = Some(NodeBuildPhase::Running);
        status.queue_position = None;
        status.reason = None;
        status.message = None;
        status.start_time = Some(Time(Timestamp::now()));
        let request = match self.checks(nb, status).await {
            Ok(request) => request,
            Err(refused) => return Some(refused),
        };
        // `Running` is reported only if the solve is still going after the progress delay,
        // counted from here: the checks before it (policy, the node's pods, a git ref) take
        // longer on a busy apiserver, and counting them turned cached builds' single outcome
        // write into two (the scale smoke's write budget).
        let report_at = tokio::time::Instant::now() + self.settings.progress_delay;
        debug!(node_build = %name, "starting the solve");
        let solve = match &self.settings.simulated {
            Some(simulated) => Ok(simulated.solve(&format!("{ns}/{name}"), request.export.names.clone())),
            None => self.start_solve(request).await,
        };
        let mut handle = match solve {
            Ok(h) => h,
            Err(e) => {
                let (reason, message) = (reason_of(&e), e.to_string());
                return Some(finished(
                    &self.settings,
                    NodeBuildPhase::Failed,
                    reason,
                    &message,
                    status,
                ));
            }
        };
        info!(namespace = %ns, node_build = %name, "build started");
        let mut log = self.logs.create(&ns, &name);
        let why = self
            .follow_solve(nb, &mut handle, status, stop, (progress, report_at), &mut log)
            .await;
        let result = match &why {
            Some(_) => handle.cancel().await,
            None => handle.wait().await,
        };
        let done = outcome(&self.settings, &name, why, result, status)?;
        log.write_lines(&[format!(
            "[kiln] {}: {}",
            done.reason.clone().unwrap_or_default(),
            done.message.clone().unwrap_or_default()
        )]);
        Some(done)
    }

    /// Everything before the solve: the pool's policy first (a refused attempt reads no Secret
    /// and asks no git remote), then the request, then BuildKit's temporary directory. `Err`
    /// is the final status of a refused attempt.
    async fn checks(&self, nb: &NodeBuild, status: &mut NodeBuildStatus) -> Result<BuildRequest, NodeBuildStatus> {
        let ns = nb.namespace().unwrap_or_default();
        let request = match self.policy.check(&ns, &nb.spec.build).await {
            Ok(()) => self.prepare(&ns, &nb.spec.build, status).await,
            Err(refused) => Err(refused),
        };
        let request = request.map_err(|(reason, message)| {
            info!(namespace = %ns, node_build = %nb.name_any(), reason, "build refused before it started");
            finished(&self.settings, NodeBuildPhase::Failed, reason, &message, status)
        })?;
        if let Some(dir) = &self.settings.buildkit_tmp
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            let message = format!(
                "buildkitd's temporary directory {} is missing and cannot be created ({e}); check the pool's stateDir on this node",
                dir.display()
            );
            return Err(finished(
                &self.settings,
                NodeBuildPhase::Failed,
                "BuildKitUnavailable",
                &message,
                status,
            ));
        }
        Ok(request)
    }

    /// The BuildKit request for `recipe`, a git source resolved to the commit its ref names
    /// now (recorded in `status`, so the outcome says what was built) and fetched with the
    /// source's token, if it has one.
    async fn prepare(
        &self,
        ns: &str,
        recipe: &BuildRecipe,
        status: &mut NodeBuildStatus,
    ) -> Result<BuildRequest, Refusal> {
        let token = revision::token(&self.client, ns, recipe).await?;
        let revision = revision::resolve(recipe, token.as_deref()).await?;
        if let Some(commit) = &revision {
            debug!(namespace = %ns, commit = %commit, "git source resolved");
            status.source = Some(SourceStatus {
                revision: Some(commit.clone()),
                latest: None,
            });
        }
        let network = self.settings.network;
        let contexts = &self.contexts_url;
        let mut request = build_request(&self.client, ns, recipe, network, contexts, revision.as_deref()).await?;
        if let Some(token) = token {
            // BuildKit fetches the repository with it; masked like every build secret.
            request.secrets.insert(GIT_AUTH_TOKEN.to_owned(), token.into_bytes());
        }
        Ok(request)
    }

    /// Follows the solve's progress into the log and (throttled) the status, until it ends
    /// (`None`), or is stopped or reaches the attempt's deadline (why). The status says
    /// `Running` at `report_at` if the solve is still going then.
    ///
    /// All of it happens in this one loop, which looks at a stop request first, then the
    /// solve, then the clock: when the solve ends as the report falls due (a busy node wakes
    /// both late), the solve wins and no `Running` is written for a build already over. A report
    /// timer in a task of its own wrote one for 3 % of an `allNodes` build's 1,500 attempts in
    /// the scale run, each a write for nothing.
    async fn follow_solve(
        &self,
        nb: &NodeBuild,
        handle: &mut BuildHandle,
        status: &mut NodeBuildStatus,
        stop: &mut watch::Receiver<Stop>,
        (progress, report_at): (&StatusWriter, tokio::time::Instant),
        log: &mut BuildLog,
    ) -> Stopped {
        let started = Instant::now();
        let mut reported = false;
        let report_due = tokio::time::sleep_until(report_at);
        tokio::pin!(report_due);
        let mut plain = PlainRenderer::new();
        let mut last_write = Instant::now();
        let deadline = nb.spec.deadline.as_ref().map(|d| {
            let left = d.0.duration_since(Timestamp::now());
            tokio::time::Instant::now() + Duration::try_from(left).unwrap_or_default()
        });
        let sleep_until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => futures::future::pending().await,
            }
        };
        tokio::pin!(sleep_until);
        loop {
            tokio::select! {
                biased;
                why = stopped(stop) => {
                    return Some(if why == Stop::Deleted { ("Deleted", String::new()) } else { ("Cancelled", "cancelled on request".to_owned()) });
                }
                event = handle.next_event() => match event {
                    Some(event) => {
                        log.write_lines(&plain.render(&event));
                        if let ProgressEvent::Progress(summary) = &event {
                            status.progress = Some(Progress {
                                completed: i32::try_from(summary.completed).unwrap_or(i32::MAX),
                                total: i32::try_from(summary.total).unwrap_or(i32::MAX),
                                cached: Some(i32::try_from(summary.cached).unwrap_or(i32::MAX)),
                                current: summary.current.clone(),
                            });
                            if started.elapsed() >= self.settings.progress_delay && last_write.elapsed() >= THROTTLE {
                                progress.write(status).await;
                                (reported, last_write) = (true, Instant::now());
                            }
                        }
                    }
                    None => return None,
                },
                () = &mut sleep_until => return Some(("DeadlineExceeded", "the attempt reached its deadline (timeoutSeconds) and was cancelled".to_owned())),
                () = &mut report_due, if !reported => {
                    progress.write(status).await;
                    (reported, last_write) = (true, Instant::now());
                }
            }
        }
    }

    /// Starts a solve on the node's BuildKit over the kept connection, connecting (again) when
    /// there is none or it broke: connecting and asking BuildKit for its workers is done once,
    /// not per build.
    async fn start_solve(&self, request: BuildRequest) -> Result<BuildHandle, BuildKitError> {
        let kept = self.buildkit.lock().await.clone();
        if let Some(client) = kept {
            match client.build(request.clone()).await {
                Err(BuildKitError::Unreachable { .. }) => {
                    info!("the BuildKit connection broke; reconnecting");
                }
                other => return other,
            }
        }
        let client = BuildKit::connect(&self.settings.buildkit, self.settings.tls.clone()).await?;
        *self.buildkit.lock().await = Some(client.clone());
        client.build(request).await
    }
}

/// The final status from how the solve ended; none when the NodeBuild was deleted.
fn outcome(
    settings: &Settings,
    name: &str,
    stopped: Stopped,
    result: Result<BuildOutput, BuildKitError>,
    status: &NodeBuildStatus,
) -> Option<NodeBuildStatus> {
    Some(match (stopped, result) {
        (_, Ok(out)) => {
            info!(node_build = %name, digest = %out.digest, "build succeeded");
            let built = format!("built {}", out.image_names.join(", "));
            let mut s = finished(settings, NodeBuildPhase::Succeeded, "Succeeded", &built, status);
            s.digest = Some(out.digest.clone());
            s.digest_kind = Some(match out.digest_kind {
                DigestKind::Manifest => ApiDigestKind::Manifest,
                DigestKind::ImageId => ApiDigestKind::ImageID,
            });
            s.config_digest = out.config_digest.clone();
            s.progress = Some(Progress {
                completed: i32::try_from(out.summary.completed).unwrap_or(i32::MAX),
                total: i32::try_from(out.summary.total).unwrap_or(i32::MAX),
                cached: Some(i32::try_from(out.summary.cached).unwrap_or(i32::MAX)),
                current: None,
            });
            s
        }
        (Some(("Deleted", _)), Err(_)) => return None,
        (Some((reason, message)), Err(_)) => {
            info!(node_build = %name, reason, "build stopped");
            let phase = if reason == "DeadlineExceeded" {
                NodeBuildPhase::Failed
            } else {
                NodeBuildPhase::Cancelled
            };
            finished(settings, phase, reason, &message, status)
        }
        (None, Err(e)) => {
            info!(node_build = %name, error = %e, "build failed");
            finished(settings, NodeBuildPhase::Failed, reason_of(&e), &e.to_string(), status)
        }
    })
}

//! Polling git refs (`source.git.poll`): for each build on this node, its latest finished
//! attempt of the newest generation is asked about every `intervalSeconds`: which commit its
//! ref names now (with the source's token, as the build did). When that is not the commit the
//! attempt built, the agent writes it to the attempt's `status.source.latest`, once; the
//! controller then builds the new commit on this node. Nothing is written while the ref stays.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use super::revision;
use super::status::StatusWriter;
use crate::api::node_build::{NodeBuild, NodeBuildPhase};
use crate::api::recipe::BuildSource;

/// How often the poller looks for attempts that are due.
const TICK: Duration = Duration::from_secs(1);

/// Polls the refs of this node's builds, forever.
pub struct Poller {
    /// This node's NodeBuilds, as the executor's watch keeps them.
    pub node_builds: Store<NodeBuild>,
    /// Reads tokens, writes what moved.
    pub client: Client,
}

impl Poller {
    /// Asks each due attempt's remote, one at a time.
    pub async fn run(self) {
        // Next question per attempt (uid); the first comes one interval after the agent sees it.
        let mut next: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::time::sleep(TICK).await;
            let polled = polled(&self.node_builds.state());
            let now = Instant::now();
            next.retain(|uid, _| polled.iter().any(|(nb, _)| nb.uid().as_deref() == Some(uid)));
            for (nb, interval) in polled {
                let due = next.entry(nb.uid().unwrap_or_default()).or_insert(now + interval);
                if now < *due {
                    continue;
                }
                *due = now + interval;
                self.ask(&nb).await;
            }
        }
    }

    async fn ask(&self, nb: &NodeBuild) {
        let (ns, name) = (nb.namespace().unwrap_or_default(), nb.name_any());
        let Some(mut status) = nb.status.clone() else { return };
        let recipe = &nb.spec.build;
        let commit = match revision::token(&self.client, &ns, recipe).await {
            Ok(token) => revision::resolve(recipe, token.as_deref()).await,
            Err(refused) => Err(refused),
        };
        let commit = match commit {
            Ok(Some(commit)) => commit,
            Ok(None) => return,
            Err((reason, message)) => {
                warn!(namespace = %ns, node_build = %name, reason, message, "cannot poll the git ref");
                return;
            }
        };
        let Some(source) = status.source.as_mut() else { return };
        if source.revision.as_deref() == Some(commit.as_str()) {
            return;
        }
        info!(namespace = %ns, node_build = %name, commit = %commit, "the git ref moved");
        source.latest = Some(commit);
        StatusWriter::new(&self.client, nb).write(&status).await;
    }
}

/// The attempts to poll, with their interval: per build on this node, the latest attempt of
/// its newest generation, if it finished (succeeded, or failed at a commit), polls, knows the
/// commit it built, and has not found the ref moved yet.
pub fn polled(node_builds: &[Arc<NodeBuild>]) -> Vec<(Arc<NodeBuild>, Duration)> {
    let mut latest: HashMap<(String, String), &Arc<NodeBuild>> = HashMap::new();
    for nb in node_builds {
        let key = (nb.namespace().unwrap_or_default(), nb.spec.image_build.clone());
        let order = |n: &NodeBuild| (n.spec.generation, n.spec.attempt);
        let slot = latest.entry(key).or_insert(nb);
        if order(nb) > order(slot) {
            *slot = nb;
        }
    }
    latest
        .into_values()
        .filter_map(|nb| {
            let BuildSource::Git(git) = &nb.spec.build.source else {
                return None;
            };
            let interval = git.poll.as_ref()?.interval_seconds;
            let status = nb.status.as_ref()?;
            let finished = matches!(status.phase, Some(NodeBuildPhase::Succeeded | NodeBuildPhase::Failed));
            let source = status.source.as_ref()?;
            let waiting = source.revision.is_some() && source.latest.is_none();
            (finished && waiting && !nb.spec.remove_image).then(|| {
                (
                    nb.clone(),
                    Duration::from_secs(u64::try_from(interval).unwrap_or(60).max(5)),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::image_build::SourceStatus;
    use crate::api::node_build::{NodeBuildSpec, NodeBuildStatus};
    use crate::api::recipe::{BuildRecipe, GitPoll, GitSource};

    fn nb(build: &str, generation: i64, attempt: i32, phase: NodeBuildPhase, latest: Option<&str>) -> Arc<NodeBuild> {
        let mut nb = NodeBuild::new(
            &format!("{build}-{generation}-{attempt}"),
            NodeBuildSpec {
                image_build: build.into(),
                generation,
                attempt,
                build: BuildRecipe {
                    source: BuildSource::Git(GitSource {
                        url: "git://127.0.0.1/r.git".into(),
                        poll: Some(GitPoll { interval_seconds: 30 }),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        nb.metadata.namespace = Some("ns".into());
        nb.status = Some(NodeBuildStatus {
            phase: Some(phase),
            source: Some(SourceStatus {
                revision: Some("a".repeat(40)),
                latest: latest.map(str::to_owned),
            }),
            ..Default::default()
        });
        Arc::new(nb)
    }

    fn names(all: &[Arc<NodeBuild>]) -> Vec<String> {
        let mut n: Vec<String> = polled(all).iter().map(|(nb, _)| nb.name_any()).collect();
        n.sort();
        n
    }

    #[test]
    fn polls_each_builds_latest_finished_attempt_until_the_ref_moved() {
        let all = [
            nb("a", 1, 1, NodeBuildPhase::Succeeded, None),
            nb("a", 2, 1, NodeBuildPhase::Succeeded, None),
            nb("b", 1, 1, NodeBuildPhase::Succeeded, Some("b")),
            nb("b", 1, 2, NodeBuildPhase::Failed, None),
            nb("c", 1, 1, NodeBuildPhase::Running, None),
            nb("d", 1, 1, NodeBuildPhase::Succeeded, Some("d")),
        ];
        assert_eq!(
            names(&all),
            ["a-2-1", "b-1-2"],
            "the newest generation's latest attempt; a failed commit too; none running or already moved"
        );
        assert_eq!(polled(&all)[0].1, Duration::from_secs(30));
    }

    #[test]
    fn builds_without_poll_are_not_asked() {
        let mut plain = (*nb("a", 1, 1, NodeBuildPhase::Succeeded, None)).clone();
        if let BuildSource::Git(g) = &mut plain.spec.build.source {
            g.poll = None;
        }
        assert!(polled(&[Arc::new(plain)]).is_empty());
    }
}

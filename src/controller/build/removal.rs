//! `cleanup: Delete` at deletion: which attempts' images to remove, and what to tell the user.
//! Pure; the reconcile asks the agents (`spec.removeImage`), waits for their answers
//! (`status.imageRemoval`, bounded by [`REMOVAL_GRACE`]) and publishes one event per node.

use std::time::Duration;

use kube::ResourceExt;

use crate::api::node_build::{NodeBuild, RemovalOutcome, newest_succeeded};

/// How long deletion waits for the agents' answers, from the deletion request. A node whose
/// agent does not answer by then keeps the image, and an event says so.
pub const REMOVAL_GRACE: Duration = Duration::from_secs(60);

/// Where a deletion with `cleanup: Delete` stands.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removals {
    /// Attempts to ask (`spec.removeImage` not set yet).
    pub ask: Vec<String>,
    /// Asked attempts with no answer yet, as (attempt, node).
    pub waiting: Vec<(String, String)>,
    /// One event per answered node: (warning, reason, message).
    pub events: Vec<(bool, &'static str, String)>,
}

/// Judges the build's attempts: the newest generation's succeeded ones hold its image.
pub fn judge(node_builds: &[NodeBuild]) -> Removals {
    let mut r = Removals::default();
    for nb in newest_succeeded(node_builds) {
        let answer = nb.status.as_ref().and_then(|s| s.image_removal.as_ref());
        match answer {
            None if !nb.spec.remove_image => r.ask.push(nb.name_any()),
            None => r.waiting.push((nb.name_any(), nb.spec.node_name.clone())),
            Some(a) => {
                let (warning, reason) = match a.outcome {
                    RemovalOutcome::Removed => (false, "ImageRemoved"),
                    RemovalOutcome::Kept => (true, "ImageKept"),
                    RemovalOutcome::Failed => (true, "ImageRemovalFailed"),
                };
                r.events.push((warning, reason, a.message.clone()));
            }
        }
    }
    r
}

/// The event for a node whose agent did not answer within [`REMOVAL_GRACE`].
pub fn unanswered(node: &str) -> (bool, &'static str, String) {
    (
        true,
        "ImageRemovalFailed",
        format!(
            "node {node}'s agent did not answer within {}s, so the image stays there; remove it with the runtime's own tool (crictl rmi, docker rmi)",
            REMOVAL_GRACE.as_secs()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::node_build::{ImageRemoval, NodeBuildPhase, NodeBuildSpec, NodeBuildStatus};

    fn nb(name: &str, generation: i64, node: &str, phase: NodeBuildPhase) -> NodeBuild {
        let mut nb = NodeBuild::new(
            name,
            NodeBuildSpec {
                image_build: "web".into(),
                node_name: node.into(),
                generation,
                attempt: 1,
                ..Default::default()
            },
        );
        nb.metadata.namespace = Some("ns".into());
        nb.status = Some(NodeBuildStatus {
            phase: Some(phase),
            ..Default::default()
        });
        nb
    }

    #[test]
    fn asks_the_newest_successes_waits_for_answers_and_reports_each_node() {
        let old = nb("web-1-1", 1, "a", NodeBuildPhase::Succeeded);
        let failed = nb("web-2-1", 2, "a", NodeBuildPhase::Failed);
        let fresh = nb("web-2-2", 2, "a", NodeBuildPhase::Succeeded);
        let mut asked = nb("web-2-3", 2, "b", NodeBuildPhase::Succeeded);
        asked.spec.remove_image = true;
        let mut kept = nb("web-2-4", 2, "c", NodeBuildPhase::Succeeded);
        kept.spec.remove_image = true;
        if let Some(s) = kept.status.as_mut() {
            s.image_removal = Some(ImageRemoval {
                outcome: RemovalOutcome::Kept,
                message: "kept x on node c: used by pod(s) ns/p".into(),
            });
        }
        let all = [old, failed, fresh, asked, kept];
        let r = judge(&all);
        assert_eq!(r.ask, ["web-2-2"], "only the newest generation's successes are asked");
        assert_eq!(r.waiting, [("web-2-3".to_owned(), "b".to_owned())]);
        assert_eq!(
            r.events,
            [(true, "ImageKept", "kept x on node c: used by pod(s) ns/p".to_owned())]
        );
    }

    #[test]
    fn nothing_built_means_nothing_to_remove() {
        let all = [nb("web-1-1", 1, "a", NodeBuildPhase::Failed)];
        assert_eq!(judge(&all), Removals::default());
    }
}

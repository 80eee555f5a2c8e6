//! Why a builder pod is not running, in the kubelet's words, for the pool's status.
//!
//! Pure: reads a Pod as the apiserver returns it. A builder that never heartbeats is otherwise
//! a mystery to the pool's user ("no heartbeat"), while the kubelet already knows the cause:
//! an image it cannot pull, a container that keeps crashing, a pod no node can take.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Waiting reasons that are the kubelet's transient bookkeeping rather than a problem.
const ROUTINE_WAITING: &[&str] = &["ContainerCreating", "PodInitializing"];

/// What keeps `pod` from running its containers, if the kubelet or scheduler has said.
pub fn problem(pod: &Pod) -> Option<String> {
    let name = pod.metadata.name.as_deref().unwrap_or("builder pod");
    let status = pod.status.as_ref()?;
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unscheduled {
        let why = c.message.clone().or(c.reason.clone()).unwrap_or_default();
        return Some(format!("pod {name} is not scheduled: {why}"));
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    let problems: Vec<String> = containers.filter_map(container_problem).collect();
    (!problems.is_empty()).then(|| format!("pod {name}: {}", problems.join("; ")))
}

fn container_problem(c: &ContainerStatus) -> Option<String> {
    let state = c.state.as_ref()?;
    let waiting = state.waiting.as_ref()?;
    let reason = waiting.reason.as_deref().unwrap_or("Waiting");
    if ROUTINE_WAITING.contains(&reason) {
        return None;
    }
    let mut text = format!("container {} is waiting: {reason}", c.name);
    if let Some(message) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
        text.push_str(&format!(" ({})", shorten(message)));
    }
    // A crash loop's cause is in how the container last ended.
    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    if let Some(t) = last {
        text.push_str(&format!("; last exit code {}", t.exit_code));
        if let Some(m) = t.message.as_deref().or(t.reason.as_deref()).filter(|m| !m.is_empty()) {
            text.push_str(&format!(": {}", shorten(m)));
        }
    }
    Some(text)
}

/// Keeps status readable: kubelet messages can carry whole registry responses.
fn shorten(s: &str) -> String {
    const MAX: usize = 300;
    let s = s.trim();
    if s.chars().count() <= MAX {
        return s.to_owned();
    }
    let cut: String = s.chars().take(MAX).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "kiln-builder-default-containerd-x1"},
            "status": status,
        }))
        .expect("a Pod")
    }

    #[test]
    fn an_image_that_cannot_be_pulled_is_named_with_the_kubelets_message() {
        let p = pod(json!({"containerStatuses": [
            {"name": "buildkitd", "image": "moby/buildkit:v0.17.3", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"moby/buildkit:v0.17.3\""}}},
            {"name": "agent", "image": "kiln", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"running": {}}},
        ]}));
        assert_eq!(
            problem(&p).as_deref(),
            Some(
                "pod kiln-builder-default-containerd-x1: container buildkitd is waiting: ImagePullBackOff \
                 (Back-off pulling image \"moby/buildkit:v0.17.3\")"
            )
        );
    }

    #[test]
    fn a_crash_loop_says_how_the_container_last_ended() {
        let p = pod(json!({"containerStatuses": [
            {"name": "buildkitd", "image": "b", "imageID": "", "ready": false, "restartCount": 4,
             "state": {"waiting": {"reason": "CrashLoopBackOff", "message": ""}},
             "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "failed to mount overlay: permission denied"}}},
        ]}));
        let text = problem(&p).expect("a problem");
        assert!(text.contains("CrashLoopBackOff"), "{text}");
        assert!(text.contains("last exit code 1: failed to mount overlay"), "{text}");
    }

    #[test]
    fn an_unschedulable_pod_gives_the_schedulers_reason() {
        let p = pod(json!({"conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes are available: 3 Insufficient memory."},
        ]}));
        assert_eq!(
            problem(&p).as_deref(),
            Some(
                "pod kiln-builder-default-containerd-x1 is not scheduled: 0/3 nodes are available: 3 Insufficient memory."
            )
        );
    }

    #[test]
    fn starting_and_running_pods_have_no_problem() {
        let starting = pod(json!({"containerStatuses": [
            {"name": "agent", "image": "kiln", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ContainerCreating"}}},
        ]}));
        assert_eq!(problem(&starting), None);
        let running = pod(json!({"conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "agent", "image": "kiln", "imageID": "", "ready": true, "restartCount": 0,
             "state": {"running": {}}}]}));
        assert_eq!(problem(&running), None);
    }

    #[test]
    fn long_messages_are_shortened() {
        let long = "x".repeat(1000);
        let p = pod(json!({"containerStatuses": [
            {"name": "buildkitd", "image": "b", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ErrImagePull", "message": long}}},
        ]}));
        let text = problem(&p).expect("a problem");
        assert!(text.chars().count() < 400, "{}", text.len());
        assert!(text.ends_with("…)"), "{text}");
    }
}

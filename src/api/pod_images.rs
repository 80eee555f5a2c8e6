//! Whether a build would replace an image that a pod of another namespace uses on the node.
//! Pure: the agent asks with the pods its watch of the node keeps.
//!
//! The image-name policy says which names a namespace may write; this guard adds that even an
//! allowed name is not written while a live pod of another namespace runs (or is about to run)
//! the image under it, since that pod's next restart would run the new image. Pods of the
//! build's own namespace do not count: rebuilding what one's own pods run is the point. A pod
//! that names its image by digest does not count either: a digest names content, which no build
//! can change.

use std::borrow::Borrow;

use k8s_openapi::api::core::v1::{Pod, PodSpec};

use super::image_pattern::Subject;

/// A pod of another namespace that uses a name the build would write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUse {
    /// The name, normalised (`docker.io/library/nginx:latest`).
    pub image: String,
    /// The pod, as `namespace/name`.
    pub pod: String,
}

/// The first pod in `pods` that is not finished, lives outside `namespace` and uses one of
/// `images` (compared normalised, so `nginx` and `docker.io/library/nginx:latest` are one name).
/// Names that do not parse are left to the policy, which refuses them.
pub fn used_elsewhere<P: Borrow<Pod>>(namespace: &str, images: &[&str], pods: &[P]) -> Option<InUse> {
    let wanted: Vec<String> = images
        .iter()
        .filter_map(|i| Subject::parse(i).ok())
        .map(|s| s.normalised().to_owned())
        .collect();
    pods.iter()
        .map(Borrow::borrow)
        .filter(|p: &&Pod| p.metadata.namespace.as_deref().is_some_and(|ns| ns != namespace))
        .filter(|p| !finished(p))
        .find_map(|p| {
            let spec = p.spec.as_ref()?;
            let image = pod_images(spec)
                .filter_map(tag_reference)
                .find(|used| wanted.contains(used))?;
            Some(InUse {
                image,
                pod: format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default()
                ),
            })
        })
}

/// The live pods bound to `node` that use one of `images` by tag (normalised), or `digest` by
/// digest, as `namespace/name`, sorted.
pub fn users<P: Borrow<Pod>>(images: &[&str], digest: Option<&str>, node: &str, pods: &[P]) -> Vec<String> {
    let wanted: Vec<String> = images
        .iter()
        .filter_map(|i| Subject::parse(i).ok())
        .map(|s| s.normalised().to_owned())
        .collect();
    let uses = |image: &str| match image.split_once('@') {
        Some((_, d)) => digest == Some(d),
        None => tag_reference(image).is_some_and(|n| wanted.contains(&n)),
    };
    let mut found: Vec<String> = pods
        .iter()
        .map(Borrow::borrow)
        .filter(|p: &&Pod| !finished(p))
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node))
        .filter(|p| p.spec.as_ref().is_some_and(|s| pod_images(s).any(uses)))
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    found.sort();
    found
}

/// Succeeded and Failed pods run nothing again.
fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Every image the pod's containers name: regular, init and ephemeral.
fn pod_images(spec: &PodSpec) -> impl Iterator<Item = &str> {
    let regular = spec.containers.iter().filter_map(|c| c.image.as_deref());
    let init = spec.init_containers.iter().flatten().filter_map(|c| c.image.as_deref());
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .filter_map(|c| c.image.as_deref());
    regular.chain(init).chain(ephemeral)
}

/// The normalised name of a reference by tag; `None` for one by digest (nothing can replace
/// what it names) and for one that does not parse.
fn tag_reference(image: &str) -> Option<String> {
    if image.contains('@') {
        return None;
    }
    Subject::parse(image).ok().map(|s| s.normalised().to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(ns: &str, name: &str, phase: Option<&str>, spec: serde_json::Value) -> Pod {
        let mut p = json!({"metadata": {"namespace": ns, "name": name}, "spec": spec});
        if let Some(phase) = phase {
            p["status"] = json!({"phase": phase});
        }
        serde_json::from_value(p).expect("pod")
    }

    fn running(ns: &str, name: &str, image: &str) -> Pod {
        pod(
            ns,
            name,
            Some("Running"),
            json!({"containers": [{"name": "c", "image": image}]}),
        )
    }

    #[test]
    fn another_namespaces_pod_holds_the_name_in_any_spelling() {
        let pods = [running("team-b", "web", "nginx")];
        let found = used_elsewhere("team-a", &["docker.io/library/nginx:latest"], &pods);
        assert_eq!(
            found,
            Some(InUse {
                image: "docker.io/library/nginx:latest".into(),
                pod: "team-b/web".into()
            })
        );
        assert!(
            used_elsewhere("team-a", &["nginx:1.27"], &pods).is_none(),
            "another tag is another name"
        );
    }

    #[test]
    fn own_namespace_and_finished_pods_do_not_count() {
        let pods = [
            running("team-a", "web", "kiln.local/team-a/web:dev"),
            pod(
                "team-b",
                "job",
                Some("Succeeded"),
                json!({"containers": [{"name": "c", "image": "kiln.local/team-a/web:dev"}]}),
            ),
        ];
        assert!(used_elsewhere("team-a", &["kiln.local/team-a/web:dev"], &pods).is_none());
    }

    #[test]
    fn pending_pods_and_init_and_ephemeral_containers_count() {
        let spec = json!({"containers": [{"name": "c", "image": "app:1"}],
                          "initContainers": [{"name": "i", "image": "tools:1"}],
                          "ephemeralContainers": [{"name": "e", "image": "debug:1"}]});
        let pods = [pod("team-b", "web", None, spec)];
        for image in ["tools:1", "debug:1", "app:1"] {
            assert!(used_elsewhere("team-a", &[image], &pods).is_some(), "{image}");
        }
    }

    #[test]
    fn a_pod_pinned_by_digest_does_not_block_a_build_of_the_tag() {
        let digest = "sha256:0123456789012345678901234567890123456789012345678901234567890123";
        let pods = [running("team-b", "web", &format!("kiln.local/team-a/web:dev@{digest}"))];
        assert!(used_elsewhere("team-a", &["kiln.local/team-a/web:dev"], &pods).is_none());
    }

    #[test]
    fn users_are_the_live_pods_on_the_node_by_tag_or_digest() {
        let digest = "sha256:0123456789012345678901234567890123456789012345678901234567890123";
        let on = |node: &str, mut p: Pod| {
            if let Some(s) = p.spec.as_mut() {
                s.node_name = Some(node.into());
            }
            p
        };
        let pods = [
            on("n1", running("b", "by-tag", "kiln.local/a/web:dev")),
            on("n1", running("c", "by-digest", &format!("kiln.local/a/web@{digest}"))),
            on("n2", running("b", "elsewhere", "kiln.local/a/web:dev")),
            on("n1", running("b", "other", "kiln.local/a/api:dev")),
        ];
        assert_eq!(
            users(&["kiln.local/a/web:dev"], Some(digest), "n1", &pods),
            ["b/by-tag", "c/by-digest"]
        );
        assert!(users(&["kiln.local/a/web:dev"], None, "n3", &pods).is_empty());
    }

    #[test]
    fn every_name_of_the_build_is_checked() {
        let pods = [running("team-b", "web", "registry.example/team-b/web:2")];
        let found = used_elsewhere(
            "team-a",
            &["registry.example/team-a/web:2", "registry.example/team-b/web:2"],
            &pods,
        );
        assert_eq!(found.map(|f| f.pod), Some("team-b/web".to_owned()));
    }
}

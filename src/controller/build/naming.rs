//! Names and labels of the NodeBuilds an ImageBuild creates. Deterministic names make dispatch
//! idempotent: a controller that restarts (or reads a stale cache) and tries to create the same
//! attempt again gets `AlreadyExists` instead of a second build.

use crate::api::recipe::BuildRecipe;

/// Label with a hash of the source and Dockerfile, for cache affinity.
pub const CACHE_KEY_LABEL: &str = "kiln.dev/cache-key";
/// Label with the ImageBuild generation an attempt builds.
pub const GENERATION_LABEL: &str = "kiln.dev/generation";

/// `<build>-<generation>-<attempt>` for single-node builds (the node is not part of the name,
/// so two controllers cannot create the same attempt on two nodes); with `allNodes` each node
/// has its own attempts: `<build>-<generation>-<node hash>-<attempt>`.
pub fn node_build_name(build: &str, generation: i64, node: Option<&str>, attempt: i32) -> String {
    let suffix = match node {
        Some(node) => format!(
            "-{generation}-{}-{attempt}",
            crate::api::short_sha256(node.as_bytes(), 3)
        ),
        None => format!("-{generation}-{attempt}"),
    };
    let room = 253 - suffix.len();
    let base = if build.len() > room {
        build[..room].trim_end_matches(['-', '.'])
    } else {
        build
    };
    format!("{base}{suffix}")
}

/// Identifies "the same source and Dockerfile" across ImageBuilds.
pub fn cache_key(recipe: &BuildRecipe) -> String {
    let material = serde_json::json!({
        "source": recipe.source,
        "dockerfile": recipe.dockerfile,
        "inline": recipe.dockerfile_inline,
        "target": recipe.target,
    });
    crate::api::short_sha256(material.to_string().as_bytes(), 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_and_fit() {
        assert_eq!(node_build_name("web", 3, None, 2), "web-3-2");
        let a = node_build_name("web", 1, Some("node-a"), 1);
        assert_eq!(a, node_build_name("web", 1, Some("node-a"), 1));
        assert_ne!(a, node_build_name("web", 1, Some("node-b"), 1));
        assert!(node_build_name(&"x".repeat(300), 1, Some("n"), 1).len() <= 253);
    }

    #[test]
    fn cache_key_follows_source_and_dockerfile_only() {
        let mut r = BuildRecipe {
            image: "a".into(),
            ..Default::default()
        };
        let k = cache_key(&r);
        r.image = "b".into();
        assert_eq!(cache_key(&r), k, "the image name does not change what is built");
        r.dockerfile_inline = Some("FROM scratch".into());
        assert_ne!(cache_key(&r), k);
    }
}

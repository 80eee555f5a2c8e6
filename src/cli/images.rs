//! `kiln images`: the images kiln built, per node: which build made them, their digest and
//! size, whether the node still has them (as its agent last found), whether they are pinned,
//! and which pods there use them.
//! A table, `-o wide` (every name and the full digest), or `-o json` for scripts.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::exit;
use super::kube_args::KubeArgs;
use crate::api::ImageBuild;
use crate::api::node_build::NodeBuildPhase;
use crate::api::pod_images;

/// Output formats of `kiln images`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// A table.
    #[default]
    Text,
    /// The table with every image name and the full digest.
    Wide,
    /// JSON, for scripts.
    Json,
}

/// `kiln images` flags.
#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// Only images on this node.
    #[arg(long)]
    node: Option<String>,
    /// Builds of every namespace, not just the current one.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    output: Format,
    #[command(flatten)]
    kube: KubeArgs,
}

/// One image on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRow {
    /// The node.
    pub node: String,
    /// Every name the build wrote (its image first).
    pub names: Vec<String>,
    /// The ImageBuild, `namespace/name`.
    pub build: String,
    /// The digest on that node.
    pub digest: Option<String>,
    /// False once the node's agent found it gone from the store.
    pub present: bool,
    /// When the agent found it gone.
    pub missing_since: Option<String>,
    /// Live pods on that node using it, `namespace/name`; `None` when pods cannot be read.
    pub pods: Option<Vec<String>>,
    /// Its size in bytes, as the node's store reported it after the build.
    pub size: Option<i64>,
    /// `Pinned`, `Unsupported` or `Failed` for builds with `spec.pin`; `None` without.
    pub pinned: Option<crate::api::node_build::PinState>,
}

/// The rows: each succeeded node result of each build, optionally on one node, sorted by node
/// and name. `pods` is `None` when the caller may not list them.
pub fn rows(builds: &[ImageBuild], pods: Option<&[Pod]>, node: Option<&str>) -> Vec<ImageRow> {
    let mut rows: Vec<ImageRow> = builds
        .iter()
        .flat_map(|b| {
            let names: Vec<String> = b.spec.recipe.image_names().map(str::to_owned).collect();
            let build = format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any());
            let results = b.status.as_ref().map(|s| s.nodes.clone()).unwrap_or_default();
            results
                .into_iter()
                .filter(|n| n.phase == Some(NodeBuildPhase::Succeeded))
                .filter(|n| node.is_none_or(|want| n.name == want))
                .map(move |n| {
                    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                    ImageRow {
                        pods: pods.map(|p| pod_images::users(&refs, n.digest.as_deref(), &n.name, p)),
                        node: n.name,
                        names: names.clone(),
                        build: build.clone(),
                        digest: n.digest,
                        present: n.missing_since.is_none(),
                        missing_since: n.missing_since.map(|t| t.0.to_string()),
                        size: n.image_size,
                        pinned: n.pin.map(|p| p.state),
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect();
    rows.sort_by(|a, b| (&a.node, &a.names).cmp(&(&b.node, &b.names)));
    rows
}

pub(super) fn run(args: Args) -> u8 {
    super::block_on(async move {
        let conn = match args.kube.connect_or_exit().await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let (builds, pods): (Api<ImageBuild>, Api<Pod>) = if args.all_namespaces {
            (Api::all(conn.client.clone()), Api::all(conn.client))
        } else {
            (
                Api::namespaced(conn.client.clone(), &conn.namespace),
                Api::all(conn.client),
            )
        };
        let builds = match builds.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                eprintln!("error: cannot list ImageBuilds: {e}");
                return exit::FAILURE;
            }
        };
        // Pods of every namespace can use an image; without the right to list them, say so.
        let pods = match pods.list(&ListParams::default().match_any()).await {
            Ok(l) => Some(l.items),
            Err(e) => {
                eprintln!("note: cannot list pods ({e}); the PODS column is unknown");
                None
            }
        };
        let rows = rows(&builds, pods.as_deref(), args.node.as_deref());
        match args.output {
            Format::Json => match serde_json::to_string_pretty(&rows) {
                Ok(text) => println!("{text}"),
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::FAILURE;
                }
            },
            Format::Text => print_table(&rows, false),
            Format::Wide => print_table(&rows, true),
        }
        exit::OK
    })
}

fn print_table(rows: &[ImageRow], wide: bool) {
    let short = |d: &Option<String>| {
        d.as_deref()
            .map(|d| d.split_once(':').map_or(d, |(_, h)| h).chars().take(12).collect())
            .unwrap_or_default()
    };
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.node.clone(),
                if wide {
                    r.names.join(",")
                } else {
                    r.names.first().cloned().unwrap_or_default()
                },
                r.build.clone(),
                if wide {
                    r.digest.clone().unwrap_or_default()
                } else {
                    short(&r.digest)
                },
                r.size.map_or_else(|| "?".to_owned(), human_size),
                match &r.missing_since {
                    None => "yes".to_owned(),
                    Some(t) => format!("missing since {t}"),
                },
                r.pinned.map_or_else(|| "-".to_owned(), |p| format!("{p:?}")),
                r.pods.as_ref().map_or_else(
                    || "?".to_owned(),
                    |p| if p.is_empty() { "-".into() } else { p.join(",") },
                ),
            ]
        })
        .collect();
    super::table::print(
        &["NODE", "IMAGE", "BUILD", "DIGEST", "SIZE", "PRESENT", "PINNED", "PODS"],
        &lines,
    );
}

/// `12.3MiB`, `512KiB`, `100B`.
fn human_size(bytes: i64) -> String {
    let b = bytes as f64;
    if bytes >= 1 << 30 {
        format!("{:.1}GiB", b / f64::from(1u32 << 30))
    } else if bytes >= 1 << 20 {
        format!("{:.1}MiB", b / f64::from(1u32 << 20))
    } else if bytes >= 1 << 10 {
        format!("{}KiB", bytes >> 10)
    } else {
        format!("{bytes}B")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn build(ns: &str, name: &str, image: &str, nodes: serde_json::Value) -> ImageBuild {
        serde_json::from_value(json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"image": image, "additionalTags": [format!("{image}-extra")], "source": {"http": {"url": "http://x/c.tar"}}},
            "status": {"nodes": nodes}}))
        .expect("ImageBuild")
    }

    #[test]
    fn one_row_per_succeeded_node_with_presence_and_users() {
        let builds = [
            build(
                "a",
                "web",
                "kiln.local/a/web:1",
                json!([
                {"name": "n2", "phase": "Succeeded", "digest": "sha256:22", "imageSize": 5_000_000,
                 "pin": {"state": "Unsupported", "message": "Docker's image store has no pinning"}},
                {"name": "n1", "phase": "Succeeded", "digest": "sha256:11", "missingSince": "2026-12-03T10:00:00Z"},
                {"name": "n3", "phase": "Failed"}]),
            ),
            build(
                "a",
                "queued",
                "kiln.local/a/api:1",
                json!([{"name": "n1", "phase": "Queued"}]),
            ),
        ];
        let pod: Pod = serde_json::from_value(json!({"metadata": {"namespace": "b", "name": "user"},
            "spec": {"nodeName": "n2", "containers": [{"name": "c", "image": "kiln.local/a/web:1"}]}}))
        .expect("pod");
        let all = rows(&builds, Some(std::slice::from_ref(&pod)), None);
        let summary: Vec<(&str, bool, Option<Vec<String>>)> = all
            .iter()
            .map(|r| (r.node.as_str(), r.present, r.pods.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                ("n1", false, Some(vec![])),
                ("n2", true, Some(vec!["b/user".to_owned()]))
            ]
        );
        assert_eq!(all[0].names, ["kiln.local/a/web:1", "kiln.local/a/web:1-extra"]);
        assert_eq!(all[0].build, "a/web");
        let on_n2 = rows(&builds, None, Some("n2"));
        assert_eq!(on_n2.len(), 1);
        assert_eq!(on_n2[0].pods, None, "unknown without the right to list pods");
        assert_eq!(on_n2[0].size, Some(5_000_000));
        assert_eq!(on_n2[0].pinned, Some(crate::api::node_build::PinState::Unsupported));
        assert_eq!(
            (all[0].size, all[0].pinned),
            (None, None),
            "unknown size, not asked to pin"
        );
    }

    #[test]
    fn sizes_read_like_docker_images() {
        assert_eq!(human_size(100), "100B");
        assert_eq!(human_size(4096), "4KiB");
        assert_eq!(human_size(5_000_000), "4.8MiB");
        assert_eq!(human_size(3 << 30), "3.0GiB");
    }
}

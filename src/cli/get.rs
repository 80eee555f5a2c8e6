//! `kiln get [NAME]`: ImageBuilds with their phase, node(s), digest and age, as a table or
//! `-o json` (an array of objects, for scripts).

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::json;

use super::kube_args::KubeArgs;
use super::{Output, exit};
use crate::api::ImageBuild;

/// `kiln get` flags.
#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// One ImageBuild (default: all in the namespace, newest last).
    name: Option<String>,
    /// Only builds with these labels, e.g. `kiln.dev/image-name=app`.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(flatten)]
    kube: KubeArgs,
}

pub(super) fn run(args: Args) -> u8 {
    super::block_on(async move {
        let conn = match args.kube.connect_or_exit().await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let api: Api<ImageBuild> = Api::namespaced(conn.client, &conn.namespace);
        let builds = match &args.name {
            Some(name) => api.get(name).await.map(|b| vec![b]),
            None => {
                let params = args
                    .selector
                    .as_deref()
                    .map_or_else(ListParams::default, |s| ListParams::default().labels(s));
                api.list(&params).await.map(|l| l.items)
            }
        };
        let mut builds = match builds {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: cannot read ImageBuilds in namespace {}: {e}", conn.namespace);
                return exit::FAILURE;
            }
        };
        builds.sort_by_key(|b| b.metadata.creation_timestamp.as_ref().map(|t| t.0));
        match args.output {
            Output::Json => {
                let rows: Vec<_> = builds.iter().map(row_json).collect();
                println!("{:#}", json!(rows));
            }
            Output::Text => print_table(&builds),
        }
        exit::OK
    })
}

fn row_json(b: &ImageBuild) -> serde_json::Value {
    let status = b.status.clone().unwrap_or_default();
    json!({
        "name": b.name_any(),
        "namespace": b.namespace(),
        "image": b.spec.recipe.image,
        "phase": status.phase,
        "reason": status.reason,
        "nodes": status.nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
        "digest": status.digest,
        "digestKind": status.digest_kind,
        "created": b.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
    })
}

fn print_table(builds: &[ImageBuild]) {
    let now = Timestamp::now();
    let rows: Vec<Vec<String>> = builds
        .iter()
        .map(|b| {
            let s = b.status.clone().unwrap_or_default();
            let age = b
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| age(now.duration_since(t.0).as_secs()))
                .unwrap_or_default();
            vec![
                b.name_any(),
                b.spec.recipe.image.clone(),
                s.phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "Pending".into()),
                s.node_names.unwrap_or_default(),
                s.short_digest.unwrap_or_default(),
                age,
            ]
        })
        .collect();
    super::table::print(&["NAME", "IMAGE", "PHASE", "NODES", "DIGEST", "AGE"], &rows);
}

/// `45s`, `3m`, `5h`, `2d`, as kubectl shows ages.
fn age(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

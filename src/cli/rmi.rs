//! `kiln rmi NAME…`: removes images kiln built from the nodes' stores, through the same path as
//! deleting an ImageBuild with `cleanup: Delete`. An image belongs to the ImageBuild(s) that
//! name it, and an ImageBuild would build a removed image again (`restore: Rebuild`), so `rmi`
//! deletes those ImageBuilds with the `kiln.dev/cleanup: Delete` annotation; each node's agent
//! removes the image unless a live pod there uses it. Prints what each node did.
//!
//! Exit codes: 0 removed everywhere, 1 kept or not removed on some node (or an API error),
//! 2 no ImageBuild in the namespace names the image (nothing changed).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use serde::Serialize;
use serde_json::json;

use super::exit;
use super::kube_args::KubeArgs;
use crate::api::ImageBuild;
use crate::api::image_build::CLEANUP_ANNOTATION;
use crate::api::reference::Reference;

/// Pause before watching a deleted build again after its watch failed.
const RETRY: Duration = Duration::from_millis(500);

/// `kiln rmi` flags.
#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// Image names, as the ImageBuilds name them (`app:dev` and `docker.io/library/app:dev`
    /// are the same).
    #[arg(required = true)]
    images: Vec<String>,
    /// How long to wait for the nodes' answers.
    #[arg(long, default_value = "2m", value_parser = super::parse_duration)]
    timeout: Duration,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = super::Output::Text)]
    output: super::Output,
    #[command(flatten)]
    kube: KubeArgs,
}

/// What happened to one build's image on one node, from the controller's event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The ImageBuild deleted for it.
    pub build: String,
    /// `ImageRemoved`, `ImageKept` or `ImageRemovalFailed` (`Unknown` if no word came).
    pub result: String,
    /// The agent's words: names, node, and the pods that keep it.
    pub message: String,
}

/// The ImageBuilds among `builds` that name any of `images` (compared normalised).
pub fn owners<'a>(builds: &'a [ImageBuild], images: &[String]) -> Vec<&'a ImageBuild> {
    let norm = |n: &str| Reference::parse(n).map(|r| r.tagged().to_string()).ok();
    let wanted: Vec<String> = images.iter().filter_map(|i| norm(i)).collect();
    builds
        .iter()
        .filter(|b| {
            b.spec
                .recipe
                .image_names()
                .any(|n| norm(n).is_some_and(|n| wanted.contains(&n)))
        })
        .collect()
}

pub(super) fn run(args: Args) -> u8 {
    if let Some(bad) = args.images.iter().find(|i| Reference::parse(i).is_err()) {
        eprintln!("error: {bad:?} is not an image name");
        return exit::INVALID;
    }
    super::block_on(async move {
        let conn = match args.kube.connect_or_exit().await {
            Ok(c) => c,
            Err(code) => return code,
        };
        let api: Api<ImageBuild> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let all = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) => {
                eprintln!("error: cannot list ImageBuilds in namespace {}: {e}", conn.namespace);
                return exit::FAILURE;
            }
        };
        let owners = owners(&all, &args.images);
        if owners.is_empty() {
            eprintln!(
                "error: no ImageBuild in namespace {} names {}; `kiln images` lists what kiln built",
                conn.namespace,
                args.images.join(", ")
            );
            return exit::INVALID;
        }
        let events: Api<Event> = Api::namespaced(conn.client.clone(), &conn.namespace);
        let deadline = Instant::now() + args.timeout;
        // Each build waits on its own nodes: all at once, answers in the order of the list.
        let removals = owners.into_iter().map(|b| remove_through(&api, &events, b, deadline));
        let mut outcomes = Vec::new();
        let mut failed = false;
        for result in futures::future::join_all(removals).await {
            match result {
                Ok(mut o) => outcomes.append(&mut o),
                Err(message) => {
                    eprintln!("error: {message}");
                    failed = true;
                }
            }
        }
        let code = print(&outcomes, args.output);
        if failed { exit::FAILURE } else { code }
    })
}

/// Deletes `build` asking for its image's removal, waits until it is gone, and returns the
/// controller's words per node.
async fn remove_through(
    api: &Api<ImageBuild>,
    events: &Api<Event>,
    build: &ImageBuild,
    deadline: Instant,
) -> Result<Vec<Outcome>, String> {
    let name = build.name_any();
    let uid = build.uid().unwrap_or_default();
    let patch = json!({"metadata": {"annotations": {CLEANUP_ANNOTATION: "Delete"}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("cannot mark ImageBuild {name} for image removal: {e}"))?;
    eprintln!("deleting ImageBuild {name}, removing its image from the nodes it was built on…");
    api.delete(&name, &DeleteParams::default())
        .await
        .map_err(|e| format!("cannot delete ImageBuild {name}: {e}"))?;
    deleted(api, &name, &uid, deadline).await?;
    let selector = format!("involvedObject.uid={uid}");
    let list = events
        .list(&ListParams::default().fields(&selector))
        .await
        .map_err(|e| format!("ImageBuild {name} is deleted, but its events cannot be read: {e}"))?;
    let outcomes: Vec<Outcome> = list
        .items
        .into_iter()
        .filter(|e| {
            matches!(
                e.reason.as_deref(),
                Some("ImageRemoved" | "ImageKept" | "ImageRemovalFailed")
            )
        })
        .map(|e| Outcome {
            build: name.clone(),
            result: e.reason.unwrap_or_default(),
            message: e.message.unwrap_or_default(),
        })
        .collect();
    if outcomes.is_empty() {
        return Ok(vec![Outcome {
            build: name,
            result: "Unknown".into(),
            message: "the build is deleted; it had no image on any node, or its events expired".into(),
        }]);
    }
    Ok(outcomes)
}

/// Waits, on a watch of the one object, until ImageBuild `name` (this `uid`) is gone: its
/// finalizer has heard from every node. A watch that fails is started again until `deadline`.
async fn deleted(api: &Api<ImageBuild>, name: &str, uid: &str, deadline: Instant) -> Result<(), String> {
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut last_error = None;
    loop {
        let gone = await_condition(api.clone(), name, conditions::is_deleted(uid));
        match tokio::time::timeout_at(deadline, gone).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last_error = Some(e.to_string()),
            Err(_) => {
                let why = last_error
                    .map(|e| format!(" (last watch error: {e})"))
                    .unwrap_or_default();
                return Err(format!(
                    "ImageBuild {name} is still being deleted; its nodes have not all answered yet (see `kubectl describe ib {name}`){why}"
                ));
            }
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + RETRY)).await;
    }
}

fn print(outcomes: &[Outcome], output: super::Output) -> u8 {
    match output {
        super::Output::Json => match serde_json::to_string_pretty(outcomes) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                return exit::FAILURE;
            }
        },
        super::Output::Text => {
            for o in outcomes {
                println!("{}: {}", o.result, o.message);
            }
        }
    }
    if outcomes.iter().all(|o| o.result == "ImageRemoved") {
        exit::OK
    } else {
        exit::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn build(name: &str, image: &str) -> ImageBuild {
        serde_json::from_value(json!({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"image": image, "additionalTags": [format!("{image}-extra")], "source": {"http": {"url": "http://x/c.tar"}}}}))
        .expect("ImageBuild")
    }

    #[test]
    fn owners_match_every_name_normalised() {
        let builds = [
            build("a", "app:dev"),
            build("b", "kiln.local/b:1"),
            build("c", "app:prod"),
        ];
        let names = |w: &[&str]| {
            let w: Vec<String> = w.iter().map(|s| (*s).to_owned()).collect();
            owners(&builds, &w).iter().map(|b| b.name_any()).collect::<Vec<_>>()
        };
        assert_eq!(names(&["docker.io/library/app:dev"]), ["a"]);
        assert_eq!(names(&["kiln.local/b:1-extra"]), ["b"], "additional tags count");
        assert_eq!(names(&["app"]), Vec::<String>::new(), "app means app:latest");
        assert_eq!(names(&["app:dev", "app:prod"]), ["a", "c"]);
    }
}

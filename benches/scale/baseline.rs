//! What the apiserver can write with the same client, 64 requests in flight, measured in the same
//! world as kiln's runs: the ceiling kiln's throughput is compared with.
//!
//! Two baselines, because what a write costs the apiserver depends on what is written:
//! - `small`: creates and merge patches of small ConfigMaps, the cheapest writes there are;
//! - `kiln_shaped`: creates of an ImageBuild-sized custom resource and server-side applies of a
//!   finished ImageBuild's status to it: kiln's own objects and verbs. A profile of the
//!   apiserver in the waves put 40 % of its CPU in custom-resource status updates (decoding,
//!   schema coercion, managed fields), so the small writes overstate what it can take of kiln's.
//!
//! The kiln-shaped kind is a copy of the ImageBuild CRD under a group of its own, so no controller
//! reacts to its objects; the status applied is a real one, read from a build kiln just finished.

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kiln::api::ImageBuild;
use kube::CustomResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde_json::{Value, json};
use std::time::Instant;

use crate::harness::Harness;
use crate::support::apiserver::wait_established;
use crate::usage::{UsageProbe, Usages};

/// One baseline's figures.
#[derive(Serialize)]
pub struct Baseline {
    pub writes: usize,
    pub seconds: f64,
    pub writes_per_second: f64,
    /// What the processes used meanwhile: how busy a saturated apiserver is on this machine.
    #[serde(flatten)]
    pub usage: Usages,
}

/// Creates then merge-patches `n` small ConfigMaps.
pub async fn small(h: &Harness, n: usize) -> Baseline {
    let ns = h.server.namespace(&h.admin, "scale-baseline").await;
    let api: Api<ConfigMap> = Api::namespaced(h.admin.clone(), &ns);
    measure(h, 2 * n, || {
        stream::iter(0..n).for_each_concurrent(64, |i| {
            let api = api.clone();
            async move {
                let cm: ConfigMap =
                    serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}, "data": {"k": "v"}}))
                        .expect("configmap");
                let _ = api.create(&PostParams::default(), &cm).await;
                let patch = json!({"data": {"k": "w"}});
                let _ = api
                    .patch(&format!("c{i}"), &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
            }
        })
    })
    .await
}

/// Creates `n` objects with `finished`'s spec, labels and annotations, and applies its status
/// to each with the controller's status field manager.
pub async fn kiln_shaped(h: &Harness, finished: &ImageBuild, n: usize) -> Baseline {
    let resource = install_kind(h).await;
    let ns = h.server.namespace(&h.admin, "scale-baseline-shaped").await;
    let api: Api<DynamicObject> = Api::namespaced_with(h.admin.clone(), &ns, &resource);
    let spec = serde_json::to_value(&finished.spec).expect("spec");
    let status = serde_json::to_value(&finished.status).expect("status");
    let labels = finished.metadata.labels.clone().unwrap_or_default();
    let apply = PatchParams::apply(kiln::controller::STATUS_FIELD_MANAGER).force();
    measure(h, 2 * n, || {
        stream::iter(0..n).for_each_concurrent(64, |i| {
            let (api, resource) = (api.clone(), &resource);
            let (spec, status, labels, apply) = (&spec, &status, &labels, &apply);
            async move {
                let name = format!("b{i}");
                let object: DynamicObject = serde_json::from_value(json!({
                    "apiVersion": resource.api_version, "kind": resource.kind,
                    "metadata": {"name": name, "labels": labels}, "spec": spec,
                }))
                .expect("object");
                let _ = api.create(&PostParams::default(), &object).await;
                let patch = json!({"apiVersion": resource.api_version, "kind": resource.kind, "status": status});
                let _ = api.patch_status(&name, apply, &Patch::Apply(&patch)).await;
            }
        })
    })
    .await
}

/// Runs `writes` (a count of `writes` requests), timing it and sampling the processes.
async fn measure<F: Future<Output = ()>>(h: &Harness, writes: usize, work: impl FnOnce() -> F) -> Baseline {
    let probe = UsageProbe::start(h);
    let t = Instant::now();
    work().await;
    let seconds = t.elapsed().as_secs_f64();
    Baseline {
        writes,
        seconds,
        writes_per_second: writes as f64 / seconds,
        usage: probe.stop(seconds).await,
    }
}

/// Installs the ImageBuild CRD's copy under `bench.kiln.dev` (kind `BaselineBuild`).
async fn install_kind(h: &Harness) -> ApiResource {
    let (group, kind, plural) = ("bench.kiln.dev", "BaselineBuild", "baselinebuilds");
    let version = h.admin.apiserver_version().await.expect("server version");
    let minor = version
        .minor
        .trim_end_matches('+')
        .parse()
        .expect("numeric minor version");
    // As kiln installs it on this server (without CEL rules before 1.25).
    let image_builds = kiln::api::crds::for_server(minor)
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(ImageBuild::crd_name()))
        .expect("the ImageBuild CRD");
    let mut crd = serde_json::to_value(image_builds).expect("crd");
    crd["metadata"] = json!({"name": format!("{plural}.{group}")});
    crd["spec"]["group"] = Value::from(group);
    crd["spec"]["names"] = json!({
        "kind": kind, "listKind": format!("{kind}List"), "plural": plural, "singular": "baselinebuild",
    });
    let crd: CustomResourceDefinition = serde_json::from_value(crd).expect("CRD");
    let crds: Api<CustomResourceDefinition> = Api::all(h.admin.clone());
    let name = format!("{plural}.{group}");
    crds.patch(&name, &PatchParams::apply("kiln-bench").force(), &Patch::Apply(&crd))
        .await
        .unwrap_or_else(|e| panic!("install CRD {name}: {e}"));
    wait_established(&crds, &name).await;
    let version = crd.spec.versions.first().map(|v| v.name.clone()).expect("a version");
    ApiResource {
        group: group.into(),
        version: version.clone(),
        api_version: format!("{group}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

//! Applying and deleting arbitrary install objects through the API (server-side apply under
//! one field manager), with discovery of their resource types.

use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{ApiResource, Scope, pinned_kind};
use kube::{Client, ResourceExt};
use serde_json::Value;

/// The field manager of everything `kiln install` applies.
pub const FIELD_MANAGER: &str = "kiln-install";

/// An object's API, found by discovery.
pub async fn api_for(client: &Client, object: &Value) -> Result<Api<DynamicObject>, String> {
    let (group, version) = match object["apiVersion"].as_str().unwrap_or_default().split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (
            String::new(),
            object["apiVersion"].as_str().unwrap_or_default().to_owned(),
        ),
    };
    let kind = object["kind"].as_str().unwrap_or_default();
    let gvk = GroupVersionKind::gvk(&group, &version, kind);
    let (resource, caps) = pinned_kind(client, &gvk).await.map_err(|e| {
        format!(
            "the cluster does not serve {kind} ({}): {e}",
            object["apiVersion"].as_str().unwrap_or_default()
        )
    })?;
    Ok(scoped(
        client,
        &resource,
        caps.scope,
        object["metadata"]["namespace"].as_str(),
    ))
}

fn scoped(client: &Client, resource: &ApiResource, scope: Scope, namespace: Option<&str>) -> Api<DynamicObject> {
    match (scope, namespace) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, resource),
        _ => Api::all_with(client.clone(), resource),
    }
}

/// Server-side applies `object` (a dry run when `dry_run`); returns `kind/name`.
pub async fn apply(client: &Client, object: &Value, dry_run: bool) -> Result<String, String> {
    let api = api_for(client, object).await?;
    let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let what = format!("{}/{name}", object["kind"].as_str().unwrap_or_default().to_lowercase());
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    api.patch(&name, &params, &Patch::Apply(object))
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    Ok(what)
}

/// Deletes `name` from `api` if it exists; true if it did.
pub async fn delete(api: &Api<DynamicObject>, name: &str) -> Result<bool, String> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

/// Waits until the CRDs named are Established.
pub async fn wait_established(client: &Client, names: &[String], timeout: Duration) -> Result<(), String> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    for name in names {
        loop {
            let established = crds.get_opt(name).await.ok().flatten().is_some_and(|crd| {
                crd.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("CRD {name} was not Established within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// `kind/name` of a dynamic object.
pub fn describe(o: &DynamicObject) -> String {
    let kind = o.types.as_ref().map(|t| t.kind.to_lowercase()).unwrap_or_default();
    format!("{kind}/{}", o.name_any())
}

//! The install's settings: what the Helm chart's `values.yaml` holds and what `kiln install
//! --set` and `kiln manifests --set` take. This one type is the source of `values.yaml` (each
//! value with its documentation), of `values.schema.json` (which rejects unknown keys and wrong
//! types), and of the defaults both renderers use.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, PodSecurityContext, ResourceRequirements, SecurityContext, Toleration,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::builder_pool::BuilderPoolSpec;

/// Everything an install can set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Values {
    /// Replaces the chart name in object names (`<release>-<nameOverride>`).
    pub name_override: String,
    /// Replaces the whole name prefix of kiln's objects (default: the release name, or
    /// `<release>-kiln` when the release name does not contain `kiln`).
    pub fullname_override: String,
    /// The kiln image, for the controller and the builders' agents.
    pub image: Image,
    /// Secrets for pulling the kiln image from a private registry.
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// The controller Deployment.
    pub controller: Controller,
    /// The BuilderPool `default`, which ImageBuilds use unless they name another pool.
    pub default_pool: DefaultPool,
    /// Roles for people who run builds: ClusterRole `<name>-developer` (bind it per namespace),
    /// Role `<name>-developer` in kiln's namespace (the builder pods' agents, through the
    /// apiserver), ClusterRole `<name>-pool-reader`; the first is aggregated into `edit`.
    pub developer_roles: Toggle,
    /// A ServiceMonitor for the controller's metrics (Prometheus Operator).
    pub service_monitor: Monitor,
    /// A PodMonitor for the builder agents' metrics (Prometheus Operator).
    pub pod_monitor: Monitor,
    /// NetworkPolicies admitting traffic to the controller only on its metrics port and to
    /// builder pods only on the agent's port (where pods/proxy and port-forward reach it).
    pub network_policy: Toggle,
}

/// The kiln image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Image {
    /// Repository of the kiln image.
    pub repository: String,
    /// Tag; empty means the chart's appVersion (the kiln version).
    pub tag: String,
    /// Pull policy of the controller's and agents' containers.
    pub pull_policy: String,
}

/// The controller Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Controller {
    /// Replicas; one leads (a Lease), the others stand by.
    pub replicas: i32,
    /// Port of `/metrics`, `/healthz` and `/readyz`.
    pub metrics_port: i32,
    /// Log filter (`RUST_LOG` syntax), e.g. `info` or `info,kiln=debug`.
    pub log_level: String,
    /// Resources of the controller container.
    pub resources: ResourceRequirements,
    /// Security context of the controller pod.
    pub pod_security_context: PodSecurityContext,
    /// Security context of the controller container.
    pub security_context: SecurityContext,
    /// PriorityClass of the controller pod (empty: none).
    pub priority_class_name: String,
    /// Node labels the controller pod must match.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the controller pod.
    pub tolerations: Vec<Toleration>,
    /// Affinity of the controller pod.
    pub affinity: Affinity,
    /// Annotations on the controller pod.
    pub pod_annotations: BTreeMap<String, String>,
    /// Annotations on the ServiceAccounts (e.g. for workload identity).
    pub service_account_annotations: BTreeMap<String, String>,
}

/// The default BuilderPool.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DefaultPool {
    /// Create it.
    pub enabled: bool,
    /// Its spec: every BuilderPool field (nodeSelector, buildkitImage, runtime, uploads, …).
    pub spec: BuilderPoolSpec,
}

/// Something that is on or off.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Toggle {
    /// Create it.
    pub enabled: bool,
}

/// A Prometheus Operator monitor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Monitor {
    /// Create it (needs the Prometheus Operator's CRDs).
    pub enabled: bool,
    /// Scrape interval.
    pub interval: String,
    /// More labels, e.g. the ones your Prometheus selects monitors by.
    pub labels: BTreeMap<String, String>,
}

impl Default for Values {
    fn default() -> Self {
        Self {
            name_override: String::new(),
            fullname_override: String::new(),
            image: Image::default(),
            image_pull_secrets: Vec::new(),
            controller: Controller::default(),
            default_pool: DefaultPool::default(),
            developer_roles: Toggle { enabled: true },
            service_monitor: Monitor::default(),
            pod_monitor: Monitor::default(),
            network_policy: Toggle { enabled: false },
        }
    }
}

impl Default for Image {
    fn default() -> Self {
        Self {
            repository: "kiln.dev/kiln".into(),
            tag: String::new(),
            pull_policy: "IfNotPresent".into(),
        }
    }
}

impl Default for Controller {
    fn default() -> Self {
        Self {
            replicas: 1,
            metrics_port: 8080,
            log_level: "info".into(),
            resources: from_json(json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})),
            pod_security_context: from_json(json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532})),
            security_context: from_json(
                json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                          "capabilities": {"drop": ["ALL"]}}),
            ),
            priority_class_name: String::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: Affinity::default(),
            pod_annotations: BTreeMap::new(),
            service_account_annotations: BTreeMap::new(),
        }
    }
}

impl Default for DefaultPool {
    fn default() -> Self {
        Self {
            enabled: true,
            spec: BuilderPoolSpec {
                node_selector: BTreeMap::from([("kubernetes.io/os".to_owned(), "linux".to_owned())]),
                ..Default::default()
            },
        }
    }
}

impl Default for Monitor {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: "30s".into(),
            labels: BTreeMap::new(),
        }
    }
}

fn from_json<T: serde::de::DeserializeOwned + Default>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap_or_default()
}

/// Why values were refused.
#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    /// A `--set` is not `key.path=value`.
    #[error("--set {0:?}: expected key.path=value")]
    Syntax(String),
    /// The values do not fit the install's settings (an unknown key, a wrong type).
    #[error("invalid values: {0}; see the chart's values.yaml for every key")]
    Invalid(String),
    /// A values file cannot be read.
    #[error("cannot read values file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl Values {
    /// The defaults, overlaid with values files (YAML, in order) and then `--set key.path=value`
    /// flags (each value read as YAML: `2`, `true`, `[a, b]`, or a string).
    pub fn with_overrides(files: &[String], sets: &[String]) -> Result<Self, ValuesError> {
        let mut tree = serde_json::to_value(Self::default()).map_err(|e| ValuesError::Invalid(e.to_string()))?;
        for path in files {
            let text = std::fs::read_to_string(path).map_err(|e| ValuesError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let overlay: serde_json::Value = serde_yaml::from_str(&text).map_err(|e| ValuesError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            merge(&mut tree, overlay);
        }
        for set in sets {
            let (key, raw) = set.split_once('=').ok_or_else(|| ValuesError::Syntax(set.clone()))?;
            if key.is_empty() || key.split('.').any(str::is_empty) {
                return Err(ValuesError::Syntax(set.clone()));
            }
            let mut overlay = set_value(raw);
            for part in key.rsplit('.') {
                overlay = json!({ part: overlay });
            }
            merge(&mut tree, overlay);
        }
        serde_json::from_value(tree).map_err(|e| ValuesError::Invalid(e.to_string()))
    }
}

/// A `--set` value typed as Helm types them: integers, `true`/`false`, `null` (which removes
/// the key) and `[…]`/`{…}` (read as YAML); anything else, `1.2` included, is text.
fn set_value(raw: &str) -> serde_json::Value {
    match raw {
        "true" => json!(true),
        "false" => json!(false),
        "null" => serde_json::Value::Null,
        _ if raw.parse::<i64>().is_ok() => json!(raw.parse::<i64>().unwrap_or_default()),
        _ if raw.starts_with('[') || raw.starts_with('{') => serde_yaml::from_str(raw).unwrap_or_else(|_| json!(raw)),
        _ => json!(raw),
    }
}

/// Deep-merges `overlay` into `base` as Helm merges values: maps merge, a `null` removes the
/// key (back to the type's default), anything else replaces.
fn merge(base: &mut serde_json::Value, overlay: serde_json::Value) {
    match (base, overlay) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                    continue;
                }
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_flags_reach_nested_values_typed_as_yaml() {
        let v = Values::with_overrides(
            &[],
            &[
                "controller.replicas=3".into(),
                "image.tag=1.2".into(),
                "serviceMonitor.enabled=true".into(),
                "defaultPool.spec.maxConcurrentBuilds=4".into(),
                "controller.nodeSelector.disk=ssd".into(),
            ],
        )
        .expect("valid");
        assert_eq!(v.controller.replicas, 3);
        assert_eq!(v.image.tag, "1.2", "a version stays text");
        assert!(v.service_monitor.enabled);
        assert_eq!(v.default_pool.spec.max_concurrent_builds, Some(4));
        assert_eq!(v.controller.node_selector.get("disk").map(String::as_str), Some("ssd"));
        assert_eq!(
            v.default_pool
                .spec
                .node_selector
                .get("kubernetes.io/os")
                .map(String::as_str),
            Some("linux"),
            "maps merge into the defaults, as Helm merges them"
        );
        let cleared = Values::with_overrides(&[], &["defaultPool.spec.nodeSelector=null".into()]).expect("valid");
        assert!(
            cleared.default_pool.spec.node_selector.is_empty(),
            "null removes, as with Helm"
        );
    }

    #[test]
    fn typos_and_wrong_types_are_refused_with_the_key() {
        let typo = Values::with_overrides(&[], &["controler.replicas=2".into()]).expect_err("typo");
        assert!(typo.to_string().contains("controler"), "{typo}");
        let wrong = Values::with_overrides(&[], &["controller.replicas=two".into()]).expect_err("type");
        assert!(wrong.to_string().contains("invalid"), "{wrong}");
        assert!(matches!(
            Values::with_overrides(&[], &["controller.replicas".into()]),
            Err(ValuesError::Syntax(_))
        ));
    }
}

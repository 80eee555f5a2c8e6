//! Where rendered objects get their install-specific parts: the values, the name prefix, the
//! namespace, the labels. Two sources render the same objects: [`Concrete`] fills in real
//! values (`kiln manifests`, `kiln install`, `deploy/`); the Helm source (`helm.rs`) leaves
//! template expressions, which is how the chart's templates are made. Neither is hand-kept.

use serde_json::{Map, Value, json};

use super::values::Values;

/// The labels every object carries, by key, in this order.
pub const LABEL_KEYS: [&str; 5] = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
];

/// What the objects need from an install.
pub trait Source {
    /// The value at a dotted path of [`Values`], e.g. `controller.replicas`.
    fn value(&self, path: &str) -> Value;
    /// The value at `path` as text inside a longer string (e.g. a port in an argument).
    fn text(&self, path: &str) -> String;
    /// `<name prefix>-<suffix>`, e.g. `kiln-controller`.
    fn name(&self, suffix: &str) -> String;
    /// kiln's namespace.
    fn namespace(&self) -> Value;
    /// The release name (`app.kubernetes.io/instance`).
    fn release(&self) -> Value;
    /// The kiln image reference.
    fn image(&self) -> Value;
    /// The common labels plus `app.kubernetes.io/component`.
    fn labels(&self, component: &str) -> Value {
        self.labels_and(component, &[])
    }
    /// [`Source::labels`] plus fixed `extra` labels.
    fn labels_and(&self, component: &str, extra: &[(&str, &str)]) -> Value;
    /// [`Source::labels`] merged with the map at `extra` (the common labels win).
    fn labels_with(&self, component: &str, extra: &str) -> Value;
    /// Whether the optional objects behind the toggle at `path` are rendered. A template source
    /// renders them all and wraps them in a condition instead.
    fn enabled(&self, path: &str) -> bool;
}

/// An install's real values.
pub struct Concrete {
    /// The values.
    pub values: Values,
    /// The release name (`kiln install`: `kiln`).
    pub release: String,
    /// kiln's namespace.
    pub namespace: String,
    /// Who manages the objects (`app.kubernetes.io/managed-by`): `kiln`, or `Helm` to compare
    /// with a Helm rendering.
    pub managed_by: String,
    tree: Value,
}

impl Concrete {
    /// A source for `values`, release `release`, in `namespace`.
    pub fn new(values: Values, release: &str, namespace: &str, managed_by: &str) -> Self {
        let tree = serde_json::to_value(&values).unwrap_or(Value::Null);
        Self {
            values,
            release: release.to_owned(),
            namespace: namespace.to_owned(),
            managed_by: managed_by.to_owned(),
            tree,
        }
    }

    /// The name prefix, as the chart's `kiln.fullname` helper computes it.
    pub fn fullname(&self) -> String {
        let v = &self.values;
        let name = if v.fullname_override.is_empty() {
            let chart = if v.name_override.is_empty() {
                "kiln"
            } else {
                &v.name_override
            };
            if self.release.contains(chart) {
                self.release.clone()
            } else {
                format!("{}-{chart}", self.release)
            }
        } else {
            v.fullname_override.clone()
        };
        let name: String = name.chars().take(63).collect();
        name.trim_end_matches('-').to_owned()
    }
}

impl Source for Concrete {
    fn value(&self, path: &str) -> Value {
        path.split('.').fold(&self.tree, |v, k| &v[k]).clone()
    }

    fn text(&self, path: &str) -> String {
        match self.value(path) {
            Value::String(s) => s,
            other => other.to_string(),
        }
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.fullname())
    }

    fn namespace(&self) -> Value {
        json!(self.namespace)
    }

    fn release(&self) -> Value {
        json!(self.release)
    }

    fn image(&self) -> Value {
        let i = &self.values.image;
        let tag = if i.tag.is_empty() {
            env!("CARGO_PKG_VERSION")
        } else {
            &i.tag
        };
        json!(format!("{}:{tag}", i.repository))
    }

    fn labels_and(&self, component: &str, extra: &[(&str, &str)]) -> Value {
        let values = [
            "kiln",
            self.release.as_str(),
            env!("CARGO_PKG_VERSION"),
            self.managed_by.as_str(),
            "kiln",
        ];
        let mut map: Map<String, Value> = LABEL_KEYS
            .iter()
            .zip(values)
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        map.insert("app.kubernetes.io/component".into(), json!(component));
        for (k, v) in extra {
            map.insert((*k).to_owned(), json!(v));
        }
        Value::Object(map)
    }

    fn labels_with(&self, component: &str, extra: &str) -> Value {
        let mut labels = self.labels(component);
        if let (Some(l), Value::Object(more)) = (labels.as_object_mut(), self.value(extra)) {
            for (k, v) in more {
                l.entry(k).or_insert(v);
            }
        }
        labels
    }

    fn enabled(&self, path: &str) -> bool {
        self.value(&format!("{path}.enabled")).as_bool().unwrap_or(false)
    }
}

//! The image-name policy: which image names builds in each namespace may write into the nodes'
//! image stores (a BuilderPool's `spec.allowedImages`), decided without I/O.
//!
//! kiln writes images into the store the kubelet runs pods from, so an image name is a claim
//! on every pod that uses it with `imagePullPolicy: IfNotPresent`. A policy is a list of
//! [`ImageRule`]s: a rule applies to a namespace by name, by label selector, or (with
//! neither) to all; an image is allowed when a pattern of a rule that applies matches its
//! normalised name (see [`super::image_pattern`]). Every name a build writes must be allowed.
//! No rules means [`default_rules`]: each namespace builds only under `kiln.local/<namespace>/`.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use super::image_pattern::{MAX_PATTERN_LEN, NAMESPACE_PLACEHOLDER, Pattern, PatternError, Subject};

/// Where the rules live: the BuilderPool field, for messages.
pub const FIELD: &str = "spec.allowedImages";
/// The registry host of the default policy: `.local` is reserved for multicast DNS (RFC 6762),
/// so no real registry, and no image pulled from one, has a name under it.
pub const DEFAULT_REGISTRY: &str = "kiln.local";
/// The default policy's one pattern: each namespace's own prefix under [`DEFAULT_REGISTRY`].
pub const DEFAULT_PATTERN: &str = "kiln.local/{{namespace}}/**";

/// One grant: namespaces it applies to, and the image names they may build.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageRule {
    /// Namespaces the rule applies to, by name. With `namespaceSelector` too, the rule applies
    /// to namespaces named here or matched by the selector; with neither, to all namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "namespace_names")]
    pub namespaces: Vec<String>,
    /// Namespaces the rule applies to, by their labels. Use labels tenants cannot set on
    /// their own namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Image names these namespaces may build, matched against the normalised name
    /// (`busybox` is `docker.io/library/busybox:latest`): `*` within a path segment, `**` any
    /// number of segments, `{{namespace}}` the build's namespace; without `:tag`/`@digest`
    /// every tag and digest of the repository, e.g. `kiln.local/{{namespace}}/**`.
    #[schemars(schema_with = "patterns")]
    pub patterns: Vec<String>,
}

/// A whole policy: rules in order. Empty means [`default_rules`].
pub type ImagePolicy = Vec<ImageRule>;

fn namespace_names(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "set",
        "items": {"type": "string", "maxLength": 63, "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
    })
}

fn patterns(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "x-kubernetes-list-type": "set",
        "items": {"type": "string", "minLength": 1, "maxLength": MAX_PATTERN_LEN},
    })
}

/// Whether deciding needs the namespace's labels: only when a rule selects by them.
pub fn reads_namespace_labels(rules: &[ImageRule]) -> bool {
    rules.iter().any(|r| r.namespace_selector.is_some())
}

/// The policy of a pool that sets no rules: every namespace may build names under
/// `kiln.local/<namespace>/` and nothing else, so no tenant can take a name another tenant or
/// the cluster uses.
pub fn default_rules() -> Vec<ImageRule> {
    vec![ImageRule {
        patterns: vec![DEFAULT_PATTERN.to_owned()],
        ..Default::default()
    }]
}

/// Why a policy is invalid; the message names the field and says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A rule without patterns.
    #[error("{FIELD}[{rule}].patterns: a rule needs at least one pattern (one without any allows nothing)")]
    NoPatterns {
        /// Index of the rule.
        rule: usize,
    },
    /// A pattern that does not parse or can never match.
    #[error("{FIELD}[{rule}].patterns[{index}] {pattern:?}: {source}")]
    Pattern {
        /// Index of the rule.
        rule: usize,
        /// Index of the pattern in the rule.
        index: usize,
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        source: PatternError,
    },
    /// A name in `namespaces` that is not a namespace name.
    #[error(
        "{FIELD}[{rule}].namespaces[{index}] {name:?} is not a namespace name (lowercase letters, digits and '-', at most 63)"
    )]
    Namespace {
        /// Index of the rule.
        rule: usize,
        /// Index of the name.
        index: usize,
        /// The name as written.
        name: String,
    },
    /// A selector Kubernetes itself would refuse.
    #[error("{FIELD}[{rule}].namespaceSelector.{field}: {problem}")]
    Selector {
        /// Index of the rule.
        rule: usize,
        /// The selector's field, e.g. `matchExpressions[0].values`.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// Checks every rule; the first problem is returned.
pub fn validate_rules(rules: &[ImageRule]) -> Result<(), PolicyError> {
    for (rule, r) in rules.iter().enumerate() {
        for (index, name) in r.namespaces.iter().enumerate() {
            if !is_dns_label(name) {
                let name = name.clone();
                return Err(PolicyError::Namespace { rule, index, name });
            }
        }
        if let Some(selector) = &r.namespace_selector {
            validate_selector(selector).map_err(|(field, problem)| PolicyError::Selector { rule, field, problem })?;
        }
        if r.patterns.is_empty() {
            return Err(PolicyError::NoPatterns { rule });
        }
        for (index, pattern) in r.patterns.iter().enumerate() {
            Pattern::parse(pattern).map_err(|source| PolicyError::Pattern {
                rule,
                index,
                pattern: pattern.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

fn validate_selector(selector: &LabelSelector) -> Result<(), (String, String)> {
    for key in selector.match_labels.iter().flatten().map(|(k, _)| k) {
        if key.is_empty() {
            return Err(("matchLabels".into(), "a label key is empty".into()));
        }
    }
    for (i, r) in selector.match_expressions.iter().flatten().enumerate() {
        let at = |f: &str| format!("matchExpressions[{i}]{f}");
        let has_values = r.values.as_ref().is_some_and(|v| !v.is_empty());
        if r.key.is_empty() {
            return Err((at(".key"), "must not be empty".into()));
        }
        match r.operator.as_str() {
            "In" | "NotIn" if !has_values => return Err((at(".values"), format!("{} needs values", r.operator))),
            "Exists" | "DoesNotExist" if has_values => {
                return Err((at(".values"), format!("{} takes no values", r.operator)));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err((
                    at(".operator"),
                    format!("{other:?} is not In, NotIn, Exists or DoesNotExist"),
                ));
            }
        }
    }
    Ok(())
}

impl ImageRule {
    /// Whether the rule applies to a namespace with this name and these labels.
    pub fn applies_to(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        match &self.namespace_selector {
            None if self.namespaces.is_empty() => true,
            selector => {
                self.namespaces.iter().any(|n| n == namespace)
                    || selector.as_ref().is_some_and(|s| selector_matches(s, labels))
            }
        }
    }
}

/// Kubernetes label-selector semantics: every `matchLabels` pair and every expression holds
/// (`NotIn` holds for a missing label); an empty selector matches everything; an unknown
/// operator matches nothing.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector
            .match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, labels))
}

fn requirement_matches(r: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let value = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// The outcome for one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Every name of the build is allowed.
    Allowed,
    /// A name is not; `reason` says why, naming the rules that apply (or the default) and
    /// what to do.
    Denied {
        /// The first name denied, as the build wrote it.
        image: String,
        /// A message for the build's status.
        reason: String,
    },
}

impl Decision {
    /// True for [`Decision::Allowed`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allowed)
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allowed => f.write_str("allowed"),
            Decision::Denied { reason, .. } => f.write_str(reason),
        }
    }
}

/// Decides whether a build in `namespace` (with `namespace_labels`) may write all of `images`
/// (its image and additional tags). Empty `rules` is [`default_rules`]. Patterns that do not
/// parse match nothing and selectors with unknown operators match no namespace, so a policy
/// that skipped [`validate_rules`] can only allow less.
pub fn decide(
    rules: &[ImageRule],
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    images: &[&str],
) -> Decision {
    decide_inner(None, rules, namespace, namespace_labels, images)
}

/// [`decide`], with the pool's name in the message.
pub fn decide_for_pool(
    pool: &str,
    rules: &[ImageRule],
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    images: &[&str],
) -> Decision {
    decide_inner(Some(pool), rules, namespace, namespace_labels, images)
}

fn decide_inner(
    pool: Option<&str>,
    rules: &[ImageRule],
    namespace: &str,
    labels: &BTreeMap<String, String>,
    images: &[&str],
) -> Decision {
    let defaults;
    let (rules, is_default) = if rules.is_empty() {
        defaults = default_rules();
        (defaults.as_slice(), true)
    } else {
        (rules, false)
    };
    let denied = |image: &str, reason: String| Decision::Denied {
        image: image.to_owned(),
        reason,
    };
    if !is_dns_label(namespace) {
        let reason = format!("namespace {namespace:?} is not a valid namespace name, so no image may be built in it");
        return denied(images.first().copied().unwrap_or_default(), reason);
    }
    let applicable: Vec<(usize, Vec<Pattern>)> = rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.applies_to(namespace, labels))
        .map(|(i, r)| (i, r.patterns.iter().filter_map(|p| Pattern::parse(p).ok()).collect()))
        .collect();
    for image in images {
        let subject = match Subject::parse(image) {
            Ok(s) => s,
            Err(e) => return denied(image, format!("image {image:?} is not a valid image reference: {e}")),
        };
        let allowed = applicable
            .iter()
            .any(|(_, patterns)| patterns.iter().any(|p| p.matches(&subject, namespace)));
        if !allowed {
            let indices: Vec<usize> = applicable.iter().map(|(i, _)| *i).collect();
            let why = Why {
                pool,
                rules,
                is_default,
                applicable: &indices,
                namespace,
            };
            return denied(image, why.message(image, &subject));
        }
    }
    Decision::Allowed
}

/// What a denial message needs to know.
struct Why<'a> {
    pool: Option<&'a str>,
    rules: &'a [ImageRule],
    is_default: bool,
    applicable: &'a [usize],
    namespace: &'a str,
}

impl Why<'_> {
    fn message(&self, image: &str, subject: &Subject) -> String {
        let ns = self.namespace;
        let shown = if subject.normalised() == image {
            image.to_owned()
        } else {
            format!("{image} ({})", subject.normalised())
        };
        let pool = self
            .pool
            .map_or_else(|| "the BuilderPool".to_owned(), |p| format!("BuilderPool {p}"));
        let head = format!("image {shown} is not allowed in namespace {ns}");
        if self.is_default {
            let own = DEFAULT_PATTERN.replace(NAMESPACE_PLACEHOLDER, ns);
            return format!(
                "{head}: {pool} sets no allowedImages, so each namespace may build only under its own prefix, \
                 here {own} (the default policy); name the image {DEFAULT_REGISTRY}/{ns}/<name> (with Tilt: \
                 default_registry('{DEFAULT_REGISTRY}/{ns}')) or ask a cluster admin to set {FIELD}"
            );
        }
        if self.applicable.is_empty() {
            return format!(
                "{head}: no rule of {pool}'s {FIELD} applies to namespace {ns} ({}); ask a cluster admin to add \
                 a rule that names {ns} or matches its labels",
                describe(self.rules)
            );
        }
        let allowed: Vec<String> = self
            .applicable
            .iter()
            .filter_map(|&i| self.rules.get(i).map(|r| (i, r)))
            .map(|(i, r)| {
                let patterns: Vec<String> = r
                    .patterns
                    .iter()
                    .map(|p| p.replace(NAMESPACE_PLACEHOLDER, ns))
                    .collect();
                format!("{} ({FIELD}[{i}])", patterns.join(", "))
            })
            .collect();
        format!(
            "{head}: {pool} allows {ns} only {}; build under one of those names or ask a cluster admin to add \
             a rule to {FIELD}",
            allowed.join("; ")
        )
    }
}

/// The policy in one line, e.g. `[0] namespaces team-a, team-b: kiln.local/shared/**; [1] all
/// namespaces: kiln.local/{{namespace}}/**`.
pub fn describe(rules: &[ImageRule]) -> String {
    if rules.is_empty() {
        return format!("default policy: all namespaces: {DEFAULT_PATTERN}");
    }
    let parts: Vec<String> = rules.iter().enumerate().map(|(i, r)| format!("[{i}] {r}")).collect();
    parts.join("; ")
}

impl fmt::Display for ImageRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let selector = self
            .namespace_selector
            .as_ref()
            .map(describe_selector)
            .filter(|s| !s.is_empty());
        let names = self.namespaces.join(", ");
        match (self.namespaces.is_empty(), selector) {
            (true, None) if self.namespace_selector.is_none() => f.write_str("all namespaces")?,
            (true, None) => f.write_str("all namespaces (empty selector)")?,
            (true, Some(s)) => write!(f, "namespaces labelled {s}")?,
            (false, None) => write!(f, "namespaces {names}")?,
            (false, Some(s)) => write!(f, "namespaces {names} or labelled {s}")?,
        }
        write!(f, ": {}", self.patterns.join(", "))
    }
}

/// A selector in kubectl's syntax: `env=dev,tier in (a,b),!legacy`.
pub fn describe_selector(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for r in selector.match_expressions.iter().flatten() {
        let values = r.values.as_deref().unwrap_or_default().join(",");
        parts.push(match r.operator.as_str() {
            "In" => format!("{} in ({values})", r.key),
            "NotIn" => format!("{} notin ({values})", r.key),
            "Exists" => r.key.clone(),
            "DoesNotExist" => format!("!{}", r.key),
            other => format!("{} {other} ({values})", r.key),
        });
    }
    parts.join(",")
}

/// A DNS-1123 label, as namespace names are: the only strings `{{namespace}}` expands to.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
#[path = "image_policy_tests.rs"]
mod tests;

//! Validation of kiln objects beyond what the CRD schema enforces.
//!
//! The CRD schema already rejects most bad input at the apiserver. What only CEL can say is
//! also in the schema as `x-kubernetes-validations`, but older apiservers (before 1.25) drop
//! CEL rules silently, so the same rules live here too. The controller runs these checks
//! before acting (an invalid object gets `Stalled=True`, reason `InvalidSpec`) and the CLI
//! runs them before submitting, so both give the same answer.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path};

use super::builder_pool::BuilderPoolSpec;
use super::image_build::ImageBuildSpec;
use super::image_policy;
use super::recipe::{BuildRecipe, BuildSource};
use super::reference::Reference;

/// The schema pattern for a platform (`os/arch[/variant]`).
pub const PLATFORM_PATTERN: &str = r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$";

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field path, e.g. `spec.placement.nodeName`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Every problem found in an object, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
        f.write_str(&parts.join("; "))
    }
}

impl ValidationErrors {
    /// True when a problem was reported for exactly this field.
    pub fn has(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field == field)
    }
}

#[derive(Default)]
struct Collector(Vec<FieldError>);

impl Collector {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn finish(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// Checks an ImageBuild spec. Used by the controller and by `kiln validate` / `kiln build`.
pub fn image_build(spec: &ImageBuildSpec) -> Result<(), ValidationErrors> {
    let mut errs = Collector::default();
    recipe(&spec.recipe, "spec", &mut errs);
    if let Some(p) = &spec.placement {
        if p.node_name.is_some() && p.all_nodes {
            errs.add(
                "spec.placement",
                "nodeName and allNodes are mutually exclusive: pin one node or build on all",
            );
        }
        if let Some(pool) = &p.pool
            && !is_dns_subdomain(pool)
        {
            errs.add(
                "spec.placement.pool",
                format!("{pool:?} is not a valid object name (lowercase letters, digits, '-' and '.')"),
            );
        }
        if let Some(node) = &p.node_name
            && !is_dns_subdomain(node)
        {
            errs.add("spec.placement.nodeName", format!("{node:?} is not a valid node name"));
        }
    }
    if spec.timeout_seconds.is_some_and(|t| t < 1) {
        errs.add(
            "spec.timeoutSeconds",
            "must be at least 1 (leave it unset for no limit)",
        );
    }
    if spec.backoff_limit.is_some_and(|b| !(0..=20).contains(&b)) {
        errs.add("spec.backoffLimit", "must be between 0 and 20");
    }
    if spec.ttl_seconds_after_finished.is_some_and(|t| t < 0) {
        errs.add("spec.ttlSecondsAfterFinished", "must be 0 or more");
    }
    errs.finish()
}

/// Checks a BuildRecipe; `at` is the path of the object holding it (`spec` or `spec.build`).
pub fn build_recipe(r: &BuildRecipe, at: &str) -> Result<(), ValidationErrors> {
    let mut errs = Collector::default();
    recipe(r, at, &mut errs);
    errs.finish()
}

fn recipe(r: &BuildRecipe, at: &str, errs: &mut Collector) {
    if let Err(e) = Reference::parse(&r.image) {
        errs.add(format!("{at}.image"), e.to_string());
    }
    let mut seen = BTreeSet::new();
    for (i, tag) in r.additional_tags.iter().enumerate() {
        if let Err(e) = Reference::parse(tag) {
            errs.add(format!("{at}.additionalTags[{i}]"), e.to_string());
        } else if tag == &r.image || !seen.insert(tag) {
            errs.add(format!("{at}.additionalTags[{i}]"), format!("{tag:?} is listed twice"));
        }
    }
    if r.dockerfile.is_some() && r.dockerfile_inline.is_some() {
        errs.add(at.to_owned(), "set either dockerfile or dockerfileInline, not both");
    }
    // A blank path passes the path check but the agent's BuildKit request refuses it.
    if let Some(path) = &r.dockerfile
        && (!is_relative_inside(path) || path.trim().is_empty())
    {
        errs.add(
            format!("{at}.dockerfile"),
            format!("{path:?} must be a relative path inside the context (not blank, no '..', no leading '/')"),
        );
    }
    for name in r.build_args.keys() {
        if !is_arg_name(name) {
            errs.add(
                format!("{at}.buildArgs.{name}"),
                "build argument names are letters, digits and '_', not starting with a digit",
            );
        }
    }
    let mut ids = BTreeSet::new();
    for (i, s) in r.secrets.iter().enumerate() {
        if s.id.is_empty()
            || !s
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            errs.add(
                format!("{at}.secrets[{i}].id"),
                "ids are letters, digits, '_', '.' and '-'",
            );
        } else if !ids.insert(&s.id) {
            errs.add(format!("{at}.secrets[{i}].id"), format!("{:?} is used twice", s.id));
        }
    }
    for (i, p) in r.platforms.iter().enumerate() {
        if !is_platform(p) {
            errs.add(
                format!("{at}.platforms[{i}]"),
                format!("{p:?} is not os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8"),
            );
        }
    }
    source(&r.source, &format!("{at}.source"), errs);
}

fn source(s: &BuildSource, at: &str, errs: &mut Collector) {
    match s {
        BuildSource::Git(g) => {
            let ok = ["https://", "http://", "git://", "ssh://", "git@"]
                .iter()
                .any(|p| g.url.starts_with(p));
            if !ok || g.url.chars().any(char::is_whitespace) || g.url.contains('#') {
                errs.add(
                    format!("{at}.git.url"),
                    "use https://…, git://…, ssh://… or git@host:path, and put the ref in `ref`, not after '#'",
                );
            }
            if g.poll.as_ref().is_some_and(|p| p.interval_seconds < 5) {
                errs.add(
                    format!("{at}.git.poll.intervalSeconds"),
                    "must be at least 5 (a minute or more is kind to shared git hosts)",
                );
            }
            if let Some(sub) = &g.sub_path
                && !is_relative_inside(sub)
            {
                errs.add(
                    format!("{at}.git.subPath"),
                    "must be a relative path inside the repository (no '..', no leading '/')",
                );
            }
            if let Some(r) = &g.reference
                && (r.is_empty() || r.contains(':') || r.contains('#') || r.chars().any(char::is_whitespace))
            {
                errs.add(
                    format!("{at}.git.ref"),
                    "a branch, tag or commit without ':', '#' or spaces",
                );
            }
        }
        BuildSource::Http(h) => {
            let ok = h.url.starts_with("http://") || h.url.starts_with("https://");
            if !ok || h.url.chars().any(char::is_whitespace) {
                errs.add(format!("{at}.http.url"), "must be an http:// or https:// URL");
            }
            if let Some(sum) = &h.sha256
                && !is_lower_hex(sum, 64)
            {
                errs.add(format!("{at}.http.sha256"), "must be 64 lowercase hex digits");
            }
        }
        BuildSource::Upload(u) => {
            if !u.digest.strip_prefix("sha256:").is_some_and(|h| is_lower_hex(h, 64)) {
                errs.add(
                    format!("{at}.upload.digest"),
                    "must be sha256:<64 lowercase hex digits>",
                );
            }
            if u.size.is_some_and(|s| s < 0) {
                errs.add(format!("{at}.upload.size"), "must be 0 or more");
            }
        }
    }
}

/// Checks a BuilderPool spec.
pub fn builder_pool(spec: &BuilderPoolSpec) -> Result<(), ValidationErrors> {
    let mut errs = Collector::default();
    if let Some(gc) = &spec.gc
        && let Some(d) = &gc.keep_duration
    {
        match d.parse::<kube::core::Duration>() {
            Ok(parsed) if parsed.is_negative() => errs.add("spec.gc.keepDuration", "must not be negative"),
            Ok(_) => {}
            Err(_) => errs.add(
                "spec.gc.keepDuration",
                format!("{d:?} is not a duration such as 48h or 90m"),
            ),
        }
    }
    if let Some(rt) = &spec.runtime
        && let Some(sock) = &rt.socket
        && !sock.starts_with('/')
    {
        errs.add("spec.runtime.socket", "must be an absolute path on the node");
    }
    if spec.max_concurrent_builds.is_some_and(|m| !(1..=64).contains(&m)) {
        errs.add("spec.maxConcurrentBuilds", "must be between 1 and 64");
    }
    if spec.max_queued_builds.is_some_and(|m| !(0..=100_000).contains(&m)) {
        errs.add(
            "spec.maxQueuedBuilds",
            "must be between 0 and 100000 (leave it unset for no limit)",
        );
    }
    if let Err(e) = image_policy::validate_rules(&spec.allowed_images) {
        // The error names its own field (`spec.allowedImages[1].patterns[0] …: what is wrong`).
        let text = e.to_string();
        match text.split_once(": ") {
            Some((field, message)) => errs.add(field, message),
            None => errs.add(image_policy::FIELD, text),
        }
    }
    errs.finish()
}

/// `os/arch[/variant]` as in [`PLATFORM_PATTERN`].
pub fn is_platform(p: &str) -> bool {
    let word = |s: &str, extra: bool| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || (extra && c == '_'))
    };
    let parts: Vec<&str> = p.split('/').collect();
    match parts.as_slice() {
        [os, arch] => word(os, false) && word(arch, true),
        [os, arch, variant] => word(os, false) && word(arch, true) && word(variant, false),
        _ => false,
    }
}

fn is_relative_inside(path: &str) -> bool {
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn is_arg_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_digit() || matches!(c, 'a'..='f'))
}

/// A DNS-1123 subdomain, as Kubernetes object and node names are.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
#[path = "validation_tests.rs"]
mod tests;

//! What the pool controller last applied per builder DaemonSet, so an idle reconcile writes nothing.
//!
//! Server-side apply of an unchanged object is a no-op for the object but still an API write;
//! with a reconcile every heartbeat expiry check, that was a steady write per pool for nothing.
//! A DaemonSet (and its buildkitd ConfigMap) is applied again only when what kiln renders
//! changed, or when the DaemonSet in the watch cache is not the one kiln's last apply returned
//! (someone edited or deleted it; its status moved): then one apply restores it. Held in the
//! controller's memory: a restarted controller applies everything once.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

/// A fingerprint of the rendered objects (their JSON).
pub fn fingerprint(rendered: &[&serde_json::Value]) -> u64 {
    let mut h = DefaultHasher::new();
    for v in rendered {
        v.to_string().hash(&mut h);
    }
    h.finish()
}

/// The last apply per DaemonSet name: what was rendered and the resourceVersion it produced.
#[derive(Default)]
pub struct Applied(HashMap<String, (u64, String)>);

impl Applied {
    /// Whether `name` must be applied: something new was rendered, or the live object (from the
    /// watch cache, `None` when absent) is not the one the last apply left.
    pub fn needs_apply(&self, name: &str, fingerprint: u64, live_version: Option<&str>) -> bool {
        match self.0.get(name) {
            Some((f, version)) => *f != fingerprint || live_version != Some(version.as_str()),
            None => true,
        }
    }

    /// Records an apply and the resourceVersion the apiserver answered with.
    pub fn record(&mut self, name: &str, fingerprint: u64, version: Option<String>) {
        match version {
            Some(v) => {
                self.0.insert(name.to_owned(), (fingerprint, v));
            }
            None => {
                self.0.remove(name);
            }
        }
    }

    /// Forgets a DaemonSet kiln deleted.
    pub fn forget(&mut self, name: &str) {
        self.0.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn applies_once_then_only_when_rendered_or_live_object_changes() {
        let mut applied = Applied::default();
        let f = fingerprint(&[&json!({"spec": 1})]);
        assert!(applied.needs_apply("ds", f, None), "never applied");
        applied.record("ds", f, Some("10".into()));
        assert!(!applied.needs_apply("ds", f, Some("10")), "unchanged: no write");
        assert!(applied.needs_apply("ds", f, Some("11")), "changed by someone else");
        assert!(applied.needs_apply("ds", f, None), "deleted by someone");
        let g = fingerprint(&[&json!({"spec": 2})]);
        assert_ne!(f, g);
        assert!(applied.needs_apply("ds", g, Some("10")), "new rendering");
        applied.forget("ds");
        assert!(applied.needs_apply("ds", f, Some("10")), "forgotten");
    }
}

//! Builder heartbeats: the `coordination.k8s.io/v1` Lease each agent renews per (pool, node),
//! and the capacity it carries. The agent writes it; the controller reads it to know which
//! builders are ready and how busy they are.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Annotation on the Lease holding [`Capacity`] as JSON.
pub const CAPACITY_ANNOTATION: &str = "kiln.dev/capacity";
/// Label on the Lease naming the pool.
pub const POOL_LABEL: &str = "kiln.dev/pool";
/// Label on the Lease naming the node.
pub const NODE_LABEL: &str = "kiln.dev/node";
/// Label marking kiln's heartbeat Leases (so watches select only them).
pub const HEARTBEAT_LABEL: &str = "kiln.dev/heartbeat";
/// Seconds a heartbeat stays valid without renewal.
pub const LEASE_DURATION_SECONDS: i32 = 15;
/// Seconds between renewals.
pub const RENEW_INTERVAL_SECONDS: u64 = 5;

/// What a builder can take on, as its agent last saw it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// Builds the node runs at once.
    pub max_concurrent_builds: i32,
    /// Builds running now.
    pub running: i32,
    /// Builds waiting for a slot.
    #[serde(default)]
    pub queued: i32,
    /// Platforms BuildKit can build for (`linux/amd64`, …).
    #[serde(default)]
    pub platforms: Vec<String>,
    /// BuildKit's version, when the daemon reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buildkit_version: Option<String>,
    /// BuildKit worker kind (`containerd`, `moby`, `oci`).
    #[serde(default)]
    pub worker: String,
    /// Runtime flavour of the node (`containerd`, `k3s`, `microk8s`, `docker`).
    #[serde(default)]
    pub runtime: String,
    /// The agent instance (changes when the agent restarts).
    #[serde(default)]
    pub agent: String,
}

impl Capacity {
    /// Builds the node can still start now.
    pub fn free_slots(&self) -> i32 {
        (self.max_concurrent_builds - self.running - self.queued).max(0)
    }
}

/// A heartbeat read back from a Lease.
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    /// The pool.
    pub pool: String,
    /// The node.
    pub node: String,
    /// Last renewal.
    pub renewed: Timestamp,
    /// How long the renewal is valid.
    pub duration: SignedDuration,
    /// What the builder reported.
    pub capacity: Capacity,
}

impl Heartbeat {
    /// Reads a heartbeat Lease; `None` when it is not one or is malformed.
    pub fn from_lease(lease: &Lease) -> Option<Self> {
        let labels = lease.metadata.labels.as_ref()?;
        let spec = lease.spec.as_ref()?;
        let capacity = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CAPACITY_ANNOTATION))
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default();
        Some(Self {
            pool: labels.get(POOL_LABEL)?.clone(),
            node: labels.get(NODE_LABEL)?.clone(),
            renewed: spec.renew_time.as_ref()?.0,
            duration: SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(LEASE_DURATION_SECONDS),
            )),
            capacity,
        })
    }

    /// True while the last renewal is within the lease duration.
    pub fn is_fresh(&self, now: Timestamp) -> bool {
        now.duration_since(self.renewed) < self.duration
    }

    /// When the heartbeat goes stale unless renewed.
    pub fn expires(&self) -> Timestamp {
        self.renewed.saturating_add(self.duration).unwrap_or(self.renewed)
    }
}

/// A heartbeat for unit tests: pool `default`, 15 s validity, two build slots.
#[cfg(test)]
pub(crate) fn test_beat(node: &str, renewed: Timestamp, running: i32, platforms: &[&str]) -> Heartbeat {
    Heartbeat {
        pool: "default".into(),
        node: node.into(),
        renewed,
        duration: SignedDuration::from_secs(15),
        capacity: Capacity {
            max_concurrent_builds: 2,
            running,
            platforms: platforms.iter().map(|p| (*p).into()).collect(),
            ..Default::default()
        },
    }
}

/// The Lease name for (pool, node): `kiln-<pool>-<node>`, shortened with a hash when it would
/// exceed the 253 characters of an object name.
pub fn lease_name(pool: &str, node: &str) -> String {
    let name = format!("kiln-{pool}-{node}");
    if name.len() <= 253 {
        return name;
    }
    let hash = super::short_sha256(name.as_bytes(), 6);
    format!("{}-{hash}", &name[..240].trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::api::ObjectMeta;

    fn lease(renewed: i64, capacity: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("kiln-default-n1".into()),
                labels: Some([(POOL_LABEL.into(), "default".into()), (NODE_LABEL.into(), "n1".into())].into()),
                annotations: Some([(CAPACITY_ANNOTATION.into(), capacity.into())].into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).expect("ts"))),
                lease_duration_seconds: Some(15),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn reads_capacity_and_freshness() {
        let hb = Heartbeat::from_lease(&lease(
            100,
            r#"{"maxConcurrentBuilds":2,"running":1,"platforms":["linux/amd64"],"worker":"moby"}"#,
        ))
        .expect("heartbeat");
        assert_eq!((hb.pool.as_str(), hb.node.as_str()), ("default", "n1"));
        assert_eq!(hb.capacity.free_slots(), 1);
        assert!(hb.is_fresh(Timestamp::from_second(114).expect("ts")));
        assert!(!hb.is_fresh(Timestamp::from_second(115).expect("ts")));
        assert_eq!(hb.expires(), Timestamp::from_second(115).expect("ts"));
    }

    #[test]
    fn malformed_capacity_reads_as_no_capacity() {
        let hb = Heartbeat::from_lease(&lease(1, "not json")).expect("still a heartbeat");
        assert_eq!(hb.capacity.free_slots(), 0);
    }

    #[test]
    fn lease_names_fit_in_an_object_name() {
        assert_eq!(lease_name("default", "node-1"), "kiln-default-node-1");
        let long = lease_name("p", &"n".repeat(260));
        assert!(long.len() <= 253, "{}", long.len());
        assert_ne!(long, lease_name("p", &"n".repeat(261)));
    }
}

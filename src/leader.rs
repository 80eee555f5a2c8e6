//! Leader election on a `coordination.k8s.io/v1` Lease, so two controller replicas never both act.
//!
//! A replica acts only while it holds the Lease. It renews every `duration / 3`; a holder that
//! cannot renew before its lease runs out stops acting (the process exits and is restarted), and
//! another replica takes over once the lease has expired. A holder that stops gracefully (a
//! rollout, `kubectl delete pod`) releases the Lease, so a standby takes over at its next try
//! rather than after the lease duration (client-go's `ReleaseOnCancel`). Updates use the Lease's
//! `resourceVersion`, so two replicas racing for an expired lease cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tracing::{info, warn};

/// Leader election failures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Lease could not be read or written.
    #[error("leader election lease {name}: {source}; check the controller's RBAC for leases in its namespace")]
    Api {
        /// Lease name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Another replica took the Lease, or renewals failed until it expired.
    #[error("lost leadership of lease {0}: another replica may act now, so this one stops")]
    Lost(String),
}

/// Competes for one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Elector {
    /// An elector for Lease `name` in `namespace`, as `identity` (e.g. the pod name).
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) -> Result<(), Error> {
        let mut announced = false;
        loop {
            if self.try_acquire_or_renew().await? {
                info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                return Ok(());
            }
            if !announced {
                info!(lease = %self.name, "another replica leads; waiting");
                announced = true;
            }
            tokio::time::sleep(self.duration / 5).await;
        }
    }

    /// Renews the Lease until leadership is lost; returns why.
    pub async fn keep(&self) -> Error {
        let mut last_renewal = std::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = std::time::Instant::now(),
                Ok(false) => return Error::Lost(self.name.clone()),
                Err(e) => {
                    warn!(error = %e, "lease renewal failed");
                    if last_renewal.elapsed() >= self.duration {
                        return Error::Lost(self.name.clone());
                    }
                }
            }
        }
    }

    /// Gives the Lease up if this replica holds it, so a standby need not wait for it to expire.
    /// Best effort: on failure the Lease simply expires.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => info!(lease = %self.name, identity = %self.identity, "released leadership"),
            Err(e) => warn!(error = %e, lease = %self.name, "cannot release leadership; it expires instead"),
        }
    }

    /// One attempt: true when this replica holds the Lease afterwards.
    async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        let api_err = |source| Error::Api {
            name: self.name.clone(),
            source,
        };
        let now = Timestamp::now();
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await.map_err(api_err)? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
                Err(e) => Err(api_err(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let released = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        let expired = released
            || spec.renew_time.as_ref().is_none_or(|t| {
                let valid = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(seconds)));
                now.duration_since(t.0) >= valid
            });
        if !ours && !expired {
            return Ok(false);
        }
        if !ours {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(seconds);
        // replace() sends the resourceVersion we read: a racing replica gets 409 Conflict.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(api_err(e)),
        }
    }
}

//! Stopping on SIGTERM (the kubelet stopping a pod) or SIGINT (Ctrl-C).
//!
//! kiln runs as PID 1 in its containers, where a signal without a handler is ignored: without
//! this, every rollout, pool deletion and node drain would wait out the whole grace period
//! before the kubelet's SIGKILL.

use tracing::warn;

/// Resolves with the signal's name on SIGTERM or SIGINT.
pub async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops kiln");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

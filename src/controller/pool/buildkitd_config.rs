//! Renders `buildkitd.toml` for a pool's containerd-flavour builders: the containerd worker in
//! namespace `k8s.io` with the node's snapshotter, the OCI worker off, GC and parallelism from
//! the pool. Pure, like the DaemonSet rendering beside it.
//!
//! Every path buildkitd hands the host's containerd must exist at the same path on the host,
//! so besides its root, the tracing socket BuildKit (v0.13+) bind-mounts into `RUN` containers
//! lives in the pool's state directory too, not in the default `/run/buildkit`.

use super::render::{BUILDKIT_ADDR, DEFAULT_SNAPSHOTTER, Input, run_network, state_dir};
use super::runtime::{RuntimePaths, slug};
use crate::api::builder_pool::RunNetwork;

/// The config text for `input`, whose runtime paths are `host`.
pub fn buildkitd_toml(input: &Input<'_>, host: &RuntimePaths) -> String {
    let spec = &input.pool.spec;
    let pool = input.pool.metadata.name.as_deref().unwrap_or_default();
    let snapshotter = spec
        .runtime
        .as_ref()
        .and_then(|r| r.snapshotter.as_deref())
        .unwrap_or(DEFAULT_SNAPSHOTTER);
    let gc = spec.gc.clone().unwrap_or_default();
    let mut toml = format!(
        "# Rendered by kiln for BuilderPool {pool:?} ({flavour} nodes); do not edit.\n\
         root = \"{root}/buildkit\"\n{entitlements}\n\
         [grpc]\n  address = [\"{BUILDKIT_ADDR}\"]\n\n\
         [otel]\n  socketPath = \"{root}/otel-grpc.sock\"\n\n\
         [worker.oci]\n  enabled = false\n\n\
         [worker.containerd]\n  enabled = true\n  address = \"{socket}\"\n  namespace = \"k8s.io\"\n  \
         snapshotter = \"{snapshotter}\"\n  gc = {gc_on}\n",
        flavour = slug(input.kind),
        root = state_dir(input.pool),
        socket = host.socket,
        gc_on = gc.enabled.unwrap_or(true),
        // Top-level keys must precede the tables.
        entitlements = if run_network(spec) == RunNetwork::Host {
            "insecure-entitlements = [\"network.host\"]\n"
        } else {
            ""
        },
    );
    if let Some(mib) = gc.keep_storage_mib {
        toml.push_str(&format!("  gckeepstorage = {mib}\n"));
    }
    if let Some(p) = spec.max_parallelism {
        toml.push_str(&format!("  max-parallelism = {p}\n"));
    }
    if let Some(d) = gc
        .keep_duration
        .as_deref()
        .and_then(|d| d.parse::<kube::core::Duration>().ok())
    {
        let secs = std::time::Duration::from(d).as_secs();
        toml.push_str("\n  [[worker.containerd.gcpolicy]]\n");
        toml.push_str(&format!("    keepDuration = {secs}\n"));
        if let Some(mib) = gc.keep_storage_mib {
            toml.push_str(&format!("    keepBytes = {}\n", mib * 1024 * 1024));
        }
        toml.push_str(
            "    filters = [\"type==source.local\", \"type==exec.cachemount\", \"type==source.git.checkout\"]\n",
        );
        toml.push_str("\n  [[worker.containerd.gcpolicy]]\n    all = true\n");
        if let Some(mib) = gc.keep_storage_mib {
            toml.push_str(&format!("    keepBytes = {}\n", mib * 1024 * 1024));
        }
    }
    toml
}

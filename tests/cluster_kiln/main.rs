//! kiln inside a real cluster: installed from its own manifests (`kiln crds`, `kiln manifests`),
//! its controller Deployment and builder DaemonSet run by a real kubelet, an `ImageBuild`
//! applied and waited on with `kubectl`, and the image it built started as a Pod straight from
//! the node's store (imagePullPolicy Never) — no registry anywhere.
//!
//! Ignored by default; `make e2e-cluster` runs it with `--include-ignored` against the local
//! cluster (Docker mode) or `$KUBECONFIG`'s. The tests install kiln into `kiln-system` (and
//! leave it there; the local cluster is thrown away afterwards). Pool settings a cluster may
//! need, from the environment (the local cluster's `cluster.env` sets them):
//!
//! | variable                          | the default pool's …                          |
//! |-----------------------------------|-----------------------------------------------|
//! | `KILN_E2E_POOL_RUNTIME_SOCKET`    | `runtime.socket` (the local cluster's private dockerd) |
//! | `KILN_E2E_POOL_RUNTIME_ROOT`      | `runtime.root` (the local cluster's containerd root) |
//! | `KILN_E2E_POOL_RUN_NETWORK`       | `runNetwork` (`None`: the local dockerd has no bridge) |
//! | `KILN_E2E_POOL_STATE_ROOT`        | parent of `stateDir` (must be a shared mount)  |
//! | `KILN_E2E_CONTAINERD_SOCKET`      | socket of the containerd-flavour pool's test   |
//! | `KILN_E2E_CONTAINERD_ROOT`        | that containerd's root directory               |
//! | `KILN_CLUSTER_DOCKER_HOST`        | (local cluster) the node's dockerd, to compare digests |
//! | `KILN_CLUSTER_CONTAINERD_ADDRESS` | (local cluster) the node's containerd, likewise |
//! | `KILN_E2E_BUILDKIT_IMAGE`         | the pools' `buildkitImage`: containerd builders run only with one the nodes have (`make e2e-cluster` loads an archive given here) |
//!
//! One test binary, a module per scenario: `builds` (the default pool builds and a Pod runs the
//! image), `containerd` (a containerd-flavour pool's rendering and agent), `helm_chart` (the
//! chart installs kiln and an upgrade rolls only the controller).

#[path = "../support/cluster.rs"]
#[allow(dead_code)]
mod cluster;
#[path = "../support/helm.rs"]
mod helm;
#[path = "../support/http.rs"]
mod http;
#[path = "../support/kiln_cluster.rs"]
mod kiln_cluster;
#[path = "../support/process.rs"]
#[allow(dead_code)]
mod process;
#[path = "../support/python.rs"]
mod python;

mod builds;
mod containerd;
mod helm_chart;

/// The tests share one kiln installation and one node; they take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

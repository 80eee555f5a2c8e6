//! Worker information from `ListWorkers`, and which exporter a worker needs.

use std::collections::BTreeMap;

use bollard_buildkit_proto::moby::buildkit::v1::types::WorkerRecord;

/// Worker label naming the executor (`oci` or `containerd`).
pub const LABEL_EXECUTOR: &str = "org.mobyproject.buildkit.worker.executor";
/// Worker label naming the snapshotter (`overlayfs`, `native`, …).
pub const LABEL_SNAPSHOTTER: &str = "org.mobyproject.buildkit.worker.snapshotter";
/// Worker label naming the containerd namespace (containerd worker).
pub const LABEL_CONTAINERD_NAMESPACE: &str = "org.mobyproject.buildkit.worker.containerd.namespace";

/// What kind of worker builds, which decides the exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkerKind {
    /// Docker's embedded BuildKit: exporter `moby`, the digest is the image ID.
    Moby,
    /// buildkitd's containerd worker: exporter `image`, images land in a
    /// containerd namespace (`k8s.io` for the kubelet).
    Containerd,
    /// buildkitd's OCI (runc) worker: exporter `image`, its own content store.
    Oci,
    /// Anything else; treated like an OCI worker.
    Unknown,
}

/// One BuildKit worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The worker's ID.
    pub id: String,
    /// Platforms it can build, `os/arch[/variant]`.
    pub platforms: Vec<String>,
    /// `org.mobyproject.buildkit.worker.executor`.
    pub executor: Option<String>,
    /// `org.mobyproject.buildkit.worker.snapshotter`.
    pub snapshotter: Option<String>,
    /// `org.mobyproject.buildkit.worker.containerd.namespace`.
    pub containerd_namespace: Option<String>,
    /// BuildKit's version, when the daemon reports it (v0.11+), e.g. `v0.17.0`.
    pub buildkit_version: Option<String>,
    /// The kind, derived from the labels and the endpoint.
    pub kind: WorkerKind,
    /// All labels as reported.
    pub labels: BTreeMap<String, String>,
}

impl WorkerInfo {
    /// Interprets a `WorkerRecord`. `via_docker` says whether it came through
    /// Docker's API socket, whose worker reports no executor label.
    pub(crate) fn from_record(rec: WorkerRecord, via_docker: bool) -> Self {
        let labels: BTreeMap<String, String> = rec.labels.into_iter().collect();
        let label = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        let executor = label(LABEL_EXECUTOR);
        let kind = match executor.as_deref() {
            Some("containerd") => WorkerKind::Containerd,
            Some("oci") if !via_docker => WorkerKind::Oci,
            _ if via_docker || rec.id == "moby" => WorkerKind::Moby,
            Some("oci") => WorkerKind::Oci,
            _ => WorkerKind::Unknown,
        };
        let platforms = rec
            .platforms
            .iter()
            .map(|p| {
                let mut s = format!("{}/{}", p.os, p.architecture);
                if !p.variant.is_empty() {
                    s.push('/');
                    s.push_str(&p.variant);
                }
                s
            })
            .collect();
        let buildkit_version = rec.buildkit_version.map(|v| v.version).filter(|v| !v.is_empty());
        WorkerInfo {
            id: rec.id,
            platforms,
            snapshotter: label(LABEL_SNAPSHOTTER),
            containerd_namespace: label(LABEL_CONTAINERD_NAMESPACE),
            executor,
            buildkit_version,
            kind,
            labels,
        }
    }
}

/// The kind that decides the exporter when a daemon has several workers:
/// the first (default) worker's.
pub(crate) fn primary_kind(workers: &[WorkerInfo], via_docker: bool) -> WorkerKind {
    match workers.first() {
        Some(w) => w.kind,
        None if via_docker => WorkerKind::Moby,
        None => WorkerKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard_buildkit_proto::moby::buildkit::v1::types::BuildkitVersion;
    use bollard_buildkit_proto::pb::Platform;

    fn rec(id: &str, labels: &[(&str, &str)]) -> WorkerRecord {
        WorkerRecord {
            id: id.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            platforms: vec![
                Platform {
                    os: "linux".into(),
                    architecture: "amd64".into(),
                    ..Default::default()
                },
                Platform {
                    os: "linux".into(),
                    architecture: "arm".into(),
                    variant: "v7".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn detects_kinds() {
        let c = WorkerInfo::from_record(
            rec(
                "w1",
                &[
                    (LABEL_EXECUTOR, "containerd"),
                    (LABEL_SNAPSHOTTER, "overlayfs"),
                    (LABEL_CONTAINERD_NAMESPACE, "k8s.io"),
                ],
            ),
            false,
        );
        assert_eq!(c.kind, WorkerKind::Containerd);
        assert_eq!(c.containerd_namespace.as_deref(), Some("k8s.io"));
        assert_eq!(c.platforms, vec!["linux/amd64", "linux/arm/v7"]);
        let o = WorkerInfo::from_record(rec("w2", &[(LABEL_EXECUTOR, "oci")]), false);
        assert_eq!(o.kind, WorkerKind::Oci);
        let m = WorkerInfo::from_record(rec("abc", &[]), true);
        assert_eq!(m.kind, WorkerKind::Moby);
        let u = WorkerInfo::from_record(rec("abc", &[]), false);
        assert_eq!(u.kind, WorkerKind::Unknown);
        assert_eq!(primary_kind(&[], true), WorkerKind::Moby);
    }

    #[test]
    fn version_when_reported() {
        let mut r = rec("w", &[(LABEL_EXECUTOR, "oci")]);
        r.buildkit_version = Some(BuildkitVersion {
            package: "github.com/moby/buildkit".into(),
            version: "v0.17.0".into(),
            revision: "x".into(),
        });
        assert_eq!(
            WorkerInfo::from_record(r, false).buildkit_version.as_deref(),
            Some("v0.17.0")
        );
    }
}

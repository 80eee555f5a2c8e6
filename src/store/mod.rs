//! A node's image store, asked directly: whether an image is there, and removing one. Docker's
//! (through its API socket) and containerd's (its images service, in a namespace: the
//! kubelet's is `k8s.io`). The groundwork for reporting which of kiln's images each node still
//! holds, and for removing them when their build goes (issue 15).

pub mod containerd;
pub mod docker;

use std::path::PathBuf;

/// What went wrong asking the store. Messages name the socket and what to check.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection.
    #[error(
        "cannot reach the image store at {socket}: {detail}; check that the runtime's socket is mounted into the agent"
    )]
    Unreachable {
        /// The socket.
        socket: String,
        /// What failed.
        detail: String,
    },
    /// A container uses the image, so the store keeps it (Docker says so; containerd does not
    /// track this).
    #[error("image {name} is used by a container, so the store keeps it: {detail}")]
    InUse {
        /// The image.
        name: String,
        /// The store's words.
        detail: String,
    },
    /// Any other refusal.
    #[error("the image store refused: {0}")]
    Refused(String),
}

/// What a removal found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The name was there and is gone now.
    Removed,
    /// The name was not there.
    Absent,
}

/// What pinning did at the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pinning {
    /// Labelled, and the runtime honours the label (the kubelet must too: 1.29+).
    Labelled {
        /// The runtime and its version.
        runtime: String,
    },
    /// The store cannot keep the image from garbage collection; why.
    Unsupported(String),
}

/// Whether a version like `v1.29.3`, `1.6.20~ds1` or `1.7.0-rc.1` is at least `min`
/// (major, minor); `None` when it cannot be read.
pub fn version_at_least(version: &str, min: (u32, u32)) -> Option<bool> {
    let mut parts = version.trim_start_matches('v').split('.');
    let mut number = || -> Option<u32> {
        let digits: String = parts.next()?.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let (major, minor) = (number()?, number()?);
    Some((major, minor) >= min)
}

/// Where a node keeps its images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageStore {
    /// Docker's store, through its API socket.
    Docker(PathBuf),
    /// containerd's, through its gRPC socket, in `namespace`.
    Containerd {
        /// The socket.
        socket: PathBuf,
        /// The containerd namespace (`k8s.io` for the kubelet's images).
        namespace: String,
    },
}

impl ImageStore {
    /// Whether the store has an image named `name` (normalised, `docker.io/library/x:tag`).
    pub async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        match self {
            ImageStore::Docker(socket) => docker::exists(socket, name).await,
            ImageStore::Containerd { socket, namespace } => containerd::exists(socket, namespace, name).await,
        }
    }

    /// Protects `name` from the kubelet's image garbage collection where this store can:
    /// containerd takes the CRI pinned label (honoured from 1.7 on: see [`Pinning`]); Docker's
    /// store has no such thing.
    pub async fn pin(&self, name: &str) -> Result<Pinning, StoreError> {
        match self {
            ImageStore::Docker(_) => Ok(Pinning::Unsupported("Docker's image store has no pinning".to_owned())),
            ImageStore::Containerd { socket, namespace } => {
                if !containerd::pin(socket, namespace, name).await? {
                    return Err(StoreError::Refused(format!("no image {name} to pin")));
                }
                let version = containerd::version(socket).await?;
                Ok(match version_at_least(&version, (1, 7)) {
                    Some(true) => Pinning::Labelled {
                        runtime: format!("containerd {version}"),
                    },
                    _ => Pinning::Unsupported(format!(
                        "labelled io.cri-containerd.pinned=pinned, but containerd {version} ignores the label (1.7 and later honour it)"
                    )),
                })
            }
        }
    }

    /// The image's size in bytes (Docker: unpacked; containerd: what its manifest lists, the
    /// compressed layers); `Ok(None)` if the store has no such image.
    pub async fn size(&self, name: &str) -> Result<Option<u64>, StoreError> {
        match self {
            ImageStore::Docker(socket) => docker::size(socket, name).await,
            ImageStore::Containerd { socket, namespace } => containerd::size(socket, namespace, name).await,
        }
    }

    /// Calls `removed` whenever the store reports an image removal (Docker's `/events`,
    /// containerd's `/images/delete`), until the stream breaks; the caller reconnects.
    pub async fn follow_removals(&self, removed: &(dyn Fn() + Send + Sync)) -> Result<(), StoreError> {
        match self {
            ImageStore::Docker(socket) => docker::follow_removals(socket, removed).await,
            ImageStore::Containerd { socket, namespace } => {
                containerd::follow_removals(socket, namespace, removed).await
            }
        }
    }

    /// Removes the name `name` (the image goes with its last name).
    pub async fn remove(&self, name: &str) -> Result<Removal, StoreError> {
        match self {
            ImageStore::Docker(socket) => docker::remove(socket, name).await,
            ImageStore::Containerd { socket, namespace } => containerd::remove(socket, namespace, name).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::version_at_least;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert_eq!(version_at_least("1.6.20~ds1", (1, 7)), Some(false));
        assert_eq!(version_at_least("v1.7.0-rc.1", (1, 7)), Some(true));
        assert_eq!(version_at_least("2.0.0", (1, 7)), Some(true));
        assert_eq!(version_at_least("v1.20.2", (1, 29)), Some(false));
        assert_eq!(version_at_least("v1.29.0", (1, 29)), Some(true));
        assert_eq!(version_at_least("dev", (1, 7)), None);
    }
}

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

    /// Removes the name `name` (the image goes with its last name).
    pub async fn remove(&self, name: &str) -> Result<Removal, StoreError> {
        match self {
            ImageStore::Docker(socket) => docker::remove(socket, name).await,
            ImageStore::Containerd { socket, namespace } => containerd::remove(socket, namespace, name).await,
        }
    }
}

//! The BuilderPool controller: renders and applies each pool's builder DaemonSets, labels nodes
//! with their detected runtime, and derives pool status from agent heartbeats (and, for builders
//! that do not heartbeat, from what the kubelet says about their pods).

pub mod applied;
pub mod buildkitd_config;
pub mod cache;
pub mod pods;
pub mod reconcile;
pub mod render;
pub mod runtime;
pub mod status;

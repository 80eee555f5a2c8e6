//! kiln: build container images on the Kubernetes nodes that will run them.
//!
//! One crate, one binary, several roles (see `README.md`): the controller reconciles
//! `BuilderPool`s and `ImageBuild`s, the agent runs each node's builds on its BuildKit, and the
//! CLI is the front door. The roles meet only through Kubernetes objects.

pub mod agent;
pub mod api;
pub mod buildkit;
pub mod cli;
pub mod context;
pub mod controller;
pub mod deploy;
pub mod git;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod shutdown;
pub mod store;
pub mod watch;

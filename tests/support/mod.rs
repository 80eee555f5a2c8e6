//! Shared test support: real processes (kube-apiserver, etcd, dockerd) and their clean-up.
#![allow(dead_code)]

pub mod api_requests;
pub mod apiserver;
pub mod buildkit;
pub mod certs;
pub mod cli;
pub mod docker;
pub mod e2e;
pub mod git;
pub mod helm;
pub mod http;
pub mod kiln;
pub mod process;
pub mod python;

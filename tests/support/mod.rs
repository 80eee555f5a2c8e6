//! Shared test support: real processes (kube-apiserver, etcd, dockerd) and their clean-up.
#![allow(dead_code)]

pub mod apiserver;
pub mod kiln;
pub mod process;

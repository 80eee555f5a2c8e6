//! A stand-in for BuildKit, for the scale harness only (`benches/scale.rs`): each solve waits a
//! set time and reports a digest made from the image names, so the controller, the agents'
//! API traffic and the apiserver can be measured with hundreds of builders and no BuildKit.
//! It counts every solve per attempt, so the harness can prove each ran exactly once. Nothing
//! in `kiln` itself can select it: only code that builds agent [`Settings`](super::Settings)
//! by hand (the harness) sets [`Settings::simulated`](super::Settings::simulated).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::buildkit::{BuildHandle, BuildOutput, DigestKind, Error, ProgressSummary, WorkerInfo, WorkerKind};

/// One attempt's solves as the simulated builder saw them.
#[derive(Clone, Debug)]
pub struct Solves {
    /// How many solves this attempt started (1 unless something ran it twice).
    pub count: u32,
    /// When the first one started.
    pub first_start: SystemTime,
}

/// The simulated builder: solves take `per_build`.
#[derive(Debug)]
pub struct SimulatedBuildKit {
    per_build: Duration,
    solves: Mutex<HashMap<String, Solves>>,
}

impl SimulatedBuildKit {
    /// A simulated builder whose solves take `per_build`.
    pub fn new(per_build: Duration) -> Arc<Self> {
        Arc::new(Self {
            per_build,
            solves: Mutex::default(),
        })
    }

    /// The worker a heartbeat reports.
    pub fn worker() -> WorkerInfo {
        WorkerInfo {
            id: "simulated".into(),
            platforms: vec!["linux/amd64".into()],
            executor: None,
            snapshotter: None,
            containerd_namespace: None,
            buildkit_version: Some("simulated".into()),
            kind: WorkerKind::Containerd,
            labels: Default::default(),
        }
    }

    /// Starts a simulated solve of attempt `attempt` (`namespace/name`) exporting `names`.
    pub fn solve(&self, attempt: &str, names: Vec<String>) -> BuildHandle {
        if let Ok(mut solves) = self.solves.lock() {
            solves
                .entry(attempt.to_owned())
                .and_modify(|s| s.count += 1)
                .or_insert(Solves {
                    count: 1,
                    first_start: SystemTime::now(),
                });
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (result_tx, result_rx) = oneshot::channel();
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        let per_build = self.per_build;
        let build_ref = format!("simulated-{attempt}");
        let output = BuildOutput {
            build_ref: build_ref.clone(),
            digest: format!("sha256:{:x}", Sha256::digest(names.join(",").as_bytes())),
            digest_kind: DigestKind::Manifest,
            config_digest: None,
            image_names: names,
            exporter_response: Default::default(),
            summary: ProgressSummary {
                total: 1,
                completed: 1,
                cached: 1,
                current: None,
            },
            buildkit_duration: Some(per_build),
        };
        tokio::spawn(async move {
            // The events sender lives as long as the solve, as BuildKit's stream does.
            let _events = events_tx;
            let result = tokio::select! {
                () = tokio::time::sleep(per_build) => Ok(output),
                _ = cancel_rx => Err(Error::Cancelled),
            };
            let _ = result_tx.send(result);
        });
        BuildHandle::from_channels(build_ref, events_rx, result_rx, cancel_tx)
    }

    /// Every attempt's solves so far.
    pub fn solves(&self) -> HashMap<String, Solves> {
        self.solves.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

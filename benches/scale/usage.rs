//! What the processes of the scale harness's world use (CPU time and RSS of the controller,
//! the harness process with its agents, kube-apiserver and etcd), sampled from `/proc` while a
//! run or a baseline goes.

use std::time::Duration;

use serde::Serialize;

use crate::harness::Harness;

/// A process's resource use over the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub cpu_share_of_one_core: f64,
    pub max_rss_mib: f64,
    /// RSS when the run ended: what stays, against the peak above.
    pub end_rss_mib: f64,
}

/// The processes whose resource use a run reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Usages {
    pub controller: Usage,
    /// The harness process: the agents, the simulated backend and the measuring client.
    pub agents: Usage,
    pub apiserver: Usage,
    pub etcd: Usage,
}

/// Samples CPU time and RSS of the controller, this process (the agents), kube-apiserver and
/// etcd, every 500 ms until stopped.
pub struct UsageProbe {
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Vec<Usage>>,
}

impl UsageProbe {
    /// Starts sampling the world of `h`.
    pub fn start(h: &Harness) -> UsageProbe {
        let (apiserver, etcd) = h.server.pids();
        let pids: Vec<String> = vec![
            h.controller.process.pid().to_string(),
            "self".into(),
            apiserver.to_string(),
            etcd.to_string(),
        ];
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let done = tokio::spawn(async move {
            let cpu0: Vec<f64> = pids.iter().map(|p| cpu_seconds(p)).collect();
            let mut max_rss = vec![0.0f64; pids.len()];
            loop {
                for (max, pid) in max_rss.iter_mut().zip(&pids) {
                    *max = max.max(rss_mib(pid));
                }
                tokio::select! {
                    _ = &mut stopped => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            pids.iter()
                .zip(cpu0)
                .zip(max_rss)
                .map(|((pid, cpu0), max_rss_mib)| Usage {
                    cpu_seconds: cpu_seconds(pid) - cpu0,
                    max_rss_mib,
                    end_rss_mib: rss_mib(pid),
                    ..Usage::default()
                })
                .collect()
        });
        UsageProbe { stop, done }
    }

    /// Stops sampling; shares of a core are over `seconds`.
    pub async fn stop(self, seconds: f64) -> Usages {
        let _ = self.stop.send(());
        let mut all = self.done.await.unwrap_or_default().into_iter().map(|mut u| {
            u.cpu_share_of_one_core = u.cpu_seconds / seconds.max(0.001);
            u
        });
        let mut next = || all.next().unwrap_or_default();
        Usages {
            controller: next(),
            agents: next(),
            apiserver: next(),
            etcd: next(),
        }
    }
}

/// utime + stime of `/proc/<pid>/stat`, in seconds (clock ticks of 1/100 s).
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// VmRSS of `/proc/<pid>/status`, in MiB.
pub fn rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

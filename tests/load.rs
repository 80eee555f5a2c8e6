//! Load: many ImageBuilds created at once against two builders with one slot each. Every build
//! must finish, attempts that wait report their place in the node's queue, and the agents'
//! memory stays bounded while hundreds of attempts wait on them. Real agents and controller,
//! real apiserver, real BuildKit.
//!
//! `make test` creates `KILN_LOAD_BUILDS` (default 40) builds; `make load` creates 1,000.

mod support;

use std::time::{Duration, Instant};

use kiln::api::ImageBuild;
use kiln::api::NodeBuild;
use kiln::api::conditions::{self, READY, STALLED};
use kube::api::{Api, ListParams};
use serde_json::json;
use support::e2e::{Rig, Tuning};

const NODES: [&str; 2] = ["load-a", "load-b"];
/// Far above what an agent needs (tens of MiB), far below what keeping every waiting attempt's
/// build state around would take at 1,000 builds.
const AGENT_RSS_LIMIT_MIB: f64 = 256.0;

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

#[tokio::test]
async fn many_builds_at_once_on_two_single_slot_builders_all_finish_in_bounded_memory() {
    let count: usize = std::env::var("KILN_LOAD_BUILDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let tuning = Tuning {
        agent: vec!["--max-concurrent-builds=1".into()],
        ..Default::default()
    };
    let rig = Rig::start_tuned(&NODES, tuning).await;
    let client = rig.client().await;
    let ns = rig.server.namespace(&client, "load").await;
    let url = rig.context(&ns, &[("marker.txt", ns.as_bytes())]);
    let manifests: String = (0..count)
        .map(|i| {
            let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild",
                "metadata": {"name": format!("load-{i}"), "namespace": ns},
                "spec": {"image": format!("kiln.local/{ns}/load:{i}"), "source": {"http": {"url": url}},
                         "dockerfileInline": format!("FROM scratch\nCOPY marker.txt /marker.txt\nLABEL n={i}\n")}});
            format!("---\n{build}\n")
        })
        .collect();
    let started = Instant::now();
    rig.server.apply_manifests(&manifests);
    let created = started.elapsed();

    let builds: Api<ImageBuild> = Api::namespaced(client.clone(), &ns);
    let attempts: Api<NodeBuild> = Api::namespaced(client.clone(), &ns);
    let pids: Vec<u32> = rig.agents.lock().expect("lock").values().map(|a| a.pid()).collect();
    let (mut peak_rss, mut max_position, mut ready) = (0.0f64, 0, 0);
    let deadline = Instant::now()
        + Duration::from_secs(120)
        + Duration::from_millis(500) * u32::try_from(count).unwrap_or(u32::MAX);
    while ready < count {
        for pid in &pids {
            peak_rss = peak_rss.max(rss_mib(*pid).unwrap_or_default());
        }
        if let Ok(list) = attempts.list(&ListParams::default()).await {
            let positions = list.items.iter().filter_map(|nb| nb.status.as_ref()?.queue_position);
            max_position = max_position.max(positions.max().unwrap_or_default());
        }
        let list = builds.list(&ListParams::default()).await.expect("list ImageBuilds");
        let stalled: Vec<String> = list
            .items
            .iter()
            .filter(|b| {
                b.status
                    .as_ref()
                    .is_some_and(|s| conditions::is_true(&s.conditions, STALLED))
            })
            .map(|b| format!("{:?}", b.status))
            .collect();
        assert!(
            stalled.is_empty(),
            "a build stalled under load: {stalled:?}\n{}",
            rig.diagnostics()
        );
        ready = list
            .items
            .iter()
            .filter(|b| {
                b.status
                    .as_ref()
                    .is_some_and(|s| conditions::is_true(&s.conditions, READY))
            })
            .count();
        assert!(
            Instant::now() < deadline,
            "{ready} of {count} builds Ready when the wait ran out\n{}",
            rig.diagnostics()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = started.elapsed();
    eprintln!(
        "load: {count} builds on 2 builders x 1 slot: created in {:.1}s, all Ready in {:.1}s ({:.1} builds/s); \
         highest queue position reported {max_position}; agents' peak RSS {peak_rss:.1} MiB",
        created.as_secs_f64(),
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64()
    );
    assert!(
        max_position >= 1,
        "attempts that wait for a slot report their queue position"
    );
    assert!(
        peak_rss < AGENT_RSS_LIMIT_MIB,
        "an agent's RSS stays bounded: peak {peak_rss:.1} MiB"
    );
}

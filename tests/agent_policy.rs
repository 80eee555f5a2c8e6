//! The agent's own image-policy check against a real kube-apiserver: it follows the pool's
//! rules as an admin edits them, a rewrite of the pool's status (which lists every node)
//! reaches the agent as metadata alone and makes it read nothing, and a name a pod of another
//! namespace uses on the node is refused, from the agent's watch of its node's pods (no request
//! per check).

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kiln::agent::node_pods::NodePods;
use kiln::agent::policy::{PolicyGuard, REASON};
use kiln::api::BuilderPool;
use kiln::api::recipe::BuildRecipe;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::api_requests::{Requests, watch_event_bytes};
use support::apiserver::ApiServer;

fn recipe(image: &str) -> BuildRecipe {
    serde_json::from_value(json!({"image": image, "source": {"http": {"url": "http://127.0.0.1:9/ctx.tar"}}}))
        .expect("recipe")
}

/// A pool status the size of a 500-node pool's.
fn big_status(running: i32) -> serde_json::Value {
    let nodes: Vec<_> = (0..500)
        .map(|i| json!({"name": format!("node-{i:03}"), "ready": true, "running": running, "capacity": 2}))
        .collect();
    json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "BuilderPool",
           "status": {"desiredNodes": 500, "readyNodes": 500, "nodes": nodes}})
}

#[tokio::test]
async fn the_agent_follows_the_pools_rules_and_ignores_its_status() {
    let server = ApiServer::shared().await;
    let client = server.client().await;
    let ns = server.namespace(&client, "guard").await;
    let pools: Api<BuilderPool> = Api::all(client.clone());
    let name = format!("guard-{ns}");
    apply_rules(&pools, &name, "example.com/team/**", "create the pool").await;

    let pods = NodePods::new(client.clone(), "node-000");
    let guard = std::sync::Arc::new(PolicyGuard::new(client.clone(), &name, "node-000", pods.clone()));
    let watching = tokio::spawn({
        let (guard, pods) = (guard.clone(), pods.clone());
        async move { tokio::join!(guard.watch(), pods.watch()) }
    });
    let team = recipe("example.com/team/app:v1");
    guard
        .check(&ns, &team)
        .await
        .expect("the pool allows example.com/team/**");
    new_rules_take_effect(&guard, &pools, &name, &ns).await;
    status_rewrites_make_the_agent_read_nothing(&client, &guard, &pools, &name, &ns).await;

    // The pool is deleted: the default rules apply (the namespace's own prefix only).
    pools.delete(&name, &Default::default()).await.expect("delete");
    let own = recipe(&format!("kiln.local/{ns}/app:v1"));
    support::kiln::eventually(Duration::from_secs(20), "the default rules", || async {
        guard.check(&ns, &own).await.ok()
    })
    .await;
    assert!(guard.check(&ns, &team).await.is_err());

    pods_of_other_namespaces_hold_their_names(server, &client, &guard, &ns).await;
    watching.abort();
}

/// Creates or replaces pool `name` with one rule: images matching `pattern`.
async fn apply_rules(pools: &Api<BuilderPool>, name: &str, pattern: &str, what: &str) {
    let pool = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "BuilderPool", "metadata": {"name": name},
                      "spec": {"allowedImages": [{"patterns": [pattern]}]}});
    pools
        .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&pool))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// An admin narrows the rules: the agent refuses what they no longer allow, the new rules
/// replace the default ones, and what they allow passes.
async fn new_rules_take_effect(guard: &PolicyGuard, pools: &Api<BuilderPool>, name: &str, ns: &str) {
    apply_rules(pools, name, "example.com/other/**", "change the rules").await;
    let team = recipe("example.com/team/app:v1");
    let refused = support::kiln::eventually(Duration::from_secs(20), "the new rules in force", || async {
        guard.check(ns, &team).await.err()
    })
    .await;
    assert_eq!(refused.0, REASON);
    assert!(refused.1.contains("example.com/team/app:v1"), "{}", refused.1);
    let own = recipe(&format!("kiln.local/{ns}/app:v1"));
    assert!(
        guard.check(ns, &own).await.is_err(),
        "the rules replace the default ones"
    );
    guard
        .check(ns, &recipe("example.com/other/app:v1"))
        .await
        .expect("the new rules allow example.com/other/**");
}

/// The controller rewrites the status, the size of a 500-node pool's, three times: the agent's
/// metadata-only watch hears of it (less than a quarter of one status's bytes), it reads
/// nothing, and the rules still hold.
async fn status_rewrites_make_the_agent_read_nothing(
    client: &kube::Client,
    guard: &PolicyGuard,
    pools: &Api<BuilderPool>,
    name: &str,
    ns: &str,
) {
    let before = Requests::read(client).await;
    let sent_before = watch_event_bytes(client, "BuilderPool").await;
    let status_params = PatchParams::apply("kiln-controller-status").force();
    for running in 0..3 {
        pools
            .patch_status(name, &status_params, &Patch::Apply(&big_status(running)))
            .await
            .expect("status");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = Requests::read(client).await.since(&before);
    let reads: u64 = after
        .0
        .iter()
        .filter(|(k, _)| k.resource == "builderpools" && k.verb == "GET")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(reads, 0, "a status rewrite made the agent read the pool: {after:?}");
    let sent = watch_event_bytes(client, "BuilderPool").await - sent_before;
    let status_bytes = big_status(0).to_string().len() as f64;
    assert!(
        sent > 0.0 && sent < status_bytes / 4.0,
        "the agent's watch carried {sent} bytes for three status writes of {status_bytes} bytes each"
    );
    let team = recipe("example.com/team/app:v1");
    assert!(guard.check(ns, &team).await.is_err(), "and the rules still hold");
}

/// A pod of another namespace on this node runs the name: refused, naming the pod. Pods of
/// other nodes do not count. No check asks the apiserver for pods. Deleting the pod frees the
/// name.
async fn pods_of_other_namespaces_hold_their_names(
    server: &ApiServer,
    client: &kube::Client,
    guard: &PolicyGuard,
    ns: &str,
) {
    let other = server.namespace(client, "guard-other").await;
    let before = Requests::read(client).await;
    pod_on(
        client,
        &other,
        "borrower",
        "node-000",
        &format!("kiln.local/{ns}/app:v1"),
    )
    .await;
    pod_on(
        client,
        &other,
        "elsewhere",
        "node-001",
        &format!("kiln.local/{ns}/b:v1"),
    )
    .await;
    let own = recipe(&format!("kiln.local/{ns}/app:v1"));
    let refused = support::kiln::eventually(Duration::from_secs(20), "the pod seen", || async {
        guard.check(ns, &own).await.err()
    })
    .await;
    assert_eq!(refused.0, REASON);
    assert!(refused.1.contains(&format!("{other}/borrower")), "{}", refused.1);
    for _ in 0..10 {
        guard
            .check(ns, &recipe(&format!("kiln.local/{ns}/b:v1")))
            .await
            .expect("a pod on another node does not hold the name");
    }
    let pod_requests: Vec<_> = Requests::read(client)
        .await
        .since(&before)
        .0
        .into_iter()
        .filter(|(k, n)| k.resource == "pods" && k.verb != "POST" && *n > 0)
        .collect();
    assert!(pod_requests.is_empty(), "checks asked for pods: {pod_requests:?}");
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &other);
    // At once: with no kubelet here, a graceful deletion would leave it Terminating (still live).
    pods_api
        .delete("borrower", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete the pod");
    support::kiln::eventually(Duration::from_secs(20), "the name free again", || async {
        guard.check(ns, &own).await.ok()
    })
    .await;
}

/// A pod bound to `node` (no kubelet here: it stays Pending, which counts as live).
async fn pod_on(client: &kube::Client, ns: &str, name: &str, node: &str, image: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": image}]}
    }))
    .expect("Pod");
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("create Pod");
}

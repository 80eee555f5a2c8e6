//! `kiln::watch::patient` (the agents' NodeBuild watch) against a real kube-apiserver: across
//! watches that end and resume, a cache fed by it holds exactly what the apiserver holds, every
//! change arrives, and a resumed watch starts from where the last one ended (no relist).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use serde_json::json;
use support::api_requests::Requests;
use support::apiserver::ApiServer;

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"watch": "resume"}}, "data": {"v": value}}))
        .expect("ConfigMap")
}

#[tokio::test]
async fn a_patient_watch_resumes_where_it_ended_and_misses_nothing() {
    let server = ApiServer::shared().await;
    let client = server.client().await;
    let ns = server.namespace(&client, "resume").await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    for name in ["a", "b"] {
        api.create(&PostParams::default(), &config_map(name, "1"))
            .await
            .expect("create");
    }
    let before = Requests::read(&client).await;

    // Watches of 1 s: each ends at its timeout and the next resumes (no pause: none ends early).
    let config = watcher::Config::default().labels("watch=resume").timeout(1);
    let (store, writer) = reflector::store();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let events = kiln::watch::patient(api.clone(), config, Duration::from_secs(5)).reflect(writer);
    let record = seen.clone();
    let watching = tokio::spawn(events.for_each(move |e| {
        if let Ok(Event::Apply(cm) | Event::Delete(cm)) = e
            && let (Some(name), Ok(mut seen)) = (cm.metadata.name, record.lock())
        {
            seen.push(name);
        }
        async {}
    }));
    store.wait_until_ready().await.expect("listed");
    assert_eq!(store.state().len(), 2, "the listing");

    // Changes spread over several watches.
    for (i, name) in ["c", "d", "e"].iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(900)).await;
        api.create(&PostParams::default(), &config_map(name, &i.to_string()))
            .await
            .expect("create");
    }
    api.patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"v": "2"}})))
        .await
        .expect("patch");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    api.delete("b", &DeleteParams::default()).await.expect("delete");

    let want: BTreeMap<String, String> = [("a", "2"), ("c", "0"), ("d", "1"), ("e", "2")]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let held = || {
        store
            .state()
            .iter()
            .map(|cm| {
                let name = cm.metadata.name.clone().unwrap_or_default();
                let v = cm.data.as_ref().and_then(|d| d.get("v").cloned()).unwrap_or_default();
                (name, v)
            })
            .collect::<BTreeMap<_, _>>()
    };
    support::kiln::eventually(
        Duration::from_secs(20),
        "the cache as the apiserver holds it",
        || async { (held() == want).then_some(()) },
    )
    .await;
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    for name in ["c", "d", "e", "a", "b"] {
        assert!(
            seen.iter().any(|s| s == name),
            "{name}'s change arrived as an event: {seen:?}"
        );
    }
    let requests = Requests::read(&client).await.since(&before);
    let count = |verb: &str| {
        requests
            .0
            .iter()
            .filter(|(k, _)| k.resource == "configmaps" && k.verb == verb)
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    assert!(count("WATCH") >= 3, "the watch ended and resumed: {requests:?}");
    assert_eq!(
        count("LIST"),
        1,
        "resumed from its version, never listed again: {requests:?}"
    );
    watching.abort();
}

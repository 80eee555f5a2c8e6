//! `kiln install` and `kiln uninstall` against a real apiserver: a dry run changes nothing;
//! install applies the manifests (and again, idempotently); uninstall removes what install made
//! and keeps the CRDs unless told, and with `--yes` the cluster is as it was before.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::apiserver::ApiServer;

fn kiln(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .output()
        .expect("run kiln")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every object of the kinds an install touches, cluster-wide, as `kind/namespace/name`;
/// namespaces being deleted are left out (this apiserver has no namespace controller to
/// finish deleting them).
fn listing(server: &ApiServer) -> BTreeSet<String> {
    let kinds = "customresourcedefinitions,namespaces,clusterroles,clusterrolebindings,roles,rolebindings,\
                 serviceaccounts,deployments,services,configmaps,leases,networkpolicies";
    let (ok, out, err) = server.kubectl(&[
        "get",
        kinds,
        "--all-namespaces",
        "-o",
        "jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name}/{.status.phase}{\"\\n\"}{end}",
    ]);
    assert!(ok, "{err}");
    out.lines()
        .filter(|l| !l.ends_with("/Terminating"))
        .map(|l| l.rsplit_once('/').map_or(l, |(k, _)| k).to_owned())
        // The apiserver's own service-account tokens come and go with their ServiceAccounts.
        .filter(|l| !l.starts_with("ServiceAccount/") || l.contains("kiln"))
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test]
async fn install_then_uninstall_leaves_the_cluster_as_it_was() {
    let server = ApiServer::shared().await;
    let kubeconfig = server.kubeconfig();
    // This binary's apiserver starts with kiln's CRDs; a cluster that never had kiln has none.
    let (ok, _, err) = server.kubectl(&[
        "delete",
        "crd",
        "imagebuilds.kiln.dev",
        "nodebuilds.kiln.dev",
        "builderpools.kiln.dev",
    ]);
    assert!(ok, "{err}");
    wait_until("the CRDs to go", || {
        !listing(server).iter().any(|l| l.contains("kiln.dev"))
    });
    let before = listing(server);

    let out = kiln(&kubeconfig, &["install", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("kind: CustomResourceDefinition") && printed.contains("kind: Deployment"));
    let out = kiln(
        &kubeconfig,
        &["install", "--dry-run=server", "--set", "controller.replicas=2"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(listing(server), before, "a dry run changes nothing");

    let bad = kiln(&kubeconfig, &["install", "--set", "controler.replicas=2"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("controler"));

    for round in 0..2 {
        let out = kiln(&kubeconfig, &["install", "--set", "controller.replicas=2"]);
        assert!(out.status.success(), "round {round}: {}", text(&out));
    }
    let installed = listing(server);
    for want in [
        "CustomResourceDefinition//imagebuilds.kiln.dev",
        "Namespace//kiln-system",
        "Deployment/kiln-system/kiln-controller",
        "ClusterRole//kiln-developer",
        "ServiceAccount/kiln-system/kiln-agent",
    ] {
        assert!(installed.contains(want), "{want} installed: {installed:?}");
    }
    let (ok, replicas, _) = server.kubectl(&[
        "-n",
        "kiln-system",
        "get",
        "deploy",
        "kiln-controller",
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert!(ok && replicas == "2", "--set reaches the objects: {replicas}");
    let (ok, _, _) = server.kubectl(&["get", "builderpool", "default"]);
    assert!(ok, "the default pool is installed");

    // Someone's own objects next to kiln's stay.
    server.apply_manifests(
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "mine", "namespace": "default"}}"#,
    );
    let out = kiln(&kubeconfig, &["uninstall"]);
    assert!(out.status.success(), "{}", text(&out));
    let left = listing(server);
    assert!(
        left.contains("CustomResourceDefinition//imagebuilds.kiln.dev"),
        "without --yes the CRDs stay"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kept the CRDs"),
        "{}",
        text(&out)
    );
    let out = kiln(&kubeconfig, &["uninstall", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("the CRDs to go", || {
        !listing(server).iter().any(|l| l.contains("kiln.dev"))
    });
    let mut after = listing(server);
    assert!(after.remove("ConfigMap/default/mine"), "the user's object is untouched");
    assert_eq!(after, before, "uninstall --yes leaves only what existed before");
}

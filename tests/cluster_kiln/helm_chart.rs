//! kiln installed from its Helm chart in the cluster: an example ImageBuild builds and a Pod
//! runs it; an upgrade that changes a controller value rolls only the controller.

use std::path::Path;

use serde_json::{Value, json};

use crate::SERIAL;
use crate::cluster::Cluster;
use crate::kiln_cluster::{
    Context, SYSTEM_NS, WAIT, apply_and_wait_ready, builder_pods, buildkitd_starts, get_json, install, pool_settings,
    setup,
};
use crate::{helm, python};

/// kiln installed the way most platform teams install operators — by rendering the Helm chart
/// (with the cluster's pool settings as values) and applying what it renders, as `helm install`
/// does — builds an example ImageBuild that a Pod then runs; an upgrade that changes one
/// controller value rolls the controller and leaves the builder pods (and their running
/// builds) alone.
#[tokio::test]
#[ignore = "needs a real cluster: run `make e2e-cluster` (or set KILN_E2E_KUBECONFIG)"]
async fn the_helm_chart_installs_kiln_and_an_upgrade_rolls_only_the_controller() {
    let Some((cluster, image)) = setup() else { return };
    let Some(python) = python::venv_python() else { return };
    let _turn = SERIAL.lock().await;
    // CRDs for the server's version, as install() applies them (Helm creates crds/ itself).
    install(&cluster, &image);
    let chart = Chart::new(&cluster, &python, &image);
    chart.apply("1");
    cluster.rollout_status(SYSTEM_NS, "deployment/kiln-controller", WAIT);
    let deployment = get_json(&cluster, &["-n", SYSTEM_NS, "get", "deployment", "kiln-controller"]);
    assert_eq!(deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm");
    for pod in builder_pods(&cluster, "default") {
        if let Err(why) = buildkitd_starts(&cluster, &pod) {
            eprintln!("SKIPPED (chart install): {why}");
            return;
        }
    }
    cluster.wait_for(SYSTEM_NS, "builderpool/default", "condition=Ready", WAIT);
    example_builds_and_runs(&cluster);
    upgrade_rolls_only_the_controller(&cluster, &chart, &deployment);
    eprintln!("chart install: example built and run; an upgrade rolled the controller only");
}

/// The chart, rendered with the kiln image and the cluster's pool settings as values, applied
/// as `helm install`/`upgrade` would (server-side, field manager `helm`).
struct Chart<'a> {
    cluster: &'a Cluster,
    python: &'a Path,
    repository: String,
    tag: String,
    pool_spec: Value,
}

impl<'a> Chart<'a> {
    fn new(cluster: &'a Cluster, python: &'a Path, image: &str) -> Self {
        let (repository, tag) = image.rsplit_once(':').expect("image has a tag");
        let mut pool =
            json!({"metadata": {"name": "default"}, "spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}});
        pool_settings(&mut pool);
        Chart {
            cluster,
            python,
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            pool_spec: pool["spec"].clone(),
        }
    }

    /// Renders and applies the chart with `annotation` on the controller's pods (a value an
    /// upgrade changes).
    fn apply(&self, annotation: &str) {
        let values = json!({"image": {"repository": self.repository, "tag": self.tag, "pullPolicy": self.cluster.pull_policy},
               "controller": {"podAnnotations": {"kiln.dev/e2e-upgrade": annotation}},
               "defaultPool": {"spec": self.pool_spec}});
        let objects = helm::render(self.python, &values, "kiln", SYSTEM_NS);
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        self.cluster.kubectl_stdin_ok(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=helm",
                "-f",
                "-",
            ],
            Some(&list.to_string()),
        );
    }
}

/// An example from examples/, its context served here, with the cluster's busybox: it builds,
/// and a Pod on the builder's node runs it.
fn example_builds_and_runs(cluster: &Cluster) {
    let ns = cluster.namespace("chart");
    let dockerfile = format!(
        "FROM {busybox} AS build\nARG GREETING=hello\nRUN mkdir -p /out && printf '#!/bin/sh\\necho \"%s\"\\n' \"$GREETING\" > /out/greet && chmod +x /out/greet\n\
         FROM {busybox} AS runtime\nCOPY --from=build /out/greet /usr/local/bin/greet\nCMD [\"greet\"]\n",
        busybox = cluster.busybox_image
    );
    let context = Context::start_with(cluster, &ns, &[("Dockerfile", dockerfile.as_bytes())]);
    let example = std::fs::read_to_string(helm::repo("examples/imagebuild-multistage.yaml")).expect("example");
    let mut build: Value = serde_yaml::from_str(&example).expect("example YAML");
    build["metadata"]["namespace"] = json!(&*ns);
    // The example is written for namespace default; the default image policy allows each
    // namespace only its own kiln.local/<namespace>/ prefix.
    build["spec"]["image"] = json!(format!("kiln.local/{}/greeter:v1", &*ns));
    build["spec"]["source"]["http"]["url"] = json!(context.url());
    apply_and_wait_ready(cluster, &ns, &build.to_string(), "greeter");
    let node = builder_pods(cluster, "default")[0]["spec"]["nodeName"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let image = build["spec"]["image"].as_str().expect("image").to_owned();
    let (logs, _) = cluster.run_pod(&ns, "greeter", &image, Some(&node));
    assert_eq!(logs.trim(), "hello from kiln");
}

/// helm upgrade with one controller value changed: the controller's Deployment rolls, the
/// builder DaemonSets and their pods do not.
fn upgrade_rolls_only_the_controller(cluster: &Cluster, chart: &Chart, deployment: &Value) {
    let builders_before = builder_state(cluster);
    let generation_before = deployment["metadata"]["generation"].as_i64().unwrap_or_default();
    chart.apply("2");
    cluster.rollout_status(SYSTEM_NS, "deployment/kiln-controller", WAIT);
    let after = get_json(cluster, &["-n", SYSTEM_NS, "get", "deployment", "kiln-controller"]);
    assert!(
        after["metadata"]["generation"].as_i64().unwrap_or_default() > generation_before,
        "the controller rolled"
    );
    assert_eq!(builder_state(cluster), builders_before, "the builders did not roll");
}
/// The builder DaemonSets' generations and their pods' UIDs.
fn builder_state(cluster: &Cluster) -> (Vec<(String, i64)>, Vec<String>) {
    let sets = get_json(
        cluster,
        &[
            "-n",
            SYSTEM_NS,
            "get",
            "daemonsets",
            "-l",
            "app.kubernetes.io/component=builder",
        ],
    );
    let generations = sets["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            (
                d["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                d["metadata"]["generation"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    let mut pods: Vec<String> = builder_pods(cluster, "default")
        .iter()
        .map(|p| p["metadata"]["uid"].as_str().unwrap_or_default().to_owned())
        .collect();
    pods.sort();
    (generations, pods)
}

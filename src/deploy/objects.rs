//! kiln's install objects — service accounts, least-privilege RBAC for the controller, the
//! agents and developers, the controller Deployment and its metrics Service, the default
//! BuilderPool, and the optional monitors and NetworkPolicies — rendered from a [`Source`], so
//! `kiln manifests`, `kiln install` and the Helm chart's templates are the same objects.

use serde_json::{Value, json};

use super::source::Source;

/// One object, the chart template file it goes to, and the toggle it depends on.
pub struct Doc {
    /// The chart template it is rendered into, e.g. `controller.yaml`.
    pub file: &'static str,
    /// The values path of its toggle (`<path>.enabled`), if it is optional.
    pub toggle: Option<&'static str>,
    /// The object.
    pub object: Value,
}

fn doc(file: &'static str, object: Value) -> Doc {
    Doc {
        file,
        toggle: None,
        object,
    }
}

fn optional(file: &'static str, toggle: &'static str, object: Value) -> Doc {
    Doc {
        file,
        toggle: Some(toggle),
        object,
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

/// Every object, in apply order (no Namespace and no CRDs: see [`super::manifests`]).
pub fn all(s: &dyn Source) -> Vec<Doc> {
    let mut docs = vec![
        doc("serviceaccounts.yaml", service_account(s, "controller")),
        doc("serviceaccounts.yaml", service_account(s, "agent")),
    ];
    docs.extend(controller_rbac(s).into_iter().map(|o| doc("rbac-controller.yaml", o)));
    docs.extend(agent_rbac(s).into_iter().map(|o| doc("rbac-agent.yaml", o)));
    docs.extend(
        developer_rbac(s)
            .into_iter()
            .map(|o| optional("rbac-developer.yaml", "developerRoles", o)),
    );
    docs.push(doc("controller.yaml", deployment(s)));
    docs.push(doc("controller.yaml", metrics_service(s)));
    docs.push(optional("builderpool.yaml", "defaultPool", default_pool(s)));
    docs.push(optional("monitoring.yaml", "serviceMonitor", service_monitor(s)));
    docs.push(optional("monitoring.yaml", "podMonitor", pod_monitor(s)));
    docs.extend(
        network_policies(s)
            .into_iter()
            .map(|o| optional("networkpolicy.yaml", "networkPolicy", o)),
    );
    docs.into_iter()
        .filter(|d| d.toggle.is_none_or(|t| s.enabled(t)))
        .collect()
}

fn meta(s: &dyn Source, name: &str, component: &str) -> Value {
    json!({"name": s.name(name), "namespace": s.namespace(), "labels": s.labels(component)})
}

fn cluster_meta(s: &dyn Source, name: &str, component: &str) -> Value {
    json!({"name": s.name(name), "labels": s.labels(component)})
}

fn service_account(s: &dyn Source, role: &str) -> Value {
    let mut m = meta(s, role, role);
    m["annotations"] = s.value("controller.serviceAccountAnnotations");
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": m})
}

fn binding(s: &dyn Source, kind: &str, role_kind: &str, name: &str, account: &str) -> Value {
    let meta = if kind == "RoleBinding" {
        meta(s, name, account)
    } else {
        cluster_meta(s, name, account)
    };
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": meta,
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": s.name(name)},
           "subjects": [{"kind": "ServiceAccount", "name": s.name(account), "namespace": s.namespace()}]})
}

/// The controller: what it reads cluster-wide, and what it writes in kiln's namespace.
fn controller_rbac(s: &dyn Source) -> Vec<Value> {
    vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": cluster_meta(s, "controller", "controller"),
        "rules": [
            // ImageBuilds are deleted when ttlSecondsAfterFinished runs out.
            rule(&["kiln.dev"], &["imagebuilds"], &["get", "list", "watch", "patch", "update", "delete"]),
            rule(&["kiln.dev"], &["builderpools"], &["get", "list", "watch", "patch", "update"]),
            rule(&["kiln.dev"], &["imagebuilds/status", "builderpools/status"], &["get", "patch", "update"]),
            rule(&["kiln.dev"], &["imagebuilds/finalizers", "builderpools/finalizers"], &["update"]),
            rule(&["kiln.dev"], &["nodebuilds"], &["get", "list", "watch", "create", "patch", "update", "delete"]),
            rule(&["kiln.dev"], &["nodebuilds/status"], &["get"]),
            // Nodes are read to select builders and labelled with their detected runtime.
            rule(&[""], &["nodes"], &["get", "list", "watch", "patch"]),
            // Labels of a build's namespace, for image-policy rules that select by them.
            rule(&[""], &["namespaces"], &["get"]),
            rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
            // Grants the agents a build's Secrets while it runs (controller/build/grants.rs):
            // RoleBindings to the one role below, which the controller may bind but not use.
            rule(&["rbac.authorization.k8s.io"], &["rolebindings"], &["get", "create", "patch", "delete"]),
            json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"],
                   "resourceNames": [s.name("agent-secrets")]}),
        ]}),
        binding(s, "ClusterRoleBinding", "ClusterRole", "controller", "controller"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": meta(s, "controller", "controller"),
        "rules": [
            rule(&["apps"], &["daemonsets"], &["get", "list", "watch", "create", "patch", "update", "delete"]),
            // Read-only: why a builder pod is not running goes into pool status.
            rule(&[""], &["pods"], &["get", "list", "watch"]),
            rule(&[""], &["configmaps"], &["get", "list", "watch", "create", "patch", "update", "delete"]),
            // Heartbeats (read) and the leader election Lease (written).
            rule(&["coordination.k8s.io"], &["leases"], &["get", "list", "watch", "create", "update", "patch"]),
        ]}),
        binding(s, "RoleBinding", "Role", "controller", "controller"),
    ]
}

/// The agents: heartbeat Leases in kiln's namespace; NodeBuilds everywhere (an ImageBuild may
/// live in any namespace). Secrets only through the controller's per-build grants of
/// `<name>-agent-secrets`, in the build's namespace while it runs.
fn agent_rbac(s: &dyn Source) -> Vec<Value> {
    vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": meta(s, "agent", "agent"),
               "rules": [rule(&["coordination.k8s.io"], &["leases"], &["get", "create", "update", "patch"])]}),
        binding(s, "RoleBinding", "Role", "agent", "agent"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": cluster_meta(s, "agent", "agent"),
        "rules": [
            rule(&["kiln.dev"], &["nodebuilds"], &["get", "list", "watch"]),
            rule(&["kiln.dev"], &["nodebuilds/status"], &["get", "patch", "update"]),
            rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
            // The image-name policy, checked again before every build (agent/policy.rs), and
            // its node's pods, watched field-selected to the node (agent/node_pods.rs): a name
            // a pod of another namespace uses there is not overwritten. RBAC cannot narrow
            // `list` and `watch` to one node's pods; the agent asks only for its own.
            rule(&["kiln.dev"], &["builderpools"], &["get", "list", "watch"]),
            rule(&[""], &["namespaces"], &["get"]),
            rule(&[""], &["pods"], &["list", "watch"]),
            // Its node's kubelet version: whether a pinned image is really kept (agent/pin.rs).
            rule(&[""], &["nodes"], &["get"]),
        ]}),
        binding(s, "ClusterRoleBinding", "ClusterRole", "agent", "agent"),
        // Bound only per namespace and per build, by the controller.
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": cluster_meta(s, "agent-secrets", "agent"),
               "rules": [rule(&[""], &["secrets"], &["get"])]}),
    ]
}

/// People (and CI jobs) who run builds:
///
/// - ClusterRole `<name>-developer`, bound with a RoleBinding in each namespace they build in:
///   create and watch ImageBuilds, read their NodeBuilds, manage the Secrets `kiln build
///   --secret` creates for a build. Aggregated into the built-in `edit` role; `<name>-viewer`
///   into `view`.
/// - Role `<name>-developer` in kiln's namespace: reach the builder pods' agents through the
///   apiserver (pods/proxy, or pods/portforward), which is how `kiln build` sends a context and
///   `kiln logs` reads a log. Nothing else there: no Secrets, no pools.
/// - ClusterRole `<name>-pool-reader` (optional, with a ClusterRoleBinding): read BuilderPools,
///   so `kiln build` can refuse a context over the pool's limit before creating anything.
fn developer_rbac(s: &dyn Source) -> Vec<Value> {
    let aggregated = |name: &str, to: &str| {
        let label = format!("rbac.authorization.k8s.io/aggregate-to-{to}");
        json!({"name": s.name(name), "labels": s.labels_and("developer", &[(label.as_str(), "true")])})
    };
    vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": aggregated("developer", "edit"),
        "rules": [
            rule(&["kiln.dev"], &["imagebuilds"], &["get", "list", "watch", "create", "update", "patch", "delete"]),
            rule(&["kiln.dev"], &["imagebuilds/status", "nodebuilds", "nodebuilds/status"], &["get", "list", "watch"]),
            rule(&[""], &["secrets"], &["create", "patch", "delete"]),
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": aggregated("viewer", "view"),
        "rules": [
            rule(&["kiln.dev"], &["imagebuilds", "imagebuilds/status", "nodebuilds", "nodebuilds/status"], &["get", "list", "watch"]),
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": meta(s, "developer", "developer"),
        "rules": [
            rule(&[""], &["pods"], &["get"]),
            // PUT (upload) is `update`, GET (logs) is `get`; port-forward is `create` (SPDY) or `get` (WebSocket).
            rule(&[""], &["pods/proxy"], &["get", "create", "update"]),
            rule(&[""], &["pods/portforward"], &["get", "create"]),
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": cluster_meta(s, "pool-reader", "developer"),
        "rules": [rule(&["kiln.dev"], &["builderpools"], &["get", "list", "watch"])]}),
    ]
}

fn selector(s: &dyn Source, component: &str) -> Value {
    json!({"app.kubernetes.io/name": "kiln", "app.kubernetes.io/instance": s.release(),
           "app.kubernetes.io/component": component})
}

fn deployment(s: &dyn Source) -> Value {
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": "metrics"}, "periodSeconds": 10});
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta(s, "controller", "controller"),
        "spec": {
            "replicas": s.value("controller.replicas"),
            "selector": {"matchLabels": selector(s, "controller")},
            "template": {
                "metadata": {"labels": selector(s, "controller"), "annotations": s.value("controller.podAnnotations")},
                "spec": {
                    "serviceAccountName": s.name("controller"),
                    "securityContext": s.value("controller.podSecurityContext"),
                    "imagePullSecrets": s.value("imagePullSecrets"),
                    "priorityClassName": s.value("controller.priorityClassName"),
                    "nodeSelector": s.value("controller.nodeSelector"),
                    "tolerations": s.value("controller.tolerations"),
                    "affinity": s.value("controller.affinity"),
                    "containers": [{
                        "name": "controller",
                        "image": s.image(),
                        "imagePullPolicy": s.value("image.pullPolicy"),
                        "args": [
                            "controller".to_owned(),
                            format!("--agent-service-account={}", s.name("agent")),
                            format!("--listen=0.0.0.0:{}", s.text("controller.metricsPort")),
                        ],
                        "env": [
                            {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
                            {"name": "POD_NAME", "valueFrom": field("metadata.name")},
                            {"name": "KILN_AGENT_IMAGE", "value": s.image()},
                            {"name": "RUST_LOG", "value": s.value("controller.logLevel")},
                        ],
                        "ports": [{"name": "metrics", "containerPort": s.value("controller.metricsPort"), "protocol": "TCP"}],
                        "readinessProbe": probe("/readyz"),
                        "livenessProbe": probe("/healthz"),
                        "resources": s.value("controller.resources"),
                        "securityContext": s.value("controller.securityContext"),
                    }],
                },
            },
        },
    })
}

fn metrics_service(s: &dyn Source) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(s, "controller-metrics", "controller"),
           "spec": {"selector": selector(s, "controller"),
                    "ports": [{"name": "metrics", "port": s.value("controller.metricsPort"), "targetPort": "metrics",
                               "protocol": "TCP"}]}})
}

fn default_pool(s: &dyn Source) -> Value {
    json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "BuilderPool",
           "metadata": {"name": "default", "labels": s.labels("builder")},
           "spec": s.value("defaultPool.spec")})
}

fn service_monitor(s: &dyn Source) -> Value {
    json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
           "metadata": {"name": s.name("controller"), "namespace": s.namespace(),
                        "labels": s.labels_with("controller", "serviceMonitor.labels")},
           "spec": {"selector": {"matchLabels": selector(s, "controller")},
                    "endpoints": [{"port": "metrics", "path": "/metrics", "interval": s.value("serviceMonitor.interval")}]}})
}

fn pod_monitor(s: &dyn Source) -> Value {
    json!({"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
           "metadata": {"name": s.name("builders"), "namespace": s.namespace(),
                        "labels": s.labels_with("builder", "podMonitor.labels")},
           "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "kiln", "app.kubernetes.io/component": "builder"}},
                    "podMetricsEndpoints": [{"port": "agent", "path": "/metrics", "interval": s.value("podMonitor.interval")}]}})
}

fn network_policies(s: &dyn Source) -> Vec<Value> {
    vec![
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta(s, "controller", "controller"),
               "spec": {"podSelector": {"matchLabels": selector(s, "controller")}, "policyTypes": ["Ingress"],
                        "ingress": [{"ports": [{"protocol": "TCP", "port": s.value("controller.metricsPort")}]}]}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta(s, "builders", "builder"),
               "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "kiln", "app.kubernetes.io/component": "builder"}},
                        "policyTypes": ["Ingress"],
                        "ingress": [{"ports": [{"protocol": "TCP", "port": 8081}]}]}}),
    ]
}

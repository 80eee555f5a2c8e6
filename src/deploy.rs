//! The install manifests (namespace, service accounts, least-privilege RBAC, the controller
//! Deployment, the default BuilderPool), rendered from code so `kiln manifests`, the files in
//! `deploy/` and the tests share one source.

use serde_json::{Value, json};

/// Settings that vary between installs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Namespace kiln runs in.
    pub namespace: String,
    /// The kiln image (controller and agents).
    pub image: String,
    /// Controller replicas (leader election makes more than one safe).
    pub replicas: i32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespace: "kiln-system".into(),
            image: concat!("kiln.dev/kiln:", env!("CARGO_PKG_VERSION")).into(),
            replicas: 1,
        }
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

/// RBAC of the controller: what it reads cluster-wide, and what it writes in its namespace.
pub fn controller_rbac(o: &Options) -> Vec<Value> {
    let ns = &o.namespace;
    vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "kiln-controller"},
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
            rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "kiln-controller"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kiln-controller"},
               "subjects": [{"kind": "ServiceAccount", "name": "kiln-controller", "namespace": ns}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "kiln-controller", "namespace": ns},
        "rules": [
            rule(&["apps"], &["daemonsets"], &["get", "list", "watch", "create", "patch", "update", "delete"]),
            // Read-only: why a builder pod is not running goes into pool status.
            rule(&[""], &["pods"], &["get", "list", "watch"]),
            rule(&[""], &["configmaps"], &["get", "list", "watch", "create", "patch", "update", "delete"]),
            // Heartbeats (read) and the leader election Lease (written).
            rule(&["coordination.k8s.io"], &["leases"], &["get", "list", "watch", "create", "update", "patch"]),
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "kiln-controller", "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kiln-controller"},
               "subjects": [{"kind": "ServiceAccount", "name": "kiln-controller", "namespace": ns}]}),
    ]
}

/// RBAC of the agents: heartbeat Leases in kiln's namespace; NodeBuilds and the Secrets they
/// reference, everywhere (an ImageBuild may live in any namespace).
pub fn agent_rbac(o: &Options) -> Vec<Value> {
    let ns = &o.namespace;
    vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "kiln-agent", "namespace": ns},
               "rules": [rule(&["coordination.k8s.io"], &["leases"], &["get", "create", "update", "patch"])]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "kiln-agent", "namespace": ns},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "kiln-agent"},
               "subjects": [{"kind": "ServiceAccount", "name": "kiln-agent", "namespace": ns}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "kiln-agent"},
        "rules": [
            rule(&["kiln.dev"], &["nodebuilds"], &["get", "list", "watch"]),
            rule(&["kiln.dev"], &["nodebuilds/status"], &["get", "patch", "update"]),
            rule(&[""], &["secrets"], &["get"]),
            rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "kiln-agent"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kiln-agent"},
               "subjects": [{"kind": "ServiceAccount", "name": "kiln-agent", "namespace": ns}]}),
    ]
}

/// RBAC for people (and CI jobs) who run builds, to bind to them:
///
/// - ClusterRole `kiln-developer`, bound with a RoleBinding in each namespace they build in:
///   create and watch ImageBuilds, read their NodeBuilds, and manage the Secrets `kiln build
///   --secret` creates for a build. Also aggregated into the built-in `edit` and `view` roles.
/// - Role `kiln-developer` in kiln's namespace: reach the builder pods' agents through the
///   apiserver (pods/proxy, or pods/portforward), which is how `kiln build` sends a context and
///   `kiln logs` reads a log. Nothing else there: no Secrets, no pools.
/// - ClusterRole `kiln-pool-reader` (optional, with a ClusterRoleBinding): read BuilderPools,
///   so `kiln build` can refuse a context over the pool's limit before creating anything.
pub fn developer_rbac(o: &Options) -> Vec<Value> {
    let aggregate = |role: &str| json!({format!("rbac.authorization.k8s.io/aggregate-to-{role}"): "true"});
    vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "kiln-developer", "labels": aggregate("edit")},
        "rules": [
            rule(&["kiln.dev"], &["imagebuilds"], &["get", "list", "watch", "create", "update", "patch", "delete"]),
            rule(&["kiln.dev"], &["imagebuilds/status", "nodebuilds", "nodebuilds/status"], &["get", "list", "watch"]),
            rule(&[""], &["secrets"], &["create", "patch", "delete"]),
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "kiln-viewer", "labels": aggregate("view")},
        "rules": [
            rule(&["kiln.dev"], &["imagebuilds", "imagebuilds/status", "nodebuilds", "nodebuilds/status"], &["get", "list", "watch"]),
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "kiln-developer", "namespace": o.namespace},
        "rules": [
            rule(&[""], &["pods"], &["get"]),
            // PUT (upload) is `update`, GET (logs) is `get`; port-forward is `create` (SPDY) or `get` (WebSocket).
            rule(&[""], &["pods/proxy"], &["get", "create", "update"]),
            rule(&[""], &["pods/portforward"], &["get", "create"]),
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "kiln-pool-reader"},
        "rules": [rule(&["kiln.dev"], &["builderpools"], &["get", "list", "watch"])]}),
    ]
}

/// Everything but the CRDs, in apply order.
pub fn manifests(o: &Options) -> Vec<Value> {
    let ns = &o.namespace;
    let labels = json!({"app.kubernetes.io/name": "kiln", "app.kubernetes.io/component": "controller"});
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": 10});
    let mut out = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kiln-controller", "namespace": ns}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "kiln-agent", "namespace": ns}}),
    ];
    out.extend(controller_rbac(o));
    out.extend(agent_rbac(o));
    out.extend(developer_rbac(o));
    out.push(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "kiln-controller", "namespace": ns, "labels": labels},
        "spec": {
            "replicas": o.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": "kiln-controller",
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532},
                    "containers": [{
                        "name": "controller",
                        "image": o.image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["controller"],
                        "env": [
                            {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
                            {"name": "POD_NAME", "valueFrom": field("metadata.name")},
                            {"name": "KILN_AGENT_IMAGE", "value": o.image},
                        ],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": probe("/readyz"),
                        "livenessProbe": probe("/healthz"),
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        },
    }));
    out.push(json!({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "BuilderPool",
        "metadata": {"name": "default"},
        "spec": {"nodeSelector": {"kubernetes.io/os": "linux"}},
    }));
    out
}

/// The manifests as one multi-document YAML stream (what `deploy/kiln.yaml` holds).
pub fn to_yaml(o: &Options) -> Result<String, serde_yaml::Error> {
    let mut out = String::from("# Generated by `kiln manifests`; do not edit. Regenerate with `make generate`.\n");
    out.push_str("# Install: kiln crds | kubectl apply --server-side -f - && kubectl apply -f deploy/kiln.yaml\n");
    for doc in manifests(o) {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc)?);
    }
    Ok(out)
}

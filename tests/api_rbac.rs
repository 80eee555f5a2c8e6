//! RBAC is really enforced by the test apiserver: a ServiceAccount client has exactly the
//! rights its Roles grant. Later tests rely on this to prove kiln's least-privilege manifests.

mod support;

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kiln::api::ImageBuild;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use support::apiserver::ApiServer;

#[tokio::test]
async fn service_account_clients_have_only_granted_rights() {
    let server = ApiServer::shared().await;
    let admin = server.client().await;
    let ns = server.namespace(&admin, "rbac").await;
    let reader = server.client_as_service_account(&ns, "reader").await;
    let builds: Api<ImageBuild> = Api::namespaced(reader.clone(), &ns);

    let denied = builds.list(&ListParams::default()).await.expect_err("no rights yet");
    assert!(matches!(&denied, kube::Error::Api(s) if s.code == 403), "{denied}");

    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        namespace: Some(ns.clone()),
        ..Default::default()
    };
    let role = Role {
        metadata: meta("read-builds"),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["kiln.dev".into()]),
            resources: Some(vec!["imagebuilds".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    let binding = RoleBinding {
        metadata: meta("read-builds"),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "read-builds".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "reader".into(),
            namespace: Some(ns.clone()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin, &ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");

    // RBAC changes take effect within moments; poll briefly.
    let mut allowed = false;
    for _ in 0..50 {
        if builds.list(&ListParams::default()).await.is_ok() {
            allowed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(allowed, "list is allowed once the Role is bound");
    let create = builds
        .create(&PostParams::default(), &ImageBuild::new("x", Default::default()))
        .await;
    assert!(
        matches!(&create, Err(kube::Error::Api(s)) if s.code == 403),
        "create stays forbidden: {create:?}"
    );
}

/// The install's roles, applied from kiln's own manifests (the Helm chart renders the same
/// objects; tests/helm_chart.rs proves it): the agent's identity cannot change what users
/// asked for or remove pools, and a developer can build but cannot read kiln's Secrets or
/// change a pool.
#[tokio::test]
async fn the_install_roles_grant_no_more_than_their_jobs_need() {
    use kiln::api::BuilderPool;
    use kube::api::{DeleteParams, Patch, PatchParams};
    use serde_json::json;

    let server = ApiServer::shared().await;
    let admin = server.client().await;
    let yaml: String = kiln::deploy::manifests(&kiln::deploy::Install::default())
        .into_iter()
        .filter(|m| m["kind"] != "Deployment")
        .map(|m| format!("---\n{}", serde_yaml::to_string(&m).expect("yaml")))
        .collect();
    server.apply_manifests(&yaml);
    let ns = server.namespace(&admin, "least").await;
    let build = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "app", "namespace": &ns},
                       "spec": {"image": "example.com/app:1", "source": {"http": {"url": "http://example.com/c.tar"}}}});
    server.apply_manifests(&build.to_string());
    server.apply_manifests(r#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kiln-internal", "namespace": "kiln-system"}, "stringData": {"k": "v"}}"#);
    let forbidden = |r: Result<(), kube::Error>, what: &str| match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    };

    let agent = server.client_as_service_account("kiln-system", "kiln-agent").await;
    let spec_patch = json!({"spec": {"image": "docker.io/library/nginx:latest"}});
    let r = Api::<ImageBuild>::namespaced(agent.clone(), &ns)
        .patch("app", &PatchParams::default(), &Patch::Merge(&spec_patch))
        .await
        .map(|_| ());
    forbidden(r, "the agent patches an ImageBuild's spec");
    let r = Api::<BuilderPool>::all(agent.clone())
        .delete("default", &DeleteParams::default())
        .await
        .map(|_| ());
    forbidden(r, "the agent deletes a BuilderPool");
    server.apply_manifests(
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "team-token", "namespace": &ns},
                                   "stringData": {"k": "v"}})
        .to_string(),
    );
    let r = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(agent.clone(), &ns)
        .get("team-token")
        .await
        .map(|_| ());
    forbidden(r, "the agent reads a Secret no running build references");

    // A developer: the developer ClusterRole in their namespace, the developer Role in kiln's.
    let dev_ns = ns.clone();
    let bind = |kind: &str, at: &str, role_kind: &str, role: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": format!("dev-{kind}-{dev_ns}"), "namespace": at},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
               "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": &dev_ns}]})
    };
    server.apply_manifests(&bind("builds", &ns, "ClusterRole", "kiln-developer").to_string());
    server.apply_manifests(&bind("agents", "kiln-system", "Role", "kiln-developer").to_string());
    let dev = server.client_as_service_account(&ns, "dev").await;
    let builds: Api<ImageBuild> = Api::namespaced(dev.clone(), &ns);
    let mine = json!({"apiVersion": "kiln.dev/v1alpha1", "kind": "ImageBuild", "metadata": {"name": "mine"},
                      "spec": {"image": "example.com/mine:1", "source": {"http": {"url": "http://example.com/c.tar"}}}});
    let mine: ImageBuild = serde_json::from_value(mine).expect("object");
    let mut created = false;
    for _ in 0..50 {
        if builds.create(&PostParams::default(), &mine).await.is_ok() {
            created = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(created, "a developer creates an ImageBuild");
    builds.get_status("mine").await.expect("and reads its status");
    let r = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(dev.clone(), "kiln-system")
        .get("kiln-internal")
        .await
        .map(|_| ());
    forbidden(r, "a developer reads a Secret in kiln's namespace");
    let pool_patch = json!({"spec": {"maxConcurrentBuilds": 64}});
    let r = Api::<BuilderPool>::all(dev)
        .patch("default", &PatchParams::default(), &Patch::Merge(&pool_patch))
        .await
        .map(|_| ());
    forbidden(r, "a developer edits a BuilderPool");
}

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

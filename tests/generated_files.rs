//! `crds/` and `deploy/` hold exactly what `kiln crds` and `kiln manifests` print: generated
//! files are never edited by hand.

#[test]
fn crds_directory_matches_the_rust_types() {
    let expected = kiln::api::crds::to_yaml().expect("render CRDs");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/kiln.dev.yaml");
    let actual = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        actual == expected,
        "crds/kiln.dev.yaml is stale or missing: run `make generate` and commit the result"
    );
}

#[test]
fn deploy_directory_matches_the_rust_code() {
    let expected = kiln::deploy::to_yaml(&kiln::deploy::Options::default()).expect("render manifests");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kiln.yaml");
    let actual = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        actual == expected,
        "deploy/kiln.yaml is stale or missing: run `make generate` and commit the result"
    );
}

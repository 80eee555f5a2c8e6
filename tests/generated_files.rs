//! Generated files are never edited by hand: `crds/`, `deploy/` and `charts/kiln/` hold
//! exactly what the code renders (`make generate` writes them).

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
fn deploy_and_chart_directories_match_the_rust_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = kiln::deploy::generated_files().expect("render install files");
    for (path, expected) in &files {
        let actual = std::fs::read_to_string(root.join(path)).unwrap_or_default();
        assert!(
            &actual == expected,
            "{path} is stale or missing: run `make generate` and commit the result"
        );
    }
    // Nothing else lives in the chart: a file left over from an earlier layout would ship.
    let mut on_disk = Vec::new();
    let mut dirs = vec![root.join("charts/kiln")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("charts/kiln exists").flatten() {
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(rel) = p.strip_prefix(root) {
                on_disk.push(rel.display().to_string());
            }
        }
    }
    for path in on_disk {
        assert!(
            files.contains_key(&path),
            "{path} is not generated: remove it, or generate it"
        );
    }
}

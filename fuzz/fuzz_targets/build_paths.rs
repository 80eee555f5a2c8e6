//! The Dockerfile path (`spec.dockerfile`) and git `subPath` of a build recipe: the controller
//! and `kiln validate` check them with `kiln::api::validation`, the agent then hands them to
//! BuildKit (`filename`, `contextsubdir`).
//!
//! Input: UTF-8 text; up to the first `\n` is the Dockerfile path, the rest the `subPath`.
//!
//! Invariants:
//! - validation returns, never panics;
//! - it accepts a path exactly when the path is non-empty, not absolute and has no `..`
//!   component (the oracle below, written independently of `std::path`), and, for the
//!   Dockerfile, not blank;
//! - an accepted path, joined to a directory and resolved lexically (Go's `path.Clean`, as
//!   BuildKit resolves it), stays inside that directory;
//! - what validation accepts, the agent's BuildKit request accepts too
//!   (`BuildRequest::validate`), so an admitted spec never fails later for its paths.
#![no_main]

use kiln::api::recipe::{BuildRecipe, BuildSource, GitSource};
use kiln::api::validation;
use kiln::buildkit::{BuildRequest, Context, Dockerfile};
use libfuzzer_sys::fuzz_target;

const URL: &str = "https://example.com/team/app.git";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (dockerfile, sub_path) = text.split_once('\n').unwrap_or((text, "sub"));
    check(dockerfile, sub_path);
    // Each field alone, so one bad field does not hide the other's outcome.
    check(dockerfile, "sub");
    check("Dockerfile", sub_path);
});

fn check(dockerfile: &str, sub_path: &str) {
    let recipe = BuildRecipe {
        image: "example.com/team/app:dev".into(),
        source: BuildSource::Git(GitSource {
            url: URL.into(),
            reference: Some("main".into()),
            sub_path: Some(sub_path.into()),
            secret_ref: None,
            poll: None,
        }),
        dockerfile: Some(dockerfile.into()),
        ..Default::default()
    };
    let errors = match validation::build_recipe(&recipe, "spec") {
        Ok(()) => Vec::new(),
        Err(e) => e.0,
    };
    let rejected = |field: &str| errors.iter().any(|e| e.field == field);
    for e in &errors {
        assert!(
            e.field == "spec.dockerfile" || e.field == "spec.source.git.subPath",
            "unexpected error for a valid recipe otherwise: {e:?}"
        );
    }
    let dockerfile_ok = !rejected("spec.dockerfile");
    let sub_path_ok = !rejected("spec.source.git.subPath");
    let not_blank = !dockerfile.trim().is_empty();
    assert_eq!(
        dockerfile_ok,
        stays_inside(dockerfile) && not_blank,
        "dockerfile {dockerfile:?}"
    );
    assert_eq!(sub_path_ok, stays_inside(sub_path), "subPath {sub_path:?}");
    for (ok, path) in [(dockerfile_ok, dockerfile), (sub_path_ok, sub_path)] {
        if ok {
            let resolved = clean(&format!("/ctx/{path}"));
            assert!(
                resolved == "/ctx" || resolved.starts_with("/ctx/"),
                "{path:?} resolves to {resolved:?}, outside the context"
            );
        }
    }
    if dockerfile_ok && sub_path_ok {
        let request = BuildRequest::new(
            Context::Git {
                url: URL.into(),
                reference: Some("main".into()),
                subdir: Some(sub_path.into()),
            },
            Dockerfile::Path(dockerfile.into()),
        );
        if let Err(e) = request.validate() {
            panic!(
                "validation admitted dockerfile {dockerfile:?}, subPath {sub_path:?}, but the agent's request refuses it: {e}"
            );
        }
    }
}

/// The oracle: non-empty, relative, and no `..` component.
fn stays_inside(path: &str) -> bool {
    !path.is_empty() && !path.starts_with('/') && !path.split('/').any(|c| c == "..")
}

/// Go's `path.Clean` for an absolute path.
fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

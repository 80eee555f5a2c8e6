//! `.dockerignore` parsing and matching (`src/context/ignore.rs`), as `kiln build` applies it
//! to a user's context directory.
//!
//! Input: UTF-8 text. Up to the first NUL is the `.dockerignore` file; after it, one path a
//! line. Without a NUL the paths are a fixed set plus each line of the file read as a path.
//!
//! Invariants:
//! - parsing returns, never panics; a syntax error names a line that exists;
//! - matching returns, never panics, in bounded time (libFuzzer's `-timeout`, the input's
//!   length bounded by `-max_len`);
//! - the context root (`""`, `.`, `/`, `./`) is never excluded;
//! - a path and its spellings `./p`, `/p`, `p/`, `p//`, `a/./b` and `a/x/../b` are
//!   excluded alike (paths are cleaned as Go's `filepath.Clean` does);
//! - the packer's shortcut is sound: below an excluded directory for which
//!   `may_include_under` is false (the packer does not walk it), every path is excluded too.
//!   Without exceptions, everything below an excluded directory is excluded.
//!
//! Not an invariant: "the Dockerfile and `.dockerignore` are always sent". kiln follows
//! BuildKit, where both may be excluded from the context: the CLI sends the Dockerfile inline
//! (`dockerfileInline`) and the `.dockerignore` is applied on the client, so neither needs to be
//! in the tarball (docs/architecture.md, docs/fuzzing.md).
#![no_main]

use kiln::context::{Error, IgnoreRules};
use libfuzzer_sys::fuzz_target;

/// Paths tried against every rule set (with their parents and children).
const PATHS: &[&str] = &[
    "Dockerfile",
    ".dockerignore",
    "app.Dockerfile.dockerignore",
    "a",
    "a/b",
    "a/b/c.txt",
    "src/main.rs",
    "node_modules/keep.txt",
    "node_modules/lib/index.js",
    "docs/internal/x.md",
    "target/debug/kiln",
    "somedir/temporary.txt",
    "somedir/subdir/temporary.txt",
    "tempa",
    "temp",
    ".git/HEAD",
    "README.md",
    "README-secret.md",
    "dir with space/é.txt",
    "x\ny",
];

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (text, paths) = match input.split_once('\0') {
        Some((text, paths)) => (text, paths.split('\n').collect::<Vec<_>>()),
        None => {
            let mut paths: Vec<&str> = PATHS.to_vec();
            paths.extend(input.lines().map(|l| l.trim().trim_start_matches('!')));
            (input, paths)
        }
    };
    let rules = match IgnoreRules::parse(text) {
        Ok(rules) => rules,
        Err(Error::IgnoreSyntax { line, .. }) => {
            assert!(
                line >= 1 && line <= text.lines().count(),
                "error on line {line} of a {}-line file",
                text.lines().count()
            );
            return;
        }
        Err(other) => panic!("parsing text gave a non-syntax error: {other:?}"),
    };
    for root in ["", ".", "/", "./", "//", "a/.."] {
        assert!(!rules.excludes(root), "the root {root:?} is excluded");
    }
    for path in paths {
        check_path(&rules, path);
    }
});

fn check_path(rules: &IgnoreRules, path: &str) {
    let excluded = rules.excludes(path);
    // The packer never asks about `..`; and `/..` is the root where `..` is not.
    if path.split('/').any(|c| c == "..") {
        return;
    }
    let spellings = [
        format!("./{path}"),
        format!("/{path}"),
        format!("{path}/"),
        format!("{path}//"),
    ];
    for other in &spellings {
        assert_eq!(rules.excludes(other), excluded, "{path:?} and {other:?} differ");
    }
    if let Some((head, tail)) = path.split_once('/')
        && !head.is_empty()
        && !tail.is_empty()
    {
        for other in [format!("{head}/./{tail}"), format!("{head}/x/../{tail}")] {
            assert_eq!(rules.excludes(&other), excluded, "{path:?} and {other:?} differ");
        }
    }
    // The packer skips an excluded directory when `may_include_under` says nothing below it
    // can come back; then nothing below it may be kept.
    let clean: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    // One `excludes` per ancestor: quadratic in the depth, so only for depths real trees have.
    if clean.len() > 64 {
        return;
    }
    for depth in 1..clean.len() {
        let dir = clean[..depth].join("/");
        if rules.excludes(&dir) && !rules.may_include_under(&dir) {
            assert!(
                rules.excludes(path),
                "{dir:?} is excluded and not walked, but {path:?} below it is kept"
            );
            if !rules.has_exceptions() {
                assert!(!rules.may_include_under(&dir));
            }
            break;
        }
    }
}

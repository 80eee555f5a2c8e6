//! Unit tests of `.dockerignore` parsing and matching, against Docker's documented behaviour.

use super::*;

fn rules(text: &str) -> IgnoreRules {
    IgnoreRules::parse(text).unwrap()
}

/// Asserts which of `paths` `text` excludes (`true`) or keeps (`false`).
fn check(text: &str, cases: &[(&str, bool)]) {
    let rules = rules(text);
    for (path, excluded) in cases {
        assert_eq!(rules.excludes(path), *excluded, "rules {text:?}, path {path:?}");
    }
}

fn syntax_error(text: &str) -> (usize, String) {
    match IgnoreRules::parse(text) {
        Err(Error::IgnoreSyntax { line, reason, .. }) => (line, reason),
        other => panic!("expected a syntax error for {text:?}, got {other:?}"),
    }
}

#[test]
fn docs_example_temp_patterns() {
    // https://docs.docker.com/build/concepts/context/#dockerignore-files
    let text = "# comment\n*/temp*\n*/*/temp*\ntemp?\n";
    check(
        text,
        &[
            ("somedir/temporary.txt", true),
            ("somedir/temp", true),
            ("somedir/temp/inside.txt", true),
            ("somedir/subdir/temporary.txt", true),
            ("tempa", true),
            ("tempb", true),
            ("temp", false),
            ("temporary.txt", false),
            ("tempab", false),
            ("a/b/c/temp", false),
            ("somedir/other.txt", false),
            ("# comment", false),
        ],
    );
}

#[test]
fn docs_example_double_star() {
    check(
        "**/*.go",
        &[
            ("main.go", true),
            ("cmd/kiln/main.go", true),
            ("a/b/c/d.go", true),
            ("main.c", false),
            ("go", false),
            ("go.mod", false),
        ],
    );
}

#[test]
fn docs_examples_exceptions() {
    check(
        "*.md\n!README.md",
        &[("CHANGES.md", true), ("README.md", false), ("docs/guide.md", false)],
    );
    check(
        "*.md\n!README*.md\nREADME-secret.md",
        &[
            ("README.md", false),
            ("README-dev.md", false),
            ("README-secret.md", true),
            ("notes.md", true),
        ],
    );
    // The middle line has no effect: `!README*.md` matches README-secret.md and comes last.
    check(
        "*.md\nREADME-secret.md\n!README*.md",
        &[("README-secret.md", false), ("README.md", false), ("notes.md", true)],
    );
}

#[test]
fn exceptions_reinclude_below_an_excluded_directory() {
    let text = "node_modules\n!node_modules/keep.txt";
    check(
        text,
        &[
            ("node_modules", true),
            ("node_modules/lib/index.js", true),
            ("node_modules/keep.txt", false),
            ("src/node_modules", false),
        ],
    );
    assert!(rules(text).has_exceptions());
    assert!(!rules("node_modules").has_exceptions());
    // Order matters: a later exclusion wins over an earlier exception.
    check("!foo\nfoo", &[("foo", true)]);
}

#[test]
fn walkers_descend_only_where_an_exception_can_reach() {
    let literal = rules("node_modules\nbuild\n!node_modules/keep.txt\n!build/out/**");
    assert!(literal.may_include_under("node_modules"));
    assert!(!literal.may_include_under("node_modules/lib"));
    assert!(literal.may_include_under("build/out"));
    assert!(literal.may_include_under("build"));
    assert!(!literal.may_include_under("build/tmp"));
    assert!(!literal.may_include_under("node"));
    // Any wildcard exception may match at any depth.
    assert!(rules("vendor\n!**/*.go").may_include_under("vendor/a/b"));
    assert!(rules("vendor\n!vendor/*/keep").may_include_under("other"));
    assert!(!rules("vendor").may_include_under("vendor"));
}

#[test]
fn parent_directories_match_at_any_depth() {
    check(
        "a/b\n**/cache",
        &[
            ("a/b", true),
            ("a/b/c/d", true),
            ("a/bc", false),
            ("x/a/b", false),
            // The case moby's deprecated `Matches` got wrong: a `**` pattern matching a deep parent.
            ("x/y/cache/blob", true),
            ("cache/blob", true),
        ],
    );
    // `*` matches every top-level name, hence everything.
    check("*", &[("a", true), ("a/b/c", true)]);
}

#[test]
fn comments_blank_lines_and_whitespace() {
    check("#foo\n\n   \nbar", &[("#foo", false), ("foo", false), ("bar", true)]);
    // `#` counts only as the very first character of the line.
    check(" #foo", &[("#foo", true)]);
    check(
        "  foo  \n\t! foo/keep  ",
        &[("foo", true), ("foo/x", true), ("foo/keep", false)],
    );
    check("foo\r\nbar\r\n", &[("foo", true), ("bar", true)]);
    check("\u{feff}foo", &[("foo", true)]);
    check("\u{feff}# a comment\nbar", &[("# a comment", false), ("bar", true)]);
}

#[test]
fn patterns_are_cleaned() {
    for text in ["/foo", "./foo", "foo/", "foo//", "a/../foo", "//foo/./"] {
        check(
            text,
            &[("foo", true), ("foo/bar", true), ("bar", false), ("a/foo", false)],
        );
    }
    check("*\n!/foo/", &[("foo", false), ("foo/x", false), ("bar", true)]);
    assert_eq!(clean("a//b/./c/.."), "a/b");
    assert_eq!(clean("../a"), "../a");
    assert_eq!(clean("/../a"), "/a");
    assert_eq!(clean(""), ".");
    // The root is never excluded.
    assert!(!rules("*").excludes("."));
}

#[test]
fn trailing_and_inner_double_star() {
    // Docker's `foo/**` is a prefix match on `foo/`: the directory itself is kept (empty).
    check(
        "build/**",
        &[
            ("build/out", true),
            ("build/a/b/c", true),
            ("build", false),
            ("buildx", false),
        ],
    );
    check(
        "foo/**/bar",
        &[
            ("foo/bar", true),
            ("foo/x/y/bar", true),
            ("foo/bar/baz", true),
            ("foobar", false),
            ("foo/xbar", false),
        ],
    );
    check("**", &[("a", true), ("a/b", true)]);
    // A leading `**` without `/` is Docker's plain suffix test.
    check(
        "**foo",
        &[("foo", true), ("barfoo", true), ("a/xfoo", true), ("foox", false)],
    );
    check("src/*/**", &[("src/a/b", true), ("src/a", false)]);
}

#[test]
fn wildcards_do_not_cross_slashes() {
    check("a?b", &[("axb", true), ("a/b", false), ("ab", false)]);
    check("a*b", &[("ab", true), ("axxb", true), ("a/b", false)]);
    check("*.txt", &[("x.txt", true), ("d/x.txt", false)]);
}

#[test]
fn escapes() {
    check("\\*.txt", &[("*.txt", true), ("a.txt", false)]);
    check("file\\?", &[("file?", true), ("filea", false)]);
    check("\\[x\\]", &[("[x]", true), ("x", false)]);
    check("a\\ b", &[("a b", true)]);
}

#[test]
fn character_classes() {
    check(
        "[a-c].txt",
        &[("a.txt", true), ("c.txt", true), ("d.txt", false), ("ab.txt", false)],
    );
    check("[^a].txt", &[("b.txt", true), ("a.txt", false)]);
    check("[!a]", &[("!", true), ("a", true), ("b", false)]);
    check("[\\]\\-]x", &[("]x", true), ("-x", true), ("ax", false)]);
    check("f[oa]o*", &[("foo", true), ("fao.c", true), ("fzo", false)]);
    // Regex-like characters are literal.
    check("a.b+(c)|{d}$", &[("a.b+(c)|{d}$", true), ("axb+(c)|{d}$", false)]);
}

#[test]
fn syntax_errors_name_the_line() {
    assert_eq!(syntax_error("!").0, 1);
    assert_eq!(syntax_error("foo\n  !  \n").0, 2);
    // `!/` cleans to `!`.
    assert_eq!(syntax_error("! /").0, 1);
    assert!(syntax_error("[abc").1.contains("not closed"));
    assert!(syntax_error("a[]b").1.contains("empty"));
    assert!(syntax_error("[a-]").1.contains("escaped"));
    assert!(syntax_error("foo\\").1.contains("trailing"));
    assert!(syntax_error("[z-a]").1.contains("reversed"));
    let err = IgnoreRules::parse("ok\n# c\n[").unwrap_err();
    assert!(
        err.to_string().starts_with(".dockerignore:3: invalid pattern \"[\""),
        "{err}"
    );
}

#[test]
fn empty_rules_exclude_nothing() {
    let empty = IgnoreRules::empty();
    assert!(!empty.excludes("anything"));
    assert!(!empty.has_exceptions());
    let blank = rules("# only a comment\n\n");
    assert!(!blank.excludes("only"));
}

#[test]
fn deep_paths_are_matched_against_their_parents_in_one_pass() {
    // Each parent directory of a path used to be globbed on its own: O(depth × length) per
    // pattern and path, so a deep tree took quadratic time per file. The dockerignore fuzz
    // target hit its 10 s timeout on a path 1000 directories deep (fuzz/corpus/dockerignore/
    // seed-25); at this depth the old matching took seconds, one pass takes microseconds.
    let deep = "b/".repeat(10_000);
    let started = std::time::Instant::now();
    let many_dirs = format!("{}a\n", "**/".repeat(16));
    check(
        &many_dirs,
        &[
            (&format!("{deep}a"), true),
            (&format!("{deep}c"), false),
            (&format!("{deep}a/x/y"), true),
        ],
    );
    check(
        "b/*/b\n",
        &[(&format!("{deep}c"), true), ("b/c", false), ("b/c/b", true)],
    );
    check(
        "!x\n*\n!b/b\n",
        &[(&format!("{deep}c"), false), ("c", true), ("b/c", true)],
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

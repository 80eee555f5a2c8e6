//! Unit tests of the image-name policy: normalisation, wildcards, `{{namespace}}`, tags and
//! digests, namespace selectors, the default policy, denial messages and validation.

use super::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn rule(patterns: &[&str]) -> ImageRule {
    ImageRule {
        patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    }
}

fn for_namespaces(names: &[&str], patterns: &[&str]) -> ImageRule {
    ImageRule {
        namespaces: names.iter().map(|n| (*n).to_owned()).collect(),
        ..rule(patterns)
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn allowed(rules: &[ImageRule], ns: &str, image: &str) -> bool {
    decide(rules, ns, &BTreeMap::new(), &[image]).is_allowed()
}

fn reason(rules: &[ImageRule], ns: &str, images: &[&str]) -> String {
    match decide_for_pool("default", rules, ns, &BTreeMap::new(), images) {
        Decision::Denied { reason, .. } => reason,
        Decision::Allowed => panic!("{images:?} should be denied in {ns}"),
    }
}

fn expr(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
    }
}

#[test]
fn docker_hub_spellings_are_one_name() {
    let rules = [rule(&["docker.io/library/busybox"])];
    for image in [
        "busybox",
        "library/busybox",
        "docker.io/library/busybox:latest",
        "index.docker.io/library/busybox",
        "docker.io/busybox:1.36",
    ] {
        assert!(allowed(&rules, "ns", image), "{image}");
    }
    assert!(!allowed(&rules, "ns", "busybox2"));
    assert!(!allowed(&rules, "ns", "example.com/library/busybox"));
    // A tag-specific pattern: `busybox` is `busybox:latest`.
    let latest = [rule(&["docker.io/library/busybox:latest"])];
    assert!(allowed(&latest, "ns", "busybox"));
    assert!(allowed(&latest, "ns", "library/busybox:latest"));
    assert!(!allowed(&latest, "ns", "busybox:1.36"));
    assert!(!allowed(&latest, "ns", &format!("busybox@{DIGEST}")));
}

#[test]
fn star_is_one_segment_double_star_any() {
    let rules = [rule(&[
        "registry.example.com/team-a/*",
        "registry.example.com/shared/**",
    ])];
    let table = [
        ("registry.example.com/team-a/app:v1", true),
        ("registry.example.com/team-a/sub/app:v1", false),
        ("registry.example.com/team-a", false),
        ("registry.example.com/shared", true),
        ("registry.example.com/shared/a/b/c:x", true),
        ("registry.example.com/sharedx/a", false),
        ("other.example.com/shared/a", false),
    ];
    for (image, want) in table {
        assert_eq!(allowed(&rules, "ns", image), want, "{image}");
    }
}

#[test]
fn a_tenant_cannot_build_under_another_tenants_prefix() {
    let rules = [rule(&["registry.example.com/{{namespace}}/**"])];
    assert!(allowed(&rules, "team-a", "registry.example.com/team-a/app:v1"));
    assert!(!allowed(&rules, "team-a", "registry.example.com/team-b/app:v1"));
    assert!(!allowed(&rules, "team-a", "registry.example.com/team-a-b/app:v1"));
    assert!(!allowed(&rules, "team", "registry.example.com/team-a/app:v1"));
    // A namespace that is not a DNS label is refused before any pattern sees it.
    let r = reason(&rules, "*", &["registry.example.com/x/app"]);
    assert!(r.contains("not a valid namespace name"), "{r}");
}

#[test]
fn tag_and_digest_patterns() {
    let rules = [rule(&[
        "docker.io/org/app:{{namespace}}-*",
        "kiln.local/pinned/app@sha256:*",
    ])];
    assert!(allowed(&rules, "team-a", "org/app:team-a-42"));
    assert!(!allowed(&rules, "team-a", "org/app:team-b-42"));
    assert!(!allowed(&rules, "team-a", "org/app"));
    // A tag pattern does not also grant `name:tag@digest`, which would name other content.
    assert!(!allowed(&rules, "team-a", &format!("org/app:team-a-1@{DIGEST}")));
    assert!(allowed(&rules, "team-a", &format!("kiln.local/pinned/app@{DIGEST}")));
    assert!(!allowed(&rules, "team-a", "kiln.local/pinned/app:v1"));
    // A repository pattern grants every tag and digest of it.
    let repo = [rule(&["kiln.local/team-a/app"])];
    assert!(allowed(&repo, "x", &format!("kiln.local/team-a/app:v1@{DIGEST}")));
}

#[test]
fn selectors_follow_kubernetes_semantics() {
    let dev = labels(&[("env", "dev"), ("tier", "web")]);
    let prod = labels(&[("env", "prod"), ("legacy", "")]);
    let none = BTreeMap::new();
    let selector = |match_labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| LabelSelector {
        match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
        match_expressions: (!exprs.is_empty()).then_some(exprs),
    };
    let table = [
        (selector(&[("env", "dev")], vec![]), [true, false, false]),
        (
            selector(&[], vec![expr("env", "In", &["dev", "qa"])]),
            [true, false, false],
        ),
        (
            selector(&[], vec![expr("env", "NotIn", &["prod"])]),
            [true, false, true],
        ),
        (selector(&[], vec![expr("legacy", "Exists", &[])]), [false, true, false]),
        (
            selector(&[], vec![expr("legacy", "DoesNotExist", &[])]),
            [true, false, true],
        ),
        (
            selector(&[("tier", "web")], vec![expr("env", "In", &["dev"])]),
            [true, false, false],
        ),
        (selector(&[], vec![]), [true, true, true]),
        (
            selector(&[], vec![expr("env", "Matches", &["dev"])]),
            [false, false, false],
        ),
    ];
    for (s, want) in table {
        let got = [&dev, &prod, &none].map(|l| selector_matches(&s, l));
        assert_eq!(got, want, "{}", describe_selector(&s));
    }
}

#[test]
fn rules_apply_by_name_by_selector_or_to_all() {
    let by_label = ImageRule {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(labels(&[("kiln.dev/shared-builds", "true")])),
            ..Default::default()
        }),
        ..for_namespaces(&["ci"], &["kiln.local/shared/**"])
    };
    let rules = [by_label, rule(&["kiln.local/{{namespace}}/**"])];
    let shared = labels(&[("kiln.dev/shared-builds", "true")]);
    let ok = |ns: &str, l: &BTreeMap<String, String>, image: &str| decide(&rules, ns, l, &[image]).is_allowed();
    assert!(ok("ci", &BTreeMap::new(), "kiln.local/shared/base:1"));
    assert!(ok("team-a", &shared, "kiln.local/shared/base:1"));
    assert!(!ok("team-b", &BTreeMap::new(), "kiln.local/shared/base:1"));
    // The second rule, with neither names nor selector, applies to every namespace.
    assert!(ok("team-b", &BTreeMap::new(), "kiln.local/team-b/app"));
    assert!(ok("ci", &shared, "kiln.local/ci/app"));
}

#[test]
fn the_default_keeps_each_namespace_under_its_own_prefix() {
    assert_eq!(validate_rules(&default_rules()), Ok(()));
    assert!(allowed(&[], "team-a", "kiln.local/team-a/app:v1"));
    assert!(allowed(&[], "team-a", "kiln.local/team-a/deep/app:tilt-0123abcd"));
    for image in [
        "kiln.local/team-b/app:v1",
        "docker.io/library/busybox:latest",
        "busybox",
        "registry.k8s.io/pause:3.2",
        "docker.io/rancher/mirrored-pause:3.6",
        "team-a/app",
        "docker.io/team-a/app",
        "kiln.local/app",
        "localhost/team-a/app",
    ] {
        assert!(!allowed(&[], "team-a", image), "{image}");
    }
    assert!(!allowed(&[], "team-b", "kiln.local/team-a/app:v1"));
    let r = reason(&[], "team-a", &["busybox"]);
    assert!(
        r.starts_with("image busybox (docker.io/library/busybox:latest) is not allowed in namespace team-a: "),
        "{r}"
    );
    for part in [
        "BuilderPool default sets no allowedImages",
        "kiln.local/team-a/** (the default policy)",
        "default_registry('kiln.local/team-a')",
        "ask a cluster admin to set spec.allowedImages",
    ] {
        assert!(r.contains(part), "{part:?} missing from {r}");
    }
}

#[test]
fn every_name_of_a_build_must_be_allowed() {
    let images = ["kiln.local/team-a/app:v1", "kiln.local/team-a/app:latest"];
    assert_eq!(decide(&[], "team-a", &BTreeMap::new(), &images), Decision::Allowed);
    let images = ["kiln.local/team-a/app:v1", "registry.k8s.io/pause:3.2"];
    match decide(&[], "team-a", &BTreeMap::new(), &images) {
        Decision::Denied { image, reason } => {
            assert_eq!(image, "registry.k8s.io/pause:3.2");
            assert!(
                reason.starts_with("image registry.k8s.io/pause:3.2 is not allowed"),
                "{reason}"
            );
        }
        Decision::Allowed => panic!("the extra tag must be checked too"),
    }
    let r = reason(&[], "team-a", &["kiln.local/team-a/ok", "Not A Name"]);
    assert!(r.contains("not a valid image reference"), "{r}");
}

#[test]
fn messages_name_the_rules_that_apply() {
    let rules = [
        for_namespaces(&["team-b"], &["kiln.local/b-only/**"]),
        rule(&[
            "kiln.local/{{namespace}}/**",
            "registry.example.com/{{namespace}}/*:dev-*",
        ]),
    ];
    let r = reason(&rules, "team-a", &["docker.io/library/busybox:latest"]);
    assert_eq!(
        r,
        "image docker.io/library/busybox:latest is not allowed in namespace team-a: BuilderPool default \
         allows team-a only kiln.local/team-a/**, registry.example.com/team-a/*:dev-* (spec.allowedImages[1]); \
         build under one of those names or ask a cluster admin to add a rule to spec.allowedImages"
    );
    // Rules set, none applies: the default does not come back.
    let only_b = [for_namespaces(&["team-b"], &["kiln.local/b-only/**"])];
    let r = reason(&only_b, "team-a", &["kiln.local/team-a/app"]);
    assert!(
        r.contains("no rule of BuilderPool default's spec.allowedImages applies to namespace team-a"),
        "{r}"
    );
    assert!(r.contains("[0] namespaces team-b: kiln.local/b-only/**"), "{r}");
    // Without the pool's name.
    match decide(&only_b, "team-a", &BTreeMap::new(), &["kiln.local/team-a/app"]) {
        Decision::Denied { reason, .. } => assert!(reason.contains("the BuilderPool's"), "{reason}"),
        Decision::Allowed => panic!("denied"),
    }
}

#[test]
fn unvalidated_rules_can_only_allow_less() {
    let rules = [rule(&["busybox", "kiln.local/***", "kiln.local/ok/**"])];
    assert!(validate_rules(&rules).is_err());
    assert!(!allowed(&rules, "ns", "busybox"));
    assert!(allowed(&rules, "ns", "kiln.local/ok/app"));
}

#[test]
fn validation_explains_each_mistake() {
    let table: &[(&[&str], &str)] = &[
        (&[""], "patterns[0] \"\": pattern is empty"),
        (&["kiln.local/***"], "is not a wildcard"),
        (&["kiln.local/team-**"], "** must be a whole path segment"),
        (&["kiln.local/app:**"], "** must be a whole path segment"),
        (&["kiln.local/a b"], "repository path cannot contain ' '"),
        (
            &["kiln.local/{{ns}}/**"],
            "\"{{ns}}\" is not a placeholder: the only one is {{namespace}}",
        ),
        (&["kiln.local/{{namespace}/x"], "is not a placeholder"),
        (&["kiln.local/app@sha256:{{namespace}}"], "cannot be part of a digest"),
        (&["kiln.local/Team/**"], "repository path has uppercase letters"),
        (&["Kiln.local/team/**"], "registry host has uppercase letters"),
        (&["kiln.local/app@sha256:ABC*"], "digest has uppercase letters"),
        (&["busybox"], "write docker.io/library/busybox"),
        (&["team/app:*"], "write docker.io/team/app:*"),
        (&["{{namespace}}/**"], "write e.g. kiln.local/{{namespace}}/**"),
        (
            &["index.docker.io/library/busybox"],
            "index.docker.io is normalised to docker.io",
        ),
        (&["docker.io/busybox"], "write docker.io/library/busybox"),
        (&["docker.io/*:v1"], "write docker.io/library/*:v1"),
        (&["kiln.local"], "write kiln.local/** for everything under kiln.local"),
        (&["*.example.com:v1"], "write *.example.com/**"),
        (&["kiln.local//app"], "a path segment (between two '/') is empty"),
        (&["kiln.local/app:"], "the tag (after ':') is empty"),
        (&["kiln.local/app:-x"], "tags do not start"),
        (&["kiln.local/app@sha256:abc"], "invalid digest"),
        (&["kiln.local/app@a@b"], "more than one '@'"),
        (&["kiln.local/-app"], "invalid repository name"),
        (&[], "spec.allowedImages[0].patterns: a rule needs at least one pattern"),
    ];
    for (patterns, want) in table {
        let e = validate_rules(&[rule(patterns)]).expect_err(&format!("{patterns:?} should be refused"));
        assert!(e.to_string().contains(want), "{patterns:?}: {e}");
    }
    let long = format!("kiln.local/{}", "a".repeat(MAX_PATTERN_LEN));
    assert!(validate_rules(&[rule(&[&long])]).is_err());
    // The error names the rule and pattern index.
    let e = validate_rules(&[rule(&["kiln.local/**"]), rule(&["kiln.local/ok", "busybox"])]).expect_err("invalid");
    assert!(
        e.to_string()
            .starts_with("spec.allowedImages[1].patterns[1] \"busybox\": "),
        "{e}"
    );
    assert!(matches!(e, PolicyError::Pattern { rule: 1, index: 1, .. }));
    for good in [
        "**",
        "*/team-a/**",
        "*.example.com/{{namespace}}/*:dev-*",
        "localhost:5000/app",
        "{{namespace}}.kiln.local/**",
        "docker.io/library/*",
        "docker.io/**",
        "kiln.local/app:*@sha256:*",
    ] {
        assert_eq!(validate_rules(&[rule(&[good])]), Ok(()), "{good}");
    }
}

#[test]
fn validation_checks_namespaces_and_selectors() {
    let e = validate_rules(&[for_namespaces(&["ok", "Team_A"], &["kiln.local/**"])]).expect_err("invalid");
    assert!(
        e.to_string()
            .contains("namespaces[1] \"Team_A\" is not a namespace name"),
        "{e}"
    );
    let with = |exprs: Vec<LabelSelectorRequirement>| {
        vec![ImageRule {
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(exprs),
                ..Default::default()
            }),
            ..rule(&["kiln.local/**"])
        }]
    };
    let table = [
        (expr("env", "In", &[]), "matchExpressions[0].values: In needs values"),
        (
            expr("env", "Exists", &["x"]),
            "matchExpressions[0].values: Exists takes no values",
        ),
        (
            expr("env", "Equals", &["x"]),
            "\"Equals\" is not In, NotIn, Exists or DoesNotExist",
        ),
        (expr("", "Exists", &[]), "matchExpressions[0].key: must not be empty"),
    ];
    for (requirement, want) in table {
        let e = validate_rules(&with(vec![requirement])).expect_err("invalid");
        assert!(
            e.to_string().starts_with("spec.allowedImages[0].namespaceSelector."),
            "{e}"
        );
        assert!(e.to_string().contains(want), "{e}");
    }
    assert_eq!(validate_rules(&with(vec![expr("env", "NotIn", &["prod"])])), Ok(()));
}

#[test]
fn describe_and_serde_use_the_api_shape() {
    let yaml = r#"
- namespaces: [ci]
  namespaceSelector:
    matchLabels: {kiln.dev/shared: "true"}
    matchExpressions: [{key: env, operator: NotIn, values: [prod]}, {key: legacy, operator: DoesNotExist}]
  patterns: ["kiln.local/shared/**"]
- patterns: ["kiln.local/{{namespace}}/**"]
"#;
    let rules: ImagePolicy = serde_yaml::from_str(yaml).expect("parses");
    assert_eq!(validate_rules(&rules), Ok(()));
    assert_eq!(
        describe(&rules),
        "[0] namespaces ci or labelled kiln.dev/shared=true,env notin (prod),!legacy: kiln.local/shared/**; \
         [1] all namespaces: kiln.local/{{namespace}}/**"
    );
    assert_eq!(
        describe(&[]),
        "default policy: all namespaces: kiln.local/{{namespace}}/**"
    );
    let json = serde_json::to_value(&rules[1]).expect("serialises");
    assert_eq!(json, serde_json::json!({"patterns": ["kiln.local/{{namespace}}/**"]}));
    assert!(
        serde_yaml::from_str::<ImageRule>("namespaces: [a]").is_err(),
        "patterns is required"
    );
    let schema = serde_json::to_value(schemars::schema_for!(ImageRule)).expect("schema");
    assert_eq!(schema["required"], serde_json::json!(["patterns"]));
    assert_eq!(schema["properties"]["patterns"]["minItems"], 1);
    assert!(schema["properties"]["namespaceSelector"].is_object());
}

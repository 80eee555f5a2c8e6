//! Tests of validating an ImageBuild's spec: what is refused, and the message that says why.

use super::*;
use crate::api::image_build::Placement;
use crate::api::recipe::{BuildSecret, GitSource, HttpSource, SecretKeySelector, UploadSource};

fn valid() -> ImageBuildSpec {
    ImageBuildSpec {
        recipe: BuildRecipe {
            image: "example.com/app:dev".into(),
            source: BuildSource::Http(HttpSource {
                url: "https://example.com/ctx.tar.gz".into(),
                sha256: None,
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn errors(spec: &ImageBuildSpec) -> ValidationErrors {
    image_build(spec).expect_err("should be invalid")
}

#[test]
fn accepts_a_plain_build() {
    assert_eq!(image_build(&valid()), Ok(()));
}

#[test]
fn rejects_node_name_with_all_nodes() {
    let mut spec = valid();
    spec.placement = Some(Placement {
        node_name: Some("n1".into()),
        all_nodes: true,
        ..Default::default()
    });
    let e = errors(&spec);
    assert!(e.has("spec.placement"), "{e}");
    assert!(e.to_string().contains("mutually exclusive"));
}

#[test]
fn rejects_both_dockerfile_forms() {
    let mut spec = valid();
    spec.recipe.dockerfile = Some("Dockerfile".into());
    spec.recipe.dockerfile_inline = Some("FROM scratch".into());
    assert!(
        errors(&spec)
            .to_string()
            .contains("either dockerfile or dockerfileInline")
    );
}

#[test]
fn rejects_paths_escaping_the_context() {
    let mut spec = valid();
    spec.recipe.dockerfile = Some("../secret/Dockerfile".into());
    assert!(errors(&spec).has("spec.dockerfile"));
    spec.recipe.dockerfile = Some("/etc/Dockerfile".into());
    assert!(errors(&spec).has("spec.dockerfile"));
    spec.recipe.dockerfile = Some("./build/Dockerfile".into());
    assert_eq!(image_build(&spec), Ok(()));
    spec.recipe.source = BuildSource::Git(GitSource {
        url: "https://example.com/r.git".into(),
        sub_path: Some("a/../../b".into()),
        ..Default::default()
    });
    assert!(errors(&spec).has("spec.source.git.subPath"));
}

#[test]
fn rejects_polling_more_often_than_every_5_seconds() {
    let mut spec = valid();
    spec.recipe.source = BuildSource::Git(GitSource {
        url: "https://example.com/r.git".into(),
        poll: Some(crate::api::recipe::GitPoll { interval_seconds: 1 }),
        ..Default::default()
    });
    assert!(errors(&spec).has("spec.source.git.poll.intervalSeconds"));
    spec.recipe.source = BuildSource::Git(GitSource {
        url: "https://example.com/r.git".into(),
        poll: Some(crate::api::recipe::GitPoll { interval_seconds: 60 }),
        ..Default::default()
    });
    assert_eq!(image_build(&spec), Ok(()));
}

/// Found by fuzzing (fuzz/corpus/build_paths/seed-07): a blank Dockerfile path was admitted,
/// then refused by the agent's BuildKit request ("the Dockerfile path is empty").
#[test]
fn rejects_a_blank_dockerfile_path() {
    let mut spec = valid();
    for blank in [" ", "\t", " \n "] {
        spec.recipe.dockerfile = Some(blank.into());
        assert!(errors(&spec).has("spec.dockerfile"), "{blank:?}");
    }
    spec.recipe.dockerfile = Some(" Dockerfile".into());
    assert_eq!(image_build(&spec), Ok(()));
}

#[test]
fn rejects_bad_references_tags_and_platforms() {
    let mut spec = valid();
    spec.recipe.image = "Example/App".into();
    spec.recipe.additional_tags = vec!["example.com/app:dev".into(), "x:".into()];
    spec.recipe.platforms = vec!["linux/amd64".into(), "amd64".into(), "linux/arm64/v8".into()];
    let e = errors(&spec);
    assert!(e.has("spec.image"), "{e}");
    assert!(e.has("spec.additionalTags[1]"), "{e}");
    assert!(e.has("spec.platforms[1]"), "{e}");
    assert!(!e.has("spec.platforms[2]"), "{e}");
}

#[test]
fn rejects_duplicate_secret_ids_and_bad_build_args() {
    let mut spec = valid();
    let secret = BuildSecret {
        id: "npm".into(),
        secret_key_ref: SecretKeySelector {
            name: "s".into(),
            key: "k".into(),
        },
    };
    spec.recipe.secrets = vec![secret.clone(), secret];
    spec.recipe.build_args.insert("1BAD".into(), "x".into());
    let e = errors(&spec);
    assert!(e.has("spec.secrets[1].id"), "{e}");
    assert!(e.has("spec.buildArgs.1BAD"), "{e}");
}

#[test]
fn rejects_bad_sources() {
    let mut spec = valid();
    spec.recipe.source = BuildSource::Git(GitSource {
        url: "https://example.com/r.git#main".into(),
        ..Default::default()
    });
    assert!(errors(&spec).has("spec.source.git.url"));
    spec.recipe.source = BuildSource::Http(HttpSource {
        url: "ftp://x/ctx.tar".into(),
        sha256: Some("ABC".into()),
    });
    let e = errors(&spec);
    assert!(e.has("spec.source.http.url") && e.has("spec.source.http.sha256"), "{e}");
    spec.recipe.source = BuildSource::Upload(UploadSource {
        digest: "md5:abc".into(),
        size: None,
    });
    assert!(errors(&spec).has("spec.source.upload.digest"));
}

#[test]
fn rejects_numbers_out_of_range() {
    let mut spec = valid();
    spec.timeout_seconds = Some(-1);
    spec.backoff_limit = Some(99);
    spec.ttl_seconds_after_finished = Some(-5);
    let e = errors(&spec);
    assert!(
        e.has("spec.timeoutSeconds") && e.has("spec.backoffLimit") && e.has("spec.ttlSecondsAfterFinished"),
        "{e}"
    );
}

#[test]
fn checks_pool_durations() {
    use crate::api::builder_pool::GcSpec;
    let mut pool = BuilderPoolSpec {
        gc: Some(GcSpec {
            keep_duration: Some("48h".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(builder_pool(&pool), Ok(()));
    pool.gc = Some(GcSpec {
        keep_duration: Some("two days".into()),
        ..Default::default()
    });
    assert!(builder_pool(&pool).expect_err("invalid").has("spec.gc.keepDuration"));
}

#[test]
fn a_pool_policy_that_does_not_parse_is_refused_at_the_rule_that_is_wrong() {
    use crate::api::image_policy::ImageRule;
    let rule = |patterns: &[&str]| ImageRule {
        patterns: patterns.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    };
    let mut pool = BuilderPoolSpec {
        allowed_images: vec![
            rule(&["kiln.local/{{namespace}}/**"]),
            rule(&["registry.example.com/base/*:*"]),
        ],
        ..Default::default()
    };
    assert_eq!(builder_pool(&pool), Ok(()));
    pool.allowed_images.push(rule(&["kiln.local/x/**", "busybox"]));
    let err = builder_pool(&pool).expect_err("a short name is no pattern");
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(err.0[0].field.starts_with("spec.allowedImages[2].patterns[1]"), "{err}");
    assert!(
        err.0[0].message.contains("docker.io/library/busybox"),
        "the fix is named: {err}"
    );
    pool.allowed_images = vec![rule(&[])];
    assert!(
        builder_pool(&pool)
            .expect_err("no patterns")
            .has("spec.allowedImages[0].patterns")
    );
}

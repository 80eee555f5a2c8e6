//! The ImageBuild `kiln build` creates, from its flags: a fresh name per build (so no earlier
//! build's conditions can ever be read as this one's), labels to find it by, the uploaded
//! context's digest and size, and the Dockerfile inline (so `-f` may point outside the context,
//! as with Docker). Also the parsing of `--build-arg`, `--secret` and `--timeout`. Pure.

use std::collections::BTreeMap;

use kube::api::ObjectMeta;

use crate::api::image_build::{ImageBuild, ImageBuildSpec, Placement};
use crate::api::recipe::{BuildRecipe, BuildSecret, BuildSource, PullPolicy, SecretKeySelector, UploadSource};

/// Label on ImageBuilds (and their secrets) that `kiln build` creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kiln-cli");
/// Label with the image's short name, to find a project's builds (`kubectl get ib -l …`).
pub const IMAGE_NAME_LABEL: &str = "kiln.dev/image-name";

/// What one `kiln build` asks for.
#[derive(Clone, Debug, Default)]
pub struct Wanted {
    /// `-t` values: the first is the image, the rest more tags.
    pub tags: Vec<String>,
    /// The Dockerfile's text.
    pub dockerfile: String,
    /// `--target`.
    pub target: Option<String>,
    /// `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// Secret ids, all stored in the Secret named `secrets_object`.
    pub secret_ids: Vec<String>,
    /// The Secret holding `--secret` values.
    pub secrets_object: Option<String>,
    /// `--platform`s.
    pub platforms: Vec<String>,
    /// `--pool`.
    pub pool: Option<String>,
    /// `--node`.
    pub node: Option<String>,
    /// `--all-nodes`.
    pub all_nodes: bool,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--pull`.
    pub pull: bool,
    /// `--timeout`, in seconds.
    pub timeout_seconds: Option<i64>,
    /// How long the finished ImageBuild stays.
    pub ttl_seconds: i64,
    /// The packed context's digest.
    pub context_digest: String,
    /// The packed context's size.
    pub context_size: u64,
}

/// `<image short name>-<suffix>`: a DNS label from the image's last path component.
pub fn object_name(image: &str, suffix: &str) -> String {
    let short = short_name(image);
    let mut name: String = short.chars().take(50).collect();
    name = name.trim_end_matches('-').to_owned();
    if name.is_empty() {
        name = "build".into();
    }
    format!("{name}-{suffix}")
}

/// The image's last path component without tag or digest, as a label value / DNS label.
pub fn short_name(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let repo = last.split(':').next().unwrap_or(last);
    let cleaned: String = repo
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() { c } else { '-' }
        })
        .collect();
    cleaned.trim_matches('-').chars().take(63).collect()
}

/// The ImageBuild for `wanted`, named `name` in `namespace`.
pub fn image_build(wanted: &Wanted, name: &str, namespace: &str) -> ImageBuild {
    let mut tags = wanted.tags.iter();
    let image = tags.next().cloned().unwrap_or_default();
    let labels = BTreeMap::from([
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (IMAGE_NAME_LABEL.to_owned(), short_name(&image)),
    ]);
    let secrets = wanted
        .secrets_object
        .iter()
        .flat_map(|object| {
            wanted.secret_ids.iter().map(move |id| BuildSecret {
                id: id.clone(),
                secret_key_ref: SecretKeySelector {
                    name: object.clone(),
                    key: secret_key(id),
                },
            })
        })
        .collect();
    let placement = Placement {
        pool: wanted.pool.clone(),
        node_name: wanted.node.clone(),
        all_nodes: wanted.all_nodes,
        ..Default::default()
    };
    let recipe = BuildRecipe {
        image: image.clone(),
        additional_tags: tags.cloned().collect(),
        source: BuildSource::Upload(UploadSource {
            digest: wanted.context_digest.clone(),
            size: i64::try_from(wanted.context_size).ok(),
        }),
        dockerfile_inline: Some(wanted.dockerfile.clone()),
        target: wanted.target.clone(),
        build_args: wanted.build_args.clone(),
        secrets,
        platforms: wanted.platforms.clone(),
        no_cache: wanted.no_cache,
        pull: wanted.pull.then_some(PullPolicy::Always),
        ..Default::default()
    };
    ImageBuild {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: ImageBuildSpec {
            recipe,
            placement: (placement != Placement::default()).then_some(placement),
            timeout_seconds: wanted.timeout_seconds,
            // A local build that fails is fixed and run again by the developer, not retried.
            backoff_limit: Some(0),
            ttl_seconds_after_finished: Some(wanted.ttl_seconds),
            // The default (Rebuild) restores from the context the agent keeps (24 h).
            restore: None,
            // A build's image outlives the ImageBuild its TTL deletes: the pods run it.
            cleanup: None,
            pin: false,
        },
        status: None,
    }
}

/// The key a secret id is stored under in the Secret (ids allow `.`, `-`, `_`, as keys do).
pub fn secret_key(id: &str) -> String {
    id.to_owned()
}

/// `--build-arg K=V`, or `--build-arg K` to take `K` from the environment (skipped when unset),
/// as `docker build` does.
pub fn build_arg(flag: &str, env: impl Fn(&str) -> Option<String>) -> Result<Option<(String, String)>, String> {
    let (key, value) = match flag.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (flag, env(flag)),
    };
    if key.is_empty() {
        return Err(format!("--build-arg {flag:?}: expected NAME=VALUE or NAME"));
    }
    Ok(value.map(|v| (key.to_owned(), v)))
}

/// Where a `--secret` value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// `src=FILE` (also `source=`).
    File(String),
    /// `env=VAR`.
    Env(String),
}

/// `--secret id=ID,src=FILE` or `--secret id=ID,env=VAR` (Docker's syntax; `type=file` is
/// accepted and ignored).
pub fn secret_flag(flag: &str) -> Result<(String, SecretSource), String> {
    let mut id = None;
    let mut source = None;
    for part in flag.split(',') {
        match part.split_once('=') {
            Some(("id", v)) if !v.is_empty() => id = Some(v.to_owned()),
            Some(("src" | "source", v)) if !v.is_empty() => source = Some(SecretSource::File(v.to_owned())),
            Some(("env", v)) if !v.is_empty() => source = Some(SecretSource::Env(v.to_owned())),
            Some(("type", "file" | "env")) => {}
            _ => return Err(format!("--secret {flag:?}: expected id=ID,src=FILE or id=ID,env=VAR")),
        }
    }
    let id = id.ok_or_else(|| format!("--secret {flag:?}: id=ID is required"))?;
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "--secret {flag:?}: the id may use letters, digits, '-', '_' and '.'"
        ));
    }
    let source = source.unwrap_or_else(|| SecretSource::Env(id.clone()));
    Ok((id, source))
}

/// `--timeout` as seconds: `90`, `90s`, `15m`, `1h30m`.
pub fn duration_seconds(s: &str) -> Result<i64, String> {
    let d = crate::cli::parse_duration(s)?;
    i64::try_from(d.as_secs()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_fresh_dns_labels_from_the_image() {
        assert_eq!(object_name("example.com/team/app:dev", "x7k2p"), "app-x7k2p");
        assert_eq!(object_name("localhost:5000/My_App@sha256:abc", "a1b2c"), "my-app-a1b2c");
        assert_eq!(object_name("app:tilt-0123456789abcdef", "q"), "app-q");
        assert_eq!(object_name("---", "z"), "build-z");
        let long = format!("r/{}", "a".repeat(80));
        assert!(object_name(&long, "abcde").len() <= 56);
    }

    #[test]
    fn the_object_uploads_the_context_and_carries_the_dockerfile_inline() {
        let wanted = Wanted {
            tags: vec!["example/app:1".into(), "example/app:latest".into()],
            dockerfile: "FROM scratch\n".into(),
            secret_ids: vec!["npm".into()],
            secrets_object: Some("app-x-build-secrets".into()),
            all_nodes: true,
            pull: true,
            ttl_seconds: 3600,
            context_digest: format!("sha256:{}", "a".repeat(64)),
            context_size: 2048,
            ..Default::default()
        };
        let ib = image_build(&wanted, "app-x", "dev");
        let v = serde_json::to_value(&ib).expect("json");
        assert_eq!(v["spec"]["image"], "example/app:1");
        assert_eq!(v["spec"]["additionalTags"][0], "example/app:latest");
        assert_eq!(v["spec"]["source"]["upload"]["size"], 2048);
        assert_eq!(v["spec"]["dockerfileInline"], "FROM scratch\n");
        assert_eq!(v["spec"]["placement"]["allNodes"], true);
        assert_eq!(v["spec"]["pull"], "Always");
        assert_eq!(v["spec"]["backoffLimit"], 0);
        assert_eq!(v["spec"]["ttlSecondsAfterFinished"], 3600);
        assert_eq!(v["spec"]["secrets"][0]["secretKeyRef"]["name"], "app-x-build-secrets");
        assert_eq!(v["metadata"]["labels"][IMAGE_NAME_LABEL], "app");
        assert!(crate::api::validation::image_build(&ib.spec).is_ok());
    }

    #[test]
    fn flags_parse_as_docker_build_reads_them() {
        let env = |k: &str| (k == "HOME").then(|| "/root".to_owned());
        assert_eq!(build_arg("A=1=2", env), Ok(Some(("A".into(), "1=2".into()))));
        assert_eq!(build_arg("HOME", env), Ok(Some(("HOME".into(), "/root".into()))));
        assert_eq!(build_arg("UNSET", env), Ok(None));
        assert!(build_arg("=x", env).is_err());
        assert_eq!(
            secret_flag("id=npm,src=/tmp/npmrc"),
            Ok(("npm".into(), SecretSource::File("/tmp/npmrc".into())))
        );
        assert_eq!(
            secret_flag("id=tok,env=GH_TOKEN"),
            Ok(("tok".into(), SecretSource::Env("GH_TOKEN".into())))
        );
        assert_eq!(
            secret_flag("id=TOK"),
            Ok(("TOK".into(), SecretSource::Env("TOK".into())))
        );
        assert!(secret_flag("src=/x").is_err());
        assert!(secret_flag("id=a/b,src=/x").is_err());
        assert_eq!(duration_seconds("90"), Ok(90));
        assert_eq!(duration_seconds("15m"), Ok(900));
        assert_eq!(duration_seconds("1h30m"), Ok(5400));
        assert!(duration_seconds("0").is_err() && duration_seconds("soon").is_err());
    }
}

//! `kiln manifests`: print the install manifests (namespace, RBAC, controller, default pool),
//! the same objects `kiln install` applies and the Helm chart renders.

use super::exit;
use crate::deploy::{self, Install, Values};

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// Namespace kiln runs in.
    #[arg(long, default_value = "kiln-system")]
    namespace: String,
    /// The kiln image for the controller and agents (sets image.repository and image.tag).
    #[arg(long)]
    image: Option<String>,
    /// A value file, as for the Helm chart (repeatable; later ones win).
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    values: Vec<String>,
    /// A value, `key.path=value`, as `helm --set` (repeatable), e.g. `controller.replicas=2`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

/// The install described by the flags shared by `kiln manifests` and `kiln install`.
pub(super) fn install_from(
    namespace: &str,
    image: Option<&str>,
    files: &[String],
    sets: &[String],
) -> Result<Install, String> {
    let mut values = Values::with_overrides(files, sets).map_err(|e| e.to_string())?;
    if let Some(image) = image {
        let (repository, tag) = split_image(image);
        values.image.repository = repository;
        values.image.tag = tag;
    }
    Ok(Install {
        values,
        namespace: namespace.to_owned(),
        ..Install::default()
    })
}

/// `registry:5000/kiln:1.2` → (`registry:5000/kiln`, `1.2`); no tag → (image, "").
fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_owned(), tag.to_owned()),
        _ => (image.to_owned(), String::new()),
    }
}

pub(super) fn run(args: &Args) -> u8 {
    let install = match install_from(&args.namespace, args.image.as_deref(), &args.values, &args.sets) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::INVALID;
        }
    };
    match deploy::to_yaml(&install) {
        Ok(yaml) => {
            print!("{yaml}");
            exit::OK
        }
        Err(e) => {
            eprintln!("error: could not render the manifests: {e}");
            exit::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_split_into_repository_and_tag() {
        assert_eq!(
            split_image("kiln.dev/kiln:dev-1"),
            ("kiln.dev/kiln".into(), "dev-1".into())
        );
        assert_eq!(
            split_image("localhost:5000/kiln"),
            ("localhost:5000/kiln".into(), String::new())
        );
        assert_eq!(split_image("kiln"), ("kiln".into(), String::new()));
    }
}

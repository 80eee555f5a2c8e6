//! `kiln manifests`: print the install manifests (RBAC, controller Deployment, default pool).

use super::exit;
use crate::deploy::{self, Options};

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// Namespace kiln runs in.
    #[arg(long, default_value = "kiln-system")]
    namespace: String,
    /// The kiln image for the controller and agents.
    #[arg(long, default_value = concat!("kiln.dev/kiln:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Controller replicas (one leads; the others stand by).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    replicas: i32,
}

pub(super) fn run(args: &Args) -> u8 {
    let options = Options {
        namespace: args.namespace.clone(),
        image: args.image.clone(),
        replicas: args.replicas,
    };
    match deploy::to_yaml(&options) {
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

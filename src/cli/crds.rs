//! `kiln crds`: print the CRDs generated from the Rust types.

use super::exit;
use crate::api::crds;

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// Render for this Kubernetes version (`1.20`, `v1.29.3`): before 1.25 the CEL rules, which
    /// such servers reject under server-side apply, are left out (kiln checks them itself).
    #[arg(long, value_name = "VERSION", value_parser = parse_minor)]
    kube_version: Option<u32>,
}

/// Takes the minor number out of `1.20`, `v1.20.2` or `1.20+`.
fn parse_minor(s: &str) -> Result<u32, String> {
    let s = s.trim_start_matches('v');
    let mut parts = s.split('.');
    match (parts.next(), parts.next()) {
        (Some("1"), Some(minor)) => minor
            .trim_end_matches('+')
            .parse()
            .map_err(|_| format!("{s:?} is not a Kubernetes version such as 1.30")),
        _ => Err(format!("{s:?} is not a Kubernetes version such as 1.30")),
    }
}

pub(super) fn run(args: &Args) -> u8 {
    let list = match args.kube_version {
        Some(minor) => crds::for_server(minor),
        None => crds::all(),
    };
    match crds::to_yaml_docs(&list) {
        Ok(yaml) => {
            print!("{yaml}");
            exit::OK
        }
        Err(e) => {
            eprintln!("error: could not render the CRDs: {e}");
            exit::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_minor;

    #[test]
    fn parses_kubernetes_versions() {
        assert_eq!(parse_minor("1.20"), Ok(20));
        assert_eq!(parse_minor("v1.29.3"), Ok(29));
        assert_eq!(parse_minor("1.22+"), Ok(22));
        assert!(parse_minor("2.0").is_err());
        assert!(parse_minor("latest").is_err());
    }
}

//! `kiln generate --root DIR` (hidden; `make generate`): writes the generated install files —
//! `deploy/` and `charts/kiln/` — under DIR, removing chart files that are no longer generated.

use std::path::PathBuf;

use super::exit;
use crate::deploy;

#[derive(clap::Args, Debug)]
pub(super) struct Args {
    /// The repository root.
    #[arg(long, default_value = ".")]
    root: PathBuf,
}

pub(super) fn run(args: &Args) -> u8 {
    let files = match deploy::generated_files() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: could not render the install files: {e}");
            return exit::FAILURE;
        }
    };
    let chart = args.root.join("charts/kiln");
    if chart.is_dir()
        && let Err(e) = std::fs::remove_dir_all(&chart)
    {
        eprintln!("error: cannot clear {}: {e}", chart.display());
        return exit::FAILURE;
    }
    for (path, text) in files {
        let target = args.root.join(&path);
        let written = target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&target, text));
        if let Err(e) = written {
            eprintln!("error: cannot write {}: {e}", target.display());
            return exit::FAILURE;
        }
    }
    exit::OK
}

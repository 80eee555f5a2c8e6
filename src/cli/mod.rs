//! The command line: one subcommand per role or task, parsed with clap.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod crds;
mod validate;

/// Exit codes scripts can rely on.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The operation failed (a build failed, a server error, …).
    pub const FAILURE: u8 = 1;
    /// Bad usage or invalid input (nothing was changed).
    pub const INVALID: u8 = 2;
}

/// kiln builds container images on the Kubernetes nodes that will run them:
/// no registry, no push, no pull.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print kiln's CustomResourceDefinitions as YAML (what `crds/` holds).
    Crds(crds::Args),
    /// Check ImageBuild and BuilderPool manifests offline, with the rules the controller applies.
    Validate(validate::Args),
}

/// Output formats for commands that print data.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// Human-readable text.
    #[default]
    Text,
    /// JSON, for scripts.
    Json,
}

impl Cli {
    /// Runs the chosen command and returns the process exit code.
    pub fn run(self) -> ExitCode {
        let code = match self.command {
            Command::Crds(args) => crds::run(&args),
            Command::Validate(args) => validate::run(&args),
        };
        ExitCode::from(code)
    }
}

/// Reads a file, or standard input for `-`.
fn read_input(path: &PathBuf) -> std::io::Result<String> {
    if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
}

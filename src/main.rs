//! The `kiln` binary: parses the command line and starts one role.

use clap::Parser;

fn main() -> std::process::ExitCode {
    kiln::cli::Cli::parse().run()
}

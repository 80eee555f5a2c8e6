//! The Python of the test virtualenv (`make test-env` makes it: hack/python-env.sh), for the
//! tests that need Helm's engine or Google's Starlark.

use std::path::PathBuf;

/// The virtualenv's python (`$KILN_PYTHON`, else `~/.cache/kiln/venv/bin/python`), or `None`
/// with a note saying how to make it.
pub fn venv_python() -> Option<PathBuf> {
    let path = std::env::var_os("KILN_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".cache/kiln/venv/bin/python")
    });
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED: no test virtualenv at {} (run `make test-env`)",
            path.display()
        );
        None
    }
}

//! Local build contexts for `kiln build`: `.dockerignore` rules and a deterministic tar of the context.
//!
//! ```no_run
//! # fn demo() -> Result<(), kiln::context::Error> {
//! use std::path::Path;
//! use kiln::context::{self, PackOptions};
//!
//! let root = Path::new("./app");
//! let ignore = context::load_ignore(root, Some(Path::new("./app/Dockerfile")))?;
//! let out = std::io::sink();
//! let packed = context::pack(PackOptions { root, ignore: &ignore }, out, &mut |w| eprintln!("warning: {w}"))?;
//! println!("{} ({} bytes, {} files)", packed.digest, packed.size, packed.files);
//! # Ok(()) }
//! ```
//!
//! The module does no I/O besides reading the context directory (and its ignore file) and writing
//! to the [`std::io::Write`] the caller hands to [`pack()`]. The same tree always gives the same
//! bytes, hence the same `sha256:` digest; see [`pack()`] for what is (and is not) part of it.

pub mod ignore;
pub mod pack;

use std::fmt;
use std::fs::FileType;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

pub use ignore::IgnoreRules;
pub use pack::{PackOptions, Packed, pack};

/// Everything that can go wrong reading ignore rules or packing a context.
///
/// Messages say what happened and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line of the ignore file is not a valid pattern.
    #[error(
        "{}:{line}: invalid pattern {pattern:?}: {reason}; fix or remove that line (see https://docs.docker.com/build/concepts/context/#dockerignore-files)",
        file.display()
    )]
    IgnoreSyntax {
        /// The ignore file (`.dockerignore` when the rules were parsed from text).
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line as written, trimmed.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The context root is not a directory.
    #[error("build context {} is not a directory; pass the directory that holds your sources", path.display())]
    NotADirectory {
        /// The root as given.
        path: PathBuf,
    },

    /// A file or directory of the context (or the ignore file) could not be read.
    #[error(
        "cannot read {}: {source}; make it readable by you, or exclude it in .dockerignore",
        path.display()
    )]
    Read {
        /// The path that could not be read.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },

    /// A file changed size while it was being archived. The archive written so far is well formed
    /// (the entry has the size its header announces) but its content is not the file's: discard it.
    #[error(
        "{} changed while it was being archived; wait until nothing writes to it (or exclude it in .dockerignore) and retry",
        path.display()
    )]
    Changed {
        /// The file that changed.
        path: PathBuf,
    },

    /// The archive could not be written to the caller's writer.
    #[error("cannot write the build context archive: {source}; check free space or the connection it is sent over")]
    Write {
        /// The underlying failure.
        source: io::Error,
    },
}

/// Something [`pack()`] left out that the user may not expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// A file that cannot be part of a build context was skipped.
    Skipped {
        /// Its path, relative to the context root.
        path: PathBuf,
        /// What it is.
        kind: SpecialKind,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::Skipped { path, kind } => write!(
                f,
                "skipped {}: a {kind} cannot be part of a build context (add it to .dockerignore to silence this)",
                path.display()
            ),
        }
    }
}

/// The kinds of files a build context cannot hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialKind {
    /// A named pipe.
    Fifo,
    /// A Unix domain socket.
    Socket,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// Anything else that is not a file, directory or symlink.
    Other,
}

impl SpecialKind {
    fn of(kind: FileType) -> Self {
        if kind.is_fifo() {
            Self::Fifo
        } else if kind.is_socket() {
            Self::Socket
        } else if kind.is_char_device() {
            Self::CharDevice
        } else if kind.is_block_device() {
            Self::BlockDevice
        } else {
            Self::Other
        }
    }
}

impl fmt::Display for SpecialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fifo => "named pipe (FIFO)",
            Self::Socket => "socket",
            Self::CharDevice => "character device",
            Self::BlockDevice => "block device",
            Self::Other => "special file",
        })
    }
}

/// Loads the ignore rules Docker would apply to a build of `context` with `dockerfile`.
///
/// Docker's lookup: when a Dockerfile path is given and `<that path>.dockerignore` exists (for
/// `docker/app.Dockerfile`, `docker/app.Dockerfile.dockerignore`), it wins; otherwise
/// `<context>/.dockerignore` if it exists; otherwise there are no rules. Relative paths are
/// relative to the current directory, as the caller gave them.
pub fn load_ignore(context: &Path, dockerfile: Option<&Path>) -> Result<IgnoreRules, Error> {
    if let Some(dockerfile) = dockerfile {
        let mut name = dockerfile.as_os_str().to_owned();
        name.push(".dockerignore");
        let specific = PathBuf::from(name);
        if let Some(text) = read_optional(&specific)? {
            return ignore::parse_file(&text, &specific);
        }
    }
    let general = context.join(".dockerignore");
    match read_optional(&general)? {
        Some(text) => ignore::parse_file(&text, &general),
        None => Ok(IgnoreRules::empty()),
    }
}

/// Reads `path` as text (invalid UTF-8 replaced), or `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn load_ignore_prefers_the_dockerfile_specific_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("docker")).unwrap();
        fs::write(root.join(".dockerignore"), "general\n").unwrap();
        fs::write(root.join("docker/app.Dockerfile.dockerignore"), "specific\n").unwrap();

        let rules = load_ignore(root, Some(&root.join("docker/app.Dockerfile"))).unwrap();
        assert!(rules.excludes("specific"));
        assert!(!rules.excludes("general"));

        // No specific file next to this Dockerfile: the context's .dockerignore applies.
        let rules = load_ignore(root, Some(&root.join("Dockerfile"))).unwrap();
        assert!(rules.excludes("general"));
        assert!(!rules.excludes("specific"));

        let rules = load_ignore(root, None).unwrap();
        assert!(rules.excludes("general"));
    }

    #[test]
    fn load_ignore_without_files_has_no_rules() {
        let dir = tempfile::tempdir().unwrap();
        let rules = load_ignore(dir.path(), Some(&dir.path().join("Dockerfile"))).unwrap();
        assert!(!rules.excludes("anything"));
        assert!(!rules.has_exceptions());
    }

    #[test]
    fn load_ignore_reports_the_file_and_line_of_a_bad_pattern() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".dockerignore"), "# ok\nfoo\n!\n").unwrap();
        let err = load_ignore(dir.path(), None).unwrap_err();
        match &err {
            Error::IgnoreSyntax { file, line, .. } => {
                assert_eq!(file, &dir.path().join(".dockerignore"));
                assert_eq!(*line, 3);
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(
            err.to_string().contains(".dockerignore:3: invalid pattern \"!\""),
            "{err}"
        );
    }

    #[test]
    fn load_ignore_reports_an_unreadable_ignore_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(".dockerignore")).unwrap();
        let err = load_ignore(dir.path(), None).unwrap_err();
        assert!(matches!(err, Error::Read { .. }), "{err:?}");
    }
}

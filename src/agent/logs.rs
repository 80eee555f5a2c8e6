//! Build logs kept on the node: one bounded file per NodeBuild, served by the agent over HTTP
//! (`GET /logs/<namespace>/<name>`, `?follow=true` while the build runs) for `kiln logs` and
//! `kiln build`.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Largest log kept per build; later lines are dropped with a note.
pub const MAX_LOG_BYTES: u64 = 8 * 1024 * 1024;

/// Where build logs live.
#[derive(Clone, Debug)]
pub struct LogStore {
    dir: PathBuf,
    /// Logs still being written (their builds run).
    open: Arc<Mutex<HashSet<PathBuf>>>,
}

/// An open log of one build; the log counts as finished once this drops.
pub struct BuildLog {
    file: Option<std::fs::File>,
    written: u64,
    truncated: bool,
    path: Option<PathBuf>,
    open: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Drop for BuildLog {
    fn drop(&mut self) {
        if let (Some(path), Ok(mut open)) = (&self.path, self.open.lock()) {
            open.remove(path);
        }
    }
}

impl LogStore {
    /// A store in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            open: Arc::default(),
        })
    }

    /// The file of a build's log, if the names are safe to use as one.
    pub fn path(&self, namespace: &str, name: &str) -> Option<PathBuf> {
        let safe = |s: &str| {
            !s.is_empty()
                && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
                && s != "."
                && s != ".."
        };
        (safe(namespace) && safe(name)).then(|| self.dir.join(format!("{namespace}_{name}.log")))
    }

    /// Starts (or restarts) the log of a build.
    pub fn create(&self, namespace: &str, name: &str) -> BuildLog {
        let path = self.path(namespace, name);
        let file = path.as_ref().and_then(|p| std::fs::File::create(p).ok());
        if let (Some(p), Ok(mut open)) = (&path, self.open.lock()) {
            open.insert(p.clone());
        }
        BuildLog {
            file,
            written: 0,
            truncated: false,
            path,
            open: self.open.clone(),
        }
    }

    /// True while the build whose log is at `path` runs (more lines may come).
    pub fn is_open(&self, path: &Path) -> bool {
        self.open.lock().is_ok_and(|o| o.contains(path))
    }

    /// The log of a build, if this node has it.
    pub fn read(&self, namespace: &str, name: &str) -> Option<String> {
        self.path(namespace, name).and_then(|p| std::fs::read_to_string(p).ok())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl BuildLog {
    /// Appends lines, up to [`MAX_LOG_BYTES`].
    pub fn write_lines(&mut self, lines: &[String]) {
        let Some(file) = self.file.as_mut() else { return };
        for line in lines {
            if self.truncated {
                return;
            }
            let len = line.len() as u64 + 1;
            if self.written + len > MAX_LOG_BYTES {
                let _ = writeln!(file, "[kiln: log truncated at {MAX_LOG_BYTES} bytes]");
                self.truncated = true;
                return;
            }
            if writeln!(file, "{line}").is_ok() {
                self.written += len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_bounded_and_names_cannot_escape_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::new(dir.path()).expect("store");
        let mut log = store.create("ns", "b-1-1");
        log.write_lines(&["#1 [1/2] FROM scratch".into(), "#1 DONE 0.0s".into()]);
        assert_eq!(
            store.read("ns", "b-1-1").as_deref(),
            Some("#1 [1/2] FROM scratch\n#1 DONE 0.0s\n")
        );
        let big = "x".repeat(1024 * 1024);
        for _ in 0..10 {
            log.write_lines(std::slice::from_ref(&big));
        }
        let text = store.read("ns", "b-1-1").unwrap_or_default();
        assert!(text.len() as u64 <= MAX_LOG_BYTES + 100 && text.ends_with("truncated at 8388608 bytes]\n"));
        assert!(store.read("..", "x").is_none());
        assert!(store.read("ns", "../../etc/passwd").is_none());
    }
}

//! Local git repositories served over loopback by `git daemon --inetd`
//! (one git process per connection, on a port we hold: no port races).
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "kiln")
        .env("GIT_AUTHOR_EMAIL", "kiln@example.invalid")
        .env("GIT_COMMITTER_NAME", "kiln")
        .env("GIT_COMMITTER_EMAIL", "kiln@example.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A directory of bare repositories served at `git://127.0.0.1:<port>/<name>.git`.
pub struct GitServer {
    root: tempfile::TempDir,
    port: u16,
}

impl GitServer {
    /// Starts serving an empty root.
    pub fn start() -> GitServer {
        let root = tempfile::tempdir().expect("tempdir");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("addr").port();
        let base = root.path().to_path_buf();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let Ok(fd) = OwnedFd::from(stream).try_clone() else {
                    continue;
                };
                let Ok(fd2) = fd.try_clone() else { continue };
                let child = Command::new("git")
                    .args(["daemon", "--inetd", "--export-all", "--log-destination=none"])
                    .arg(format!("--base-path={}", base.display()))
                    .arg(&base)
                    .stdin(Stdio::from(fd))
                    .stdout(Stdio::from(fd2))
                    .stderr(Stdio::null())
                    .spawn();
                if let Ok(mut c) = child {
                    std::thread::spawn(move || {
                        let _ = c.wait();
                    });
                }
            }
        });
        GitServer { root, port }
    }

    /// Creates repository `name` with one commit per entry of `commits`
    /// (each a list of files), tags the last commit `tag`, and returns the
    /// commit ids.
    pub fn create_repo(&self, name: &str, commits: &[&[(&str, &str)]], tag: &str) -> Vec<String> {
        let work = self.root.path().join(format!("{name}-work"));
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q", "-b", "main"]);
        let mut ids = Vec::new();
        for (i, files) in commits.iter().enumerate() {
            for (path, content) in files.iter() {
                let p = work.join(path);
                std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                std::fs::write(&p, content).expect("write");
            }
            git(&work, &["add", "-A"]);
            git(&work, &["commit", "-q", "-m", &format!("commit {i}")]);
            ids.push(git(&work, &["rev-parse", "HEAD"]));
        }
        git(&work, &["tag", tag]);
        let bare = self.root.path().join(format!("{name}.git"));
        git(
            self.root.path(),
            &[
                "clone",
                "-q",
                "--bare",
                &work.display().to_string(),
                &bare.display().to_string(),
            ],
        );
        ids
    }

    /// `git://127.0.0.1:<port>/<name>.git`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }

    /// Where the repositories live.
    pub fn root(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }
}

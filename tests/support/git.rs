//! Local git repositories served over loopback by `git daemon --inetd`
//! (one git process per connection, on a port we hold: no port races), and
//! over smart HTTP by `git http-backend` run as CGI per request.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs git in `dir` with a fixed identity; panics on failure, returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
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

    /// Adds a commit with `files` on top of `main` of repository `name` and pushes it to the
    /// served repository: the branch moves. Returns the new commit id.
    pub fn commit(&self, name: &str, files: &[(&str, &str)]) -> String {
        let work = self.root.path().join(format!("{name}-work"));
        for (path, content) in files {
            std::fs::write(work.join(path), content).expect("write");
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "next"]);
        let bare = self.bare(name).display().to_string();
        git(&work, &["push", "-q", &bare, "main"]);
        git(&work, &["rev-parse", "HEAD"])
    }

    /// `git://127.0.0.1:<port>/<name>.git`.
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}.git", self.port)
    }

    /// Where the repositories live.
    pub fn root(&self) -> PathBuf {
        self.root.path().to_path_buf()
    }

    /// The bare repository `name`, to run git in.
    pub fn bare(&self, name: &str) -> PathBuf {
        self.root.path().join(format!("{name}.git"))
    }

    /// Serves the same repositories over smart HTTP on loopback; with `password`, only to
    /// requests that carry it as basic credentials (any user). Returns the base URL:
    /// `http://127.0.0.1:<port>` (a repository is `<base>/<name>.git`).
    pub fn serve_http(&self, password: Option<&str>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("addr").port();
        let root = self.root.path().to_path_buf();
        let password = password.map(str::to_owned);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, password) = (root.clone(), password.clone());
                std::thread::spawn(move || {
                    let _ = http_backend(stream, &root, password.as_deref());
                });
            }
        });
        format!("http://127.0.0.1:{port}")
    }
}

/// Answers one HTTP request (GET of the refs, POST of a fetch) by running `git http-backend`
/// as CGI: request headers become `HTTP_*` variables, the body its stdin.
fn http_backend(stream: TcpStream, root: &Path, password: Option<&str>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let authorized = password.is_none_or(|expected| {
        use base64::Engine;
        let credentials = header("authorization")
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
            .and_then(|(_, b)| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(|d| String::from_utf8_lossy(&d).into_owned())
            .unwrap_or_default();
        credentials.split_once(':').is_some_and(|(_, p)| p == expected)
    });
    let mut out = stream;
    if !authorized {
        return out.write_all(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
    let mut body = Vec::new();
    let length: usize = header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    if length > 0 {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    let mut words = request_line.split_whitespace();
    let method = words.next().unwrap_or("GET").to_owned();
    let target = words.next().unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut cgi = Command::new("git");
    cgi.arg("http-backend")
        .env_clear()
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_LENGTH", length.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(t) = header("content-type") {
        cgi.env("CONTENT_TYPE", t);
    }
    for (name, value) in &headers {
        cgi.env(format!("HTTP_{}", name.to_ascii_uppercase().replace('-', "_")), value);
    }
    let mut child = cgi.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&body)?;
    }
    let text = child.wait_with_output()?.stdout;
    let split = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| text.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)))
        .unwrap_or((text.len(), 0));
    let head = String::from_utf8_lossy(&text[..split.0]).into_owned();
    let body = &text[(split.0 + split.1).min(text.len())..];
    let mut status = "200 OK".to_owned();
    let mut response_headers = String::new();
    for line in head.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.strip_prefix("Status: ") {
            Some(s) => status = s.to_owned(),
            None => response_headers.push_str(&format!("{line}\r\n")),
        }
    }
    out.write_all(
        format!(
            "HTTP/1.1 {status}\r\n{response_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )?;
    out.write_all(body)
}

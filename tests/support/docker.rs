//! A private Docker daemon (containerd + dockerd from Debian's `docker.io`)
//! for tests that need a real BuildKit: its own root, state, sockets and pid
//! files under a temp dir, no bridge network. Each daemon runs under a
//! [`Supervised`] shell that stops it by PID when dropped or when the test
//! process exits for any reason (panic, kill), then removes the directory.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::process::Supervised;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The busybox image every daemon gets, made from Debian's `busybox-static`.
pub const BUSYBOX: &str = "kiln-test/busybox:latest";

const MISSING: &str = "run `make test-env` (hack/docker-env.sh) first";

/// A running private Docker daemon.
pub struct DockerDaemon {
    // Field order is drop order: dockerd stops before containerd.
    dockerd: Supervised,
    containerd: Supervised,
    dir: PathBuf,
    socket: PathBuf,
    /// containerd's PID.
    pub containerd_pid: u32,
    /// dockerd's PID (as started; see [`DockerDaemon::crash_and_restart_dockerd`]).
    pub dockerd_pid: u32,
    /// dockerd's arguments, to start it again.
    dockerd_args: Vec<String>,
    /// dockerd processes started after a crash, and the PID of the one running now.
    restarted: std::sync::Mutex<(Vec<Supervised>, u32)>,
}

fn have(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(bin).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(bin).is_file()
}

/// The docker CLI: Debian's (same version as the daemon) if present.
fn docker_cli() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/docker");
    if debian.is_file() {
        debian
    } else {
        PathBuf::from("docker")
    }
}

impl DockerDaemon {
    /// One daemon per test binary, started on first use and stopped when the
    /// process exits.
    pub fn shared() -> &'static DockerDaemon {
        static SHARED: OnceLock<DockerDaemon> = OnceLock::new();
        SHARED.get_or_init(DockerDaemon::start)
    }

    /// Starts a new daemon and imports [`BUSYBOX`]. Panics with a hint when
    /// the binaries are missing.
    pub fn start() -> DockerDaemon {
        for bin in ["dockerd", "containerd", "runc"] {
            assert!(have(bin), "`{bin}` not found: {MISSING}");
        }
        assert!(Path::new("/bin/busybox").is_file(), "/bin/busybox not found: {MISSING}");
        // Short path: unix socket paths are limited to 108 bytes.
        let dir = PathBuf::from(format!(
            "/tmp/kiln-dockerd-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple().to_string().split_at(8).0
        ));
        std::fs::create_dir_all(&dir).expect("create daemon dir");
        let d = dir.display();
        std::fs::write(
            dir.join("containerd.toml"),
            format!(
                r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/containerd-debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
"#
            ),
        )
        .expect("write containerd config");
        std::fs::write(dir.join("daemon.json"), "{}\n").expect("write daemon.json");

        let containerd = Supervised::spawn(
            "containerd",
            "containerd",
            &["--config".to_string(), format!("{d}/containerd.toml")],
            &[],
            &dir.join("containerd.log"),
            None,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dir.join("containerd.sock").exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not create its socket:\n{}",
                containerd.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let args: Vec<String> = [
            format!("--containerd={d}/containerd.sock"),
            format!("--data-root={d}/data"),
            format!("--exec-root={d}/exec"),
            format!("--pidfile={d}/dockerd.pid"),
            format!("--host=unix://{d}/docker.sock"),
            "--bridge=none".to_string(),
            "--iptables=false".to_string(),
            "--ip6tables=false".to_string(),
            "--ip-forward=false".to_string(),
            "--ip-masq=false".to_string(),
            format!("--config-file={d}/daemon.json"),
        ]
        .into();
        // dockerd's supervisor removes the whole directory once it stopped.
        let dockerd = Supervised::spawn("dockerd", "dockerd", &args, &[], &dir.join("dockerd.log"), Some(&dir));
        let daemon = DockerDaemon {
            socket: dir.join("docker.sock"),
            containerd_pid: containerd.pid(),
            dockerd_pid: dockerd.pid(),
            restarted: std::sync::Mutex::new((Vec::new(), dockerd.pid())),
            dockerd_args: args,
            dockerd,
            containerd,
            dir,
        };
        daemon.wait_ready(Duration::from_secs(60));
        daemon.import_busybox();
        daemon
    }

    /// Kills dockerd (and with it Docker's BuildKit) with SIGKILL, as a crash would, and starts
    /// it again on the same data, as its service manager would; returns once it answers.
    /// containerd keeps running. For the chaos harness.
    pub fn crash_and_restart_dockerd(&self) {
        let mut restarted = self.restarted.lock().expect("lock");
        let _ = Command::new("kill").args(["-KILL", &restarted.1.to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Command::new("kill")
            .args(["-0", &restarted.1.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Each supervisor removes the daemon's directory when the test binary exits; the
        // first one's child is dead by then, so the last to stop removes what is left.
        let dockerd = Supervised::spawn(
            "dockerd",
            "dockerd",
            &self.dockerd_args,
            &[],
            &self.dir.join("dockerd.log"),
            Some(&self.dir),
        );
        restarted.1 = dockerd.pid();
        restarted.0.push(dockerd);
        drop(restarted);
        self.wait_ready(Duration::from_secs(60));
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(body) = self.http_get("/_ping")
                && body.ends_with("OK")
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "dockerd did not answer on {} within {timeout:?}\n--- dockerd.log ---\n{}\n--- containerd.log ---\n{}",
                    self.socket.display(),
                    self.dockerd.log_tail(30),
                    self.containerd.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A plain HTTP/1.0 GET on the Docker socket; returns the body.
    pub fn http_get(&self, path: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        Ok(resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default())
    }

    /// The socket of this daemon's own containerd.
    pub fn containerd_socket(&self) -> PathBuf {
        self.socket.with_file_name("containerd.sock")
    }

    /// The Docker API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `docker-unix://<socket>`.
    pub fn endpoint(&self) -> String {
        format!("docker-unix://{}", self.socket.display())
    }

    /// The daemon's scratch directory (logs live here).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs the docker CLI against this daemon; returns (success, stdout, stderr).
    pub fn docker(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(docker_cli())
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .output()
            .expect("run docker CLI");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    }

    /// `docker image inspect --format {{.Id}} <reference>`.
    pub fn image_id(&self, reference: &str) -> Option<String> {
        let (ok, out, _) = self.docker(&["image", "inspect", "--format", "{{.Id}}", reference]);
        ok.then_some(out)
    }

    /// Files of an image, as `tar` entries (`docker save` is heavy; this
    /// creates a container and exports its filesystem).
    pub fn image_file(&self, reference: &str, path: &str) -> Option<Vec<u8>> {
        let (ok, id, err) = self.docker(&["create", reference, "/nonexistent"]);
        assert!(ok, "docker create {reference}: {err}");
        let out = Command::new(docker_cli())
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["cp", &format!("{id}:{path}"), "-"])
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .output()
            .expect("docker cp");
        self.docker(&["rm", &id]);
        if !out.status.success() {
            return None;
        }
        let mut archive = tar::Archive::new(out.stdout.as_slice());
        let mut entries = archive.entries().ok()?;
        let mut entry = entries.next()?.ok()?;
        let mut data = Vec::new();
        entry.read_to_end(&mut data).ok()?;
        Some(data)
    }

    /// Every path in an image's filesystem and its content (small images only).
    pub fn image_export(&self, reference: &str) -> Vec<(String, Vec<u8>)> {
        let (ok, id, err) = self.docker(&["create", reference, "/nonexistent"]);
        assert!(ok, "docker create {reference}: {err}");
        let out = Command::new(docker_cli())
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["export", &id])
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .output()
            .expect("docker export");
        self.docker(&["rm", &id]);
        assert!(out.status.success(), "docker export failed");
        let mut files = Vec::new();
        let mut archive = tar::Archive::new(out.stdout.as_slice());
        for entry in archive.entries().expect("tar entries") {
            let mut entry = entry.expect("tar entry");
            let path = entry.path().expect("path").display().to_string();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read entry");
            files.push((path, data));
        }
        files
    }

    /// A rootfs tarball from `/bin/busybox` (static) with a symlink per applet.
    fn busybox_rootfs() -> Vec<u8> {
        let busybox = std::fs::read("/bin/busybox").expect("read /bin/busybox");
        let list = Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .expect("busybox --list");
        let mut b = tar::Builder::new(Vec::new());
        let dir = |b: &mut tar::Builder<Vec<u8>>, p: &str, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(mode);
            h.set_size(0);
            h.set_mtime(0);
            b.append_data(&mut h, p, std::io::empty()).expect("dir");
        };
        for (p, m) in [("bin", 0o755), ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777)] {
            dir(&mut b, p, m);
        }
        let file = |b: &mut tar::Builder<Vec<u8>>, p: &str, mode: u32, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            b.append_data(&mut h, p, data).expect("file");
        };
        file(&mut b, "bin/busybox", 0o755, &busybox);
        file(&mut b, "etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
        file(&mut b, "etc/group", 0o644, b"root:x:0:\n");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "busybox" {
                continue;
            }
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            h.set_mtime(0);
            b.append_link(&mut h, format!("bin/{applet}"), "busybox")
                .expect("symlink");
        }
        b.into_inner().expect("tar")
    }

    fn import_busybox(&self) {
        let rootfs = Self::busybox_rootfs();
        let mut child = Command::new(docker_cli())
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["import", "-", BUSYBOX])
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker import");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&rootfs)
            .expect("write rootfs");
        let out = child.wait_with_output().expect("docker import");
        assert!(
            out.status.success(),
            "docker import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A unix socket that speaks BuildKit's gRPC API directly, like
    /// buildkitd's: every connection is forwarded to Docker's `POST /grpc`
    /// (upgraded to h2c). Lets tests use `unix://` endpoints and the
    /// `Control.Session` stream against the same real BuildKit.
    pub fn grpc_unix_proxy(&self) -> PathBuf {
        let path = self
            .dir
            .join(format!("bk-{}.sock", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind proxy socket");
        let docker = self.socket.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let docker = docker.clone();
                std::thread::spawn(move || {
                    if let Ok(upstream) = upgrade_grpc(&docker) {
                        pipe(client, upstream);
                    }
                });
            }
        });
        path
    }

    /// Processes that descend from dockerd or containerd (build steps run
    /// under them), as (pid, command line).
    pub fn descendant_processes(&self) -> Vec<(u32, String)> {
        let roots = [self.dockerd_pid, self.containerd_pid];
        let mut parent = std::collections::HashMap::new();
        let mut cmdlines = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                    continue;
                };
                // pid (comm) state ppid …; comm may contain spaces.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok())
                    .unwrap_or(0);
                parent.insert(pid, ppid);
                let cmd = std::fs::read(e.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").trim().to_string())
                    .unwrap_or_default();
                cmdlines.push((pid, cmd));
            }
        }
        cmdlines
            .into_iter()
            .filter(|(pid, _)| {
                let mut p = *pid;
                for _ in 0..64 {
                    let Some(&pp) = parent.get(&p) else { return false };
                    if roots.contains(&pp) {
                        return true;
                    }
                    if pp <= 1 {
                        return false;
                    }
                    p = pp;
                }
                false
            })
            .collect()
    }
}

/// `POST /grpc` with `Upgrade: h2c` on Docker's socket; returns the raw
/// stream after the `101 Switching Protocols`.
pub fn upgrade_grpc(docker: &Path) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(docker)?;
    s.write_all(
        b"POST /grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n",
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::other("docker closed during upgrade"));
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other(format!(
            "docker refused the upgrade: {}",
            String::from_utf8_lossy(&head)
        )));
    }
    Ok(s)
}

/// Copies both ways between two unix streams until either side closes.
pub fn pipe(a: UnixStream, b: UnixStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let t = std::thread::spawn(move || {
        let (mut from, mut to) = (a2, b2);
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    let (mut from, mut to) = (b, a);
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}

//! Processes started by tests, each watched by a tiny shell supervisor so it is stopped (by PID)
//! when the test drops it, when a test panics, and even when the test binary itself dies.
//!
//! The supervisor holds the read end of a pipe whose write end only this process holds. When
//! the write end closes (explicit stop, drop, or process exit of any kind), the supervisor sends
//! SIGTERM to its child's PID, escalates to SIGKILL after a grace period, and optionally removes
//! a directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

const SUPERVISOR: &str = r#"
log="$1"; cleanup="$2"; shift 2
"$@" >>"$log" 2>&1 </dev/null &
child=$!
echo "$child"
# Block until our stdin (a pipe from the test process) reaches EOF.
while read -r _; do :; done
kill -TERM "$child" 2>/dev/null
for _ in $(seq 100); do kill -0 "$child" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$child" 2>/dev/null
wait "$child" 2>/dev/null
[ -n "$cleanup" ] && rm -rf "$cleanup"
exit 0
"#;

/// A supervised background process.
pub struct Supervised {
    name: String,
    pid: u32,
    log: PathBuf,
    supervisor: Child,
    stdin: Option<ChildStdin>,
}

impl Supervised {
    /// Starts `program args…` with `envs`, output appended to `log`. `cleanup` is removed after
    /// the process stopped.
    pub fn spawn(
        name: &str,
        program: &str,
        args: &[String],
        envs: &[(String, String)],
        log: &Path,
        cleanup: Option<&Path>,
    ) -> Self {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(SUPERVISOR)
            .arg("kiln-test-supervisor")
            .arg(log)
            .arg(cleanup.map(|p| p.as_os_str().to_owned()).unwrap_or_default())
            .arg(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut supervisor = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start bash to supervise {name}: {e}"));
        let stdout = supervisor.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("supervisor prints the child's PID");
        let pid = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("supervisor of {name} printed {line:?}, not a PID"));
        let stdin = supervisor.stdin.take();
        Self {
            name: name.to_owned(),
            pid,
            log: log.to_owned(),
            supervisor,
            stdin,
        }
    }

    /// The supervised process's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The log file of the process.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of the process's log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// True while the process runs.
    pub fn is_running(&self) -> bool {
        // `kill -0` checks the PID without signalling it.
        Command::new("kill")
            .args(["-0", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Kills the process at once (SIGKILL), as a crash would; the supervisor then exits.
    pub fn kill(&mut self) {
        let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
        self.stop();
    }

    /// Stops the process (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        if self.stdin.take().is_some() {
            let _ = self.supervisor.wait();
        }
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The process's name, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on loopback for a process the test starts (bound then released), below the
/// kernel's ephemeral range. A port from that range (what binding port 0 gives) can be taken,
/// before the process binds it, as the local end of any outgoing connection: in the scale run,
/// with 500 agents connecting, the controller once found its port in use and never started.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, span) = (10_000u16, ephemeral_low.saturating_sub(10_000));
    let random = RandomState::new();
    for attempt in 0..64u64 {
        if span == 0 {
            break;
        }
        let port = low + u16::try_from(random.hash_one(attempt) % u64::from(span)).unwrap_or(0);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// Runs a command to completion and panics with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

//! The module's one error type, and the classification of BuildKit's error strings into it.

use std::fmt;

/// Everything that can go wrong talking to BuildKit or building.
///
/// Messages say what happened and what to do about it. Secret values given in
/// [`BuildRequest::secrets`](super::BuildRequest::secrets) are masked out of
/// every message before it gets here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be parsed.
    #[error("invalid BuildKit address {address:?}: {reason}")]
    InvalidEndpoint {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },

    /// TLS material is missing, unreadable or inconsistent.
    #[error("BuildKit TLS configuration: {0}; check the CA, client certificate and key files")]
    Tls(String),

    /// The daemon could not be reached (socket missing, connection refused,
    /// TLS handshake failed, Docker refused the upgrade…).
    #[error(
        "cannot reach BuildKit at {endpoint}: {reason}; check that the daemon is running, the address is right and (for tcp://) the TLS files match the daemon's"
    )]
    Unreachable {
        /// The endpoint we dialled.
        endpoint: String,
        /// The underlying failure.
        reason: String,
    },

    /// The request itself is invalid; nothing was sent.
    #[error("invalid build request: {0}")]
    InvalidRequest(String),

    /// The Dockerfile does not parse.
    #[error("Dockerfile parse error{}: {message}; fix the Dockerfile", line.map(|l| format!(" on line {l}")).unwrap_or_default())]
    DockerfileParse {
        /// 1-based line of the offending instruction, when BuildKit reports it.
        line: Option<u32>,
        /// BuildKit's description of the problem.
        message: String,
    },

    /// A build step (`RUN`, usually) failed.
    #[error("{}", StepFailedDisplay { step, exit_code: *exit_code, log_tail, message })]
    StepFailed {
        /// The step as BuildKit names it, e.g. `[2/3] RUN make`.
        step: String,
        /// The process's exit code, when BuildKit reports one.
        exit_code: Option<i32>,
        /// The last (up to 20) log lines of that step, secrets masked.
        log_tail: Vec<String>,
        /// BuildKit's full error message.
        message: String,
    },

    /// The build context or a base image could not be fetched.
    #[error(
        "could not fetch a build source: {message}; check that the context URL, git ref/subdirectory or base image exists and that the BuildKit daemon can reach it"
    )]
    SourceFetch {
        /// BuildKit's error message.
        message: String,
    },

    /// A registry refused our credentials (or wanted some).
    #[error(
        "registry authentication failed: {message}; check the registry credentials (the docker config JSON) and that they may pull/push this image"
    )]
    Auth {
        /// BuildKit's error message.
        message: String,
    },

    /// The build was cancelled by the caller (or the daemon went away mid-build).
    #[error("the build was cancelled")]
    Cancelled,

    /// BuildKit rejected or failed the build for another reason.
    #[error("BuildKit build failed: {message}")]
    Build {
        /// BuildKit's error message.
        message: String,
    },

    /// The daemon answered something we did not expect.
    #[error("unexpected answer from BuildKit: {0}")]
    Protocol(String),
}

struct StepFailedDisplay<'a> {
    step: &'a str,
    exit_code: Option<i32>,
    log_tail: &'a [String],
    message: &'a str,
}

impl fmt::Display for StepFailedDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "build step `{}` failed", self.step)?;
        match self.exit_code {
            Some(code) => write!(f, " with exit code {code}")?,
            None => write!(f, ": {}", self.message)?,
        }
        if self.log_tail.is_empty() {
            write!(f, " (it printed nothing)")?;
        } else {
            write!(f, "; its last {} log lines:", self.log_tail.len())?;
            for line in self.log_tail {
                write!(f, "\n  {line}")?;
            }
        }
        Ok(())
    }
}

/// What the progress stream knew about the step that failed.
#[derive(Debug, Clone, Default)]
pub(crate) struct FailedStep {
    pub name: String,
    pub error: String,
    pub log_tail: Vec<String>,
}

/// Strips the wrappers every Solve error carries
/// (`failed to solve with frontend dockerfile.v0: failed to build LLB: …`)
/// so messages start with the part a user can act on.
pub(crate) fn strip_wrappers(message: &str) -> &str {
    const WRAPPERS: &[&str] = &[
        "rpc error: code = Unknown desc = ",
        "failed to solve with frontend dockerfile.v0: ",
        "failed to solve: ",
        "failed to create LLB definition: ",
        "failed to build LLB: ",
    ];
    let mut m = message.trim();
    loop {
        let before = m;
        for w in WRAPPERS {
            if let Some(rest) = m.strip_prefix(w) {
                m = rest;
            }
        }
        if m == before {
            return m;
        }
    }
}

/// Extracts the exit code from BuildKit's executor messages:
/// v0.8 `executor failed running [/bin/sh -c exit 3]: exit code: 3`,
/// v0.10+ `process "/bin/sh -c exit 3" did not complete successfully: exit code: 3`.
pub(crate) fn exit_code(message: &str) -> Option<i32> {
    let idx = message.rfind("exit code: ")?;
    let digits: String = message[idx + "exit code: ".len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// `dockerfile parse error line 2: unknown instruction: FOO` → `unknown instruction: FOO`.
fn strip_parse_prefix(message: &str) -> &str {
    let lower = message.to_ascii_lowercase();
    if lower.starts_with("dockerfile parse error")
        && let Some(idx) = message.find(": ")
    {
        return &message[idx + 2..];
    }
    message
}

/// Finds the Dockerfile line in a parse error:
/// `Dockerfile parse error line 3: unknown instruction: FOO`,
/// `dockerfile parse error on line 3: …`, `… line 3: …`.
pub(crate) fn parse_error_line(message: &str) -> Option<u32> {
    let lower = message.to_ascii_lowercase();
    for marker in ["error on line ", "error line ", "line "] {
        if let Some(idx) = lower.find(marker) {
            let digits: String = lower[idx + marker.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if let Ok(n) = digits.parse() {
                return Some(n);
            }
        }
    }
    None
}

fn is_parse_error(lower: &str) -> bool {
    lower.contains("dockerfile parse error")
        || lower.contains("unknown instruction")
        || lower.contains("file with no instructions")
        || lower.contains("unknown flag")
        || lower.contains("requires at least one argument")
        || lower.contains("requires exactly one argument")
        || lower.contains("requires at least two arguments")
        || lower.contains("requires exactly two arguments")
        || lower.contains("no build stage in current context")
        || lower.contains("failed to parse stage name")
        || lower.contains("failed to process")
        || lower.contains("syntax error")
        || lower.contains("target stage") && lower.contains("could not be found")
}

fn is_auth_error(lower: &str) -> bool {
    lower.contains("401 unauthorized")
        || lower.contains("403 forbidden")
        || lower.contains("pull access denied")
        || lower.contains("authorization failed")
        || lower.contains("failed to authorize")
        || lower.contains("no basic auth credentials")
        || lower.contains("requested access to the resource is denied")
        || lower.contains("unauthorized: ")
        || lower.contains("insufficient_scope")
        || lower.contains("authentication required")
}

fn is_source_error(lower: &str) -> bool {
    lower.contains("failed to load cache key")
        || lower.contains("invalid response status")
        || lower.contains("failed to fetch")
        || lower.contains("failed to resolve source metadata")
        || lower.contains("failed to do request")
        || lower.contains("failed to read dockerfile")
        || lower.contains("failed to resolve dockerfile")
        || lower.contains("failed to resolve httpcontext")
        || lower.contains("repository") && lower.contains("not found")
        || lower.contains("does not exist")
        || lower.contains("couldn't find remote ref")
        || lower.contains("no such host")
        || lower.contains("connection refused")
        || lower.contains("git stderr")
        || lower.contains("failed to compute cache key")
        || lower.contains("not found")
}

/// Turns a failed Solve into an [`Error`].
///
/// `status` is the gRPC status of `Solve`; `step` the vertex the status
/// stream reported as failed, if any. Messages are already masked.
pub(crate) fn classify(message: &str, code: tonic::Code, step: Option<FailedStep>) -> Error {
    let full = message.trim();
    let short = strip_wrappers(full).to_string();
    let lower = full.to_ascii_lowercase();

    if code == tonic::Code::Cancelled || lower.ends_with("context canceled") {
        return Error::Cancelled;
    }
    // The Solve error may be wrapped differently from the step's own error;
    // the step's error is the precise one.
    let exit = exit_code(full).or_else(|| step.as_ref().and_then(|s| exit_code(&s.error)));
    if let Some(exit) = exit {
        let (name, tail) = match step {
            Some(s) => (s.name, s.log_tail),
            None => (step_from_message(full), Vec::new()),
        };
        return Error::StepFailed {
            step: name,
            exit_code: Some(exit),
            log_tail: tail,
            message: short,
        };
    }
    if is_parse_error(&lower) {
        return Error::DockerfileParse {
            line: parse_error_line(full),
            message: strip_parse_prefix(&short).to_string(),
        };
    }
    if is_auth_error(&lower) {
        return Error::Auth { message: short };
    }
    if is_source_error(&lower) {
        return Error::SourceFetch { message: short };
    }
    if let Some(s) = step
        && !s.name.starts_with("[internal]")
        && (s.name.contains(" RUN ") || s.name.starts_with("RUN "))
    {
        return Error::StepFailed {
            step: s.name,
            exit_code: None,
            log_tail: s.log_tail,
            message: short,
        };
    }
    match code {
        tonic::Code::Unavailable => Error::Unreachable {
            endpoint: "BuildKit".into(),
            reason: short,
        },
        tonic::Code::Unimplemented | tonic::Code::Internal | tonic::Code::DataLoss => Error::Protocol(short),
        _ => Error::Build { message: short },
    }
}

/// `executor failed running [/bin/sh -c exit 3]` → `RUN exit 3` when the
/// progress stream did not name the step.
fn step_from_message(message: &str) -> String {
    if let Some(i) = message.find("[/bin/sh -c ")
        && let Some(end) = message[i..].find(']')
    {
        return format!("RUN {}", &message[i + "[/bin/sh -c ".len()..i + end]);
    }
    if let Some(i) = message.find("process \"/bin/sh -c ")
        && let Some(end) = message[i + 9..].find('"')
    {
        return format!("RUN {}", &message[i + 9 + "/bin/sh -c ".len()..i + 9 + end]);
    }
    "RUN".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_of_old_and_new_daemons() {
        assert_eq!(
            exit_code("executor failed running [/bin/sh -c exit 3]: exit code: 3"),
            Some(3)
        );
        assert_eq!(
            exit_code("process \"/bin/sh -c exit 42\" did not complete successfully: exit code: 42"),
            Some(42)
        );
        assert_eq!(exit_code("something else"), None);
    }

    #[test]
    fn step_failed_without_progress_names_the_command() {
        let e = classify(
            "failed to solve with frontend dockerfile.v0: failed to build LLB: executor failed running [/bin/sh -c exit 3]: exit code: 3",
            tonic::Code::Unknown,
            None,
        );
        match e {
            Error::StepFailed { step, exit_code, .. } => {
                assert_eq!(step, "RUN exit 3");
                assert_eq!(exit_code, Some(3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn step_failed_display_lists_the_tail() {
        let e = Error::StepFailed {
            step: "[2/2] RUN make".into(),
            exit_code: Some(2),
            log_tail: vec!["cc: error".into(), "make: *** [all] Error 1".into()],
            message: String::new(),
        };
        let s = e.to_string();
        assert!(s.contains("`[2/2] RUN make` failed with exit code 2"), "{s}");
        assert!(s.contains("\n  make: *** [all] Error 1"), "{s}");
    }

    #[test]
    fn parse_errors_carry_the_line() {
        let e = classify(
            "failed to solve with frontend dockerfile.v0: failed to create LLB definition: dockerfile parse error line 2: unknown instruction: FOO",
            tonic::Code::Unknown,
            None,
        );
        match e {
            Error::DockerfileParse { line, message } => {
                assert_eq!(line, Some(2));
                assert_eq!(message, "unknown instruction: FOO");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn auth_and_source_and_cancel() {
        assert!(matches!(
            classify(
                "failed to solve with frontend dockerfile.v0: failed to create LLB definition: pull access denied, repository does not exist or may require authorization",
                tonic::Code::Unknown,
                None
            ),
            Error::Auth { .. }
        ));
        assert!(matches!(
            classify(
                "failed to solve with frontend dockerfile.v0: failed to read dockerfile: failed to load cache key: invalid response status 404",
                tonic::Code::Unknown,
                None
            ),
            Error::SourceFetch { .. }
        ));
        assert!(matches!(
            classify("context canceled", tonic::Code::Unknown, None),
            Error::Cancelled
        ));
        assert!(matches!(
            classify("whatever", tonic::Code::Cancelled, None),
            Error::Cancelled
        ));
    }

    #[test]
    fn wrappers_are_stripped() {
        assert_eq!(
            strip_wrappers("failed to solve with frontend dockerfile.v0: failed to build LLB: boom"),
            "boom"
        );
    }
}

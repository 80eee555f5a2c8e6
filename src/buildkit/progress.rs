//! Typed progress from BuildKit's `Status` stream, and a plain-text renderer
//! in the style of `buildctl --progress=plain`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard_buildkit_proto::google::protobuf::Timestamp;
use bollard_buildkit_proto::moby::buildkit::v1::{StatusResponse, Vertex, VertexLog, VertexStatus};

use super::error::FailedStep;
use super::redact::Redactor;

/// How many log lines per step are kept for [`Error::StepFailed`](super::Error::StepFailed).
pub const LOG_TAIL_LINES: usize = 20;

/// Which output stream a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Counts over all steps (BuildKit vertices) seen so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgressSummary {
    /// Steps BuildKit has announced (grows while the frontend plans the build).
    pub total: usize,
    /// Steps finished (including cached ones).
    pub completed: usize,
    /// Steps answered from the cache.
    pub cached: usize,
    /// The most recently started step still running.
    pub current: Option<String>,
}

/// One thing that happened in a build. Steps are numbered in order of first
/// appearance, like `buildctl`'s `#N`. Every step that starts gets exactly one
/// [`StepStarted`](Self::StepStarted) and then one
/// [`StepCompleted`](Self::StepCompleted) or [`StepFailed`](Self::StepFailed)
/// (BuildKit may restart a step; then the pair repeats). Text is masked of secrets.
#[derive(Clone, Debug, PartialEq)]
pub enum ProgressEvent {
    /// A step started (or was found in the cache).
    StepStarted {
        /// `#N`.
        step: usize,
        /// BuildKit's name for it, e.g. `[2/3] RUN make`.
        name: String,
    },
    /// A step finished.
    StepCompleted {
        /// `#N`.
        step: usize,
        /// Its name.
        name: String,
        /// True when the result came from the build cache.
        cached: bool,
        /// Wall time as BuildKit reports it.
        duration: Option<Duration>,
    },
    /// A step failed or was cancelled.
    StepFailed {
        /// `#N`.
        step: usize,
        /// Its name.
        name: String,
        /// BuildKit's error for it.
        error: String,
        /// True when it was cancelled rather than failed.
        canceled: bool,
        /// Wall time as BuildKit reports it.
        duration: Option<Duration>,
    },
    /// One line a step printed.
    Log {
        /// `#N`.
        step: usize,
        /// stdout or stderr.
        stream: LogStream,
        /// The line without its newline.
        line: String,
    },
    /// A sub-task of a step finished (a download, `exporting layers`, …).
    StepStatus {
        /// `#N`.
        step: usize,
        /// What it was (`exporting layers`, `sha256:…`).
        id: String,
        /// Bytes or items done.
        current: i64,
        /// Total, when known.
        total: Option<i64>,
    },
    /// A warning BuildKit attached to a step (v0.10+).
    Warning {
        /// `#N`.
        step: usize,
        /// The warning.
        message: String,
    },
    /// The counts changed.
    Progress(ProgressSummary),
}

fn to_system_time(ts: &Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(ts.seconds).ok()?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[derive(Default)]
struct VertexState {
    step: Option<usize>,
    name: String,
    started: Option<SystemTime>,
    completed: Option<SystemTime>,
    /// It completed at least once (a vertex BuildKit restarts, such as a `FROM` it first
    /// resolves in the local store, still counts as done in the summary, which never goes back).
    done_once: bool,
    cached: bool,
    error: String,
    announced_start: bool,
    finished: bool,
    partial: HashMap<i64, Vec<u8>>,
    tail: VecDeque<String>,
    status_done: HashSet<String>,
}

/// Folds `StatusResponse`s into [`ProgressEvent`]s.
#[derive(Default)]
pub(crate) struct Tracker {
    vertices: HashMap<String, VertexState>,
    order: Vec<String>,
    next_step: usize,
    last_summary: ProgressSummary,
    redactor: Redactor,
    earliest: Option<SystemTime>,
    latest: Option<SystemTime>,
}

impl Tracker {
    pub(crate) fn new(redactor: Redactor) -> Self {
        Tracker {
            redactor,
            ..Default::default()
        }
    }

    fn vertex(&mut self, digest: &str) -> &mut VertexState {
        if !self.vertices.contains_key(digest) {
            self.order.push(digest.to_string());
        }
        self.vertices.entry(digest.to_string()).or_default()
    }

    fn number(&mut self, digest: &str) -> usize {
        let next = self.next_step + 1;
        let v = self.vertex(digest);
        match v.step {
            Some(n) => n,
            None => {
                v.step = Some(next);
                self.next_step = next;
                next
            }
        }
    }

    fn push_line(&mut self, digest: &str, stream: i64, raw: &[u8], out: &mut Vec<ProgressEvent>) {
        let line = String::from_utf8_lossy(raw);
        let line = self.redactor.redact(line.trim_end_matches('\r'));
        let step = self.number(digest);
        let v = self.vertex(digest);
        if v.tail.len() == LOG_TAIL_LINES {
            v.tail.pop_front();
        }
        v.tail.push_back(line.clone());
        out.push(ProgressEvent::Log {
            step,
            stream: if stream == 2 {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            },
            line,
        });
    }

    fn flush_logs(&mut self, digest: &str, out: &mut Vec<ProgressEvent>) {
        let partial: Vec<(i64, Vec<u8>)> = match self.vertices.get_mut(digest) {
            Some(v) => v.partial.drain().filter(|(_, b)| !b.is_empty()).collect(),
            None => return,
        };
        for (stream, bytes) in partial {
            self.push_line(digest, stream, &bytes, out);
        }
    }

    /// Applies one status message; returns the events it causes, in order:
    /// step starts, then sub-task results and log lines, then step ends (so
    /// a step's output is rendered before its `DONE`).
    pub(crate) fn apply(&mut self, resp: StatusResponse) -> Vec<ProgressEvent> {
        let mut out = Vec::new();
        let mut touched = Vec::new();
        for vx in resp.vertexes {
            self.update_vertex(&vx, &mut out);
            if !touched.contains(&vx.digest) {
                touched.push(vx.digest);
            }
        }
        for st in resp.statuses {
            self.sub_task(st, &mut out);
        }
        for log in resp.logs {
            self.log(log, &mut out);
        }
        for w in resp.warnings {
            let step = self.number(&w.vertex);
            let message = self.redactor.redact(&String::from_utf8_lossy(&w.short));
            out.push(ProgressEvent::Warning { step, message });
        }
        for digest in touched {
            self.end_step_if_done(&digest, &mut out);
        }
        let summary = self.summary();
        if summary != self.last_summary {
            self.last_summary = summary.clone();
            out.push(ProgressEvent::Progress(summary));
        }
        out
    }

    /// Records a vertex's state (a vertex that starts again after finishing was restarted),
    /// and announces its step the first time it starts, is cached or completes.
    fn update_vertex(&mut self, vx: &Vertex, out: &mut Vec<ProgressEvent>) {
        let started = vx.started.as_ref().and_then(to_system_time);
        let completed = vx.completed.as_ref().and_then(to_system_time);
        if let Some(s) = started {
            self.earliest = Some(self.earliest.map_or(s, |e| e.min(s)));
        }
        if let Some(c) = completed {
            self.latest = Some(self.latest.map_or(c, |l| l.max(c)));
        }
        let name = self.redactor.redact(&vx.name);
        let error = self.redactor.redact(&vx.error);
        let v = self.vertex(&vx.digest);
        v.name = name;
        v.cached |= vx.cached;
        if v.finished && completed.is_none() && started.is_some() {
            v.finished = false;
            v.announced_start = false;
            v.error.clear();
        }
        v.started = started.or(v.started);
        v.completed = completed;
        v.done_once |= completed.is_some();
        if !error.is_empty() {
            v.error = error;
        }
        let wants_start = !v.announced_start && (v.started.is_some() || v.cached || v.completed.is_some());
        if wants_start {
            let step = self.number(&vx.digest);
            let v = self.vertex(&vx.digest);
            v.announced_start = true;
            out.push(ProgressEvent::StepStarted {
                step,
                name: v.name.clone(),
            });
        }
    }

    /// A sub-task's result (a layer pulled, a context transferred), once, when it completes.
    fn sub_task(&mut self, st: VertexStatus, out: &mut Vec<ProgressEvent>) {
        if st.completed.is_none() {
            return;
        }
        let step = self.number(&st.vertex);
        let id = self.redactor.redact(&st.id);
        let v = self.vertex(&st.vertex);
        if v.status_done.insert(id.clone()) {
            out.push(ProgressEvent::StepStatus {
                step,
                id,
                current: st.current,
                total: (st.total > 0).then_some(st.total),
            });
        }
    }

    /// A chunk of a step's output: whole lines are events, the rest waits for its line's end.
    fn log(&mut self, log: VertexLog, out: &mut Vec<ProgressEvent>) {
        let mut buf = self.vertex(&log.vertex).partial.remove(&log.stream).unwrap_or_default();
        buf.extend_from_slice(&log.msg);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            self.push_line(&log.vertex, log.stream, &line[..line.len() - 1], out);
        }
        self.vertex(&log.vertex).partial.insert(log.stream, buf);
    }

    /// Ends a step that completed and is not ended yet: its unterminated output first, then
    /// `StepCompleted`, or `StepFailed` with its error.
    fn end_step_if_done(&mut self, digest: &str, out: &mut Vec<ProgressEvent>) {
        let done = self
            .vertices
            .get(digest)
            .is_some_and(|v| !v.finished && v.completed.is_some());
        if !done {
            return;
        }
        self.flush_logs(digest, out);
        let step = self.number(digest);
        let v = self.vertex(digest);
        v.finished = true;
        let duration = match (v.started, v.completed) {
            (Some(s), Some(c)) => c.duration_since(s).ok(),
            _ => None,
        };
        out.push(if v.error.is_empty() {
            ProgressEvent::StepCompleted {
                step,
                name: v.name.clone(),
                cached: v.cached,
                duration,
            }
        } else {
            ProgressEvent::StepFailed {
                step,
                name: v.name.clone(),
                error: v.error.clone(),
                canceled: v.error.ends_with("context canceled"),
                duration,
            }
        });
    }

    /// Flushes unterminated log lines (at the end of the stream).
    pub(crate) fn finish(&mut self) -> Vec<ProgressEvent> {
        let mut out = Vec::new();
        let digests = self.order.clone();
        for d in digests {
            self.flush_logs(&d, &mut out);
        }
        out
    }

    pub(crate) fn summary(&self) -> ProgressSummary {
        let mut s = ProgressSummary {
            total: self.vertices.len(),
            ..Default::default()
        };
        let mut current: Option<(SystemTime, &str)> = None;
        for v in self.vertices.values() {
            if v.completed.is_some() || v.done_once {
                s.completed += 1;
                if v.cached {
                    s.cached += 1;
                }
            } else if let Some(st) = v.started
                && current.is_none_or(|(t, _)| st >= t)
            {
                current = Some((st, v.name.as_str()));
            }
        }
        s.current = current.map(|(_, n)| n.to_string());
        s
    }

    /// The step whose failure ended the build: the one with a real error
    /// (not a cancellation caused by it), preferring a process exit.
    pub(crate) fn failed_step(&self) -> Option<FailedStep> {
        let mut best: Option<(u8, &VertexState)> = None;
        for d in &self.order {
            let v = &self.vertices[d];
            if v.error.is_empty() {
                continue;
            }
            let rank = if v.error.contains("exit code") {
                3
            } else if v.error.ends_with("context canceled") {
                1
            } else {
                2
            };
            if best.is_none_or(|(r, _)| rank > r) {
                best = Some((rank, v));
            }
        }
        best.map(|(_, v)| FailedStep {
            name: v.name.clone(),
            error: v.error.clone(),
            log_tail: v.tail.iter().cloned().collect(),
        })
    }

    /// BuildKit's own span for the build: first vertex start to last vertex
    /// completion.
    pub(crate) fn span(&self) -> Option<Duration> {
        match (self.earliest, self.latest) {
            (Some(s), Some(e)) => e.duration_since(s).ok(),
            _ => None,
        }
    }
}

/// Renders events as `buildctl --progress=plain` does:
///
/// ```text
/// #1 [internal] load remote build context
/// #1 DONE 0.0s
///
/// #2 [1/2] RUN echo hi
/// #2 hi
/// #2 DONE 0.2s
/// ```
#[derive(Debug, Default)]
pub struct PlainRenderer {
    names: HashMap<usize, String>,
    last_step: Option<usize>,
    printed_any: bool,
}

impl PlainRenderer {
    /// A renderer with nothing printed yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn header(&mut self, step: usize, out: &mut Vec<String>) {
        if self.last_step != Some(step) {
            if self.printed_any {
                out.push(String::new());
            }
            let name = self.names.get(&step).cloned().unwrap_or_default();
            out.push(format!("#{step} {name}"));
            self.last_step = Some(step);
            self.printed_any = true;
        }
    }

    /// The lines (without newlines) this event prints; may be none.
    pub fn render(&mut self, event: &ProgressEvent) -> Vec<String> {
        let mut out = Vec::new();
        match event {
            ProgressEvent::StepStarted { step, name } => {
                self.names.insert(*step, name.clone());
                self.last_step = None;
                self.header(*step, &mut out);
            }
            ProgressEvent::StepCompleted {
                step,
                name,
                cached,
                duration,
            } => {
                self.names.entry(*step).or_insert_with(|| name.clone());
                self.header(*step, &mut out);
                if *cached {
                    out.push(format!("#{step} CACHED"));
                } else {
                    let secs = duration.map(|d| d.as_secs_f64()).unwrap_or(0.0);
                    out.push(format!("#{step} DONE {secs:.1}s"));
                }
            }
            ProgressEvent::StepFailed {
                step,
                name,
                error,
                canceled,
                ..
            } => {
                self.names.entry(*step).or_insert_with(|| name.clone());
                self.header(*step, &mut out);
                if *canceled {
                    out.push(format!("#{step} CANCELED"));
                } else {
                    out.push(format!("#{step} ERROR: {error}"));
                }
            }
            ProgressEvent::Log { step, line, .. } => {
                self.header(*step, &mut out);
                out.push(format!("#{step} {line}"));
            }
            ProgressEvent::StepStatus { step, id, .. } => {
                self.header(*step, &mut out);
                out.push(format!("#{step} {id} done"));
            }
            ProgressEvent::Warning { step, message } => {
                self.header(*step, &mut out);
                out.push(format!("#{step} WARN: {message}"));
            }
            ProgressEvent::Progress(_) => {}
        }
        out
    }
}

#[cfg(test)]
#[path = "progress_tests.rs"]
mod tests;

//! What `kiln build` shows while it works: on a terminal a live line with the current step
//! and elapsed time (finished steps printed above it, cached ones marked); otherwise plain,
//! line-buffered log lines that Tilt and CI capture; nothing with `-q`. Everything goes to
//! stderr: stdout is for the result.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// `--progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A live display on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// The live display.
    Tty,
    /// Plain lines.
    Plain,
}

/// Where progress goes.
pub struct Progress {
    kind: Kind,
    /// Step names per node and step number, to name a step when it finishes.
    steps: Mutex<HashMap<(String, String), String>>,
    multi_node: bool,
}

enum Kind {
    Quiet,
    Plain,
    Tty(ProgressBar),
}

impl Progress {
    /// A display for `mode`; `quiet` shows nothing; `multi_node` prefixes lines with the node.
    pub fn new(mode: ProgressMode, quiet: bool, multi_node: bool) -> Self {
        let tty = match mode {
            ProgressMode::Auto => std::io::IsTerminal::is_terminal(&std::io::stderr()),
            ProgressMode::Tty => true,
            ProgressMode::Plain => false,
        };
        let kind = if quiet {
            Kind::Quiet
        } else if tty {
            let bar = ProgressBar::new_spinner();
            let style = ProgressStyle::with_template("{spinner:.cyan} [{elapsed:>4}] {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            Kind::Tty(bar)
        } else {
            Kind::Plain
        };
        Self {
            kind,
            steps: Mutex::default(),
            multi_node,
        }
    }

    /// A note about the build as a whole ("waiting: …", "uploading …").
    pub fn note(&self, text: &str) {
        match &self.kind {
            Kind::Quiet => {}
            Kind::Plain => line(&format!("[kiln] {text}")),
            Kind::Tty(bar) => bar.set_message(text.to_owned()),
        }
    }

    /// A line that stays on a terminal too (a finished upload, a warning).
    pub fn event(&self, text: &str) {
        match &self.kind {
            Kind::Quiet => {}
            Kind::Plain => line(&format!("[kiln] {text}")),
            Kind::Tty(bar) => bar.println(format!("  {text}")),
        }
    }

    /// One line of a node's build log (BuildKit's plain progress: `#N name`, `#N DONE 0.1s`…).
    pub fn log(&self, node: &str, text: &str) {
        let prefix = if self.multi_node {
            format!("[{node}] ")
        } else {
            String::new()
        };
        match &self.kind {
            Kind::Quiet => {}
            Kind::Plain => line(&format!("{prefix}{text}")),
            Kind::Tty(bar) => self.live(bar, node, &prefix, text),
        }
    }

    fn live(&self, bar: &ProgressBar, node: &str, prefix: &str, text: &str) {
        let Some((step, rest)) = text.strip_prefix('#').and_then(|t| t.split_once(' ')) else {
            bar.set_message(format!("{prefix}{text}"));
            return;
        };
        let Ok(mut steps) = self.steps.lock() else { return };
        let key = (node.to_owned(), step.to_owned());
        let Some(name) = steps.get(&key).cloned() else {
            steps.insert(key, rest.to_owned());
            bar.set_message(format!("{prefix}{rest}"));
            return;
        };
        if rest == "CACHED" {
            bar.println(format!("  {prefix}✔ {name}  CACHED"));
        } else if let Some(took) = rest.strip_prefix("DONE ") {
            bar.println(format!("  {prefix}✔ {name}  {took}"));
        } else if let Some(error) = rest.strip_prefix("ERROR: ") {
            bar.println(format!("  {prefix}✘ {name}: {error}"));
        } else {
            bar.set_message(format!("{prefix}{name}: {rest}"));
        }
    }

    /// Ends the live display.
    pub fn finish(&self) {
        if let Kind::Tty(bar) = &self.kind {
            bar.finish_and_clear();
        }
    }
}

fn line(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
    let _ = err.flush();
}

//! Masks build-secret values out of everything kiln shows (logs, step names, errors).
//!
//! BuildKit does not mask secrets: a `RUN --mount=type=secret,id=x cat /run/secrets/x`
//! prints the value into the Status stream verbatim. kiln masks every secret
//! value (and each line of a multi-line value) before an event or error leaves
//! this module.

use std::sync::Arc;

/// The replacement for a masked value.
pub const MASK: &str = "****";

/// Shortest value that is masked. Masking shorter strings would shred
/// ordinary output (a one-letter secret would blank every such letter);
/// such secrets are not secret in any useful sense anyway.
pub const MIN_MASKED_LEN: usize = 4;

/// Replaces known secret values with [`MASK`].
#[derive(Clone, Default)]
pub struct Redactor {
    needles: Arc<Vec<String>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} values)", self.needles.len())
    }
}

impl Redactor {
    /// Builds a redactor for these secret values.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut needles: Vec<String> = Vec::new();
        for v in values {
            let text = String::from_utf8_lossy(v);
            let trimmed = text.trim_matches(|c: char| c == '\n' || c == '\r');
            let mut push = |s: &str| {
                if s.len() >= MIN_MASKED_LEN && !needles.iter().any(|n| n == s) {
                    needles.push(s.to_string());
                }
            };
            push(trimmed);
            for line in trimmed.lines() {
                push(line.trim_end_matches('\r'));
            }
        }
        // Longest first, so a whole value is masked before its parts.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        Redactor {
            needles: Arc::new(needles),
        }
    }

    /// True when nothing will be masked.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// Masks every known value in `text`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for n in self.needles.iter() {
            if out.contains(n.as_str()) {
                out = out.replace(n.as_str(), MASK);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_values_and_their_lines() {
        let r = Redactor::new([b"s3cr3t-token\n".as_slice(), b"line-one\nline-two".as_slice()]);
        assert_eq!(r.redact("token=s3cr3t-token!"), "token=****!");
        assert_eq!(r.redact("got line-two"), "got ****");
        assert_eq!(r.redact("nothing here"), "nothing here");
    }

    #[test]
    fn short_values_are_not_masked() {
        let r = Redactor::new([b"ab".as_slice()]);
        assert!(r.is_empty());
        assert_eq!(r.redact("abc"), "abc");
    }
}

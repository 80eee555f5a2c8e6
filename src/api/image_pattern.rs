//! Image-name patterns of the image policy: parsing, validating and matching them against
//! normalised image references.
//!
//! A pattern is `name[:tag][@digest]`, written the way the kubelet names images (fully
//! qualified: `docker.io/library/busybox`, not `busybox`). In the name, `*` matches within one
//! path segment (never `/`), a whole segment `**` matches any number of segments (none too),
//! and `{{namespace}}` is the build's namespace. A pattern without tag and digest matches every
//! tag and digest of the repositories it names; with a tag or a digest it matches exactly that
//! form (`app:dev-*` matches `app:dev-1`, not `app:dev-1@sha256:…`). See [`Pattern`].

use std::fmt;

use super::reference::{DOCKER_HUB, Reference, ReferenceError};

/// The placeholder for the build's namespace.
pub const NAMESPACE_PLACEHOLDER: &str = "{{namespace}}";
/// Longest pattern accepted; a reference is at most 255 + 1 + 128 + 1 + 135 characters.
pub const MAX_PATTERN_LEN: usize = 512;

/// What is wrong with one pattern. Messages say how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is empty.
    #[error("pattern is empty")]
    Empty,
    /// Longer than [`MAX_PATTERN_LEN`].
    #[error("pattern is longer than {MAX_PATTERN_LEN} characters")]
    TooLong,
    /// `***` or longer.
    #[error("{0:?} is not a wildcard: use * within a path segment or ** as a whole segment (a/**/b)")]
    TripleStar(String),
    /// `**` next to other characters in a segment, or in a tag or digest.
    #[error("** must be a whole path segment (a/**/b); use * within a segment, a tag or a digest")]
    DoubleStarNotSegment,
    /// `{`/`}` other than `{{namespace}}`.
    #[error("{0:?} is not a placeholder: the only one is {{{{namespace}}}}")]
    Placeholder(String),
    /// `{{namespace}}` in a digest.
    #[error("{{{{namespace}}}} cannot be part of a digest")]
    PlaceholderInDigest,
    /// An uppercase letter where normalised names have none.
    #[error(
        "{part} has uppercase letters, but normalised repository names and digests are lowercase, so it would never match"
    )]
    Uppercase {
        /// `registry host`, `repository path` or `digest`.
        part: &'static str,
    },
    /// A character no image name has in that place.
    #[error("{part} cannot contain {c:?}")]
    BadChar {
        /// The character.
        c: char,
        /// `registry host`, `repository path`, `tag` or `digest`.
        part: &'static str,
    },
    /// `a//b`, a leading or trailing `/`, or an empty tag or digest.
    #[error("{0} is empty")]
    EmptyPart(&'static str),
    /// More than one `@`.
    #[error("more than one '@': write name@algorithm:hex")]
    TwoDigests,
    /// The pattern cannot match any normalised reference; `hint` says what to write instead.
    #[error("can never match, because names are matched as the kubelet normalises them: {hint}")]
    NeverMatches {
        /// What to write instead.
        hint: String,
    },
}

/// One piece of a segment, tag or digest pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    /// `*`: any run of characters within the segment.
    Star,
    /// `{{namespace}}`.
    Namespace,
}

/// One `/`-separated segment of the name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: any number of whole segments.
    Any,
    Glob(Vec<Piece>),
}

/// A parsed, valid pattern. Parse with [`Pattern::parse`]; match with [`Pattern::matches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    name: Vec<Segment>,
    tag: Option<Vec<Piece>>,
    digest: Option<Vec<Piece>>,
}

/// A normalised reference split the way patterns match it: the registry host and each path
/// segment, the tag (`latest` when the reference has neither tag nor digest) and the digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    segments: Vec<String>,
    tag: Option<String>,
    digest: Option<String>,
    normalised: String,
}

impl Subject {
    /// Parses and normalises `image` as the kubelet does (`busybox` →
    /// `docker.io/library/busybox:latest`).
    pub fn parse(image: &str) -> Result<Self, ReferenceError> {
        let r = Reference::parse(image)?.tagged();
        let normalised = r.to_string();
        let mut segments = vec![r.domain];
        segments.extend(r.path.split('/').map(str::to_owned));
        Ok(Self {
            segments,
            tag: r.tag,
            digest: r.digest,
            normalised,
        })
    }

    /// The normalised reference, e.g. `docker.io/library/busybox:latest`.
    pub fn normalised(&self) -> &str {
        &self.normalised
    }
}

impl Pattern {
    /// Parses and validates a pattern, refusing what could never match a normalised name.
    pub fn parse(source: &str) -> Result<Self, PatternError> {
        if source.is_empty() {
            return Err(PatternError::Empty);
        }
        if source.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong);
        }
        let (rest, digest) = match source.split_once('@') {
            Some((_, d)) if d.contains('@') => return Err(PatternError::TwoDigests),
            Some((rest, d)) => (rest, Some(d)),
            None => (source, None),
        };
        // As in a reference, the tag follows the last ':' after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        let segments = name
            .split('/')
            .enumerate()
            .map(|(i, s)| segment(s, i == 0))
            .collect::<Result<Vec<_>, _>>()?;
        let tag = tag.map(|t| pieces(t, Part::Tag)).transpose()?;
        let digest = digest.map(|d| pieces(d, Part::Digest)).transpose()?;
        let pattern = Self {
            source: source.to_owned(),
            name: segments,
            tag,
            digest,
        };
        pattern.check_can_match(name)?;
        Ok(pattern)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The pattern with `{{namespace}}` replaced, for messages.
    pub fn expand(&self, namespace: &str) -> String {
        self.source.replace(NAMESPACE_PLACEHOLDER, namespace)
    }

    /// Whether `subject` matches for a build in `namespace`. `namespace` is compared as a
    /// literal string, never read as pattern syntax.
    pub fn matches(&self, subject: &Subject, namespace: &str) -> bool {
        if !match_segments(&self.name, &subject.segments, namespace) {
            return false;
        }
        if self.tag.is_none() && self.digest.is_none() {
            return true;
        }
        let part = |pattern: &Option<Vec<Piece>>, value: &Option<String>| match (pattern, value) {
            (None, None) => true,
            (Some(p), Some(v)) => glob(p, namespace, v),
            _ => false,
        };
        part(&self.tag, &subject.tag) && part(&self.digest, &subject.digest)
    }

    fn check_can_match(&self, name: &str) -> Result<(), PatternError> {
        let never = |hint: String| Err(PatternError::NeverMatches { hint });
        if let Some(Segment::Glob(first)) = self.name.first()
            && !first.contains(&Piece::Star)
        {
            let text: String = first
                .iter()
                .map(|p| if let Piece::Lit(l) = p { l.as_str() } else { "" })
                .collect();
            let has_namespace = first.contains(&Piece::Namespace);
            if !(text.contains('.') || text.contains(':') || (!has_namespace && text == "localhost")) {
                return never(if has_namespace {
                    format!(
                        "the first segment is the registry host, and a namespace name is none; write e.g. kiln.local/{NAMESPACE_PLACEHOLDER}/**"
                    )
                } else {
                    let prefix = if self.name.len() == 1 {
                        "docker.io/library"
                    } else {
                        DOCKER_HUB
                    };
                    format!(
                        "{text:?} is not a registry host, so this is a Docker Hub name; write {prefix}/{}",
                        self.source
                    )
                });
            }
            if text == "index.docker.io" && !has_namespace {
                return never(format!(
                    "index.docker.io is normalised to docker.io; write {DOCKER_HUB}/…"
                ));
            }
            if text == DOCKER_HUB && !has_namespace && self.name.len() == 2 && self.name[1] != Segment::Any {
                let rest = self
                    .source
                    .split_once('/')
                    .map_or(self.source.as_str(), |(_, rest)| rest);
                return never(format!(
                    "Docker Hub names have at least two path segments; write docker.io/library/{rest}"
                ));
            }
        }
        if let [only] = self.name.as_slice()
            && *only != Segment::Any
        {
            return never(format!(
                "a name is a registry host and a repository path; write {name}/** for everything under {name}"
            ));
        }
        if self.name.iter().all(is_literal) {
            match Reference::parse(name) {
                Ok(r) if r.name() == name => {}
                Ok(r) => return never(format!("write {}", r.name())),
                Err(e) => return never(e.to_string()),
            }
        }
        if let Some(tag) = &self.tag
            && let Some(Piece::Lit(l)) = tag.first()
            && (l.starts_with('.') || l.starts_with('-'))
        {
            return never("tags do not start with '.' or '-'".to_owned());
        }
        if let Some(digest) = &self.digest
            && let [Piece::Lit(d)] = digest.as_slice()
            && let Err(e) = Reference::parse(&format!("x@{d}"))
        {
            return never(e.to_string());
        }
        Ok(())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn is_literal(segment: &Segment) -> bool {
    matches!(segment, Segment::Glob(p) if matches!(p.as_slice(), [Piece::Lit(_)]))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Host,
    Path,
    Tag,
    Digest,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Host => "registry host",
            Part::Path => "repository path",
            Part::Tag => "tag",
            Part::Digest => "digest",
        }
    }

    fn allows(self, c: char) -> bool {
        match self {
            Part::Host => c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | ':'),
            Part::Path => c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'),
            Part::Tag => c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'),
            Part::Digest => c.is_ascii_lowercase() || c.is_ascii_digit() || c == ':',
        }
    }
}

fn segment(s: &str, first: bool) -> Result<Segment, PatternError> {
    if s == "**" {
        return Ok(Segment::Any);
    }
    if s.is_empty() {
        return Err(PatternError::EmptyPart("a path segment (between two '/')"));
    }
    pieces(s, if first { Part::Host } else { Part::Path }).map(Segment::Glob)
}

/// Splits one segment, tag or digest into literals, `*` and `{{namespace}}`.
fn pieces(s: &str, part: Part) -> Result<Vec<Piece>, PatternError> {
    if s.is_empty() {
        return Err(PatternError::EmptyPart(if part == Part::Tag {
            "the tag (after ':')"
        } else {
            "the digest (after '@')"
        }));
    }
    let mut out: Vec<Piece> = Vec::new();
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if c == '*' {
            let run = rest.len() - rest.trim_start_matches('*').len();
            match run {
                1 => out.push(Piece::Star),
                2 => return Err(PatternError::DoubleStarNotSegment),
                _ => return Err(PatternError::TripleStar(rest[..run].to_owned())),
            }
            rest = &rest[run..];
        } else if c == '{' || c == '}' {
            if let Some(after) = rest.strip_prefix(NAMESPACE_PLACEHOLDER) {
                if part == Part::Digest {
                    return Err(PatternError::PlaceholderInDigest);
                }
                out.push(Piece::Namespace);
                rest = after;
            } else {
                let end = rest.find("}}").map_or(rest.len(), |i| i + 2);
                return Err(PatternError::Placeholder(rest[..end].to_owned()));
            }
        } else if part.allows(c) {
            let len = rest.find(|c: char| !part.allows(c)).unwrap_or(rest.len());
            match out.last_mut() {
                Some(Piece::Lit(l)) => l.push_str(&rest[..len]),
                _ => out.push(Piece::Lit(rest[..len].to_owned())),
            }
            rest = &rest[len..];
        } else if c.is_ascii_uppercase() {
            return Err(PatternError::Uppercase { part: part.name() });
        } else {
            return Err(PatternError::BadChar { c, part: part.name() });
        }
    }
    Ok(out)
}

/// Matches path segments, `**` taking any number of them (the classic wildcard algorithm over
/// segments: no backtracking beyond the last `**`, so linear in practice).
fn match_segments(pattern: &[Segment], subject: &[String], namespace: &str) -> bool {
    let (mut p, mut s) = (0, 0);
    let mut any: Option<(usize, usize)> = None;
    while s < subject.len() {
        match pattern.get(p) {
            Some(Segment::Any) => {
                any = Some((p, s));
                p += 1;
                continue;
            }
            Some(Segment::Glob(g)) if glob(g, namespace, &subject[s]) => {
                p += 1;
                s += 1;
                continue;
            }
            _ => {}
        }
        match any {
            Some((ap, as_)) => {
                any = Some((ap, as_ + 1));
                p = ap + 1;
                s = as_ + 1;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|seg| *seg == Segment::Any)
}

/// Matches one segment, tag or digest: literals exactly, `*` any run of characters.
fn glob(pieces: &[Piece], namespace: &str, text: &str) -> bool {
    let mut chunks = Vec::new();
    let mut current = String::new();
    for piece in pieces {
        match piece {
            Piece::Star => chunks.push(std::mem::take(&mut current)),
            Piece::Lit(l) => current.push_str(l),
            Piece::Namespace => current.push_str(namespace),
        }
    }
    chunks.push(current);
    let [first, middle @ .., last] = chunks.as_slice() else {
        return chunks.first().is_some_and(|c| c == text);
    };
    let Some(mut rest) = text.strip_prefix(first.as_str()) else {
        return false;
    };
    for chunk in middle {
        match rest.find(chunk.as_str()) {
            Some(i) => rest = &rest[i + chunk.len()..],
            None => return false,
        }
    }
    rest.ends_with(last.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, image: &str, ns: &str) -> bool {
        let p = Pattern::parse(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
        p.matches(&Subject::parse(image).expect("valid image"), ns)
    }

    #[test]
    fn star_stays_in_one_segment_and_double_star_spans_any() {
        let table = [
            ("kiln.local/team-a/*", "kiln.local/team-a/app:v1", true),
            ("kiln.local/team-a/*", "kiln.local/team-a/x/app:v1", false),
            ("kiln.local/team-a/**", "kiln.local/team-a/x/y/app:v1", true),
            ("kiln.local/team-a/**", "kiln.local/team-a:v1", true),
            ("kiln.local/team-a/**", "kiln.local/team-ab/app", false),
            ("kiln.local/**/app", "kiln.local/app", true),
            ("kiln.local/**/app", "kiln.local/a/b/app", true),
            ("kiln.local/**/app", "kiln.local/a/b/app2", false),
            ("kiln.local/app-*-x", "kiln.local/app-1-2-x", true),
            ("kiln.local/app-*-x", "kiln.local/app-x", false),
            ("*.example.com/**", "eu.example.com/a/b", true),
            ("*.example.com/**", "example.com/a", false),
            ("**", "docker.io/library/busybox", true),
            ("docker.io/library/*", "busybox", true),
            ("localhost:5000/*", "localhost:5000/app:dev", true),
            ("localhost:*/*", "localhost:5000/app:dev", true),
        ];
        for (pattern, image, want) in table {
            assert_eq!(m(pattern, image, "team-a"), want, "{pattern} vs {image}");
        }
    }

    #[test]
    fn namespace_is_a_literal_not_pattern_syntax() {
        assert!(m("kiln.local/{{namespace}}/**", "kiln.local/team-a/app", "team-a"));
        assert!(!m("kiln.local/{{namespace}}/**", "kiln.local/team-b/app", "team-a"));
        assert!(m("kiln.local/ns-{{namespace}}-*/app", "kiln.local/ns-a-1/app", "a"));
        // A namespace holding pattern syntax is compared literally (decide() refuses it anyway).
        assert!(!m("kiln.local/{{namespace}}/app", "kiln.local/x/app", "*"));
        assert!(!m("kiln.local/{{namespace}}/app", "kiln.local/x/y/app", "**"));
        assert!(m("docker.io/org/app:{{namespace}}-*", "org/app:team-a-1", "team-a"));
    }

    #[test]
    fn tags_and_digests_match_exactly_the_form_written() {
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let table = [
            ("docker.io/library/app", "app".to_owned(), true),
            ("docker.io/library/app", format!("app@{d}"), true),
            ("docker.io/library/app:latest", "app".to_owned(), true),
            ("docker.io/library/app:dev-*", "app:dev-7".to_owned(), true),
            ("docker.io/library/app:dev-*", "app:prod".to_owned(), false),
            ("docker.io/library/app:dev-*", format!("app:dev-7@{d}"), false),
            ("docker.io/library/app:*", format!("app@{d}"), false),
            ("docker.io/library/app@sha256:*", format!("app@{d}"), true),
            ("docker.io/library/app@sha256:*", "app:v1".to_owned(), false),
            ("docker.io/library/app@sha256:*", format!("app:v1@{d}"), false),
            ("docker.io/library/app:*@*", format!("app:v1@{d}"), true),
        ];
        for (pattern, image, want) in table {
            assert_eq!(m(pattern, &image, "ns"), want, "{pattern} vs {image}");
        }
    }

    #[test]
    fn expand_shows_the_namespace() {
        let p = Pattern::parse("kiln.local/{{namespace}}/**").expect("valid");
        assert_eq!(p.expand("team-a"), "kiln.local/team-a/**");
        assert_eq!(p.to_string(), "kiln.local/{{namespace}}/**");
    }
}

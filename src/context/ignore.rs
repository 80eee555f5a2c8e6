//! `.dockerignore` rules, parsed and matched as Docker does (moby `ignorefile` + `patternmatcher`).
//!
//! # Syntax
//! One pattern a line. A line whose first character is `#` is a comment (checked before
//! trimming, so ` #x` is a pattern); surrounding whitespace is trimmed and empty lines are
//! skipped; a leading `!` makes the line an exception that re-includes what earlier lines
//! excluded. Patterns are cleaned like Go's `filepath.Clean` and lose one leading `/`, so `/foo`,
//! `./foo` and `foo/` all mean `foo`.
//!
//! `*` matches a run of non-`/` characters, `?` one non-`/` character, `[a-z]`/`[^a-z]` one
//! character of (not of) a class, `\` escapes the next character. `**` matches any number of
//! directories: `**/foo` matches `foo` and `a/b/foo`, `foo/**` everything below `foo`.
//!
//! # Matching
//! A path (relative to the context root, `/`-separated) is excluded when the last pattern that
//! matches it, or one of its parent directories, is not an exception: `node_modules` excludes
//! everything below it, and a later `!node_modules/keep.txt` brings that one file back.
//!
//! # Deliberate differences from Docker
//! Docker translates patterns into Go regular expressions without escaping everything, so a few
//! nonsensical patterns behave oddly there: `\d` means "a digit" (here: the letter `d`); `^`
//! outside a class, in a pattern with wildcards, is an anchor that makes the pattern match
//! nothing (here: a literal `^`); `*` or `?` inside a class breaks the class (here: literal
//! characters, as Go's `filepath.Match` reads them); a reversed range such as `[z-a]` fails the
//! build when first used (here: when parsed). Every other pattern matches exactly what Docker
//! matches.
//!
//! Matching is moby's `MatchesOrParentMatches` ("the last matching line wins", as documented).
//! BuildKit's walker uses `MatchesUsingParentResults` instead, which reuses a parent directory's
//! per-pattern results and skips patterns that could not change them: for an odd ordering such
//! as `docs/internal` then `!docs`, BuildKit keeps `docs/internal` out where kiln sends it.

use std::path::Path;

use super::Error;

/// A parsed `.dockerignore`: the patterns in file order.
#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    patterns: Vec<Pattern>,
    exceptions: bool,
    /// Some exception has a wildcard before any final `/*` or `/**`.
    wildcard_exceptions: bool,
}

/// One cleaned pattern.
#[derive(Debug, Clone)]
struct Pattern {
    /// `!pattern`: re-include what matches.
    exception: bool,
    /// The cleaned pattern, without its `!`.
    source: String,
    /// How Docker matches it (it picks cheaper string comparisons when it can).
    kind: Kind,
}

/// Docker's match types: its choice changes the meaning of some patterns (`**foo` is a plain
/// suffix test), so it is mirrored rather than always globbing.
#[derive(Debug, Clone)]
enum Kind {
    /// No wildcard at all: the path equals the pattern.
    Exact(String),
    /// A literal followed by a final `**`: the path starts with the literal.
    Prefix(String),
    /// A leading `**` followed by a literal: the path ends with it (or is it, minus the `/`).
    Suffix(String),
    /// Anything else.
    Glob(Vec<Token>),
}

/// One element of a compiled glob (the regular expression Docker would build, in brackets).
#[derive(Debug, Clone)]
enum Token {
    /// One literal character.
    Char(char),
    /// `*` (`[^/]*`).
    Star,
    /// `?` (`[^/]`).
    One,
    /// `**` or `**/` not at the end (`(.*/)?`): nothing, or anything ending in `/`.
    Dirs,
    /// A final `**` after wildcards (`.*`).
    Rest,
    /// `[...]`: one character in (or, negated, not in) the ranges; may be `/`.
    Class {
        /// `[^...]`.
        negated: bool,
        /// Inclusive ranges; a single character is a range of one.
        ranges: Vec<(char, char)>,
    },
}

impl IgnoreRules {
    /// No rules: nothing is excluded.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses the text of a `.dockerignore` file.
    ///
    /// Errors name the file as `.dockerignore` and give the 1-based line of the bad pattern.
    pub fn parse(text: &str) -> Result<Self, Error> {
        parse_file(text, Path::new(".dockerignore"))
    }

    /// True when `path` (relative to the context root, `/`-separated) is excluded from the
    /// context. The root itself (`""` or `.`) is never excluded.
    pub fn excludes(&self, path: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let cleaned = clean(path);
        let path = cleaned.trim_start_matches('/');
        if path.is_empty() || path == "." {
            return false;
        }
        let mut excluded = false;
        for pattern in &self.patterns {
            // Skip what cannot change the outcome: exclusions once excluded, exceptions while kept.
            if pattern.exception != excluded {
                continue;
            }
            if pattern.kind.matches_or_parent_matches(path) {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// True when some pattern is an exception (`!...`): an excluded directory may then still hold
    /// included files (see [`IgnoreRules::may_include_under`]).
    pub fn has_exceptions(&self) -> bool {
        self.exceptions
    }

    /// True when an exception could re-include something below the excluded directory `dir`
    /// (relative, `/`-separated); when false, walkers can skip it without changing the result.
    ///
    /// BuildKit's rule: always when some exception has a wildcard (a final `/*` or `/**` aside),
    /// otherwise only when an exception's path is `dir` or lies below it.
    pub fn may_include_under(&self, dir: &str) -> bool {
        if !self.exceptions {
            return false;
        }
        if self.wildcard_exceptions {
            return true;
        }
        let dir = format!("{}/", dir.trim_end_matches('/'));
        self.patterns
            .iter()
            .filter(|pattern| pattern.exception)
            .any(|pattern| format!("{}/", without_trailing_glob(&pattern.source)).starts_with(&dir))
    }
}

/// fsutil's `patternWithoutTrailingGlob`: drops a final `/**`, then a final `/*`.
fn without_trailing_glob(pattern: &str) -> &str {
    let pattern = pattern.strip_suffix("/**").unwrap_or(pattern);
    pattern.strip_suffix("/*").unwrap_or(pattern)
}

/// Parses ignore-file text; errors name `file`.
pub(crate) fn parse_file(text: &str, file: &Path) -> Result<IgnoreRules, Error> {
    let mut rules = IgnoreRules::default();
    for (index, raw) in text.lines().enumerate() {
        let raw = if index == 0 {
            raw.strip_prefix('\u{feff}').unwrap_or(raw)
        } else {
            raw
        };
        let Some(line) = read_line(raw) else { continue };
        match compile_pattern(&line) {
            Ok(Some(pattern)) => {
                rules.exceptions |= pattern.exception;
                rules.wildcard_exceptions |= pattern.exception
                    && without_trailing_glob(&pattern.source).contains(['*', '[', ']', '?', '^', '\\']);
                rules.patterns.push(pattern);
            }
            Ok(None) => {}
            Err(reason) => {
                return Err(Error::IgnoreSyntax {
                    file: file.to_path_buf(),
                    line: index + 1,
                    pattern: raw.trim().to_string(),
                    reason,
                });
            }
        }
    }
    Ok(rules)
}

/// moby `ignorefile.ReadAll` for one line: `None` for comments and blank lines, else the
/// normalised pattern (with its `!`).
fn read_line(raw: &str) -> Option<String> {
    if raw.starts_with('#') {
        return None;
    }
    let line = raw.trim();
    if line.is_empty() {
        return None;
    }
    let (invert, body) = match line.strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, line),
    };
    let mut body = if body.is_empty() { String::new() } else { clean(body) };
    if body.len() > 1 && body.starts_with('/') {
        body.remove(0);
    }
    Some(if invert { format!("!{body}") } else { body })
}

/// moby `patternmatcher.New` for one pattern: trim, clean, split off `!`, check and compile.
fn compile_pattern(line: &str) -> Result<Option<Pattern>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let cleaned = clean(line);
    let (exception, body) = match cleaned.strip_prefix('!') {
        Some("") => return Err("illegal exclusion pattern: `!` must be followed by a pattern".into()),
        Some(rest) => (true, rest),
        None => (false, cleaned.as_str()),
    };
    Ok(Some(Pattern {
        exception,
        source: body.to_string(),
        kind: compile(body)?,
    }))
}

/// Go's `filepath.Clean` for `/`-separated paths: no `//`, no `.` segments, `..` resolved
/// lexically, no trailing `/`; `""` becomes `.`.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." if out.last().is_some_and(|last| *last != "..") => {
                out.pop();
            }
            ".." if rooted => {}
            other => out.push(other),
        }
    }
    let joined = out.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

/// Docker's match type for a pattern, decided while compiling it.
#[derive(PartialEq)]
enum Detected {
    Exact,
    Prefix,
    Suffix,
    Glob,
}

/// Compiles a cleaned pattern as moby's `Pattern.compile` does, checking the syntax Go's
/// `filepath.Match` accepts (Docker rejects the rest when it reads the file).
fn compile(pattern: &str) -> Result<Kind, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut detected = Detected::Exact;
    let mut i = 0;
    while i < chars.len() {
        let first = i == 0;
        let ch = chars[i];
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i = double_star(&chars, i + 1, &mut detected, &mut tokens);
                if first {
                    detected = Detected::Suffix;
                }
            }
            '*' | '?' => {
                tokens.push(if ch == '*' { Token::Star } else { Token::One });
                detected = Detected::Glob;
            }
            '\\' => {
                let escaped = chars.get(i).ok_or("a trailing `\\` escapes nothing; remove it")?;
                tokens.push(Token::Char(*escaped));
                i += 1;
                detected = Detected::Glob;
            }
            '[' => {
                let (class, next) = parse_class(&chars, i)?;
                tokens.push(class);
                i = next;
                detected = Detected::Glob;
            }
            ']' => {
                tokens.push(Token::Char(']'));
                detected = Detected::Glob;
            }
            other => tokens.push(Token::Char(other)),
        }
    }
    Ok(match detected {
        Detected::Exact => Kind::Exact(pattern.to_string()),
        Detected::Prefix => Kind::Prefix(pattern[..pattern.len() - 2].to_string()),
        Detected::Suffix => Kind::Suffix(pattern[2..].to_string()),
        Detected::Glob => Kind::Glob(tokens),
    })
}

/// Handles a `**` that ends just before `chars[i]`: Docker eats one following `/`, then a final
/// `**` is a prefix test after literals only, and any other `**` matches whole directories.
/// Returns the index after what was consumed.
fn double_star(chars: &[char], mut i: usize, detected: &mut Detected, tokens: &mut Vec<Token>) -> usize {
    if chars.get(i) == Some(&'/') {
        i += 1;
    }
    if i < chars.len() {
        tokens.push(Token::Dirs);
        *detected = Detected::Glob;
    } else if *detected == Detected::Exact {
        *detected = Detected::Prefix;
    } else {
        tokens.push(Token::Rest);
        *detected = Detected::Glob;
    }
    i
}

/// Parses a character class whose `[` is just before `chars[i]`; returns it and the index after
/// its `]`. Syntax as Go's `filepath.Match`: optional `^`, then one or more `c` or `lo-hi`, where
/// `-` and `]` must be escaped with `\`.
fn parse_class(chars: &[char], mut i: usize) -> Result<(Token, usize), String> {
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if chars.get(i) == Some(&']') && !ranges.is_empty() {
            return Ok((Token::Class { negated, ranges }, i + 1));
        }
        let (lo, next) = class_char(chars, i)?;
        i = next;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            (hi, i) = class_char(chars, i + 1)?;
        }
        if lo > hi {
            return Err(format!(
                "the character range `{lo}-{hi}` is reversed; write `{hi}-{lo}`"
            ));
        }
        ranges.push((lo, hi));
    }
}

/// One (possibly escaped) character of a class at `chars[i]`, and the index after it.
fn class_char(chars: &[char], mut i: usize) -> Result<(char, usize), String> {
    const UNCLOSED: &str = "a character class `[` is not closed with `]` (write `\\[` for a literal `[`)";
    let ch = match chars.get(i) {
        None => return Err(UNCLOSED.into()),
        Some('-' | ']') => {
            return Err(
                "`-` and `]` must be escaped with `\\` inside a character class, and a class cannot be empty".into(),
            );
        }
        Some('\\') => {
            i += 1;
            *chars.get(i).ok_or(UNCLOSED)?
        }
        Some(other) => *other,
    };
    if i + 1 >= chars.len() {
        return Err(UNCLOSED.into());
    }
    Ok((ch, i + 1))
}

impl Kind {
    /// True when the whole of `path` matches.
    fn matches(&self, path: &str) -> bool {
        match self {
            Kind::Exact(literal) => path == literal,
            Kind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Kind::Suffix(suffix) => {
                path.ends_with(suffix.as_str()) || suffix.strip_prefix('/').is_some_and(|bare| path == bare)
            }
            Kind::Glob(tokens) => {
                let chars: Vec<char> = path.chars().collect();
                glob_reach(tokens, &chars)[chars.len()]
            }
        }
    }

    /// True when `path` or one of its parent directories (each prefix before a `/`) matches.
    ///
    /// A glob is run once over the whole path: the anchored match of a prefix depends only on
    /// that prefix, so one pass answers for every parent, in O(tokens × chars) rather than
    /// O(depth × tokens × chars), which on a deep path was slow enough to stall a build.
    fn matches_or_parent_matches(&self, path: &str) -> bool {
        match self {
            Kind::Glob(tokens) => {
                let chars: Vec<char> = path.chars().collect();
                let reach = glob_reach(tokens, &chars);
                reach[chars.len()] || chars.iter().zip(&reach).any(|(ch, matched)| *ch == '/' && *matched)
            }
            _ => self.matches(path) || path.match_indices('/').any(|(at, _)| self.matches(&path[..at])),
        }
    }
}

/// Anchored glob match in O(tokens × chars): `reach[j]` says the tokens can consume exactly
/// the first `j` characters.
fn glob_reach(tokens: &[Token], chars: &[char]) -> Vec<bool> {
    let n = chars.len();
    let mut reach = vec![false; n + 1];
    reach[0] = true;
    let mut next = vec![false; n + 1];
    for token in tokens {
        next.fill(false);
        match token {
            Token::Char(_) | Token::One | Token::Class { .. } => {
                for j in 0..n {
                    next[j + 1] = reach[j] && token.matches_one(chars[j]);
                }
            }
            Token::Star | Token::Rest => {
                // Go's `.` does not match a newline; `[^/]` does.
                let stop = if matches!(token, Token::Star) { '/' } else { '\n' };
                next[0] = reach[0];
                for j in 1..=n {
                    next[j] = reach[j] || (next[j - 1] && chars[j - 1] != stop);
                }
            }
            Token::Dirs => {
                let mut open = false;
                next[0] = reach[0];
                for j in 1..=n {
                    open |= reach[j - 1];
                    next[j] = reach[j] || (open && chars[j - 1] == '/');
                    if chars[j - 1] == '\n' {
                        open = false;
                    }
                }
            }
        }
        std::mem::swap(&mut reach, &mut next);
    }
    reach
}

impl Token {
    /// For single-character tokens: does `ch` match?
    fn matches_one(&self, ch: char) -> bool {
        match self {
            Token::Char(literal) => ch == *literal,
            Token::One => ch != '/',
            Token::Class { negated, ranges } => ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&ch)) != *negated,
            Token::Star | Token::Rest | Token::Dirs => false,
        }
    }
}

#[cfg(test)]
#[path = "ignore_tests.rs"]
mod tests;

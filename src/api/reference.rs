//! Container image references (`[registry/]path[:tag][@digest]`): parsing and normalising.
//!
//! Follows the grammar of `github.com/distribution/reference`, including Docker Hub
//! normalisation (`app` → `docker.io/library/app:latest`), which is how the kubelet names
//! images in the node's store.

use std::fmt;

/// Docker Hub's registry host after normalisation.
pub const DOCKER_HUB: &str = "docker.io";
const MAX_NAME_LEN: usize = 255;

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Registry host (with port), e.g. `docker.io` or `localhost:5000`.
    pub domain: String,
    /// Repository path, e.g. `library/app`.
    pub path: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Digest (`sha256:…`), if any.
    pub digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Empty input.
    #[error("image reference is empty")]
    Empty,
    /// The repository name has invalid characters.
    #[error(
        "invalid repository name {0:?}: use lowercase letters, digits and separators (. _ -), e.g. example.com/team/app"
    )]
    InvalidName(String),
    /// The tag has invalid characters or is too long.
    #[error("invalid tag {0:?}: tags are up to 128 of [A-Za-z0-9_.-], not starting with . or -")]
    InvalidTag(String),
    /// The digest is not `algorithm:hex`.
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
    InvalidDigest(String),
    /// The name is longer than 255 characters.
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
}

impl Reference {
    /// Parses and normalises a reference. A missing tag stays missing (see [`Reference::tagged`]).
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                validate_digest(digest)?;
                (rest, Some(digest.to_owned()))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                validate_tag(tag)?;
                (&rest[..last_slash + i], Some(tag.to_owned()))
            }
            None => (rest, None),
        };
        let (domain, path) = split_domain(name);
        if let Some(domain) = &domain {
            validate_domain(domain).map_err(|()| ReferenceError::InvalidName(name.to_owned()))?;
        }
        if path.split('/').any(|c| !is_path_component(c)) {
            return Err(ReferenceError::InvalidName(name.to_owned()));
        }
        let (domain, path) = match domain {
            None => (DOCKER_HUB.to_owned(), normalise_hub_path(path)),
            Some(d) if d == "index.docker.io" || d == DOCKER_HUB => (DOCKER_HUB.to_owned(), normalise_hub_path(path)),
            Some(d) => (d, path.to_owned()),
        };
        // The limit is on the normalised name, as `distribution/reference` checks it: `app` is
        // `docker.io/library/app` to the kubelet, and a longer name would not parse back.
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(ReferenceError::NameTooLong);
        }
        Ok(Self {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// The repository name, `domain/path`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The same reference with `latest` as tag when it has neither tag nor digest, as the
    /// kubelet resolves an untagged image.
    pub fn tagged(mut self) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some("latest".to_owned());
        }
        self
    }

    /// `name@digest`: the reference pinned to one image.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn normalise_hub_path(path: &str) -> String {
    if path.contains('/') {
        path.to_owned()
    } else {
        format!("library/{path}")
    }
}

/// The first component is a registry when it looks like a host: it has a `.` or a `:` or is
/// `localhost` (or has uppercase letters, which repository paths cannot).
fn split_domain(name: &str) -> (Option<String>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first.to_owned()), rest)
        }
        _ => (None, name),
    }
}

fn validate_domain(domain: &str) -> Result<(), ()> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    if let Some(port) = port
        && (port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.split('.').all(label_ok) { Ok(()) } else { Err(()) }
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or any run of `-`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn validate_tag(tag: &str) -> Result<(), ReferenceError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::InvalidTag(tag.to_owned()))
    }
}

fn validate_digest(digest: &str) -> Result<(), ReferenceError> {
    let err = || ReferenceError::InvalidDigest(digest.to_owned());
    let (algorithm, hex) = digest.split_once(':').ok_or_else(err)?;
    let hex_ok = |len: usize| hex.len() == len && hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    match algorithm {
        "sha256" if hex_ok(64) => Ok(()),
        "sha512" if hex_ok(128) => Ok(()),
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalises_docker_hub_names_like_the_kubelet() {
        let r = Reference::parse("app").expect("valid");
        assert_eq!(r.to_string(), "docker.io/library/app");
        assert_eq!(r.clone().tagged().to_string(), "docker.io/library/app:latest");
        assert_eq!(
            Reference::parse("team/app:v1").expect("valid").to_string(),
            "docker.io/team/app:v1"
        );
        assert_eq!(
            Reference::parse("index.docker.io/app").expect("valid").name(),
            "docker.io/library/app"
        );
    }

    #[test]
    fn keeps_registries_with_ports_and_digests() {
        let r = Reference::parse(&format!("localhost:5000/a/b_c:dev@{DIGEST}")).expect("valid");
        assert_eq!(r.domain, "localhost:5000");
        assert_eq!(r.path, "a/b_c");
        assert_eq!(r.tag.as_deref(), Some("dev"));
        assert_eq!(r.digest.as_deref(), Some(DIGEST));
        assert_eq!(r.pinned(DIGEST), format!("localhost:5000/a/b_c@{DIGEST}"));
        // A port without a tag is not mistaken for a tag.
        let r = Reference::parse("registry.local:5000/app").expect("valid");
        assert_eq!((r.domain.as_str(), r.tag), ("registry.local:5000", None));
    }

    #[test]
    fn rejects_what_a_registry_would_reject() {
        assert_eq!(Reference::parse(""), Err(ReferenceError::Empty));
        assert!(matches!(Reference::parse("App"), Err(ReferenceError::InvalidName(_))));
        assert!(matches!(Reference::parse("a//b"), Err(ReferenceError::InvalidName(_))));
        assert!(matches!(Reference::parse("a/-b"), Err(ReferenceError::InvalidName(_))));
        assert!(matches!(Reference::parse("app:"), Err(ReferenceError::InvalidTag(_))));
        assert!(matches!(Reference::parse("app:.x"), Err(ReferenceError::InvalidTag(_))));
        assert!(matches!(
            Reference::parse("app@sha256:abc"),
            Err(ReferenceError::InvalidDigest(_))
        ));
        assert!(matches!(
            Reference::parse("bad host!/app"),
            Err(ReferenceError::InvalidName(_))
        ));
        assert_eq!(Reference::parse(&"a".repeat(300)), Err(ReferenceError::NameTooLong));
        assert!(Reference::parse("a__b/c-----d.e").is_ok());
    }

    /// A 255-character Docker Hub name passed the length check before normalisation, and its
    /// normalised form (`docker.io/library/…`, 273 characters) did not parse back: the fuzz
    /// target's round trip (fuzz/fuzz_targets/reference.rs, input corpus/reference/seed-15).
    #[test]
    fn the_name_limit_applies_to_the_normalised_name() {
        assert_eq!(Reference::parse(&"a".repeat(255)), Err(ReferenceError::NameTooLong));
        assert_eq!(Reference::parse(&"a".repeat(238)), Err(ReferenceError::NameTooLong));
        let longest = Reference::parse(&"a".repeat(237)).expect("255 characters once normalised");
        assert_eq!(longest.name().len(), 255);
        assert_eq!(Reference::parse(&longest.to_string()), Ok(longest));
        // index.docker.io/x/y is shorter once normalised to docker.io/x/y.
        let path = format!("x/{}", "a".repeat(243));
        assert!(Reference::parse(&format!("index.docker.io/{path}")).is_ok());
        assert_eq!(
            Reference::parse(&format!("index.docker.io/{path}a")),
            Err(ReferenceError::NameTooLong)
        );
    }
}

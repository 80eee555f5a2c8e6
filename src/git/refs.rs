//! A git remote's ref advertisement (the pkt-lines `git ls-remote` reads) and which commit a
//! ref names in it, by git's own precedence. Pure.

use super::GitError;

/// One advertised ref: its object and its name (`HEAD`, `refs/heads/main`, `refs/tags/v1^{}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advertised {
    /// The object id, hex.
    pub oid: String,
    /// The ref's name; a peeled tag ends in `^{}`.
    pub name: String,
}

/// Splits pkt-lines (`0005a` …, `0000` flush) into their payloads, flushes as `None`.
/// Errors on a length that is not hex or runs past the end.
pub fn pkt_lines(mut data: &[u8]) -> Result<Vec<Option<&[u8]>>, GitError> {
    let mut lines = Vec::new();
    while !data.is_empty() {
        let head = data
            .get(..4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .ok_or_else(|| GitError::Protocol("a pkt-line length is not 4 hex digits".into()))?;
        match head {
            0..=2 => {
                lines.push(None);
                data = &data[4..];
            }
            3 => return Err(GitError::Protocol("a pkt-line of length 3".into())),
            n => {
                let payload = data
                    .get(4..n)
                    .ok_or_else(|| GitError::Protocol("the advertisement ends inside a pkt-line".into()))?;
                lines.push(Some(payload));
                data = &data[n..];
            }
        }
    }
    Ok(lines)
}

/// The refs of an advertisement (protocol v0/v1, as both `git://` and smart HTTP send it; the
/// HTTP form's `# service=` line and an `ERR` line are handled). Stops at the first flush
/// after the refs.
pub fn parse_advertisement(data: &[u8]) -> Result<Vec<Advertised>, GitError> {
    let mut refs = Vec::new();
    let mut seen_refs = false;
    for line in pkt_lines(data)? {
        let Some(line) = line else {
            if seen_refs {
                break;
            }
            continue;
        };
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\n');
        if text.starts_with("# service=") {
            continue;
        }
        if let Some(err) = text.strip_prefix("ERR ") {
            return Err(GitError::Remote(err.to_owned()));
        }
        if text.starts_with("version ") {
            continue;
        }
        seen_refs = true;
        // The first ref carries the capabilities after a NUL.
        let text = text.split('\0').next().unwrap_or_default();
        let Some((oid, name)) = text.split_once(' ') else {
            return Err(GitError::Protocol(format!(
                "an advertised ref without a name: {text:?}"
            )));
        };
        if !is_object_id(oid) {
            return Err(GitError::Protocol(format!(
                "an advertised object id is not hex: {oid:?}"
            )));
        }
        // An empty repository advertises only its capabilities, under a zero id.
        if name == "capabilities^{}" {
            continue;
        }
        refs.push(Advertised {
            oid: oid.to_owned(),
            name: name.to_owned(),
        });
    }
    Ok(refs)
}

/// A full object id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub fn is_object_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The commit `reference` names among `refs`: the remote's `HEAD` when unset; else the first
/// of `<ref>`, `refs/<ref>`, `refs/tags/<ref>`, `refs/heads/<ref>` that exists (git's order for
/// a name to fetch), an annotated tag through to its commit.
pub fn pick(refs: &[Advertised], reference: Option<&str>) -> Result<String, GitError> {
    let find = |name: &str| {
        let peeled = format!("{name}^{{}}");
        refs.iter()
            .find(|r| r.name == peeled)
            .or_else(|| refs.iter().find(|r| r.name == name))
            .map(|r| r.oid.clone())
    };
    let Some(wanted) = reference else {
        return find("HEAD").ok_or(GitError::NoHead);
    };
    let candidates = [
        wanted.to_owned(),
        format!("refs/{wanted}"),
        format!("refs/tags/{wanted}"),
        format!("refs/heads/{wanted}"),
    ];
    candidates.iter().find_map(|c| find(c)).ok_or_else(|| {
        let mut known: Vec<&str> = refs
            .iter()
            .map(|r| r.name.as_str())
            .filter(|n| !n.ends_with("^{}") && *n != "HEAD")
            .map(|n| {
                n.strip_prefix("refs/heads/")
                    .or(n.strip_prefix("refs/tags/"))
                    .unwrap_or(n)
            })
            .collect();
        known.truncate(10);
        GitError::RefNotFound {
            reference: wanted.to_owned(),
            known: known.join(", "),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(s: &str) -> String {
        format!("{:04x}{s}", s.len() + 4)
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const C: &str = "3333333333333333333333333333333333333333";

    fn advertisement() -> String {
        [
            pkt("# service=git-upload-pack\n"),
            "0000".into(),
            pkt(&format!(
                "{A} HEAD\0multi_ack symref=HEAD:refs/heads/main agent=git/2.39\n"
            )),
            pkt(&format!("{A} refs/heads/main\n")),
            pkt(&format!("{B} refs/heads/v1\n")),
            pkt(&format!("{B} refs/tags/light\n")),
            pkt(&format!("{C} refs/tags/v1\n")),
            pkt(&format!("{A} refs/tags/v1^{{}}\n")),
            "0000".into(),
        ]
        .concat()
    }

    #[test]
    fn reads_the_http_form_with_capabilities_and_peeled_tags() {
        let refs = parse_advertisement(advertisement().as_bytes()).expect("parse");
        assert_eq!(refs.len(), 6);
        assert_eq!(
            refs[0],
            Advertised {
                oid: A.into(),
                name: "HEAD".into()
            }
        );
    }

    #[test]
    fn picks_by_gits_precedence() {
        let refs = parse_advertisement(advertisement().as_bytes()).expect("parse");
        assert_eq!(pick(&refs, None).ok(), Some(A.into()), "unset: the remote's HEAD");
        assert_eq!(pick(&refs, Some("main")).ok(), Some(A.into()));
        assert_eq!(pick(&refs, Some("light")).ok(), Some(B.into()), "a lightweight tag");
        assert_eq!(
            pick(&refs, Some("v1")).ok(),
            Some(A.into()),
            "a tag wins over a branch of the same name, and an annotated tag names its commit"
        );
        assert_eq!(
            pick(&refs, Some("refs/heads/v1")).ok(),
            Some(B.into()),
            "a full name is exact"
        );
        assert_eq!(pick(&refs, Some("heads/v1")).ok(), Some(B.into()));
        match pick(&refs, Some("nope")) {
            Err(GitError::RefNotFound { reference, known }) => {
                assert_eq!(reference, "nope");
                assert!(known.contains("main") && known.contains("light"), "{known}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_empty_repository_has_no_head() {
        let zero = "0".repeat(40);
        let data = [
            pkt(&format!("{zero} capabilities^{{}}\0agent=git/2.39\n")),
            "0000".into(),
        ]
        .concat();
        let refs = parse_advertisement(data.as_bytes()).expect("parse");
        assert!(refs.is_empty());
        assert!(matches!(pick(&refs, None), Err(GitError::NoHead)));
    }

    #[test]
    fn refuses_what_is_not_an_advertisement() {
        assert!(parse_advertisement(b"<html>").is_err());
        assert!(parse_advertisement(b"00ffshort").is_err());
        let err = parse_advertisement(pkt("ERR access denied\n").as_bytes());
        assert!(matches!(err, Err(GitError::Remote(m)) if m == "access denied"));
    }

    #[test]
    fn object_ids_are_full_lowercase_hex() {
        assert!(is_object_id(A));
        assert!(is_object_id(&"a".repeat(64)));
        assert!(!is_object_id("1111111"), "abbreviated");
        assert!(!is_object_id(&"A".repeat(40)), "uppercase is not how git writes them");
    }
}

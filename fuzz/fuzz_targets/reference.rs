//! Image references (`src/api/reference.rs`): any string a user puts in `spec.image`,
//! `spec.additionalTags` or `kiln build -t`.
//!
//! Invariants, for every input `x`:
//! - `Reference::parse(x)` returns, never panics;
//! - when it parses, its `Display` parses again to the same value (normalisation is idempotent:
//!   `parse(display(parse(x))) == parse(x)`), and so do `tagged()` and `pinned()`;
//! - the parts are what the grammar allows: a non-empty domain and path, a tag of at most 128
//!   characters, a `sha256:`/`sha512:` digest, and a full name (`domain/path`, what the kubelet
//!   stores) of at most 255 characters, as `github.com/distribution/reference` enforces;
//! - nothing in the display form is whitespace or a control character (it becomes a BuildKit
//!   exporter attribute, `name=a,b`, and a node's image name).
#![no_main]

use kiln::api::reference::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    check(input);
});

fn check(input: &str) {
    let Ok(parsed) = Reference::parse(input) else {
        return;
    };
    let shown = parsed.to_string();
    assert_eq!(
        Reference::parse(&shown).as_ref(),
        Ok(&parsed),
        "display does not parse back: {input:?} -> {shown:?}"
    );
    assert!(!parsed.domain.is_empty() && !parsed.path.is_empty(), "{parsed:?}");
    assert!(
        parsed.name().len() <= 255,
        "a name of {} characters was accepted: {input:?} -> {:?}",
        parsed.name().len(),
        parsed.name()
    );
    if let Some(tag) = &parsed.tag {
        assert!(!tag.is_empty() && tag.len() <= 128, "{parsed:?}");
    }
    if let Some(digest) = &parsed.digest {
        assert!(
            digest.starts_with("sha256:") || digest.starts_with("sha512:"),
            "{parsed:?}"
        );
    }
    assert!(
        !shown.chars().any(|c| c.is_whitespace() || c.is_control() || c == ','),
        "{shown:?}"
    );

    let tagged = parsed.clone().tagged();
    assert!(tagged.tag.is_some() || tagged.digest.is_some());
    assert_eq!(Reference::parse(&tagged.to_string()), Ok(tagged.clone()));
    assert_eq!(tagged.clone().tagged(), tagged, "tagged() is idempotent");

    if let Some(digest) = &parsed.digest {
        let pinned = parsed.pinned(digest);
        let reparsed = Reference::parse(&pinned).expect("a pinned reference parses");
        assert_eq!(
            (reparsed.name(), reparsed.digest.as_ref()),
            (parsed.name(), Some(digest))
        );
        assert_eq!(reparsed.tag, None);
    }
}

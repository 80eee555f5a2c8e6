//! The agent's store of uploaded build contexts (`src/agent/contexts.rs`): what
//! `PUT /v1/contexts/<digest>` does with a body, a claimed `Content-Length` and a claimed digest
//! from anyone who can reach the agent.
//!
//! Input: a 48-byte header, then the body (opaque bytes: the corpus holds hostile tarballs, which
//! the store must never look into):
//!
//! | bytes  | meaning |
//! |--------|---------|
//! | 0      | flags: 1 send `Content-Length`; 2 claim the body's real digest (else bytes 16..48); 4 the body breaks off with an error; 8 the body never ends (repeated); 16 an earlier run left a file under the digest's name (the body itself with flag 2, else garbage); 32 the digest is not wanted; 64 garbage-collect afterwards |
//! | 1      | the store's limit: 64 × this many bytes |
//! | 2      | chunk size − 1 |
//! | 3      | the chunk at which the body breaks off (flag 4) |
//! | 4..12  | the claimed `Content-Length`, little-endian, modulo 2 × limit + 2 |
//! | 12..16 | unused |
//! | 16..48 | the claimed digest (without flag 2) |
//!
//! Also every input, as text, is tried as a digest in the URL path.
//!
//! Invariants:
//! - `ContextDigest::parse` accepts exactly `sha256:<64 lowercase hex>`, and its file name is a
//!   plain name inside the store directory;
//! - `put` ends, even on a body that never does, with exactly the outcome the checks call for
//!   (not wanted, too large, broken off, digest mismatch, stored, already there);
//! - afterwards the store directory holds only `.incoming/` (empty) and `sha256-<hex>.tar` files
//!   whose sha256 is `<hex>`, and nothing was written next to the store directory;
//! - a stored upload's content is the body, byte for byte;
//! - garbage collection deletes only stored contexts, never one an attempt holds.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use kiln::agent::contexts::{ContextDigest, ContextStore, Limits, PutError};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const HEADER: usize = 48;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// A directory for this process; each input gets a fresh `store/` below it.
fn base() -> &'static Path {
    static BASE: OnceLock<tempfile::TempDir> = OnceLock::new();
    BASE.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}

fuzz_target!(|data: &[u8]| {
    check_digest_text(&String::from_utf8_lossy(data));
    if data.len() < HEADER {
        return;
    }
    let (header, body) = data.split_at(HEADER);
    runtime().block_on(upload(header, body));
});

fn check_digest_text(text: &str) {
    let candidates = [text.to_owned(), format!("sha256:{}", text.get(..64).unwrap_or(text))];
    for candidate in candidates {
        let strict = candidate
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        let Some(digest) = ContextDigest::parse(&candidate) else {
            assert!(!strict, "{candidate:?} was refused");
            continue;
        };
        assert!(strict, "{candidate:?} was accepted as a digest");
        assert_eq!(digest.to_string(), candidate);
        let name = digest.file_name();
        assert_eq!(name, format!("sha256-{}.tar", digest.hex()));
        let dir = Path::new("/var/lib/kiln/contexts");
        assert_eq!(dir.join(&name).parent(), Some(dir));
        // What garbage collection reads back from the file name.
        assert_eq!(ContextDigest::parse(&format!("sha256:{}", digest.hex())), Some(digest));
    }
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

#[derive(Debug, PartialEq)]
enum Outcome {
    NotWanted,
    TooLarge,
    Interrupted,
    Mismatch,
    Stored,
    AlreadyHere,
}

async fn upload(header: &[u8], body: &[u8]) {
    let flags = header[0];
    let limit = u64::from(header[1]) * 64;
    let chunk_size = usize::from(header[2]) + 1;
    let break_at = usize::from(header[3]);
    let declared = (flags & 1 != 0).then(|| {
        let raw = u64::from_le_bytes(header[4..12].try_into().expect("8 bytes"));
        raw % (2 * limit + 2)
    });
    let real = sha256_hex(body);
    let claimed_hex = if flags & 2 != 0 {
        real.clone()
    } else {
        header[16..48].iter().map(|b| format!("{b:02x}")).collect()
    };
    let digest = ContextDigest::parse(&format!("sha256:{claimed_hex}")).expect("hex digest");
    let broken = flags & 4 != 0;
    let endless = flags & 8 != 0;
    let leftover = flags & 16 != 0;
    let wanted = flags & 32 == 0;
    let collect = flags & 64 != 0;

    let dir = base().join("store");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join(".incoming")).expect("store directory");
    std::fs::write(dir.join(".incoming/half-written"), b"an earlier run's partial upload").expect("write");
    let leftover_content: &[u8] = if flags & 2 != 0 {
        body
    } else {
        b"not what the name says"
    };
    if leftover {
        std::fs::write(dir.join(digest.file_name()), leftover_content).expect("write");
    }
    let limits = Limits {
        max_context: limit,
        keep: Duration::from_secs(3600),
        max_total: u64::MAX,
    };
    let store = ContextStore::open(&dir, limits).expect("open the store");
    assert_eq!(
        entries(&dir.join(".incoming")),
        Vec::<String>::new(),
        "open clears .incoming"
    );

    // The body, as chunks (the last one possibly short), or endlessly repeated.
    let chunks: Vec<Bytes> = body.chunks(chunk_size).map(Bytes::copy_from_slice).collect();
    let stream: BoxStream<'static, Result<Bytes, String>> = if endless {
        let unit = if chunks.is_empty() {
            vec![Bytes::from_static(b"\0")]
        } else {
            chunks.clone()
        };
        futures::stream::iter(unit.into_iter().cycle()).map(Ok).boxed()
    } else {
        let mut items: Vec<Result<Bytes, String>> = chunks.iter().cloned().map(Ok).collect();
        if broken {
            items.insert(break_at.min(items.len()), Err("connection reset".to_owned()));
        }
        futures::stream::iter(items).boxed()
    };

    let expected = expect(
        wanted,
        declared,
        limit,
        leftover && flags & 2 != 0,
        endless,
        broken.then_some(break_at),
        &chunks,
        real == claimed_hex,
    );
    let guard = wanted.then(|| store.want(&digest));
    let result = store.put(&digest, declared, stream).await;
    let outcome = match &result {
        Ok(true) => Outcome::Stored,
        Ok(false) => Outcome::AlreadyHere,
        Err(PutError::NotWanted(_)) => Outcome::NotWanted,
        Err(PutError::TooLarge { size, limit: l }) => {
            assert_eq!(*l, limit);
            assert!(*size > limit, "too large at {size} of {limit}");
            Outcome::TooLarge
        }
        Err(PutError::Interrupted { .. }) => Outcome::Interrupted,
        Err(PutError::Mismatch { expected, actual }) => {
            assert_eq!(expected, &digest);
            assert_eq!(actual, &format!("sha256:{real}"));
            Outcome::Mismatch
        }
        Err(PutError::Io(e)) => panic!("an I/O error on a healthy disk: {e}"),
    };
    assert_eq!(
        outcome,
        expected,
        "flags {flags:#04x}, limit {limit}, {} bytes",
        body.len()
    );

    let path = store.path(&digest);
    if leftover && flags & 2 == 0 && outcome != Outcome::Stored {
        // Refused before the store looked at it: an earlier run's file stays until first used,
        // and that use finds it does not match, deletes it, and does not serve it.
        assert!(!store.has(&digest).await, "a garbage file was taken for the context");
    }
    let stored = check_store(&dir);
    match outcome {
        Outcome::Stored => {
            assert_eq!(std::fs::read(&path).expect("the stored file"), body);
            assert_eq!(store.uploads(), 1);
            assert!(store.has(&digest).await);
        }
        Outcome::AlreadyHere => assert_eq!(store.uploads(), 0),
        // A leftover that did not match its name has been deleted by the check before receiving.
        _ if !leftover || flags & 2 == 0 => {
            assert!(!path.exists(), "{outcome:?} but {} exists", path.display());
            assert_eq!(store.uploads(), 0);
        }
        _ => {}
    }
    assert!(stored.len() <= 1);
    assert_eq!(
        entries(base()),
        vec!["store".to_owned()],
        "something was written next to the store"
    );

    if collect {
        let doomed = store
            .collect_garbage(SystemTime::now() + Duration::from_secs(7200))
            .expect("collect");
        if guard.is_some() {
            assert!(doomed.is_empty(), "collected a context an attempt holds: {doomed:?}");
        } else {
            assert_eq!(doomed, stored);
        }
        drop(guard);
        let doomed = store
            .collect_garbage(SystemTime::now() + Duration::from_secs(7200))
            .expect("collect");
        assert!(doomed.iter().all(|p| p.parent() == Some(dir.as_path())));
        assert!(check_store(&dir).is_empty());
    }
}

/// What `put` must answer, in the order it checks.
#[allow(clippy::too_many_arguments)]
fn expect(
    wanted: bool,
    declared: Option<u64>,
    limit: u64,
    good_leftover: bool,
    endless: bool,
    break_at: Option<usize>,
    chunks: &[Bytes],
    digest_matches: bool,
) -> Outcome {
    if !wanted {
        return Outcome::NotWanted;
    }
    if declared.is_some_and(|d| d > limit) {
        return Outcome::TooLarge;
    }
    if good_leftover {
        return Outcome::AlreadyHere;
    }
    if endless {
        return Outcome::TooLarge;
    }
    let mut size = 0u64;
    for (i, chunk) in chunks.iter().enumerate() {
        if break_at == Some(i) {
            return Outcome::Interrupted;
        }
        size += chunk.len() as u64;
        if size > limit {
            return Outcome::TooLarge;
        }
    }
    if break_at.is_some() {
        return Outcome::Interrupted;
    }
    if digest_matches {
        Outcome::Stored
    } else {
        Outcome::Mismatch
    }
}

/// Checks the store directory's contents; returns the stored files.
fn check_store(dir: &Path) -> Vec<PathBuf> {
    let mut stored = Vec::new();
    for name in entries(dir) {
        let path = dir.join(&name);
        if name == ".incoming" {
            assert!(path.is_dir());
            assert_eq!(entries(&path), Vec::<String>::new(), "a temporary file was left behind");
            continue;
        }
        let hex = name
            .strip_prefix("sha256-")
            .and_then(|n| n.strip_suffix(".tar"))
            .unwrap_or_else(|| panic!("unexpected entry {name:?} in the store"));
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        assert!(meta.is_file(), "{name:?} is not a regular file");
        let content = std::fs::read(&path).expect("read");
        assert_eq!(sha256_hex(&content), hex, "{name:?} does not hash to its name");
        stored.push(path);
    }
    stored
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

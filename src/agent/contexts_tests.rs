//! Unit tests of the context store: digest checks, limits, waiting, garbage collection.

use super::*;

fn limits() -> Limits {
    Limits {
        max_context: 1024,
        keep: Duration::from_secs(3600),
        max_total: 4096,
    }
}

fn digest_of(data: &[u8]) -> ContextDigest {
    ContextDigest::parse(&format!("sha256:{:x}", Sha256::digest(data))).expect("digest")
}

fn body(chunks: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    futures::stream::iter(chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect::<Vec<_>>())
}

#[test]
fn digests_are_sha256_in_lowercase_hex_only() {
    let hex = "ab".repeat(32);
    assert!(ContextDigest::parse(&format!("sha256:{hex}")).is_some());
    assert!(ContextDigest::parse(&format!("sha256:{}", hex.to_uppercase())).is_none());
    assert!(ContextDigest::parse(&format!("sha512:{hex}")).is_none());
    assert!(ContextDigest::parse("sha256:../../etc/passwd").is_none());
    let d = ContextDigest::parse(&format!("sha256:{hex}")).expect("digest");
    assert_eq!(d.file_name(), format!("sha256-{hex}.tar"));
}

#[tokio::test]
async fn an_upload_is_stored_only_when_wanted_and_its_bytes_match_the_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContextStore::open(dir.path(), limits()).expect("store");
    let data: &'static [u8] = b"context bytes";
    let digest = digest_of(data);

    let refused = store.put(&digest, None, body(&[data])).await;
    assert!(matches!(refused, Err(PutError::NotWanted(_))), "{refused:?}");

    let _wanted = store.want(&digest);
    let wrong = store.put(&digest, None, body(&[b"other bytes"])).await;
    assert!(matches!(wrong, Err(PutError::Mismatch { .. })), "{wrong:?}");
    assert!(!store.has(&digest).await, "nothing half-written under the name");

    let (head, tail) = data.split_at(5);
    assert!(
        store
            .put(&digest, Some(data.len() as u64), body(&[head, tail]))
            .await
            .expect("stored")
    );
    assert!(store.has(&digest).await);
    assert_eq!(std::fs::read(store.path(&digest)).expect("read"), data);
    assert!(
        !store.put(&digest, None, body(&[data])).await.expect("again"),
        "already here: nothing stored"
    );
    assert_eq!(store.uploads(), 1);
    let leftovers = std::fs::read_dir(dir.path().join(".incoming"))
        .expect("incoming")
        .count();
    assert_eq!(leftovers, 0, "temporary files are gone");
}

#[tokio::test]
async fn contexts_over_the_limit_are_refused_declared_or_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContextStore::open(dir.path(), limits()).expect("store");
    static BIG: [u8; 2000] = [7; 2000];
    let digest = digest_of(&BIG);
    let _wanted = store.want(&digest);
    let declared = store.put(&digest, Some(2000), body(&[&BIG])).await;
    assert!(
        matches!(
            declared,
            Err(PutError::TooLarge {
                size: 2000,
                limit: 1024
            })
        ),
        "{declared:?}"
    );
    let counted = store.put(&digest, None, body(&[&BIG[..600], &BIG[600..]])).await;
    assert!(matches!(counted, Err(PutError::TooLarge { .. })), "{counted:?}");
    assert!(!store.has(&digest).await);
}

#[tokio::test]
async fn a_waiting_attempt_wakes_when_its_context_arrives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContextStore::open(dir.path(), limits()).expect("store");
    let data: &'static [u8] = b"late context";
    let digest = digest_of(data);
    let _wanted = store.want(&digest);
    assert!(!store.wait_for(&digest, Duration::from_millis(50)).await, "times out");
    let (s, d) = (store.clone(), digest.clone());
    let waiter = tokio::spawn(async move { s.wait_for(&d, Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.put(&digest, None, body(&[data])).await.expect("stored");
    assert!(waiter.await.expect("join"));
}

#[test]
fn collection_drops_old_then_least_recently_used_but_never_held_contexts() {
    let e = |name: &str, size: u64, idle_s: u64, held: bool| Stored {
        path: PathBuf::from(name),
        size,
        idle: Duration::from_secs(idle_s),
        held,
    };
    let l = limits();
    let doomed = plan_collection(
        vec![
            e("old", 10, 7200, false),
            e("old-held", 10, 9000, true),
            e("fresh", 10, 10, false),
        ],
        l,
    );
    assert_eq!(doomed, vec![PathBuf::from("old")]);
    let doomed = plan_collection(
        vec![
            e("a", 2000, 300, false),
            e("b", 2000, 200, true),
            e("c", 2000, 100, false),
            e("d", 1000, 50, false),
        ],
        l,
    );
    assert_eq!(
        doomed,
        vec![PathBuf::from("a"), PathBuf::from("c")],
        "LRU first, held kept"
    );
}

#[tokio::test]
async fn a_stored_context_that_does_not_match_its_name_is_dropped_on_first_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data: &'static [u8] = b"the real context";
    let digest = digest_of(data);
    // What a machine crash could leave: the file under its name, its content cut short.
    std::fs::write(dir.path().join(digest.file_name()), b"the real").expect("write");
    let store = ContextStore::open(dir.path(), limits()).expect("store");
    assert!(
        !store.has(&digest).await,
        "a file that does not hash to its name is not the context"
    );
    assert!(!store.path(&digest).exists(), "and it is deleted");
    std::fs::write(store.path(&digest), data).expect("write");
    let fresh = ContextStore::open(dir.path(), limits()).expect("store");
    assert!(fresh.has(&digest).await, "an intact file from an earlier run is used");
}

//! Uploaded build contexts on this node: content-addressed tarballs under the pool's state
//! directory, stored only once their digest and size check out, held while an attempt needs
//! them, and garbage-collected by age and total size (least recently used first).
//!
//! Uploads are not fsynced (on a 200 MiB context that was a third of the time). Instead a file
//! is trusted only once this agent process has checked it: received and hashed here, or — for
//! what an earlier run left, possibly cut short by a machine crash — hashed again on first use.
//! A file that does not hash to its name is deleted, and the attempt waits for a new upload.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// A context's digest, `sha256:<64 lowercase hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContextDigest(String);

impl ContextDigest {
    /// Parses `sha256:<64 hex>`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| Self(s.to_owned()))
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The file name this context is stored under (no `:`, which some tools dislike).
    pub fn file_name(&self) -> String {
        format!("sha256-{}.tar", self.hex())
    }
}

impl std::fmt::Display for ContextDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How much the store accepts and keeps.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest context accepted, in bytes.
    pub max_context: u64,
    /// Contexts unused for this long are deleted.
    pub keep: Duration,
    /// Total size kept; the least recently used go first.
    pub max_total: u64,
}

/// Why an upload was refused. Nothing is stored in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// No attempt on this node waits for that context.
    #[error("no build on this node is waiting for context {0}; start the build first (kiln build does)")]
    NotWanted(ContextDigest),
    /// The context is over the pool's limit.
    #[error(
        "the context is {size} bytes, over this pool's limit of {limit} bytes (BuilderPool spec.uploads.maxContextMiB); shrink it with a .dockerignore"
    )]
    TooLarge {
        /// Its size (declared or counted so far).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The bytes received do not hash to the digest.
    #[error("the uploaded bytes have digest {actual}, not {expected}; nothing was stored, upload again")]
    Mismatch {
        /// The digest asked for.
        expected: ContextDigest,
        /// What the bytes hash to.
        actual: String,
    },
    /// The upload broke off.
    #[error("the upload broke off after {received} bytes ({reason}); nothing was stored, upload again")]
    Interrupted {
        /// Bytes received.
        received: u64,
        /// What happened.
        reason: String,
    },
    /// The node's disk refused.
    #[error("cannot store the context on the node: {0}")]
    Io(#[from] std::io::Error),
}

/// Contexts on this node.
pub struct ContextStore {
    dir: PathBuf,
    limits: Limits,
    /// Digests attempts on this node wait for or build from, with how many attempts.
    wanted: Mutex<HashMap<ContextDigest, usize>>,
    arrived: Notify,
    /// Digests whose files this process has hashed.
    verified: Mutex<HashSet<ContextDigest>>,
    received_bytes: AtomicU64,
    uploads: AtomicU64,
}

impl ContextStore {
    /// The store in `dir` (created if missing); half-written uploads of an earlier run are removed.
    pub fn open(dir: impl Into<PathBuf>, limits: Limits) -> std::io::Result<Arc<Self>> {
        let dir = dir.into();
        let incoming = dir.join(".incoming");
        let _ = std::fs::remove_dir_all(&incoming);
        std::fs::create_dir_all(&incoming)?;
        Ok(Arc::new(Self {
            dir,
            limits,
            wanted: Mutex::default(),
            arrived: Notify::new(),
            verified: Mutex::default(),
            received_bytes: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
        }))
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Where `digest` is (or would be) stored.
    pub fn path(&self, digest: &ContextDigest) -> PathBuf {
        self.dir.join(digest.file_name())
    }

    /// True if the context is here and hashes to its name; marks it used now (for garbage
    /// collection). A file this process has not checked yet is hashed first (and deleted if
    /// it does not match).
    pub async fn has(&self, digest: &ContextDigest) -> bool {
        let path = self.path(digest);
        if !path.is_file() {
            return false;
        }
        if !self.verified.lock().is_ok_and(|v| v.contains(digest)) {
            let (file, want) = (path.clone(), digest.hex().to_owned());
            let matches = tokio::task::spawn_blocking(move || hash_file(&file).is_ok_and(|h| h == want))
                .await
                .unwrap_or(false);
            if !matches {
                tracing::warn!(%digest, "a stored context does not match its digest; deleted, it will be uploaded again");
                let _ = std::fs::remove_file(&path);
                return false;
            }
            self.mark_verified(digest);
        }
        let _ = std::fs::File::options()
            .append(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        true
    }

    fn mark_verified(&self, digest: &ContextDigest) {
        if let Ok(mut v) = self.verified.lock() {
            v.insert(digest.clone());
        }
    }

    /// Bytes received by uploads since the agent started (stored or not).
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes.load(Ordering::Relaxed)
    }

    /// Uploads stored since the agent started.
    pub fn uploads(&self) -> u64 {
        self.uploads.load(Ordering::Relaxed)
    }

    /// Keeps `digest` accepted for upload and safe from garbage collection until the returned
    /// guard drops.
    pub fn want(self: &Arc<Self>, digest: &ContextDigest) -> Wanted {
        if let Ok(mut w) = self.wanted.lock() {
            *w.entry(digest.clone()).or_default() += 1;
        }
        Wanted {
            store: self.clone(),
            digest: digest.clone(),
        }
    }

    fn is_wanted(&self, digest: &ContextDigest) -> bool {
        self.wanted.lock().is_ok_and(|w| w.contains_key(digest))
    }

    /// Waits until `digest` is stored or `timeout` passes; true if it is here.
    pub async fn wait_for(&self, digest: &ContextDigest, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if self.has(digest).await {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.has(digest).await;
            }
        }
    }

    /// Stores an upload of `digest` from `body` (`declared` bytes, if the sender said): streamed
    /// to a temporary file while hashed and counted, then renamed into place only if digest
    /// and size check out. Returns whether it was stored now (false: it was already here).
    pub async fn put<S, E>(&self, digest: &ContextDigest, declared: Option<u64>, body: S) -> Result<bool, PutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if !self.is_wanted(digest) {
            return Err(PutError::NotWanted(digest.clone()));
        }
        let limit = self.limits.max_context;
        if let Some(size) = declared.filter(|s| *s > limit) {
            return Err(PutError::TooLarge { size, limit });
        }
        if self.has(digest).await {
            return Ok(false);
        }
        let tmp = tempfile::NamedTempFile::new_in(self.dir.join(".incoming"))?;
        let file = tokio::fs::File::from_std(tmp.reopen()?);
        let (hash, size) = self.receive(file, body, limit).await?;
        let actual = format!("sha256:{hash}");
        if actual != digest.to_string() {
            return Err(PutError::Mismatch {
                expected: digest.clone(),
                actual,
            });
        }
        tmp.persist(self.path(digest)).map_err(|e| PutError::Io(e.error))?;
        self.mark_verified(digest);
        self.uploads.fetch_add(1, Ordering::Relaxed);
        self.arrived.notify_waiters();
        tracing::info!(%digest, size, "context stored");
        Ok(true)
    }

    /// Copies `body` into `file`, hashing; refuses more than `limit` bytes.
    async fn receive<S, E>(&self, file: tokio::fs::File, mut body: S, limit: u64) -> Result<(String, u64), PutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        // Writes in large batches: each tokio file write is a trip to the blocking pool.
        let mut file = tokio::io::BufWriter::with_capacity(4 << 20, file);
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| PutError::Interrupted {
                received: size,
                reason: e.to_string(),
            })?;
            size += chunk.len() as u64;
            self.received_bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if size > limit {
                return Err(PutError::TooLarge { size, limit });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok((format!("{:x}", hasher.finalize()), size))
    }

    /// Deletes contexts unused for longer than the limits allow, or beyond the total size,
    /// least recently used first; never one an attempt on this node waits for or builds from.
    pub fn collect_garbage(&self, now: SystemTime) -> std::io::Result<Vec<PathBuf>> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_prefix("sha256-").and_then(|n| n.strip_suffix(".tar")) else {
                continue;
            };
            let Some(digest) = ContextDigest::parse(&format!("sha256:{hex}")) else {
                continue;
            };
            let meta = entry.metadata()?;
            let used = meta.modified().unwrap_or(now);
            entries.push(Stored {
                held: self.is_wanted(&digest),
                path: entry.path(),
                size: meta.len(),
                idle: now.duration_since(used).unwrap_or_default(),
            });
        }
        let doomed = plan_collection(entries, self.limits);
        for path in &doomed {
            std::fs::remove_file(path)?;
            tracing::info!(path = %path.display(), "context garbage-collected");
        }
        Ok(doomed)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The sha256 of a file, in hex.
fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Keeps a context wanted (see [`ContextStore::want`]).
pub struct Wanted {
    store: Arc<ContextStore>,
    digest: ContextDigest,
}

impl Drop for Wanted {
    fn drop(&mut self) {
        if let Ok(mut w) = self.store.wanted.lock()
            && let Some(n) = w.get_mut(&self.digest)
        {
            *n -= 1;
            if *n == 0 {
                w.remove(&self.digest);
            }
        }
    }
}

/// A stored context, as garbage collection sees it.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Its file.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Time since it was last used.
    pub idle: Duration,
    /// An attempt needs it.
    pub held: bool,
}

/// Which stored contexts to delete: every unheld one idle longer than `keep`, then unheld ones,
/// least recently used first, until the rest fit in `max_total`. Pure.
pub fn plan_collection(mut entries: Vec<Stored>, limits: Limits) -> Vec<PathBuf> {
    entries.sort_by(|a, b| b.idle.cmp(&a.idle).then_with(|| a.path.cmp(&b.path)));
    let mut total: u64 = entries.iter().map(|e| e.size).sum();
    let mut doomed = Vec::new();
    for e in entries.into_iter().filter(|e| !e.held) {
        if e.idle > limits.keep || total > limits.max_total {
            total -= e.size;
            doomed.push(e.path);
        }
    }
    doomed
}

#[cfg(test)]
#[path = "contexts_tests.rs"]
mod tests;

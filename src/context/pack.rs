//! A deterministic, streamed tar of a build context directory, addressed by its sha256.

use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::{Error, IgnoreRules, SpecialKind, Warning};

/// Length of the name and link-name fields of a tar header; longer values get a GNU record.
const NAME_FIELD: usize = 100;

/// What to pack.
#[derive(Debug, Clone, Copy)]
pub struct PackOptions<'a> {
    /// The context directory. It may be a symlink to a directory: the root alone is resolved,
    /// once, before the walk; nothing inside it is ever followed.
    pub root: &'a Path,
    /// The paths to leave out (see [`super::load_ignore`]).
    pub ignore: &'a IgnoreRules,
}

/// What [`pack`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed {
    /// `sha256:<64 hex>` of exactly the bytes written.
    pub digest: String,
    /// Number of bytes written.
    pub size: u64,
    /// Regular files archived (hard links count as files).
    pub files: u64,
    /// Directory entries archived (the root itself has none).
    pub dirs: u64,
    /// Symlinks archived (as links, never followed).
    pub symlinks: u64,
    /// Special files (FIFOs, sockets, devices) left out; each was reported as a [`Warning`].
    pub skipped: u64,
    /// Paths left out because the ignore rules exclude them: an excluded directory counts once,
    /// plus, when it had to be walked for exceptions, the excluded paths found inside it.
    pub excluded: u64,
}

/// Writes the context under `opts.root` to `out` as an uncompressed tar, and returns its digest.
///
/// The archive is a function of the tree alone, so the same tree always gives the same digest:
/// - entries in depth-first order, each directory's entries sorted by their name's bytes; a
///   directory's `dir/` entry comes before its contents; paths are relative, `/`-separated,
///   without `./`; long paths and link targets use GNU long-name/long-link records;
/// - regular files (hard links included) with their content, directories, and symlinks with
///   their target verbatim (never followed, so a link to `/etc/passwd` carries no content);
///   FIFOs, sockets and devices are skipped and reported through `warn`;
/// - uid and gid 0, no user or group names, mode = the mode bits (`& 0o7777`), mtime = the file's
///   mtime in whole seconds (negative clamped to 0), as `docker build` keeps it: touching a file
///   changes the digest even when its content does not; no atime, ctime, devices or xattrs.
///
/// Excluded paths are left out. An excluded directory is walked only when an exception (`!`)
/// could re-include something inside it ([`IgnoreRules::may_include_under`]); its own entry is
/// then written only if something inside it is, and, as with BuildKit, one that cannot be read is
/// taken as empty.
///
/// Files are streamed, never read whole. A file whose size changes while it is read still gets
/// exactly the size its header announces (cut, or padded with zeros), and `pack` then fails with
/// [`Error::Changed`]. On any error the archive is left without its end-of-archive blocks, so no
/// reader mistakes it for a complete context.
pub fn pack<W: Write>(opts: PackOptions<'_>, out: W, warn: &mut dyn FnMut(Warning)) -> Result<Packed, Error> {
    let root = resolve_root(opts.root)?;
    let mut packer = Packer {
        builder: tar::Builder::new(HashingWriter::new(out)),
        ignore: opts.ignore,
        warn,
        packed: Packed::default(),
        pending: Vec::new(),
    };
    if let Err(err) = packer.walk_dir(&root, Path::new("")) {
        // The builder finishes the archive when dropped; make those writes fail instead.
        packer.builder.get_mut().abandoned = true;
        return Err(err);
    }
    packer.finish()
}

/// Resolves the root (it may be a symlink) once and checks it is a directory.
fn resolve_root(root: &Path) -> Result<PathBuf, Error> {
    let read_error = |source| Error::Read {
        path: root.to_path_buf(),
        source,
    };
    let resolved = fs::canonicalize(root).map_err(read_error)?;
    if !fs::metadata(&resolved).map_err(read_error)?.is_dir() {
        return Err(Error::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    Ok(resolved)
}

/// An excluded directory being walked because exceptions may re-include something inside it.
struct PendingDir {
    header: Header,
    name: Vec<u8>,
    written: bool,
}

/// The walk's state.
struct Packer<'a, W: Write> {
    builder: tar::Builder<HashingWriter<W>>,
    ignore: &'a IgnoreRules,
    warn: &'a mut dyn FnMut(Warning),
    packed: Packed,
    /// The excluded ancestors of the current directory, outermost first.
    pending: Vec<PendingDir>,
}

impl<W: Write> Packer<'_, W> {
    /// Archives the entries of the directory `abs` (`rel` in the archive), sorted by name.
    fn walk_dir(&mut self, abs: &Path, rel: &Path) -> Result<(), Error> {
        let names = list_dir(abs).map_err(|source| read_error(abs, source))?;
        self.walk_names(abs, rel, names)
    }

    /// Archives the entries `names` of the directory `abs`, in that order.
    fn walk_names(&mut self, abs: &Path, rel: &Path, names: Vec<OsString>) -> Result<(), Error> {
        for name in names {
            self.visit(&abs.join(&name), &rel.join(&name))?;
        }
        Ok(())
    }

    /// Archives (or leaves out) one entry.
    fn visit(&mut self, abs: &Path, rel: &Path) -> Result<(), Error> {
        let meta = fs::symlink_metadata(abs).map_err(|source| read_error(abs, source))?;
        let excluded = self.ignore.excludes(&rel.to_string_lossy());
        let kind = meta.file_type();
        if kind.is_dir() {
            return self.visit_dir(abs, rel, &meta, excluded);
        }
        if excluded {
            self.packed.excluded += 1;
            return Ok(());
        }
        if kind.is_file() {
            self.flush_pending()?;
            self.append_file(abs, rel, &meta)
        } else if kind.is_symlink() {
            self.flush_pending()?;
            self.append_symlink(abs, rel, &meta)
        } else {
            self.packed.skipped += 1;
            (self.warn)(Warning::Skipped {
                path: rel.to_path_buf(),
                kind: SpecialKind::of(kind),
            });
            Ok(())
        }
    }

    /// Archives a directory and its contents; an excluded one only for what exceptions bring back.
    fn visit_dir(&mut self, abs: &Path, rel: &Path, meta: &Metadata, excluded: bool) -> Result<(), Error> {
        let mut name = rel.as_os_str().as_bytes().to_vec();
        name.push(b'/');
        let header = new_header(EntryType::Directory, meta);
        if !excluded {
            self.flush_pending()?;
            self.append_entry(header, &name, None, io::empty())
                .map_err(write_error)?;
            self.packed.dirs += 1;
            return self.walk_dir(abs, rel);
        }
        if !self.ignore.may_include_under(&rel.to_string_lossy()) {
            self.packed.excluded += 1;
            return Ok(());
        }
        // Like BuildKit, an excluded directory we may not read holds nothing to re-include.
        let names = match list_dir(abs) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Vec::new(),
            listed => listed.map_err(|source| read_error(abs, source))?,
        };
        self.pending.push(PendingDir {
            header,
            name,
            written: false,
        });
        let walked = self.walk_names(abs, rel, names);
        if self.pending.pop().is_some_and(|dir| !dir.written) {
            self.packed.excluded += 1;
        }
        walked
    }

    /// Writes the entries of excluded ancestors that were not written yet: something inside them
    /// is about to be.
    fn flush_pending(&mut self) -> Result<(), Error> {
        let mut pending = std::mem::take(&mut self.pending);
        let flushed = pending.iter_mut().filter(|dir| !dir.written).try_for_each(|dir| {
            self.append_entry(dir.header.clone(), &dir.name, None, io::empty())?;
            self.packed.dirs += 1;
            dir.written = true;
            Ok(())
        });
        self.pending = pending;
        flushed.map_err(write_error)
    }

    /// Archives a regular file, streaming exactly the size its header announces.
    fn append_file(&mut self, abs: &Path, rel: &Path, lstat: &Metadata) -> Result<(), Error> {
        let file = File::open(abs).map_err(|source| read_error(abs, source))?;
        let meta = file.metadata().map_err(|source| read_error(abs, source))?;
        // Replaced (by a symlink, say) between the walk's lstat and the open: never read through.
        if !meta.is_file() || (meta.dev(), meta.ino()) != (lstat.dev(), lstat.ino()) {
            return Err(Error::Changed {
                path: abs.to_path_buf(),
            });
        }
        let mut header = new_header(EntryType::Regular, &meta);
        header.set_size(meta.len());
        let mut reader = ExactReader::new(file, meta.len());
        let appended = self.append_entry(header, rel.as_os_str().as_bytes(), None, &mut reader);
        if let Some(source) = reader.error.take() {
            return Err(read_error(abs, source));
        }
        appended.map_err(write_error)?;
        if reader.changed().map_err(|source| read_error(abs, source))? {
            return Err(Error::Changed {
                path: abs.to_path_buf(),
            });
        }
        self.packed.files += 1;
        Ok(())
    }

    /// Archives a symlink with its target verbatim.
    fn append_symlink(&mut self, abs: &Path, rel: &Path, meta: &Metadata) -> Result<(), Error> {
        let target = fs::read_link(abs).map_err(|source| read_error(abs, source))?;
        let header = new_header(EntryType::Symlink, meta);
        let name = rel.as_os_str().as_bytes();
        self.append_entry(header, name, Some(target.as_os_str().as_bytes()), io::empty())
            .map_err(write_error)?;
        self.packed.symlinks += 1;
        Ok(())
    }

    /// Writes one entry: GNU long-name/long-link records when needed, the header, the data.
    ///
    /// Names and link targets are written byte for byte (the `tar` crate's setters would drop a
    /// directory's trailing `/` and normalise link targets).
    fn append_entry(
        &mut self,
        mut header: Header,
        name: &[u8],
        link: Option<&[u8]>,
        data: impl Read,
    ) -> io::Result<()> {
        if name.len() > NAME_FIELD {
            self.long_record(EntryType::GNULongName, name)?;
        }
        fill_field(&mut header.as_old_mut().name, name);
        if let Some(link) = link {
            if link.len() > NAME_FIELD {
                self.long_record(EntryType::GNULongLink, link)?;
            }
            fill_field(&mut header.as_old_mut().linkname, link);
        }
        header.set_cksum();
        self.builder.append(&header, data)
    }

    /// Writes a GNU `././@LongLink` record carrying `value` for the next header.
    fn long_record(&mut self, kind: EntryType, value: &[u8]) -> io::Result<()> {
        let mut header = Header::new_gnu();
        fill_field(&mut header.as_old_mut().name, b"././@LongLink");
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(value.len() as u64 + 1);
        header.set_cksum();
        self.builder.append(&header, value.chain(&[0u8][..]))
    }

    /// Ends the archive and returns what was written.
    fn finish(self) -> Result<Packed, Error> {
        let mut builder = self.builder;
        builder.finish().map_err(write_error)?;
        let mut out = builder.into_inner().map_err(write_error)?;
        out.inner.flush().map_err(write_error)?;
        let digest: String = out.hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
        Ok(Packed {
            digest: format!("sha256:{digest}"),
            size: out.written,
            ..self.packed
        })
    }
}

/// The names in the directory `path`, sorted by their bytes.
fn list_dir(path: &Path) -> io::Result<Vec<OsString>> {
    let mut names = fs::read_dir(path)?
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<io::Result<Vec<_>>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// A header with kiln's normalised metadata: no owner, permission bits, whole-second mtime.
fn new_header(kind: EntryType, meta: &Metadata) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
    header.set_size(0);
    header
}

/// Copies `value` into a fixed header field, cut to its length, zero-filled.
fn fill_field(field: &mut [u8], value: &[u8]) {
    let len = value.len().min(field.len());
    field[..len].copy_from_slice(&value[..len]);
    field[len..].fill(0);
}

fn read_error(path: &Path, source: io::Error) -> Error {
    Error::Read {
        path: path.to_path_buf(),
        source,
    }
}

fn write_error(source: io::Error) -> Error {
    Error::Write { source }
}

/// Passes writes through, hashing and counting them; refuses them once `abandoned`.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
    abandoned: bool,
}

impl<W> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
            abandoned: false,
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.abandoned {
            return Err(io::Error::other(
                "the build context archive was abandoned after an error",
            ));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a file as exactly `remaining` bytes: cut if it grew, zero-padded if it shrank. Read
/// errors are kept aside so they can be told from write errors.
struct ExactReader {
    file: File,
    remaining: u64,
    short: bool,
    error: Option<io::Error>,
}

impl ExactReader {
    fn new(file: File, size: u64) -> Self {
        Self {
            file,
            remaining: size,
            short: false,
            error: None,
        }
    }

    /// After all bytes were served: did the file end early, or does it have more?
    fn changed(&mut self) -> io::Result<bool> {
        if self.short {
            return Ok(true);
        }
        let mut probe = [0u8; 1];
        loop {
            match self.file.read(&mut probe) {
                Ok(n) => return Ok(n > 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let buf = &mut buf[..want];
        while !self.short {
            match self.file.read(buf) {
                Ok(0) => self.short = true,
                Ok(n) => {
                    self.remaining -= n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.error = Some(e);
                    return Err(io::Error::other("reading a context file failed"));
                }
            }
        }
        buf.fill(0);
        self.remaining -= want as u64;
        Ok(want)
    }
}

#[cfg(test)]
#[path = "pack_tests.rs"]
mod tests;

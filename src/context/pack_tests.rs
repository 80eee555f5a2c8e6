//! Unit tests of the context archive: determinism, ordering, ignore rules, links and metadata.

use super::*;
use std::fs::FileTimes;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::time::{Duration, SystemTime};

/// One entry read back from an archive.
#[derive(Debug)]
struct Entry {
    path: String,
    kind: EntryType,
    link: Option<String>,
    content: Vec<u8>,
    mode: u32,
    mtime: u64,
}

struct Out {
    packed: Packed,
    bytes: Vec<u8>,
    warnings: Vec<Warning>,
}

fn pack_with(root: &Path, ignore: &IgnoreRules) -> Result<Out, Error> {
    let mut bytes = Vec::new();
    let mut warnings = Vec::new();
    let packed = pack(PackOptions { root, ignore }, &mut bytes, &mut |w| warnings.push(w))?;
    Ok(Out {
        packed,
        bytes,
        warnings,
    })
}

fn pack_all(root: &Path) -> Out {
    pack_with(root, &IgnoreRules::empty()).unwrap()
}

fn entries(bytes: &[u8]) -> Vec<Entry> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header();
        assert_eq!(header.uid().unwrap(), 0);
        assert_eq!(header.gid().unwrap(), 0);
        assert_eq!(header.username_bytes(), Some(&b""[..]));
        assert_eq!(header.groupname_bytes(), Some(&b""[..]));
        let (kind, mode, mtime) = (header.entry_type(), header.mode().unwrap(), header.mtime().unwrap());
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap());
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        out.push(Entry {
            path,
            kind,
            link,
            content,
            mode,
            mtime,
        });
    }
    out
}

fn paths(bytes: &[u8]) -> Vec<String> {
    entries(bytes).into_iter().map(|e| e.path).collect()
}

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, content).unwrap();
    set_mtime(&path, 1_700_000_000);
}

fn set_mtime(path: &Path, secs: u64) {
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    // A read-only handle is enough for the owner, and works for directories too.
    File::open(path)
        .unwrap()
        .set_times(FileTimes::new().set_modified(time))
        .unwrap();
}

fn sample(root: &Path) {
    write(root, "Dockerfile", "FROM scratch\n");
    write(root, "src/main.rs", "fn main() {}\n");
    write(root, "src/lib/mod.rs", "// lib\n");
}

#[test]
fn same_tree_gives_same_bytes_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    let (a, b) = (pack_all(dir.path()), pack_all(dir.path()));
    assert_eq!(a.bytes, b.bytes);
    assert_eq!(a.packed, b.packed);

    let hex: String = Sha256::digest(&a.bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(a.packed.digest, format!("sha256:{hex}"));
    assert_eq!(a.packed.size, a.bytes.len() as u64);
    assert_eq!((a.packed.files, a.packed.dirs, a.packed.symlinks), (3, 2, 0));
    // Two zero blocks end the archive; no gzip.
    assert!(a.bytes.ends_with(&[0u8; 1024]));
    assert_eq!(a.bytes.len() % 512, 0);
}

#[test]
fn a_copy_elsewhere_gives_the_same_digest() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    sample(one.path());
    sample(two.path());
    for dir in ["src/lib", "src"] {
        set_mtime(&one.path().join(dir), 1_600_000_000);
        set_mtime(&two.path().join(dir), 1_600_000_000);
    }
    assert_eq!(pack_all(one.path()).packed.digest, pack_all(two.path()).packed.digest);
}

#[test]
fn content_changes_change_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    let before = pack_all(dir.path()).packed.digest;
    write(dir.path(), "src/main.rs", "fn main() { }\n");
    assert_ne!(pack_all(dir.path()).packed.digest, before);
}

#[test]
fn mtime_is_part_of_the_digest() {
    // Documented: like `docker build`, kiln keeps mtimes, so a `touch` alone changes the digest.
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    let before = pack_all(dir.path());
    set_mtime(&dir.path().join("Dockerfile"), 1_700_000_001);
    let touched = pack_all(dir.path());
    assert_ne!(touched.packed.digest, before.packed.digest);
    assert_eq!(touched.bytes.len(), before.bytes.len());
    set_mtime(&dir.path().join("Dockerfile"), 1_700_000_000);
    assert_eq!(pack_all(dir.path()).packed.digest, before.packed.digest);

    let dockerfile = entries(&before.bytes)
        .into_iter()
        .find(|e| e.path == "Dockerfile")
        .unwrap();
    assert_eq!(dockerfile.mtime, 1_700_000_000);
}

#[test]
fn entries_are_sorted_by_name_bytes_with_directories_first() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["b", "a.txt", "B", "a/z", "a/y", "c/d/e"] {
        write(dir.path(), name, name);
    }
    let out = pack_all(dir.path());
    assert_eq!(
        paths(&out.bytes),
        ["B", "a/", "a/y", "a/z", "a.txt", "b", "c/", "c/d/", "c/d/e"]
    );
    let a = entries(&out.bytes).into_iter().find(|e| e.path == "a/y").unwrap();
    assert_eq!((a.kind, a.content), (EntryType::Regular, b"a/y".to_vec()));
}

#[test]
fn ignored_paths_are_left_out_and_exceptions_kept() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    sample(root);
    write(root, "node_modules/keep.txt", "keep");
    write(root, "node_modules/lib/index.js", "drop");
    write(root, "debug.log", "drop");
    write(root, "target/big.bin", "drop");
    fs::create_dir(root.join("logs")).unwrap();
    let text = "node_modules\n!node_modules/keep.txt\n*.log\nlogs\ntarget\n";
    fs::write(root.join(".dockerignore"), text).unwrap();
    set_mtime(&root.join(".dockerignore"), 1);

    let rules = super::super::load_ignore(root, None).unwrap();
    let out = pack_with(root, &rules).unwrap();
    assert_eq!(
        paths(&out.bytes),
        [
            ".dockerignore",
            "Dockerfile",
            "node_modules/",
            "node_modules/keep.txt",
            "src/",
            "src/lib/",
            "src/lib/mod.rs",
            "src/main.rs"
        ]
    );
    // debug.log, and node_modules/lib, logs and target: no exception reaches inside them, so
    // they are not walked.
    assert_eq!(out.packed.excluded, 4);

    // Without exceptions excluded directories are not walked at all.
    let rules = IgnoreRules::parse("node_modules\n*.log\ntarget\nlogs").unwrap();
    let out = pack_with(root, &rules).unwrap();
    assert!(!paths(&out.bytes).iter().any(|p| p.starts_with("node_modules")));
    assert_eq!(out.packed.excluded, 4);
}

#[test]
fn wildcard_exceptions_walk_excluded_directories() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "target/a/b.keep", "keep");
    write(root, "target/a/c.o", "drop");
    write(root, "target/d/e.o", "drop");
    fs::create_dir(root.join("target/empty")).unwrap();
    let out = pack_with(root, &IgnoreRules::parse("target\n!**/*.keep").unwrap()).unwrap();
    // Only the parents of what came back get directory entries.
    assert_eq!(paths(&out.bytes), ["target/", "target/a/", "target/a/b.keep"]);
    // c.o, d/e.o, and the directories d/ and empty/ that were walked for nothing.
    assert_eq!(out.packed.excluded, 4);
}

#[test]
fn unreadable_excluded_directories_are_taken_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "app.txt", "app");
    write(dir.path(), "data/private/x", "x");
    let private = dir.path().join("data/private");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o300)).unwrap();
    let readable = fs::read_dir(&private).is_ok();
    let out = pack_with(dir.path(), &IgnoreRules::parse("data\n!**/*.txt").unwrap());
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    if readable {
        return; // running as root: permissions do not stop us
    }
    assert_eq!(paths(&out.unwrap().bytes), ["app.txt"]);
}

#[test]
fn symlinks_are_stored_as_links_and_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), "TOP-SECRET-CONTENT").unwrap();
    let root = dir.path();
    symlink("/etc/passwd", root.join("passwd")).unwrap();
    symlink(outside.path().join("secret"), root.join("secret")).unwrap();
    symlink(outside.path(), root.join("outside-dir")).unwrap();
    symlink("../dangling/", root.join("dangling")).unwrap();

    let out = pack_all(root);
    let found = entries(&out.bytes);
    let passwd = found.iter().find(|e| e.path == "passwd").unwrap();
    assert_eq!(passwd.kind, EntryType::Symlink);
    assert_eq!(passwd.link.as_deref(), Some("/etc/passwd"));
    assert!(passwd.content.is_empty());
    // Targets are kept verbatim, trailing slash included.
    let dangling = found.iter().find(|e| e.path == "dangling").unwrap();
    assert_eq!(dangling.link.as_deref(), Some("../dangling/"));
    assert_eq!(out.packed.symlinks, 4);
    assert_eq!(out.packed.files, 0);

    let haystack = String::from_utf8_lossy(&out.bytes);
    assert!(!haystack.contains("TOP-SECRET-CONTENT"));
    assert!(!haystack.contains("root:x:0:0"));
}

#[test]
fn a_symlinked_root_is_resolved_once() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    fs::create_dir(&real).unwrap();
    sample(&real);
    symlink(&real, dir.path().join("link")).unwrap();
    let via_link = pack_all(&dir.path().join("link"));
    assert_eq!(via_link.packed.digest, pack_all(&real).packed.digest);
    assert!(paths(&via_link.bytes).contains(&"src/main.rs".to_string()));
}

#[test]
fn special_files_are_skipped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", "a");
    let status = std::process::Command::new("mkfifo")
        .arg(dir.path().join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());

    let out = pack_all(dir.path());
    assert_eq!(paths(&out.bytes), ["a.txt"]);
    assert_eq!(out.packed.skipped, 1);
    assert_eq!(
        out.warnings,
        [Warning::Skipped {
            path: PathBuf::from("pipe"),
            kind: SpecialKind::Fifo
        }]
    );
    assert!(out.warnings[0].to_string().contains("named pipe"));

    // An excluded special file is silently left out.
    let out = pack_with(dir.path(), &IgnoreRules::parse("pipe").unwrap()).unwrap();
    assert!(out.warnings.is_empty());
    assert_eq!(out.packed.skipped, 0);
}

#[test]
fn long_paths_and_link_targets_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!("{}/{}/{}", "d".repeat(60), "e".repeat(60), "f".repeat(120));
    write(dir.path(), &deep, "deep");
    let target = format!("../{}", "t".repeat(150));
    symlink(&target, dir.path().join("long-link")).unwrap();

    let found = entries(&pack_all(dir.path()).bytes);
    let file = found.iter().find(|e| e.path == deep).unwrap();
    assert_eq!(file.content, b"deep");
    let parent = format!("{}/{}/", "d".repeat(60), "e".repeat(60));
    assert!(found.iter().any(|e| e.path == parent && e.kind == EntryType::Directory));
    let link = found.iter().find(|e| e.path == "long-link").unwrap();
    assert_eq!(link.link.as_deref(), Some(target.as_str()));
}

#[test]
fn metadata_is_normalised() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "run.sh", "#!/bin/sh\n");
    fs::set_permissions(dir.path().join("run.sh"), fs::Permissions::from_mode(0o4750)).unwrap();
    fs::create_dir(dir.path().join("empty")).unwrap();
    fs::set_permissions(dir.path().join("empty"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::hard_link(dir.path().join("run.sh"), dir.path().join("run2.sh")).unwrap();

    let out = pack_all(dir.path());
    let found = entries(&out.bytes); // checks uid/gid 0 and empty names on every entry
    let by_path = |p: &str| found.iter().find(|e| e.path == p).unwrap();
    assert_eq!(
        (by_path("run.sh").mode, by_path("run.sh").kind),
        (0o4750, EntryType::Regular)
    );
    assert_eq!(
        (by_path("empty/").mode, by_path("empty/").kind),
        (0o700, EntryType::Directory)
    );
    // Hard links are plain files with their content.
    assert_eq!(by_path("run2.sh").kind, EntryType::Regular);
    assert_eq!(by_path("run2.sh").content, b"#!/bin/sh\n");
    assert_eq!((out.packed.files, out.packed.dirs), (2, 1));
}

#[test]
fn a_root_that_is_not_a_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "file", "x");
    let err = pack_with(&dir.path().join("file"), &IgnoreRules::empty())
        .err()
        .unwrap();
    assert!(matches!(err, Error::NotADirectory { .. }), "{err:?}");
    let err = pack_with(&dir.path().join("missing"), &IgnoreRules::empty())
        .err()
        .unwrap();
    assert!(matches!(err, Error::Read { .. }), "{err:?}");
}

#[test]
fn unreadable_files_are_errors_with_their_path_and_leave_the_archive_unfinished() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", "a");
    write(dir.path(), "secret.txt", "s");
    let secret = dir.path().join("secret.txt");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    if File::open(&secret).is_ok() {
        return; // running as root: permissions do not stop us
    }
    let mut bytes = Vec::new();
    let opts = PackOptions {
        root: dir.path(),
        ignore: &IgnoreRules::empty(),
    };
    let err = pack(opts, &mut bytes, &mut |_| {}).unwrap_err();
    match &err {
        Error::Read { path, .. } => assert!(path.ends_with("secret.txt"), "{path:?}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("secret.txt"));
    assert!(!bytes.ends_with(&[0u8; 1024]), "no end-of-archive after an error");
}

#[test]
fn exact_reader_pads_or_cuts_and_reports_the_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    fs::write(&path, "hello").unwrap();

    let mut shrunk = ExactReader::new(File::open(&path).unwrap(), 8);
    let mut got = Vec::new();
    shrunk.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello\0\0\0");
    assert!(shrunk.changed().unwrap());

    let mut grown = ExactReader::new(File::open(&path).unwrap(), 3);
    let mut got = Vec::new();
    grown.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hel");
    assert!(grown.changed().unwrap());

    let mut same = ExactReader::new(File::open(&path).unwrap(), 5);
    let mut got = Vec::new();
    same.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello");
    assert!(!same.changed().unwrap());
}

#[test]
fn a_file_replaced_after_the_walk_saw_it_is_never_read() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a", "a");
    write(dir.path(), "b", "SECRET");
    let seen = fs::symlink_metadata(dir.path().join("a")).unwrap();
    let ignore = IgnoreRules::empty();
    let mut warn = |_| {};
    let mut packer = Packer {
        builder: tar::Builder::new(HashingWriter::new(Vec::new())),
        ignore: &ignore,
        warn: &mut warn,
        packed: Packed::default(),
        pending: Vec::new(),
    };
    // What is at the path now (`b`'s inode) is not what the walk saw: nothing is written.
    let err = packer
        .append_file(&dir.path().join("b"), Path::new("a"), &seen)
        .unwrap_err();
    assert!(matches!(err, Error::Changed { .. }), "{err:?}");
    assert_eq!(packer.builder.get_ref().written, 0);
}

#[test]
fn an_abandoned_archive_takes_no_more_writes() {
    let mut out = HashingWriter::new(Vec::new());
    out.write_all(b"x").unwrap();
    out.abandoned = true;
    assert!(out.write_all(b"y").is_err());
    assert_eq!((out.inner.as_slice(), out.written), (&b"x"[..], 1));
}

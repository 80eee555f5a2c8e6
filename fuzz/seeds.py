#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/<target>/seed-*, from the lists below.

Run it after editing a list (`python3 fuzz/seeds.py`); it rewrites only seed-* files, so inputs
added by hand (crash-*, regression inputs) stay. Layouts are described in each target's header
(fuzz/fuzz_targets/*.rs).
"""

import hashlib
import io
import os
import struct
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
HEX64 = "0123456789abcdef" * 4
HEX128 = HEX64 * 2

REFERENCES = [
    f"docker.io/library/busybox:1.36@sha256:{HEX64}",
    "busybox",
    "busybox:1.36",
    "library/busybox:latest",
    "index.docker.io/library/busybox",
    "docker.io/busybox",
    "localhost/app",
    "localhost:5000/team/app:dev",
    "registry.example.com:443/a/b/c:v1.2.3-rc.1",
    f"ghcr.io/owner/repo@sha512:{HEX128}",
    "gcr.io/distroless/static-debian12:nonroot",
    "Example.COM/team/app:Dev_1",
    "a__b/c-----d.e:_x",
    "127.0.0.1:5000/x",
    "a" * 236,
    "a" * 255,
    "example.com/" + "a" * 243,
    "x:" + "t" * 128,
    "x:" + "t" * 129,
    HEX64,
    "app:",
    "app:.x",
    "app@sha256:abc",
    f"app@SHA256:{HEX64}",
    "a//b",
    "a/-b",
    "App",
    "bad host!/app",
    ":tag",
    f"@sha256:{HEX64}",
    "localhost:5000",
    "localhost:/app",
    "[::1]:5000/app",
    "app:tag:tag",
    "app@@sha256:x",
    "example.com:5000/app:1@sha256:" + HEX64,
    "-a.com/app",
    "exa_mple.com/app",
]

BUILD_PATHS = [
    "Dockerfile\nsub",
    "docker/app.Dockerfile\nservices/api",
    "./build/Dockerfile\n./",
    ".\n.",
    "../secret/Dockerfile\na/../../b",
    "/etc/Dockerfile\n/abs",
    "a/./b/../c\nx/..",
    " \n ",
    "\t\n\t",
    "Dockerfile\x00\nsub\x00dir",
    "..\\..\\Dockerfile\nsub#frag:x",
    "a//b/\nsub/",
    "...\n...",
    "..\n..",
    "./../Dockerfile\n.//..",
    "Dockerfile\n",
    "\nsub",
    "é/Dockerfile\n日本/x",
]

DOCKERIGNORES = [
    # https://docs.docker.com/build/concepts/context/#dockerignore-files
    "# comment\n*/temp*\n*/*/temp*\ntemp?\n",
    "*.md\n!README*.md\nREADME-secret.md\n",
    "*.md\nREADME-secret.md\n!README*.md\n",
    "**/*.go\n",
    "*\n!Dockerfile\n!src\n",
    "Dockerfile\n.dockerignore\n",
    "node_modules\n!node_modules/keep.txt\n*.log\nlogs\ntarget\n",
    "target\n!**/*.keep\n",
    "docs\n!docs/internal\n",
    "docs/internal\n!docs\n",
    "/foo\n./bar/\nbaz//qux/..\n../up\n",
    "\\[literal\\]\n[a-z]*.txt\n[^0-9]?\n[\\-\\]]x\n",
    "**\n!**/\n",
    "**foo\nbar**\n**/baz/**\n",
    "a/**/b\n!a/**/b/c\n",
    " #not-a-comment\n  spaced  \n!  spaced-exception\n",
    "\ufeff*.tmp\n",
    "[\n",
    "!\n",
    "[z-a]\n",
    "foo\\",
    "[^]\n",
    "*.md\n!README*.md\0README.md\nREADME-secret.md\ndocs/a.md\n./x.md\n/y.md",
    "node_modules\n!node_modules/keep.txt\0node_modules/keep.txt\nnode_modules/lib/x.js\nnode_modules",
    "*a*a*a*a*a*a*a*a*a*a*b\n\0" + "a" * 2000,
    "**/**/**/**/**/**/**/**/a\n\0" + "b/" * 1000 + "a",
    "*\n!*/*\n!*/*/*\0x\nx/y\nx/y/z\nx/y/z/w",
    "a?c\n\0a\nc\na/c\nabc\na\nc",
]


def tar_bytes(entries, trim=True):
    """A GNU tar of (TarInfo, data) pairs, without the padding to 10 KiB."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    if trim:
        raw = raw.rstrip(b"\0")
        raw += b"\0" * ((-len(raw)) % 512) + b"\0" * 1024
    return raw


def member(name, kind=tarfile.REGTYPE, data=b"", link=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = 1_700_000_000
    info.mode = 0o644
    return info, (data if kind == tarfile.REGTYPE else None)


def huge_header():
    """One header announcing an 8 GiB file (octal size field full), then nothing."""
    h = bytearray(512)
    h[0:5] = b"big.x"
    h[100:108] = b"0000644\0"
    h[124:136] = b"77777777777\0"
    h[156] = ord("0")
    h[257:265] = b"ustar  \0"
    h[148:156] = b"        "
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def base256_header():
    """A GNU base-256 size of 2^63 - 1."""
    h = bytearray(huge_header())
    h[124:136] = b"\x80" + b"\x7f" + b"\xff" * 10
    h[148:156] = b"        "
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def tars():
    evil = tar_bytes([
        member("Dockerfile", data=b"FROM scratch\nCOPY . /\n"),
        member("../evil", data=b"escape"),
        member("/etc/passwd", data=b"root::0:0::/:/bin/sh\n"),
    ])
    links = tar_bytes([
        member("root", tarfile.SYMTYPE, link="/"),
        member("up", tarfile.SYMTYPE, link="../../../../etc"),
        member("hard", tarfile.LNKTYPE, link="../../outside"),
        member("dev", tarfile.CHRTYPE),
    ])
    long = tar_bytes([member("d/" * 150 + "f", data=b"x"), member("l", tarfile.SYMTYPE, link="/" + "t/" * 120)])
    return {
        "evil-paths": evil,
        "links": links,
        "long-names": long,
        "truncated": evil[:700],
        "huge-header": huge_header(),
        "base256-size": base256_header(),
        "zeros": b"\0" * 1024,
        "empty": b"",
        "not-a-tar": b"hello, agent\n",
    }


def upload(flags, limit_units, chunk, break_at, declared, body, claimed=None):
    header = bytes([flags, limit_units, chunk, break_at])
    header += struct.pack("<Q", declared) + b"\0" * 4
    header += claimed if claimed is not None else hashlib.sha256(b"other" + body).digest()
    assert len(header) == 48
    return header + body


def uploads():
    bodies = tars()
    out = {}
    for name, body in bodies.items():
        # Stored: real digest, Content-Length, room enough.
        out[f"{name}-stored"] = upload(0x03, 255, 255, 0, len(body), body)
        # Claimed digest that is not the body's.
        out[f"{name}-mismatch"] = upload(0x01, 255, 63, 0, len(body), body)
    evil = bodies["evil-paths"]
    out["too-large-declared"] = upload(0x03, 1, 255, 0, 200, evil)
    out["too-large-counted"] = upload(0x02, 2, 99, 0, 0, evil)
    out["too-large-by-one"] = upload(0x02, 1, 0, 0, 0, b"x" * 65)
    out["exactly-the-limit"] = upload(0x02, 1, 0, 0, 0, b"x" * 64)
    out["endless"] = upload(0x0A, 8, 7, 0, 0, b"again ")
    out["endless-empty"] = upload(0x08, 0, 0, 0, 0, b"")
    out["broken-first"] = upload(0x06, 255, 127, 0, 0, evil)
    out["broken-middle"] = upload(0x06, 255, 127, 3, 0, evil)
    out["broken-after-last"] = upload(0x06, 255, 255, 200, 0, b"short")
    out["leftover-good"] = upload(0x12, 255, 255, 0, 0, evil)
    out["leftover-garbage"] = upload(0x10, 255, 255, 0, 0, evil)
    out["leftover-garbage-unwanted"] = upload(0x30, 255, 255, 0, 0, evil)
    out["not-wanted"] = upload(0x22, 255, 255, 0, 0, evil)
    out["collect-held"] = upload(0x42, 255, 255, 0, 0, evil)
    out["collect-unwanted-leftover"] = upload(0x72, 255, 255, 0, 0, evil)
    out["digest-in-path"] = f"sha256:{HEX64}".encode()
    out["digest-traversal"] = b"sha256:../../../../etc/passwd"
    out["digest-upper"] = f"sha256:{HEX64.upper()}".encode()
    return out


def write(target, named):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.startswith("seed-"):
            os.remove(os.path.join(d, f))
    for name, data in named.items():
        if isinstance(data, str):
            data = data.encode()
        with open(os.path.join(d, f"seed-{name}"), "wb") as f:
            f.write(data)


def main():
    write("reference", {f"{i:02}": r for i, r in enumerate(REFERENCES)})
    write("build_paths", {f"{i:02}": p for i, p in enumerate(BUILD_PATHS)})
    write("dockerignore", {f"{i:02}": t for i, t in enumerate(DOCKERIGNORES)})
    write("context_upload", uploads())


if __name__ == "__main__":
    main()

//! Just enough LLB to hand the dockerfile frontend its inputs: a git or http
//! source for the context, and a scratch + `mkfile` for an inline Dockerfile.

use std::collections::BTreeMap;

use bollard_buildkit_proto::pb;
use prost::Message;
use sha2::{Digest, Sha256};

/// Accumulates marshaled ops for one `pb::Definition`.
#[derive(Default)]
struct DefBuilder {
    def: Vec<Vec<u8>>,
    metadata: BTreeMap<String, pb::OpMetadata>,
}

fn digest_of(bytes: &[u8]) -> String {
    let sum = Sha256::digest(bytes);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in sum {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl DefBuilder {
    /// Adds an op; returns its digest (the sha256 of its wire bytes, which is
    /// how BuildKit identifies it when it loads the definition).
    fn add(&mut self, op: pb::Op, caps: &[&str]) -> String {
        let bytes = op.encode_to_vec();
        let dgst = digest_of(&bytes);
        if !self.def.contains(&bytes) {
            self.def.push(bytes);
        }
        let md = pb::OpMetadata {
            caps: caps.iter().map(|c| (c.to_string(), true)).collect(),
            ..Default::default()
        };
        self.metadata.insert(dgst.clone(), md);
        dgst
    }

    /// Appends the terminal op that names `output` as the result.
    fn finish(mut self, output: String) -> pb::Definition {
        let last = pb::Op {
            inputs: vec![pb::Input {
                digest: output,
                index: 0,
            }],
            ..Default::default()
        };
        let bytes = last.encode_to_vec();
        let dgst = digest_of(&bytes);
        self.def.push(bytes);
        self.metadata.insert(dgst, pb::OpMetadata::default());
        pb::Definition {
            def: self.def,
            metadata: self.metadata,
            source: None,
        }
    }
}

fn source_op(identifier: String, attrs: BTreeMap<String, String>) -> pb::Op {
    pb::Op {
        op: Some(pb::op::Op::Source(pb::SourceOp {
            identifier,
            attrs: attrs.into_iter().collect(),
        })),
        ..Default::default()
    }
}

/// The `git://…` identifier and `git.fullurl` attribute BuildKit's
/// `llb.Git(remote, ref)` produces, with `#ref:subdir` appended.
pub(crate) fn git_identifier(url: &str, fragment: &str) -> (String, Option<String>) {
    let mut remote = url;
    let mut full = None;
    for prefix in ["http://", "https://", "git://", "ssh://", "git@"] {
        if let Some(rest) = url.strip_prefix(prefix) {
            full = Some(url.to_string());
            remote = rest;
            break;
        }
    }
    let mut id = format!("git://{remote}");
    if !fragment.is_empty() {
        id.push('#');
        id.push_str(fragment);
    }
    (id, full)
}

/// A git checkout of `url` at `fragment` (`ref`, `ref:subdir` or `:subdir`); with
/// `token_secret`, BuildKit fetches over HTTP(S) with the session secret of that id as its
/// token (`git.authtokensecret`, as `llb.Git` sets it).
pub(crate) fn git_context(url: &str, fragment: &str, token_secret: Option<&str>) -> pb::Definition {
    let (id, full) = git_identifier(url, fragment);
    let mut attrs = BTreeMap::new();
    if let Some(secret) = token_secret {
        attrs.insert("git.authtokensecret".to_string(), secret.to_string());
    }
    let mut caps = vec!["source.git"];
    if let Some(full) = full {
        attrs.insert("git.fullurl".to_string(), full);
        caps.push("source.git.fullurl");
    }
    let mut b = DefBuilder::default();
    let out = b.add(source_op(id, attrs), &caps);
    b.finish(out)
}

/// An http(s) tarball unpacked into an empty directory, as the dockerfile
/// frontend does with an archive context (`llb.HTTP` + `Copy{AttemptUnpack}`).
pub(crate) fn http_tarball_context(url: &str) -> pb::Definition {
    let mut b = DefBuilder::default();
    let mut attrs = BTreeMap::new();
    attrs.insert("http.filename".to_string(), "context".to_string());
    let src = b.add(source_op(url.to_string(), attrs), &["source.http"]);
    let copy = pb::Op {
        inputs: vec![pb::Input { digest: src, index: 0 }],
        op: Some(pb::op::Op::File(pb::FileOp {
            actions: vec![pb::FileAction {
                input: -1,
                secondary_input: 0,
                output: 0,
                action: Some(pb::file_action::Action::Copy(pb::FileActionCopy {
                    src: "/context".into(),
                    dest: "/".into(),
                    mode: -1,
                    follow_symlink: true,
                    attempt_unpack_docker_compatibility: true,
                    create_dest_path: true,
                    allow_wildcard: true,
                    allow_empty_wildcard: true,
                    timestamp: -1,
                    ..Default::default()
                })),
            }],
        })),
        ..Default::default()
    };
    let out = b.add(copy, &["file.base"]);
    b.finish(out)
}

/// A directory holding exactly one file, `name`, with `content`.
pub(crate) fn single_file(name: &str, content: &[u8]) -> pb::Definition {
    let mut b = DefBuilder::default();
    let op = pb::Op {
        op: Some(pb::op::Op::File(pb::FileOp {
            actions: vec![pb::FileAction {
                input: -1,
                secondary_input: -1,
                output: 0,
                action: Some(pb::file_action::Action::Mkfile(pb::FileActionMkFile {
                    path: format!("/{}", name.trim_start_matches('/')),
                    mode: 0o644,
                    data: content.to_vec(),
                    owner: None,
                    timestamp: -1,
                })),
            }],
        })),
        ..Default::default()
    };
    let out = b.add(op, &["file.base"]);
    b.finish(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_identifiers_match_buildkit() {
        assert_eq!(
            git_identifier("https://github.com/moby/buildkit.git", "v0.8.0:frontend"),
            (
                "git://github.com/moby/buildkit.git#v0.8.0:frontend".to_string(),
                Some("https://github.com/moby/buildkit.git".to_string())
            )
        );
        assert_eq!(
            git_identifier("github.com/moby/buildkit", ""),
            ("git://github.com/moby/buildkit".to_string(), None)
        );
        assert_eq!(
            git_identifier("git://127.0.0.1:9418/repo.git", ":sub"),
            (
                "git://127.0.0.1:9418/repo.git#:sub".to_string(),
                Some("git://127.0.0.1:9418/repo.git".to_string())
            )
        );
    }

    #[test]
    fn definitions_end_in_a_terminal_op_pointing_at_the_result() {
        let def = single_file("Dockerfile", b"FROM scratch\n");
        assert_eq!(def.def.len(), 2);
        let first_digest = digest_of(&def.def[0]);
        let last = pb::Op::decode(def.def[1].as_slice()).unwrap();
        assert_eq!(last.inputs.len(), 1);
        assert_eq!(last.inputs[0].digest, first_digest);
        assert!(def.metadata[&first_digest].caps["file.base"]);
        let file = pb::Op::decode(def.def[0].as_slice()).unwrap();
        match file.op {
            Some(pb::op::Op::File(f)) => match &f.actions[0].action {
                Some(pb::file_action::Action::Mkfile(m)) => {
                    assert_eq!(m.path, "/Dockerfile");
                    assert_eq!(m.data, b"FROM scratch\n");
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        let http = http_tarball_context("http://127.0.0.1:1/ctx.tar");
        assert_eq!(http.def.len(), 3);
    }
}

//! Cache keys: blake3 of a canonical encoding of an op's definition and of
//! what each input contributes (its own key, or a content checksum of exactly
//! the paths the op reads from it).
//!
//! What is in the key: the op (every field of [`Op`]: for a copy also its
//! include and exclude patterns and its required paths, which is how a
//! `COPY --parents` pivot and `--exclude` reach the key), the number and order
//! of inputs, and per input either its key or its content checksums (of
//! exactly what the copy takes: its patterns match below each selected
//! source, as the copy applies them). What is not:
//! the vertex description (progress name, Dockerfile location), a base
//! image's reference (its chain ID, or its pin when it has no layers, stands
//! for it), anything of the machine (state-root or context paths, inode
//! numbers, snapshot IDs, host names, listing order),
//! `ignore_cache`, secrets' contents (ops only carry a secret's id and
//! placement), a RUN's proxy variables (`ExecOp::proxy_env`), vertex ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::VertexId;
use crate::op::{Op, SourceOp};

/// Domain separation so our keys never collide with other blake3 uses.
const KEY_CONTEXT: &str = "rbuild solver cache key v1";
const DEFINITION_CONTEXT: &str = "rbuild solver vertex definition v1";

macro_rules! digest_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Lowercase hex, 64 characters.
            pub fn to_hex(&self) -> String {
                blake3::Hash::from_bytes(self.0).to_hex().to_string()
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(h: blake3::Hash) -> Self {
                Self(*h.as_bytes())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = ParseDigestError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                blake3::Hash::from_hex(s)
                    .map(Self::from)
                    .map_err(|_| ParseDigestError(s.to_owned()))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

digest_type!(
    /// The cache key of a vertex (32 bytes, shown as hex).
    CacheKey
);
digest_type!(
    /// A content checksum of selected files (computed by the worker).
    Checksum
);

/// A string that is not 64 hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a 64-digit hex digest: {0:?}")]
pub struct ParseDigestError(pub String);

/// What one input contributes to a vertex's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum InputKey {
    /// The input's own cache key.
    Key(CacheKey),
    /// Content checksums of what the op reads from the input, one per
    /// selection, in the order of [`Op::content_selections`]. Replaces the
    /// input's key: the same files give the same key whatever produced them.
    Content(Vec<Checksum>),
}

fn canonical_op(op: &Op) -> Vec<u8> {
    // Structs and enums only (no maps, no floats): serde_json's output is
    // deterministic, in declaration order.
    serde_json::to_vec(op).expect("ops serialise to JSON")
}

/// What keys a base image: its content, never the name it was found under.
/// The chain ID of its layers when known (the same root file system however it
/// came to the machine: pulled, loaded, imported, tagged anew), else the pin.
fn image_definition(
    pin: &crate::op::ImagePin,
    platform: Option<&str>,
    chain_id: Option<&str>,
) -> Vec<u8> {
    let content = match chain_id {
        Some(c) => serde_json::json!({ "chain_id": c }),
        None => serde_json::json!({ "pin": pin }),
    };
    serde_json::to_vec(&serde_json::json!({
        "type": "source",
        "source": "image",
        "content": content,
        "platform": platform,
    }))
    .expect("image definitions serialise to JSON")
}

/// What keys a git source: its commit, subdirectory and whether `.git` is
/// kept (with the ref then, which `.git` names), never the remote it came
/// from (`BuildKit`'s `shaToCacheKey`).
fn git_definition(
    commit: &str,
    reference: &str,
    subdir: &str,
    keep_git_dir: bool,
    submodules: bool,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "source",
        "source": "git",
        "commit": commit,
        "reference": if keep_git_dir { reference } else { "" },
        "subdir": subdir,
        "keep_git_dir": keep_git_dir,
        "submodules": submodules,
    }))
    .expect("git definitions serialise to JSON")
}

fn put_len(h: &mut blake3::Hasher, n: usize) {
    h.update(&(n as u64).to_le_bytes());
}

/// The cache key of a vertex whose op is `op` and whose inputs contribute
/// `inputs` (one per [`crate::Vertex::inputs`] entry, in order).
pub fn cache_key(op: &Op, inputs: &[InputKey]) -> CacheKey {
    let mut h = blake3::Hasher::new_derive_key(KEY_CONTEXT);
    let def = match op {
        // The proxy variables are not part of what a step is (BuildKit clears
        // `ProxyEnv` before hashing an ExecOp).
        Op::Exec(e) if !e.proxy_env.is_empty() => {
            let mut e = e.clone();
            e.proxy_env.clear();
            canonical_op(&Op::Exec(e))
        }
        Op::Source(SourceOp::Image {
            pin,
            platform,
            chain_id,
            ..
        }) => image_definition(pin, platform.as_deref(), chain_id.as_deref()),
        Op::Source(SourceOp::Git {
            commit,
            reference,
            subdir,
            keep_git_dir,
            submodules,
            ..
        }) => git_definition(commit, reference, subdir, *keep_git_dir, *submodules),
        _ => canonical_op(op),
    };
    put_len(&mut h, def.len());
    h.update(&def);
    put_len(&mut h, inputs.len());
    for input in inputs {
        match input {
            InputKey::Key(k) => {
                h.update(&[0]);
                h.update(k.as_bytes());
            }
            InputKey::Content(sums) => {
                h.update(&[1]);
                put_len(&mut h, sums.len());
                for s in sums {
                    h.update(s.as_bytes());
                }
            }
        }
    }
    h.finalize().into()
}

/// Identity of a vertex inside one graph (op + input vertex ids), for dedup.
pub fn definition_digest(op: &Op, inputs: &[VertexId]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(DEFINITION_CONTEXT);
    let def = canonical_op(op);
    put_len(&mut h, def.len());
    h.update(&def);
    put_len(&mut h, inputs.len());
    for i in inputs {
        h.update(&i.0.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

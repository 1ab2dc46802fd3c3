//! Layers: deterministic layer tar writing (diff of a directory against its parent,
//! whiteouts), safe applying of layer tars, and streaming compression with digests.
//!
//! Overlay snapshots (mounting) live in `overlay`.

pub mod apply;
pub mod capture;
pub mod compress;
pub mod diff;
pub mod digest;
pub mod error;
pub mod layout;
pub mod lease;
pub mod lookup;
pub mod overlay;
pub mod snapshots;
pub mod squash;
pub mod tarwrite;

pub use apply::{ApplyOptions, ApplyStats, apply_layer};
pub use compress::{Compression, Decoder, Encoder, LayerDigests, write_layer};
pub use diff::{DiffOptions, write_diff};
pub use digest::{ChunkWriter, Digest, HashingReader, HashingWriter};
pub use error::Error;

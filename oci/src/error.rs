//! The crate's error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    #[error("invalid reference format: {0:?}")]
    InvalidReference(String),
    /// A tag was to be made from a reference with a digest (`name@sha256:...`), which
    /// docker refuses with these words.
    #[error("refusing to create a tag with a digest reference: {0}")]
    DigestTag(String),
    #[error("invalid image config: {0}")]
    BadConfig(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

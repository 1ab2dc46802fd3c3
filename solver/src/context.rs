//! Context checksums.

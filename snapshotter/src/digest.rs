//! Readers and writers that compute sha256 digests (`sha256:<hex>`) on the fly.
//! The [`Digest`] type itself is `rbuild_oci`'s.

use std::io::{self, Read, Write};

pub use rbuild_oci::Digest;
use sha2::{Digest as _, Sha256};

/// A writer that hashes and counts everything written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer, the digest and the size of what went through.
    pub fn finish(self) -> (W, Digest, u64) {
        (
            self.inner,
            Digest::from_sha256(self.hasher.finalize().into()),
            self.count,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The inner reader, the digest and the size of what was read.
    pub fn finish(self) -> (R, Digest, u64) {
        (
            self.inner,
            Digest::from_sha256(self.hasher.finalize().into()),
            self.count,
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Hands what is written on to `send` in chunks of `size` bytes (the last one
/// on `flush`): a writer for one end of a channel to another thread.
pub struct ChunkWriter<F: FnMut(Vec<u8>) -> io::Result<()>> {
    send: F,
    size: usize,
    buf: Vec<u8>,
}

impl<F: FnMut(Vec<u8>) -> io::Result<()>> ChunkWriter<F> {
    pub fn new(size: usize, send: F) -> Self {
        Self {
            send,
            size,
            buf: Vec::with_capacity(size),
        }
    }
}

impl<F: FnMut(Vec<u8>) -> io::Result<()>> Write for ChunkWriter<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.size {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.size));
        (self.send)(full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_writer_matches_one_shot_digest() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello ").unwrap();
        w.write_all(b"world").unwrap();
        let (out, d, n) = w.finish();
        assert_eq!(out, b"hello world");
        assert_eq!(n, 11);
        assert_eq!(d, Digest::of(b"hello world"));
    }
}

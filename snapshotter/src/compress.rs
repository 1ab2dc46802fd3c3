//! Layer compression: gzip (independent gzip members per chunk, compressed in
//! parallel on the rayon pool, header mtime 0, so the output does not depend on the
//! number of threads), zstd (multithreaded), or none; and decompression of
//! gzip, zstd, bzip2 and xz streams detected by their magic bytes.
//!
//! [`write_layer`] streams an uncompressed layer through the compressor and two
//! hashers at once: the diff ID of the uncompressed bytes and the digest of the
//! compressed ones, so a layer is never held in memory.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::thread::JoinHandle;

use crate::digest::{Digest, HashingWriter};

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn oci_layer_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Parses `gzip`, `zstd`, `none` / `uncompressed`.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "gzip" | "gz" => Some(Self::Gzip),
            "zstd" | "zst" => Some(Self::Zstd),
            "none" | "uncompressed" | "tar" => Some(Self::None),
            _ => None,
        }
    }
}

/// The compression formats a stream can be recognised as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Plain,
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

impl Format {
    /// Recognises a stream by its first bytes (at least 6 are needed for xz).
    pub fn detect(magic: &[u8]) -> Self {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Format::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Format::Zstd
        } else if magic.starts_with(b"BZh") {
            Format::Bzip2
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Format::Xz
        } else {
            Format::Plain
        }
    }
}

/// Size of the independent gzip members the parallel encoder cuts its input into.
pub const GZIP_CHUNK: usize = 1 << 20;

/// The gzip level used unless one is asked for (`compression-level=`): see
/// [`gzip_member`] for what each level does with incompressible data.
pub const GZIP_DEFAULT_LEVEL: u32 = 6;

/// The zstd level used unless one is asked for.
pub const ZSTD_DEFAULT_LEVEL: i32 = 3;

/// The levels a compression takes (`compression-level=`), as BuildKit's.
pub fn level_range(c: Compression) -> Option<std::ops::RangeInclusive<u32>> {
    match c {
        Compression::None => None,
        Compression::Gzip => Some(0..=9),
        Compression::Zstd => Some(0..=22),
    }
}

/// A compressing writer; [`Encoder::finish`] must be called to write the trailer.
pub enum Encoder<W: Write> {
    None(W),
    Gzip(ParallelGzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// A new encoder at the default level; `threads` is the parallelism to
    /// use (0 = number of CPUs).
    pub fn new(inner: W, compression: Compression, threads: usize) -> io::Result<Self> {
        Self::with_level(inner, compression, None, threads)
    }

    /// A new encoder at `level` (the default when `None`; see [`level_range`]).
    /// The output depends on the input and the level only, never on `threads`.
    pub fn with_level(
        inner: W,
        compression: Compression,
        level: Option<u32>,
        threads: usize,
    ) -> io::Result<Self> {
        let threads = if threads == 0 {
            rayon::current_num_threads()
        } else {
            threads
        };
        Ok(match compression {
            Compression::None => Encoder::None(inner),
            Compression::Gzip => Encoder::Gzip(ParallelGzEncoder::new(
                inner,
                threads,
                level.unwrap_or(GZIP_DEFAULT_LEVEL).min(9),
            )),
            Compression::Zstd => {
                let level = match level {
                    None | Some(0) => ZSTD_DEFAULT_LEVEL,
                    Some(l) => i32::try_from(l.min(22)).unwrap_or(ZSTD_DEFAULT_LEVEL),
                };
                let mut e = zstd::stream::write::Encoder::new(inner, level)?;
                // Always the multithreaded mode (even with one worker): its output depends
                // on the job size, not on the number of workers, so every machine agrees.
                e.multithread(u32::try_from(threads).unwrap_or(1).max(1))?;
                // Small jobs keep memory bounded (the default is several MiB per worker).
                e.set_parameter(zstd::stream::raw::CParameter::JobSize(1 << 20))?;
                e.include_checksum(false)?;
                Encoder::Zstd(e)
            }
        })
    }

    /// Writes any trailer and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(g) => g.finish(),
            Encoder::Zstd(z) => z.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(g) => g.write(buf),
            Encoder::Zstd(z) => z.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(g) => g.flush(),
            Encoder::Zstd(z) => z.flush(),
        }
    }
}

/// gzip on several threads: the input is cut into [`GZIP_CHUNK`]-byte pieces, each
/// compressed as its own gzip member (mtime 0, no name) on the rayon pool while the
/// caller keeps producing input; members are written in order. Every gzip reader
/// (Go's, zlib's, Python's) reads a multi-member stream as one. At most
/// `threads + 1` chunks are in flight, so memory stays bounded.
pub struct ParallelGzEncoder<W: Write> {
    inner: W,
    in_flight: std::collections::VecDeque<std::sync::mpsc::Receiver<io::Result<Vec<u8>>>>,
    current: Vec<u8>,
    max_in_flight: usize,
    threads: usize,
    level: u32,
    wrote_any: bool,
}

impl<W: Write> ParallelGzEncoder<W> {
    pub fn new(inner: W, threads: usize, level: u32) -> Self {
        Self {
            inner,
            in_flight: std::collections::VecDeque::new(),
            current: Vec::with_capacity(GZIP_CHUNK),
            max_in_flight: threads.max(1) + 1,
            threads: threads.max(1),
            level,
            wrote_any: false,
        }
    }

    fn submit(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        self.wrote_any = true;
        if self.threads == 1 {
            let m = gzip_member(&chunk, self.level)?;
            return self.inner.write_all(&m);
        }
        while self.in_flight.len() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let level = self.level;
        rayon::spawn(move || {
            let _ = tx.send(gzip_member(&chunk, level));
        });
        self.in_flight.push_back(rx);
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(rx) = self.in_flight.pop_front() {
            let member = rx
                .recv()
                .map_err(|_| io::Error::other("gzip worker vanished"))??;
            self.inner.write_all(&member)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        if !self.current.is_empty() || !self.wrote_any {
            let last = std::mem::take(&mut self.current);
            self.submit(last)?;
        }
        while !self.in_flight.is_empty() {
            self.write_oldest()?;
        }
        self.inner.flush()?;
        Ok(self.inner)
    }
}

/// One gzip member of `data` at `level`. A chunk of at least
/// [`PROBE_MIN`] bytes that [`incompressible`] judges so is stored (level 0:
/// deflate's stored blocks), at any level: compressing it would cost far more
/// and gain nothing (fast levels even make it larger). The choice depends
/// on the chunk's bytes only, so the output is the same on every machine.
pub fn gzip_member(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let level = if level > 0 && incompressible(data) {
        0
    } else {
        level
    };
    if level == 0 {
        return Ok(stored_gzip_member(data));
    }
    let mut e = flate2::GzBuilder::new().mtime(0).write(
        Vec::with_capacity(data.len() / 2 + 64),
        flate2::Compression::new(level),
    );
    e.write_all(data)?;
    e.finish()
}

/// The largest stored deflate block.
const STORED_BLOCK: usize = 65_535;

/// A gzip member of `data` in stored deflate blocks, written here in one
/// copy: flate2's header for level 0 (mtime 0, no name), 64 KiB - 1 byte
/// blocks, the last one final, CRC-32 and size.
fn stored_gzip_member(data: &[u8]) -> Vec<u8> {
    let blocks = data.len().div_ceil(STORED_BLOCK).max(1);
    let mut out = Vec::with_capacity(10 + data.len() + 5 * blocks + 8);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255]);
    let mut pieces = data.chunks(STORED_BLOCK).peekable();
    if pieces.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(p) = pieces.next() {
        let last = pieces.peek().is_none();
        let len = u16::try_from(p.len()).expect("a stored block is at most 65535 bytes");
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(p);
    }
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE: the size modulo 2^32 (a chunk is far smaller).
    out.extend_from_slice(&(u32::try_from(data.len() & 0xffff_ffff).unwrap_or(0)).to_le_bytes());
    out
}

/// The smallest chunk [`incompressible`] judges (smaller ones are compressed).
pub const PROBE_MIN: usize = 64 * 1024;

/// Whether `data` (at least [`PROBE_MIN`] bytes) looks incompressible: four
/// 4 KiB samples a quarter of it apart, deflated together at level 2
/// (dynamic Huffman codes, so text of few symbols counts as compressible),
/// do not shrink below 95 %. Random and already compressed data (packed
/// archives, media) is; text, code and binaries are not.
fn incompressible(data: &[u8]) -> bool {
    const SAMPLE: usize = 4096;
    if data.len() < PROBE_MIN {
        return false;
    }
    let mut c = flate2::Compress::new(flate2::Compression::new(2), false);
    let mut out = Vec::with_capacity(8 * SAMPLE);
    for i in 0..4 {
        let at = i * (data.len() / 4);
        let sample = &data[at..at + SAMPLE];
        let before = c.total_in();
        if c.compress_vec(sample, &mut out, flate2::FlushCompress::None)
            .is_err()
            || c.total_in() - before != SAMPLE as u64
        {
            return false;
        }
    }
    match c.compress_vec(&[], &mut out, flate2::FlushCompress::Finish) {
        Ok(flate2::Status::StreamEnd) => out.len() * 100 >= 4 * SAMPLE * 95,
        _ => false,
    }
}

impl<W: Write> Write for ParallelGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = GZIP_CHUNK - self.current.len();
        let n = room.min(buf.len());
        self.current.extend_from_slice(&buf[..n]);
        if self.current.len() == GZIP_CHUNK {
            let full = std::mem::replace(&mut self.current, Vec::with_capacity(GZIP_CHUNK));
            self.submit(full)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Members are cut at fixed offsets only, so flushing never changes the output.
        self.inner.flush()
    }
}

/// A decompressing reader chosen from the stream's magic bytes.
pub struct Decoder {
    inner: Box<dyn Read + Send>,
    format: Format,
}

impl Decoder {
    /// Wraps `r`, detecting plain, gzip, zstd, bzip2 or xz.
    pub fn new<R: Read + Send + 'static>(r: R) -> io::Result<Self> {
        let mut br = BufReader::with_capacity(256 * 1024, r);
        let magic = fill_at_least(&mut br, 6)?;
        let format = Format::detect(&magic);
        let inner: Box<dyn Read + Send> = match format {
            Format::Plain => Box::new(br),
            Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(br)),
            Format::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(br)?),
            Format::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(br)),
            Format::Xz => Box::new(XzReader::spawn(br)),
        };
        Ok(Self { inner, format })
    }

    /// What the stream was recognised as.
    pub fn format(&self) -> Format {
        self.format
    }
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

fn fill_at_least<R: Read>(br: &mut BufReader<R>, n: usize) -> io::Result<Vec<u8>> {
    // BufReader::fill_buf may return fewer bytes than available; peek by reading
    // into the buffer until it holds n bytes or the stream ends.
    loop {
        let avail = br.buffer().len();
        if avail >= n {
            return Ok(br.buffer()[..n].to_vec());
        }
        if avail == 0 {
            let got = br.fill_buf()?.len();
            if got == 0 {
                return Ok(Vec::new());
            }
            continue;
        }
        // A short buffer: the stream is either tiny or split oddly; what we have is
        // enough to decide for everything but xz.
        return Ok(br.buffer().to_vec());
    }
}

/// xz through lzma-rs, which decodes into a writer: run it on a thread feeding a
/// bounded channel, and report its error (not a silent end of stream) at the end.
struct XzReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    worker: Option<JoinHandle<io::Result<()>>>,
}

struct ChanWriter(std::sync::mpsc::SyncSender<Vec<u8>>);

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "xz reader dropped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl XzReader {
    fn spawn<R: BufRead + Send + 'static>(mut input: R) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let worker = std::thread::spawn(move || {
            let mut w = io::BufWriter::with_capacity(128 * 1024, ChanWriter(tx));
            lzma_rs::xz_decompress(&mut input, &mut w)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("xz: {e}")))?;
            w.flush()
        });
        Self {
            rx,
            buf: Vec::new(),
            pos: 0,
            worker: Some(worker),
        }
    }
}

impl Read for XzReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            if let Ok(chunk) = self.rx.recv() {
                self.buf = chunk;
                self.pos = 0;
            } else {
                if let Some(w) = self.worker.take() {
                    match w.join() {
                        Ok(r) => r?,
                        Err(_) => return Err(io::Error::other("xz decoder thread panicked")),
                    }
                }
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The two digests of a written layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDigests {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Size of the uncompressed tar stream.
    pub uncompressed_size: u64,
    /// sha256 of the bytes written to the output.
    pub digest: Digest,
    /// Size of the bytes written to the output.
    pub size: u64,
}

/// Streams `produce`'s uncompressed tar output through `compression` into `out`,
/// computing the diff ID and the compressed digest in the same pass.
pub fn write_layer<W, F>(
    out: W,
    compression: Compression,
    threads: usize,
    produce: F,
) -> io::Result<(W, LayerDigests)>
where
    W: Write,
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    write_layer_at(out, compression, None, threads, produce)
}

/// [`write_layer`] at a compression level (the default when `None`).
pub fn write_layer_at<W, F>(
    out: W,
    compression: Compression,
    level: Option<u32>,
    threads: usize,
    produce: F,
) -> io::Result<(W, LayerDigests)>
where
    W: Write,
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let outer = HashingWriter::new(out);
    let enc = Encoder::with_level(outer, compression, level, threads)?;
    let mut inner = HashingWriter::new(io::BufWriter::with_capacity(256 * 1024, enc));
    produce(&mut inner)?;
    let (buf, diff_id, uncompressed_size) = inner.finish();
    let enc = buf.into_inner().map_err(io::IntoInnerError::into_error)?;
    let outer = enc.finish()?;
    let (out, digest, size) = outer.finish();
    Ok((
        out,
        LayerDigests {
            diff_id,
            uncompressed_size,
            digest,
            size,
        },
    ))
}

/// Compresses `produce`'s output into `out` at `level` (the default when
/// `None`), hashing only the compressed bytes: (out, digest, size). For data
/// whose diff ID is known and checked where it is read (the store's blobs),
/// so the uncompressed bytes are not hashed a second time.
pub fn compress_known<W, F>(
    out: W,
    compression: Compression,
    level: Option<u32>,
    threads: usize,
    produce: F,
) -> io::Result<(W, Digest, u64)>
where
    W: Write,
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let enc = Encoder::with_level(HashingWriter::new(out), compression, level, threads)?;
    let mut buf = io::BufWriter::with_capacity(256 * 1024, enc);
    produce(&mut buf)?;
    let enc = buf.into_inner().map_err(io::IntoInnerError::into_error)?;
    Ok(enc.finish()?.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        // Half compressible, half pseudo-random.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|i| {
                if (i / 4096) % 2 == 0 {
                    u8::try_from(i % 7).unwrap()
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()[0]
                }
            })
            .collect()
    }

    #[test]
    fn parallel_gzip_round_trips_and_does_not_depend_on_thread_count() {
        let data = sample(3 * GZIP_CHUNK + 1234);
        let mut outs = Vec::new();
        for threads in [1, 2, 4] {
            let mut e = Encoder::new(Vec::new(), Compression::Gzip, threads).unwrap();
            e.write_all(&data).unwrap();
            outs.push(e.finish().unwrap());
        }
        assert_eq!(outs[0], outs[1]);
        assert_eq!(outs[0], outs[2]);
        let mut back = Vec::new();
        Decoder::new(io::Cursor::new(outs[0].clone()))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // gzip header: mtime field (bytes 4..8) is zero.
        assert_eq!(&outs[0][4..8], &[0, 0, 0, 0]);
    }

    #[test]
    fn incompressible_chunks_are_stored_and_the_bytes_do_not_depend_on_threads() {
        // A random chunk, a text chunk, a random one, and a short tail.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut random = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()[0]
                })
                .collect()
        };
        let text: Vec<u8> = b"layer digest store image\n"
            .iter()
            .copied()
            .cycle()
            .take(GZIP_CHUNK)
            .collect();
        let mut data = random(GZIP_CHUNK);
        data.extend_from_slice(&text);
        data.extend(random(GZIP_CHUNK));
        data.extend(random(1000));
        for level in [1, 2, GZIP_DEFAULT_LEVEL, 9] {
            let mut outs = Vec::new();
            for threads in [1, 2, 3, 8] {
                let mut e =
                    Encoder::with_level(Vec::new(), Compression::Gzip, Some(level), threads)
                        .unwrap();
                e.write_all(&data).unwrap();
                outs.push(e.finish().unwrap());
            }
            assert!(outs.iter().all(|o| *o == outs[0]), "level {level}");
            let mut back = Vec::new();
            Decoder::new(io::Cursor::new(outs[0].clone()))
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data);
            // The random chunks are stored: the first member is the chunk
            // plus deflate's stored-block framing and gzip's header and trailer.
            let first = gzip_member(&data[..GZIP_CHUNK], level).unwrap();
            assert!(first.len() > GZIP_CHUNK, "level {level}: {}", first.len());
            assert!(
                first.len() < GZIP_CHUNK + 200,
                "level {level}: {}",
                first.len()
            );
            assert_eq!(first[3], 0, "no name or extra field");
            // Text is compressed.
            let text_member = gzip_member(&text, level).unwrap();
            assert!(text_member.len() < GZIP_CHUNK / 20, "level {level}");
        }
        assert!(incompressible(&random(GZIP_CHUNK)));
        assert!(!incompressible(&text));
        assert!(
            !incompressible(&random(PROBE_MIN - 1)),
            "too small to judge"
        );
    }

    #[test]
    fn stored_members_decode_and_have_zlibs_header_and_trailer() {
        for n in [0, 1, 65_534, 65_535, 65_536, 3 * 65_535, GZIP_CHUNK + 3] {
            let data: Vec<u8> = (0..n).map(|i| u8::try_from(i * 7 % 251).unwrap()).collect();
            let ours = stored_gzip_member(&data);
            let mut e = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::new(0));
            e.write_all(&data).unwrap();
            let zlib = e.finish().unwrap();
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&ours[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "{n}");
            let blocks = n.div_ceil(STORED_BLOCK).max(1);
            assert_eq!(ours.len(), 10 + n + 5 * blocks + 8, "{n}");
            assert_eq!(ours[..10], zlib[..10], "{n}: the same header");
            assert_eq!(
                ours[ours.len() - 8..],
                zlib[zlib.len() - 8..],
                "{n}: trailer"
            );
        }
    }

    /// Pinned bytes: the gzip of a fixed input at each level has the same
    /// digest on every machine (CPU features, core count) and every build.
    /// A change here changes the digest of every layer rbuild pushes.
    #[test]
    fn gzip_output_is_pinned_per_level() {
        let mut x: u64 = 0x0123_4567_89ab_cdef;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let words = [
            "layer", "digest", "store", "image", "push", "pull", "tar", "gzip",
        ];
        let mut data = Vec::new();
        // Text of varying words (real matching work), random bytes (stored),
        // then bytes of a skewed distribution (Huffman codes only).
        while data.len() < GZIP_CHUNK + 5000 {
            let r = next();
            data.extend_from_slice(words[usize::try_from(r % 8).unwrap()].as_bytes());
            data.push(if r % 13 == 0 { b'\n' } else { b' ' });
        }
        data.extend((0..GZIP_CHUNK).map(|_| next().to_le_bytes()[0]));
        data.extend((0..GZIP_CHUNK / 2).map(|_| (next() % 7 * (next() % 5)).to_le_bytes()[0]));
        let digests: Vec<String> = [1, 2, 6, 9]
            .iter()
            .map(|&level| {
                let mut e =
                    Encoder::with_level(Vec::new(), Compression::Gzip, Some(level), 2).unwrap();
                e.write_all(&data).unwrap();
                Digest::of(&e.finish().unwrap()).to_string()
            })
            .collect();
        assert_eq!(
            digests,
            [
                "sha256:4987ac7eeb847ad0ccb685d0a814daad19545ad0873d84c91bf8e9d163e4afe6",
                "sha256:925af0caf9681c9addef37090699f988acd4b9ce37c5f733be55bc4e5830ac93",
                "sha256:f7c57573d50e48226ec60d6f4e9d9672932f06555ebd9044aa8b1e5d3b4d22ef",
                "sha256:b6c7659fb27b7c8f4f971373800b153501118e7dfe1cf0d5ffe31be17dcd3e82",
            ]
        );
    }

    #[test]
    fn empty_gzip_is_a_valid_stream() {
        let e = Encoder::new(Vec::new(), Compression::Gzip, 2).unwrap();
        let out = e.finish().unwrap();
        let mut back = Vec::new();
        Decoder::new(io::Cursor::new(out.clone()))
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
        assert!(!out.is_empty());
    }

    #[test]
    fn zstd_round_trips_and_is_deterministic() {
        let data = sample(GZIP_CHUNK + 77);
        let a = {
            let mut e = Encoder::new(Vec::new(), Compression::Zstd, 3).unwrap();
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        let b = {
            let mut e = Encoder::new(Vec::new(), Compression::Zstd, 1).unwrap();
            e.write_all(&data).unwrap();
            e.finish().unwrap()
        };
        assert_eq!(a, b);
        let mut back = Vec::new();
        let mut d = Decoder::new(io::Cursor::new(a.clone())).unwrap();
        assert_eq!(d.format(), Format::Zstd);
        d.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn write_layer_reports_both_digests() {
        let data = sample(100_000);
        let (out, d) =
            write_layer(Vec::new(), Compression::Gzip, 2, |w| w.write_all(&data)).unwrap();
        assert_eq!(d.diff_id, Digest::of(&data));
        assert_eq!(d.uncompressed_size, data.len() as u64);
        assert_eq!(d.digest, Digest::of(&out));
        assert_eq!(d.size, out.len() as u64);
        let (out, d) =
            write_layer(Vec::new(), Compression::None, 1, |w| w.write_all(&data)).unwrap();
        assert_eq!(out, data);
        assert_eq!(d.digest, d.diff_id);
    }

    #[test]
    fn compress_known_gives_the_bytes_and_digest_of_write_layer() {
        let data = sample(3 * GZIP_CHUNK + 10);
        let (a, d) = write_layer(Vec::new(), Compression::Gzip, 2, |w| w.write_all(&data)).unwrap();
        let (b, digest, size) = compress_known(Vec::new(), Compression::Gzip, None, 1, |w| {
            w.write_all(&data)
        })
        .unwrap();
        assert_eq!(a, b);
        assert_eq!((d.digest, d.size), (digest, size));
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let data = sample(200_000);
        let mut e = Encoder::new(Vec::new(), Compression::Gzip, 1).unwrap();
        e.write_all(&data).unwrap();
        let out = e.finish().unwrap();
        let cut = &out[..out.len() / 2];
        let mut back = Vec::new();
        assert!(
            Decoder::new(io::Cursor::new(cut.to_vec()))
                .unwrap()
                .read_to_end(&mut back)
                .is_err()
        );
    }
}

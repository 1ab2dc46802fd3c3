//! Single-thread throughput of gzip members per level, with and without the
//! store-incompressible-chunks probe, on random and text data (or a file).
//!     cargo run --release -p rbuild-snapshotter --example gzlevels [FILE]
#![allow(clippy::cast_precision_loss)]
use std::io::Write;
use std::time::Instant;

fn main() {
    let mib = 32usize;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let random: Vec<u8> = (0..mib << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    let words = [
        "alpha", "beta", "gamma", "delta", "layer", "image", "store", "digest",
    ];
    let mut text = Vec::with_capacity(mib << 20);
    let mut i = 0usize;
    while text.len() < mib << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        text.extend_from_slice(words[(x % 8) as usize].as_bytes());
        text.push(if i % 12 == 11 { b'\n' } else { b' ' });
        i += 1;
    }
    text.truncate(mib << 20);
    let file = std::env::args().nth(1).map(|p| std::fs::read(p).unwrap());
    let mut sets = vec![("random", &random), ("text", &text)];
    if let Some(f) = &file {
        sets = vec![("file", f)];
    }
    for (name, data) in sets {
        let mib = data.len() >> 20;
        for level in [0u32, 1, 2, 3, 4, 6] {
            for probe in [false, true] {
                let t0 = Instant::now();
                let mut out = 0usize;
                for c in data.chunks(1 << 20) {
                    out += if probe {
                        rbuild_snapshotter::compress::gzip_member(c, level)
                            .unwrap()
                            .len()
                    } else {
                        let mut e = flate2::GzBuilder::new().mtime(0).write(
                            Vec::with_capacity(c.len() + 1024),
                            flate2::Compression::new(level),
                        );
                        e.write_all(c).unwrap();
                        e.finish().unwrap().len()
                    };
                }
                let s = t0.elapsed().as_secs_f64();
                println!(
                    "{name:6} level {level} probe {probe:5}: {:6.0} MB/s ratio {:.3}",
                    (mib as f64) * 1.048_576 / s,
                    out as f64 / data.len() as f64
                );
            }
        }
        let t0 = Instant::now();
        let mut h = sha2::Sha256::default();
        sha2::Digest::update(&mut h, data);
        let _ = sha2::Digest::finalize(h);
        println!(
            "{name:6} sha256: {:6.0} MB/s",
            (mib as f64) * 1.048_576 / t0.elapsed().as_secs_f64()
        );
    }
}

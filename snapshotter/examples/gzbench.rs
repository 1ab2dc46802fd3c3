//! Throughput of the parallel gzip encoder on 1..N threads (in memory, no I/O).
//!     cargo run --release -p rbuild-snapshotter --example gzbench [MIB]
use std::io::Write;
use std::time::Instant;

use rbuild_snapshotter::{Compression, Encoder};

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    // Half incompressible, half text, in 64 KiB runs.
    let data: Vec<u8> = (0..mib << 20)
        .map(|i| {
            if (i >> 16) % 2 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            } else {
                b"the quick brown fox jumps over the lazy dog\n"[i % 44]
            }
        })
        .collect();
    for threads in [1, 2, rayon::current_num_threads().max(2)] {
        let t0 = Instant::now();
        let mut e = Encoder::new(std::io::sink(), Compression::Gzip, threads).unwrap();
        for c in data.chunks(256 << 10) {
            e.write_all(c).unwrap();
        }
        e.finish().unwrap();
        let s = t0.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let mbs = (mib as f64) * 1.048_576 / s;
        println!("gzip, {threads} thread(s): {s:.2} s, {mbs:.0} MB/s");
    }
}

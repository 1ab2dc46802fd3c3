//! Time cache-index writes and reads:
//! `cargo run -p rbuild-solver --example indexbench -- STATE_DIR [N]`.

use std::time::Instant;

use rbuild_ops::CacheKey;
use rbuild_solver::{CacheIndex, CacheRecord, ResultRef};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(state) = args.next() else {
        eprintln!("usage: indexbench STATE_DIR [N]");
        std::process::exit(2);
    };
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100);
    let index = match CacheIndex::open(state.as_ref()) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("indexbench: {e}");
            std::process::exit(1);
        }
    };
    let keys: Vec<CacheKey> = (0..n)
        .map(|i| CacheKey::from(blake3::hash(&i.to_le_bytes())))
        .collect();
    let start = Instant::now();
    for k in &keys {
        index
            .put(&CacheRecord::new(*k, ResultRef::new("snapshot"), "bench"))
            .expect("put");
    }
    let put = start.elapsed();
    let start = Instant::now();
    for k in &keys {
        assert!(index.get(k).expect("get").is_some());
    }
    let get = start.elapsed();
    println!(
        "{n} puts in {:.1} ms ({:.3} ms each), {n} gets in {:.1} ms",
        put.as_secs_f64() * 1e3,
        put.as_secs_f64() * 1e3 / f64::from(u32::try_from(n).unwrap_or(u32::MAX)),
        get.as_secs_f64() * 1e3
    );
}

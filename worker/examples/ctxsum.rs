//! Checksum a directory as a COPY of `.` would, and show what it cost:
//! `cargo run -p rbuild-solver --example ctxsum -- DIR STATE_DIR`.

use std::time::Instant;

use rbuild_ops::Selection;
use rbuild_worker::context::{ContextChecksummer, NoFilter};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(state)) = (args.next(), args.next()) else {
        eprintln!("usage: ctxsum DIR STATE_DIR");
        std::process::exit(2);
    };
    let start = Instant::now();
    let result = ContextChecksummer::open(dir.as_ref(), Some(state.as_ref())).and_then(|c| {
        let sum = c.checksum(&Selection::all(), &NoFilter)?;
        Ok((sum, c.stats()))
    });
    match result {
        Ok((sum, stats)) => println!(
            "{sum} in {:.3}s: {} files read ({} bytes), {} from cache",
            start.elapsed().as_secs_f64(),
            stats.files_read,
            stats.bytes_read,
            stats.cache_hits
        ),
        Err(e) => {
            eprintln!("ctxsum: {e}");
            std::process::exit(1);
        }
    }
}

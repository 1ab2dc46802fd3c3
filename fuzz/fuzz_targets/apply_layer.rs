//! Applies arbitrary bytes as a layer tar (header checksums fixed so that
//! mutations reach the applier), both as a plain layer and as an overlay upper,
//! in a private arena: a tmpfs in the worker thread's own mount namespace, chrooted
//! into, with a bait tree beside the target (see
//! snapshotter/tests/apply_harness). Nothing may panic, hang, change the bait or
//! land outside the target. Needs root. The corpus in corpus/apply_layer is
//! replayed by `cargo test` (snapshotter/tests/apply_corpus.rs).
#![no_main]

#[path = "../../snapshotter/tests/apply_harness/mod.rs"]
mod apply_harness;

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static ARENA: OnceLock<apply_harness::Arena> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let arena = ARENA.get_or_init(apply_harness::Arena::new);
    if let Err(e) = arena.run(data) {
        panic!("{e}");
    }
});

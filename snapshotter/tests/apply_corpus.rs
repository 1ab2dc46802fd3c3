//! Replays every input of the `apply_layer` fuzz corpus (`fuzz/corpus/apply_layer`)
//! through the layer applier, both ways, in a private arena (see
//! `apply_harness`): no input may panic, hang, change the bait tree beside the
//! target or put anything outside it. Needs root. Fails when the corpus is missing.

mod apply_harness;

use std::path::Path;
use std::time::{Duration, Instant};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/apply_layer");

#[test]
fn every_fuzz_corpus_input_stays_inside_the_target() {
    let dir = Path::new(CORPUS);
    let mut files: Vec<_> = fs_err::read_dir(dir)
        .unwrap_or_else(|e| panic!("the fuzz corpus is missing ({e}): {CORPUS}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "the fuzz corpus {CORPUS} has {} inputs; expected the committed corpus",
        files.len()
    );
    let arena = apply_harness::Arena::new();
    let start = Instant::now();
    for f in &files {
        let data = fs_err::read(f).unwrap();
        let t = Instant::now();
        if let Err(e) = arena.run(&data) {
            panic!("{}: {e}", f.display());
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{} took {:?}",
            f.display(),
            t.elapsed()
        );
    }
    eprintln!(
        "{} corpus inputs replayed in {:?}",
        files.len(),
        start.elapsed()
    );
}

#[test]
fn the_arena_catches_what_escapes() {
    // The checks must be able to fail: appliers that write through the target's
    // symlink to the bait, or beside the target, are caught.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    b.append_data(&mut h, "lnk/file", &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    assert!(
        apply_harness::fix_checksums(&tar) == tar,
        "a valid tar stays as it is"
    );
    let arena = apply_harness::Arena::new();
    arena.run(&tar).unwrap();
    let e = arena
        .run_with(&tar, |t, _, _| {
            fs_err::write(t.join("lnk/file"), "x").unwrap();
        })
        .unwrap_err();
    assert!(e.contains("the bait changed"), "{e}");
    let e = arena
        .run_with(&tar, |t, _, _| {
            fs_err::write(t.join("up/escaped"), "x").unwrap();
        })
        .unwrap_err();
    assert!(e.contains("outside the target"), "{e}");
    let e = arena.run_with(&tar, |_, _, _| panic!("boom")).unwrap_err();
    assert!(e.contains("boom"), "{e}");
}

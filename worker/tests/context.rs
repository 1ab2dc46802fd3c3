//! Context checksums: what changes the checksum, what does not, and that an
//! unchanged context is not re-read.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rbuild_ops::Selection;
use rbuild_worker::context::{ContextChecksummer, ContextError, NoFilter};

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn sample(root: &Path) {
    write(root, "a.txt", "alpha");
    write(root, "b.txt", "beta");
    write(root, "src/main.rs", "fn main() {}");
    write(root, "src/lib/mod.rs", "pub mod x;");
    write(root, "docs/readme.md", "docs");
}

/// Files written just now are "racily clean" and not cached; wait past the
/// margin so the cache may keep them (not a timing assertion).
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

fn sum(root: &Path, state: &Path, sel: &Selection) -> (String, u64) {
    let c = ContextChecksummer::open(root, Some(state)).unwrap();
    let s = c.checksum(sel, &NoFilter).unwrap();
    (s.to_hex(), c.stats().files_read)
}

fn wild<S: Into<String>>(paths: impl IntoIterator<Item = S>) -> Selection {
    Selection {
        allow_wildcard: true,
        allow_empty_wildcard: false,
        ..Selection::paths(paths)
    }
}

#[test]
fn second_run_reads_no_file_contents() {
    let ctx = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    sample(ctx.path());
    settle();
    let all = Selection::all();
    let (first, read1) = sum(ctx.path(), state.path(), &all);
    assert_eq!(read1, 5, "first run reads every file");
    let (second, read2) = sum(ctx.path(), state.path(), &all);
    assert_eq!(first, second);
    assert_eq!(read2, 0, "second run must answer from the checksum cache");
}

#[test]
fn touch_keeps_checksum_content_change_alters_it() {
    let ctx = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    sample(ctx.path());
    let all = Selection::all();
    let (before, _) = sum(ctx.path(), state.path(), &all);

    // mtime only.
    let f = std::fs::File::options()
        .write(true)
        .open(ctx.path().join("a.txt"))
        .unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(f);
    let (touched, read) = sum(ctx.path(), state.path(), &all);
    assert_eq!(
        before, touched,
        "mtime-only change must not alter the checksum"
    );
    assert!(read >= 1, "the touched file is re-read (its stamp changed)");

    // Same size, different content.
    write(ctx.path(), "a.txt", "ALPHA");
    let (changed, _) = sum(ctx.path(), state.path(), &all);
    assert_ne!(before, changed);
}

#[test]
fn content_change_is_seen_even_when_stamp_is_cached() {
    let ctx = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    sample(ctx.path());
    settle();
    let all = Selection::all();
    let (before, _) = sum(ctx.path(), state.path(), &all);
    write(ctx.path(), "src/main.rs", "fn main() { println!() }");
    let (after, read) = sum(ctx.path(), state.path(), &all);
    assert_ne!(before, after);
    assert_eq!(read, 1, "only the changed file is re-read");
}

#[test]
fn only_selected_paths_count() {
    let ctx = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    sample(ctx.path());
    let sel = Selection::paths(["src"]);
    let (before, _) = sum(ctx.path(), state.path(), &sel);
    write(ctx.path(), "a.txt", "changed outside the selection");
    write(ctx.path(), "new.txt", "new file outside the selection");
    let (after, _) = sum(ctx.path(), state.path(), &sel);
    assert_eq!(before, after);
    write(ctx.path(), "src/lib/new.rs", "inside");
    let (inside, _) = sum(ctx.path(), state.path(), &sel);
    assert_ne!(before, inside, "a new file inside a selected dir counts");
}

#[test]
fn excluded_paths_do_not_count() {
    let ctx = tempfile::tempdir().unwrap();
    sample(ctx.path());
    let filter = |rel: &Path, _is_dir: bool| rel.starts_with("docs") || rel.ends_with("b.txt");
    let c = ContextChecksummer::open(ctx.path(), None).unwrap();
    let before = c.checksum(&Selection::all(), &filter).unwrap();
    write(ctx.path(), "docs/readme.md", "other docs");
    write(ctx.path(), "b.txt", "other beta");
    let after = c.checksum(&Selection::all(), &filter).unwrap();
    assert_eq!(before, after);
    // A literal path that is excluded is "not found", as in BuildKit.
    let err = c
        .checksum(&Selection::paths(["b.txt"]), &filter)
        .unwrap_err();
    assert!(matches!(err, ContextError::NotFound { .. }), "{err}");
}

#[test]
fn metadata_changes_alter_checksum() {
    use std::os::unix::fs::PermissionsExt;
    let ctx = tempfile::tempdir().unwrap();
    sample(ctx.path());
    let c = ContextChecksummer::open(ctx.path(), None).unwrap();
    let all = Selection::all();
    let before = c.checksum(&all, &NoFilter).unwrap();
    std::fs::set_permissions(
        ctx.path().join("a.txt"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let chmod = c.checksum(&all, &NoFilter).unwrap();
    assert_ne!(before, chmod, "mode is part of the checksum");
    std::fs::rename(ctx.path().join("b.txt"), ctx.path().join("c.txt")).unwrap();
    let renamed = c.checksum(&all, &NoFilter).unwrap();
    assert_ne!(chmod, renamed, "the path is part of the checksum");
    std::os::unix::fs::symlink("a.txt", ctx.path().join("link")).unwrap();
    let linked = c.checksum(&all, &NoFilter).unwrap();
    assert_ne!(renamed, linked);
    std::fs::remove_file(ctx.path().join("link")).unwrap();
    std::os::unix::fs::symlink("c.txt", ctx.path().join("link")).unwrap();
    let relinked = c.checksum(&all, &NoFilter).unwrap();
    assert_ne!(linked, relinked, "the link target is part of the checksum");
}

#[test]
fn a_fresh_copy_has_the_same_checksum() {
    let a = tempfile::tempdir().unwrap();
    sample(a.path());
    std::thread::sleep(Duration::from_millis(20));
    let b = tempfile::tempdir().unwrap();
    sample(b.path()); // new inodes, new mtimes
    let sa = ContextChecksummer::open(a.path(), None)
        .unwrap()
        .checksum(&Selection::all(), &NoFilter)
        .unwrap();
    let sb = ContextChecksummer::open(b.path(), None)
        .unwrap()
        .checksum(&Selection::all(), &NoFilter)
        .unwrap();
    assert_eq!(sa, sb);
}

#[test]
fn a_context_checkout_owned_by_another_user_has_the_same_checksum() {
    // Root is needed to give files away; the tests of this crate run as root.
    assert!(
        nix::unistd::geteuid().is_root(),
        "cannot run: chown needs root"
    );
    let a = tempfile::tempdir().unwrap();
    sample(a.path());
    let sum = |owners: bool| {
        let c = ContextChecksummer::open(a.path(), None).unwrap();
        let c = if owners { c } else { c.without_owners() };
        c.checksum(&Selection::all(), &NoFilter).unwrap()
    };
    let (with, without) = (sum(true), sum(false));
    std::os::unix::fs::chown(a.path().join("src/main.rs"), Some(1234), Some(4321)).unwrap();
    // A snapshot's owners are content; a context's are not (copies give 0:0).
    assert_ne!(sum(true), with);
    assert_eq!(sum(false), without);
}

#[test]
fn globs_follow_go_filepath_match() {
    let ctx = tempfile::tempdir().unwrap();
    sample(ctx.path());
    let c = ContextChecksummer::open(ctx.path(), None).unwrap();
    let by_glob = c.checksum(&wild(["*.txt"]), &NoFilter).unwrap();
    let by_name = c
        .checksum(&Selection::paths(["a.txt", "b.txt"]), &NoFilter)
        .unwrap();
    assert_eq!(by_glob, by_name);
    let nested = c.checksum(&wild(["src/*/mod.rs"]), &NoFilter).unwrap();
    let nested_name = c
        .checksum(&Selection::paths(["src/lib/mod.rs"]), &NoFilter)
        .unwrap();
    assert_eq!(nested, nested_name);
    // `*` does not cross `/`.
    let top = c.checksum(&wild(["*.rs"]), &NoFilter);
    assert!(matches!(top, Err(ContextError::NoMatch { .. })), "{top:?}");
    let empty_ok = Selection {
        allow_empty_wildcard: true,
        ..wild(["*.nothing"])
    };
    c.checksum(&empty_ok, &NoFilter).unwrap();
    let bad = c.checksum(&wild(["[a-"]), &NoFilter);
    assert!(
        matches!(bad, Err(ContextError::BadPattern { .. })),
        "{bad:?}"
    );
}

#[test]
fn missing_and_escaping_paths_are_errors() {
    let ctx = tempfile::tempdir().unwrap();
    sample(ctx.path());
    let c = ContextChecksummer::open(ctx.path(), None).unwrap();
    let err = c
        .checksum(&Selection::paths(["nope.txt"]), &NoFilter)
        .unwrap_err();
    assert_eq!(err.to_string(), "\"/nope.txt\": not found");
    let err = c
        .checksum(&Selection::paths(["../x"]), &NoFilter)
        .unwrap_err();
    assert!(matches!(err, ContextError::OutsideContext { .. }), "{err}");
    // `..` inside the context is fine.
    c.checksum(&Selection::paths(["src/../a.txt"]), &NoFilter)
        .unwrap();
}

#[test]
fn followed_symlink_counts_its_target() {
    let ctx = tempfile::tempdir().unwrap();
    sample(ctx.path());
    std::os::unix::fs::symlink("src", ctx.path().join("srclink")).unwrap();
    let c = ContextChecksummer::open(ctx.path(), None).unwrap();
    let sel = Selection {
        follow_symlinks: true,
        ..Selection::paths(["srclink"])
    };
    let before = c.checksum(&sel, &NoFilter).unwrap();
    write(ctx.path(), "src/main.rs", "changed through the link");
    let after = c.checksum(&sel, &NoFilter).unwrap();
    assert_ne!(before, after);
}

#[test]
fn corrupt_cache_file_is_rebuilt() {
    let ctx = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    sample(ctx.path());
    settle();
    let (first, _) = sum(ctx.path(), state.path(), &Selection::all());
    for entry in std::fs::read_dir(state.path().join("context-checksums")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let (second, read) = sum(ctx.path(), state.path(), &Selection::all());
    assert_eq!(first, second);
    assert_eq!(read, 5);
}

#[test]
fn symlinked_directories_on_the_way_are_followed_inside_the_root() {
    let ctx = tempfile::tempdir().unwrap();
    sample(ctx.path());
    std::os::unix::fs::symlink("src", ctx.path().join("alias")).unwrap();
    // An absolute link resolves against the context root, not the host.
    std::os::unix::fs::symlink("/src/lib", ctx.path().join("abs")).unwrap();
    let c = ContextChecksummer::open(ctx.path(), None).unwrap();
    let direct = c
        .checksum(&Selection::paths(["src/main.rs"]), &NoFilter)
        .unwrap();
    let via = c
        .checksum(&Selection::paths(["alias/main.rs"]), &NoFilter)
        .unwrap();
    assert_eq!(direct, via);
    let lib = c
        .checksum(&Selection::paths(["src/lib/mod.rs"]), &NoFilter)
        .unwrap();
    let abs = c
        .checksum(&Selection::paths(["abs/mod.rs"]), &NoFilter)
        .unwrap();
    assert_eq!(lib, abs);
    // A link loop is an error, not a hang.
    std::os::unix::fs::symlink("loop", ctx.path().join("loop")).unwrap();
    let err = c
        .checksum(&Selection::paths(["loop/x"]), &NoFilter)
        .unwrap_err();
    assert!(matches!(err, ContextError::SymlinkLoop { .. }), "{err}");
}

//! The state root's layout and format version, through the binary: every entry
//! a real root holds is one `StateLayout` names (and the README lists), a root
//! without a format stamp (an older rbuild's) is migrated, and a newer or
//! garbled stamp is refused without touching the root.

mod common;

use std::collections::BTreeSet;

use common::{Env, build_env};
use rbuild_engine::layout::{ENTRIES, FORMAT_VERSION};

fn entry_names() -> BTreeSet<String> {
    ENTRIES
        .iter()
        .map(|(e, _)| e.trim_end_matches('/').to_owned())
        .collect()
}

fn top_level(env: &Env) -> BTreeSet<String> {
    fs_err::read_dir(env.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn stamp(env: &Env) -> String {
    fs_err::read_to_string(env.root().join("rbuild-format")).unwrap()
}

#[test]
fn readme_lists_every_entry_of_the_state_root() {
    let readme = fs_err::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md of the project");
    for (name, _) in ENTRIES {
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md does not list `{name}` of the state root"
        );
    }
}

#[test]
fn a_used_root_holds_only_entries_the_layout_names() {
    let env = build_env();
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("f"), "x").unwrap();
    fs_err::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nCOPY f /f\nRUN --mount=type=cache,target=/c echo hi > /c/x && cp /f /g\n",
    )
    .unwrap();
    let ctx_s = ctx.to_str().unwrap();
    env.ok(&["build", "-q", "-t", "app", ctx_s]);
    let out = env.path("app.tar");
    env.ok(&[
        "build",
        "-q",
        "--output",
        &format!("type=docker,dest={}", out.display()),
        ctx_s,
    ]);
    env.ok(&["run", "--rm", "--name", "layout", "app", "true"]);
    env.ok(&["save", "app", "-o", env.path("s.tar").to_str().unwrap()]);
    let names = entry_names();
    let found = top_level(&env);
    let unknown: Vec<_> = found.difference(&names).collect();
    assert!(
        unknown.is_empty(),
        "entries no StateLayout names: {unknown:?}"
    );
    // The ones every build makes are there.
    for must in [
        "rbuild-format",
        "blobs",
        "index.json",
        "snapshots",
        "cache-index",
        "cache-mounts",
        "leases",
        "tmp",
        "rootfs-cache",
        "run-names",
    ] {
        assert!(found.contains(must), "{must} missing from {found:?}");
    }
    assert_eq!(
        stamp(&env),
        format!("rbuild state format {FORMAT_VERSION}\n")
    );
}

#[test]
fn a_root_without_a_stamp_is_migrated_in_place() {
    let env = Env::new();
    let id = env.import_rootfs("old:1", "a");
    // An rbuild from before the stamp wrote this root.
    fs_err::remove_file(env.root().join("rbuild-format")).unwrap();
    let listed = env.ok(&["images", "-q", "--no-trunc"]);
    assert!(listed.contains(&id), "{listed}");
    assert_eq!(
        stamp(&env),
        format!("rbuild state format {FORMAT_VERSION}\n")
    );
    // No temporary stamp left beside it.
    assert!(
        top_level(&env).iter().all(|n| !n.contains(".tmp")),
        "{:?}",
        top_level(&env)
    );
}

#[test]
fn a_newer_format_is_refused_and_left_as_it_is() {
    let env = Env::new();
    env.import_rootfs("new:1", "a");
    let stamp_path = env.root().join("rbuild-format");
    fs_err::write(&stamp_path, "rbuild state format 99\n").unwrap();
    let before = common::snapshot(&env.root());
    for args in [
        &["images"][..],
        &["image", "prune", "-a", "-f"],
        &["builder", "prune", "-a", "-f"],
        &["system", "df"],
    ] {
        let err = env.fails(args);
        assert!(
            err.contains("has format 99, newer than this rbuild reads"),
            "{args:?}: {err}"
        );
        assert!(err.contains(env.root().to_str().unwrap()), "{err}");
    }
    assert_eq!(
        common::snapshot(&env.root()),
        before,
        "the root was changed"
    );
}

#[test]
fn a_garbled_stamp_is_refused() {
    let env = Env::new();
    env.import_rootfs("g:1", "a");
    fs_err::write(env.root().join("rbuild-format"), "{\"version\": 2}").unwrap();
    let err = env.fails(&["images"]);
    assert!(err.contains("is not an rbuild format stamp"), "{err}");
}

/// Inode numbers of the files in `dir`, by name.
fn inodes(dir: &std::path::Path) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<(String, u64)> = fs_err::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_no_op_rebuild_rewrites_no_snapshot_layer_record() {
    let env = build_env();
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("f"), "x").unwrap();
    fs_err::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nCOPY f /f\nRUN echo a > /a\nRUN echo b > /b\n",
    )
    .unwrap();
    let ctx_s = ctx.to_str().unwrap();
    env.ok(&["build", "-q", "-t", "app", ctx_s]);
    let dir = env.root().join("snaplayers/sha256");
    let before = inodes(&dir);
    assert!(before.len() >= 3, "{before:?}");
    env.ok(&["build", "-q", "-t", "app", ctx_s]);
    assert_eq!(inodes(&dir), before, "records were rewritten");
    // And the image still reads back.
    env.ok(&["save", "app", "-o", env.path("app.tar").to_str().unwrap()]);
}

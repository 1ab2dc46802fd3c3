//! Garbage collection of the build cache (`builder prune`, `system df`,
//! `system prune`) through the binary.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Env, build_env};

/// `du -s` of a directory, in KiB (blocks, hard links once).
fn du_kib(p: &Path) -> u64 {
    let o = Command::new("du")
        .arg("-sk")
        .arg(p)
        .output()
        .unwrap_or_else(|e| panic!("du is missing: install coreutils ({e})"));
    assert!(o.status.success(), "du failed");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A context whose Dockerfile writes `size` random bytes in a RUN (its own
/// file name, so every image has its own steps).
fn context(env: &Env, name: &str, size: usize) -> String {
    let dir = env.path(name);
    fs_err::create_dir_all(&dir).unwrap();
    fs_err::write(dir.join("f"), name).unwrap();
    fs_err::write(
        dir.join("Dockerfile"),
        format!("FROM busybox\nCOPY f /f-{name}\nRUN head -c {size} /dev/urandom > /g-{name}\n"),
    )
    .unwrap();
    dir.to_str().unwrap().to_owned()
}

fn build(env: &Env, ctx: &str, tag: &str) -> String {
    let o = env.run(&["build", "--progress=plain", "-t", tag, ctx]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "build of {ctx} failed: {err}");
    err
}

#[test]
fn builder_prune_all_after_image_prune_all_leaves_a_fresh_root() {
    let env = build_env();
    // The reference: a fresh root with only the base imported.
    let fresh = build_env();
    let fresh_kib = du_kib(&fresh.root());
    for i in 0..20 {
        let ctx = context(&env, &format!("c{i}"), 50_000);
        build(&env, &ctx, &format!("gc{i}"));
    }
    let built_kib = du_kib(&env.root());
    assert!(
        built_kib > fresh_kib + 1000,
        "20 builds should use space: {built_kib} vs {fresh_kib} KiB"
    );
    // Images keep their snapshots: nothing of theirs goes.
    let out = env.ok(&["builder", "prune", "-f"]);
    assert!(out.contains("Total reclaimed space:"), "{out}");
    env.ok(&["run", "gc19", "test", "-s", "/g-c19"]);
    env.ok(&["image", "prune", "-a", "-f"]);
    let out = env.ok(&["builder", "prune", "-a", "-f"]);
    assert!(out.starts_with("Deleted build cache objects:\n"), "{out}");
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("Total reclaimed space: "), "{out}");
    assert!(
        !last.ends_with(" 0B"),
        "builder prune -a reclaimed nothing: {out}"
    );
    let tar = fresh.path("base.tar");
    env.ok(&["import", tar.to_str().unwrap(), "busybox:latest"]);
    let after = du_kib(&env.root());
    assert!(
        after.abs_diff(fresh_kib) <= 1024,
        "after pruning everything the root takes {after} KiB, a fresh one {fresh_kib} KiB"
    );
    // And the root still builds.
    let ctx = context(&env, "again", 10);
    let log = build(&env, &ctx, "again");
    let cached = log.lines().filter(|l| l.contains("CACHED")).count();
    assert!(cached <= 1, "only FROM can be cached: {log}");
}

#[test]
fn keep_storage_keeps_the_most_recently_used_cache() {
    let env = build_env();
    let size = 300_000;
    let ctxs: Vec<String> = (0..5)
        .map(|i| context(&env, &format!("v{i}"), size))
        .collect();
    for (i, c) in ctxs.iter().enumerate() {
        if i == ctxs.len() - 1 {
            // Last-use times have a resolution of seconds.
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        build(&env, c, "gc:last");
    }
    let out = env.ok(&["images", "-q", "--filter", "dangling=true"]);
    assert_eq!(out.lines().count(), 4, "four dangling images: {out}");
    let out = env.ok(&["image", "prune", "-f"]);
    assert!(out.contains("Deleted Images:"), "{out}");
    let out = env.ok(&["images", "-q", "--filter", "dangling=true"]);
    assert_eq!(out.lines().count(), 0, "no dangling images left: {out}");
    env.ok(&["rmi", "gc:last"]);
    // Everything but the base's snapshot and one image's steps must go.
    let snaps = env.root().join("snapshots");
    let total = du_kib(&snaps) * 1024;
    let keep = total - 4 * size as u64 - size as u64 / 2;
    let out = env.ok(&[
        "builder",
        "prune",
        "-f",
        "--keep-storage",
        &keep.to_string(),
    ]);
    assert!(out.starts_with("Deleted build cache objects:\n"), "{out}");
    let after = du_kib(&snaps) * 1024;
    assert!(after <= keep + 64 * 1024, "{after} > {keep}: {out}");
    // The most recently used survived: its rebuild is fully cached.
    let log = build(&env, &ctxs[4], "gc:last");
    let cached = log.lines().filter(|l| l.contains("CACHED")).count();
    assert_eq!(cached, 3, "FROM, COPY and RUN should be CACHED: {log}");
    // The oldest went: its RUN runs again.
    let log = build(&env, &ctxs[0], "gc:first");
    let cached = log.lines().filter(|l| l.contains("CACHED")).count();
    assert_eq!(cached, 1, "only FROM: the oldest cache was pruned: {log}");
}

#[test]
fn a_snapshot_an_image_uses_survives_prune_all() {
    let env = build_env();
    let ctx = context(&env, "kept", 1000);
    build(&env, &ctx, "kept");
    let out = env.ok(&["builder", "prune", "-a", "-f"]);
    assert!(out.contains("Total reclaimed space:"), "{out}");
    let out = env.ok(&["run", "kept", "cat", "/f-kept"]);
    assert_eq!(out, "kept");
    env.ok(&["run", "kept", "test", "-s", "/g-kept"]);
    // Its steps are still cached: the records were kept with their snapshots.
    let log = build(&env, &ctx, "kept");
    assert_eq!(
        log.lines().filter(|l| l.contains("CACHED")).count(),
        3,
        "{log}"
    );
    // Saving it still reads its layers.
    let tar = env.path("kept.tar");
    env.ok(&["save", "-o", tar.to_str().unwrap(), "kept"]);
}

#[test]
fn builder_prune_asks_first_as_docker_does() {
    let env = build_env();
    let ctx = context(&env, "ask", 1000);
    build(&env, &ctx, "ask");
    env.ok(&["rmi", "ask"]);
    let o = env.with_stdin(&["builder", "prune"], b"n\n");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        out.starts_with(
            "WARNING! This will remove all dangling build cache. Are you sure you want to continue? [y/N] "
        ),
        "{out}"
    );
    assert!(!out.contains("Deleted build cache objects"), "{out}");
    // Declined: the cache is still there.
    let log = build(&env, &ctx, "ask");
    assert_eq!(
        log.lines().filter(|l| l.contains("CACHED")).count(),
        3,
        "{log}"
    );
    env.ok(&["rmi", "ask"]);
    let o = env.with_stdin(&["builder", "prune"], b"y\n");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Deleted build cache objects:"), "{out}");
    let log = build(&env, &ctx, "ask");
    assert_eq!(
        log.lines().filter(|l| l.contains("CACHED")).count(),
        1,
        "{log}"
    );
    let err = env.fails(&["builder", "prune", "-f", "--filter", "colour=red"]);
    assert!(err.contains("colour=red"), "{err}");
    let err = env.fails(&["builder", "prune", "-f", "--keep-storage", "lots"]);
    assert!(err.contains("lots"), "{err}");
}

//! Garbage collection of the build cache (`builder prune`, `system df`,
//! `system prune`) through the binary.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Env, build_env};

/// `du` of a directory with `flag` (`-sk`: KiB of blocks; `-sb`: apparent
/// bytes), hard links once.
fn du(p: &Path, flag: &str) -> u64 {
    let o = Command::new("du")
        .arg(flag)
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

/// `du -s` of a directory, in KiB (blocks, hard links once).
fn du_kib(p: &Path) -> u64 {
    du(p, "-sk")
}

/// `du -sb` of a directory: apparent bytes, hard links once.
fn du_bytes(p: &Path) -> u64 {
    du(p, "-sb")
}

/// go-units' `HumanSize` read back (`1.23MB`, `512B`, `4.1kB`).
fn parse_human(s: &str) -> f64 {
    let n = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let v: f64 = s[..n].parse().unwrap_or_else(|_| panic!("size {s:?}"));
    let mult = match &s[n..] {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => panic!("unit {other:?} in {s:?}"),
    };
    v * mult
}

/// The sizes `system df` reports for the whole root (images + local
/// volumes + build cache) against `du -sb` of the root: within 5%.
fn assert_df_matches_du(env: &Env, when: &str) {
    let df = env.ok(&["system", "df"]);
    let mut total = 0.0;
    let mut rows = 0;
    for line in df.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // TYPE may be two words; SIZE is the column before RECLAIMABLE's.
        let (kind, rest) = if cols[0] == "Images" {
            ("Images", &cols[1..])
        } else {
            (line.split("  ").next().unwrap(), &cols[2..])
        };
        assert!(
            ["Images", "Local Volumes", "Build Cache"].contains(&kind),
            "{when}: row {line:?} in\n{df}"
        );
        total += parse_human(rest[2]);
        rows += 1;
    }
    assert_eq!(rows, 3, "{when}: {df}");
    #[allow(clippy::cast_precision_loss)]
    let du = du_bytes(&env.root()) as f64;
    assert!(
        (total - du).abs() <= du * 0.05,
        "{when}: system df says {total} bytes, du -sb {du}:\n{df}"
    );
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
    assert_df_matches_du(&env, "after 20 builds");
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
    assert_df_matches_du(&env, "after pruning everything");
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
    // The four older images' RUN steps must go (3.5 of them over the limit), the newest stays.
    let snaps = env.root().join("snapshots");
    let total = du_bytes(&snaps);
    let keep = total - 3 * size as u64 - size as u64 / 2;
    let out = env.ok(&[
        "builder",
        "prune",
        "-f",
        "--keep-storage",
        &keep.to_string(),
    ]);
    assert!(out.starts_with("Deleted build cache objects:\n"), "{out}");
    let after = du_bytes(&snaps);
    assert!(after <= keep + 64 * 1024, "{after} > {keep}: {out}");
    // The most recently used survived: its rebuild is fully cached.
    let log = build(&env, &ctxs[4], "gc:last");
    let cached = log.lines().filter(|l| l.contains("CACHED")).count();
    assert_eq!(cached, 3, "FROM, COPY and RUN should be CACHED: {log}");
    // The oldest went: its RUN runs again.
    let log = build(&env, &ctxs[0], "gc:first");
    let cached = log.lines().filter(|l| l.contains("CACHED")).count();
    assert!(cached < 3, "the oldest cache was pruned: {log}");
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
    // until=1h: nothing here is that old.
    let out = env.ok(&["builder", "prune", "-f", "--filter", "until=1h"]);
    assert_eq!(out, "Total reclaimed space: 0B\n");
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

#[test]
fn system_prune_and_df_verbose() {
    let env = build_env();
    let ctx = context(&env, "sys", 1000);
    // A cache mount is a local volume.
    let cm = env.path("cm");
    fs_err::create_dir_all(&cm).unwrap();
    fs_err::write(
        cm.join("Dockerfile"),
        "FROM busybox\nRUN --mount=type=cache,target=/c head -c 100000 /dev/urandom > /c/x\n",
    )
    .unwrap();
    build(&env, cm.to_str().unwrap(), "cm");
    build(&env, &ctx, "sys");
    env.ok(&["rmi", "sys"]);
    let df = env.ok(&["system", "df", "-v"]);
    assert!(df.contains("\nBuild cache usage: "), "{df}");
    assert!(df.contains("COPY f /f-sys"), "{df}");
    let volumes = df.lines().find(|l| l.starts_with("Local Volumes")).unwrap();
    assert!(volumes.split_whitespace().nth(2) == Some("1"), "{df}");
    assert_df_matches_du(&env, "with a cache mount");
    // Dangling images and unused cache; images and cache mounts stay.
    let out = env.ok(&["system", "prune", "-f"]);
    assert!(out.contains("Deleted build cache objects:"), "{out}");
    assert!(out.contains("Total reclaimed space: "), "{out}");
    let log = build(&env, &ctx, "sys");
    assert_eq!(
        log.lines().filter(|l| l.contains("CACHED")).count(),
        1,
        "{log}"
    );
    assert!(env.root().join("cache-mounts").read_dir().unwrap().count() > 0);
    // -a: every image (no containers here), all cache, the cache mounts.
    let out = env.ok(&["system", "prune", "-a", "-f"]);
    assert!(out.starts_with("Deleted Images:\n"), "{out}");
    assert_eq!(env.ok(&["images", "-q"]), "");
    let left: Vec<_> = env
        .root()
        .join("cache-mounts")
        .read_dir()
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "cache mounts left: {left:?}");
    assert_df_matches_du(&env, "after system prune -a");
}

#[test]
fn a_build_collects_the_cache_by_the_configured_policy() {
    let env = build_env();
    let size = 300_000;
    let ctxs: Vec<String> = (0..4)
        .map(|i| context(&env, &format!("a{i}"), size))
        .collect();
    // Defaults (a reserve of 10% of the disk): nothing goes.
    for c in &ctxs[..3] {
        build(&env, c, "auto");
    }
    env.ok(&["rmi", "auto"]);
    env.ok(&["image", "prune", "-f"]);
    assert_eq!(
        env.ok(&["images", "-q"]).lines().count(),
        1,
        "the base only"
    );
    let before = du_bytes(&env.root().join("snapshots"));
    // The policy in the file $RBUILD_CONFIG names: at most 1 MiB, no reserve.
    let cfg = env.path("rbuild.toml");
    fs_err::write(
        &cfg,
        "[gc]\nreservedSpace = 0\nmaxUsedSpace = \"1MiB\"\nminFreeSpace = 0\n",
    )
    .unwrap();
    let o = env
        .cmd(&["build", "--progress=plain", "-t", "auto", &ctxs[3]])
        .env("RBUILD_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = du_bytes(&env.root().join("snapshots"));
    assert!(
        after + 2 * size as u64 <= before + size as u64,
        "the build did not collect: {before} -> {after} bytes"
    );
    // The image just built is whole, and so is its cache.
    env.ok(&["run", "auto", "test", "-s", "/g-a3"]);
    let log = build(&env, &ctxs[3], "auto");
    assert_eq!(
        log.lines().filter(|l| l.contains("CACHED")).count(),
        3,
        "{log}"
    );
    // The oldest went.
    let log = build(&env, &ctxs[0], "old");
    assert!(
        log.lines().filter(|l| l.contains("CACHED")).count() < 3,
        "{log}"
    );

    // Unknown keys are errors naming the key, in the state root's file too.
    fs_err::write(&cfg, "[gc]\nkeepBytes = 1\n").unwrap();
    let o = env
        .cmd(&["build", "-t", "x", &ctxs[0]])
        .env("RBUILD_CONFIG", &cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("keepBytes") && err.contains("rbuild.toml"),
        "{err}"
    );
    fs_err::write(env.root().join("config.toml"), "[gcc]\n").unwrap();
    let err = env.fails(&["build", "-t", "x", &ctxs[0]]);
    assert!(err.contains("gcc") && err.contains("config.toml"), "{err}");
    // $RBUILD_CONFIG naming a missing file is an error too.
    let o = env
        .cmd(&["build", "-t", "x", &ctxs[0]])
        .env("RBUILD_CONFIG", env.path("nope.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("nope.toml"), "{err}");
}

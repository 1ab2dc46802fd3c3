//! A build cache shared between machines, through the binary: two state roots
//! (A and B) stand for two machines. Keys must not depend on anything of the
//! machine (state-root or context paths, inode numbers, owners of the
//! checkout, mtimes, snapshot IDs, how the base image came in), read from the
//! JSON progress (`vertex_key` events).
//!
//! Needs root (steps run in the sandbox over overlay mounts) and the busybox base
//! from `testdata/examples/busybox-base.sh`; fails saying what is missing otherwise.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::cache::{
    F2, F3, F4, FROM, MULTI, T2, T3, build_one_mount, multi_context, one_mount_machine,
    only_f4_runs_again,
};
use common::steps::{Machine, Steps, set};

/// `chown -R uid:gid dir`.
fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).unwrap();
    for e in fs_err::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            chown_tree(&p, uid, gid);
        } else {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).unwrap();
        }
    }
}

#[test]
fn keys_are_the_same_on_another_machine() {
    let a = Machine::new();
    let b = Machine::new();
    multi_context(&a, "work/ctx");
    // B: another path, written later (other mtimes, inodes), in another
    // order, owned by another user; its base imported under another name with
    // another config (same layers).
    b.write("elsewhere/deeper/checkout/unused.txt", "u\n");
    b.write("elsewhere/deeper/checkout/app/b.txt", "b1\n");
    b.write("elsewhere/deeper/checkout/app/a.txt", "a1\n");
    b.write("elsewhere/deeper/checkout/tool.txt", "tool one\n");
    b.write(
        "elsewhere/deeper/checkout/Dockerfile",
        &MULTI.replace("FROM busybox", "FROM localhost/base:v2"),
    );
    chown_tree(&b.env.path("elsewhere"), 4321, 4321);
    b.env.ok(&[
        "import",
        &b.p("base.tar"),
        "localhost/base:v2",
        "--change",
        "LABEL rebuilt=elsewhere",
    ]);

    let (sa, id_a) = a.build(&[&a.p("work/ctx")]);
    let (sb, id_b) = b.build(&[&b.p("elsewhere/deeper/checkout")]);
    let steps = Steps::steps(&sa.ran);
    // The two FROMs of the same image are one vertex.
    assert_eq!(steps.len(), 6, "{}", sa.log);
    // The step names differ only by the base's name; compare keys in order.
    let keys = |s: &Steps| -> Vec<String> {
        let mut v: Vec<(String, String)> = s
            .keys
            .iter()
            .filter(|(n, _)| !n.starts_with("[internal]"))
            .map(|(n, k)| {
                (
                    n.replace("localhost/base:v2", "docker.io/library/busybox:latest"),
                    k.clone(),
                )
            })
            .collect();
        v.sort();
        v.into_iter().map(|(n, k)| format!("{n} {k}")).collect()
    };
    assert_eq!(keys(&sa).len(), 6, "every step has a key:\n{}", sa.log);
    assert_eq!(keys(&sa), keys(&sb), "A:\n{}\nB:\n{}", sa.log, sb.log);
    // Different image configs (B's base has a label), so different IDs; the
    // keys are what travels.
    assert_ne!(id_a, id_b);

    // A key does change with what the step reads.
    b.write("elsewhere/deeper/checkout/app/a.txt", "a2\n");
    let (sb2, _) = b.build(&[&b.p("elsewhere/deeper/checkout")]);
    let changed: BTreeSet<String> = keys(&sb)
        .into_iter()
        .collect::<BTreeSet<_>>()
        .difference(&keys(&sb2).into_iter().collect())
        .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
        .collect();
    assert_eq!(
        changed,
        BTreeSet::from([
            "[stage-1 2/4] COPY app/ /app/".to_owned(),
            "[stage-1 3/4] RUN cat /app/*.txt > /app.out".to_owned(),
            "[stage-1 4/4] COPY --from=tools /tool.out /tool.out".to_owned(),
        ]),
        "{}",
        sb2.log
    );
}

/// The blobs of an OCI layout directory and the ones its index reaches.
fn blobs(dir: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut all = BTreeSet::new();
    for e in fs_err::read_dir(dir.join("blobs/sha256")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        all.insert(name);
    }
    let mut reached = BTreeSet::new();
    let read = |hex: &str| -> serde_json::Value {
        serde_json::from_slice(&fs_err::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs_err::read(dir.join("index.json")).unwrap()).unwrap();
    for m in index["manifests"].as_array().unwrap() {
        let hex = m["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        reached.insert(hex.to_owned());
        let manifest = read(hex);
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.rbuild.cache.config.v1+json"
        );
        let chex = manifest["config"]["digest"].as_str().unwrap()[7..].to_owned();
        reached.insert(chex);
        for l in manifest["layers"].as_array().unwrap() {
            reached.insert(l["digest"].as_str().unwrap()[7..].to_owned());
        }
    }
    (all, reached)
}

/// How many snapshots of machine `m` were unpacked from an imported cache's
/// step layers.
fn unpacked_step_layers(m: &Machine) -> usize {
    let dir = m.env.root().join("snapshots");
    fs_err::read_dir(&dir)
        .unwrap()
        .filter_map(|e| fs_err::read_to_string(e.unwrap().path().join("meta.json")).ok())
        .filter(|meta| meta.contains(r#""kind":"cache""#))
        .count()
}

#[test]
fn a_local_cache_in_max_mode_makes_a_fresh_machine_run_nothing() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = a.p("cache");
    let to = format!("type=local,dest={cache},mode=max");
    let (sa, id_a) = a.build(&["--cache-to", &to, &a.p("ctx")]);
    assert!(
        sa.ran
            .iter()
            .any(|n| n == &format!("exporting cache to {cache}")),
        "the export is a step:\n{}",
        sa.log
    );
    let (all, reached) = blobs(Path::new(&cache));
    assert_eq!(all, reached, "every blob is referenced, no other");

    // B: a fresh state root, the same base (saved on A, loaded on B), the
    // context in another place.
    let b = Machine::with_base_of(&a);
    multi_context(&b, "elsewhere/ctx");
    let from = format!("type=local,src={cache}");
    let (sb, id_b) = b.build(&["--cache-from", &from, &b.p("elsewhere/ctx")]);
    assert!(
        sb.ran
            .iter()
            .any(|n| n == &format!("importing cache manifest from {cache}")),
        "the import is a step:\n{}",
        sb.log
    );
    // Every step is cached; only the final result's layers were unpacked
    // (the other stage's results are not needed).
    assert_eq!(
        Steps::steps(&sb.cached),
        set(&[FROM, T2, T3, F2, F3, F4]),
        "{}",
        sb.log
    );
    assert_eq!(Steps::steps(&sb.ran), set(&[]), "{}", sb.log);
    assert_eq!(unpacked_step_layers(&b), 3, "F2, F3 and F4's layers only");
    assert_eq!(id_a, id_b, "the same image ID (A's created time travelled)");
    assert_eq!(b.cat(&id_b, "/app.out"), "a1\nb1\n");
    assert_eq!(b.cat(&id_b, "/tool.out"), "TOOL ONE\n");

    // One file of the final stage changes: from its COPY on, the rest (the
    // other stage) stays cached.
    let b2 = Machine::with_base_of(&a);
    multi_context(&b2, "ctx");
    b2.write("ctx/app/b.txt", "b2\n");
    let (s2, id2) = b2.build(&["--cache-from", &from, &b2.p("ctx")]);
    // The base is answered lazily, then unpacked from B's store when F2 runs.
    assert_eq!(Steps::steps(&s2.cached), set(&[FROM, T2, T3]), "{}", s2.log);
    assert_eq!(
        Steps::steps(&s2.ran),
        set(&[FROM, F2, F3, F4]),
        "{}",
        s2.log
    );
    assert_eq!(b2.cat(&id2, "/app.out"), "a1\nb2\n");
}

#[test]
fn rewriting_a_local_cache_leaves_no_unreferenced_blob() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = a.p("cache");
    let to = format!("type=local,dest={cache},mode=max");
    a.build(&["--cache-to", &to, &a.p("ctx")]);
    let (first, reached) = blobs(Path::new(&cache));
    assert_eq!(first, reached);

    // Other content: the layers of the changed steps are replaced.
    a.write("ctx/app/a.txt", "a2\n");
    a.write("ctx/tool.txt", "tool two\n");
    a.build(&["--cache-to", &to, &a.p("ctx")]);
    let (second, reached) = blobs(Path::new(&cache));
    assert_eq!(second, reached, "every blob left is referenced");
    assert!(
        first.difference(&second).count() >= 3,
        "the old layers and config are gone: {first:?} → {second:?}"
    );
    let temps: Vec<_> = fs_err::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
}

#[test]
fn a_missing_or_corrupt_cache_source_warns_and_builds() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let missing = a.p("no-such-cache");
    let o = a.env.run(&[
        "build",
        "--progress",
        "plain",
        "--cache-from",
        &format!("type=local,src={missing}"),
        &a.p("ctx"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("cache import from {missing} failed")),
        "a warning names the source:\n{err}"
    );

    // A corrupt manifest: the index names a blob whose content is garbage.
    let cache = a.p("cache");
    a.build(&[
        "--cache-to",
        &format!("type=local,dest={cache},mode=max"),
        &a.p("ctx"),
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&fs_err::read(Path::new(&cache).join("index.json")).unwrap())
            .unwrap();
    let m = index["manifests"][0]["digest"].as_str().unwrap()[7..].to_owned();
    fs_err::write(Path::new(&cache).join("blobs/sha256").join(m), b"{garbage").unwrap();
    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    let o = b.env.run(&[
        "build",
        "--progress",
        "plain",
        "--cache-from",
        &format!("type=local,src={cache}"),
        &b.p("ctx"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("cache import from {cache} failed")),
        "{err}"
    );
}

#[test]
fn a_missing_blob_makes_the_step_run() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = a.p("cache");
    a.build(&[
        "--cache-to",
        &format!("type=local,dest={cache},mode=max"),
        &a.p("ctx"),
    ]);
    // The blob of the top layer of the final stage's last step.
    let config = read_config(Path::new(&cache));
    let top = config["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["description"] == F4)
        .unwrap_or_else(|| panic!("no record for {F4}: {config}"))["layer"]
        .as_u64()
        .unwrap();
    let blob = config["layers"][usize::try_from(top).unwrap()]["blob"]
        .as_str()
        .unwrap()[7..]
        .to_owned();
    fs_err::remove_file(Path::new(&cache).join("blobs/sha256").join(blob)).unwrap();
    only_f4_runs_again(&a, &format!("type=local,src={cache}"));
}

/// The cache config of an OCI layout written by `--cache-to type=local`.
fn read_config(dir: &Path) -> serde_json::Value {
    let read = |hex: &str| -> serde_json::Value {
        serde_json::from_slice(&fs_err::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs_err::read(dir.join("index.json")).unwrap()).unwrap();
    let m = read(&index["manifests"][0]["digest"].as_str().unwrap()[7..]);
    read(&m["config"]["digest"].as_str().unwrap()[7..])
}

#[test]
fn a_min_mode_cache_makes_an_unchanged_build_run_nothing() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = a.p("cache");
    let (_, id_a) = a.build(&[
        "--cache-to",
        &format!("type=local,dest={cache},mode=min"),
        &a.p("ctx"),
    ]);
    // Layers for the final result only; every step has its record.
    let config = read_config(Path::new(&cache));
    let records = config["records"].as_array().unwrap();
    let with_layers: Vec<&str> = records
        .iter()
        .filter(|r| r.get("layer").is_some())
        .map(|r| r["description"].as_str().unwrap())
        .collect();
    assert_eq!(with_layers, [F4], "{config}");

    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    let (s, id_b) = b.build(&[
        "--cache-from",
        &format!("type=local,src={cache}"),
        &b.p("ctx"),
    ]);
    assert_eq!(Steps::steps(&s.ran), set(&[]), "{}", s.log);
    assert_eq!(
        Steps::steps(&s.cached),
        set(&[FROM, T2, T3, F2, F3, F4]),
        "{}",
        s.log
    );
    assert_eq!(id_a, id_b);
    assert_eq!(b.cat(&id_b, "/tool.out"), "TOOL ONE\n");
}

#[test]
fn a_machine_that_imported_lazily_exports_the_layers_it_never_unpacked() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let first = a.p("cache1");
    let (_, id_a) = a.build(&[
        "--cache-to",
        &format!("type=local,dest={first},mode=max"),
        &a.p("ctx"),
    ]);

    // B runs nothing and unpacks only the final result, then exports.
    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    let second = b.p("cache2");
    let (s, id_b) = b.build(&[
        "--cache-from",
        &format!("type=local,src={first}"),
        "--cache-to",
        &format!("type=local,dest={second},mode=max"),
        &b.p("ctx"),
    ]);
    assert_eq!(Steps::steps(&s.ran), set(&[]), "{}", s.log);
    assert_eq!(id_a, id_b);
    let (all, reached) = blobs(Path::new(&second));
    assert_eq!(all, reached);
    let config = read_config(Path::new(&second));
    for step in [T2, T3, F2, F3, F4] {
        let has_layers = config["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["description"] == step && r.get("layer").is_some());
        assert!(has_layers, "{step} has its layers in B's export: {config}");
    }

    // C, from B's export only: the other stage comes from layers B copied.
    let c = Machine::with_base_of(&a);
    multi_context(&c, "ctx");
    c.write("ctx/app/b.txt", "b2\n");
    let (s, id) = c.build(&[
        "--cache-from",
        &format!("type=local,src={second}"),
        &c.p("ctx"),
    ]);
    assert_eq!(Steps::steps(&s.ran), set(&[FROM, F2, F3, F4]), "{}", s.log);
    assert!(
        Steps::steps(&s.cached).is_superset(&set(&[T2, T3])),
        "{}",
        s.log
    );
    assert_eq!(c.cat(&id, "/tool.out"), "TOOL ONE\n");
    assert_eq!(c.cat(&id, "/app.out"), "a1\nb2\n");
}

/// Builds with plain progress and `--explain-cache`; returns the
/// `explain-cache:` lines.
fn explain(m: &Machine, args: &[&str]) -> Vec<String> {
    let mut a = vec!["build", "--progress", "plain", "--explain-cache"];
    a.extend_from_slice(args);
    let o = m.env.run(&a);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &err;
    out.lines()
        .filter_map(|l| l.strip_prefix("explain-cache: "))
        .map(ToOwned::to_owned)
        .collect()
}

#[test]
fn explain_cache_names_the_changed_files_and_build_arg() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = a.p("cache");
    a.build(&[
        "--cache-to",
        &format!("type=local,dest={cache},mode=max"),
        &a.p("ctx"),
    ]);
    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    b.write("ctx/app/b.txt", "b2\n");
    let from = format!("type=local,src={cache}");
    let lines = explain(&b, &["--cache-from", &from, &b.p("ctx")]);
    let expected = [
        format!(
            "{F2}: the files it reads from [internal] load build context changed (changed: app/b.txt)"
        ),
        format!("{F3}: its input {F2} changed"),
    ];
    for e in &expected {
        assert!(lines.contains(e), "no {e:?} in {lines:#?}");
    }
    assert!(
        !lines.iter().any(|l| l.starts_with(T2) || l.starts_with(T3)),
        "the cached stage is not explained: {lines:#?}"
    );

    // Files that appear and vanish.
    let c = Machine::with_base_of(&a);
    multi_context(&c, "ctx");
    fs_err::remove_file(c.env.path("ctx/app/a.txt")).unwrap();
    c.write("ctx/app/new.txt", "n\n");
    c.write("ctx/unused.txt", "not read by any step\n");
    let lines = explain(&c, &["--cache-from", &from, &c.p("ctx")]);
    let e = format!(
        "{F2}: the files it reads from [internal] load build context changed (appeared: app/new.txt; vanished: app/a.txt)"
    );
    assert!(lines.contains(&e), "no {e:?} in {lines:#?}");

    // A build arg.
    let args_df = "FROM busybox\nARG VER\nRUN echo $VER > /v\n";
    a.write("arg/Dockerfile", args_df);
    let cache2 = a.p("cache2");
    a.build(&[
        "--build-arg",
        "VER=1",
        "--cache-to",
        &format!("type=local,dest={cache2},mode=max"),
        &a.p("arg"),
    ]);
    b.write("arg/Dockerfile", args_df);
    let from2 = format!("type=local,src={cache2}");
    let lines = explain(
        &b,
        &["--build-arg", "VER=2", "--cache-from", &from2, &b.p("arg")],
    );
    assert_eq!(
        lines,
        ["[2/2] RUN echo 2 > /v: the value of VER (a build arg or ENV) changed"],
        "{lines:#?}"
    );
}

#[test]
fn importing_from_and_exporting_to_the_same_directory_keeps_it_whole() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = a.p("cache");
    let to = format!("type=local,dest={cache},mode=max");
    let from = format!("type=local,src={cache}");
    a.build(&["--cache-to", &to, &a.p("ctx")]);

    // B reads and rewrites the same directory, with one file changed.
    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    b.write("ctx/app/a.txt", "a3\n");
    b.build(&["--cache-from", &from, "--cache-to", &to, &b.p("ctx")]);
    let (all, reached) = blobs(Path::new(&cache));
    assert_eq!(all, reached);

    // C, fresh, from it: nothing runs, and the content is B's.
    let c = Machine::with_base_of(&a);
    multi_context(&c, "ctx");
    c.write("ctx/app/a.txt", "a3\n");
    let (s, id) = c.build(&["--cache-from", &from, &c.p("ctx")]);
    assert_eq!(Steps::steps(&s.ran), set(&[]), "{}", s.log);
    assert_eq!(c.cat(&id, "/app.out"), "a3\nb1\n");
    assert_eq!(c.cat(&id, "/tool.out"), "TOOL ONE\n");
}

/// A RUN that adds a file named after `$N` to two cache mounts (one
/// `locked`, with an entry owned by 1234:1234) and lists what they hold.
const MOUNTS: &str = "FROM busybox\n\
ARG N\n\
RUN --mount=type=cache,id=pkgs,target=/var/cache/pkgs,sharing=locked \
--mount=type=cache,target=/root/.cache \
echo $N > /var/cache/pkgs/from-$N && mkdir -p /var/cache/pkgs/sub && echo deep > /var/cache/pkgs/sub/f \
&& chown 1234:1234 /var/cache/pkgs/sub/f && touch /root/.cache/seen-$N \
&& ls /var/cache/pkgs > /pkgs && ls /root/.cache > /home-cache \
&& stat -c %u:%g /var/cache/pkgs/sub/f > /owner\n";

/// The cache mounts of machine `m` (directory names under its state root).
fn cache_mount_dirs(m: &Machine) -> BTreeSet<String> {
    let dir = m.env.root().join("cache-mounts");
    let Ok(rd) = fs_err::read_dir(&dir) else {
        return BTreeSet::new();
    };
    rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| Path::new(n).extension().is_none_or(|x| x != "lock") && !n.starts_with('.'))
        .collect()
}

#[test]
fn cache_mounts_travel_only_with_cache_mounts_true() {
    let ma = Machine::new();
    ma.write("m/Dockerfile", MOUNTS);
    let cache = ma.p("cache");
    let (steps, _) = ma.build(&[
        "--build-arg",
        "N=a",
        "--cache-to",
        &format!("type=local,dest={cache},mode=max,cache-mounts=true"),
        &ma.p("m"),
    ]);
    assert!(
        steps.ran.iter().any(|n| n.contains("RUN --mount")),
        "{}",
        steps.log
    );
    let config = read_config(Path::new(&cache));
    let mounts = config["cache_mounts"].as_array().expect("cache_mounts");
    let ids: BTreeSet<&str> = mounts.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from(["/root/.cache", "pkgs"]), "{config}");
    let (all, reached) = blobs(Path::new(&cache));
    assert_eq!(all, reached, "the mounts' blobs are layers of the manifest");
    for m in mounts {
        assert!(
            reached.contains(&m["blob"].as_str().unwrap()[7..]),
            "{config}"
        );
    }

    // B imports with cache-mounts=true; its RUN (another N: it runs) sees
    // A's files, owners kept.
    let mb = Machine::with_base_of(&ma);
    mb.write("m/Dockerfile", MOUNTS);
    let from_mounts = format!("type=local,src={cache},cache-mounts=true");
    let (steps, id) = mb.build(&[
        "--build-arg",
        "N=b",
        "--cache-from",
        &from_mounts,
        &mb.p("m"),
    ]);
    assert!(
        steps.ran.iter().any(|n| n.contains("RUN --mount")),
        "{}",
        steps.log
    );
    assert_eq!(mb.cat(&id, "/pkgs"), "from-a\nfrom-b\nsub\n");
    assert_eq!(mb.cat(&id, "/home-cache"), "seen-a\nseen-b\n");
    assert_eq!(mb.cat(&id, "/owner"), "1234:1234\n");

    // Lazily: only the mounts of steps that run are seeded.
    let mc = one_mount_machine(Some(&ma));
    let (_, id) = build_one_mount(&mc, "c", &["--cache-from", &from_mounts]);
    assert_eq!(mc.cat(&id, "/pkgs"), "from-a\nfrom-c\nsub\n");
    let dirs = cache_mount_dirs(&mc);
    assert_eq!(dirs.len(), 1, "only pkgs was seeded: {dirs:?}");
    assert!(dirs.iter().all(|dir| dir.starts_with("pkgs-")), "{dirs:?}");

    // A cache mount that exists here is kept as it is: C's pkgs (seeded,
    // then written by C) does not take A's content again.
    let (_, id) = build_one_mount(&mc, "c2", &["--cache-from", &from_mounts]);
    assert_eq!(mc.cat(&id, "/pkgs"), "from-a\nfrom-c\nfrom-c2\nsub\n");
    let md = one_mount_machine(Some(&ma));
    build_one_mount(&md, "d", &[]);
    let (_, id) = build_one_mount(&md, "d2", &["--cache-from", &from_mounts]);
    assert_eq!(
        md.cat(&id, "/pkgs"),
        "from-d\nfrom-d2\n",
        "D's own mount is kept"
    );

    // Without the option on --cache-from, nothing of the mounts travels.
    let me = Machine::with_base_of(&ma);
    me.write("m/Dockerfile", MOUNTS);
    let from = format!("type=local,src={cache}");
    let (_, id) = me.build(&["--build-arg", "N=e", "--cache-from", &from, &me.p("m")]);
    assert_eq!(me.cat(&id, "/pkgs"), "from-e\nsub\n");
    assert_eq!(me.cat(&id, "/home-cache"), "seen-e\n");

    // Without it on --cache-to, the cache holds no mount.
    let plain = ma.p("plain");
    ma.build(&[
        "--build-arg",
        "N=a2",
        "--cache-to",
        &format!("type=local,dest={plain},mode=max"),
        &ma.p("m"),
    ]);
    let config = read_config(Path::new(&plain));
    assert!(config.get("cache_mounts").is_none(), "{config}");
    let mf = Machine::with_base_of(&ma);
    mf.write("m/Dockerfile", MOUNTS);
    let (_, id) = mf.build(&[
        "--build-arg",
        "N=f",
        "--cache-from",
        &format!("type=local,src={plain},cache-mounts=true"),
        &mf.p("m"),
    ]);
    assert_eq!(mf.cat(&id, "/pkgs"), "from-f\nsub\n");
}

#[test]
fn cache_mounts_are_carried_over_by_a_machine_that_ran_nothing() {
    let a = one_mount_machine(None);
    let first = a.p("first");
    let to = format!("type=local,dest={first},mode=max,cache-mounts=true");
    build_one_mount(&a, "a", &["--cache-to", &to]);
    // B: everything cached, no mount made here; its export carries A's.
    let b = one_mount_machine(Some(&a));
    let second = b.p("second");
    let (s, _) = build_one_mount(
        &b,
        "a",
        &[
            "--cache-from",
            &format!("type=local,src={first},cache-mounts=true"),
            "--cache-to",
            &format!("type=local,dest={second},mode=max,cache-mounts=true"),
        ],
    );
    assert_eq!(Steps::steps(&s.ran), set(&[]), "{}", s.log);
    assert!(cache_mount_dirs(&b).is_empty(), "nothing was seeded on B");
    assert_eq!(
        read_config(Path::new(&first))["cache_mounts"],
        read_config(Path::new(&second))["cache_mounts"]
    );
    // C from B's cache sees A's mount.
    let c = one_mount_machine(Some(&a));
    let from = format!("type=local,src={second},cache-mounts=true");
    let (_, id) = build_one_mount(&c, "c", &["--cache-from", &from]);
    assert_eq!(c.cat(&id, "/pkgs"), "from-a\nfrom-c\n");
}

#[test]
fn a_corrupt_cache_mount_blob_warns_and_the_mount_starts_empty() {
    let a = one_mount_machine(None);
    let cache = a.p("cache");
    let to = format!("type=local,dest={cache},mode=max,cache-mounts=true");
    build_one_mount(&a, "a", &["--cache-to", &to]);
    let config = read_config(Path::new(&cache));
    let blob = &config["cache_mounts"][0]["blob"].as_str().unwrap()[7..];
    fs_err::write(
        Path::new(&cache).join("blobs/sha256").join(blob),
        b"garbage",
    )
    .unwrap();
    let b = one_mount_machine(Some(&a));
    let iid = b.p("iid");
    let o = b.env.run(&[
        "build",
        "--progress",
        "plain",
        "--iidfile",
        &iid,
        "--build-arg",
        "N=b",
        "--cache-from",
        &format!("type=local,src={cache},cache-mounts=true"),
        &b.p("one"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("cache mount pkgs") && l.contains("does not match its digest")),
        "{err}"
    );
    let id = fs_err::read_to_string(&iid).unwrap();
    assert_eq!(b.cat(&id, "/pkgs"), "from-b\n");
}

/// Three cache mounts of one id: with uid=1000, plain, and from a stage.
const KEYED_MOUNTS: &str = "FROM busybox AS st\n\
RUN mkdir /seed && echo s > /seed/s\n\
FROM busybox\n\
ARG N\n\
RUN --mount=type=cache,id=pkgs,target=/p,uid=1000 touch /p/u-$N && ls /p > /owned \
&& stat -c %u /p > /owned-uid\n\
RUN --mount=type=cache,id=pkgs,target=/p touch /p/plain-$N && ls /p > /plain\n\
RUN --mount=type=cache,id=pkgs,target=/p,from=st,source=/seed touch /p/f-$N && ls /p > /from\n";

#[test]
fn cache_mounts_travel_keyed_by_id_and_owner() {
    let a = Machine::new();
    a.write("k/Dockerfile", KEYED_MOUNTS);
    let cache = a.p("cache");
    a.build(&[
        "--build-arg",
        "N=a",
        "--cache-to",
        &format!("type=local,dest={cache},mode=max,cache-mounts=true"),
        &a.p("k"),
    ]);
    let config = read_config(Path::new(&cache));
    let mounts = config["cache_mounts"].as_array().expect("cache_mounts");
    // The uid=1000 cache and the plain one; the from= one is this machine's.
    let keys: BTreeSet<String> = mounts
        .iter()
        .map(|m| {
            format!(
                "{} {}",
                m["id"],
                m.get("perms").unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            r#""pkgs" null"#.to_owned(),
            r#""pkgs" {"uid":1000,"gid":0,"mode":493}"#.to_owned()
        ]),
        "{config}"
    );

    let b = Machine::with_base_of(&a);
    b.write("k/Dockerfile", KEYED_MOUNTS);
    let (_, id) = b.build(&[
        "--build-arg",
        "N=b",
        "--cache-from",
        &format!("type=local,src={cache},cache-mounts=true"),
        &b.p("k"),
    ]);
    // Each seeded from its own: the uid=1000 one with its owner.
    assert_eq!(b.cat(&id, "/owned"), "u-a\nu-b\n");
    assert_eq!(b.cat(&id, "/owned-uid"), "1000\n");
    assert_eq!(b.cat(&id, "/plain"), "plain-a\nplain-b\n");
    assert_eq!(b.cat(&id, "/from"), "f-b\ns\n");
}

#[test]
fn a_bad_cache_mounts_value_is_a_one_line_error() {
    let env = common::Env::new();
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
    let ctx = ctx.to_str().unwrap();
    let err = env.fails(&[
        "build",
        "--cache-to",
        "type=local,dest=/nonexistent/x,cache-mounts=yes",
        ctx,
    ]);
    assert!(
        err.contains("--cache-to: cache-mounts=\"yes\" is not true or false"),
        "{err}"
    );
    let err = env.fails(&[
        "build",
        "--cache-from",
        "type=local,src=/nonexistent/x,cache-mounts=1",
        ctx,
    ]);
    assert!(
        err.contains("--cache-from: cache-mounts=\"1\" is not true or false"),
        "{err}"
    );
}

/// The reader's stage `a` is cached in the cache; its final stage runs a
/// slow step before it copies from `a`, so `a`'s layer is unpacked (read
/// from the cache directory) only after the sleep.
const SLOW_READER: &str = "FROM busybox AS a\n\
RUN echo a > /a\n\
FROM busybox\n\
ARG N\n\
RUN sleep 5 && echo $N > /n\n\
COPY --from=a /a /a\n";

#[test]
fn a_writer_leaves_the_blobs_a_concurrent_reader_may_still_read() {
    let a = Machine::new();
    a.write("r/Dockerfile", SLOW_READER);
    let cache = a.p("cache");
    let to = format!("type=local,dest={cache},mode=max");
    a.build(&["--build-arg", "N=1", "--cache-to", &to, &a.p("r")]);
    let (before, _) = blobs(Path::new(&cache));

    // The reader, another process on another machine.
    let r = Machine::with_base_of(&a);
    r.write("r/Dockerfile", SLOW_READER);
    let iid = r.p("iid");
    let reader = r
        .env
        .cmd(&[
            "build",
            "--progress",
            "json",
            "--iidfile",
            &iid,
            "--build-arg",
            "N=2",
            "--cache-from",
            &format!("type=local,src={cache}"),
            &r.p("r"),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));

    // Meanwhile a writer replaces the cache with another build's.
    a.write("w/Dockerfile", "FROM busybox\nRUN echo w > /w\n");
    a.build(&["--cache-to", &to, &a.p("w")]);
    let mut reader = reader;
    assert!(
        reader.try_wait().unwrap().is_none(),
        "the reader ended before the writer: the test proves nothing (machine too slow?)"
    );
    let (all, reached) = blobs(Path::new(&cache));
    assert!(
        before.is_subset(&all),
        "the writer removed blobs while a build was reading the cache"
    );
    assert_ne!(all, reached, "the clean-up waits for the next export");

    let o = reader.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let s = Steps::parse(&err);
    assert!(
        s.cached.contains("[a 2/2] RUN echo a > /a") && !s.ran.contains("[a 2/2] RUN echo a > /a"),
        "the reader's lazily unpacked step was cached: {}",
        s.log
    );
    let id = fs_err::read_to_string(&iid).unwrap();
    assert_eq!(r.cat(&id, "/a"), "a\n");

    // No reader now: the next export cleans up.
    a.build(&["--cache-to", &to, &a.p("w")]);
    let (all, reached) = blobs(Path::new(&cache));
    assert_eq!(all, reached);
}

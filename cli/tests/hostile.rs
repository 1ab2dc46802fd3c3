//! Hostile image content through the binary: crafted layers (whiteouts and
//! directories through a symlinked parent, a directory replaced by a symlink,
//! hard links to host paths, FIFOs, character and block devices, set-id files)
//! brought in with `rbuild import` and `rbuild load`, then unpacked by `FROM` (a
//! build) and `rbuild run`. A bait tree beside the state root is checked before
//! and after: it never changes, and each command either fails with a clear error
//! or the entries land inside the image only. Every command runs under a time
//! limit, so a hang (a FIFO opened) fails the test instead of CI.
//! Needs root (builds, devices) and busybox-static.

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Env;
use sha2::Digest as _;
use tar::EntryType as T;

const LIMIT: Duration = Duration::from_secs(120);

/// Runs `cmd` to the end, or kills it after [`LIMIT`] and fails the test.
fn timed(mut cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{shown} hung for {LIMIT:?} and was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(env: &Env, args: &[&str]) -> String {
    let o = timed(env.cmd(args));
    assert!(
        o.status.success(),
        "rbuild {args:?} failed:\nstdout: {}\nstderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Runs, asserts a clean failure (no panic) whose error says `want`; returns stderr.
fn fails(env: &Env, args: &[&str], want: &str) -> String {
    let o = timed(env.cmd(args));
    let err = text(&o.stderr);
    assert!(
        !o.status.success(),
        "rbuild {args:?} should fail; stdout: {}",
        text(&o.stdout)
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(want), "error should say {want:?}: {err}");
    err
}

fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "cannot run: these tests build and make devices, which needs root"
    );
}

fn busybox() -> Vec<u8> {
    for d in ["/bin", "/usr/bin", "/sbin", "/usr/sbin"] {
        let p = Path::new(d).join("busybox");
        if p.is_file() {
            return fs_err::read(p).unwrap();
        }
    }
    panic!("busybox is missing: install busybox-static");
}

/// A layer tar entry: name, type, link target (or device major:minor), mode, data.
struct E<'a>(&'a str, T, &'a str, u32, &'a [u8]);

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for E(name, ty, link, mode, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*ty);
        h.set_mode(*mode);
        h.set_mtime(1_500_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        if matches!(ty, T::Char | T::Block) {
            let (ma, mi) = link.split_once(':').unwrap();
            h.set_device_major(ma.parse().unwrap()).unwrap();
            h.set_device_minor(mi.parse().unwrap()).unwrap();
            b.append_data(&mut h, name, *data).unwrap();
        } else if link.is_empty() {
            b.append_data(&mut h, name, *data).unwrap();
        } else {
            b.append_link(&mut h, name, link).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// A host tree that no layer may touch: files, a directory, a mode and mtimes.
struct Bait {
    dir: PathBuf,
}

impl Bait {
    fn new(env: &Env) -> Self {
        let dir = env.path("bait");
        fs_err::create_dir_all(dir.join("dir/sub")).unwrap();
        fs_err::write(dir.join("file"), "precious host file").unwrap();
        fs_err::write(dir.join("dir/inner"), "inner").unwrap();
        fs_err::write(dir.join("dir/sub/deep"), "deep").unwrap();
        std::os::unix::fs::symlink("file", dir.join("link")).unwrap();
        fs_err::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
        Self { dir }
    }

    fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// Content checksums (`common::snapshot`) plus, for the root and every entry,
    /// type, mode, owner, link count, mtime and symlink target.
    fn state(&self) -> Vec<String> {
        let mut out = common::snapshot(&self.dir);
        let mut todo = vec![self.dir.clone()];
        while let Some(p) = todo.pop() {
            let m = fs_err::symlink_metadata(&p).unwrap();
            let link = fs_err::read_link(&p).ok();
            out.push(format!(
                "{} {:o} {}:{} n{} t{} {link:?}",
                p.display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.nlink(),
                m.mtime()
            ));
            if m.is_dir() {
                for e in fs_err::read_dir(&p).unwrap() {
                    todo.push(e.unwrap().path());
                }
            }
        }
        out.sort();
        out
    }
}

/// Busybox as the image's shell, so that `RUN` and `rbuild run` can look inside.
fn shell_entries(bb: &[u8]) -> Vec<E<'_>> {
    vec![
        E("bin/", T::Directory, "", 0o755, b""),
        E("bin/busybox", T::Regular, "", 0o755, bb),
        E("bin/sh", T::Symlink, "busybox", 0o777, b""),
    ]
}

/// Every trick at once, each pointed at the bait through `evil -> <bait>`.
fn hostile_entries(bait: &str) -> Vec<E<'_>> {
    vec![
        E("evil", T::Symlink, bait, 0o777, b""),
        // Whiteouts and an opaque marker through the symlinked parent.
        E("evil/.wh.file", T::Regular, "", 0o644, b""),
        E("evil/.wh.link", T::Regular, "", 0o644, b""),
        E("evil/dir/.wh..wh..opq", T::Regular, "", 0o644, b""),
        E("evil/dir/sub/.wh.deep", T::Regular, "", 0o644, b""),
        // A directory and a file through it.
        E("evil/newdir/", T::Directory, "", 0o777, b""),
        E("evil/planted", T::Regular, "", 0o644, b"planted"),
        // A directory replaced by a symlink: its mode must not land on the bait.
        E("d/", T::Directory, "", 0o777, b""),
        E("d", T::Symlink, bait, 0o777, b""),
        // Nodes: made, never opened.
        E("fifo", T::Fifo, "", 0o640, b""),
        E("nodes/", T::Directory, "", 0o755, b""),
        E("nodes/null2", T::Char, "1:3", 0o666, b""),
        E("nodes/loop9", T::Block, "7:9", 0o660, b""),
        E("suid", T::Regular, "", 0o4755, b"#!/bin/sh\n"),
        E("sgid/", T::Directory, "", 0o2775, b""),
    ]
}

/// What the image must hold, inside: checked with busybox in the image.
fn inside_check(bait: &str) -> String {
    format!(
        "cd / && test -L /evil && test -p /fifo && test -c /nodes/null2 && test -b /nodes/loop9 \
         && test \"$(stat -c '%a %t:%T' /nodes/null2)\" = '666 1:3' \
         && test \"$(stat -c '%a %t:%T' /nodes/loop9)\" = '660 7:9' \
         && test \"$(stat -c '%a %Y' /fifo)\" = '640 1500000000' \
         && test \"$(stat -c %a /suid)\" = 4755 && test \"$(stat -c %a /sgid)\" = 2775 \
         && test -d .{bait}/newdir && test \"$(cat .{bait}/planted)\" = planted \
         && test -L /d && echo INSIDE-OK"
    )
}

fn build_from(env: &Env, image: &str, bait: &str) -> String {
    let ctx = env.path(&format!("ctx-{}", image.replace(':', "-")));
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("f"), "f").unwrap();
    fs_err::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {image}\nCOPY f /f\nRUN {}\n",
            inside_check(bait).replace('\n', " ")
        ),
    )
    .unwrap();
    ok(
        env,
        &[
            "build",
            "--progress=plain",
            "-t",
            "out:1",
            ctx.to_str().unwrap(),
        ],
    )
}

fn run_in(env: &Env, image: &str, bait: &str) -> String {
    ok(
        env,
        &["run", "--rm", image, "/bin/sh", "-c", &inside_check(bait)],
    )
}

/// A docker-archive (`docker save` format) of one image made of `layers`.
fn docker_archive(layers: &[Vec<u8>], tag: &str) -> Vec<u8> {
    let hex = |b: &[u8]| format!("{:x}", sha2::Sha256::digest(b));
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", hex(l)))
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "crafted"})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let config_name = format!("{}.json", hex(&config));
    let layer_names: Vec<String> = layers
        .iter()
        .map(|l| format!("{}/layer.tar", hex(l)))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": config_name, "RepoTags": [tag], "Layers": layer_names}
    ]))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    add(&config_name, &config);
    for (n, l) in layer_names.iter().zip(layers) {
        add(n, l);
    }
    add("manifest.json", &manifest);
    b.into_inner().unwrap()
}

#[test]
fn an_imported_hostile_layer_stays_inside_for_from_and_run() {
    need_root();
    let env = Env::new();
    let bait = Bait::new(&env);
    let before = bait.state();
    let bb = busybox();
    let mut entries = shell_entries(&bb);
    entries.extend(hostile_entries(bait.path()));
    let tar = env.path("evil.tar");
    fs_err::write(&tar, layer(&entries)).unwrap();
    ok(&env, &["import", tar.to_str().unwrap(), "evil:1"]);
    assert_eq!(bait.state(), before, "import changed the bait");
    // The build's RUN checks the entries inside; it fails the build otherwise.
    build_from(&env, "evil:1", bait.path());
    assert_eq!(bait.state(), before, "FROM changed the bait");
    assert_eq!(run_in(&env, "evil:1", bait.path()), "INSIDE-OK\n");
    assert_eq!(bait.state(), before, "run changed the bait");
}

#[test]
fn a_loaded_hostile_image_stays_inside_for_from_and_run() {
    need_root();
    let env = Env::new();
    let bait = Bait::new(&env);
    let before = bait.state();
    let bb = busybox();
    // Every trick in the first layer, and again in the second over what the
    // first made.
    let mut l1 = shell_entries(&bb);
    l1.extend(hostile_entries(bait.path()));
    let l2 = hostile_entries(bait.path());
    let archive = env.path("evil-archive.tar");
    fs_err::write(
        &archive,
        docker_archive(&[layer(&l1), layer(&l2)], "loaded:1"),
    )
    .unwrap();
    let out = ok(&env, &["load", "-i", archive.to_str().unwrap()]);
    assert!(out.contains("loaded:1"), "{out}");
    assert_eq!(bait.state(), before, "load changed the bait");
    build_from(&env, "loaded:1", bait.path());
    assert_eq!(bait.state(), before, "FROM changed the bait");
    assert_eq!(run_in(&env, "loaded:1", bait.path()), "INSIDE-OK\n");
    assert_eq!(bait.state(), before, "run changed the bait");
}

#[test]
fn whiteouts_through_a_symlink_of_a_lower_layer_stay_inside() {
    need_root();
    let env = Env::new();
    let bait = Bait::new(&env);
    let before = bait.state();
    let bb = busybox();
    // The symlink in one layer, the whiteouts through it in the next.
    let mut l1 = shell_entries(&bb);
    l1.push(E("evil", T::Symlink, bait.path(), 0o777, b""));
    let l2 = layer(&[
        E("evil/.wh.file", T::Regular, "", 0o644, b""),
        E("evil/.wh.dir", T::Regular, "", 0o644, b""),
        E("evil/.wh..wh..opq", T::Regular, "", 0o644, b""),
        E("evil/x", T::Regular, "", 0o644, b"x"),
    ]);
    let archive = env.path("cross.tar");
    fs_err::write(&archive, docker_archive(&[layer(&l1), l2], "cross:1")).unwrap();
    ok(&env, &["load", "-i", archive.to_str().unwrap()]);
    let ctx = env.path("cross-ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), "FROM cross:1\nRUN true\n").unwrap();
    ok(&env, &["build", "--progress=plain", ctx.to_str().unwrap()]);
    assert_eq!(bait.state(), before, "FROM changed the bait");
    let out = ok(
        &env,
        &[
            "run",
            "--rm",
            "cross:1",
            "/bin/sh",
            "-c",
            &format!("cat .{}/x", bait.path()),
        ],
    );
    assert_eq!(out, "x");
    assert_eq!(bait.state(), before, "run changed the bait");
}

#[test]
fn hard_links_to_host_paths_fail_cleanly() {
    need_root();
    let env = Env::new();
    let bait = Bait::new(&env);
    let before = bait.state();
    let bb = busybox();
    let host_file = format!("{}/file", bait.path());
    for (tag, extra) in [
        // An absolute host path: resolved inside the image, where it is missing.
        ("abs:1", vec![E("h", T::Link, &host_file, 0o644, b"")]),
        // Through a symlink that points at the host.
        (
            "via:1",
            vec![
                E("evil", T::Symlink, bait.path(), 0o777, b""),
                E("h", T::Link, "evil/file", 0o644, b""),
            ],
        ),
    ] {
        let mut entries = shell_entries(&bb);
        entries.extend(extra);
        let tar = env.path(&format!("{tag}.tar"));
        fs_err::write(&tar, layer(&entries)).unwrap();
        ok(&env, &["import", tar.to_str().unwrap(), tag]);
        let ctx = env.path("hl-ctx");
        fs_err::create_dir_all(&ctx).unwrap();
        fs_err::write(ctx.join("Dockerfile"), format!("FROM {tag}\nRUN true\n")).unwrap();
        fails(
            &env,
            &["build", "--progress=plain", ctx.to_str().unwrap()],
            "hard link target does not exist",
        );
        fails(
            &env,
            &["run", "--rm", tag, "/bin/sh", "-c", "true"],
            "hard link target does not exist",
        );
        assert_eq!(bait.state(), before, "{tag} changed the bait");
    }
    // Linked from inside the image, the bait still has one link.
    assert_eq!(fs_err::metadata(bait.dir.join("file")).unwrap().nlink(), 1);
}

#[test]
fn an_image_of_fifos_and_devices_unpacks_without_hanging() {
    need_root();
    let env = Env::new();
    let bb = busybox();
    let mut entries = shell_entries(&bb);
    // A FIFO where a directory's contents and a later file are: a reader that
    // opened it would block forever.
    entries.extend([
        E("p", T::Fifo, "", 0o600, b""),
        E("q/", T::Directory, "", 0o755, b""),
        E("q/p", T::Fifo, "", 0o600, b""),
        E("null", T::Char, "1:3", 0o666, b""),
        E("zero", T::Char, "1:5", 0o666, b""),
    ]);
    // Twice: the second layer replaces each node.
    let l = layer(&entries);
    let archive = env.path("fifo-archive.tar");
    fs_err::write(&archive, docker_archive(&[l.clone(), l], "fifo:1")).unwrap();
    ok(&env, &["load", "-i", archive.to_str().unwrap()]);
    let ctx = env.path("fifo-ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(
        ctx.join("Dockerfile"),
        "FROM fifo:1\nRUN test -p /p && test -p /q/p && test -c /null && test \"$(stat -c %Y /p)\" = 1500000000\n",
    )
    .unwrap();
    ok(&env, &["build", "--progress=plain", ctx.to_str().unwrap()]);
    let out = ok(
        &env,
        &[
            "run",
            "--rm",
            "fifo:1",
            "/bin/sh",
            "-c",
            "stat -c '%F %a' /p /q/p /zero",
        ],
    );
    assert_eq!(
        out, "fifo 600\nfifo 600\ncharacter special file 666\n",
        "{out}"
    );
}

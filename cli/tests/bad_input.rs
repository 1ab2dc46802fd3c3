//! Hostile or mistaken input through the real binary: expansions that grow without
//! bound, tags with a digest, `--secret` without an id, a load onto a full disk. Each
//! fails with one clear error, a non-zero exit, no panic, and the store as it was.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{BIN, Env, have, snapshot};

/// `FROM scratch`, `ARG A0=<1 KiB>`, then `ARG A{i}=${A{i-1}}${A{i-1}}` for i in
/// 1..=doublings: A{i} holds 2^i KiB.
fn doubling(doublings: usize) -> String {
    let mut src = format!("FROM scratch\nARG A0={}\n", "x".repeat(1024));
    for i in 1..=doublings {
        let _ = writeln!(src, "ARG A{i}=${{A{}}}${{A{}}}", i - 1, i - 1);
    }
    src
}

/// A context directory holding `Dockerfile` with `src`.
fn context(env: &Env, name: &str, src: &str) -> PathBuf {
    let dir = env.path(name);
    fs_err::create_dir_all(&dir).unwrap();
    fs_err::write(dir.join("Dockerfile"), src).unwrap();
    dir
}

/// Runs `rbuild args` with at most `address_space` bytes of virtual memory and a
/// hang guard: killed after 120 s (`timeout` then exits 124).
fn run_limited(env: &Env, address_space: u64, args: &[&str]) -> Output {
    for tool in ["timeout", "prlimit"] {
        assert!(
            have(tool),
            "{tool} is missing: install coreutils/util-linux"
        );
    }
    Command::new("timeout")
        .arg("120")
        .arg("prlimit")
        .arg(format!("--as={address_space}"))
        .arg(BIN)
        .args(args)
        .env("RBUILD_ROOT", env.root())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// 256 MiB of address space: the debug binary runs in far less when it stops at
/// the limit; a 1 GiB value (what twenty doublings of 1 KiB make) cannot fit.
const SMALL_MEMORY: u64 = 256 << 20;

#[test]
fn an_arg_doubling_past_one_mebibyte_fails_at_its_line_in_small_memory() {
    let env = Env::new();
    let ctx = context(&env, "ctx", &doubling(20));
    let o = run_limited(
        &env,
        SMALL_MEMORY,
        &["build", "-t", "x", ctx.to_str().unwrap()],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    // 1 KiB doubled ten times is exactly 1 MiB (A10); A11 on line 13 is over, and
    // its second `${A10}` is where it crosses.
    assert_eq!(
        err,
        "Dockerfile:13:15: ARG A11: the expanded value is over 1 MiB (1048576 bytes)\n   \
         |\n13 | ARG A11=${A10}${A10}\n   |               ^^^^^^\n"
    );
    // `parse` does not expand: it prints the tree of the same file.
    let o = run_limited(
        &env,
        SMALL_MEMORY,
        &["parse", "-f", ctx.join("Dockerfile").to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("${A19}${A19}"));
    // Exactly 1 MiB is allowed: ten doublings build.
    let ok = context(&env, "ok", &doubling(10));
    env.ok(&["build", "-q", "-t", "ten", ok.to_str().unwrap()]);
}

#[test]
fn many_values_under_the_word_limit_stop_at_the_total() {
    let env = Env::new();
    // Each `ARG Bn=$A10` adds 1 MiB: memory would grow with the number of lines.
    let mut src = doubling(10);
    for n in 0..200 {
        let _ = writeln!(src, "ARG B{n}=$A10");
    }
    let ctx = context(&env, "ctx", &src);
    let o = run_limited(
        &env,
        SMALL_MEMORY,
        &["build", "-t", "x", ctx.to_str().unwrap()],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    // A1..A10 grew by about 2 MiB, B0..B13 by 14 MiB: B14 (line 27) crosses 16 MiB.
    assert!(
        err.starts_with(
            "Dockerfile:27:1: ARG B14: the expanded values in this build add up to over \
             16 MiB (16777216 bytes)\n"
        ),
        "{err}"
    );
    assert!(err.contains("27 | ARG B14=$A10\n"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // A glob search that is quadratic in a 1 MiB value is cut off, not run for hours.
    let src = doubling(10) + "ENV B=${A10//x*y/z}\n";
    let ctx = context(&env, "ctx2", &src);
    let o = run_limited(
        &env,
        SMALL_MEMORY,
        &["build", "-t", "x", ctx.to_str().unwrap()],
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("Dockerfile:13:7: ENV B: pattern matching in substitution needs more than"),
        "{err}"
    );
}

fn digest_ref(name: &str) -> String {
    format!("{name}@sha256:{}", "ab".repeat(32))
}

#[test]
fn tags_with_a_digest_are_refused_as_docker_refuses_them() {
    let env = Env::new();
    env.import_rootfs("good:1", "g");
    let saved = env.path("s.tar");
    env.ok(&["save", "good:1", "-o", saved.to_str().unwrap()]);
    let before = snapshot(&env.root());
    let pinned = digest_ref("app");
    let pinned_tagged = digest_ref("app:1");

    // build -t (moby's words), before anything is read or built.
    let ctx = context(&env, "ctx", "FROM good:1\n");
    for t in [&pinned, &pinned_tagged] {
        let err = env.fails(&["build", "-t", t, ctx.to_str().unwrap()]);
        assert_eq!(
            err.trim_end(),
            format!("Error: invalid tag {t:?}: build tag cannot contain a digest")
        );
    }
    // tag and import (the docker client's words).
    for t in [&pinned, &pinned_tagged] {
        let err = env.fails(&["tag", "good:1", t]);
        assert!(
            err.contains("refusing to create a tag with a digest reference"),
            "{err}"
        );
        let rootfs = env.path("rootfs-g.tar");
        let err = env.fails(&["import", rootfs.to_str().unwrap(), t]);
        assert!(
            err.contains("refusing to create a tag with a digest reference"),
            "{err}"
        );
    }
    assert_eq!(
        snapshot(&env.root()),
        before,
        "a refused tag changed the store"
    );

    // load: an archive whose manifest.json names a digest reference in RepoTags.
    for t in [&pinned, &pinned_tagged] {
        let archive = rewrite_manifest(&env, &saved, &[t.as_str(), "also:1"]);
        let err = env.fails(&["load", "-i", archive.to_str().unwrap()]);
        assert!(
            err.contains(&format!(
                "manifest.json: invalid tag {t:?}: refusing to create a tag with a digest reference"
            )),
            "{err}"
        );
        assert_eq!(
            snapshot(&env.root()),
            before,
            "a refused load changed the store"
        );
    }
    assert!(!env.ok(&["images"]).contains("also"));
    // The same archive with plain tags loads.
    let archive = rewrite_manifest(&env, &saved, &["app:2"]);
    assert_eq!(
        env.ok(&["load", "-i", archive.to_str().unwrap()]),
        "Loaded image: app:2\n"
    );
    // An OCI layout naming its image by digest (as containerd exports an image
    // pulled by digest) loads, untagged: a name pinned by digest is no tag.
    env.ok(&["rmi", "-f", "good:1", "app:2"]);
    let name = format!("docker.io/library/{pinned}");
    let oci = rewrite_oci_names(&env, &saved, &name);
    let id = env.ok(&["load", "-i", oci.to_str().unwrap()]);
    assert!(id.starts_with("Loaded image ID: sha256:"), "{id}");
    assert_eq!(
        env.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]),
        "<none>:<none>\n"
    );
}

/// `saved` as an OCI layout only (no manifest.json), its image named `name` in both
/// annotations.
fn rewrite_oci_names(env: &Env, saved: &Path, name: &str) -> PathBuf {
    let mut a = tar::Archive::new(fs_err::File::open(saved).unwrap());
    let mut b = tar::Builder::new(Vec::new());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        if path == Path::new("manifest.json") || path == Path::new("repositories") {
            continue;
        }
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if path == Path::new("index.json") {
            let mut idx: serde_json::Value = serde_json::from_slice(&data).unwrap();
            idx["manifests"][0]["annotations"] = serde_json::json!({
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name,
            });
            data = serde_json::to_vec(&idx).unwrap();
        }
        let mut h = e.header().clone();
        h.set_size(data.len() as u64);
        b.append_data(&mut h, &path, &data[..]).unwrap();
    }
    let out = env.path("oci-by-digest.tar");
    fs_err::write(&out, b.into_inner().unwrap()).unwrap();
    out
}

/// `saved` (an `rbuild save` archive) with manifest.json's `RepoTags` replaced.
fn rewrite_manifest(env: &Env, saved: &Path, tags: &[&str]) -> PathBuf {
    let mut a = tar::Archive::new(fs_err::File::open(saved).unwrap());
    let mut b = tar::Builder::new(Vec::new());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        if path == Path::new("manifest.json") {
            let mut m: serde_json::Value = serde_json::from_slice(&data).unwrap();
            m[0]["RepoTags"] = serde_json::json!(tags);
            data = serde_json::to_vec(&m).unwrap();
        }
        let mut h = e.header().clone();
        h.set_size(data.len() as u64);
        b.append_data(&mut h, &path, &data[..]).unwrap();
    }
    let out = env.path(&format!("tags-{}.tar", tags.join(",").replace('/', "_")));
    fs_err::write(&out, b.into_inner().unwrap()).unwrap();
    out
}

#[test]
fn secret_flags_without_an_id_or_a_readable_file_are_refused() {
    let env = Env::new();
    let ctx = context(&env, "ctx", "FROM scratch\n");
    let ctx = ctx.to_str().unwrap();
    for (spec, want) in [
        (
            "id=",
            "Error: --secret \"id=\": the id is empty (want id=ID,src=PATH or id=ID,env=VAR)",
        ),
        (
            "id=,src=/etc/hostname",
            "Error: --secret \"id=,src=/etc/hostname\": the id is empty",
        ),
        ("id=x,src=", "Error: --secret \"id=x,src=\": src is empty"),
        (
            "src=/etc/hostname",
            "Error: --secret \"src=/etc/hostname\" has no id=",
        ),
        (
            "id=x,src=/nonexistent/secret",
            "Error: --secret \"id=x,src=/nonexistent/secret\": failed to open file \
             `/nonexistent/secret`: No such file or directory (os error 2)",
        ),
        (
            "id=x,env=RBUILD_SURELY_UNSET_VAR_1234",
            "Error: --secret \"id=x,env=RBUILD_SURELY_UNSET_VAR_1234\": environment \
             variable RBUILD_SURELY_UNSET_VAR_1234 is not set",
        ),
    ] {
        let err = env.fails(&["build", "--secret", spec, "-t", "x", ctx]);
        assert!(err.starts_with(want), "{spec}: {err}");
    }
    assert!(
        !env.root().exists(),
        "a refused flag created the state root"
    );
}

/// A tmpfs mounted at a path, unmounted (lazily, so a failing test cannot leave it
/// busy) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "mounting a tmpfs needs root: run this test as root"
        );
        fs_err::create_dir_all(path).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs failed");
        Tmpfs(path.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remounting the tmpfs failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A tar of one file of `size` pseudo-random (incompressible) bytes, or zeros.
fn rootfs_with_file(size: usize, random: bool) -> Vec<u8> {
    let mut data = vec![0u8; size];
    if random {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_mtime(1_600_000_000);
    h.set_size(size as u64);
    b.append_data(&mut h, "big.bin", &data[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn a_load_onto_a_full_disk_says_no_space_left_on_device() {
    // The archives, made in a root of their own: 20 MB of random bytes (the archive
    // itself does not fit), and 30 MB of zeros with gzip layers (the archive fits, the
    // decompressed layer does not).
    let maker = Env::new();
    let mut archives = Vec::new();
    for (name, random, compression) in [("random", true, "none"), ("zeros", false, "gzip")] {
        let rootfs = maker.path(&format!("{name}.rootfs.tar"));
        fs_err::write(
            &rootfs,
            rootfs_with_file(if random { 20 } else { 30 } << 20, random),
        )
        .unwrap();
        let tag = format!("{name}:1");
        maker.ok(&["import", rootfs.to_str().unwrap(), &tag]);
        let out = maker.path(&format!("{name}.tar"));
        maker.ok(&[
            "save",
            "--compression",
            compression,
            &tag,
            "-o",
            out.to_str().unwrap(),
        ]);
        archives.push((tag, out));
    }

    let env = Env::new();
    let disk = Tmpfs::mount(&env.root(), "8m");
    assert_eq!(env.ok(&["images", "-q"]), "");
    let before = snapshot(&env.root());
    for (_, archive) in &archives {
        let err = env.fails(&["load", "-i", archive.to_str().unwrap()]);
        assert!(err.contains("no space left on device"), "{err}");
        assert!(
            !err.contains("truncated") && !err.contains("invalid"),
            "{err}"
        );
        // The failed load's temporary files are gone, the store is as it was.
        assert_eq!(
            fs_err::read_dir(env.root().join("tmp")).unwrap().count(),
            0,
            "temporary files of the failed load remain"
        );
        assert_eq!(
            snapshot(&env.root()),
            before,
            "a failed load changed the store"
        );
        assert_eq!(env.ok(&["images", "-q"]), "", "the store still works");
    }
    // With room, the same loads succeed on the same root.
    disk.resize("128m");
    for (tag, archive) in &archives {
        assert_eq!(
            env.ok(&["load", "-i", archive.to_str().unwrap()]),
            format!("Loaded image: {tag}\n")
        );
    }
    assert_eq!(env.ok(&["images", "-q"]).lines().count(), 2);
    drop(disk);
}

/// An output whose directory is missing: the export vertex (under `BuildKit`'s
/// name) fails naming the destination, the error line holds each cause once,
/// the JSON progress carries the same error, and nothing is written.
#[test]
fn export_to_a_missing_directory_names_the_destination_once() {
    let env = Env::new();
    let ctx = context(&env, "ctx", "FROM scratch\nCOPY f /f\n");
    fs_err::write(ctx.join("f"), "x").unwrap();
    let ctx = ctx.to_str().unwrap();
    let dest = env.path("missing/out.tar");
    let dest_s = dest.to_str().unwrap();
    let spec = format!("type=tar,dest={dest_s}");
    let err = env.fails(&["build", "-q", "--output", &spec, ctx]);
    let want = format!("Error: writing {dest_s}: the directory of {dest_s}: ");
    assert!(err.starts_with(&want), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    let o = env.run(&["build", "--progress=json", "--output", &spec, ctx]);
    assert!(!o.status.success());
    let events: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let started = events
        .iter()
        .find(|e| e["event"] == "vertex_started" && e["name"] == "exporting to client tarball")
        .unwrap_or_else(|| panic!("no export vertex in {events:?}"));
    let failed = events
        .iter()
        .find(|e| e["event"] == "vertex_failed" && e["id"] == started["id"])
        .unwrap_or_else(|| panic!("the export vertex did not fail in {events:?}"));
    assert_eq!(
        format!("Error: {}", failed["error"].as_str().unwrap()),
        err.trim_end()
    );
    assert!(!env.path("missing").exists());
}

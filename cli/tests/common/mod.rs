//! Helpers for tests that run the real `rbuild` binary.
#![allow(dead_code)]

pub mod cache;
pub mod docker;
pub mod http;
pub mod steps;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::Digest as _;

pub mod registry;

pub const BIN: &str = env!("CARGO_BIN_EXE_rbuild");

/// A state root in a temp dir plus a scratch dir.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        // Registry credentials of this test only (never the user's).
        c.args(args)
            .env("RBUILD_ROOT", self.root())
            .env("DOCKER_CONFIG", self.path("docker-config"))
            .env("REGISTRY_AUTH_FILE", self.path("podman-auth.json"))
            .env_remove("SOURCE_DATE_EPOCH");
        c
    }

    /// Runs and returns the output whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "rbuild {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs, asserts failure with a one-line error, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            !o.status.success(),
            "rbuild {args:?} should fail; stdout: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one-line error expected, got {err:?}"
        );
        assert!(!err.contains("panicked"), "{err}");
        err
    }

    pub fn with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let t = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let o = child.wait_with_output().unwrap();
        t.join().unwrap();
        o
    }

    /// Imports a small generated rootfs as `tag`; returns the image ID.
    pub fn import_rootfs(&self, tag: &str, seed: &str) -> String {
        let tar = self.path(&format!("rootfs-{seed}.tar"));
        fs_err::write(&tar, rootfs_tar(seed)).unwrap();
        let mut args = vec!["import", tar.to_str().unwrap()];
        if !tag.is_empty() {
            args.push(tag);
        }
        self.ok(&args).trim().to_owned()
    }
}

/// A small rootfs tar: dirs, a file whose content depends on `seed`, a symlink, a hard link.
pub fn rootfs_tar(seed: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, p: &str| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        b.append_data(&mut h, p, &[][..]).unwrap();
    };
    dir(&mut b, "etc/");
    dir(&mut b, "bin/");
    let file = |b: &mut tar::Builder<Vec<u8>>, p: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, p, data).unwrap();
    };
    file(&mut b, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n");
    file(&mut b, "etc/seed", seed.as_bytes());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_mtime(1_600_000_000);
    h.set_size(0);
    b.append_link(&mut h, "bin/sh", "busybox").unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mtime(1_600_000_000);
    h.set_size(0);
    b.append_link(&mut h, "etc/passwd.link", "etc/passwd")
        .unwrap();
    b.into_inner().unwrap()
}

/// Every path under `root` with its type, size and content hash: equal listings mean
/// the directory was left exactly as it was.
pub fn snapshot(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn walk(base: &Path, p: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(p) else { return };
    for e in rd.flatten() {
        let path = e.path();
        let rel = path.strip_prefix(base).unwrap().display().to_string();
        let m = std::fs::symlink_metadata(&path).unwrap();
        if m.is_dir() {
            out.push(format!("{rel}/"));
            walk(base, &path, out);
        } else {
            let data = std::fs::read(&path).unwrap_or_default();
            out.push(format!(
                "{rel} {} {:x}",
                m.len(),
                sha2::Sha256::digest(&data)
            ));
        }
    }
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The project's busybox base script (`testdata/examples/busybox-base.sh`: the
/// same rootfs as the conformance corpus's `base.sh`).
pub fn base_sh() -> Option<PathBuf> {
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/examples/busybox-base.sh"
    ));
    p.is_file().then_some(p)
}

/// A fresh state root with the busybox base (from `busybox-base.sh`) imported
/// as `busybox:latest`, for tests that build. Panics saying why when not root
/// (building needs it) or when the base cannot be made.
pub fn build_env() -> Env {
    assert!(
        nix::unistd::geteuid().is_root(),
        "cannot run: building needs root"
    );
    let env = Env::new();
    let tar = env.path("base.tar");
    make_base_tar(&tar);
    env.ok(&["import", tar.to_str().unwrap(), "busybox:latest"]);
    env
}

/// Writes the busybox base root filesystem tarball (made by `busybox-base.sh`,
/// for `rbuild import`) to `tar`. Panics saying why when the script is absent
/// or fails.
pub fn make_base_tar(tar: &Path) {
    let Some(base) = base_sh() else {
        panic!("cannot run: testdata/examples/busybox-base.sh is absent");
    };
    let ok = Command::new("sh")
        .arg(&base)
        .arg(tar)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "cannot run: base.sh failed (is busybox-static installed?)"
    );
}

/// Compiles `src` into a static executable at `out`: C with `gcc -static -O2`,
/// Rust with `rustc --edition 2021 -C target-feature=+crt-static` (chosen by
/// the file's extension). Panics saying what is missing or what failed.
pub fn compile_static(src: &Path, out: &Path) {
    let (compiler, flags, install): (&str, &[&str], &str) =
        match src.extension().and_then(|e| e.to_str()) {
            Some("c") => ("gcc", &["-static", "-O2"], "gcc and libc6-dev"),
            Some("rs") => (
                "rustc",
                &["--edition", "2021", "-C", "target-feature=+crt-static"],
                "rustc",
            ),
            _ => panic!("compile_static: {} is neither C nor Rust", src.display()),
        };
    assert!(
        have(compiler),
        "cannot run: {compiler} is missing: install {install}"
    );
    let o = Command::new(compiler)
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(src)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cannot run: {compiler} could not build {} statically (is {install} installed?): {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

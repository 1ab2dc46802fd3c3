//! The arena in which arbitrary layer tars are applied, shared by the
//! `apply_layer` fuzz target (`fuzz/fuzz_targets/apply_layer.rs`) and the corpus
//! replay test (`tests/apply_corpus.rs`).
//!
//! A worker thread unshares its mount namespace (and its root and cwd), mounts a
//! small tmpfs (nosuid, nodev) and chroots into it: `/t` is the target, `/bait` a
//! tree beside it that no layer may touch, `/proc` what the applier needs for
//! xattrs. Each input is applied twice over a seeded target (holding symlinks to
//! the bait and to `/`, and a FIFO): as a plain layer and as an overlay upper; after each,
//! the bait must be exactly as it was and the arena must hold nothing but `/t`,
//! `/bait` and `/proc`. Even a broken applier writing through an absolute symlink
//! only reaches the arena, never the host. Needs root.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::mpsc;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use rbuild_snapshotter::apply::{ApplyOptions, apply_layer, apply_overlay_layer};

/// What applies a layer in the arena: `(target, tar, overlay)`.
pub type Applier = fn(&Path, &[u8], bool);

type Job = (Vec<u8>, Applier, mpsc::Sender<Result<(), String>>);

/// A worker thread inside its private arena.
pub struct Arena {
    tx: Option<mpsc::Sender<Job>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Arena {
    /// Sets the arena up; panics saying why when it cannot (not root, no tmpfs).
    pub fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "cannot run: the layer arena needs root (mount namespace, tmpfs, chroot)"
        );
        // One empty directory shared by every arena: each mounts its own tmpfs
        // there in its own namespace. It is never removed (removing it would
        // detach the tmpfs of an arena still running).
        let mountpoint = std::env::temp_dir().join("rbuild-apply-arena");
        fs_err::create_dir_all(&mountpoint).unwrap();
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let mp = mountpoint.clone();
        let worker = std::thread::spawn(move || {
            let mut before = match enter(&mp) {
                Ok(b) => {
                    let _ = ready_tx.send(Ok(()));
                    b
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            for (data, applier, reply) in rx {
                let r =
                    std::panic::catch_unwind(|| apply_both(&data, applier, &before)).map_err(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_else(|| "panic".to_owned())
                    });
                if r.is_err() {
                    // A clean arena for the next job.
                    before = reset().unwrap_or_default();
                }
                let _ = reply.send(r);
            }
        });
        if let Err(e) = ready_rx.recv().unwrap() {
            panic!("cannot set the layer arena up: {e}");
        }
        Self {
            tx: Some(tx),
            worker: Some(worker),
        }
    }

    /// Applies `data` (its tar header checksums fixed) both ways; `Err` says what
    /// went wrong: a panic in the applier, the bait changed, something escaped.
    pub fn run(&self, data: &[u8]) -> Result<(), String> {
        self.run_with(data, real_applier)
    }

    /// [`Arena::run`] with another applier (to show the checks catch a bad one).
    pub fn run_with(&self, data: &[u8], applier: Applier) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .as_ref()
            .unwrap()
            .send((data.to_vec(), applier, tx))
            .unwrap();
        rx.recv()
            .unwrap_or_else(|_| Err("the arena worker died".into()))
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        // The tmpfs went with the worker's namespace.
    }
}

fn enter(mp: &Path) -> Result<Vec<String>, String> {
    let e = |what: &str, err: nix::Error| format!("{what}: {err}");
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS).map_err(|x| e("unshare", x))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|x| e("making / private", x))?;
    mount(
        Some("tmpfs"),
        mp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("size=64m,mode=0755"),
    )
    .map_err(|x| e("mounting the tmpfs", x))?;
    fs_err::create_dir(mp.join("proc")).map_err(|x| x.to_string())?;
    mount(
        Some("proc"),
        &mp.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|x| e("mounting proc", x))?;
    nix::unistd::chroot(mp).map_err(|x| e("chroot", x))?;
    std::env::set_current_dir("/").map_err(|x| x.to_string())?;
    reset()
}

/// Empties the arena but for `/proc` and makes the bait; returns its state.
fn reset() -> Result<Vec<String>, String> {
    for e in fs_err::read_dir("/").map_err(|x| x.to_string())?.flatten() {
        if e.file_name() != "proc" {
            let p = e.path();
            let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                fs_err::remove_dir_all(&p)
            } else {
                fs_err::remove_file(&p)
            };
            r.map_err(|x| x.to_string())?;
        }
    }
    let bait = Path::new("/bait");
    fs_err::create_dir_all(bait.join("dir/sub")).map_err(|x| x.to_string())?;
    fs_err::write(bait.join("file"), "precious").map_err(|x| x.to_string())?;
    fs_err::write(bait.join("dir/sub/deep"), "deep").map_err(|x| x.to_string())?;
    std::os::unix::fs::symlink("file", bait.join("link")).map_err(|x| x.to_string())?;
    std::os::unix::fs::symlink("/", bait.join("root")).map_err(|x| x.to_string())?;
    Ok(state(bait))
}

/// Every path under `root` with type, mode, owner, links, size, mtime, symlink
/// target and content.
pub fn state(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let Ok(m) = fs_err::symlink_metadata(&p) else {
            out.push(format!("{} missing", p.display()));
            continue;
        };
        let data = if m.is_file() {
            fs_err::read(&p).unwrap_or_default()
        } else {
            Vec::new()
        };
        out.push(format!(
            "{} {:o} {}:{} n{} s{} t{}.{} {:?} {data:?}",
            p.display(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.nlink(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            fs_err::read_link(&p).ok(),
        ));
        if m.is_dir() {
            if let Ok(rd) = fs_err::read_dir(&p) {
                for e in rd.flatten() {
                    todo.push(e.path());
                }
            }
        }
    }
    out.sort();
    out
}

/// A target that already holds traps: symlinks out to the bait and to `/`, a
/// relative one climbing up, a FIFO, directories and files.
fn seed_target(t: &Path) {
    if fs_err::symlink_metadata(t).is_ok() {
        fs_err::remove_dir_all(t).unwrap();
    }
    fs_err::create_dir_all(t.join("etc")).unwrap();
    fs_err::create_dir_all(t.join("a/b")).unwrap();
    fs_err::write(t.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    fs_err::write(t.join("a/b/f"), "f").unwrap();
    std::os::unix::fs::symlink("/bait", t.join("lnk")).unwrap();
    std::os::unix::fs::symlink("/", t.join("r")).unwrap();
    std::os::unix::fs::symlink("../../../..", t.join("up")).unwrap();
    std::os::unix::fs::symlink("/bait/file", t.join("a/bf")).unwrap();
    nix::unistd::mkfifo(
        &t.join("a/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
}

/// The applier under test: `apply_layer` or `apply_overlay_layer`. Errors are
/// fine (they must say something); panics are not.
pub fn real_applier(t: &Path, tar: &[u8], overlay: bool) {
    let r = if overlay {
        apply_overlay_layer(t, tar)
    } else {
        apply_layer(
            t,
            tar,
            &ApplyOptions {
                chown: true,
                owner: None,
            },
        )
    };
    if let Err(e) = r {
        assert!(!e.to_string().is_empty());
    }
}

fn apply_both(data: &[u8], applier: Applier, before: &[String]) {
    let fixed = fix_checksums(data);
    let t = Path::new("/t");
    for overlay in [false, true] {
        seed_target(t);
        applier(t, &fixed, overlay);
        let after = state(Path::new("/bait"));
        assert!(
            after == before,
            "the bait changed (overlay: {overlay}):\nbefore {before:#?}\nafter {after:#?}"
        );
        let mut top: Vec<String> = fs_err::read_dir("/")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        assert_eq!(
            top,
            ["bait", "proc", "t"],
            "something landed outside the target"
        );
    }
}

/// `data` with each tar header's checksum recomputed, so that mutations of the
/// header fields reach the applier instead of failing the checksum.
pub fn fix_checksums(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut pos = 0usize;
    while pos + 512 <= out.len() {
        let h = &mut out[pos..pos + 512];
        if h.iter().all(|&b| b == 0) {
            pos += 512;
            continue;
        }
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:07o}\0");
        h[148..156].copy_from_slice(s.as_bytes());
        let Some(size) = parse_size(&h[124..136]) else {
            break;
        };
        let blocks = size.div_ceil(512);
        match usize::try_from(blocks * 512)
            .ok()
            .and_then(|n| n.checked_add(512))
            .and_then(|n| n.checked_add(pos))
        {
            Some(next) => pos = next,
            None => break,
        }
    }
    out
}

fn parse_size(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        // base-256
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| (b'0'..=b'7').contains(&b))
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

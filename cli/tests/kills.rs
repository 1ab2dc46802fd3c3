//! Kills: a build killed with SIGKILL at any moment leaves nothing behind once the next
//! command ran. 30 builds with a large COPY (~80 MB, 2,500 files, through the
//! overlay of the base), a RUN and an export to a file are killed, each in a
//! phase chosen (with a printed seed; `RBUILD_KILL_SEED` replays one) and
//! recognised from the build's JSON progress: during the COPY, the RUN, the
//! layer hashing (`exporting layers`), the export (`sending tarball`) or the
//! final rename (`renaming to DEST`), after a random part of how long that
//! phase took in a reference build. After each kill and one `rbuild images`:
//! no mount under the state root, the test's TMPDIR or
//! `/tmp/rbuild-sandbox-*`; no half-made snapshot, scratch or lease; the
//! destination is absent or a complete archive with the reference's layers
//! (never truncated) and no `.rbuild-*` temporary file is beside it; and a
//! rebuild gives the reference image's layers (`SOURCE_DATE_EPOCH` makes
//! them reproducible).
//! The counts per phase are printed.
//!
//! Needs root and the busybox base; fails saying which is missing otherwise.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Env;
use sha2::Digest as _;

const KILLS: usize = 30;
const EPOCH: &str = "1600000000";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Copy,
    Run,
    Hashing,
    Export,
    Rename,
}

const PHASES: [Phase; 5] = [
    Phase::Copy,
    Phase::Run,
    Phase::Hashing,
    Phase::Export,
    Phase::Rename,
];

impl Phase {
    /// Whether the JSON event `v` starts (`end == false`) or ends the phase.
    fn matches(self, v: &serde_json::Value, end: bool, step_ids: &BTreeMap<String, u64>) -> bool {
        let event = v["event"].as_str().unwrap_or_default();
        let name = v["name"].as_str().unwrap_or_default();
        let status = |prefix: &str| {
            event == "vertex_status"
                && name.starts_with(prefix)
                && v["completed"].as_bool() == Some(end)
        };
        let step = |word: &str| {
            let want = if end { "vertex_done" } else { "vertex_started" };
            event == want
                && if end {
                    step_ids
                        .get(word)
                        .is_some_and(|id| v["id"].as_u64() == Some(*id))
                } else {
                    name.contains(word)
                }
        };
        match self {
            Phase::Copy => step("COPY"),
            Phase::Run => step("RUN"),
            Phase::Hashing => status("exporting layers"),
            Phase::Export => status("sending tarball"),
            Phase::Rename => status("renaming to "),
        }
    }
}

/// A seeded xorshift.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

struct Ev {
    at: Instant,
    v: serde_json::Value,
}

/// A build whose JSON progress events arrive on a channel as they come.
struct Build {
    child: Child,
    events: mpsc::Receiver<Ev>,
    reader: std::thread::JoinHandle<String>,
}

fn spawn(mut cmd: std::process::Command) -> Build {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, events) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(err).lines() {
            let line = line.unwrap_or_default();
            if line.starts_with('{') {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(Ev {
                        at: Instant::now(),
                        v,
                    });
                }
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    Build {
        child,
        events,
        reader,
    }
}

/// The build context: 2,000 small files and 3 × 24 MiB at the top (copied
/// into the base's existing `/tmp` through its overlay), 500 in a new
/// subdirectory (filled with the overlay unmounted).
fn write_context(dir: &Path) {
    fs_err::create_dir_all(dir.join("sub/deep")).unwrap();
    for i in 0..2000 {
        fs_err::write(
            dir.join(format!("f{i:04}")),
            format!("file {i}\n").repeat(400),
        )
        .unwrap();
    }
    for i in 0..500 {
        fs_err::write(dir.join(format!("sub/deep/g{i}")), vec![b'x'; 1000]).unwrap();
    }
    // Pseudo-random 24 MiB files, made a word at a time (debug builds are slow).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..3 {
        let mut data = Vec::with_capacity(24 << 20);
        for _ in 0..(24 << 20) / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        fs_err::write(dir.join(format!("blob{i}")), data).unwrap();
    }
    fs_err::write(
        dir.join("Dockerfile"),
        "FROM busybox\nCOPY . /tmp/\nRUN sleep 1 && ls /tmp | wc -l > /count && echo ran > /ran\n",
    )
    .unwrap();
}

/// New mtimes on every context file: the COPY then really copies (an
/// unchanged file would be hard-linked from the previous result).
fn touch_all(dir: &Path, t: std::time::SystemTime) {
    for e in fs_err::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            touch_all(&p, t);
        }
        std::fs::File::open(&p).unwrap().set_modified(t).unwrap();
    }
}

/// Every entry of a tar with its size and content hash; fails on a truncated
/// or corrupt tar.
fn tar_listing(path: &Path) -> Result<Vec<String>, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut a = tar::Archive::new(BufReader::new(f));
    let mut out = Vec::new();
    for e in a.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| format!("corrupt: {e}"))?;
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let want = e.header().size().map_err(|e| e.to_string())?;
        let mut data = Vec::new();
        e.read_to_end(&mut data)
            .map_err(|e| format!("truncated: {e}"))?;
        if data.len() as u64 != want {
            return Err(format!("truncated: {name} has {} of {want}", data.len()));
        }
        out.push(format!("{name} {want} {:x}", sha2::Sha256::digest(&data)));
    }
    if out.is_empty() {
        return Err("no entries".into());
    }
    out.sort();
    Ok(out)
}

/// A docker/OCI archive, checked whole: complete, every blob matching its
/// digest, every file `manifest.json` names present. Returns its layers.
fn archive_layers(path: &Path) -> Result<Vec<String>, String> {
    let listing = tar_listing(path)?;
    let mut files = BTreeMap::new();
    for l in &listing {
        let mut parts = l.rsplitn(3, ' ');
        let (hash, _, name) = (parts.next(), parts.next(), parts.next());
        if let (Some(h), Some(n)) = (hash, name) {
            if let Some(hex) = n.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                if hex != h {
                    return Err(format!("blob {n} holds {h}"));
                }
            }
            files.insert(n.to_owned(), h.to_owned());
        }
    }
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut a = tar::Archive::new(BufReader::new(f));
    let mut manifest = None;
    for e in a.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| e.to_string())?;
        if e.path_bytes().as_ref() == b"manifest.json" {
            let mut s = String::new();
            e.read_to_string(&mut s).map_err(|e| e.to_string())?;
            manifest = Some(s);
        }
    }
    let m: serde_json::Value =
        serde_json::from_str(&manifest.ok_or("no manifest.json")?).map_err(|e| e.to_string())?;
    let entry = &m[0];
    let config = entry["Config"].as_str().ok_or("no Config")?;
    let layers: Vec<String> = entry["Layers"]
        .as_array()
        .ok_or("no Layers")?
        .iter()
        .map(|l| l.as_str().unwrap_or_default().to_owned())
        .collect();
    for f in std::iter::once(config).chain(layers.iter().map(String::as_str)) {
        if !files.contains_key(f) {
            return Err(format!(
                "manifest.json names {f}, which is not in the archive"
            ));
        }
    }
    Ok(layers)
}

/// Mount points in this namespace under one of `dirs` or at
/// `/tmp/rbuild-sandbox-*`.
fn rbuild_mounts(dirs: &[PathBuf]) -> Vec<String> {
    let prefixes: Vec<String> = dirs
        .iter()
        .map(|d| format!("{}/", fs_err::canonicalize(d).unwrap().display()))
        .collect();
    fs_err::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| {
            prefixes.iter().any(|p| m.starts_with(p.as_str()))
                || m.starts_with("/tmp/rbuild-sandbox-")
        })
        .map(str::to_owned)
        .collect()
}

fn names_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    fs_err::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| keep(n))
                .collect()
        })
        .unwrap_or_default()
}

struct Kit {
    env: Env,
    tmpd: PathBuf,
    ctx: PathBuf,
}

impl Kit {
    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = self.env.cmd(args);
        c.env("SOURCE_DATE_EPOCH", EPOCH).env("TMPDIR", &self.tmpd);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd(args).stdin(Stdio::null()).output().unwrap();
        assert!(
            o.status.success(),
            "rbuild {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// A build to the store; returns its layers (diff IDs).
    fn build_layers(&self) -> String {
        let iid = self.env.path("iid");
        let _ = std::fs::remove_file(&iid);
        self.ok(&[
            "build",
            "--progress",
            "plain",
            "--iidfile",
            iid.to_str().unwrap(),
            "-t",
            "kill:check",
            self.ctx.to_str().unwrap(),
        ]);
        let id = fs_err::read_to_string(&iid).unwrap();
        self.ok(&["inspect", "--format", "{{json .RootFS.Layers}}", &id])
    }
}

fn output_arg(kind: &str, dest: &Path) -> String {
    format!("type={kind},dest={}", dest.display())
}

#[test]
fn killed_builds_leave_no_mount_no_truncated_output_and_a_working_store() {
    let env = common::build_env();
    let t0 = Instant::now();
    let tmpd = env.path("tmpdir");
    fs_err::create_dir_all(&tmpd).unwrap();
    let ctx = env.path("ctx");
    write_context(&ctx);
    println!("context written in {:.1}s", t0.elapsed().as_secs_f64());
    let out_dir = env.path("out");
    fs_err::create_dir_all(&out_dir).unwrap();
    let kit = Kit { env, tmpd, ctx };
    let root = kit.env.root();

    // References: the image, the docker archive and the rootfs tar, and how
    // long each phase takes here.
    let ref_docker = kit.env.path("ref-docker.tar");
    let o = kit
        .cmd(&[
            "build",
            "--no-cache",
            "--progress",
            "json",
            "-o",
            &output_arg("docker", &ref_docker),
            kit.ctx.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "reference build: {log}");
    let ref_layers = archive_layers(&ref_docker).unwrap();
    let ref_diff_ids = kit.build_layers();
    let ref_rootfs = kit.env.path("ref-rootfs.tar");
    kit.ok(&[
        "build",
        "--progress",
        "plain",
        "-o",
        &output_arg("tar", &ref_rootfs),
        kit.ctx.to_str().unwrap(),
    ]);
    let ref_rootfs_listing = tar_listing(&ref_rootfs).unwrap();
    // Phase durations, from a timed --no-cache build with events.
    touch_all(&kit.ctx, std::time::SystemTime::now());
    let timed = kit.env.path("timed.tar");
    let mut b = spawn(kit.cmd(&[
        "build",
        "--no-cache",
        "--progress",
        "json",
        "-o",
        &output_arg("docker", &timed),
        kit.ctx.to_str().unwrap(),
    ]));
    let mut step_ids = BTreeMap::new();
    let mut starts: BTreeMap<Phase, Instant> = BTreeMap::new();
    let mut took: BTreeMap<Phase, Duration> = BTreeMap::new();
    while let Ok(ev) = b.events.recv_timeout(Duration::from_secs(120)) {
        remember_step(&ev.v, &mut step_ids);
        for p in PHASES {
            if p.matches(&ev.v, false, &step_ids) {
                starts.insert(p, ev.at);
            }
            if p.matches(&ev.v, true, &step_ids) {
                if let Some(s) = starts.get(&p) {
                    took.insert(p, ev.at - *s);
                }
            }
        }
    }
    assert!(b.child.wait().unwrap().success());
    let log = b.reader.join().unwrap();
    for p in PHASES {
        assert!(
            took.contains_key(&p),
            "no {p:?} phase in the progress:\n{log}"
        );
    }
    assert_eq!(archive_layers(&timed).unwrap(), ref_layers);
    println!("phase durations here: {took:?}");

    let seed = std::env::var("RBUILD_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            (t.as_secs() << 20) ^ u64::from(t.subsec_nanos()) | 1
        });
    println!("seed {seed} (RBUILD_KILL_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    // Each phase 6 times, in a seeded order.
    let mut plan: Vec<Phase> = (0..KILLS).map(|i| PHASES[i % PHASES.len()]).collect();
    for i in (1..plan.len()).rev() {
        let j = usize::try_from(rng.next() % (i as u64 + 1)).unwrap();
        plan.swap(i, j);
    }

    let mut during: BTreeMap<Phase, usize> = BTreeMap::new();
    let mut after: BTreeMap<Phase, usize> = BTreeMap::new();
    let (mut mounts_seen, mut outputs_present) = (0usize, 0usize);
    let base = kit.env.path("base.tar");
    for (round, phase) in plan.into_iter().enumerate() {
        if round > 0 && round % 10 == 0 {
            // A fresh state root every 10 kills: each completed COPY keeps a
            // snapshot of the whole context, and CI disks are small.
            assert!(rbuild_mounts(std::slice::from_ref(&root)).is_empty());
            fs_err::remove_dir_all(&root).unwrap();
            kit.ok(&["import", base.to_str().unwrap(), "busybox:latest"]);
        }
        // The rootfs tar has no layer hashing; the archives (docker, oci:
        // the same bytes) do.
        let pick = usize::try_from(rng.next() % 3).unwrap();
        let kind = if phase == Phase::Hashing {
            ["docker", "oci", "docker"][pick]
        } else {
            ["docker", "oci", "tar"][pick]
        };
        let dest = out_dir.join(format!("out-{round}.tar"));
        touch_all(
            &kit.ctx,
            std::time::SystemTime::now() + Duration::from_secs(u64::try_from(round).unwrap() + 1),
        );
        let window = took[&phase];
        let delay = if phase == Phase::Rename {
            Duration::ZERO
        } else {
            Duration::from_millis(rng.next() % u64::try_from(window.as_millis()).unwrap().max(1))
        };
        let mut b = spawn(kit.cmd(&[
            "build",
            "--no-cache",
            "--progress",
            "json",
            "-o",
            &output_arg(kind, &dest),
            kit.ctx.to_str().unwrap(),
        ]));
        let mut step_ids = BTreeMap::new();
        let triggered = loop {
            match b.events.recv_timeout(Duration::from_secs(120)) {
                Ok(ev) => {
                    remember_step(&ev.v, &mut step_ids);
                    if phase.matches(&ev.v, false, &step_ids) {
                        break true;
                    }
                }
                Err(_) => break false,
            }
        };
        std::thread::sleep(delay);
        let _ = b.child.kill(); // SIGKILL
        let status = b.child.wait().unwrap();
        let log = b.reader.join().unwrap();
        assert!(
            triggered,
            "round {round}: the build never reached {phase:?} ({status}):\n{log}"
        );
        // Did the phase end before the kill?
        let mut ids = BTreeMap::new();
        let ended = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| {
                remember_step(&v, &mut ids);
                phase.matches(&v, true, &ids)
            });
        *if ended { &mut after } else { &mut during }
            .entry(phase)
            .or_default() += 1;
        let left_mounted = rbuild_mounts(&[root.clone(), kit.tmpd.clone()]);
        mounts_seen += usize::from(!left_mounted.is_empty());

        // The output: absent, or complete with the reference's content.
        if dest.exists() {
            outputs_present += 1;
            let bad = |e: String| panic!("round {round}: {kind} output {dest:?} is {e}");
            if kind == "tar" {
                let listing = tar_listing(&dest).unwrap_or_else(bad);
                assert!(
                    listing == ref_rootfs_listing,
                    "round {round}: the rootfs tar differs from the reference"
                );
            } else {
                let layers = archive_layers(&dest).unwrap_or_else(bad);
                assert_eq!(layers, ref_layers, "round {round}: layers of the archive");
            }
        }

        // The next command cleans up after the dead build.
        kit.ok(&["images"]);
        let mounts = rbuild_mounts(&[root.clone(), kit.tmpd.clone()]);
        assert!(
            mounts.is_empty(),
            "round {round} ({phase:?}): still mounted after the next command: {mounts:?}"
        );
        let temps = names_in(&out_dir, |n| n.starts_with(".rbuild-"));
        assert!(
            temps.is_empty(),
            "round {round}: {temps:?} beside the output"
        );
        let leftovers: Vec<String> = [
            names_in(&root.join("snapshots"), |n| n.starts_with("tmp-")),
            names_in(&root.join("snapshots/mounts"), |_| true),
            names_in(&root.join("tmp"), |_| true),
            names_in(&root.join("leases"), |_| true),
            names_in(&kit.tmpd, |_| true),
        ]
        .concat();
        assert!(
            leftovers.is_empty(),
            "round {round} ({phase:?}): left behind: {leftovers:?}"
        );

        // A rebuild gives the reference image's layers.
        assert_eq!(
            kit.build_layers(),
            ref_diff_ids,
            "round {round}: rebuild after a kill"
        );
        let _ = std::fs::remove_file(&dest);
        println!(
            "round {round}: {kind} build killed {} {phase:?} (+{} ms; {status}){} [{:.0}s]",
            if ended { "after" } else { "during" },
            delay.as_millis(),
            if left_mounted.is_empty() {
                String::new()
            } else {
                format!(
                    ", left {} mount(s), unmounted by the next command",
                    left_mounted.len()
                )
            },
            t0.elapsed().as_secs_f64()
        );
    }
    println!("kills per phase, the phase still running at the kill: {during:?}");
    println!("kills per phase, the phase already over at the kill: {after:?}");
    println!(
        "{mounts_seen} of {KILLS} kills left a mount, all gone after the next command; \
         {outputs_present} outputs complete, none truncated; {:.0}s",
        t0.elapsed().as_secs_f64()
    );
    let t_end = Instant::now();
    drop(kit);
    println!(
        "state root removed in {:.0}s",
        t_end.elapsed().as_secs_f64()
    );
    // The kills did land inside the long phases.
    for p in [Phase::Copy, Phase::Run] {
        assert!(
            during.get(&p).copied().unwrap_or(0) > 0,
            "no kill landed during {p:?}: {during:?}"
        );
    }
}

/// Remembers the vertex IDs of the COPY and RUN steps from `vertex_started`.
fn remember_step(v: &serde_json::Value, ids: &mut BTreeMap<String, u64>) {
    if v["event"] == "vertex_started" {
        let name = v["name"].as_str().unwrap_or_default();
        for word in ["COPY", "RUN"] {
            if name.contains(word) {
                if let Some(id) = v["id"].as_u64() {
                    ids.insert(word.to_owned(), id);
                }
            }
        }
    }
}

/// `save -o F` killed at random points (a seeded part of how long a save
/// takes here): `F` is absent or a complete archive, and no `.rbuild-save-*`
/// is left beside it once the next command ran.
#[test]
fn killed_saves_leave_no_temporary_file_beside_the_destination() {
    let env = Env::new();
    let ctx = env.path("rootfs");
    fs_err::create_dir_all(&ctx).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..2 {
        let mut data = Vec::with_capacity(24 << 20);
        for _ in 0..(24 << 20) / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        fs_err::write(ctx.join(format!("blob{i}")), data).unwrap();
    }
    let rootfs = env.path("rootfs.tar");
    {
        let mut b = tar::Builder::new(fs_err::File::create(&rootfs).unwrap());
        b.append_dir_all(".", &ctx).unwrap();
        b.finish().unwrap();
    }
    env.ok(&["import", rootfs.to_str().unwrap(), "big:1"]);
    let dir = env.path("dest");
    fs_err::create_dir_all(&dir).unwrap();
    let dest = dir.join("big.tar");
    let t = Instant::now();
    env.ok(&["save", "-o", dest.to_str().unwrap(), "big:1"]);
    let full = u64::try_from(t.elapsed().as_millis()).unwrap().max(10);
    let reference = archive_layers(&dest).unwrap();
    let seed = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
    ) | 1;
    println!("seed {seed}; a save takes {full} ms here");
    let mut rng = Rng(seed);
    let mut killed = 0;
    for round in 0..8 {
        let _ = std::fs::remove_file(&dest);
        let mut child = env
            .cmd(&["save", "-o", dest.to_str().unwrap(), "big:1"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.next() % full));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill();
        child.wait().unwrap();
        killed += usize::from(!finished);
        if dest.exists() {
            assert_eq!(archive_layers(&dest).unwrap(), reference, "round {round}");
        }
        env.ok(&["images"]);
        let temps = names_in(&dir, |n| n.starts_with(".rbuild-"));
        assert!(
            temps.is_empty(),
            "round {round}: {temps:?} left beside the output"
        );
    }
    println!("{killed} of 8 saves killed before they finished");
    assert!(killed > 0, "no save was killed midway");
}

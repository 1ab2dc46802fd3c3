//! The sandbox over the busybox rootfs of `testdata/examples/busybox-base.sh`.
//!
//! Needs root (namespaces, mounts); every test fails saying what is missing when
//! it cannot run here (not root, no busybox-base.sh, no busybox).

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbuild_sandbox::{
    CancelToken, ExitStatus, Mount, NetworkMode, Output, ProcessSpec, Rootfs, SandboxError,
    SecurityMode, run,
};

const BASE_SH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../testdata/examples/busybox-base.sh"
);

fn base_tar() -> &'static Path {
    static TAR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TAR.get_or_init(|| {
        assert!(
            nix::unistd::geteuid().is_root(),
            "cannot run: the sandbox tests need root"
        );
        assert!(
            Path::new(BASE_SH).exists(),
            "cannot run: {BASE_SH} is absent"
        );
        // In cargo's per-target scratch dir (not /tmp: a static is never dropped),
        // made under a temporary name and renamed into place.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(dir).unwrap();
        let tar = dir.join("sandbox-base.tar");
        let tmp = dir.join(format!("sandbox-base.tar.{}", std::process::id()));
        let ok = Command::new("sh")
            .arg(BASE_SH)
            .arg(&tmp)
            .status()
            .is_ok_and(|s| s.success())
            && std::fs::rename(&tmp, &tar).is_ok();
        assert!(
            ok,
            "cannot run: base.sh failed (is busybox-static installed?)"
        );
        tar
    })
}

/// A fresh copy of the busybox rootfs (removed on drop).
struct TestRoot {
    dir: tempfile::TempDir,
}

impl TestRoot {
    fn path(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn rootfs(&self) -> Rootfs {
        Rootfs::Dir(self.path())
    }
}

fn test_root() -> TestRoot {
    let tar = base_tar();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    extract(tar, &root);
    // base.sh's tar gives `./` mode 0700 (its mktemp dir); make / traversable for
    // the non-root users of the tests, as an image's root normally is.
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    TestRoot { dir }
}

fn extract(tar: &Path, into: &Path) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(into)
        .arg("-xf")
        .arg(tar)
        .status()
        .unwrap();
    assert!(st.success());
}

/// The empty mount points a run may leave (as runc does under `BuildKit`; the
/// conformance harness drops them from comparisons too).
const PLACEHOLDERS: &[&str] = &[
    "proc",
    "dev",
    "sys",
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
];

fn is_empty_placeholder(root: &Path, rel: &str) -> bool {
    PLACEHOLDERS.contains(&rel)
        && std::fs::symlink_metadata(root.join(rel)).is_ok_and(|m| {
            (m.is_dir() && std::fs::read_dir(root.join(rel)).unwrap().next().is_none())
                || (m.is_file() && m.len() == 0)
        })
}

/// Everything below `root` (but empty placeholders), with type, mode, size and
/// content, for before/after comparisons.
fn tree(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if is_empty_placeholder(root, &rel) {
                continue;
            }
            let content = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            out.insert(format!(
                "{rel} mode={:o} uid={} size={} {:?}",
                m.mode(),
                m.uid(),
                m.len(),
                &content[..content.len().min(64)]
            ));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

struct Captured {
    status: Result<ExitStatus, SandboxError>,
    out: Vec<String>,
    err: Vec<String>,
}

fn sink(v: &Arc<Mutex<Vec<String>>>) -> Output {
    let v = Arc::clone(v);
    Output::lines(move |l| {
        v.lock()
            .unwrap()
            .push(String::from_utf8_lossy(l).into_owned());
    })
}

fn run_captured(rootfs: &Rootfs, mut spec: ProcessSpec) -> Captured {
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    spec.stdout = sink(&out);
    spec.stderr = sink(&err);
    if spec.timeout.is_none() {
        spec.timeout = Some(Duration::from_secs(60));
    }
    let status = run(rootfs, spec);
    let out = out.lock().unwrap().clone();
    let err = err.lock().unwrap().clone();
    Captured { status, out, err }
}

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec::new(["/bin/sh", "-c", script])
}

fn run_sh(root: &TestRoot, script: &str) -> Captured {
    run_captured(&root.rootfs(), sh(script))
}

fn code(c: &Captured) -> i32 {
    match &c.status {
        Ok(s) => s.code,
        Err(e) => panic!("run failed: {e}; stderr: {:?}", c.err),
    }
}

/// The host's mounts that mention `own` (the test's own rootfs): a mount another
/// process made elsewhere is not this test's leak.
fn host_mounts(own: &Path) -> Vec<String> {
    let own = own.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&own))
        .map(str::to_owned)
        .collect()
}

/// Pids whose command line contains `token`.
fn processes_with(token: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&c).contains(token)
            && name != std::process::id().to_string()
        {
            found.push(name);
        }
    }
    found
}

#[test]
fn ps_shows_only_the_sandbox_processes() {
    let root = test_root();
    let c = run_captured(&root.rootfs(), ProcessSpec::new(["ps", "-o", "pid,comm"]));
    assert_eq!(code(&c), 0, "{:?}", c.err);
    let pids: Vec<&str> = c.out[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(pids, ["1", "2"], "{:?}", c.out);
    assert!(c.out[1].contains("rbuild-init"), "{:?}", c.out);
    assert!(c.out[2].contains("ps"), "{:?}", c.out);
}

#[test]
fn hostname_is_the_sandboxes() {
    let root = test_root();
    let host = nix::unistd::gethostname().unwrap();
    let mut spec = sh(
        "hostname; cat /etc/hostname; grep sbx-host /etc/hosts; echo x >> /etc/hosts || echo ro; ls -a /dev | grep rbuild | wc -l",
    );
    spec.hostname = "sbx-host".into();
    let c = run_captured(&root.rootfs(), spec);
    assert_eq!(code(&c), 0, "{:?}", c.err);
    assert_eq!(c.out[0], "sbx-host");
    assert_eq!(c.out[1], "sbx-host");
    assert!(c.out[2].starts_with("127.0.0.1"), "{:?}", c.out);
    // Read-only like BuildKit's, and its staging file is gone from /dev.
    assert_eq!(&c.out[3..], ["ro", "0"]);
    assert_eq!(nix::unistd::gethostname().unwrap(), host);
}

#[test]
fn network_none_has_only_loopback_up() {
    let root = test_root();
    let mut spec = sh("tail -n +3 /proc/net/dev; ip -o link");
    spec.network = NetworkMode::None;
    let c = run_captured(&root.rootfs(), spec);
    assert_eq!(code(&c), 0, "{:?}", c.err);
    assert_eq!(c.out.len(), 2, "{:?}", c.out);
    assert!(c.out[0].trim_start().starts_with("lo:"), "{:?}", c.out);
    assert!(
        c.out[1].contains("lo:") && c.out[1].contains("UP"),
        "{:?}",
        c.out
    );
}

#[test]
fn network_host_sees_the_host_interfaces() {
    let root = test_root();
    let host = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .count();
    let c = run_sh(&root, "cat /proc/net/dev");
    assert_eq!(code(&c), 0, "{:?}", c.err);
    assert_eq!(c.out.len(), host);
}

#[test]
fn host_files_and_mounts_are_not_visible() {
    let root = test_root();
    let marker = root.dir.path().join("host-only-marker-7f3a");
    std::fs::write(&marker, "x").unwrap();
    let c = run_sh(
        &root,
        "find / -xdev -name 'host-only-marker-*' 2>/dev/null; echo ---; cat /proc/mounts; echo ---; ls /",
    );
    assert_eq!(code(&c), 0, "{:?}", c.err);
    let sep: Vec<usize> = c
        .out
        .iter()
        .enumerate()
        .filter(|(_, l)| *l == "---")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(sep[0], 0, "marker found inside: {:?}", c.out);
    let mounts = &c.out[sep[0] + 1..sep[1]];
    for m in mounts {
        let target = m.split_whitespace().nth(1).unwrap();
        assert!(
            ["/", "/proc", "/dev", "/sys", "/etc"]
                .iter()
                .any(|p| target == *p || target.starts_with(&format!("{p}/"))),
            "unexpected mount inside: {m}"
        );
        assert!(!m.contains(root.dir.path().to_str().unwrap()), "{m}");
    }
    let ls: BTreeSet<&str> = c.out[sep[1] + 1..].iter().map(String::as_str).collect();
    assert!(ls.contains("bin") && ls.contains("etc"), "{ls:?}");
    assert!(!ls.contains("work") && !ls.contains("usr"), "{ls:?}");
}

#[test]
fn writes_in_an_overlay_change_nothing_below() {
    let root = test_root();
    let lower = root.path();
    let before = tree(&lower);
    let upper = root.dir.path().join("upper");
    let work = root.dir.path().join("work");
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir(&work).unwrap();
    let rootfs = Rootfs::Overlay {
        lower: vec![lower.clone()],
        upper: upper.clone(),
        work,
    };
    let c = run_captured(
        &rootfs,
        sh(
            "echo new > /newfile && rm /bin/ls && echo more >> /etc/passwd && mkdir -p /var/x/y && cat /newfile",
        ),
    );
    assert_eq!(code(&c), 0, "{:?}", c.err);
    assert_eq!(c.out, ["new"]);
    assert_eq!(tree(&lower), before, "the lower dir changed");
    assert_eq!(
        std::fs::read_to_string(upper.join("newfile")).unwrap(),
        "new\n"
    );
    assert!(
        std::fs::read_to_string(upper.join("etc/passwd"))
            .unwrap()
            .ends_with("more\n")
    );
    assert!(upper.join("var/x/y").is_dir());
    // Nothing else is in the layer: the step's changes and empty placeholders.
    let names: BTreeSet<String> = tree(&upper)
        .iter()
        .map(|e| e.split(' ').next().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = [
        "newfile",
        "etc",
        "etc/passwd",
        "bin",
        "bin/ls",
        "var",
        "var/x",
        "var/x/y",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(names, want);
    // The overlay lived in the sandbox's mount namespace only.
    assert_eq!(host_mounts(&upper), Vec::<String>::new());
}

fn add_app_user(root: &TestRoot) {
    let etc = root.path().join("etc");
    let mut passwd = std::fs::read_to_string(etc.join("passwd")).unwrap();
    passwd.push_str("app:x:1000:1000:app:/home/app:/bin/sh\n");
    std::fs::write(etc.join("passwd"), passwd).unwrap();
    let mut group = std::fs::read_to_string(etc.join("group")).unwrap();
    group.push_str("app:x:1000:\nwheel:x:10:app\nstaff:x:50:other,app\n");
    std::fs::write(etc.join("group"), group).unwrap();
}

#[test]
fn user_from_the_image_passwd_and_group() {
    let root = test_root();
    add_app_user(&root);
    let mut spec = sh("id; echo $HOME; cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs)'");
    spec.user = "app".into();
    let c = run_captured(&root.rootfs(), spec);
    assert_eq!(code(&c), 0, "{:?}", c.err);
    assert_eq!(
        c.out[0],
        // (the kernel keeps supplementary groups sorted)
        "uid=1000(app) gid=1000(app) groups=10(wheel),50(staff),1000(app)"
    );
    assert_eq!(c.out[1], "/home/app");
    assert_eq!(c.out[2], "CapEff:\t0000000000000000");
    assert_eq!(c.out[3], "NoNewPrivs:\t1");

    let mut spec = ProcessSpec::new(["id"]);
    spec.user = "app:wheel".into();
    let c = run_captured(&root.rootfs(), spec);
    assert_eq!(c.out, ["uid=1000(app) gid=10(wheel) groups=10(wheel)"]);

    let mut spec = ProcessSpec::new(["id"]);
    spec.user = "1234:4321".into();
    let c = run_captured(&root.rootfs(), spec);
    assert_eq!(c.out, ["uid=1234 gid=4321 groups=4321"]);

    // A build step's groups are BuildKit's: member groups only, none for a
    // numeric uid:gid or the default user.
    let mut spec = ProcessSpec::new(["id"]);
    spec.user = "app".into();
    spec.step_groups = true;
    let c = run_captured(&root.rootfs(), spec);
    assert_eq!(
        c.out,
        ["uid=1000(app) gid=1000(app) groups=10(wheel),50(staff)"]
    );
    let mut spec = ProcessSpec::new(["id"]);
    spec.user = "1234:4321".into();
    spec.step_groups = true;
    let c = run_captured(&root.rootfs(), spec);
    assert_eq!(c.out, ["uid=1234 gid=4321"]);
    let mut spec = ProcessSpec::new(["id"]);
    spec.step_groups = true;
    let c = run_captured(&root.rootfs(), spec);
    assert_eq!(c.out, ["uid=0(root) gid=0(root)"]);

    let mut spec = ProcessSpec::new(["id"]);
    spec.user = "nobody".into();
    let c = run_captured(&root.rootfs(), spec);
    assert_eq!(
        c.out,
        ["uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)"]
    );
}

#[test]
fn unknown_user_is_an_error_naming_it() {
    let root = test_root();
    let mut spec = ProcessSpec::new(["id"]);
    spec.user = "ghost".into();
    let c = run_captured(&root.rootfs(), spec);
    let e = c.status.unwrap_err().to_string();
    assert!(e.contains("ghost"), "{e}");
}

#[test]
fn root_gets_dockers_default_capabilities() {
    let root = test_root();
    let c = run_sh(&root, "grep -E '^Cap(Eff|Bnd)' /proc/self/status");
    assert_eq!(code(&c), 0, "{:?}", c.err);
    assert_eq!(
        c.out,
        ["CapEff:\t00000000a80425fb", "CapBnd:\t00000000a80425fb"]
    );
    let mut spec = sh("grep -E '^CapEff|^NoNewPrivs' /proc/self/status");
    spec.security = SecurityMode::Insecure;
    let c = run_captured(&root.rootfs(), spec);
    let host_eff = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("CapEff"))
        .unwrap()
        .to_string();
    assert_eq!(c.out, [host_eff, "NoNewPrivs:\t0".to_string()]);
}

#[test]
fn exit_codes_pass_through() {
    let root = test_root();
    for (script, want, sig) in [
        ("exit 0", 0, None),
        ("exit 1", 1, None),
        ("exit 3", 3, None),
        ("no-such-command", 127, None),
        ("kill -TERM $$", 143, Some(15)),
        ("kill -KILL $$", 137, Some(9)),
    ] {
        let c = run_sh(&root, script);
        let st = c.status.unwrap();
        assert_eq!((st.code, st.signal), (want, sig), "{script}");
    }
    // Exec form: a missing command is an error with the shell's 127.
    let c = run_captured(&root.rootfs(), ProcessSpec::new(["no-such-command"]));
    let e = c.status.unwrap_err();
    assert_eq!(e.exit_code(), 127, "{e}");
    assert!(e.to_string().contains("no-such-command"), "{e}");
    let c = run_captured(&root.rootfs(), ProcessSpec::new(["/etc/passwd"]));
    assert_eq!(c.status.unwrap_err().exit_code(), 126);
}

#[test]
fn a_timeout_kills_everything_and_leaves_no_mounts() {
    let root = test_root();
    let mounts_before = host_mounts(&root.path());
    let tree_before = tree(&root.path());
    let token = "timeout-token-91c2";
    let mut spec = sh(&format!(
        "sleep 1000 & (sleep 1000; : {token}) & echo started; sleep 1000; : {token}"
    ));
    spec.timeout = Some(Duration::from_millis(500));
    let c = run_captured(&root.rootfs(), spec);
    assert!(
        matches!(c.status, Err(SandboxError::TimedOut(_))),
        "{:?}",
        c.status.map_err(|e| e.to_string())
    );
    assert_eq!(c.out, ["started"]);
    assert_eq!(processes_with(token), Vec::<String>::new());
    assert_eq!(host_mounts(&root.path()), mounts_before);
    assert_eq!(tree(&root.path()), tree_before);
}

#[test]
fn cancel_kills_everything() {
    let root = test_root();
    let mounts_before = host_mounts(&root.path());
    let token = CancelToken::new();
    let t2 = token.clone();
    let mut spec = sh("echo go; sleep 1000; : cancel-token-55e1");
    spec.cancel = Some(token);
    spec.stdout = Output::lines(move |l| {
        if l == b"go" {
            t2.cancel();
        }
    });
    let r = run(&root.rootfs(), spec);
    assert!(matches!(r, Err(SandboxError::Cancelled)));
    assert_eq!(processes_with("cancel-token-55e1"), Vec::<String>::new());
    assert_eq!(host_mounts(&root.path()), mounts_before);
}

#[test]
fn two_hundred_runs_leave_mounts_and_rootfs_as_they_were() {
    let root = test_root();
    let mounts_before = host_mounts(&root.path());
    let tree_before = tree(&root.path());
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let fds_before = fds();
    for i in 0..200 {
        let mut spec = ProcessSpec::new(["true"]);
        if i % 2 == 0 {
            spec.network = NetworkMode::None;
        }
        if i % 3 == 0 {
            spec.mounts.push(Mount::secret("s", "x"));
            spec.mounts.push(Mount::Tmpfs {
                target: "/scratch/t".into(),
                size: Some(1 << 20),
            });
        }
        assert_eq!(run(&root.rootfs(), spec).unwrap().code, 0, "run {i}");
    }
    assert_eq!(host_mounts(&root.path()), mounts_before);
    // No fd leaks (other tests run in parallel threads: allow their few fds).
    assert!(
        fds() < fds_before + 16,
        "fds: {fds_before} before, {} after",
        fds()
    );
    assert_eq!(tree(&root.path()), tree_before);
}

#[test]
fn output_is_streamed_line_by_line() {
    let root = test_root();
    // The process waits for a file that the sink creates when it sees "ready":
    // without streaming it would wait until the timeout.
    let sync = root.dir.path().join("sync");
    std::fs::create_dir(&sync).unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (l2, s2) = (Arc::clone(&lines), sync.clone());
    let mut spec = sh(
        "echo ready; i=0; while [ ! -e /sync/go ]; do sleep 0.05; i=$((i+1)); [ $i -gt 600 ] && exit 9; done; echo done; printf partial",
    );
    spec.mounts.push(Mount::Bind {
        source: sync.clone(),
        target: "/sync".into(),
        readonly: true,
    });
    spec.stdout = Output::lines(move |l| {
        if l == b"ready" {
            std::fs::write(s2.join("go"), "").unwrap();
        }
        l2.lock()
            .unwrap()
            .push(String::from_utf8_lossy(l).into_owned());
    });
    assert_eq!(run(&root.rootfs(), spec).unwrap().code, 0);
    assert_eq!(*lines.lock().unwrap(), ["ready", "done", "partial"]);
}

#[test]
fn read_only_bind_cannot_be_written_and_rw_can() {
    let root = test_root();
    let data = root.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("f"), "host\n").unwrap();
    let mut spec =
        sh("cat /data/f; echo x > /data/f || echo ro-refused; touch /data/new || echo ro-refused");
    spec.mounts.push(Mount::bind(&data, "/data"));
    let c = run_captured(&root.rootfs(), spec);
    assert_eq!(code(&c), 0);
    assert_eq!(c.out, ["host", "ro-refused", "ro-refused"]);
    assert_eq!(std::fs::read_to_string(data.join("f")).unwrap(), "host\n");
    assert!(!data.join("new").exists());
    assert!(
        !root.path().join("data").exists(),
        "mount point left in the rootfs"
    );

    let mut spec = sh("echo rw > /deep/dir/data/new");
    spec.mounts.push(Mount::Bind {
        source: data.clone(),
        target: "/deep/dir/data".into(),
        readonly: false,
    });
    assert_eq!(run(&root.rootfs(), spec).unwrap().code, 0);
    assert_eq!(std::fs::read_to_string(data.join("new")).unwrap(), "rw\n");
    assert!(
        !root.path().join("deep").exists(),
        "mount point left in the rootfs"
    );
}

#[test]
fn cache_and_tmpfs_mounts() {
    let root = test_root();
    let cache = root.dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let mut spec = sh(
        "echo 1 >> /root/.cache/count; wc -l < /root/.cache/count; grep ' /tmp/t ' /proc/mounts; echo x > /tmp/t/f",
    );
    spec.mounts.push(Mount::Cache {
        source: cache.clone(),
        target: "/root/.cache".into(),
    });
    spec.mounts.push(Mount::Tmpfs {
        target: "/tmp/t".into(),
        size: Some(4 << 20),
    });
    let c = run_captured(&root.rootfs(), spec);
    assert_eq!(code(&c), 0, "{:?}", c.err);
    assert_eq!(c.out[0], "1");
    assert!(
        c.out[1].starts_with("tmpfs /tmp/t tmpfs") && c.out[1].contains("size=4096k"),
        "{:?}",
        c.out
    );
    assert!(cache.join("count").exists());
    assert!(!root.path().join("tmp/t").exists());
    assert!(!root.path().join("root/.cache").exists());
}

#[test]
fn secret_is_readable_inside_and_absent_afterwards() {
    let root = test_root();
    let upper = root.dir.path().join("upper");
    let work = root.dir.path().join("work");
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir(&work).unwrap();
    let rootfs = Rootfs::Overlay {
        lower: vec![root.path()],
        upper: upper.clone(),
        work,
    };
    let mut spec = sh(
        "cat /run/secrets/token; echo; stat -c '%a %u' /run/secrets/token; echo x > /run/secrets/token || echo ro; cat /etc/s2",
    );
    spec.mounts.push(Mount::secret("token", "s3cr3t-value"));
    spec.mounts.push(Mount::Secret {
        target: "/etc/s2".into(),
        data: b"second-s3cr3t".to_vec(),
        uid: 1000,
        gid: 1000,
        mode: 0o440,
    });
    let c = run_captured(&rootfs, spec);
    assert_eq!(code(&c), 0, "{:?}", c.err);
    assert_eq!(c.out, ["s3cr3t-value", "400 0", "ro", "second-s3cr3t"]);
    assert!(!upper.join("run").exists());
    assert!(!upper.join("etc/s2").exists());
    let grep = Command::new("grep")
        .args(["-rl", "s3cr3t"])
        .arg(&upper)
        .arg(root.path())
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&grep.stdout)
    );
}

#[test]
fn cwd_env_and_missing_workdir() {
    let root = test_root();
    add_app_user(&root);
    let mut spec = sh("pwd; echo $FOO; echo $PATH; touch f");
    spec.cwd = "/work/dir".into();
    spec.user = "app".into();
    spec.env = vec!["FOO=bar baz".into()];
    let c = run_captured(&root.rootfs(), spec);
    assert_eq!(code(&c), 0, "{:?}", c.err);
    assert_eq!(
        c.out,
        [
            "/work/dir",
            "bar baz",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]
    );
    assert_eq!(
        std::fs::metadata(root.path().join("work/dir"))
            .unwrap()
            .uid(),
        1000
    );
}

#[test]
fn dev_has_the_minimal_devices() {
    let root = test_root();
    let c = run_sh(
        &root,
        "ls /dev | tr '\\n' ' '; echo; head -c 4 /dev/zero | wc -c; echo x > /dev/null && echo null-ok; echo x > /dev/full || echo full-ok; df /dev/shm | tail -1 | tr -s ' ' | cut -d' ' -f6",
    );
    assert_eq!(code(&c), 0, "{:?}", c.err);
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "fd", "stdin",
        "stdout", "stderr",
    ] {
        assert!(
            c.out[0].split(' ').any(|x| x == d),
            "/dev lacks {d}: {}",
            c.out[0]
        );
    }
    assert_eq!(&c.out[1..], ["4", "null-ok", "full-ok", "/dev/shm"]);
}

/// A marker no earlier run wrote to the kernel log.
fn kmsg_marker(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("rbuild-kmsg-{what}-{}-{nanos}", std::process::id())
}

fn host_kernel_log() -> String {
    let o = Command::new("dmesg")
        .output()
        .unwrap_or_else(|e| panic!("dmesg is missing ({e}): install util-linux"));
    assert!(o.status.success(), "dmesg failed: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn mknod(path: &Path, major: u32, minor: u32) {
    let st = Command::new("mknod")
        .args(["-m", "666"])
        .arg(path)
        .args(["c", &major.to_string(), &minor.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "mknod {}", path.display());
}

/// Docker's device allowlist: a node outside it (1:11, /dev/kmsg) can be made
/// (and lands in the rootfs) but not opened, whether made by `mknod` in the run,
/// shipped in the rootfs (a lower layer) or found in a cache or bind mount, as
/// root or as another user; the allowed devices and the ptys keep working.
#[test]
fn devices_outside_the_allowlist_cannot_be_opened() {
    let root = test_root();
    let marker = kmsg_marker("sandbox");
    mknod(&root.path().join("shipped"), 1, 11);
    let cache = root.dir.path().join("cache");
    let data = root.dir.path().join("data");
    for d in [&cache, &data] {
        std::fs::create_dir(d).unwrap();
        mknod(&d.join("node"), 1, 11);
    }
    let upper = root.dir.path().join("upper");
    let work = root.dir.path().join("work");
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir(&work).unwrap();
    let rootfs = Rootfs::Overlay {
        lower: vec![root.path()],
        upper: upper.clone(),
        work,
    };
    let try_write = |p: &str| {
        format!("if echo {marker} > {p}; then echo {p}-opened; else echo {p}-refused; fi; ")
    };
    let script = format!(
        "mknod /made c 1 11 && echo made; {}{}{}{}{}\
         echo x > /dev/null && echo null-ok; head -c 1 /dev/urandom | wc -c; \
         echo x > /dev/full || echo full-ok; \
         (exec 3<>/dev/ptmx) && echo ptmx-ok",
        try_write("/made"),
        try_write("/shipped"),
        try_write("/cache/node"),
        try_write("/data/node"),
        try_write("/tmp/../made"),
    );
    let mut spec = sh(&script);
    spec.mounts.push(Mount::Cache {
        source: cache.clone(),
        target: "/cache".into(),
    });
    spec.mounts.push(Mount::Bind {
        source: data.clone(),
        target: "/data".into(),
        readonly: false,
    });
    let c = run_captured(&rootfs, spec);
    assert_eq!(code(&c), 0, "{:?} {:?}", c.out, c.err);
    assert_eq!(
        c.out,
        [
            "made",
            "/made-refused",
            "/shipped-refused",
            "/cache/node-refused",
            "/data/node-refused",
            "/tmp/../made-refused",
            "null-ok",
            "1",
            "full-ok",
            "ptmx-ok"
        ],
        "{:?}",
        c.err
    );
    // The node made by mknod is in the run's layer.
    let m = std::fs::symlink_metadata(upper.join("made")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &m.file_type()
    ));
    assert_eq!(m.rdev(), libc_makedev(1, 11));

    // Another user, through the world-writable shipped node, on a directory rootfs.
    let mut spec = sh(&try_write("/shipped"));
    spec.user = "nobody".into();
    let c = run_captured(&root.rootfs(), spec);
    assert_eq!(c.out, ["/shipped-refused"], "{:?}", c.err);
    assert!(
        !host_kernel_log().contains(&marker),
        "a sandboxed write reached the host's kernel log"
    );

    // --security=insecure allows every device (as BuildKit's insecure mode).
    let mut spec = sh("mknod /n c 1 3 && echo x > /n && echo opened; rm /n");
    spec.security = SecurityMode::Insecure;
    let c = run_captured(&root.rootfs(), spec);
    assert_eq!(c.out, ["opened"], "{:?}", c.err);
}

fn libc_makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

#[test]
fn bad_specs_are_clear_errors() {
    let root = test_root();
    let c = run_captured(&root.rootfs(), ProcessSpec::new(Vec::<String>::new()));
    assert!(c.status.unwrap_err().to_string().contains("no command"));
    let mut spec = ProcessSpec::new(["true"]);
    spec.mounts.push(Mount::bind("/nonexistent-src-x", "/x"));
    let e = run(&root.rootfs(), spec).unwrap_err().to_string();
    assert!(e.contains("/nonexistent-src-x"), "{e}");
    let mut spec = ProcessSpec::new(["true"]);
    spec.mounts.push(Mount::Tmpfs {
        target: "relative".into(),
        size: None,
    });
    let e = run(&root.rootfs(), spec).unwrap_err().to_string();
    assert!(e.contains("relative"), "{e}");
    std::os::unix::fs::symlink("/", root.path().join("dev")).unwrap();
    let e = run(&root.rootfs(), ProcessSpec::new(["true"]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/dev is not a directory"), "{e}");
    let e = run(
        &Rootfs::Dir("/nonexistent-rootfs".into()),
        ProcessSpec::new(["true"]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent-rootfs"), "{e}");
}

/// Runs the sandbox as an unprivileged user (`setpriv` to nobody): it must work in
/// a user namespace mapping nobody to root, or fail with an error that says what
/// is missing.
#[test]
fn non_root_works_or_says_what_is_missing() {
    let root = test_root();
    assert!(
        Command::new("setpriv").arg("--version").output().is_ok(),
        "cannot run: setpriv is not installed"
    );
    // The rootfs belongs to the unprivileged user (as an image unpacked by that
    // user would); the way to it must be open to it.
    // A world-writable device node outside the allowlist, as a layer may ship it:
    // nobody, root in its user namespace, must not open it either.
    mknod(&root.path().join("shipped"), 1, 11);
    let marker = kmsg_marker("nonroot");
    let st = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(root.dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let mut p = root.dir.path().to_path_buf();
    while let Some(parent) = p.parent() {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(parent).unwrap().permissions().mode();
        assert!(
            m & 0o001 != 0,
            "cannot run: {} is not searchable by nobody",
            parent.display()
        );
        p = parent.to_path_buf();
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(exe)
        .args([
            "--exact",
            "nonroot_child",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RBUILD_SANDBOX_NONROOT_ROOTFS", root.path())
        .env("RBUILD_SANDBOX_NONROOT_MARKER", &marker)
        .env("TMPDIR", root.dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| l.find("NONROOT-RESULT:").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no result from the child: {text}"));
    if let Some(err) = line.strip_prefix("NONROOT-RESULT: err ") {
        assert!(
            err.contains("user namespace") || err.contains("non-root"),
            "unclear error: {err}"
        );
        eprintln!("non-root sandbox unavailable here: {err}");
    } else {
        assert_eq!(
            line, "NONROOT-RESULT: ok uid=0(root) gid=0(root) lo-only shipped-refused",
            "{text}"
        );
    }
    assert!(
        !host_kernel_log().contains(&marker),
        "a sandboxed write reached the host's kernel log"
    );
}

/// The unprivileged half of the test above (run only through it).
#[test]
#[ignore = "run by non_root_works_or_says_what_is_missing as an unprivileged user"]
fn nonroot_child() {
    let Ok(rootfs) = std::env::var("RBUILD_SANDBOX_NONROOT_ROOTFS") else {
        return;
    };
    let marker = std::env::var("RBUILD_SANDBOX_NONROOT_MARKER").unwrap_or_default();
    let mut spec = sh(&format!(
        "id | cut -d' ' -f1-2; tail -n +3 /proc/net/dev | wc -l; \
         if echo {marker} > /shipped; then echo shipped-opened; else echo shipped-refused; fi"
    ));
    spec.network = NetworkMode::None;
    let c = run_captured(&Rootfs::Dir(rootfs.into()), spec);
    match c.status {
        Ok(s) if s.code == 0 && c.out.len() == 3 => {
            let lo = if c.out[1].trim() == "1" {
                "lo-only"
            } else {
                "more-than-lo"
            };
            println!("NONROOT-RESULT: ok {} {lo} {}", c.out[0], c.out[2]);
        }
        Ok(s) => println!("NONROOT-RESULT: failed {s} {:?} {:?}", c.out, c.err),
        Err(e) => println!("NONROOT-RESULT: err {e}"),
    }
}

/// SIGTERM (or SIGKILL) to the process running the sandbox: every process of the
/// step dies with it, no mount is left.
#[test]
fn killing_the_caller_kills_the_step() {
    use std::io::BufRead;
    let root = test_root();
    let mounts_before = host_mounts(&root.path());
    for (sig, token) in [
        (nix::sys::signal::Signal::SIGTERM, "kill-token-term-3b1d"),
        (nix::sys::signal::Signal::SIGKILL, "kill-token-kill-3b1d"),
    ] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "killed_caller_child",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RBUILD_SANDBOX_KILL_ROOTFS", root.path())
            .env("RBUILD_SANDBOX_KILL_TOKEN", token)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let started = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("SANDBOX-STARTED"));
        assert!(started, "the child never started its step");
        assert!(!processes_with(token).is_empty(), "the step is not running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id().cast_signed()), sig).unwrap();
        child.wait().unwrap();
        // The kernel tears the pid namespace down asynchronously: wait for it.
        let mut left = processes_with(token);
        for _ in 0..100 {
            if left.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
            left = processes_with(token);
        }
        assert_eq!(left, Vec::<String>::new(), "processes left after {sig}");
        assert_eq!(host_mounts(&root.path()), mounts_before);
    }
}

/// The half of the test above that gets killed (run only through it).
#[test]
#[ignore = "run by killing_the_caller_kills_the_step"]
fn killed_caller_child() {
    let (Ok(rootfs), Ok(token)) = (
        std::env::var("RBUILD_SANDBOX_KILL_ROOTFS"),
        std::env::var("RBUILD_SANDBOX_KILL_TOKEN"),
    ) else {
        return;
    };
    let mut spec = sh(&format!(
        "(sleep 1000; : {token}) & echo started; sleep 1000; : {token}"
    ));
    spec.stdout = Output::lines(|l| {
        if l == b"started" {
            use std::io::Write;
            println!("SANDBOX-STARTED");
            std::io::stdout().flush().unwrap();
        }
    });
    spec.timeout = Some(Duration::from_secs(120));
    let _ = run(&Rootfs::Dir(rootfs.into()), spec);
}

// ---- resource limits (cgroups) ----

/// This test process's cgroup directory for v1 `controller` (the hybrid
/// layout of this machine and CI), or the v2 one.
fn own_cgroup_dir(controller: &str) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (_, ctls, path) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let rel = path.trim_start_matches('/');
        if unified && ctls.is_empty() {
            return Path::new("/sys/fs/cgroup").join(rel);
        }
        if !unified && ctls.split(',').any(|c| c == controller) {
            return Path::new("/sys/fs/cgroup").join(controller).join(rel);
        }
    }
    panic!("cannot run: no {controller} cgroup in /proc/self/cgroup:\n{text}");
}

/// The step cgroups this process has made (`rbuild-<pid>-<n>`) below `dir`
/// (and below `dir/rbuild`, v2's fallback parent).
fn step_cgroups(dir: &Path) -> Vec<PathBuf> {
    let prefix = format!("rbuild-{}-", std::process::id());
    [dir.to_path_buf(), dir.join("rbuild")]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(Iterator::flatten)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Serialises the limit tests (they look for this process's step cgroups).
static CGROUP_TESTS: Mutex<()> = Mutex::new(());

#[test]
fn limits_are_written_to_a_cgroup_of_the_steps_own_removed_after() {
    let _l = CGROUP_TESTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = test_root();
    let (mem_dir, pids_dir, cpu_dir) = (
        own_cgroup_dir("memory"),
        own_cgroup_dir("pids"),
        own_cgroup_dir("cpu"),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let (m2, p2, c2) = (mem_dir.clone(), pids_dir.clone(), cpu_dir.clone());
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let mut spec = sh("echo go; cat /proc/self/cgroup; sleep 0.2");
    spec.limits = rbuild_sandbox::Limits {
        memory: Some(64 << 20),
        cpu_quota: Some(50_000),
        pids: Some(50),
        ..rbuild_sandbox::Limits::default()
    };
    let out = Arc::new(Mutex::new(Vec::new()));
    let out2 = Arc::clone(&out);
    spec.stdout = Output::lines(move |l| {
        out2.lock()
            .unwrap()
            .push(String::from_utf8_lossy(l).into_owned());
        if l != b"go" {
            return;
        }
        // While the step runs: its cgroups and their limits.
        let read = |d: &Path, f: &str| {
            std::fs::read_to_string(d.join(f)).map_or_else(|e| e.to_string(), |s| s.trim().into())
        };
        let mut s = seen2.lock().unwrap();
        for (dir, file) in if unified {
            vec![(&m2, "memory.max"), (&p2, "pids.max"), (&c2, "cpu.max")]
        } else {
            vec![
                (&m2, "memory.limit_in_bytes"),
                (&p2, "pids.max"),
                (&c2, "cpu.cfs_quota_us"),
            ]
        } {
            let cgs = step_cgroups(dir);
            assert_eq!(cgs.len(), 1, "one step cgroup below {}", dir.display());
            s.push(format!("{file}={}", read(&cgs[0], file)));
            s.push(format!(
                "procs={}",
                read(&cgs[0], "cgroup.procs").lines().count()
            ));
        }
    });
    spec.timeout = Some(Duration::from_secs(60));
    let status = run(&root.rootfs(), spec).unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(status.limit, None);
    let seen = seen.lock().unwrap().clone();
    let want_cpu = if unified {
        "cpu.max=50000 100000"
    } else {
        "cpu.cfs_quota_us=50000"
    };
    let want_mem = if unified {
        "memory.max=67108864"
    } else {
        "memory.limit_in_bytes=67108864"
    };
    assert!(seen.contains(&want_mem.to_owned()), "{seen:?}");
    assert!(seen.contains(&"pids.max=50".to_owned()), "{seen:?}");
    assert!(seen.contains(&want_cpu.to_owned()), "{seen:?}");
    // init and the shell (and cat or sleep) were in it.
    assert!(
        seen.iter()
            .filter(|s| s.starts_with("procs="))
            .all(|s| s != "procs=0"),
        "{seen:?}"
    );
    // Inside, the step's cgroup is the root of its cgroup namespace.
    let out = out.lock().unwrap().clone();
    assert!(
        out.iter()
            .any(|l| l.ends_with(":/") && (l.contains("memory") || l.starts_with("0::"))),
        "{out:?}"
    );
    assert!(!out.iter().any(|l| l.contains("rbuild-")), "{out:?}");
    // Gone after the run.
    for d in [&mem_dir, &pids_dir, &cpu_dir] {
        assert_eq!(step_cgroups(d), Vec::<PathBuf>::new());
    }
}

#[test]
fn a_step_over_its_memory_limit_is_oom_killed_and_says_so() {
    let _l = CGROUP_TESTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = test_root();
    // dd's 200 MB buffer, filled from /dev/zero.
    let mut spec = sh("dd if=/dev/zero of=/dev/null bs=200M count=1; echo dd-exit=$?; exit 1");
    spec.limits.memory = Some(64 << 20);
    let c = run_captured(&root.rootfs(), spec);
    let status = c.status.unwrap();
    assert_eq!(
        status.limit,
        Some(rbuild_sandbox::LimitHit::OutOfMemory),
        "{status} {:?}",
        c.out
    );
    assert!(c.out.contains(&"dd-exit=137".to_owned()), "{:?}", c.out);
    assert_eq!(
        step_cgroups(&own_cgroup_dir("memory")),
        Vec::<PathBuf>::new()
    );
    // The same step without the limit succeeds: the limit did it.
    let c = run_sh(
        &root,
        "dd if=/dev/zero of=/dev/null bs=200M count=1 2>/dev/null && echo ok",
    );
    assert_eq!(code(&c), 0);
    assert_eq!(c.out, ["ok"]);
}

#[test]
fn a_fork_bomb_hits_the_pids_limit_and_ends() {
    let _l = CGROUP_TESTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = test_root();
    let token = "pids-bomb-7f3a";
    let mut spec = sh(&format!(
        "b() {{ b | b & }}; b; while :; do sleep 1000 & done; : {token}"
    ));
    spec.limits.pids = Some(40);
    let started = std::time::Instant::now();
    let c = run_captured(&root.rootfs(), spec);
    let status = c.status.unwrap();
    assert!(!status.success());
    assert_eq!(
        status.limit,
        Some(rbuild_sandbox::LimitHit::Pids),
        "{status} {:?}",
        c.err
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(processes_with(token), Vec::<String>::new());
    assert_eq!(step_cgroups(&own_cgroup_dir("pids")), Vec::<PathBuf>::new());
}

#[test]
fn a_limit_the_kernel_refuses_is_a_clear_error_before_anything_runs() {
    let _l = CGROUP_TESTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let root = test_root();
    let mut spec = sh("touch /ran");
    spec.limits.cpuset_cpus = Some("999".into());
    let c = run_captured(&root.rootfs(), spec);
    let e = c.status.unwrap_err();
    assert!(matches!(e, SandboxError::Cgroup(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("cpuset \"999\"") && msg.contains("CPUs available"),
        "{msg}"
    );
    assert!(!root.path().join("ran").exists());
    assert_eq!(
        step_cgroups(&own_cgroup_dir("cpuset")),
        Vec::<PathBuf>::new()
    );
    // Values that are wrong on their own never reach the kernel.
    let mut spec = sh("true");
    spec.limits.memory = Some(1024);
    let e = run_captured(&root.rootfs(), spec).status.unwrap_err();
    assert!(e.to_string().contains("6 MiB"), "{e}");
}

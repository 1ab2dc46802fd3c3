//! `rbuild run` over images in the local store (the busybox rootfs of
//! `testdata/examples/busybox-base.sh` imported with `rbuild import`) and over a root
//! filesystem directory (`--rootfs`). Needs root; fails saying what is missing otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BASE_SH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../testdata/examples/busybox-base.sh"
);

fn rbuild() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rbuild"))
}

/// A busybox rootfs in a temp dir; panics saying what is missing.
fn rootfs() -> (tempfile::TempDir, PathBuf) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "cannot run: rbuild run tests need root"
    );
    assert!(
        Path::new(BASE_SH).exists(),
        "cannot run: {BASE_SH} is absent"
    );
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("base.tar");
    if !Command::new("sh")
        .arg(BASE_SH)
        .arg(&tar)
        .status()
        .is_ok_and(|s| s.success())
    {
        panic!("cannot run: base.sh failed (is busybox-static installed?)");
    }
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    assert!(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-xf")
            .arg(&tar)
            .status()
            .unwrap()
            .success()
    );
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (dir, root)
}

fn run(root: &Path, args: &[&str]) -> Output {
    rbuild()
        .arg("run")
        .arg("--rm")
        .arg("--rootfs")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn exit_codes_pass_through() {
    let (_d, root) = rootfs();
    for (cmd, code) in [
        ("exit 0", 0),
        ("exit 1", 1),
        ("exit 3", 3),
        ("no-such-cmd", 127),
        ("kill -TERM $$", 143),
    ] {
        let o = run(&root, &["sh", "-c", cmd]);
        assert_eq!(
            o.status.code(),
            Some(code),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = run(&root, &["no-such-cmd"]);
    assert_eq!(o.status.code(), Some(127));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no-such-cmd") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn options_reach_the_process() {
    let (_d, root) = rootfs();
    let o = run(
        &root,
        &[
            "-e",
            "FOO=bar",
            "-u",
            "nobody",
            "-w",
            "/tmp/w",
            "--network",
            "none",
            "--hostname",
            "box",
            "sh",
            "-c",
            "echo $FOO; id -u; pwd; hostname; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(stdout(&o), "bar\n65534\n/tmp/w\nbox\nlo\n");
}

#[test]
fn the_rootfs_is_never_changed() {
    let (_d, root) = rootfs();
    let o = run(
        &root,
        &[
            "sh",
            "-c",
            "echo x > /new; rm /bin/ls; mkdir /made; ls /new",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(stdout(&o), "/new\n");
    assert!(!root.join("new").exists() && !root.join("made").exists());
    assert!(root.join("bin/ls").exists());
    for p in ["proc", "dev", "sys"] {
        assert!(!root.join(p).exists(), "{p} created in the rootfs");
    }
}

#[test]
fn unknown_user_and_missing_image_are_clear_errors() {
    let (_d, root) = rootfs();
    let o = run(&root, &["-u", "ghost", "id"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ghost"));
    let o = run(&root, &[]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no command"));
}

/// As an unprivileged user (`setpriv` to nobody): works in a user namespace that
/// maps nobody to root (overlay in the user namespace, or the copy fallback), or
/// fails saying what is missing.
#[test]
fn non_root_run_works_or_says_what_is_missing() {
    let (d, root) = rootfs();
    assert!(
        Command::new("setpriv").arg("--version").output().is_ok(),
        "cannot run: setpriv is not installed"
    );
    assert!(
        Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(d.path())
            .status()
            .unwrap()
            .success()
    );
    for dir in Path::new(env!("CARGO_BIN_EXE_rbuild"))
        .ancestors()
        .skip(1)
        .chain(d.path().ancestors())
    {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            !std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 == 0),
            "cannot run: {} is not searchable by nobody",
            dir.display()
        );
    }
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_rbuild"))
        .args(["run", "--rm", "--network", "none", "--rootfs"])
        .arg(&root)
        .args(["sh", "-c", "id -u; echo x > /new; cat /new"])
        .env("TMPDIR", d.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    if o.status.code() == Some(0) {
        assert_eq!(stdout(&o), "0\nx\n");
        assert!(!root.join("new").exists());
    } else {
        assert!(err.contains("user namespace"), "unclear error: {err}");
        eprintln!("non-root rbuild run unavailable here: {err}");
    }
}

#[test]
fn tty_gives_a_pseudo_terminal() {
    let (_d, root) = rootfs();
    let o = run(
        &root,
        &[
            "-t",
            "sh",
            "-c",
            "tty; test -t 0 && test -t 1 && echo both-ttys; exit 5",
        ],
    );
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The pty's line discipline turns \n into \r\n.
    assert_eq!(stdout(&o), "/dev/pts/0\r\nboth-ttys\r\n");
    let o = run(&root, &["sh", "-c", "test -t 1 || echo no-tty"]);
    assert_eq!(stdout(&o), "no-tty\n");
}

#[test]
fn sigterm_to_rbuild_kills_the_container() {
    use std::io::BufRead;
    let (_d, root) = rootfs();
    let token = "rbuild-run-sigterm-token-8d2f";
    let mut child = rbuild()
        .args(["run", "--rm", "--rootfs"])
        .arg(&root)
        .args(["sh", "-c", &format!("echo started; sleep 1000; : {token}")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    let running = |t: &str| {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(t))
        })
    };
    assert!(running(token));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
    assert!(!running(token), "container processes left");
}

// ---- over images in the store ----

/// A state root holding `busybox:latest` (the base rootfs as `rbuild import` makes
/// it), `withcmd` (the same with CMD, ENV and WORKDIR) and `app` (a passwd/group
/// with user app, and `USER app`).
struct Images {
    dir: tempfile::TempDir,
}

impl Images {
    fn new() -> Self {
        let (dir, rootfs) = rootfs();
        let s = Self { dir };
        s.import(&s.dir.path().join("base.tar"), "busybox:latest", &[]);
        s.import(
            &s.dir.path().join("base.tar"),
            "withcmd",
            &[
                r#"CMD ["sh", "-c", "echo cmd:$FOO:$(pwd)"]"#,
                "ENV FOO=from-image BAR=kept",
                "WORKDIR /tmp",
            ],
        );
        let append = |file: &str, line: &str| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(rootfs.join(file))
                .unwrap();
            f.write_all(line.as_bytes()).unwrap();
        };
        append("etc/passwd", "app:x:1234:1234:app:/home/app:/bin/sh\n");
        append("etc/group", "app:x:1234:\nextra:x:2345:app\n");
        let app_tar = s.dir.path().join("app.tar");
        assert!(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .arg("-cf")
                .arg(&app_tar)
                .arg(".")
                .status()
                .unwrap()
                .success()
        );
        s.import(&app_tar, "app", &["USER app"]);
        s
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn import(&self, tar: &Path, name: &str, changes: &[&str]) {
        let mut c = rbuild();
        c.arg("--root").arg(self.root()).arg("import");
        for ch in changes {
            c.args(["-c", ch]);
        }
        let o = c.arg(tar).arg(name).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// `rbuild run --rm ARGS`, with its scratch directories under the test's dir.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = rbuild();
        c.arg("--root")
            .arg(self.root())
            .args(["run", "--rm"])
            .args(args)
            .env("TMPDIR", self.dir.path())
            .stdin(std::process::Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs, asserts exit 0, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "rbuild run {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        stdout(&o)
    }

    /// Lines of /proc/mounts that mention this test's directory or rbuild (other
    /// tests and other programs may mount things meanwhile; those are not ours).
    fn our_mounts(&self) -> Vec<String> {
        let dir = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            // Our root and scratch are under `dir` (TMPDIR too); other
            // processes' mounts (a benchmark's, another test's) are not ours.
            .filter(|l| l.contains(&dir))
            .map(str::to_owned)
            .collect()
    }
}

fn processes_mentioning(token: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let c = std::fs::read(e.path().join("cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(token).then_some(c)
        })
        .collect()
}

#[test]
fn image_exit_codes_pass_through() {
    let im = Images::new();
    for (cmd, code) in [
        ("exit 0", 0),
        ("exit 1", 1),
        ("exit 3", 3),
        ("no-such-cmd", 127),
        ("kill -TERM $$", 143),
        ("kill -KILL $$", 137),
    ] {
        let o = im.run(&["busybox", "sh", "-c", cmd]);
        assert_eq!(
            o.status.code(),
            Some(code),
            "{cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = im.run(&["busybox", "no-such-cmd"]);
    assert_eq!(o.status.code(), Some(127));
}

#[test]
fn image_sandbox_sees_only_itself() {
    let im = Images::new();
    // ps: the sandbox's init, sh and ps, nothing of the host.
    let ps = im.ok(&["busybox", "sh", "-c", "ps -o pid,comm | tail -n +2"]);
    let pids: Vec<u32> = ps
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(pids.len() <= 4 && pids.iter().all(|&p| p <= 10), "{ps}");
    assert!(!ps.contains("cargo"), "{ps}");
    assert_eq!(im.ok(&["busybox", "hostname"]), "rbuild\n");
    assert_eq!(
        im.ok(&[
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; ip -o link | cut -d: -f2 | tr -d ' '"
        ]),
        "lo\nlo\n"
    );
    // A host file outside the image and the host's mounts are not visible.
    let marker = im.dir.path().join("host-marker");
    std::fs::write(&marker, "x").unwrap();
    let m = marker.to_str().unwrap();
    let out = im.ok(&[
        "busybox",
        "sh",
        "-c",
        &format!("test -e {m} && echo visible; cat /proc/mounts"),
    ]);
    assert!(!out.contains("visible"), "{out}");
    let dir = im.dir.path().to_string_lossy().into_owned();
    for line in out.lines() {
        let target = line.split_whitespace().nth(1).unwrap_or("");
        assert!(
            !target.contains(&dir) && target != "/work" && !target.starts_with("/work/"),
            "host mount visible: {line}"
        );
    }
}

#[test]
fn image_writes_change_neither_host_nor_image() {
    let im = Images::new();
    let name = format!("rbuild-run-test-{}", std::process::id());
    let script =
        format!("echo x > /{name}; rm /bin/ls; mkdir /made-{name}; rm -rf /etc; cat /{name}");
    assert_eq!(im.ok(&["busybox", "sh", "-c", &script]), "x\n");
    assert!(!Path::new("/").join(&name).exists(), "written on the host");
    assert!(!Path::new("/").join(format!("made-{name}")).exists());
    // A second run of the same image sees none of it.
    assert_eq!(
        im.ok(&[
            "busybox",
            "sh",
            "-c",
            &format!("test -e /{name} || test -e /made-{name} || echo clean; test -x /bin/ls && test -f /etc/passwd && echo intact")
        ]),
        "clean\nintact\n"
    );
    // One unpacked copy, no temporary left over.
    let cache: Vec<_> = std::fs::read_dir(im.root().join("rootfs-cache"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cache.len(), 1, "{cache:?}");
    assert!(!cache[0].starts_with('.'), "{cache:?}");
}

#[test]
fn image_user_from_its_own_passwd() {
    let im = Images::new();
    assert_eq!(
        im.ok(&["app", "id"]),
        "uid=1234(app) gid=1234(app) groups=1234(app),2345(extra)\n"
    );
    assert_eq!(im.ok(&["app", "sh", "-c", "echo $HOME"]), "/home/app\n");
    // -u overrides the image's USER.
    assert_eq!(im.ok(&["-u", "0", "app", "id", "-u"]), "0\n");
    assert_eq!(im.ok(&["-u", "nobody", "busybox", "id", "-u"]), "65534\n");
    let o = im.run(&["-u", "ghost", "busybox", "id"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ghost"));
}

#[test]
fn image_config_gives_the_defaults() {
    let im = Images::new();
    // CMD, ENV and WORKDIR of the image.
    assert_eq!(im.ok(&["withcmd"]), "cmd:from-image:/tmp\n");
    // -e and -w override them; other image variables stay.
    assert_eq!(
        im.ok(&["-e", "FOO=given", "-w", "/var", "withcmd"]),
        "cmd:given:/var\n"
    );
    // A given command replaces CMD.
    assert_eq!(
        im.ok(&["-e", "NEW=1", "withcmd", "sh", "-c", "echo $FOO $BAR $NEW"]),
        "from-image kept 1\n"
    );
    // No ENTRYPOINT or CMD and no command: a clear error.
    let o = im.run(&["busybox"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no command"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn unknown_image_is_a_one_line_error() {
    let im = Images::new();
    let o = im.run(&["nosuch:latest", "true"]);
    assert_ne!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("nosuch"), "{err}");
    let o = rbuild()
        .arg("--root")
        .arg(im.root())
        .arg("run")
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no image"));
}

#[test]
fn image_sigterm_leaves_no_process_and_no_mount() {
    use std::io::BufRead;
    let im = Images::new();
    im.ok(&["busybox", "true"]); // unpacked beforehand
    let before = im.our_mounts();
    let token = "rbuild-image-sigterm-token-51c7";
    let mut child = im
        .cmd(&[
            "busybox",
            "sh",
            "-c",
            &format!("echo started; sleep 1000; : {token}"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "started");
    assert!(!processes_mentioning(token).is_empty());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(137));
    assert_eq!(processes_mentioning(token), Vec::<String>::new());
    assert_eq!(im.our_mounts(), before);
}

/// Slow: 200 runs one after the other.
#[test]
fn two_hundred_runs_leave_the_mounts_as_they_were() {
    let im = Images::new();
    im.ok(&["busybox", "true"]);
    let before = im.our_mounts();
    for i in 0..200 {
        let o = im.run(&["busybox", "true"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "run {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(im.our_mounts(), before);
    // Scratch directories are gone too.
    let left: Vec<_> = std::fs::read_dir(im.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("rbuild-run-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

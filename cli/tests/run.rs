//! `rbuild run` over a root filesystem directory (the busybox rootfs of
//! `shared/conformance/base.sh`). Needs root; skips with a message otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BASE_SH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/conformance/base.sh"
);

fn rbuild() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rbuild"))
}

/// A busybox rootfs in a temp dir, or None (with the reason printed).
fn rootfs() -> Option<(tempfile::TempDir, PathBuf)> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping: rbuild run tests need root");
        return None;
    }
    if !Path::new(BASE_SH).exists() {
        eprintln!("skipping: {BASE_SH} is absent");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("base.tar");
    if !Command::new("sh")
        .arg(BASE_SH)
        .arg(&tar)
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipping: base.sh failed (is busybox-static installed?)");
        return None;
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
    Some((dir, root))
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
    let Some((_d, root)) = rootfs() else { return };
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
    let Some((_d, root)) = rootfs() else { return };
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
    let Some((_d, root)) = rootfs() else { return };
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
    let Some((_d, root)) = rootfs() else { return };
    let o = run(&root, &["-u", "ghost", "id"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ghost"));
    let o = rbuild().args(["run", "busybox", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("busybox") && err.contains("--rootfs"), "{err}");
    let o = run(&root, &[]);
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no command"));
}

/// As an unprivileged user (`setpriv` to nobody): works in a user namespace that
/// maps nobody to root (overlay in the user namespace, or the copy fallback), or
/// fails saying what is missing.
#[test]
fn non_root_run_works_or_says_what_is_missing() {
    let Some((d, root)) = rootfs() else { return };
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipping: setpriv is not installed");
        return;
    }
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
        if std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 == 0) {
            eprintln!("skipping: {} is not searchable by nobody", dir.display());
            return;
        }
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
    let Some((_d, root)) = rootfs() else { return };
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
    let Some((_d, root)) = rootfs() else { return };
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

//! What a build may reach, through the binary: devices outside Docker's default
//! set cannot be opened in RUN or `rbuild run` (but `mknod` works and the node is
//! in the layer), `RUN --network=host` and `--security=insecure` need `--allow`,
//! and no other user can reach into the state root. Needs root.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Env;

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn build(env: &Env, args: &[&str]) -> Output {
    let mut a = vec!["build", "--progress", "plain"];
    a.extend_from_slice(args);
    env.run(&a)
}

fn build_ok(env: &Env, args: &[&str]) -> (String, String) {
    let o = build(env, args);
    let (out, err) = text(&o);
    assert!(o.status.success(), "build {args:?} failed:\n{out}\n{err}");
    (out, err)
}

fn write(env: &Env, rel: &str, data: &str) -> PathBuf {
    let p = env.path(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    p
}

fn sh(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {o:?}");
    o
}

fn mknod(path: &Path, major: u32, minor: u32) {
    sh(Command::new("mknod").args(["-m", "666"]).arg(path).args([
        "c",
        &major.to_string(),
        &minor.to_string(),
    ]));
}

/// A marker no earlier run wrote to the kernel log.
fn kmsg_marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("rbuild-kmsg-cli-{}-{nanos}", std::process::id())
}

fn host_kernel_log() -> String {
    let o = Command::new("dmesg")
        .output()
        .unwrap_or_else(|e| panic!("dmesg is missing ({e}): install util-linux"));
    assert!(o.status.success(), "dmesg failed: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn setpriv_nobody() -> Command {
    assert!(
        Command::new("setpriv").arg("--version").output().is_ok(),
        "setpriv is missing: install util-linux"
    );
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
    c
}

/// The lines of the steps' output in plain progress (`#N text`, not the `#N [..]`
/// step headers) that end in one of `suffixes`.
fn step_lines(err: &str, suffixes: &[&str]) -> Vec<String> {
    step_output(err)
        .into_iter()
        .filter(|rest| suffixes.iter().any(|s| rest.ends_with(s)))
        .collect()
}

fn step_output(err: &str) -> Vec<String> {
    err.lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| l.split_once(' ').map(|(_, rest)| rest.to_owned()))
        .filter(|rest| !rest.starts_with('['))
        .collect()
}

/// A base image whose layer ships a world-writable `/shipped` char device 1:11
/// (`/dev/kmsg`), made from the busybox base.
fn import_device_base(env: &Env) {
    let dir = env.path("devbase");
    std::fs::create_dir(&dir).unwrap();
    sh(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-xf")
        .arg(env.path("base.tar")));
    mknod(&dir.join("shipped"), 1, 11);
    let tar = env.path("devbase.tar");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    env.ok(&["import", tar.to_str().unwrap(), "devbase"]);
}

/// Docker's device allowlist: in RUN (as root and as another user) and in
/// `rbuild run`, a node outside it cannot be opened — made by `mknod`, shipped in
/// the base image, extracted by ADD from a tar, or left in a cache mount — and
/// nothing reaches the host's kernel log; `mknod` works and the node is in the
/// image.
#[test]
fn devices_outside_the_allowlist_cannot_be_opened() {
    let env = common::build_env();
    import_device_base(&env);
    let marker = kmsg_marker();
    let nodes = env.path("nodes");
    std::fs::create_dir(&nodes).unwrap();
    mknod(&nodes.join("added"), 1, 11);
    let ctx = env.path("ctx");
    std::fs::create_dir(&ctx).unwrap();
    sh(Command::new("tar")
        .arg("-C")
        .arg(&nodes)
        .arg("-cf")
        .arg(ctx.join("nodes.tar"))
        .arg("added"));
    let try_open = |paths: &str| {
        format!(
            "for p in {paths}; do if echo {marker} > $p; then echo $p-opened; \
             else echo $p-refused; fi; done"
        )
    };
    // Nodes that come from an image's layers are unpacked as devices (the
    // layer applier makes them with mknodat) and must be refused like the others.
    let from_layers = |paths: &str| {
        format!(
            "for p in {paths}; do if [ -c $p ]; then if echo {marker} > $p; \
             then echo $p-opened; else echo $p-refused; fi; \
             else echo $p-not-a-device; fi; done"
        )
    };
    let shipped = from_layers("/shipped");
    write(
        &env,
        "ctx/Dockerfile",
        &format!(
            "FROM devbase\n\
             ADD nodes.tar /\n\
             RUN --mount=type=cache,target=/cache,id=devs mknod -m 666 /made c 1 11 && \
             mknod -m 666 /cache/node c 1 11 && echo made-ok\n\
             RUN --mount=type=cache,target=/cache,id=devs {}; {shipped}\n\
             USER nobody\n\
             RUN {}; {shipped}\n\
             USER root\n",
            try_open("/made /added /cache/node /dev/null"),
            try_open("/made /added /dev/null"),
        ),
    );
    let (_, err) = build_ok(&env, &["-t", "devs", ctx.to_str().unwrap()]);
    assert_eq!(
        step_lines(&err, &["-ok", "-opened", "-refused", "-not-a-device"]),
        [
            "made-ok",
            "/made-refused",
            "/added-refused",
            "/cache/node-refused",
            "/dev/null-opened",
            "/shipped-refused",
            "/made-refused",
            "/added-refused",
            "/dev/null-opened",
            "/shipped-refused",
        ],
        "{err}"
    );
    // The nodes are in the image's layers: a build on top of it cannot open them.
    write(
        &env,
        "ctx2/Dockerfile",
        &format!("FROM devs\nRUN {}\n", from_layers("/made /added")),
    );
    let (_, err) = build_ok(&env, &[env.path("ctx2").to_str().unwrap()]);
    assert_eq!(
        step_lines(&err, &["-opened", "-refused", "-not-a-device"]),
        ["/made-refused", "/added-refused"],
        "{err}"
    );

    // The node mknod made is in the image; `rbuild run` cannot open it either.
    let o = env.run(&[
        "run",
        "--rm",
        "devs",
        "sh",
        "-c",
        &format!(
            "stat -c '%n %F %t:%T' /made /shipped /added; {}",
            try_open("/made /shipped /added /dev/full")
        ),
    ]);
    let (out, err) = text(&o);
    assert_eq!(
        out,
        "/made character special file 1:b\n\
         /shipped character special file 1:b\n\
         /added character special file 1:b\n\
         /made-refused\n/shipped-refused\n/added-refused\n/dev/full-refused\n",
        "{err}"
    );
    assert!(err.contains("Permission denied"), "{err}");
    assert!(
        !host_kernel_log().contains(&marker),
        "a write in the sandbox reached the host's kernel log"
    );
}

/// `RUN --security=insecure` needs `--allow security.insecure` and `RUN
/// --network=host` needs `--allow network.host`, whatever the build's own
/// `--network`; the error names the line and the flag to pass.
#[test]
fn host_network_and_insecure_need_allow() {
    let env = common::build_env();
    let insecure = write(
        &env,
        "insecure/Dockerfile",
        "FROM busybox\nRUN true\nRUN --security=insecure grep CapEff /proc/self/status\n",
    );
    let host = write(
        &env,
        "host/Dockerfile",
        "FROM busybox\n\nRUN --network=host echo host-net-ran\n",
    );
    let ctx = |p: &Path| p.parent().unwrap().to_str().unwrap().to_owned();

    let o = build(&env, &[&ctx(&insecure)]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains(
            "Dockerfile:3: security.insecure is not allowed: RUN --security=insecure needs \
             the entitlement security.insecure; pass --allow security.insecure"
        ),
        "{err}"
    );
    assert!(
        !step_output(&err).iter().any(|l| l.starts_with("CapEff:")),
        "the step ran: {err}"
    );
    // network.host is not security.insecure.
    let o = build(&env, &["--allow", "network.host", &ctx(&insecure)]);
    assert!(!o.status.success());
    let (_, err) = build_ok(&env, &["--allow", "security.insecure", &ctx(&insecure)]);
    let capeff = step_output(&err)
        .into_iter()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap_or_else(|| panic!("no CapEff line: {err}"));
    assert_ne!(capeff, "CapEff:\t00000000a80425fb", "not insecure: {err}");

    for extra in [&[][..], &["--network", "host"], &["--network", "none"]] {
        let mut args = extra.to_vec();
        let c = ctx(&host);
        args.push(&c);
        let o = build(&env, &args);
        let (_, err) = text(&o);
        assert!(!o.status.success(), "{extra:?}: {err}");
        assert!(
            err.contains(
                "Dockerfile:3: network.host is not allowed: RUN --network=host needs the \
                 entitlement network.host; pass --allow network.host"
            ),
            "{extra:?}: {err}"
        );
    }
    let (_, err) = build_ok(
        &env,
        &["--allow", "security.insecure,network.host", &ctx(&host)],
    );
    assert!(
        step_lines(&err, &["host-net-ran"]).len() == 1,
        "the step did not run: {err}"
    );
    // The build's own --network=host needs nothing.
    write(
        &env,
        "plain/Dockerfile",
        "FROM busybox\nRUN echo plain-ran\n",
    );
    let (_, err) = build_ok(
        &env,
        &["--network", "host", env.path("plain").to_str().unwrap()],
    );
    assert_eq!(step_lines(&err, &["plain-ran"]), ["plain-ran"], "{err}");

    let o = build(&env, &["--allow", "device", &ctx(&host)]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("network.host") && err.contains("security.insecure"),
        "{err}"
    );
}

/// No other user reaches into the state root: it is 0700, so nobody can neither
/// read a file of it nor execute a (setuid-root) binary built into a snapshot.
/// A root made open by an older rbuild is made private again; a root every user
/// may write to is refused.
#[test]
fn other_users_cannot_reach_into_the_state_root() {
    let env = common::build_env();
    // The way to the root is open: only the root's own mode protects it.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = env.root();
    write(
        &env,
        "ctx/Dockerfile",
        "FROM busybox\nRUN mkdir /suid && cp /bin/busybox /suid/ && chmod 4755 /suid/busybox\n",
    );
    build_ok(&env, &["-t", "suid", env.path("ctx").to_str().unwrap()]);

    // A setuid-root binary in a snapshot, and a file of the store.
    let mut found = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else if e.path().ends_with("suid/busybox") && m.mode() & 0o4000 != 0 {
                found.push(e.path());
            }
        }
    }
    assert!(
        !found.is_empty(),
        "no setuid binary under {}",
        root.display()
    );
    for suid in &found {
        // (Through a shell: setpriv itself still holds root's capabilities while
        // it execs its command.)
        let o = setpriv_nobody()
            .args(["/bin/sh", "-c", "exec \"$0\" id -u"])
            .arg(suid)
            .output()
            .unwrap();
        assert!(!o.status.success(), "nobody ran {}: {o:?}", suid.display());
    }
    let index = root.join("index.json");
    assert!(index.is_file());
    let o = setpriv_nobody().arg("cat").arg(&index).output().unwrap();
    assert!(!o.status.success(), "nobody read {}", index.display());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Permission denied"));
    assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o7777, 0o700);

    // A root an older rbuild left open to others is made private.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.ok(&["images"]);
    assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o7777, 0o700);
    // A root every user may write to is refused, and left as it is.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let err = env.fails(&["images"]);
    assert!(err.contains("writable by every user"), "{err}");
    assert!(err.contains(root.to_str().unwrap()), "{err}");
    assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o7777, 0o1777);
    // Another directory others can enter (a home, `/`) is never re-moded: refused.
    let foreign = env.path("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine\n").unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = env
        .cmd(&["images"])
        .env("RBUILD_ROOT", &foreign)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("will not change its mode"), "{err}");
    assert_eq!(std::fs::metadata(&foreign).unwrap().mode() & 0o7777, 0o755);
    assert!(!foreign.join("blobs").exists());
    // An empty directory made for the root (as scripts `mkdir -p` one) is taken
    // and made private.
    let fresh = env.path("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = env
        .cmd(&["images"])
        .env("RBUILD_ROOT", &fresh)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o7777, 0o700);
}

/// The scratch directories of `rbuild run` (its upper layer, the sandbox's
/// overlay mount point) live under the (private) state root, in `<root>/tmp`,
/// owned by the running process's lease, and are private themselves: nothing of
/// the run appears in the system's temporary directory.
#[test]
fn scratch_directories_are_private_and_under_the_state_root() {
    let env = common::build_env();
    let tmpdir = env.path("tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    std::fs::set_permissions(&tmpdir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let scratch = env.root().join("tmp");
    let mut child = env
        .cmd(&["run", "--rm", "busybox", "sh", "-c", "sleep 3"])
        .env("TMPDIR", &tmpdir)
        .spawn()
        .unwrap();
    let mut seen = std::collections::BTreeMap::new();
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(3) && seen.len() < 2 {
        let mut dirs = vec![scratch.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(m) = e.metadata() else { continue };
                if !m.is_dir() {
                    continue;
                }
                if let Some(kind) = ["run-", "rbuild-sandbox-"]
                    .into_iter()
                    .find(|k| name.starts_with(k))
                {
                    seen.insert(kind, m.mode() & 0o7777);
                    dirs.push(e.path());
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(
        seen,
        std::collections::BTreeMap::from([("rbuild-sandbox-", 0o700), ("run-", 0o700)])
    );
    assert_eq!(
        std::fs::read_dir(&tmpdir).unwrap().count(),
        0,
        "rbuild run left something in TMPDIR"
    );
}

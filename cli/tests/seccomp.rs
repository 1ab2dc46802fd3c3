//! The sandbox's seccomp profile (Docker's default) and the fsync rule, through
//! the real binary: a static probe (`testdata/seccomp-probe.c`, built here with
//! `gcc -static`) tries one refused or allowed syscall per line, under `rbuild
//! run`, `docker run` (dockerd must be running) and in RUN steps.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Env, build_env, compile_static, docker};

/// Builds the probe into `dir`; panics saying what is missing.
fn build_probe(dir: &Path) -> PathBuf {
    let src = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/seccomp-probe.c"
    ));
    let out = dir.join("seccomp-probe");
    compile_static(&src, &out);
    out
}

/// A build env with `tag` = busybox + the probe at /probe; returns the env.
fn probe_image(tag: &str) -> Env {
    let env = build_env();
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    build_probe(&ctx);
    fs_err::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nCOPY seccomp-probe /probe\n",
    )
    .unwrap();
    env.ok(&["build", "-q", "-t", tag, ctx.to_str().unwrap()]);
    env
}

/// `name: result` lines as a map (in order of the names).
fn parse(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// dockerd's version as (major, minor, patch).
fn docker_version() -> (u32, u32, u32) {
    let o = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .unwrap();
    let v = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let mut n = v
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (
        n.next().unwrap_or(0),
        n.next().unwrap_or(0),
        n.next().unwrap_or(0),
    )
}

fn docker_run(image: &str, extra: &[&str]) -> BTreeMap<String, String> {
    let mut c = Command::new("docker");
    c.args(["run", "--rm", "--network", "none"])
        .args(extra)
        .args([image, "/probe"]);
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "docker run {extra:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    parse(&String::from_utf8_lossy(&o.stdout))
}

/// The values that do not depend on docker: Docker's default profile as
/// rbuild applies it.
fn assert_profile(r: &BTreeMap<String, String>, who: &str) {
    for (probe, want) in [
        ("fork", "ok"),
        ("clone_newuser", "EPERM"),
        ("unshare_user", "EPERM"),
        ("clone3", "ENOSYS"),
        ("personality_query", "ok"),
        ("personality_linux", "ok"),
        ("personality_refused", "EPERM"),
        ("socket_inet", "ok"),
        ("socket_vsock", "EPERM"),
        ("keyctl", "EPERM"),
        ("bpf", "EPERM"),
        ("mount", "EPERM"),
        ("ptrace", "ok"),
        ("i386_keyctl", "EPERM"),
        ("syscall_450", "ENOSYS"),
    ] {
        assert_eq!(
            r.get(probe).map(String::as_str),
            Some(want),
            "{who}: {probe} in {r:?}"
        );
    }
}

#[test]
fn rbuild_run_gives_what_docker_run_gives_probe_by_probe() {
    docker::require();
    let tag = format!("rbuild-seccomp-probe-{}:test", std::process::id());
    let _cleanup = docker::RemoveOnDrop::one(&tag);
    let env = probe_image(&tag);
    let archive = env.path("probe.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), &tag]);
    docker::load(&archive);
    // 20.10.23 and .24 let socket(AF_VSOCK) through (20.10.22 and docker >= 23
    // refuse it, as rbuild does): the one probe compared only there.
    let v = docker_version();
    let vsock_differs = v.0 == 20 && v.1 == 10 && v.2 >= 23;

    for (rbuild_flags, docker_flags, profile) in [
        (&[][..], &[][..], true),
        (&["-u", "65534"][..], &["-u", "65534"][..], true),
        (
            &["--security-opt", "seccomp=unconfined"][..],
            &["--security-opt", "seccomp=unconfined"][..],
            false,
        ),
    ] {
        let mut args = vec!["run", "--rm"];
        args.extend(rbuild_flags);
        args.extend([tag.as_str(), "/probe"]);
        let ours = parse(&env.ok(&args));
        let theirs = docker_run(&tag, docker_flags);
        assert!(ours.len() >= 20, "every probe ran: {ours:?}");
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "same probes"
        );
        for (probe, result) in &ours {
            if profile && vsock_differs && probe == "socket_vsock" {
                assert!(
                    !theirs[probe].starts_with("signal"),
                    "docker: {probe}: {}",
                    theirs[probe]
                );
                continue;
            }
            assert_eq!(
                result, &theirs[probe],
                "{probe} with {rbuild_flags:?}: rbuild gives {result}, docker {}",
                theirs[probe]
            );
        }
        if profile {
            assert_profile(&ours, &format!("rbuild run {rbuild_flags:?}"));
            // CAP_SYS_CHROOT opens chroot to root (a user has no capability).
            let want = if rbuild_flags.is_empty() {
                "ok"
            } else {
                "EPERM"
            };
            assert_eq!(ours["chroot"], want);
        } else {
            // No profile: what the filter refused reaches the kernel.
            assert_eq!(ours["clone3"], "ok");
            assert_eq!(ours["keyctl"], "ok");
            assert_eq!(ours["mount"], "ENOENT");
        }
        // `rbuild run` keeps the programs' syncs, like docker.
        assert_eq!(ours["fsync_badfd"], "EBADF");
    }
}

/// A build of `dockerfile` (with the probe in the context); the plain
/// progress output and whether it succeeded.
fn build(env: &Env, name: &str, dockerfile: &str, flags: &[&str]) -> (bool, String) {
    let ctx = env.path(name);
    fs_err::create_dir_all(&ctx).unwrap();
    build_probe(&ctx);
    fs_err::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let mut args = vec!["build", "--progress=plain", "--no-cache"];
    args.extend(flags);
    args.push(ctx.to_str().unwrap());
    let o = env.run(&args);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!all.contains("panicked"), "{all}");
    (o.status.success(), all)
}

/// The probe's lines out of a build's progress (`#4 keyctl: EPERM`).
fn step_results(out: &str) -> BTreeMap<String, String> {
    parse(
        &out.lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter_map(|l| l.split_once(' ').map(|(_, rest)| rest))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[test]
fn run_steps_get_the_profile_and_security_insecure_lifts_it() {
    let env = build_env();
    let (ok, out) = build(
        &env,
        "sandbox",
        "FROM busybox\nCOPY seccomp-probe /probe\nRUN /probe\n",
        &[],
    );
    assert!(ok, "{out}");
    assert_profile(&step_results(&out), "RUN");

    let (ok, out) = build(
        &env,
        "insecure",
        "FROM busybox\nCOPY seccomp-probe /probe\nRUN --security=insecure /probe\n",
        &["--allow", "security.insecure"],
    );
    assert!(ok, "{out}");
    let r = step_results(&out);
    for probe in [
        "clone3",
        "keyctl",
        "unshare_user",
        "clone_newuser",
        "personality_refused",
    ] {
        assert_eq!(
            r.get(probe).map(String::as_str),
            Some("ok"),
            "{probe}: {r:?}"
        );
    }
    // Not refused by a filter: the kernel looked at the (missing) target.
    assert_eq!(r["mount"], "ENOENT", "{r:?}");
    assert_eq!(r["syscall_450"], "ok", "{r:?}");
}

#[test]
fn fsync_returns_at_once_in_run_steps_unless_sync_full() {
    let env = build_env();
    // A cache mount too: the step's file systems are synced when it commits.
    let df = "FROM busybox\nCOPY seccomp-probe /probe\n\
              RUN --mount=type=cache,target=/cache echo kept > /cache/f && \
              /probe fsync_badfd fdatasync_badfd syncfs_badfd keyctl > /out.txt && cat /out.txt\n";
    let (ok, out) = build(&env, "default", df, &[]);
    assert!(ok, "{out}");
    let r = step_results(&out);
    for probe in ["fsync_badfd", "fdatasync_badfd", "syncfs_badfd"] {
        assert_eq!(
            r.get(probe).map(String::as_str),
            Some("ok"),
            "{probe}: {r:?}"
        );
    }
    assert_eq!(r["keyctl"], "EPERM", "the profile is still on: {r:?}");

    let (ok, out) = build(&env, "full", df, &["--sync=full"]);
    assert!(ok, "{out}");
    let r = step_results(&out);
    for probe in ["fsync_badfd", "fdatasync_badfd", "syncfs_badfd"] {
        assert_eq!(
            r.get(probe).map(String::as_str),
            Some("EBADF"),
            "{probe}: {r:?}"
        );
    }
    assert_eq!(r["keyctl"], "EPERM", "{r:?}");

    // An insecure step keeps the rule (a filter that allows everything else).
    let (ok, out) = build(
        &env,
        "insecure",
        "FROM busybox\nCOPY seccomp-probe /probe\n\
         RUN --security=insecure /probe fsync_badfd keyctl\n",
        &["--allow", "security.insecure"],
    );
    assert!(ok, "{out}");
    let r = step_results(&out);
    assert_eq!(r["fsync_badfd"], "ok", "{r:?}");
    assert_eq!(r["keyctl"], "ok", "{r:?}");

    let e = String::from_utf8_lossy(&env.run(&["build", "--sync=half", "."]).stderr).into_owned();
    assert!(e.contains("--sync") && e.contains("half"), "{e}");
}

/// Whether a step printed `line` (`#5 line`), not only showed it in a command.
fn printed(out: &str, line: &str) -> bool {
    out.lines()
        .filter_map(|l| l.strip_prefix('#'))
        .any(|l| l.split_once(' ').is_some_and(|(_, rest)| rest == line))
}

/// Whether overlay options say `volatile` (`fsync=volatile` on Linux 6.x).
fn volatile(opts: &str) -> bool {
    opts.split(',')
        .any(|o| o == "volatile" || o == "fsync=volatile")
}

/// The root overlay's mount options as the RUN step sees them.
fn root_overlay_options(out: &str) -> String {
    out.lines()
        .filter_map(|l| l.split_once(" - overlay overlay "))
        .map(|(_, opts)| opts.to_owned())
        .next()
        .unwrap_or_else(|| panic!("no overlay root in the step's mountinfo: {out}"))
}

#[test]
fn run_step_overlays_are_volatile_unless_sync_full() {
    let env = build_env();
    // A hard link of a file of the base copies it up (the copy-up overlayfs
    // fsyncs unless the overlay is volatile); the next step sees the same bytes
    // under both names.
    let df = "FROM busybox\n\
              RUN grep ' / / ' /proc/self/mountinfo && ln /bin/busybox /bin/bb-link && \
              echo copied > /copied\n\
              RUN cmp /bin/busybox /bin/bb-link && cat /copied\n";
    let (ok, out) = build(&env, "volatile", df, &[]);
    assert!(ok, "{out}");
    let opts = root_overlay_options(&out);
    assert!(volatile(&opts), "the step's overlay is volatile: {opts}");
    assert!(printed(&out, "copied"), "{out}");

    let (ok, out) = build(&env, "volatile-full", df, &["--sync=full"]);
    assert!(ok, "{out}");
    let opts = root_overlay_options(&out);
    assert!(
        !volatile(&opts),
        "--sync=full keeps overlayfs's own syncs: {opts}"
    );
    assert!(printed(&out, "copied"), "{out}");
}

#[test]
fn an_operation_not_permitted_failure_hints_at_the_profile() {
    let env = build_env();
    let (ok, out) = build(&env, "eperm", "FROM busybox\nRUN unshare -U true\n", &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("Operation not permitted"),
        "the step's output: {out}"
    );
    // BuildKit's wording, then the hint.
    assert!(
        out.contains(
            "ERROR: process \"/bin/sh -c unshare -U true\" did not complete successfully: \
             exit code: 1\nhint: RUN steps run under Docker's default seccomp profile"
        ),
        "{out}"
    );
    assert!(
        out.contains("`RUN --security=insecure`") && out.contains("--allow security.insecure"),
        "{out}"
    );

    // The escape hatch works for that very step.
    let (ok, out) = build(
        &env,
        "eperm-insecure",
        "FROM busybox\nRUN --security=insecure unshare -U true\n",
        &["--allow", "security.insecure"],
    );
    assert!(ok, "{out}");

    // No hint for a failure without the message, nor for an insecure step.
    let (ok, out) = build(&env, "other", "FROM busybox\nRUN exit 3\n", &[]);
    assert!(!ok && out.contains("exit code: 3"), "{out}");
    assert!(!out.contains("hint:"), "{out}");
    let (ok, out) = build(
        &env,
        "other-insecure",
        "FROM busybox\nRUN --security=insecure echo 'x: Operation not permitted' && exit 1\n",
        &["--allow", "security.insecure"],
    );
    assert!(!ok && out.contains("exit code: 1"), "{out}");
    assert!(!out.contains("hint:"), "{out}");
}

#[test]
fn rbuild_run_refuses_an_unknown_security_opt() {
    let env = Env::new();
    let o = env.run(&["run", "--security-opt", "apparmor=x", "img", "true"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("unsupported security option \"apparmor=x\"")
            && e.contains("seccomp=unconfined"),
        "{e}"
    );
}

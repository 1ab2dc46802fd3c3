//! A docker user's habits through the binary: `rbuild [BUILD FLAGS] CONTEXT`
//! without a subcommand, and every flag of `docker build`, `docker buildx
//! build` and `docker run` either implemented or refused in one line with exit
//! code 125.

mod common;

use std::collections::BTreeSet;

use common::Env;

/// The flags of `docker buildx build` and of the legacy `docker build` (from
/// docker's command-line reference), short forms after their long ones.
const DOCKER_BUILD_FLAGS: &[&str] = &[
    "--add-host",
    "--allow",
    "--annotation",
    "--attest",
    "--build-arg",
    "--build-context",
    "--builder",
    "--cache-from",
    "--cache-to",
    "--call",
    "--cgroup-parent",
    "--check",
    "--compress",
    "--cpu-period",
    "--cpu-quota",
    "--cpu-shares",
    "-c",
    "--cpuset-cpus",
    "--cpuset-mems",
    "--debug",
    "-D",
    "--detach",
    "--disable-content-trust",
    "--file",
    "-f",
    "--force-rm",
    "--iidfile",
    "--isolation",
    "--label",
    "--load",
    "--memory",
    "-m",
    "--memory-swap",
    "--metadata-file",
    "--network",
    "--no-cache",
    "--no-cache-filter",
    "--output",
    "-o",
    "--platform",
    "--progress",
    "--provenance",
    "--pull",
    "--push",
    "--quiet",
    "-q",
    "--rm",
    "--sbom",
    "--secret",
    "--security-opt",
    "--shm-size",
    "--squash",
    "--ssh",
    "--tag",
    "-t",
    "--target",
    "--ulimit",
];

/// The flags of `docker run` (docker's command-line reference; `-h`, docker's
/// `--hostname`, is rbuild's `--help`).
const DOCKER_RUN_FLAGS: &[&str] = &[
    "--add-host",
    "--annotation",
    "--attach",
    "-a",
    "--blkio-weight",
    "--blkio-weight-device",
    "--cap-add",
    "--cap-drop",
    "--cgroup-parent",
    "--cgroupns",
    "--cidfile",
    "--cpu-count",
    "--cpu-percent",
    "--cpu-period",
    "--cpu-quota",
    "--cpu-rt-period",
    "--cpu-rt-runtime",
    "--cpu-shares",
    "-c",
    "--cpus",
    "--cpuset-cpus",
    "--cpuset-mems",
    "--detach",
    "-d",
    "--detach-keys",
    "--device",
    "--device-cgroup-rule",
    "--device-read-bps",
    "--device-read-iops",
    "--device-write-bps",
    "--device-write-iops",
    "--disable-content-trust",
    "--dns",
    "--dns-option",
    "--dns-search",
    "--domainname",
    "--entrypoint",
    "--env",
    "-e",
    "--env-file",
    "--expose",
    "--gpus",
    "--group-add",
    "--health-cmd",
    "--health-interval",
    "--health-retries",
    "--health-start-interval",
    "--health-start-period",
    "--health-timeout",
    "--hostname",
    "--init",
    "--interactive",
    "-i",
    "--io-maxbandwidth",
    "--io-maxiops",
    "--ip",
    "--ip6",
    "--ipc",
    "--isolation",
    "--kernel-memory",
    "--label",
    "-l",
    "--label-file",
    "--link",
    "--link-local-ip",
    "--log-driver",
    "--log-opt",
    "--mac-address",
    "--memory",
    "-m",
    "--memory-reservation",
    "--memory-swap",
    "--memory-swappiness",
    "--mount",
    "--name",
    "--network",
    "--network-alias",
    "--no-healthcheck",
    "--oom-kill-disable",
    "--oom-score-adj",
    "--pid",
    "--pids-limit",
    "--platform",
    "--privileged",
    "--publish",
    "-p",
    "--publish-all",
    "-P",
    "--pull",
    "--quiet",
    "-q",
    "--read-only",
    "--restart",
    "--rm",
    "--runtime",
    "--security-opt",
    "--shm-size",
    "--sig-proxy",
    "--stop-signal",
    "--stop-timeout",
    "--storage-opt",
    "--sysctl",
    "--tmpfs",
    "--tty",
    "-t",
    "--ulimit",
    "--user",
    "-u",
    "--userns",
    "--uts",
    "--volume",
    "-v",
    "--volume-driver",
    "--volumes-from",
    "--workdir",
    "-w",
];

/// The flags `rbuild SUB --help` lists (`-x, --long` at the start of a line).
fn listed_flags(env: &Env, sub: &str) -> BTreeSet<String> {
    let help = env.ok(&[sub, "--help"]);
    let mut flags = BTreeSet::new();
    for line in help.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        let head = line.split("  ").next().unwrap_or("");
        for word in head.split([',', ' ']) {
            if word.starts_with('-') {
                let name = word.split(['=', '[', '<']).next().unwrap_or(word);
                flags.insert(name.to_owned());
            }
        }
    }
    assert!(
        flags.contains("--help"),
        "no flags read from `rbuild {sub} --help`:\n{help}"
    );
    flags
}

/// Asserts `rbuild ARGS` is refused for `flag`: one line naming it and saying
/// it is not supported (or unknown), exit code 125, no clap tip.
fn assert_refused(env: &Env, args: &[&str], flag: &str) -> String {
    let o = env.run(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(125), "rbuild {args:?}: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "rbuild {args:?}: {err:?}"
    );
    assert!(
        err.contains(&format!(" {flag} is not supported")),
        "rbuild {args:?} should name {flag} and say it is not supported: {err}"
    );
    for tip in ["tip:", "-- ", "Usage:", "panicked"] {
        assert!(!err.contains(tip), "rbuild {args:?}: {err}");
    }
    err
}

#[test]
fn every_docker_build_flag_is_implemented_or_refused_in_one_line() {
    let env = Env::new();
    let listed = listed_flags(&env, "build");
    let mut refused = 0;
    for flag in DOCKER_BUILD_FLAGS {
        if listed.contains(*flag) {
            continue;
        }
        // As `docker build FLAG VALUE .` and as `FLAG=VALUE` (long flags),
        // with and without the `build` word.
        assert_refused(&env, &["build", flag, "x", "."], flag);
        assert_refused(&env, &[flag, "x", "."], flag);
        if flag.starts_with("--") {
            assert_refused(&env, &["build", &format!("{flag}=x"), "."], flag);
        }
        refused += 1;
    }
    assert!(refused > 10, "only {refused} flags refused");
    // Flags docker has no word for: unknown, one line, 125.
    let o = env.run(&["build", "--frobnicate", "."]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert_eq!(
        err.trim_end(),
        "rbuild build: unknown flag: --frobnicate (see `rbuild build --help`)"
    );
}

#[test]
fn every_docker_run_flag_is_implemented_or_refused_in_one_line() {
    let env = Env::new();
    let listed = listed_flags(&env, "run");
    let mut refused = 0;
    for flag in DOCKER_RUN_FLAGS {
        if listed.contains(*flag) {
            continue;
        }
        // Before the image, as docker takes them: never read as the image.
        assert_refused(&env, &["run", flag, "x", "busybox", "true"], flag);
        if flag.starts_with("--") {
            assert_refused(&env, &["run", &format!("{flag}=x"), "busybox"], flag);
        }
        refused += 1;
    }
    assert!(refused > 10, "only {refused} flags refused");
    let o = env.run(&["run", "--frobnicate", "busybox"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert_eq!(
        err.trim_end(),
        "rbuild run: unknown flag: --frobnicate (see `rbuild run --help`)"
    );
}

#[test]
fn the_refusal_says_which_rbuild_flag_does_the_job() {
    let env = Env::new();
    let err = assert_refused(&env, &["run", "-p", "8080:80", "img"], "-p");
    assert!(err.contains("--network host"), "{err}");
    let err = assert_refused(&env, &["build", "--cpu-shares", "512", "."], "--cpu-shares");
    assert!(err.contains("--cpu-quota"), "{err}");
}

#[test]
fn other_flag_errors_are_one_line_with_exit_125() {
    let env = Env::new();
    for args in [
        &["build", "--network", "bogus", "."][..],
        &["build"][..],
        &["build", "--jobs", "many", "."][..],
    ] {
        let o = env.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(125), "rbuild {args:?}: {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "rbuild {args:?}: {err:?}"
        );
        assert!(err.starts_with("rbuild build: "), "{err}");
    }
    // Help and version still print and succeed.
    assert!(env.ok(&["--version"]).starts_with("rbuild "));
    assert!(env.ok(&["build", "--help"]).contains("--tag"));
}

#[test]
fn build_flags_without_the_build_word_build_and_tag() {
    let env = common::build_env();
    let ctx = env.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile.app"),
        "FROM busybox\nRUN echo habit > /habit\n",
    )
    .unwrap();
    let df = ctx.join("Dockerfile.app");
    // As CI scripts call builders: flags first, no subcommand.
    let out = env.ok(&[
        "-f",
        df.to_str().unwrap(),
        "-t",
        "habit:1",
        ctx.to_str().unwrap(),
    ]);
    assert!(out.contains("Successfully tagged habit:1"), "{out}");
    // The global --root before it works the same.
    let root = env.root();
    let out = env.ok(&[
        "--root",
        root.to_str().unwrap(),
        "--file",
        df.to_str().unwrap(),
        "--tag",
        "habit:2",
        "-q",
        ctx.to_str().unwrap(),
    ]);
    let id = out.trim();
    let images = env.ok(&["images"]);
    assert!(images.contains("habit"), "{images}");
    let seen = env.ok(&["run", "habit:2", "cat", "/habit"]);
    assert_eq!(seen, "habit\n");
    let inspect = env.ok(&["image", "inspect", "habit:1"]);
    assert!(
        inspect.contains(id.trim_start_matches("sha256:")),
        "{inspect}\n{id}"
    );
    // A subcommand is still a subcommand.
    assert!(env.ok(&["images"]).contains("habit"));
}

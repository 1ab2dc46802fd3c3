//! Resource limits of RUN steps through the binary: `--pids-limit` against a
//! fork bomb, `--memory` against a 200 MB allocation, `--step-timeout`, the
//! config file's pids-limit default, output clipping at 2 MiB, and limits
//! that cannot be applied. Needs root (steps run in the sandbox, limits in
//! cgroups) and the busybox base; fails saying what is missing otherwise.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::Env;

fn write(env: &Env, dockerfile: &str) -> String {
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx.to_string_lossy().into_owned()
}

fn build(env: &Env, args: &[&str], ctx: &str) -> Output {
    let mut a = vec!["build", "--progress", "plain"];
    a.extend_from_slice(args);
    a.push(ctx);
    env.run(&a)
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Pids of processes whose command line is exactly `argv`.
fn processes(argv: &[&str]) -> Vec<String> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Step cgroups (`rbuild-<pid>-<n>`) whose rbuild process is gone: what a
/// finished build must not leave. Looks below this test's own cgroups (where
/// rbuild, its child, makes them) in every hierarchy, and v2's fallback parent.
fn leftover_cgroups() -> Vec<String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mut parents = vec![Path::new("/sys/fs/cgroup/rbuild").to_path_buf()];
    for line in own.lines() {
        let mut it = line.splitn(3, ':');
        let (_, ctls, path) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        let rel = path.trim_start_matches('/');
        parents.push(if ctls.is_empty() {
            Path::new("/sys/fs/cgroup").join(rel)
        } else {
            Path::new("/sys/fs/cgroup").join(ctls).join(rel)
        });
    }
    let mut left = Vec::new();
    for p in parents {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("rbuild-")
                .and_then(|n| n.split_once('-'))
                .map(|(pid, _)| pid.to_owned());
            if let Some(pid) = pid
                && !Path::new("/proc").join(&pid).exists()
            {
                left.push(e.path().display().to_string());
            }
        }
    }
    left
}

/// The `ERROR:` line of a failed build's report.
fn error_line(err: &str) -> &str {
    err.lines()
        .rev()
        .find(|l| l.starts_with("ERROR: "))
        .unwrap_or_else(|| panic!("no ERROR line in:\n{err}"))
}

#[test]
fn a_fork_bomb_under_pids_limit_fails_naming_the_limit_and_the_machine_stays_responsive() {
    let env = common::build_env();
    // A recursive bomb plus a loop forking long sleepers: unbounded without a
    // limit; the loop's shell fails once a fork is refused.
    let ctx = write(
        &env,
        "FROM busybox\nRUN b() { b | b & }; b; while :; do sleep 1234 & done\n",
    );
    let started = Instant::now();
    let o = build(
        &env,
        &["--pids-limit", "100", "--step-timeout", "60s"],
        &ctx,
    );
    let took = started.elapsed();
    let (out, err) = text(&o);
    assert!(
        !o.status.success(),
        "the bomb must fail the step:\n{out}\n{err}"
    );
    assert_eq!(
        error_line(&err),
        "ERROR: process \"/bin/sh -c b() { b | b & }; b; while :; do sleep 1234 & done\" did \
         not complete successfully: pids limit 100 reached (--pids-limit)",
        "{err}"
    );
    // Bounded by the limit, not by the safety-net timeout.
    assert!(took < Duration::from_secs(45), "took {took:?}");
    assert_eq!(processes(&["sleep", "1234"]), Vec::<String>::new());
    assert_eq!(leftover_cgroups(), Vec::<String>::new());
    // The machine stays responsive: a process starts at once, a build works.
    let t = Instant::now();
    assert!(Command::new("true").status().unwrap().success());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let ctx = write(&env, "FROM busybox\nRUN echo after-the-bomb\n");
    let t = Instant::now();
    let o = build(&env, &[], &ctx);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
}

#[test]
fn a_step_over_its_memory_limit_fails_as_out_of_memory() {
    let env = common::build_env();
    // dd fills a 200 MB buffer from /dev/zero. There is no swap to absorb it
    // (and where the kernel accounts swap, memory+swap is limited to 128m).
    let ctx = write(
        &env,
        "FROM busybox\nRUN dd if=/dev/zero of=/dev/null bs=200M count=1\n",
    );
    let o = build(&env, &["--memory", "64m"], &ctx);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}\n{err}");
    assert_eq!(
        error_line(&err),
        "ERROR: process \"/bin/sh -c dd if=/dev/zero of=/dev/null bs=200M count=1\" did not \
         complete successfully: killed: out of memory (--memory 64m)",
        "{err}"
    );
    // The limit did it: with room (1g) the same step passes.
    let o = build(&env, &["--memory", "1g"], &ctx);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(leftover_cgroups(), Vec::<String>::new());
}

#[test]
fn step_timeout_kills_a_step_that_runs_too_long() {
    let env = common::build_env();
    let ctx = write(&env, "FROM busybox\nRUN echo started; sleep 10\n");
    let t = Instant::now();
    let o = build(&env, &["--step-timeout", "2s"], &ctx);
    let took = t.elapsed();
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}\n{err}");
    assert_eq!(
        error_line(&err),
        "ERROR: process \"/bin/sh -c echo started; sleep 10\" did not complete \
         successfully: timed out after 2s (--step-timeout)",
        "{err}"
    );
    // The report keeps the step's output.
    assert!(err.lines().any(|l| l == "started"), "{err}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(took >= Duration::from_secs(2), "took {took:?}");
    // With limits, the killed step's cgroup goes too.
    let o = build(
        &env,
        &["--step-timeout", "2s", "--pids-limit", "50", "--no-cache"],
        &ctx,
    );
    assert!(error_line(&text(&o).1).ends_with("timed out after 2s (--step-timeout)"));
    assert_eq!(leftover_cgroups(), Vec::<String>::new());
    // A bad duration is refused before anything runs.
    let o = env.run(&["build", "--step-timeout", "soon", &ctx]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("\"soon\" is not a duration"), "{err}");
}

#[test]
fn limits_are_not_part_of_the_cache_key() {
    let env = common::build_env();
    let ctx = write(&env, "FROM busybox\nRUN echo built > /f\n");
    let o = build(&env, &[], &ctx);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = build(
        &env,
        &[
            "--pids-limit",
            "100",
            "--memory",
            "256m",
            "--step-timeout",
            "1m",
        ],
        &ctx,
    );
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("#2 CACHED"), "{err}");
}

#[test]
fn the_config_file_sets_a_default_pids_limit_the_option_overrides() {
    let env = common::build_env();
    fs_err::write(env.root().join("config.toml"), "[build]\npids-limit = 8\n").unwrap();
    let ctx = write(
        &env,
        "FROM busybox\nRUN for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 1 & done; wait\n",
    );
    let o = build(&env, &[], &ctx);
    let (_, err) = text(&o);
    assert!(!o.status.success(), "{err}");
    assert!(
        error_line(&err).ends_with("pids limit 8 reached (--pids-limit)"),
        "{err}"
    );
    let o = build(&env, &["--pids-limit", "-1"], &ctx);
    assert!(o.status.success(), "{:?}", text(&o));
    // An unknown key of [build] is an error naming the file.
    fs_err::write(env.root().join("config.toml"), "[build]\npids = 8\n").unwrap();
    let err = env.fails(&["build", &ctx]);
    assert!(err.contains("config.toml") && err.contains("pids"), "{err}");
}

#[test]
fn step_output_is_clipped_at_2mib_with_buildkits_note() {
    let env = common::build_env();
    // 3 MiB of 37-byte lines, then a marker.
    let ctx = write(
        &env,
        "FROM busybox\nRUN yes abcdefghijklmnopqrstuvwxyz0123456789 | head -c 3145728; \
         echo; echo END-MARKER\n",
    );
    let shown = |err: &str| {
        err.lines()
            .filter(|l| *l == "#2 abcdefghijklmnopqrstuvwxyz0123456789")
            .count()
    };
    let o = build(&env, &["--no-cache"], &ctx);
    let (_, err) = text(&o);
    assert!(o.status.success());
    assert!(
        err.lines()
            .any(|l| l == "#2 [output clipped, log limit 2MiB reached]"),
        "no clip note"
    );
    assert!(!err.lines().any(|l| l == "#2 END-MARKER"));
    // About 2 MiB of the 3 shown (each line is 36 bytes and its newline).
    let n = shown(&err);
    assert!((56_000..=2_097_152 / 37).contains(&n), "{n} lines shown");
    // RBUILD_STEP_LOG_MAX_SIZE: -1 shows everything, a size clips there.
    let o = env
        .cmd(&["build", "--progress", "plain", "--no-cache", &ctx])
        .env("RBUILD_STEP_LOG_MAX_SIZE", "-1")
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert!(o.status.success());
    assert!(err.lines().any(|l| l == "#2 END-MARKER"));
    assert!(!err.contains("output clipped"));
    assert_eq!(shown(&err), 3_145_728 / 37);
    let o = env
        .cmd(&["build", "--progress", "plain", "--no-cache", &ctx])
        .env("RBUILD_STEP_LOG_MAX_SIZE", "4k")
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert!(o.status.success());
    assert!(
        err.contains("#2 [output clipped, log limit 4KiB reached]"),
        "{err}"
    );
    assert!(shown(&err) <= 4096 / 37, "{}", shown(&err));
}

#[test]
fn a_limit_that_cannot_be_applied_is_a_clear_error_before_any_step_runs() {
    let env = common::build_env();
    let ctx = write(&env, "FROM busybox\nRUN echo step-ran\n");
    // A CPU this machine does not have: the kernel refuses the cpuset.
    let err = env.fails(&["build", "--progress", "plain", "--cpuset-cpus", "999", &ctx]);
    assert!(
        err.starts_with("Error: cannot apply resource limits: the cpuset \"999\": ")
            && err.contains("the CPUs available are"),
        "{err}"
    );
    // Values wrong on their own name the option.
    let err = env.fails(&["build", "--memory", "1k", &ctx]);
    assert!(err.contains("--memory: "), "{err}");
    let err = env.fails(&["build", "--memory-swap", "1g", &ctx]);
    assert!(err.contains("--memory-swap needs --memory"), "{err}");
    // Without root, cgroups are not writable here (no delegated subtree):
    // `rbuild run` as nobody says so.
    assert!(
        common::have("setpriv"),
        "setpriv is missing: install util-linux"
    );
    let tar = env.path("base.tar");
    let rootfs = env.path("rootfs");
    fs_err::create_dir_all(&rootfs).unwrap();
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-xf")
        .arg(&tar)
        .status()
        .unwrap();
    assert!(st.success(), "cannot unpack {}", tar.display());
    for p in [env.dir.path(), rootfs.as_path()] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(common::BIN)
        .args(["run", "--network", "none", "--memory", "64m", "--rootfs"])
        .arg(&rootfs)
        .args(["touch", "/ran"])
        .env("RBUILD_ROOT", env.path("nobody-root"))
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with(
            "rbuild run: cannot apply resource limits: cannot create the step's cgroup"
        ) && err.contains("resource limits need root"),
        "{err}"
    );
    assert!(!Path::new(&rootfs).join("ran").exists());
}

#[test]
fn rbuild_run_takes_memory_and_pids_limits() {
    let env = common::build_env();
    let o = env.run(&[
        "run",
        "--pids-limit",
        "10",
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 1 & done; wait",
    ]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.lines()
            .any(|l| l == "rbuild run: pids limit 10 reached (--pids-limit)"),
        "{err}"
    );
    let o = env.run(&[
        "run",
        "-m",
        "32m",
        "busybox",
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=100M",
        "count=1",
    ]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(137), "{err}");
    assert!(
        err.lines()
            .any(|l| l == "rbuild run: killed: out of memory (--memory 32m)"),
        "{err}"
    );
}

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

/// A context with `FROM busybox` and one RUN; returns its directory.
fn small_context(env: &Env, name: &str, marker: &str) -> std::path::PathBuf {
    let ctx = env.path(name);
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM busybox\nRUN echo {marker} > /marker\n"),
    )
    .unwrap();
    ctx
}

#[test]
fn platform_the_hosts_builds_others_wait_for_multi_platform() {
    let env = common::build_env();
    let ctx = small_context(&env, "ctx", "plat");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no test platform for {other}"),
    };
    let host = format!("linux/{arch}");
    let out = env.ok(&[
        "build",
        "--platform",
        &host,
        "-t",
        "plat:1",
        ctx.to_str().unwrap(),
    ]);
    assert!(out.contains("Successfully tagged plat:1"), "{out}");
    let other = if arch == "amd64" {
        "linux/arm64"
    } else {
        "linux/amd64"
    };
    for p in [other.to_owned(), format!("{host},{other}")] {
        let err = env.fails(&["build", "--platform", &p, ctx.to_str().unwrap()]);
        assert!(
            err.contains("multi-platform") && err.contains(other) && err.contains(&host),
            "{err}"
        );
    }
    let err = env.fails(&["build", "--platform", "linux//x", ctx.to_str().unwrap()]);
    assert!(err.contains("not a platform"), "{err}");
}

#[test]
fn metadata_file_names_the_image_images_shows() {
    let env = common::build_env();
    let ctx = small_context(&env, "ctx", "meta");
    let meta = env.path("meta.json");
    env.ok(&[
        "build",
        "-t",
        "meta:1",
        "-t",
        "meta:2",
        "--metadata-file",
        meta.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    let id = env.ok(&["images", "--no-trunc", "-q", "meta:1"]);
    assert_eq!(v["containerimage.config.digest"], id.trim(), "{v}");
    assert_eq!(v["image.name"], "meta:1,meta:2", "{v}");
    // The manifest digest is that of the manifest `save` writes.
    let saved = env.path("meta.tar");
    env.ok(&["save", "-o", saved.to_str().unwrap(), "meta:1"]);
    let mut ar = tar::Archive::new(std::fs::File::open(&saved).unwrap());
    let index: serde_json::Value = ar
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap().to_str() == Some("index.json"))
        .map(|e| serde_json::from_reader(e).unwrap())
        .expect("index.json in the saved archive");
    let digest = &index["manifests"][0]["digest"];
    assert!(digest.as_str().unwrap().starts_with("sha256:"), "{index}");
    assert_eq!(&v["containerimage.digest"], digest, "{v}");
    assert_eq!(&v["containerimage.descriptor"]["digest"], digest, "{v}");
}

#[test]
fn buildkit_progress_sets_the_progress_mode() {
    let env = common::build_env();
    let ctx = small_context(&env, "ctx", "progress");
    let o = env
        .cmd(&["build", ctx.to_str().unwrap()])
        .env("BUILDKIT_PROGRESS", "json")
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let first = err.lines().next().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(first)
        .unwrap_or_else(|e| panic!("BUILDKIT_PROGRESS=json gave no JSON ({e}): {err}"));
    assert!(v.get("event").is_some(), "{v}");
    // --progress wins over the environment.
    let o = env
        .cmd(&[
            "build",
            "--progress",
            "plain",
            "--no-cache",
            ctx.to_str().unwrap(),
        ])
        .env("BUILDKIT_PROGRESS", "json")
        .output()
        .unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.lines().next().unwrap_or("").starts_with('#'), "{err}");
}

#[test]
fn load_puts_the_image_into_the_docker_daemon() {
    common::docker::require();
    let env = common::build_env();
    let marker = format!("loaded-{}", std::process::id());
    let ctx = small_context(&env, "ctx", &marker);
    let tag = format!("rbuild-load-test:{}", std::process::id());
    let _ = std::process::Command::new("docker")
        .args(["rmi", &tag])
        .output();
    env.ok(&["build", "--load", "-t", &tag, ctx.to_str().unwrap()]);
    let id = env.ok(&["images", "--no-trunc", "-q", &tag]);
    let o = std::process::Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &tag])
        .output()
        .unwrap();
    let docker_id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let _ = std::process::Command::new("docker")
        .args(["rmi", &tag])
        .output();
    assert_eq!(
        docker_id,
        id.trim(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // No daemon there: one clear line.
    let o = env
        .cmd(&["build", "--load", "-t", &tag, ctx.to_str().unwrap()])
        .env(
            "DOCKER_HOST",
            format!("unix://{}", env.path("no.sock").display()),
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.lines()
            .last()
            .unwrap_or("")
            .contains("--load: no docker daemon answers at unix://"),
        "{err}"
    );
}

#[test]
fn add_host_shm_size_and_ulimit_reach_run_steps() {
    let env = common::build_env();
    let ctx = env.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\n\
         RUN { grep -v localhost /etc/hosts; df -k /dev/shm | tail -1 | awk '{print $2}'; \
         ulimit -n; ulimit -Hn; ulimit -s; } > /seen\n",
    )
    .unwrap();
    let c = ctx.to_str().unwrap();
    env.ok(&[
        "build",
        "--add-host",
        "db:10.1.2.3",
        "--add-host",
        "v6=fd00::5",
        "--shm-size",
        "32m",
        "--ulimit",
        "nofile=123:456",
        "--ulimit",
        "stack=-1",
        "-t",
        "extras:1",
        c,
    ]);
    let seen = env.ok(&["run", "extras:1", "cat", "/seen"]);
    assert_eq!(
        seen, "10.1.2.3\tdb\nfd00::5\tv6\n32768\n123\n456\nunlimited\n",
        "{seen}"
    );
    // Without them the step runs again (they are part of its definition)
    // and sees the defaults: no extra hosts, docker's 64 MiB /dev/shm.
    env.ok(&["build", "-t", "extras:2", c]);
    let seen = env.ok(&["run", "extras:2", "cat", "/seen"]);
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], "65536", "{seen}");
    assert_ne!(lines[1], "123", "{seen}");
    for (args, what) in [
        (&["--add-host", "db"][..], "HOST:IP"),
        (&["--add-host", "db:nope"][..], "not an IP address"),
        (&["--ulimit", "bogus=1"][..], "unknown limit"),
        (&["--ulimit", "nofile=9:1"][..], "soft limit is above"),
        (&["--shm-size", "lots"][..], "lots"),
    ] {
        let mut a = vec!["build"];
        a.extend_from_slice(args);
        a.push(c);
        let o = env.run(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{a:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{a:?}: {err}");
        assert!(err.contains(what), "{a:?}: {err}");
    }
}

#[test]
fn build_context_dirs_and_images_serve_from_and_copy_from() {
    let env = common::build_env();
    let base_ctx = small_context(&env, "basectx", "from-the-image");
    env.ok(&["build", "-t", "named-base:1", base_ctx.to_str().unwrap()]);
    let extra = env.path("extra");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("e.txt"), "extra one\n").unwrap();
    let ctx = env.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM extra AS ex\n\
         FROM img\n\
         COPY --from=extra e.txt /copied.txt\n\
         COPY --from=ex /e.txt /from-stage.txt\n\
         RUN cat /marker /copied.txt /from-stage.txt > /all\n",
    )
    .unwrap();
    let build = |tag: &str| {
        env.ok(&[
            "build",
            "--build-context",
            &format!("extra={}", extra.display()),
            "--build-context",
            "img=docker-image://named-base:1",
            "-t",
            tag,
            ctx.to_str().unwrap(),
        ]);
        env.ok(&["run", tag, "cat", "/all"])
    };
    assert_eq!(build("named:1"), "from-the-image\nextra one\nextra one\n");
    // The named directory is read afresh: a change is copied.
    std::fs::write(extra.join("e.txt"), "extra two\n").unwrap();
    assert_eq!(build("named:2"), "from-the-image\nextra two\nextra two\n");
    // Without them, `img` and `extra` are image names nobody has.
    let o = env.run(&["build", ctx.to_str().unwrap()]);
    assert!(!o.status.success());
    for (spec, what) in [
        ("extra", "NAME=DIR"),
        ("x=/no/such/dir", "No such file"),
        ("x=https://example.com/c.tar", "not supported"),
        ("x=docker-image://Bad Ref", "Bad Ref"),
    ] {
        let err = env.fails(&["build", "--build-context", spec, ctx.to_str().unwrap()]);
        assert!(err.contains(what), "{spec}: {err}");
    }
}

#[test]
fn syntax_directive_of_the_dockerfile_frontend_is_accepted_others_refused() {
    let env = common::build_env();
    let ctx = env.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    for ok in ["docker/dockerfile:1", "docker/dockerfile:1.7-labs"] {
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("# syntax={ok}\nFROM busybox\nRUN true\n"),
        )
        .unwrap();
        env.ok(&["build", ctx.to_str().unwrap()]);
    }
    std::fs::write(
        ctx.join("Dockerfile"),
        "# syntax=example.com/other/frontend:2\nFROM busybox\nRUN true\n",
    )
    .unwrap();
    let err = env.fails(&["build", ctx.to_str().unwrap()]);
    assert!(
        err.contains("example.com/other/frontend:2")
            && err.contains("built-in Dockerfile frontend only"),
        "{err}"
    );
}

#[test]
fn images_format_json_prints_dockers_json() {
    common::docker::require();
    let env = common::build_env();
    let tag = format!("rbuild-json-test:{}", std::process::id());
    let ctx = small_context(&env, "ctx", "json");
    env.ok(&["build", "-t", &tag, ctx.to_str().unwrap()]);
    let ours = |format: &str| -> serde_json::Value {
        let out = env.ok(&["images", "--format", format, &tag]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let a = ours("json");
    let b = ours("{{json .}}");
    // `CreatedSince` ("Less than a second ago", "1 second ago") moves with the
    // clock between the two calls; every other field must be equal.
    let without_since = |v: &serde_json::Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("CreatedSince");
        v
    };
    assert!(a["CreatedSince"].is_string() && b["CreatedSince"].is_string());
    assert_eq!(without_since(&a), without_since(&b));
    // docker's row for the same image, loaded into it.
    let tar = env.path("json.tar");
    env.ok(&["save", "-o", tar.to_str().unwrap(), &tag]);
    let load = std::process::Command::new("docker")
        .args(["load", "-i", tar.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(load.status.success(), "{load:?}");
    let theirs = std::process::Command::new("docker")
        .args(["images", "--format", "{{json .}}", &tag])
        .output()
        .unwrap();
    let _ = std::process::Command::new("docker")
        .args(["rmi", &tag])
        .output();
    let theirs: serde_json::Value =
        serde_json::from_slice(&theirs.stdout).expect("docker images gave a JSON line");
    let keys = |v: &serde_json::Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(keys(&a), keys(&theirs), "{a}\n{theirs}");
    for k in ["ID", "Repository", "Tag", "Size", "Containers"] {
        assert_eq!(a[k], theirs[k], "{k}: {a}\n{theirs}");
    }
}

#[test]
fn version_info_and_completion() {
    let env = Env::new();
    let v = env.ok(&["version"]);
    assert!(
        v.contains(&format!("Version:    {}", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    // info on a root that does not exist yet: nothing made, 0 bytes.
    let info = |env: &Env| -> serde_json::Value {
        serde_json::from_str(&env.ok(&["info", "--format", "json"])).unwrap()
    };
    let before = info(&env);
    assert!(!env.root().exists(), "info made the state root");
    assert_eq!(before["State root"], env.root().to_str().unwrap());
    assert_eq!(before["StorageBytes"], 0);
    env.import_rootfs("info:1", "info-seed");
    let after = info(&env);
    let bytes = after["StorageBytes"].as_u64().unwrap();
    assert!(bytes > 4096, "{after}");
    assert_eq!(after["Images"], "1", "{after}");
    let overlay = std::fs::read_to_string("/proc/filesystems")
        .unwrap()
        .lines()
        .any(|l| l.ends_with("\toverlay"));
    assert_eq!(after["Overlayfs"] == "yes", overlay, "{after}");
    let cgroup2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    assert_eq!(
        after["Cgroups"].as_str().unwrap().starts_with("v2"),
        cgroup2,
        "{after}"
    );
    assert!(after["User namespaces"].is_string(), "{after}");
    let text = env.ok(&["info"]);
    assert!(
        text.contains(&format!("State root: {}", env.root().display())),
        "{text}"
    );
    // bash: the script completes subcommands and build flags.
    let script = env.ok(&["completion", "bash"]);
    let path = env.path("rbuild.bash");
    std::fs::write(&path, script).unwrap();
    let complete = |words: &str, cword: usize, cur: &str, prev: &str| {
        let o = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
                 _rbuild rbuild {cur} {prev}; echo \"${{COMPREPLY[@]}}\"",
                path.display()
            ))
            .output()
            .expect("bash is missing: install bash");
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    assert_eq!(complete("rbuild bu", 1, "bu", "rbuild"), "build builder");
    assert_eq!(
        complete("rbuild build --add", 2, "--add", "build"),
        "--add-host"
    );
    let zsh = env.ok(&["completion", "zsh"]);
    assert!(zsh.starts_with("#compdef rbuild"), "{zsh}");
    assert!(zsh.contains("--add-host"));
    let fish = env.ok(&["completion", "fish"]);
    assert!(fish.contains("complete -c rbuild"), "{fish}");
    assert!(fish.contains("add-host"));
    let o = env.run(&["completion", "tcsh"]);
    assert_eq!(o.status.code(), Some(125));
}

#[test]
fn run_takes_dockers_flags() {
    let env = common::build_env();
    let ctx = env.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nENTRYPOINT [\"echo\", \"from-entrypoint\"]\nCMD [\"from-cmd\"]\n",
    )
    .unwrap();
    env.ok(&["build", "-t", "ep:1", ctx.to_str().unwrap()]);
    assert_eq!(env.ok(&["run", "ep:1"]), "from-entrypoint from-cmd\n");
    // --entrypoint replaces the ENTRYPOINT and drops the CMD.
    assert_eq!(
        env.ok(&["run", "--entrypoint", "cat", "ep:1", "/etc/hostname"]),
        "rbuild\n"
    );
    assert_eq!(env.ok(&["run", "--entrypoint", "pwd", "ep:1"]), "/\n");
    assert_eq!(
        env.ok(&["run", "--entrypoint", "", "ep:1", "echo", "x"]),
        "x\n"
    );
    // -w
    assert_eq!(
        env.ok(&["run", "-w", "/etc", "--entrypoint", "pwd", "ep:1"]),
        "/etc\n"
    );
    // -v HOST:CTR[:ro]
    let vol = env.path("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("h.txt"), "host data\n").unwrap();
    let ro = format!("{}:/data:ro", vol.display());
    let out = env.ok(&[
        "run",
        "-v",
        &ro,
        "busybox",
        "sh",
        "-c",
        "cat /data/h.txt; echo w > /data/new || echo refused",
    ]);
    assert_eq!(out, "host data\nrefused\n");
    assert!(!vol.join("new").exists());
    let rw = format!("{}:/data", vol.display());
    env.ok(&[
        "run",
        "-v",
        &rw,
        "busybox",
        "sh",
        "-c",
        "echo w > /data/new",
    ]);
    assert_eq!(std::fs::read_to_string(vol.join("new")).unwrap(), "w\n");
    // --env-file, -e wins over it.
    let envf = env.path("envf");
    std::fs::write(&envf, "# comment\nA=1\n\nB=two words\n").unwrap();
    let out = env.ok(&[
        "run",
        "--env-file",
        envf.to_str().unwrap(),
        "-e",
        "A=9",
        "busybox",
        "sh",
        "-c",
        "echo \"$A|$B\"",
    ]);
    assert_eq!(out, "9|two words\n");
    // --tmpfs with a size.
    let out = env.ok(&[
        "run",
        "--tmpfs",
        "/scratch:size=1m",
        "busybox",
        "sh",
        "-c",
        "df -k /scratch | tail -1 | awk '{print $2}'",
    ]);
    assert_eq!(out, "1024\n");
    // --read-only: the root cannot be written, a --tmpfs can.
    let out = env.ok(&[
        "run",
        "--read-only",
        "--tmpfs",
        "/tmp",
        "busybox",
        "sh",
        "-c",
        "touch /x 2>/dev/null && echo root-written; touch /tmp/y && echo tmp-written",
    ]);
    assert_eq!(out, "tmp-written\n");
    // --user, --network none
    assert_eq!(
        env.ok(&["run", "--user", "65534:65534", "busybox", "id", "-u"]),
        "65534\n"
    );
    let out = env.ok(&[
        "run",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "ls /sys/class/net 2>/dev/null || cat /proc/net/dev | tail -n +3 | cut -d: -f1",
    ]);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["lo"], "{out}");
    // Bad values: one line.
    for (args, what) in [
        (&["-v", "named:/data"][..], "named volumes"),
        (&["--tmpfs", "/x:noexec"][..], "only size"),
        (&["--env-file", "/no/such/file"][..], "--env-file"),
        (&["--name", "bad name"][..], "invalid name"),
    ] {
        let mut a = vec!["run"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["busybox", "true"]);
        let err = env.fails(&a);
        assert!(err.contains(what), "{a:?}: {err}");
    }
}

#[test]
fn run_name_is_held_by_one_run_at_a_time() {
    use std::io::BufRead;
    let env = common::build_env();
    let mut first = env
        .cmd(&[
            "run",
            "--name",
            "solo",
            "busybox",
            "sh",
            "-c",
            "echo started; sleep 3",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once its command runs, the first run holds the name.
    let mut line = String::new();
    std::io::BufReader::new(first.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");
    let o = env.run(&["run", "--name", "solo", "busybox", "true"]);
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(err.contains("already running"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // Another name runs meanwhile.
    env.ok(&["run", "--name", "other", "busybox", "true"]);
    assert!(first.wait().unwrap().success());
    // Free again once the first ended.
    env.ok(&["run", "--name", "solo", "busybox", "true"]);
}

#[test]
fn a_failed_builds_hint_works_as_printed_and_its_state_stays_out_of_images() {
    let env = common::build_env();
    let ctx = env.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo good > /state\nRUN exit 3\n",
    )
    .unwrap();
    let o = env.run(&["build", ctx.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    let hint = err
        .lines()
        .find_map(|l| l.split("to open a shell there: ").nth(1))
        .unwrap_or_else(|| panic!("no hint in:\n{err}"));
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(words[..3], ["rbuild", "run", "-it"], "{hint}");
    assert_eq!(words.len(), 5, "{hint}");
    let id = words[3];
    // The command as printed, a shell reading its commands from stdin.
    let o = env.with_stdin(&words[1..], b"cat /state\nexit 0\n");
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("good"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // Not in `images`, in `images -a`, gone after `image prune`.
    let listed = |args: &[&str]| env.ok(args).lines().any(|l| l.contains(id));
    assert!(!listed(&["images"]), "{}", env.ok(&["images"]));
    assert!(listed(&["images", "-a"]), "{}", env.ok(&["images", "-a"]));
    env.ok(&["image", "prune", "-f"]);
    assert!(!listed(&["images", "-a"]), "{}", env.ok(&["images", "-a"]));
    let o = env.run(&["run", id, "true"]);
    assert!(!o.status.success());
}

#[test]
fn without_home_a_non_root_user_is_told_to_set_rbuild_root() {
    assert!(
        common::have("setpriv"),
        "setpriv is missing: install util-linux"
    );
    let dir = tempfile::tempdir().unwrap();
    let as_nobody = |args: &[&str], home: Option<&str>| {
        let mut c = std::process::Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            common::BIN,
        ])
        .args(args)
        .current_dir(dir.path())
        .env_remove("RBUILD_ROOT")
        .env_remove("XDG_DATA_HOME")
        .env_remove("HOME");
        if let Some(h) = home {
            c.env("HOME", h);
        }
        c.output().unwrap()
    };
    for home in [None, Some(""), Some("relative/home")] {
        let o = as_nobody(&["images"], home);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "HOME={home:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("set RBUILD_ROOT"), "HOME={home:?}: {err}");
    }
    // Nothing was made where it ran.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // Commands without state still run.
    let o = as_nobody(&["version"], None);
    assert!(o.status.success(), "{o:?}");
}

#[test]
fn annotations_are_on_the_saved_manifest() {
    let env = common::build_env();
    let ctx = small_context(&env, "ctx", "annotated");
    let meta = env.path("meta.json");
    env.ok(&[
        "build",
        "--annotation",
        "org.opencontainers.image.source=https://example.com/src",
        "--annotation",
        "manifest:com.example.k=v=w",
        "--metadata-file",
        meta.to_str().unwrap(),
        "-t",
        "ann:1",
        ctx.to_str().unwrap(),
    ]);
    let saved = env.path("ann.tar");
    env.ok(&["save", "-o", saved.to_str().unwrap(), "ann:1"]);
    let mut files = std::collections::BTreeMap::new();
    let mut ar = tar::Archive::new(std::fs::File::open(&saved).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        files.insert(p, data);
    }
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(
        &files[&format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))],
    )
    .unwrap();
    assert_eq!(
        manifest["annotations"],
        serde_json::json!({
            "org.opencontainers.image.source": "https://example.com/src",
            "com.example.k": "v=w",
        }),
        "{manifest}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    assert_eq!(m["containerimage.digest"], digest.as_str());
    for (spec, what) in [("novalue", "KEY=VALUE"), ("index:k=v", "only manifest")] {
        let err = env.fails(&["build", "--annotation", spec, ctx.to_str().unwrap()]);
        assert!(err.contains(what), "{spec}: {err}");
    }
    let err = env.fails(&[
        "build",
        "--annotation",
        "k=v",
        "-o",
        &format!("type=tar,dest={}", env.path("x.tar").display()),
        ctx.to_str().unwrap(),
    ]);
    assert!(err.contains("--annotation"), "{err}");
}

#[test]
fn rm_and_force_rm_are_accepted_and_ignored_as_buildx_does() {
    let env = Env::new();
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), "FROM scratch\nENV A=1\n").unwrap();
    let ctx = ctx.to_str().unwrap();
    for args in [
        &["build", "--rm", "-q", "-t", "rm:1", ctx][..],
        &["--rm=false", "--force-rm", "-q", "-t", "rm:2", ctx][..],
        &["build", "--force-rm=true", "--rm=true", "-q", ctx][..],
    ] {
        let id = env.ok(args);
        assert!(id.trim().starts_with("sha256:"), "rbuild {args:?}: {id}");
    }
    let o = env.run(&["build", "--rm=maybe", ctx]);
    assert_eq!(o.status.code(), Some(125));
}

#[test]
fn a_reader_that_went_away_ends_output_quietly_not_with_a_panic() {
    use std::os::fd::OwnedFd;
    let env = Env::new();
    for args in [
        &["version"][..],
        &["completion", "bash"][..],
        &["images"][..],
    ] {
        // A pipe whose read end is closed: every write fails with EPIPE.
        let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
        drop(read);
        let o = env
            .cmd(args)
            .stdout(std::process::Stdio::from(write))
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "rbuild {args:?}: {err}");
        assert!(err.trim().is_empty(), "rbuild {args:?}: {err}");
        // 141 as a C program killed by SIGPIPE (completion stops at 0).
        assert!(
            matches!(o.status.code(), Some(0 | 141)),
            "rbuild {args:?}: {:?} {err}",
            o.status
        );
    }
}

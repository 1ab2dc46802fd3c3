//! Reproducible builds: with `SOURCE_DATE_EPOCH` (environment, build arg or
//! `--reproducible`), two `--no-cache` builds in two state roots give the
//! same image ID and byte-identical archives, whatever the umask, the CPUs
//! or the time.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Env, build_env};

const EPOCH: &str = "1700000000";

/// A context exercising RUN, COPY (`--chown`, `--chmod`), ADD of a local
/// archive, heredocs and a multi-stage copy.
fn context(dir: &Path) {
    fs_err::create_dir_all(dir.join("sub/deeper")).unwrap();
    fs_err::write(dir.join("sub/a"), "a\n").unwrap();
    fs_err::write(dir.join("sub/deeper/b"), "b\n").unwrap();
    fs_err::write(dir.join("b.txt"), "bee\n").unwrap();
    let arch = dir.join("arch");
    fs_err::create_dir_all(arch.join("in")).unwrap();
    fs_err::write(arch.join("in/file.txt"), "inner\n").unwrap();
    let ok = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-czf")
        .arg(dir.join("arch.tgz"))
        .arg("arch")
        .status()
        .expect("tar is missing: install tar")
        .success();
    assert!(ok, "tar failed");
    fs_err::remove_dir_all(&arch).unwrap();
    fs_err::write(
        dir.join("Dockerfile"),
        r"FROM base:repro AS build
RUN mkdir -p /out/dir && echo built > /out/x && touch /out/dir/y && ln /out/x /out/x-link
COPY --chown=1000:1000 --chmod=640 b.txt /out/b.txt
RUN <<EOT
echo heredoc > /out/h
mkdir -p /out/tree/a/b
echo deep > /out/tree/a/b/c
EOT
COPY <<EOF /out/inline.txt
written by a heredoc
EOF

FROM base:repro
ADD arch.tgz /opt/
COPY sub /sub
COPY --from=build /out /out
RUN hostname > /host && id -u > /uid && ls -R /out > /listing && stat -c '%a %u %g %s %n' /out/* >> /listing
ENV CHECK=1
",
    )
    .unwrap();
}

/// Runs `rbuild` in `env` with `SOURCE_DATE_EPOCH` (when given), a umask
/// and, for `one_cpu`, pinned to CPU 0.
fn rbuild(env: &Env, args: &[&str], epoch: Option<&str>, umask: &str, one_cpu: bool) -> String {
    let mut line = String::new();
    if one_cpu {
        assert!(
            common::have("taskset"),
            "taskset is missing: install util-linux"
        );
        line.push_str("exec taskset -c 0 \"$0\" \"$@\"");
    } else {
        line.push_str("exec \"$0\" \"$@\"");
    }
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("umask {umask}; {line}"))
        .arg(common::BIN)
        .args(args)
        .env("RBUILD_ROOT", env.root())
        .env("DOCKER_CONFIG", env.path("docker-config"))
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null());
    if let Some(e) = epoch {
        c.env("SOURCE_DATE_EPOCH", e);
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "rbuild {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_owned()
}

/// A build root with the busybox base imported as `base:repro` under the
/// epoch (so the two roots' bases are the same image).
fn root_with_base(umask: &str) -> Env {
    let env = build_env();
    let base = env.path("base.tar");
    rbuild(
        &env,
        &["import", base.to_str().unwrap(), "base:repro"],
        Some(EPOCH),
        umask,
        false,
    );
    env
}

fn config_of(env: &Env, image: &str) -> serde_json::Value {
    let out = env.ok(&["inspect", image]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

#[test]
fn two_roots_build_the_same_image_and_the_same_archives_byte_for_byte() {
    let a = root_with_base("022");
    let b = root_with_base("077");
    let ctx_a = a.path("ctx");
    context(&ctx_a);
    // The second checkout is made later, so its files have other mtimes.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let ctx_b = b.path("ctx");
    context(&ctx_b);

    let id_a = rbuild(
        &a,
        &[
            "build",
            "--no-cache",
            "-q",
            "-t",
            "r:1",
            ctx_a.to_str().unwrap(),
        ],
        Some(EPOCH),
        "022",
        false,
    );
    let id_b = rbuild(
        &b,
        &[
            "build",
            "--no-cache",
            "-q",
            "-t",
            "r:1",
            ctx_b.to_str().unwrap(),
        ],
        Some(EPOCH),
        "077",
        true,
    );
    assert!(id_a.starts_with("sha256:"), "{id_a}");
    assert_eq!(id_a, id_b, "the same image ID in both roots");

    let cfg = config_of(&a, "r:1");
    assert_eq!(
        cfg["Created"], "2023-11-14T22:13:20Z",
        "created is the epoch"
    );

    let (fa, fb) = (a.path("save.tar"), b.path("save.tar"));
    a.ok(&["save", "r:1", "-o", fa.to_str().unwrap()]);
    b.ok(&["save", "r:1", "-o", fb.to_str().unwrap()]);
    assert!(
        fs_err::read(&fa).unwrap() == fs_err::read(&fb).unwrap(),
        "`save` archives differ"
    );

    // Squashed images are reproducible too.
    for flag in ["--squash", "--squash-all"] {
        let args = |ctx: &Path| {
            vec![
                "build".to_owned(),
                "--no-cache".to_owned(),
                "-q".to_owned(),
                flag.to_owned(),
                ctx.to_str().unwrap().to_owned(),
            ]
        };
        let aa = args(&ctx_a);
        let bb = args(&ctx_b);
        let sa = rbuild(
            &a,
            &aa.iter().map(String::as_str).collect::<Vec<_>>(),
            Some(EPOCH),
            "022",
            false,
        );
        let sb = rbuild(
            &b,
            &bb.iter().map(String::as_str).collect::<Vec<_>>(),
            Some(EPOCH),
            "077",
            true,
        );
        assert_eq!(sa, sb, "{flag}: the same image ID in both roots");
        assert_ne!(sa, id_a, "{flag} changed the image");
    }

    for ty in ["docker", "oci"] {
        let fa = a.path(&format!("{ty}.tar"));
        let fb = b.path(&format!("{ty}.tar"));
        let out_a = format!("type={ty},dest={}", fa.display());
        let out_b = format!("type={ty},dest={}", fb.display());
        rbuild(
            &a,
            &[
                "build",
                "--no-cache",
                "-q",
                "--output",
                &out_a,
                ctx_a.to_str().unwrap(),
            ],
            Some(EPOCH),
            "022",
            false,
        );
        rbuild(
            &b,
            &[
                "build",
                "--no-cache",
                "-q",
                "--output",
                &out_b,
                ctx_b.to_str().unwrap(),
            ],
            Some(EPOCH),
            "077",
            true,
        );
        assert!(
            fs_err::read(&fa).unwrap() == fs_err::read(&fb).unwrap(),
            "--output type={ty} archives differ"
        );
    }
}

#[test]
fn every_timestamp_of_a_layer_is_clamped_to_the_epoch() {
    let a = root_with_base("022");
    let ctx = a.path("ctx");
    context(&ctx);
    rbuild(
        &a,
        &[
            "build",
            "--no-cache",
            "-q",
            "-t",
            "r:1",
            ctx.to_str().unwrap(),
        ],
        Some(EPOCH),
        "022",
        false,
    );
    let out = a.path("x");
    fs_err::create_dir_all(&out).unwrap();
    let tar = a.path("s.tar");
    a.ok(&["save", "r:1", "-o", tar.to_str().unwrap()]);
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs_err::read(out.join("manifest.json")).unwrap()).unwrap();
    let layers = manifest[0]["Layers"].as_array().unwrap();
    let epoch: u64 = EPOCH.parse().unwrap();
    let mut seen = 0;
    // The base's own layer (index 0) keeps its times; every built layer is clamped.
    for l in &layers[1..] {
        let p = out.join(l.as_str().unwrap());
        let f = fs_err::File::open(&p).unwrap();
        // `save` writes layers as plain tars.
        let mut ar = tar::Archive::new(f);
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let mtime = e.header().mtime().unwrap();
            assert!(
                mtime <= epoch,
                "{} has mtime {mtime}, after the epoch",
                e.path().unwrap().display()
            );
            seen += 1;
        }
    }
    assert!(seen > 10, "only {seen} entries in the built layers");
    let config: serde_json::Value = serde_json::from_slice(
        &fs_err::read(out.join(manifest[0]["Config"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    for h in config["history"].as_array().unwrap() {
        assert_eq!(h["created"], "2023-11-14T22:13:20Z", "history entry {h}");
    }
}

#[test]
fn the_epoch_as_a_build_arg_is_the_same_as_the_environment_variable() {
    let a = root_with_base("022");
    let ctx = a.path("ctx");
    context(&ctx);
    let by_env = rbuild(
        &a,
        &["build", "--no-cache", "-q", ctx.to_str().unwrap()],
        Some(EPOCH),
        "022",
        false,
    );
    let arg = format!("SOURCE_DATE_EPOCH={EPOCH}");
    let by_arg = rbuild(
        &a,
        &[
            "build",
            "--no-cache",
            "-q",
            "--build-arg",
            &arg,
            ctx.to_str().unwrap(),
        ],
        None,
        "022",
        false,
    );
    assert_eq!(by_env, by_arg);
    let without = rbuild(
        &a,
        &["build", "--no-cache", "-q", ctx.to_str().unwrap()],
        None,
        "022",
        false,
    );
    assert_ne!(
        without, by_env,
        "without an epoch the times are the build's"
    );
}

#[test]
fn import_honours_the_epoch_in_two_roots() {
    let a = Env::new();
    let b = Env::new();
    let tar = a.path("rootfs.tar");
    fs_err::write(&tar, common::rootfs_tar("repro")).unwrap();
    let ia = rbuild(
        &a,
        &["import", tar.to_str().unwrap(), "x:1"],
        Some(EPOCH),
        "022",
        false,
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let ib = rbuild(
        &b,
        &["import", tar.to_str().unwrap(), "x:1"],
        Some(EPOCH),
        "077",
        false,
    );
    assert_eq!(ia, ib);
    assert_eq!(config_of(&a, "x:1")["Created"], "2023-11-14T22:13:20Z");
}

#[test]
fn a_bad_epoch_is_refused_naming_it() {
    let a = Env::new();
    let ctx = a.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), "FROM scratch\nENV A=1\n").unwrap();
    let err = a.fails(&[
        "build",
        "--build-arg",
        "SOURCE_DATE_EPOCH=yesterday",
        ctx.to_str().unwrap(),
    ]);
    assert!(
        err.contains("invalid SOURCE_DATE_EPOCH \"yesterday\""),
        "{err}"
    );
}

fn git(dir: &Path, args: &[&str]) {
    assert!(common::have("git"), "git is missing: install git");
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(args)
        .env("GIT_COMMITTER_DATE", "@1650000000 +0000")
        .env("GIT_AUTHOR_DATE", "@1650000000 +0000")
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?} failed");
}

#[test]
fn reproducible_takes_the_commit_time_of_a_clean_work_tree_else_zero() {
    let a = Env::new();
    let ctx = a.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY f /f\n").unwrap();
    fs_err::write(ctx.join("f"), "one\n").unwrap();
    git(&ctx, &["init", "-q"]);
    git(&ctx, &["add", "."]);
    git(&ctx, &["commit", "-q", "-m", "one"]);

    let clean = a.ok(&[
        "build",
        "--reproducible",
        "-q",
        "-t",
        "g:clean",
        ctx.to_str().unwrap(),
    ]);
    assert_eq!(config_of(&a, "g:clean")["Created"], "2022-04-15T05:20:00Z");

    fs_err::write(ctx.join("f"), "two\n").unwrap();
    a.ok(&[
        "build",
        "--reproducible",
        "-q",
        "-t",
        "g:dirty",
        ctx.to_str().unwrap(),
    ]);
    assert_eq!(config_of(&a, "g:dirty")["Created"], "1970-01-01T00:00:00Z");

    // An explicit epoch wins over --reproducible.
    a.ok(&[
        "build",
        "--reproducible",
        "-q",
        "-t",
        "g:arg",
        "--build-arg",
        &format!("SOURCE_DATE_EPOCH={EPOCH}"),
        ctx.to_str().unwrap(),
    ]);
    assert_eq!(config_of(&a, "g:arg")["Created"], "2023-11-14T22:13:20Z");
    assert!(clean.trim().starts_with("sha256:"));
}

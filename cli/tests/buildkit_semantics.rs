//! BuildKit's Dockerfile semantics that its own frontend tests pin
//! (`frontend/dockerfile/*_test.go`, transcribed in
//! `shared/peer-tests/buildkit-frontend`), through the binary: `COPY --parents`
//! with the `/./` pivot, `--exclude` below directory and wildcard sources,
//! `--chmod` on created parents, `TARGETSTAGE`, proxy build args in either case,
//! variables in `RUN --mount`, a lowercase `dockerfile`, a destination through a
//! dangling symlink, and nested cache mounts in parallel stages.
//!
//! Needs root (steps run in the sandbox over overlay mounts) and the busybox base
//! from `shared/conformance/base.sh`; fails saying what is missing otherwise.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::Env;

struct B {
    env: Env,
}

impl B {
    fn new() -> Self {
        Self {
            env: common::build_env(),
        }
    }

    fn p(&self, rel: &str) -> String {
        self.env.path(rel).to_string_lossy().into_owned()
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.env.path(rel);
        fs_err::create_dir_all(p.parent().unwrap()).unwrap();
        fs_err::write(p, text).unwrap();
    }

    fn build(&self, args: &[&str]) -> Output {
        let mut a = vec!["build", "--progress", "plain", "--network", "none"];
        a.extend_from_slice(args);
        self.env.run(&a)
    }

    /// Builds the context `ctx` with `args`, exports the result to a fresh
    /// directory and returns it.
    fn export(&self, ctx: &str, args: &[&str]) -> PathBuf {
        let out = self.env.path("out");
        let _ = std::fs::remove_dir_all(&out);
        let dest = format!("type=local,dest={}", out.display());
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--output", &dest]);
        let ctx = self.p(ctx);
        a.push(&ctx);
        let o = self.build(&a);
        assert!(
            o.status.success(),
            "build {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        out
    }

    fn fails(&self, ctx: &str, args: &[&str]) -> String {
        let mut a: Vec<&str> = args.to_vec();
        let ctx = self.p(ctx);
        a.push(&ctx);
        let o = self.build(&a);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "build {args:?} should fail:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    }
}

fn read(p: &Path) -> String {
    fs_err::read_to_string(p).unwrap()
}

fn mode(p: &Path) -> u32 {
    fs_err::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The base stage of BuildKit's `--parents` tests: a tree under `/test`.
const PARENTS_BASE: &str = "FROM busybox AS base
WORKDIR /test
RUN mkdir -p a/b/c/d/e a/b2/c/d/e a/b/c2/d/e a/b/c2/d/e2 \\
 && touch a/b/c/d/foo a/b/c/d/e/bay a/b2/c/d/e/bar a/b/c2/d/e/baz a/b/c2/d/e2/baz
";

fn parents_build(b: &B, copy: &str) -> PathBuf {
    b.write(
        "par/Dockerfile",
        &format!("{PARENTS_BASE}FROM scratch\nCOPY --from=base --parents {copy}\n"),
    );
    b.export("par", &[])
}

#[test]
fn copy_parents_keeps_the_path_after_the_pivot() {
    let b = B::new();
    // Middle pivot: what follows `/./` is kept under the destination.
    let out = parents_build(&b, "/test/a/b/./c/d /out/");
    assert!(out.join("out/c/d/e/bay").is_file());
    assert!(out.join("out/c/d/foo").is_file());
    assert!(!out.join("out/a").exists() && !out.join("out/test").exists());
    // No pivot: the whole path.
    let out = parents_build(&b, "/test/a/b/c/d /out/");
    assert!(out.join("out/test/a/b/c/d/e/bay").is_file());
    // Two pivots: the first one counts.
    let out = parents_build(&b, "/test/a/./b/./c /out/");
    assert!(out.join("out/b/c/d/foo").is_file());
    // Wildcards before the pivot, and `**` after it.
    let out = parents_build(&b, "/test/a/b*/./c/**/e /out/");
    assert!(out.join("out/c/d/e/bay").is_file(), "via b");
    assert!(out.join("out/c/d/e/bar").is_file(), "via b2");
    // Several sources, a wildcard after the pivot: only what matches.
    let out = parents_build(&b, "/test/a/b/c*/./d/**/baz /test/a/b*/./c/**/bar /out/");
    assert!(out.join("out/d/e/baz").is_file());
    assert!(out.join("out/d/e2/baz").is_file());
    assert!(!out.join("out/d/e/bay").exists());
    assert!(out.join("out/c/d/e/bar").is_file());
    assert!(!out.join("out/c/d/foo").exists());
    // A wildcard right after the pivot.
    let out = parents_build(&b, "/test/a/./*/c /out/");
    assert!(out.join("out/b/c/d/e/bay").is_file());
    assert!(out.join("out/b2/c/d/e/bar").is_file());
    assert!(!out.join("out/b/c2").exists());
}

#[test]
fn copy_parents_needs_a_literal_path_but_not_a_wildcard_match() {
    let b = B::new();
    b.write(
        "par/Dockerfile",
        &format!(
            "{PARENTS_BASE}FROM scratch\nCOPY --from=base --parents /test/nonexistent-file /out/\n"
        ),
    );
    let err = b.fails("par", &[]);
    assert!(
        err.contains("\"/test/nonexistent-file\": not found"),
        "{err}"
    );
    // A wildcard that matches nothing copies nothing but makes the destination.
    let out = parents_build(&b, "/test/a/b2*/x /out/");
    assert!(out.join("out").is_dir());
    assert_eq!(fs_err::read_dir(out.join("out")).unwrap().count(), 0);
    let out = parents_build(&b, "/test/a/b/./c9* /out/");
    assert!(out.join("out").is_dir());
    assert_eq!(fs_err::read_dir(out.join("out")).unwrap().count(), 0);
}

#[test]
fn copy_exclude_matches_below_directory_and_wildcard_sources() {
    let b = B::new();
    for (f, c) in [
        ("dir1/a.png", "1"),
        ("dir1/b.txt", "2"),
        ("dir2/c.pdf", "3"),
        ("dir3/d.mp3", "4"),
        ("dir3/e.mpeg", "5"),
        ("dir3/sub/f.mp3", "6"),
    ] {
        b.write(&format!("ex/{f}"), c);
    }
    b.write(
        "ex/Dockerfile",
        "FROM scratch AS s1
COPY --exclude=*.mp3 dir3/ /3/
FROM scratch AS s2
COPY --exclude=*.png --exclude=*.pdf --exclude=*.mp3 --exclude=sub dir* /4/
FROM scratch AS s3
ADD --exclude=* dir* /6
FROM scratch AS s4
COPY --exclude=*/*.png . /1
FROM scratch
COPY --from=s1 / /s1
COPY --from=s2 / /s2
COPY --from=s3 / /s3
COPY --from=s4 / /s4
",
    );
    let out = b.export("ex", &[]);
    // A directory source: the patterns match the path below it.
    assert!(!out.join("s1/3/d.mp3").exists());
    assert_eq!(read(&out.join("s1/3/e.mpeg")), "5");
    // `*` stops at `/`: a file one level down is not matched.
    assert_eq!(read(&out.join("s1/3/sub/f.mp3")), "6");
    // Wildcard sources: below each match.
    assert_eq!(read(&out.join("s2/4/b.txt")), "2");
    assert_eq!(read(&out.join("s2/4/e.mpeg")), "5");
    for gone in ["a.png", "c.pdf", "d.mp3", "sub"] {
        assert!(!out.join("s2/4").join(gone).exists(), "{gone}");
    }
    // Everything excluded: the destination is still made.
    assert!(out.join("s3/6").is_dir());
    assert_eq!(fs_err::read_dir(out.join("s3/6")).unwrap().count(), 0);
    // The context root as the source: paths from the root.
    assert!(!out.join("s4/1/dir1/a.png").exists());
    assert_eq!(read(&out.join("s4/1/dir1/b.txt")), "2");
}

#[test]
fn copy_exclude_below_a_source_keeps_the_cache_when_only_excluded_files_change() {
    let b = B::new();
    b.write("exc/dir/a.txt", "a");
    b.write("exc/dir/x.log", "1");
    b.write(
        "exc/Dockerfile",
        "FROM busybox\nCOPY --exclude=*.log dir/ /d/\nRUN ls /d > /list && cat /proc/sys/kernel/random/uuid > /stamp\n",
    );
    let stamp = |b: &B| read(&b.export("exc", &[]).join("stamp"));
    let first = stamp(&b);
    b.write("exc/dir/x.log", "2");
    assert_eq!(stamp(&b), first, "an excluded file changed: nothing reruns");
    b.write("exc/dir/a.txt", "b");
    assert_ne!(stamp(&b), first, "a copied file changed: the RUN reruns");
}

#[test]
fn copy_chmod_makes_missing_destination_parents_with_the_mode() {
    let b = B::new();
    b.write("cm/foo", "foo");
    b.write("cm/dir/x", "x");
    b.write(
        "cm/Dockerfile",
        "FROM scratch
COPY --chmod=777 foo /parent/foo
COPY --chmod=770 foo /parent/sub/foo
COPY --chmod=0600 dir /d
COPY --chmod=0640 foo /made/
",
    );
    let out = b.export("cm", &[]);
    assert_eq!(mode(&out.join("parent")), 0o777);
    assert_eq!(mode(&out.join("parent/sub")), 0o770);
    assert_eq!(mode(&out.join("parent/sub/foo")), 0o770);
    // The directory a directory copy makes as its target stays 0755 (the
    // conformance corpus's `copy-chmod`); its files take the mode.
    assert_eq!(mode(&out.join("d")), 0o755);
    assert_eq!(mode(&out.join("d/x")), 0o600);
    // A destination directory named with a trailing slash is made like a parent.
    assert_eq!(mode(&out.join("made")), 0o640);
    assert_eq!(mode(&out.join("made/foo")), 0o640);
}

#[test]
fn targetstage_is_the_target_else_the_last_stage_else_default() {
    let b = B::new();
    let df = "FROM busybox AS base
RUN echo -n \"before:$TARGETSTAGE\" > /first
ARG TARGETSTAGE
RUN echo -n \"after:$TARGETSTAGE\" > /second
FROM scratch AS foo
COPY --from=base /first /second /
FROM scratch AS last
COPY --from=base /first /second /
";
    b.write("ts/Dockerfile", df);
    let out = b.export("ts", &["--target", "foo"]);
    assert_eq!(read(&out.join("first")), "before:");
    assert_eq!(read(&out.join("second")), "after:foo");
    let out = b.export("ts", &[]);
    assert_eq!(read(&out.join("second")), "after:last");
    // The last stage has no name.
    b.write(
        "ts/Dockerfile",
        &format!("{df}FROM scratch\nCOPY --from=base /second /\n"),
    );
    let out = b.export("ts", &[]);
    assert_eq!(read(&out.join("second")), "after:default");
    // A build arg overrides it.
    let out = b.export("ts", &["--build-arg", "TARGETSTAGE=mine"]);
    assert_eq!(read(&out.join("second")), "after:mine");
}

#[test]
fn proxy_build_args_reach_run_in_both_cases_and_stay_out_of_the_key() {
    let b = B::new();
    b.write(
        "px/Dockerfile",
        "FROM busybox\nRUN echo -n \"$HTTP_PROXY|$http_proxy|$NO_PROXY|$no_proxy\" > /out\n",
    );
    let out = b.export(
        "px",
        &[
            "--build-arg",
            "http_proxy=hp1",
            "--build-arg",
            "NO_PROXY=np",
        ],
    );
    assert_eq!(read(&out.join("out")), "hp1|hp1|np|np");
    // Another proxy does not run the step again.
    let out = b.export(
        "px",
        &[
            "--build-arg",
            "http_proxy=hp2",
            "--build-arg",
            "NO_PROXY=np",
        ],
    );
    assert_eq!(read(&out.join("out")), "hp1|hp1|np|np");
}

#[test]
fn run_mount_options_expand_args_and_env_across_stages() {
    let b = B::new();
    b.write(
        "mv/Dockerfile",
        "FROM busybox AS one
ARG MNT_TYPE=cache
ENV MNT_ID=mycache MNT_TYPE2=cache
RUN --mount=type=$MNT_TYPE,id=$MNT_ID,target=/c1 echo hi > /c1/foo
RUN --mount=type=$MNT_TYPE2,id=$MNT_ID,target=/c2 cp /c2/foo /from-env
FROM one
RUN --mount=type=${MNT_TYPE2},id=$MNT_ID,target=/c3 cp /c3/foo /across
",
    );
    let out = b.export("mv", &[]);
    assert_eq!(read(&out.join("from-env")), "hi\n");
    assert_eq!(read(&out.join("across")), "hi\n");
    // A type that is not one after expansion is an error naming it.
    b.write(
        "mv/Dockerfile",
        "FROM busybox\nARG T=cahce\nRUN --mount=type=$T,target=/x true\n",
    );
    let err = b.fails("mv", &[]);
    assert!(err.contains("unsupported mount type \"cahce\""), "{err}");
}

#[test]
fn a_lowercase_dockerfile_is_used_when_there_is_no_dockerfile() {
    let b = B::new();
    b.write("lc/dockerfile", "FROM scratch\nCOPY a /a\n");
    b.write("lc/a", "lower");
    let out = b.export("lc", &[]);
    assert_eq!(read(&out.join("a")), "lower");
    // `Dockerfile` wins when both exist.
    b.write("lc/Dockerfile", "FROM scratch\nCOPY a /upper\n");
    let out = b.export("lc", &[]);
    assert!(out.join("upper").is_file() && !out.join("a").exists());
}

#[test]
fn copy_into_a_dangling_relative_symlink_makes_its_target() {
    let b = B::new();
    b.write("sl/foo", "content0");
    b.write(
        "sl/Dockerfile",
        "FROM busybox AS base\nRUN ln -s ../tmp/symlink-target /symlink && rm -rf /tmp\nFROM base\nCOPY foo /symlink/\n",
    );
    let out = b.export("sl", &[]);
    assert_eq!(read(&out.join("tmp/symlink-target/foo")), "content0");
    assert_eq!(
        fs_err::read_link(out.join("symlink")).unwrap(),
        Path::new("../tmp/symlink-target")
    );
}

/// Three stages at once, each with a cache mount nested in another, all cache
/// directories new: the stages make and mount them at the same time.
const NESTED_CACHES: &str = "FROM busybox AS a
RUN --mount=type=cache,target=/cache --mount=type=cache,target=/cache/nested echo a > /cache/nested/a && echo a > /a
FROM busybox AS b
RUN --mount=type=cache,target=/cache --mount=type=cache,target=/cache/nested echo b > /cache/nested/b && echo b > /b
FROM busybox AS c
RUN --mount=type=cache,target=/cache --mount=type=cache,target=/cache/nested echo c > /cache/nested/c && echo c > /c
FROM scratch
COPY --from=a /a /
COPY --from=b /b /
COPY --from=c /c /
";

#[test]
fn parallel_nested_cache_mounts_build_20_times_in_a_row() {
    let b = B::new();
    b.write("nc/Dockerfile", NESTED_CACHES);
    let base = b.env.path("base.tar");
    assert!(base.is_file(), "the busybox base tar is missing");
    for i in 0..20 {
        // A fresh state root each time: the cache directories are new.
        let root = b.env.path(&format!("root-{i}"));
        let run = |args: &[&str]| {
            Command::new(common::BIN)
                .args(args)
                .env("RBUILD_ROOT", &root)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        let o = run(&["import", base.to_str().unwrap(), "busybox:latest"]);
        assert!(o.status.success(), "{o:?}");
        let out = b.env.path(&format!("out-{i}"));
        let o = run(&[
            "build",
            "--progress",
            "plain",
            "--output",
            &format!("type=local,dest={}", out.display()),
            &b.p("nc"),
        ]);
        assert!(
            o.status.success(),
            "build {i} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        for s in ["a", "b", "c"] {
            assert_eq!(read(&out.join(s)), format!("{s}\n"), "build {i}");
        }
        // Every step's file is in the one nested cache.
        let nested: Vec<PathBuf> = fs_err::read_dir(root.join("cache-mounts"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("a").is_file() || p.join("b").is_file())
            .collect();
        assert_eq!(nested.len(), 1, "build {i}: {nested:?}");
        for s in ["a", "b", "c"] {
            assert!(nested[0].join(s).is_file(), "build {i}: {s}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// BuildKit's `testCacheMountParallel`: two stages with nested cache mounts,
/// built 20 times with `--no-cache` on one state root.
#[test]
fn cache_mount_parallel_builds_20_times_with_no_cache() {
    let b = B::new();
    b.write(
        "cp/Dockerfile",
        "FROM busybox AS b1
RUN --mount=type=cache,target=/foo/bar --mount=type=cache,target=/foo/bar/baz echo 1
FROM busybox AS b2
RUN --mount=type=cache,target=/foo/bar --mount=type=cache,target=/foo/bar/baz echo 2
FROM scratch
COPY --from=b1 /etc/passwd p1
COPY --from=b2 /etc/passwd p2
",
    );
    for i in 0..20 {
        let o = b.build(&["--no-cache", &b.p("cp")]);
        assert!(
            o.status.success(),
            "build {i} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

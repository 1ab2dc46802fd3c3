//! The build cache through the binary: which steps of `rbuild build` execute and
//! which are answered from the cache (BuildKit's `CACHED`), read from the JSON
//! progress (`vertex_started` names a step, `vertex_cached` / `vertex_done` say
//! what became of it). Covers an identical rebuild, one context file changed,
//! mtime-only changes (also a fresh copy of the context), ARG values, `--no-cache`,
//! `--no-cache-filter STAGE` and files excluded by `.dockerignore`.
//!
//! Needs root (steps run in the sandbox over overlay mounts) and the busybox base
//! from `testdata/examples/busybox-base.sh`; fails saying what is missing otherwise.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use common::Env;

struct B {
    env: Env,
}

/// What became of each step of one build, by step name (`[2/5] COPY a.txt /a.txt`,
/// `[final 3/3] RUN ...`). `[internal]` vertices (loading the context) and the
/// export (`exporting to image`) are left out: they always run, as in BuildKit.
#[derive(Debug, Default)]
struct Steps {
    ran: BTreeSet<String>,
    cached: BTreeSet<String>,
    /// The whole progress, for assertion messages.
    log: String,
}

impl Steps {
    fn parse(log: &str) -> Self {
        let mut names = BTreeMap::new();
        let mut s = Steps {
            log: log.to_owned(),
            ..Steps::default()
        };
        for line in log.lines().filter(|l| l.starts_with('{')) {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("bad progress line {line:?}: {e}"));
            if v["event"] == "check_warning" {
                continue; // a build check's warning (issue 17), about no step
            }
            let id = v["id"].as_u64().unwrap_or_else(|| panic!("no id: {line}"));
            match v["event"].as_str() {
                Some("vertex_started") => {
                    names.insert(id, v["name"].as_str().unwrap().to_owned());
                }
                Some("vertex_cached") => {
                    let name = v["name"].as_str().unwrap().to_owned();
                    names.insert(id, name.clone());
                    if !name.starts_with("[internal]") {
                        assert!(s.cached.insert(name), "step reported twice:\n{log}");
                    }
                }
                Some("vertex_done") => {
                    let name = names
                        .get(&id)
                        .unwrap_or_else(|| panic!("done before started: {line}\n{log}"))
                        .clone();
                    if !name.starts_with("[internal]") && !name.starts_with("exporting to ") {
                        assert!(s.ran.insert(name), "step reported twice:\n{log}");
                    }
                }
                _ => {}
            }
        }
        assert!(
            s.ran.is_disjoint(&s.cached),
            "a step both ran and was cached:\n{log}"
        );
        s
    }

    /// Asserts the steps that executed and the ones answered from the cache.
    fn assert(&self, ran: &[&str], cached: &[&str]) {
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        assert_eq!(self.ran, set(ran), "steps that ran\n{}", self.log);
        assert_eq!(
            self.cached,
            set(cached),
            "steps that were cached\n{}",
            self.log
        );
    }
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

    /// Builds with JSON progress and `--iidfile`; returns the steps and the image ID.
    fn build(&self, args: &[&str]) -> (Steps, String) {
        let iid = self.p("iid");
        let _ = std::fs::remove_file(&iid);
        let mut a = vec!["build", "--progress", "json", "--iidfile", &iid];
        a.extend_from_slice(args);
        let o = self.env.run(&a);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "build {args:?} failed:\n{out}\n{err}");
        let id = fs_err::read_to_string(&iid).unwrap();
        assert!(id.starts_with("sha256:"), "{id}");
        (Steps::parse(&err), id)
    }

    /// `cat PATH` in the image `id`.
    fn cat(&self, id: &str, path: &str) -> String {
        self.env.ok(&["run", "--rm", id, "cat", path])
    }
}

/// Sets the mtime of every file and directory under `dir` (the root included) to
/// `t`, leaving the content alone.
fn set_mtimes(dir: &std::path::Path, t: SystemTime) {
    for e in fs_err::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            set_mtimes(&p, t);
        } else {
            fs_err::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
    }
    fs_err::File::open(dir).unwrap().set_modified(t).unwrap();
}

/// Copies a directory tree (new inodes; mtimes are those of the copy).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    fs_err::create_dir_all(to).unwrap();
    for e in fs_err::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            fs_err::copy(&p, &dest).unwrap();
        }
    }
}

const TWO_COPIES: &str = "FROM busybox\n\
COPY a.txt /a.txt\n\
RUN cat /a.txt > /r1\n\
COPY b.txt /b.txt\n\
RUN cat /a.txt /b.txt > /r2\n";

const S1: &str = "[1/5] FROM docker.io/library/busybox:latest";
const S2: &str = "[2/5] COPY a.txt /a.txt";
const S3: &str = "[3/5] RUN cat /a.txt > /r1";
const S4: &str = "[4/5] COPY b.txt /b.txt";
const S5: &str = "[5/5] RUN cat /a.txt /b.txt > /r2";

impl B {
    fn two_copies(&self, dir: &str) {
        self.write(&format!("{dir}/Dockerfile"), TWO_COPIES);
        self.write(&format!("{dir}/a.txt"), "a1\n");
        self.write(&format!("{dir}/b.txt"), "b1\n");
        self.write(&format!("{dir}/unused.txt"), "u1\n");
        self.write(&format!("{dir}/sub/deep.txt"), "d1\n");
    }
}

#[test]
fn an_identical_rebuild_runs_nothing_and_gives_the_same_id() {
    let b = B::new();
    b.two_copies("ctx");
    let (first, id1) = b.build(&[&b.p("ctx")]);
    for s in [S2, S3, S4, S5] {
        assert!(first.ran.contains(s), "{s} did not run\n{}", first.log);
    }
    let (second, id2) = b.build(&[&b.p("ctx")]);
    second.assert(&[], &[S1, S2, S3, S4, S5]);
    assert_eq!(id1, id2);
}

#[test]
fn changing_one_file_reruns_from_the_first_copy_that_selects_it() {
    let b = B::new();
    b.two_copies("ctx");
    b.build(&[&b.p("ctx")]);

    // A file no COPY selects: nothing runs.
    b.write("ctx/unused.txt", "u2\n");
    b.write("ctx/sub/deep.txt", "d2\n");
    let (s, _) = b.build(&[&b.p("ctx")]);
    s.assert(&[], &[S1, S2, S3, S4, S5]);

    // b.txt: its COPY and the RUN after it.
    b.write("ctx/b.txt", "b2\n");
    let (s, id) = b.build(&[&b.p("ctx")]);
    s.assert(&[S4, S5], &[S1, S2, S3]);
    assert_eq!(b.cat(&id, "/r2"), "a1\nb2\n");

    // a.txt: everything from its COPY.
    b.write("ctx/a.txt", "a2\n");
    let (s, id) = b.build(&[&b.p("ctx")]);
    s.assert(&[S2, S3, S4, S5], &[S1]);
    assert_eq!(b.cat(&id, "/r1"), "a2\n");
    assert_eq!(b.cat(&id, "/r2"), "a2\nb2\n");

    // Back to the first contents: answered from the first build's records.
    b.write("ctx/a.txt", "a1\n");
    b.write("ctx/b.txt", "b1\n");
    let (s, _) = b.build(&[&b.p("ctx")]);
    s.assert(&[], &[S1, S2, S3, S4, S5]);
}

#[test]
fn a_same_size_change_with_the_same_mtime_is_seen() {
    // The checksum cache is keyed by (path, size, mtime, inode): a new file of the
    // same size with the old mtime (a `git checkout` that preserves times, a
    // restore from backup) must still be seen through its new inode.
    let b = B::new();
    b.two_copies("ctx");
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    set_mtimes(&b.env.path("ctx"), t);
    b.build(&[&b.p("ctx")]);
    // Written beside and renamed over, so the inode is a new one for sure.
    b.write("ctx/b.txt.new", "b9\n");
    fs_err::rename(b.env.path("ctx/b.txt.new"), b.env.path("ctx/b.txt")).unwrap();
    set_mtimes(&b.env.path("ctx"), t);
    let (s, id) = b.build(&[&b.p("ctx")]);
    s.assert(&[S4, S5], &[S1, S2, S3]);
    assert_eq!(b.cat(&id, "/b.txt"), "b9\n");
}

#[test]
fn touching_files_or_a_fresh_copy_of_the_context_reruns_nothing() {
    let b = B::new();
    b.two_copies("ctx");
    let (_, id1) = b.build(&[&b.p("ctx")]);

    // mtime only, every file and directory (the Dockerfile too).
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_234_567_890);
    set_mtimes(&b.env.path("ctx"), t);
    let (s, id2) = b.build(&[&b.p("ctx")]);
    s.assert(&[], &[S1, S2, S3, S4, S5]);
    assert_eq!(id1, id2);

    // A fresh copy elsewhere: new inodes, new paths, new mtimes.
    copy_dir(&b.env.path("ctx"), &b.env.path("fresh/checkout"));
    set_mtimes(
        &b.env.path("fresh/checkout"),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
    );
    let (s, id3) = b.build(&[&b.p("fresh/checkout")]);
    s.assert(&[], &[S1, S2, S3, S4, S5]);
    assert_eq!(id1, id3);
}

#[test]
fn an_arg_value_reruns_from_the_first_run_after_it() {
    let b = B::new();
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\n\
         COPY a.txt /a.txt\n\
         RUN echo before > /before\n\
         ARG V=1\n\
         RUN echo \"v=$V\" > /v\n\
         RUN echo after > /after\n",
    );
    b.write("ctx/a.txt", "a\n");
    let a1 = "[1/5] FROM docker.io/library/busybox:latest";
    let a2 = "[2/5] COPY a.txt /a.txt";
    let a3 = "[3/5] RUN echo before > /before";
    // As in BuildKit, a RUN's step name shows the build args' values.
    let a4 = |v: u8| format!("[4/5] RUN echo \"v={v}\" > /v");
    let (a4_1, a4_2) = (a4(1), a4(2));
    let (a4_1, a4_2) = (a4_1.as_str(), a4_2.as_str());
    let a5 = "[5/5] RUN echo after > /after";
    let ctx = b.p("ctx");
    let (_, id) = b.build(&[&ctx]);
    assert_eq!(b.cat(&id, "/v"), "v=1\n");

    let (s, id) = b.build(&["--build-arg", "V=2", &ctx]);
    s.assert(&[a4_2, a5], &[a1, a2, a3]);
    assert_eq!(b.cat(&id, "/v"), "v=2\n");

    // The same value again, then the default again: both were built before.
    let (s, _) = b.build(&["--build-arg", "V=2", &ctx]);
    s.assert(&[], &[a1, a2, a3, a4_2, a5]);
    let (s, _) = b.build(&[&ctx]);
    s.assert(&[], &[a1, a2, a3, a4_1, a5]);
    // The default given explicitly is the same value.
    let (s, _) = b.build(&["--build-arg", "V=1", &ctx]);
    s.assert(&[], &[a1, a2, a3, a4_1, a5]);
    // A build arg the Dockerfile does not declare changes nothing.
    let (s, _) = b.build(&["--build-arg", "UNDECLARED=x", &ctx]);
    s.assert(&[], &[a1, a2, a3, a4_1, a5]);
}

#[test]
fn no_cache_runs_every_step() {
    let b = B::new();
    b.two_copies("ctx");
    b.build(&[&b.p("ctx")]);
    let (s, _) = b.build(&["--no-cache", &b.p("ctx")]);
    s.assert(&[S1, S2, S3, S4, S5], &[]);
    // The records are refreshed, not dropped: a normal build is all cached.
    let (s, _) = b.build(&[&b.p("ctx")]);
    s.assert(&[], &[S1, S2, S3, S4, S5]);
}

#[test]
fn no_cache_filter_runs_only_that_stages_steps() {
    let b = B::new();
    b.write(
        "ctx/Dockerfile",
        "FROM busybox AS deps\n\
         COPY a.txt /a.txt\n\
         RUN cat /a.txt > /deps\n\
         FROM busybox AS final\n\
         COPY --from=deps /deps /deps\n\
         RUN cat /deps > /out\n",
    );
    b.write("ctx/a.txt", "a\n");
    let from = "[deps 1/3] FROM docker.io/library/busybox:latest";
    let d2 = "[deps 2/3] COPY a.txt /a.txt";
    let d3 = "[deps 3/3] RUN cat /a.txt > /deps";
    let f2 = "[final 2/3] COPY --from=deps /deps /deps";
    let f3 = "[final 3/3] RUN cat /deps > /out";
    let ctx = b.p("ctx");
    let (_, id) = b.build(&[&ctx]);
    assert_eq!(b.cat(&id, "/out"), "a\n");

    let (s, _) = b.build(&["--no-cache-filter", "final", &ctx]);
    s.assert(&[f2, f3], &[from, d2, d3]);
    // Stage names match case-insensitively, as BuildKit's do.
    let (s, _) = b.build(&["--no-cache-filter", "FINAL", &ctx]);
    s.assert(&[f2, f3], &[from, d2, d3]);

    // The other stage: its own steps run (whether the dependent stage then hits
    // depends on the content it copies, not asserted here).
    let (s, _) = b.build(&["--no-cache-filter", "deps", &ctx]);
    for step in [d2, d3] {
        assert!(s.ran.contains(step), "{step} did not run\n{}", s.log);
    }
}

#[test]
fn a_change_to_a_dockerignored_file_reruns_nothing() {
    let b = B::new();
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\nCOPY . /app\nRUN ls -A /app > /listing\n",
    );
    b.write("ctx/.dockerignore", "ignored.txt\nlogs\n*.tmp\n");
    b.write("ctx/kept.txt", "k\n");
    b.write("ctx/ignored.txt", "i1\n");
    b.write("ctx/logs/one.log", "l1\n");
    let i1 = "[1/3] FROM docker.io/library/busybox:latest";
    let i2 = "[2/3] COPY . /app";
    let i3 = "[3/3] RUN ls -A /app > /listing";
    let ctx = b.p("ctx");
    let (_, id) = b.build(&[&ctx]);
    assert_eq!(
        b.cat(&id, "/listing"),
        ".dockerignore\nDockerfile\nkept.txt\n"
    );

    b.write("ctx/ignored.txt", "i2, longer\n");
    b.write("ctx/logs/one.log", "l2\n");
    b.write("ctx/logs/two.log", "new\n");
    b.write("ctx/scratch.tmp", "new\n");
    let (s, _) = b.build(&[&ctx]);
    s.assert(&[], &[i1, i2, i3]);

    // A file that is not ignored does re-run the COPY.
    b.write("ctx/kept.txt", "k2\n");
    let (s, _) = b.build(&[&ctx]);
    s.assert(&[i2, i3], &[i1]);
}

#[test]
fn a_mode_only_change_reruns_the_copy_that_selects_the_file() {
    // The mode is part of the content checksum (tar header fields without mtime),
    // and `chmod` changes neither size, mtime nor inode.
    use std::os::unix::fs::PermissionsExt as _;
    let b = B::new();
    b.two_copies("ctx");
    b.build(&[&b.p("ctx")]);
    let p = b.env.path("ctx/b.txt");
    fs_err::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (s, id) = b.build(&[&b.p("ctx")]);
    s.assert(&[S4, S5], &[S1, S2, S3]);
    let mode = b
        .env
        .ok(&["run", "--rm", &id, "stat", "-c", "%a", "/b.txt"]);
    assert_eq!(mode.trim(), "755");
}

#[test]
fn dockerfile_edits_rerun_only_the_steps_they_change() {
    let b = B::new();
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\nLABEL a=1\nCOPY src/*.txt /x/\nRUN ls /x > /l\nENV E=1\nRUN echo e > /e\nCMD [\"sh\"]\n",
    );
    b.write("ctx/src/x.txt", "x\n");
    b.write("ctx/src/m.md", "m\n");
    let g1 = "[1/4] FROM docker.io/library/busybox:latest";
    let g2 = "[2/4] COPY src/*.txt /x/";
    let g3 = "[3/4] RUN ls /x > /l";
    let g4 = "[4/4] RUN echo e > /e";
    let ctx = b.p("ctx");
    let (_, id1) = b.build(&[&ctx]);

    // Comments, blank lines (so every line number moves), LABEL and CMD change the
    // image config only: no step runs, but the image is a new one.
    b.write(
        "ctx/Dockerfile",
        "# a comment\n\nFROM busybox\nLABEL a=2\nCOPY src/*.txt /x/\nRUN ls /x > /l\nENV E=1\nRUN echo e > /e\nCMD [\"ls\"]\n",
    );
    let (s, id2) = b.build(&[&ctx]);
    s.assert(&[], &[g1, g2, g3, g4]);
    assert_ne!(id1, id2);

    // An ENV value is in the environment of every later RUN.
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\nLABEL a=1\nCOPY src/*.txt /x/\nRUN ls /x > /l\nENV E=2\nRUN echo e > /e\nCMD [\"sh\"]\n",
    );
    let (s, _) = b.build(&[&ctx]);
    s.assert(&[g4], &[g1, g2, g3]);

    // A glob's selection: a new file it does not match changes nothing, one it
    // matches re-runs the COPY.
    b.write("ctx/src/n.md", "n\n");
    let (s, _) = b.build(&[&ctx]);
    s.assert(&[], &[g1, g2, g3, g4]);
    b.write("ctx/src/n.txt", "n\n");
    let (s, id) = b.build(&[&ctx]);
    s.assert(&[g2, g3, g4], &[g1]);
    assert_eq!(b.cat(&id, "/l"), "n.txt\nx.txt\n");
}

#[test]
fn a_proxy_build_arg_reruns_nothing_unless_declared() {
    // BuildKit: the predefined proxy ARGs reach RUN but are exempt from the
    // cache unless the Dockerfile declares them with ARG.
    let b = B::new();
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\nRUN echo \"p=$HTTP_PROXY\" > /p\n",
    );
    let p1 = "[1/2] FROM docker.io/library/busybox:latest";
    let p2 = "[2/2] RUN echo \"p=$HTTP_PROXY\" > /p";
    let ctx = b.p("ctx");
    b.build(&[&ctx]);
    let proxy = "HTTP_PROXY=http://127.0.0.1:3128";
    let (s, _) = b.build(&["--build-arg", proxy, &ctx]);
    s.assert(&[], &[p1, p2]);
    // It does reach the process.
    let (s, id) = b.build(&["--no-cache", "--build-arg", proxy, &ctx]);
    s.assert(&[p1, p2], &[]);
    assert_eq!(b.cat(&id, "/p"), "p=http://127.0.0.1:3128\n");

    // Declared, it is an ordinary build arg.
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\nARG HTTP_PROXY\nRUN echo \"p=$HTTP_PROXY\" > /p\n",
    );
    b.build(&[&ctx]);
    let (s, _) = b.build(&["--build-arg", proxy, &ctx]);
    let p2 = "[2/2] RUN echo \"p=http://127.0.0.1:3128\" > /p";
    s.assert(&[p2], &[p1]);
}

#[test]
fn run_mounts_key_on_bind_sources_not_on_secrets() {
    // A bind mount from the context is keyed by the content of its source (as a
    // COPY is); a secret's content is not part of the key, as in BuildKit.
    let b = B::new();
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=bind,source=a.txt,target=/a cat /a > /out1\n\
         RUN --mount=type=bind,source=sub,target=/s cat /s/s.txt > /out2\n\
         RUN --mount=type=secret,id=k wc -c < /run/secrets/k > /out3\n",
    );
    b.write("ctx/a.txt", "a1\n");
    b.write("ctx/sub/s.txt", "s1\n");
    b.write("secret", "one\n");
    let m1 = "[1/4] FROM docker.io/library/busybox:latest";
    let m2 = "[2/4] RUN --mount=type=bind,source=a.txt,target=/a cat /a > /out1";
    let m3 = "[3/4] RUN --mount=type=bind,source=sub,target=/s cat /s/s.txt > /out2";
    let m4 = "[4/4] RUN --mount=type=secret,id=k wc -c < /run/secrets/k > /out3";
    let secret = format!("id=k,src={}", b.p("secret"));
    let ctx = b.p("ctx");
    let build = || b.build(&["--secret", &secret, &ctx]);
    build();

    b.write("ctx/sub/s.txt", "s2\n");
    let (s, id) = build();
    s.assert(&[m3, m4], &[m1, m2]);
    assert_eq!(b.cat(&id, "/out2"), "s2\n");

    b.write("ctx/a.txt", "a2\n");
    let (s, _) = build();
    s.assert(&[m2, m3, m4], &[m1]);

    set_mtimes(
        &b.env.path("ctx"),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_111_111_111),
    );
    b.write("secret", "a longer secret\n");
    let (s, _) = build();
    s.assert(&[], &[m1, m2, m3, m4]);
}

/// The layer diff IDs of image `id` in the state root `root`.
fn diff_ids(env: &Env, root: &str, id: &str) -> Vec<String> {
    let out = env.ok(&["--root", root, "inspect", id]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["RootFS"]["Layers"]
        .as_array()
        .unwrap_or_else(|| panic!("no RootFS.Layers in {out}"))
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect()
}

/// Inodes of `rel` in every step snapshot of `root` that has it.
fn snapshot_inodes(root: &std::path::Path, rel: &str) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for e in fs_err::read_dir(root.join("snapshots")).unwrap() {
        let p = e.unwrap().path().join("fs").join(rel);
        if let Ok(m) = std::fs::symlink_metadata(&p) {
            out.push(m.ino());
        }
    }
    out
}

/// Builds `args` in state root `root` with `SOURCE_DATE_EPOCH` = `epoch`;
/// returns the image ID and the progress.
fn build_in(env: &Env, root: &str, epoch: Option<&str>, args: &[&str]) -> (String, String) {
    let iid = env.path("iid-in");
    let _ = std::fs::remove_file(&iid);
    let mut a = vec!["--root", root, "build", "--progress", "plain", "--iidfile"];
    let iid_s = iid.to_string_lossy().into_owned();
    a.push(&iid_s);
    a.extend_from_slice(args);
    let mut c = env.cmd(&a);
    if let Some(e) = epoch {
        c.env("SOURCE_DATE_EPOCH", e);
    }
    let o = c.stdin(std::process::Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "build {args:?} failed:\n{err}");
    (fs_err::read_to_string(&iid).unwrap(), err)
}

/// A context, built, changed and built again in one state root (the COPY
/// runs again), then built cold in another: (root, incremental image, other
/// root, cold image).
fn incremental_and_cold(b: &B, epoch: Option<&str>) -> (String, String, String, String) {
    use std::os::unix::fs::PermissionsExt;
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\nWORKDIR /app\nCOPY . /app\n\
         RUN find /app ! -type d -exec stat -c '%A %u %s %Y %n' {} + | sort > /listing\n",
    );
    for (f, text) in [
        ("src/a.txt", "a\n"),
        ("src/b.txt", "b1\n"),
        ("src/run.sh", "#!/bin/sh\n"),
        ("src/sub/c.txt", "c\n"),
        ("src/sub/d.txt", "same\n"),
        ("src/sub/e.txt", "same\n"),
        ("src/h1", "linked\n"),
    ] {
        b.write(&format!("ctx/{f}"), text);
    }
    let ctx = b.env.path("ctx");
    let _ = fs_err::remove_file(ctx.join("src/h2"));
    let _ = fs_err::remove_file(ctx.join("src/link"));
    fs_err::set_permissions(
        ctx.join("src/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs_err::hard_link(ctx.join("src/h1"), ctx.join("src/h2")).unwrap();
    std::os::unix::fs::symlink("a.txt", ctx.join("src/link")).unwrap();
    let root = b.env.root().to_string_lossy().into_owned();
    // Files changed less than 50 ms before a build are not trusted to the
    // checksum cache ("racily clean"), so neither linked later.
    std::thread::sleep(Duration::from_millis(200));
    let (_, first) = build_in(&b.env, &root, epoch, &[&b.p("ctx")]);
    assert!(first.contains("COPY . /app\n"), "{first}");

    // Content, mode and mtime changes, and a hard link broken into two files.
    b.write("ctx/src/b.txt", "b2\n");
    fs_err::set_permissions(
        ctx.join("src/run.sh"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    fs_err::File::options()
        .write(true)
        .open(ctx.join("src/sub/c.txt"))
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    fs_err::remove_file(ctx.join("src/h2")).unwrap();
    fs_err::copy(ctx.join("src/h1"), ctx.join("src/h2")).unwrap();
    let (id, second) = build_in(&b.env, &root, epoch, &[&b.p("ctx")]);
    assert!(
        !second.contains("[3/4] COPY . /app\n#4 CACHED"),
        "the COPY did not run again:\n{second}"
    );

    let other = b.p(&format!("other-root-{}", epoch.unwrap_or("now")));
    b.env.ok(&[
        "--root",
        &other,
        "import",
        &b.p("base.tar"),
        "busybox:latest",
    ]);
    let (cold, _) = build_in(&b.env, &other, epoch, &[&b.p("ctx")]);
    (root, id, other, cold)
}

#[test]
fn a_copy_rerun_after_a_change_gives_the_layer_a_cold_build_gives() {
    // A COPY that runs again after some context files changed links the files
    // that did not change from its previous result instead of copying them.
    // Whatever it links, its result must be what a cold build of the same
    // context gives: same content, modes, mtimes and hard links.
    let b = B::new();

    // With SOURCE_DATE_EPOCH every layer is reproducible (WORKDIR's directory
    // time included): the layers must be the cold build's, byte for byte.
    let (root, id, other, cold) = incremental_and_cold(&b, Some("1600000000"));
    assert_eq!(
        diff_ids(&b.env, &root, &id),
        diff_ids(&b.env, &other, &cold),
        "the incremental COPY's layers differ from a cold build's"
    );

    // Without it, file times are the context's: compare what the RUN saw.
    fs_err::remove_dir_all(b.env.root()).unwrap();
    b.env.ok(&["import", &b.p("base.tar"), "busybox:latest"]);
    let (root, id, other, cold) = incremental_and_cold(&b, None);
    let listing = b
        .env
        .ok(&["--root", &root, "run", "--rm", &id, "cat", "/listing"]);
    let want = b
        .env
        .ok(&["--root", &other, "run", "--rm", &cold, "cat", "/listing"]);
    assert_eq!(listing, want);
    assert!(
        listing.contains("-rwx------ 0 10 ") && listing.contains("/app/src/run.sh"),
        "{listing}"
    );

    // The unchanged a.txt is one inode in both COPY results; b.txt is two.
    let a = snapshot_inodes(std::path::Path::new(&root), "app/src/a.txt");
    assert_eq!(a.len(), 2, "a.txt in two snapshots: {a:?}");
    assert_eq!(a[0], a[1], "unchanged a.txt was copied again, not linked");
    let bs = snapshot_inodes(std::path::Path::new(&root), "app/src/b.txt");
    assert_eq!(bs.len(), 2);
    assert_ne!(bs[0], bs[1], "changed b.txt must be a new file");
}

#[test]
fn copy_from_a_stage_is_keyed_by_the_content_it_copies() {
    // BuildKit keys `COPY --from=stage` by a checksum of what it copies, not by
    // the stage's cache key: when `--no-cache-filter` makes a stage run again,
    // a copy of files that came out the same stays cached, and a copy of files
    // that came out different runs again (with the new content).
    let b = B::new();
    b.write(
        "ctx/Dockerfile",
        "FROM busybox AS deps\n\
         RUN echo same > /same && cat /proc/sys/kernel/random/uuid > /random\n\
         FROM busybox AS final\n\
         COPY --from=deps /same /same\n\
         RUN cat /same > /out1\n\
         COPY --from=deps /random /random\n\
         RUN cat /random > /out2\n",
    );
    let d2 = "[deps 2/2] RUN echo same > /same && cat /proc/sys/kernel/random/uuid > /random";
    let f2 = "[final 2/5] COPY --from=deps /same /same";
    let f3 = "[final 3/5] RUN cat /same > /out1";
    let f4 = "[final 4/5] COPY --from=deps /random /random";
    let f5 = "[final 5/5] RUN cat /random > /out2";
    // Both stages' FROM are one vertex (identical ops are solved once).
    let from = "[deps 1/2] FROM docker.io/library/busybox:latest";
    let ctx = b.p("ctx");
    let (_, id1) = b.build(&[&ctx]);
    let first = b.cat(&id1, "/out2");

    let (s, _) = b.build(&[&ctx]);
    s.assert(&[], &[from, d2, f2, f3, f4, f5]);

    let (s, id2) = b.build(&["--no-cache-filter", "deps", &ctx]);
    s.assert(&[d2, f4, f5], &[from, f2, f3]);
    let second = b.cat(&id2, "/out2");
    assert_ne!(first, second, "the new random content was not copied");
    assert_eq!(b.cat(&id2, "/random"), second);
}

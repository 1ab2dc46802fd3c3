//! A build cache shared between machines, through the binary: two state roots
//! (A and B) stand for two machines. Keys must not depend on anything of the
//! machine (state-root or context paths, inode numbers, owners of the
//! checkout, mtimes, snapshot IDs, how the base image came in), read from the
//! JSON progress (`vertex_key` events).
//!
//! Needs root (steps run in the sandbox over overlay mounts) and the busybox base
//! from `testdata/examples/busybox-base.sh`; fails saying what is missing otherwise.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::Env;

/// What became of each step of one build, by step name.
#[derive(Debug, Default)]
struct Steps {
    ran: BTreeSet<String>,
    cached: BTreeSet<String>,
    /// Step name → cache key.
    keys: BTreeMap<String, String>,
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
            let name = |names: &BTreeMap<u64, String>| {
                names
                    .get(&id)
                    .unwrap_or_else(|| panic!("event before start: {line}\n{log}"))
                    .clone()
            };
            match v["event"].as_str() {
                Some("vertex_started") => {
                    names.insert(id, v["name"].as_str().unwrap().to_owned());
                }
                Some("vertex_cached") => {
                    s.cached.insert(name(&names));
                }
                Some("vertex_done") => {
                    s.ran.insert(name(&names));
                }
                Some("vertex_key") => {
                    let key = v["key"].as_str().unwrap().to_owned();
                    assert_eq!(key.len(), 64, "{line}");
                    assert!(s.keys.insert(name(&names), key).is_none(), "{log}");
                }
                _ => {}
            }
        }
        s
    }

    /// The steps of the Dockerfile (not `[internal]` ones, not the export).
    fn steps(set: &BTreeSet<String>) -> BTreeSet<String> {
        set.iter()
            .filter(|n| n.starts_with('['))
            .filter(|n| !n.starts_with("[internal]"))
            .cloned()
            .collect()
    }
}

/// One machine: a state root with the busybox base imported.
struct Machine {
    env: Env,
}

impl Machine {
    fn new() -> Self {
        Self {
            env: common::build_env(),
        }
    }

    /// Another machine with `other`'s busybox base, as `save` wrote it and
    /// `load` read it (the same image ID; a pull from a registry gives the same).
    fn with_base_of(other: &Machine) -> Self {
        let env = Env::new();
        let tar = env.path("busybox-save.tar");
        other
            .env
            .ok(&["save", "-o", tar.to_str().unwrap(), "busybox:latest"]);
        env.ok(&["load", "-q", "-i", tar.to_str().unwrap()]);
        fs_err::remove_file(&tar).unwrap();
        Self { env }
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
}

/// A multi-stage build with RUN, COPY and a cache mount; the final stage
/// copies from the other.
const MULTI: &str = "FROM busybox AS tools\n\
COPY tool.txt /src/tool.txt\n\
RUN --mount=type=cache,target=/cache cp /src/tool.txt /cache/t && tr a-z A-Z < /src/tool.txt > /tool.out\n\
FROM busybox\n\
COPY app/ /app/\n\
RUN cat /app/*.txt > /app.out\n\
COPY --from=tools /tool.out /tool.out\n";

fn multi_context(m: &Machine, dir: &str) {
    m.write(&format!("{dir}/Dockerfile"), MULTI);
    m.write(&format!("{dir}/tool.txt"), "tool one\n");
    m.write(&format!("{dir}/app/a.txt"), "a1\n");
    m.write(&format!("{dir}/app/b.txt"), "b1\n");
    m.write(&format!("{dir}/unused.txt"), "u\n");
}

/// `chown -R uid:gid dir`.
fn chown_tree(dir: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).unwrap();
    for e in fs_err::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            chown_tree(&p, uid, gid);
        } else {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).unwrap();
        }
    }
}

#[test]
fn keys_are_the_same_on_another_machine() {
    let a = Machine::new();
    let b = Machine::new();
    multi_context(&a, "work/ctx");
    // B: another path, written later (other mtimes, inodes), in another
    // order, owned by another user; its base imported under another name with
    // another config (same layers).
    b.write("elsewhere/deeper/checkout/unused.txt", "u\n");
    b.write("elsewhere/deeper/checkout/app/b.txt", "b1\n");
    b.write("elsewhere/deeper/checkout/app/a.txt", "a1\n");
    b.write("elsewhere/deeper/checkout/tool.txt", "tool one\n");
    b.write(
        "elsewhere/deeper/checkout/Dockerfile",
        &MULTI.replace("FROM busybox", "FROM localhost/base:v2"),
    );
    chown_tree(&b.env.path("elsewhere"), 4321, 4321);
    b.env.ok(&[
        "import",
        &b.p("base.tar"),
        "localhost/base:v2",
        "--change",
        "LABEL rebuilt=elsewhere",
    ]);

    let (sa, id_a) = a.build(&[&a.p("work/ctx")]);
    let (sb, id_b) = b.build(&[&b.p("elsewhere/deeper/checkout")]);
    let steps = Steps::steps(&sa.ran);
    // The two FROMs of the same image are one vertex.
    assert_eq!(steps.len(), 6, "{}", sa.log);
    // The step names differ only by the base's name; compare keys in order.
    let keys = |s: &Steps| -> Vec<String> {
        let mut v: Vec<(String, String)> = s
            .keys
            .iter()
            .filter(|(n, _)| !n.starts_with("[internal]"))
            .map(|(n, k)| {
                (
                    n.replace("localhost/base:v2", "docker.io/library/busybox:latest"),
                    k.clone(),
                )
            })
            .collect();
        v.sort();
        v.into_iter().map(|(n, k)| format!("{n} {k}")).collect()
    };
    assert_eq!(keys(&sa).len(), 6, "every step has a key:\n{}", sa.log);
    assert_eq!(keys(&sa), keys(&sb), "A:\n{}\nB:\n{}", sa.log, sb.log);
    // Different image configs (B's base has a label), so different IDs; the
    // keys are what travels.
    assert_ne!(id_a, id_b);

    // A key does change with what the step reads.
    b.write("elsewhere/deeper/checkout/app/a.txt", "a2\n");
    let (sb2, _) = b.build(&[&b.p("elsewhere/deeper/checkout")]);
    let changed: BTreeSet<String> = keys(&sb)
        .into_iter()
        .collect::<BTreeSet<_>>()
        .difference(&keys(&sb2).into_iter().collect())
        .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
        .collect();
    assert_eq!(
        changed,
        BTreeSet::from([
            "[stage-1 2/4] COPY app/ /app/".to_owned(),
            "[stage-1 3/4] RUN cat /app/*.txt > /app.out".to_owned(),
            "[stage-1 4/4] COPY --from=tools /tool.out /tool.out".to_owned(),
        ]),
        "{}",
        sb2.log
    );
}

/// The steps of `MULTI` (the FROM of both stages is one vertex).
const FROM: &str = "[tools 1/3] FROM docker.io/library/busybox:latest";
const T2: &str = "[tools 2/3] COPY tool.txt /src/tool.txt";
const T3: &str = "[tools 3/3] RUN --mount=type=cache,target=/cache cp /src/tool.txt /cache/t && tr a-z A-Z < /src/tool.txt > /tool.out";
const F2: &str = "[stage-1 2/4] COPY app/ /app/";
const F3: &str = "[stage-1 3/4] RUN cat /app/*.txt > /app.out";
const F4: &str = "[stage-1 4/4] COPY --from=tools /tool.out /tool.out";

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The blobs of an OCI layout directory and the ones its index reaches.
fn blobs(dir: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut all = BTreeSet::new();
    for e in fs_err::read_dir(dir.join("blobs/sha256")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        all.insert(name);
    }
    let mut reached = BTreeSet::new();
    let read = |hex: &str| -> serde_json::Value {
        serde_json::from_slice(&fs_err::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs_err::read(dir.join("index.json")).unwrap()).unwrap();
    for m in index["manifests"].as_array().unwrap() {
        let hex = m["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        reached.insert(hex.to_owned());
        let manifest = read(hex);
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.rbuild.cache.config.v1+json"
        );
        let chex = manifest["config"]["digest"].as_str().unwrap()[7..].to_owned();
        reached.insert(chex);
        for l in manifest["layers"].as_array().unwrap() {
            reached.insert(l["digest"].as_str().unwrap()[7..].to_owned());
        }
    }
    (all, reached)
}

/// How many snapshots of machine `m` were unpacked from an imported cache's
/// step layers.
fn unpacked_step_layers(m: &Machine) -> usize {
    let dir = m.env.root().join("snapshots");
    fs_err::read_dir(&dir)
        .unwrap()
        .filter_map(|e| fs_err::read_to_string(e.unwrap().path().join("meta.json")).ok())
        .filter(|meta| meta.contains(r#""kind":"cache""#))
        .count()
}

/// `cat PATH` in image `id` of machine `m`.
fn cat(m: &Machine, id: &str, path: &str) -> String {
    m.env.ok(&["run", "--rm", id, "cat", path])
}

#[test]
fn a_local_cache_in_max_mode_makes_a_fresh_machine_run_nothing() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = a.p("cache");
    let to = format!("type=local,dest={cache},mode=max");
    let (sa, id_a) = a.build(&["--cache-to", &to, &a.p("ctx")]);
    assert!(
        sa.ran
            .iter()
            .any(|n| n == &format!("exporting cache to {cache}")),
        "the export is a step:\n{}",
        sa.log
    );
    let (all, reached) = blobs(Path::new(&cache));
    assert_eq!(all, reached, "every blob is referenced, no other");

    // B: a fresh state root, the same base (saved on A, loaded on B), the
    // context in another place.
    let b = Machine::with_base_of(&a);
    multi_context(&b, "elsewhere/ctx");
    let from = format!("type=local,src={cache}");
    let (sb, id_b) = b.build(&["--cache-from", &from, &b.p("elsewhere/ctx")]);
    assert!(
        sb.ran
            .iter()
            .any(|n| n == &format!("importing cache manifest from {cache}")),
        "the import is a step:\n{}",
        sb.log
    );
    // Every step is cached; only the final result's layers were unpacked
    // (the other stage's results are not needed).
    assert_eq!(
        Steps::steps(&sb.cached),
        set(&[FROM, T2, T3, F2, F3, F4]),
        "{}",
        sb.log
    );
    assert_eq!(Steps::steps(&sb.ran), set(&[]), "{}", sb.log);
    assert_eq!(unpacked_step_layers(&b), 3, "F2, F3 and F4's layers only");
    assert_eq!(id_a, id_b, "the same image ID (A's created time travelled)");
    assert_eq!(cat(&b, &id_b, "/app.out"), "a1\nb1\n");
    assert_eq!(cat(&b, &id_b, "/tool.out"), "TOOL ONE\n");

    // One file of the final stage changes: from its COPY on, the rest (the
    // other stage) stays cached.
    let b2 = Machine::with_base_of(&a);
    multi_context(&b2, "ctx");
    b2.write("ctx/app/b.txt", "b2\n");
    let (s2, id2) = b2.build(&["--cache-from", &from, &b2.p("ctx")]);
    // The base is answered lazily, then unpacked from B's store when F2 runs.
    assert_eq!(Steps::steps(&s2.cached), set(&[FROM, T2, T3]), "{}", s2.log);
    assert_eq!(
        Steps::steps(&s2.ran),
        set(&[FROM, F2, F3, F4]),
        "{}",
        s2.log
    );
    assert_eq!(cat(&b2, &id2, "/app.out"), "a1\nb2\n");
}

#[test]
fn rewriting_a_local_cache_leaves_no_unreferenced_blob() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = a.p("cache");
    let to = format!("type=local,dest={cache},mode=max");
    a.build(&["--cache-to", &to, &a.p("ctx")]);
    let (first, reached) = blobs(Path::new(&cache));
    assert_eq!(first, reached);

    // Other content: the layers of the changed steps are replaced.
    a.write("ctx/app/a.txt", "a2\n");
    a.write("ctx/tool.txt", "tool two\n");
    a.build(&["--cache-to", &to, &a.p("ctx")]);
    let (second, reached) = blobs(Path::new(&cache));
    assert_eq!(second, reached, "every blob left is referenced");
    assert!(
        first.difference(&second).count() >= 3,
        "the old layers and config are gone: {first:?} → {second:?}"
    );
    let temps: Vec<_> = fs_err::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
}

#[test]
fn a_missing_or_corrupt_cache_source_warns_and_builds() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let missing = a.p("no-such-cache");
    let o = a.env.run(&[
        "build",
        "--progress",
        "plain",
        "--cache-from",
        &format!("type=local,src={missing}"),
        &a.p("ctx"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("cache import from {missing} failed")),
        "a warning names the source:\n{err}"
    );

    // A corrupt manifest: the index names a blob whose content is garbage.
    let cache = a.p("cache");
    a.build(&[
        "--cache-to",
        &format!("type=local,dest={cache},mode=max"),
        &a.p("ctx"),
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&fs_err::read(Path::new(&cache).join("index.json")).unwrap())
            .unwrap();
    let m = index["manifests"][0]["digest"].as_str().unwrap()[7..].to_owned();
    fs_err::write(Path::new(&cache).join("blobs/sha256").join(m), b"{garbage").unwrap();
    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    let o = b.env.run(&[
        "build",
        "--progress",
        "plain",
        "--cache-from",
        &format!("type=local,src={cache}"),
        &b.p("ctx"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("cache import from {cache} failed")),
        "{err}"
    );
}

#[test]
fn a_missing_blob_makes_the_step_run() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = a.p("cache");
    a.build(&[
        "--cache-to",
        &format!("type=local,dest={cache},mode=max"),
        &a.p("ctx"),
    ]);
    // The blob of the top layer of the final stage's last step.
    let config = read_config(Path::new(&cache));
    let top = config["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["description"] == F4)
        .unwrap_or_else(|| panic!("no record for {F4}: {config}"))["layer"]
        .as_u64()
        .unwrap();
    let blob = config["layers"][usize::try_from(top).unwrap()]["blob"]
        .as_str()
        .unwrap()[7..]
        .to_owned();
    fs_err::remove_file(Path::new(&cache).join("blobs/sha256").join(blob)).unwrap();

    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    let (s, id) = b.build(&[
        "--cache-from",
        &format!("type=local,src={cache}"),
        &b.p("ctx"),
    ]);
    // F4 was answered by its record, then ran when its layer could not be had.
    assert_eq!(Steps::steps(&s.ran), set(&[F4]), "{}", s.log);
    assert!(
        Steps::steps(&s.cached).is_superset(&set(&[FROM, T2, T3, F2, F3])),
        "{}",
        s.log
    );
    assert_eq!(cat(&b, &id, "/tool.out"), "TOOL ONE\n");
}

/// The cache config of an OCI layout written by `--cache-to type=local`.
fn read_config(dir: &Path) -> serde_json::Value {
    let read = |hex: &str| -> serde_json::Value {
        serde_json::from_slice(&fs_err::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs_err::read(dir.join("index.json")).unwrap()).unwrap();
    let m = read(&index["manifests"][0]["digest"].as_str().unwrap()[7..]);
    read(&m["config"]["digest"].as_str().unwrap()[7..])
}

#[test]
fn a_min_mode_cache_makes_an_unchanged_build_run_nothing() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = a.p("cache");
    let (_, id_a) = a.build(&[
        "--cache-to",
        &format!("type=local,dest={cache},mode=min"),
        &a.p("ctx"),
    ]);
    // Layers for the final result only; every step has its record.
    let config = read_config(Path::new(&cache));
    let records = config["records"].as_array().unwrap();
    let with_layers: Vec<&str> = records
        .iter()
        .filter(|r| r.get("layer").is_some())
        .map(|r| r["description"].as_str().unwrap())
        .collect();
    assert_eq!(with_layers, [F4], "{config}");

    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    let (s, id_b) = b.build(&[
        "--cache-from",
        &format!("type=local,src={cache}"),
        &b.p("ctx"),
    ]);
    assert_eq!(Steps::steps(&s.ran), set(&[]), "{}", s.log);
    assert_eq!(
        Steps::steps(&s.cached),
        set(&[FROM, T2, T3, F2, F3, F4]),
        "{}",
        s.log
    );
    assert_eq!(id_a, id_b);
    assert_eq!(cat(&b, &id_b, "/tool.out"), "TOOL ONE\n");
}

#[test]
fn a_machine_that_imported_lazily_exports_the_layers_it_never_unpacked() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let first = a.p("cache1");
    let (_, id_a) = a.build(&[
        "--cache-to",
        &format!("type=local,dest={first},mode=max"),
        &a.p("ctx"),
    ]);

    // B runs nothing and unpacks only the final result, then exports.
    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    let second = b.p("cache2");
    let (s, id_b) = b.build(&[
        "--cache-from",
        &format!("type=local,src={first}"),
        "--cache-to",
        &format!("type=local,dest={second},mode=max"),
        &b.p("ctx"),
    ]);
    assert_eq!(Steps::steps(&s.ran), set(&[]), "{}", s.log);
    assert_eq!(id_a, id_b);
    let (all, reached) = blobs(Path::new(&second));
    assert_eq!(all, reached);
    let config = read_config(Path::new(&second));
    for step in [T2, T3, F2, F3, F4] {
        let has_layers = config["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["description"] == step && r.get("layer").is_some());
        assert!(has_layers, "{step} has its layers in B's export: {config}");
    }

    // C, from B's export only: the other stage comes from layers B copied.
    let c = Machine::with_base_of(&a);
    multi_context(&c, "ctx");
    c.write("ctx/app/b.txt", "b2\n");
    let (s, id) = c.build(&[
        "--cache-from",
        &format!("type=local,src={second}"),
        &c.p("ctx"),
    ]);
    assert_eq!(Steps::steps(&s.ran), set(&[FROM, F2, F3, F4]), "{}", s.log);
    assert!(
        Steps::steps(&s.cached).is_superset(&set(&[T2, T3])),
        "{}",
        s.log
    );
    assert_eq!(cat(&c, &id, "/tool.out"), "TOOL ONE\n");
    assert_eq!(cat(&c, &id, "/app.out"), "a1\nb2\n");
}

/// Builds with plain progress and `--explain-cache`; returns the
/// `explain-cache:` lines.
fn explain(m: &Machine, args: &[&str]) -> Vec<String> {
    let mut a = vec!["build", "--progress", "plain", "--explain-cache"];
    a.extend_from_slice(args);
    let o = m.env.run(&a);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    let out = String::from_utf8_lossy(&o.stdout).into_owned() + &err;
    out.lines()
        .filter_map(|l| l.strip_prefix("explain-cache: "))
        .map(ToOwned::to_owned)
        .collect()
}

#[test]
fn explain_cache_names_the_changed_files_and_build_arg() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = a.p("cache");
    a.build(&[
        "--cache-to",
        &format!("type=local,dest={cache},mode=max"),
        &a.p("ctx"),
    ]);
    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    b.write("ctx/app/b.txt", "b2\n");
    let from = format!("type=local,src={cache}");
    let lines = explain(&b, &["--cache-from", &from, &b.p("ctx")]);
    let expected = [
        format!("{F2}: the files it reads from [internal] load build context changed"),
        format!("{F3}: its input {F2} changed"),
    ];
    for e in &expected {
        assert!(lines.contains(e), "no {e:?} in {lines:#?}");
    }
    assert!(
        !lines.iter().any(|l| l.starts_with(T2) || l.starts_with(T3)),
        "the cached stage is not explained: {lines:#?}"
    );

    // A build arg.
    let args_df = "FROM busybox\nARG VER\nRUN echo $VER > /v\n";
    a.write("arg/Dockerfile", args_df);
    let cache2 = a.p("cache2");
    a.build(&[
        "--build-arg",
        "VER=1",
        "--cache-to",
        &format!("type=local,dest={cache2},mode=max"),
        &a.p("arg"),
    ]);
    b.write("arg/Dockerfile", args_df);
    let from2 = format!("type=local,src={cache2}");
    let lines = explain(
        &b,
        &["--build-arg", "VER=2", "--cache-from", &from2, &b.p("arg")],
    );
    assert_eq!(
        lines,
        ["[2/2] RUN echo 2 > /v: the value of VER (a build arg or ENV) changed"],
        "{lines:#?}"
    );
}

#[test]
fn importing_from_and_exporting_to_the_same_directory_keeps_it_whole() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = a.p("cache");
    let to = format!("type=local,dest={cache},mode=max");
    let from = format!("type=local,src={cache}");
    a.build(&["--cache-to", &to, &a.p("ctx")]);

    // B reads and rewrites the same directory, with one file changed.
    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    b.write("ctx/app/a.txt", "a3\n");
    b.build(&["--cache-from", &from, "--cache-to", &to, &b.p("ctx")]);
    let (all, reached) = blobs(Path::new(&cache));
    assert_eq!(all, reached);

    // C, fresh, from it: nothing runs, and the content is B's.
    let c = Machine::with_base_of(&a);
    multi_context(&c, "ctx");
    c.write("ctx/app/a.txt", "a3\n");
    let (s, id) = c.build(&["--cache-from", &from, &c.p("ctx")]);
    assert_eq!(Steps::steps(&s.ran), set(&[]), "{}", s.log);
    assert_eq!(cat(&c, &id, "/app.out"), "a3\nb1\n");
    assert_eq!(cat(&c, &id, "/tool.out"), "TOOL ONE\n");
}

//! Concurrency: builds, `run`, `save`, `load`, `image prune -a` and `rmi` on one
//! state root at the same time never break each other. What a running build uses
//! (its base image, its snapshots) is held by its lease, which prune and rmi
//! respect; what one process has half made is never removed by another that
//! starts meanwhile.
//!
//! Five rounds of four builds at once (each `RUN sleep 1`, so they overlap; a
//! build arg makes each round's RUN miss the cache while the COPY before it
//! hits), with `image prune -a -f` and `rmi` of other tags looping meanwhile, a
//! `run` of the base and a `save` + `load` of it. Every command succeeds; the
//! store is consistent after each round (every image saves whole); each round
//! and the final check re-import the base first (the round's last prune removes
//! it). At the end a rebuild is fully CACHED and gives the expected files, and
//! nothing is left mounted or half made.
//!
//! Needs root and the busybox base; fails saying which is missing otherwise.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Env;

const BUILDS: usize = 4;
const ROUNDS: usize = 5;

/// A running build: its process and a thread collecting its stderr, which
/// says (once) when the first progress event came: planning is over, the base
/// image is held.
struct Running {
    child: Child,
    started: mpsc::Receiver<()>,
    output: std::thread::JoinHandle<String>,
}

fn spawn_build(env: &Env, args: &[&str]) -> Running {
    let mut child = env
        .cmd(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, started) = mpsc::channel();
    let output = std::thread::spawn(move || {
        let mut all = String::new();
        let mut told = false;
        for line in BufReader::new(err).lines() {
            let line = line.unwrap_or_default();
            if !told && line.starts_with('{') {
                let _ = tx.send(());
                told = true;
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    Running {
        child,
        started,
        output,
    }
}

fn finish(r: Running) -> (bool, String) {
    let mut child = r.child;
    let ok = child.wait().unwrap().success();
    (ok, r.output.join().unwrap())
}

/// Every image in the store lists and saves whole (all its blobs are there).
fn assert_consistent(env: &Env, when: &str) {
    let ids = env.ok(&["images", "-a", "-q", "--no-trunc"]);
    for id in ids.lines() {
        let out = env.path("check.tar");
        env.ok(&["save", "-o", out.to_str().unwrap(), id]);
        assert!(fs_err::metadata(&out).unwrap().len() > 0, "{when}: {id}");
    }
}

/// Mount points under `dir` in this mount namespace.
fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    let dir = fs_err::canonicalize(dir).unwrap();
    let prefix = format!("{}/", dir.display());
    fs_err::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

fn write_contexts(env: &Env) {
    for k in 0..BUILDS {
        let ctx = env.path(&format!("ctx{k}"));
        fs_err::create_dir_all(ctx.join("data")).unwrap();
        for i in 0..40 {
            fs_err::write(
                ctx.join(format!("data/f{i}")),
                format!("build {k} file {i}\n").repeat(20),
            )
            .unwrap();
        }
        fs_err::write(
            ctx.join("Dockerfile"),
            format!(
                "FROM busybox\nARG ROUND\nCOPY data /data\n\
                 RUN sleep 1 && echo \"b{k} round $ROUND\" > /done\n"
            ),
        )
        .unwrap();
    }
}

#[test]
fn concurrent_builds_survive_prune_rmi_save_load_and_run() {
    let env = common::build_env();
    let t0 = Instant::now();
    let base = env.path("base.tar");
    assert!(base.is_file(), "build_env leaves the base tar at {base:?}");
    write_contexts(&env);
    let archive = env.path("busybox-save.tar");
    // The same base image (ID) every time: a fixed creation time.
    let import_base = || {
        let o = env
            .cmd(&["import", base.to_str().unwrap(), "busybox:latest"])
            .env("SOURCE_DATE_EPOCH", "1600000000")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    for round in 0..ROUNDS {
        let tr = Instant::now();
        import_base();
        let extra: Vec<String> = (0..BUILDS).map(|k| format!("extra{round}:t{k}")).collect();
        for t in &extra {
            env.ok(&["tag", "busybox:latest", t]);
        }
        let round_arg = format!("ROUND={round}");
        let builds: Vec<(usize, Running)> = (0..BUILDS)
            .map(|k| {
                let tag = format!("b{k}:r{round}");
                let ctx = env.path(&format!("ctx{k}"));
                let b = spawn_build(
                    &env,
                    &[
                        "build",
                        "--progress",
                        "json",
                        "--build-arg",
                        &round_arg,
                        "-t",
                        &tag,
                        ctx.to_str().unwrap(),
                    ],
                );
                (k, b)
            })
            .collect();
        // A `run` of the base holds it too, for longer than the builds.
        let run = env
            .cmd(&["run", "--rm", "busybox", "sh", "-c", "sleep 3; echo run-ok"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        for (k, b) in &builds {
            assert!(
                b.started.recv_timeout(Duration::from_secs(60)).is_ok(),
                "round {round}: build {k} never started"
            );
        }

        // Prune and rmi loop while the builds run; the first pass also saves
        // and loads the base (held by the builds and the run meanwhile).
        let mut others = 0usize;
        let mut pass = 0usize;
        let mut running = builds;
        let mut done: Vec<(usize, bool, String)> = Vec::new();
        while !running.is_empty() {
            let o = env.run(&["image", "prune", "-a", "-f"]);
            assert!(
                o.status.success(),
                "round {round}: prune failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            others += 1;
            // The build cache too, but not in the last round, whose cache
            // the final rebuild must find.
            if round + 1 < ROUNDS {
                let o = env.run(&["builder", "prune", "-a", "-f"]);
                assert!(
                    o.status.success(),
                    "round {round}: builder prune failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                others += 1;
            }
            if let Some(t) = extra.get(pass) {
                env.ok(&["rmi", t]);
                others += 1;
            }
            if pass == 0 {
                env.ok(&["save", "-o", archive.to_str().unwrap(), "busybox:latest"]);
                let out = env.ok(&["load", "-i", archive.to_str().unwrap()]);
                assert!(out.contains("busybox:latest"), "{out}");
                others += 2;
            }
            pass += 1;
            let mut still = Vec::new();
            for (k, mut b) in running {
                if b.child.try_wait().unwrap().is_some() {
                    let (ok, out) = finish(b);
                    done.push((k, ok, out));
                } else {
                    still.push((k, b));
                }
            }
            running = still;
            std::thread::sleep(Duration::from_millis(50));
        }
        for (k, ok, out) in &done {
            assert!(ok, "round {round}: build {k} failed:\n{out}");
        }
        let o = run.wait_with_output().unwrap();
        assert!(
            o.status.success() && String::from_utf8_lossy(&o.stdout) == "run-ok\n",
            "round {round}: run failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(pass > 1, "round {round}: the prune loop never overlapped");
        assert_consistent(&env, &format!("after round {round}"));
        println!(
            "round {round}: {BUILDS} builds ok with {others} prune/rmi/save/load meanwhile \
             ({pass} prune passes), {:.1}s",
            tr.elapsed().as_secs_f64()
        );
        // Nothing holds anything now: everything goes, the base included.
        env.ok(&["image", "prune", "-a", "-f"]);
        assert_eq!(env.ok(&["images", "-a", "-q"]), "", "after round {round}");
    }

    // The final check: the base again, then a rebuild of the last round is
    // fully cached (the snapshots survived every prune) and right.
    import_base();
    let last = format!("ROUND={}", ROUNDS - 1);
    for k in 0..BUILDS {
        let tag = format!("b{k}:final");
        let ctx = env.path(&format!("ctx{k}"));
        let o = env.run(&[
            "build",
            "--progress",
            "json",
            "--build-arg",
            &last,
            "-t",
            &tag,
            ctx.to_str().unwrap(),
        ]);
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "rebuild {k}: {log}");
        let mut names = std::collections::HashMap::new();
        let mut cached = 0;
        for line in log.lines().filter(|l| l.starts_with('{')) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let name = v["name"].as_str().unwrap_or_default().to_owned();
            match v["event"].as_str() {
                Some("vertex_started") => {
                    names.insert(v["id"].as_u64(), name);
                }
                Some("vertex_cached") => cached += 1,
                Some("vertex_done") => {
                    let n = &names[&v["id"].as_u64()];
                    assert!(
                        n.starts_with("[internal]") || n.starts_with("exporting to "),
                        "rebuild {k}: {n} ran again:\n{log}"
                    );
                }
                _ => {}
            }
        }
        assert!(cached >= 3, "rebuild {k}: FROM, COPY, RUN cached:\n{log}");
        assert_eq!(
            env.ok(&["run", "--rm", &tag, "cat", "/done"]),
            format!("b{k} round {}\n", ROUNDS - 1)
        );
    }
    let list = env.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    for k in 0..BUILDS {
        assert!(list.contains(&format!("b{k}:final\n")), "{list}");
    }
    assert_consistent(&env, "at the end");

    // Nothing half made, mounted or leased is left.
    let root = env.root();
    assert_eq!(mounts_under(&root), Vec::<String>::new());
    for dir in ["snapshots/mounts", "tmp", "leases"] {
        let left: Vec<_> = fs_err::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
    let half: Vec<_> = fs_err::read_dir(root.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tmp-"))
        .collect();
    assert!(half.is_empty(), "{half:?}");
    println!(
        "stress: {ROUNDS} rounds of {BUILDS} concurrent builds in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

/// What a running process holds stays through `image prune -a` and `rmi`: by tag
/// the image loses the tag only, by ID the removal is refused; once the process
/// ended, prune removes it.
#[test]
fn prune_and_rmi_leave_what_a_running_process_holds() {
    let env = common::build_env();
    let id = env
        .ok(&["images", "-q", "--no-trunc", "busybox"])
        .trim()
        .to_owned();
    assert!(id.starts_with("sha256:"), "{id}");
    env.ok(&["tag", "busybox", "other:1"]);
    let mut run = env
        .cmd(&["run", "--rm", "busybox", "sh", "-c", "echo up; sleep 3"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Once the command runs, the image is held.
    let mut up = String::new();
    BufReader::new(run.stdout.take().unwrap())
        .read_line(&mut up)
        .unwrap();
    assert_eq!(up, "up\n");
    let out = env.ok(&["image", "prune", "-a", "-f"]);
    assert!(!out.contains(&id), "prune removed a held image: {out}");
    assert_eq!(
        env.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]),
        "busybox:latest\nother:1\n",
        "prune untagged a held image"
    );
    assert_eq!(env.ok(&["rmi", "other:1"]), "Untagged: other:1\n");
    assert_eq!(env.ok(&["rmi", "busybox"]), "Untagged: busybox:latest\n");
    assert_eq!(env.ok(&["images", "-q", "--no-trunc"]).trim(), id);
    let err = env.fails(&["rmi", &id]);
    assert!(
        err.contains("being used by a running rbuild process"),
        "{err}"
    );
    assert!(run.wait().unwrap().success());
    let out = env.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains(&format!("deleted: {id}")), "{out}");
    assert_eq!(env.ok(&["images", "-a", "-q"]), "");
}

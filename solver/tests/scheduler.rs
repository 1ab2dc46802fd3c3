//! The scheduler against a fake in-memory executor that records its calls.
#![allow(clippy::many_single_char_names)] // a, b, c name vertices of small example graphs

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbuild_ops::Checksum;
use rbuild_ops::{BuildGraph, ImagePin, Vertex, VertexId};
use rbuild_ops::{Copy, ExecOp, FileAction, FileOp, Selection, SourceOp};
use rbuild_solver::progress::{self, Event};
use rbuild_solver::{
    BoxFuture, CacheIndex, ContentChecksum, ExecContext, ExecError, Executor, ResultRef,
    SolveError, Solver,
};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Start(String),
    End(String),
}

#[derive(Clone)]
enum Behaviour {
    /// Wait at a barrier shared with other vertices (proves they overlap).
    Rendezvous(Arc<tokio::sync::Barrier>),
    /// Wait for the notification, then fail.
    FailAfter(Arc<tokio::sync::Notify>, String),
    /// Notify, then never finish; records a cancellation when dropped.
    HangNotify(Arc<tokio::sync::Notify>),
}

#[derive(Default)]
struct Fake {
    log: Mutex<Vec<Call>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    counter: AtomicUsize,
    behaviours: Mutex<HashMap<String, Behaviour>>,
    /// The "build context": path → content.
    context: Mutex<HashMap<String, String>>,
    cancelled: Mutex<Vec<String>>,
    /// Results the snapshot store "lost".
    gone: Mutex<Vec<ResultRef>>,
}

impl Fake {
    fn behave(&self, name: &str, b: Behaviour) {
        self.behaviours.lock().unwrap().insert(name.to_owned(), b);
    }
    fn executed(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|c| match c {
                Call::Start(n) => Some(n.clone()),
                Call::End(_) => None,
            })
            .collect()
    }
    fn position(&self, call: &Call) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .position(|c| c == call)
            .unwrap_or_else(|| panic!("{call:?} not in log"))
    }
}

struct CancelGuard<'a> {
    fake: &'a Fake,
    name: String,
    armed: bool,
}
impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        self.fake.running.fetch_sub(1, Ordering::SeqCst);
        if self.armed {
            self.fake.cancelled.lock().unwrap().push(self.name.clone());
        }
    }
}

impl ContentChecksum for Fake {
    fn content_checksum(
        &self,
        input: &Vertex,
        _result: &ResultRef,
        selection: &Selection,
    ) -> Result<Option<Checksum>, ExecError> {
        if !matches!(input.op, rbuild_ops::Op::Source(SourceOp::Context { .. })) {
            return Ok(None);
        }
        let ctx = self.context.lock().unwrap();
        let mut h = blake3::Hasher::new();
        let mut paths: Vec<&String> = if selection.paths == ["."] {
            ctx.keys().collect()
        } else {
            selection.paths.iter().collect()
        };
        paths.sort();
        for p in paths {
            let content = ctx
                .get(p)
                .ok_or_else(|| ExecError::msg(format!("\"/{p}\": not found")))?;
            h.update(p.as_bytes());
            h.update(&[0]);
            h.update(content.as_bytes());
            h.update(&[0]);
        }
        Ok(Some(Checksum::from(h.finalize())))
    }
}

impl Executor for Fake {
    fn execute<'a>(
        &'a self,
        vertex: &'a Vertex,
        _inputs: &'a [ResultRef],
        ctx: ExecContext,
    ) -> BoxFuture<'a, Result<ResultRef, ExecError>> {
        Box::pin(async move {
            let name = vertex.description.name.clone();
            self.log.lock().unwrap().push(Call::Start(name.clone()));
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            let mut guard = CancelGuard {
                fake: self,
                name: name.clone(),
                armed: true,
            };
            ctx.logger
                .log(progress::Stream::Stdout, format!("running {name}"));
            let behaviour = self.behaviours.lock().unwrap().get(&name).cloned();
            let outcome = match behaviour {
                Some(Behaviour::Rendezvous(barrier)) => {
                    // The timeout only keeps a broken scheduler from hanging
                    // the test; the assertion is on the recorded order.
                    let _ = tokio::time::timeout(Duration::from_secs(20), barrier.wait()).await;
                    Ok(())
                }
                Some(Behaviour::FailAfter(notify, msg)) => {
                    notify.notified().await;
                    Err(ExecError::msg(msg))
                }
                Some(Behaviour::HangNotify(notify)) => {
                    notify.notify_one();
                    std::future::pending::<()>().await;
                    Ok(())
                }
                None => {
                    tokio::task::yield_now().await;
                    Ok(())
                }
            };
            guard.armed = false;
            drop(guard);
            self.log.lock().unwrap().push(Call::End(name.clone()));
            outcome?;
            let n = self.counter.fetch_add(1, Ordering::SeqCst);
            Ok(ResultRef::new(format!("{name}@{n}")))
        })
    }

    fn result_exists(&self, result: &ResultRef) -> bool {
        !self.gone.lock().unwrap().contains(result)
    }
}

fn image(g: &mut BuildGraph, reference: &str) -> VertexId {
    g.add(Vertex::new(
        SourceOp::Image {
            reference: reference.to_owned(),
            pin: ImagePin::ImageId(format!("sha256:{reference}")),
            platform: None,
            chain_id: None,
        },
        vec![],
        format!("FROM {reference}"),
    ))
    .unwrap()
}

fn run(g: &mut BuildGraph, base: VertexId, cmd: &str) -> VertexId {
    g.add(Vertex::new(
        ExecOp::new(vec!["/bin/sh".into(), "-c".into(), cmd.into()], 0),
        vec![base],
        format!("RUN {cmd}"),
    ))
    .unwrap()
}

fn context(g: &mut BuildGraph) -> VertexId {
    g.add(Vertex::new(
        SourceOp::Context {
            name: "context".into(),
            include_patterns: vec![],
            exclude_patterns: vec![],
            follow_paths: vec![],
        },
        vec![],
        "load build context",
    ))
    .unwrap()
}

fn copy(g: &mut BuildGraph, base: VertexId, ctx: VertexId, path: &str) -> VertexId {
    g.add(Vertex::new(
        FileOp {
            base: Some(0),
            actions: vec![FileAction::Copy(Copy::new(1, vec![path.into()], "/app/"))],
        },
        vec![base, ctx],
        format!("COPY {path} /app/"),
    ))
    .unwrap()
}

struct Env {
    fake: Arc<Fake>,
    state: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            fake: Arc::new(Fake::default()),
            state: tempfile::tempdir().unwrap(),
        }
    }
    fn solver(&self, jobs: usize) -> Solver {
        Solver::new(
            self.fake.clone(),
            CacheIndex::open(self.state.path()).unwrap(),
            jobs,
        )
    }
    fn reset_log(&self) {
        self.fake.log.lock().unwrap().clear();
    }
}

async fn solve(
    solver: &Solver,
    g: &BuildGraph,
    targets: &[VertexId],
) -> (Result<rbuild_solver::Outputs, SolveError>, Vec<Event>) {
    let (tx, mut rx) = progress::channel();
    let r = solver.solve(g, targets, tx).await;
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (r, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_vertices_are_added_and_solved_once() {
    let env = Env::new();
    let mut g = BuildGraph::new();
    let base = image(&mut g, "alpine");
    let a = run(&mut g, base, "make");
    // Same definition, other description: the same vertex.
    let mut again = Vertex::new(
        ExecOp::new(vec!["/bin/sh".into(), "-c".into(), "make".into()], 0),
        vec![base],
        "[stage-2 1/1] RUN make",
    );
    again.ignore_cache = true;
    let b = g.add(again).unwrap();
    assert_eq!(a, b);
    assert_eq!(g.len(), 2);
    assert!(g.get(a).unwrap().ignore_cache, "ignore_cache is or-ed in");
    let other = run(&mut g, base, "make install");
    assert_ne!(a, other);

    let (r, _) = solve(&env.solver(4), &g, &[a, b, a]).await;
    let out = r.unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(env.fake.executed(), vec!["FROM alpine", "RUN make"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertices_run_after_their_inputs() {
    let env = Env::new();
    let mut g = BuildGraph::new();
    let base = image(&mut g, "alpine");
    let left = run(&mut g, base, "left");
    let right = run(&mut g, base, "right");
    let merged = g
        .add(Vertex::new(
            rbuild_ops::MergeOp { inputs: vec![0, 1] },
            vec![left, right],
            "merge",
        ))
        .unwrap();
    let top = run(&mut g, merged, "top");
    let unrelated = run(&mut g, base, "unrelated");
    let (r, events) = solve(&env.solver(4), &g, &[top]).await;
    r.unwrap();
    let f = &env.fake;
    for (before, after) in [
        ("FROM alpine", "RUN left"),
        ("FROM alpine", "RUN right"),
        ("RUN left", "merge"),
        ("RUN right", "merge"),
        ("merge", "RUN top"),
    ] {
        assert!(
            f.position(&Call::End(before.into())) < f.position(&Call::Start(after.into())),
            "{before} must end before {after} starts"
        );
    }
    assert!(
        !f.executed().contains(&"RUN unrelated".to_owned()),
        "vertices the target does not need are not solved"
    );
    let _ = unrelated;
    // Events: started and done for each, logs from the executor.
    for id in [base, left, right, merged, top] {
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::VertexStarted { id: i, .. } if *i == id))
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::VertexDone { id: i, .. } if *i == id))
        );
    }
    assert!(events.iter().any(
        |e| matches!(e, Event::VertexLog { id, line, .. } if *id == top && line == "running RUN top")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_vertices_overlap() {
    let env = Env::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    env.fake
        .behave("RUN one", Behaviour::Rendezvous(barrier.clone()));
    env.fake.behave("RUN two", Behaviour::Rendezvous(barrier));
    let mut g = BuildGraph::new();
    let base = image(&mut g, "alpine");
    let one = run(&mut g, base, "one");
    let two = run(&mut g, base, "two");
    let (r, _) = solve(&env.solver(2), &g, &[one, two]).await;
    r.unwrap();
    let f = &env.fake;
    for (a, b) in [("RUN one", "RUN two"), ("RUN two", "RUN one")] {
        assert!(
            f.position(&Call::Start(a.into())) < f.position(&Call::End(b.into())),
            "{a} must start before {b} ends"
        );
    }
    assert_eq!(f.max_running.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_bound_is_respected() {
    for jobs in [1, 2, 3] {
        let env = Env::new();
        let mut g = BuildGraph::new();
        let base = image(&mut g, "alpine");
        let mut targets = Vec::new();
        // Every `jobs` running vertices meet at a (reusable) barrier: the
        // bound is reached, and never exceeded.
        let barrier = Arc::new(tokio::sync::Barrier::new(jobs));
        for i in 0..jobs * 3 {
            let name = format!("step{i}");
            env.fake.behave(
                &format!("RUN {name}"),
                Behaviour::Rendezvous(barrier.clone()),
            );
            targets.push(run(&mut g, base, &name));
        }
        let (r, events) = solve(&env.solver(jobs), &g, &targets).await;
        r.unwrap();
        assert_eq!(
            env.fake.max_running.load(Ordering::SeqCst),
            jobs,
            "jobs={jobs}"
        );
        // Progress shows no more than `jobs` vertices running at a time:
        // waiting for a slot is not "started".
        let mut open = std::collections::HashSet::new();
        for e in &events {
            match e {
                Event::VertexStarted { id, .. } => {
                    open.insert(*id);
                    assert!(open.len() <= jobs, "jobs={jobs}: {open:?} started at once");
                }
                Event::VertexDone { id, .. } => {
                    open.remove(id);
                }
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hit_skips_execution_across_solver_instances() {
    let env = Env::new();
    let mut g = BuildGraph::new();
    let base = image(&mut g, "alpine");
    let a = run(&mut g, base, "a");
    let b = run(&mut g, a, "b");
    let (r, _) = solve(&env.solver(2), &g, &[b]).await;
    let first = r.unwrap();
    assert_eq!(env.fake.executed().len(), 3);
    assert!(!first.get(b).unwrap().cached);

    env.reset_log();
    // A new Solver and a new CacheIndex over the same state directory.
    let (r, events) = solve(&env.solver(2), &g, &[b]).await;
    let second = r.unwrap();
    assert!(env.fake.executed().is_empty(), "{:?}", env.fake.executed());
    assert_eq!(second.get(b).unwrap().result, first.get(b).unwrap().result);
    assert_eq!(second.get(b).unwrap().key, first.get(b).unwrap().key);
    assert!(second.get(b).unwrap().cached);
    for id in [base, a, b] {
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::VertexCached { id: i, .. } if *i == id))
        );
    }
    assert!(!events.iter().any(|e| matches!(e, Event::VertexDone { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_snapshot_turns_a_hit_into_a_miss() {
    let env = Env::new();
    let mut g = BuildGraph::new();
    let base = image(&mut g, "alpine");
    let a = run(&mut g, base, "a");
    let (r, _) = solve(&env.solver(2), &g, &[a]).await;
    let first = r.unwrap();
    env.fake
        .gone
        .lock()
        .unwrap()
        .push(first.get(a).unwrap().result.clone());
    env.reset_log();
    let (r, _) = solve(&env.solver(2), &g, &[a]).await;
    r.unwrap();
    assert_eq!(env.fake.executed(), vec!["RUN a"]);
}

fn context_graph(g: &mut BuildGraph) -> (VertexId, VertexId) {
    let base = image(g, "alpine");
    let ctx = context(g);
    let copy_a = copy(g, base, ctx, "a.txt");
    let run_a = run(g, copy_a, "use a");
    let base_b = image(g, "debian");
    let copy_b = copy(g, base_b, ctx, "b.txt");
    let run_b = run(g, copy_b, "use b");
    (run_a, run_b)
}

fn set_context(fake: &Fake, files: &[(&str, &str)]) {
    let mut c = fake.context.lock().unwrap();
    c.clear();
    for (p, v) in files {
        c.insert((*p).to_owned(), (*v).to_owned());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_one_context_file_reruns_only_its_dependents() {
    let env = Env::new();
    let mut g = BuildGraph::new();
    let (run_a, run_b) = context_graph(&mut g);
    set_context(&env.fake, &[("a.txt", "1"), ("b.txt", "1"), ("c.txt", "1")]);
    let (r, _) = solve(&env.solver(2), &g, &[run_a, run_b]).await;
    r.unwrap();
    assert_eq!(env.fake.executed().len(), 7);

    // Unchanged context (a file nobody copies changed): only the context
    // source itself (volatile) runs.
    env.reset_log();
    set_context(&env.fake, &[("a.txt", "1"), ("b.txt", "1"), ("c.txt", "2")]);
    let (r, _) = solve(&env.solver(2), &g, &[run_a, run_b]).await;
    r.unwrap();
    assert_eq!(env.fake.executed(), vec!["load build context"]);

    env.reset_log();
    set_context(&env.fake, &[("a.txt", "2"), ("b.txt", "1"), ("c.txt", "2")]);
    let (r, _) = solve(&env.solver(2), &g, &[run_a, run_b]).await;
    r.unwrap();
    let mut ran = env.fake.executed();
    ran.sort();
    assert_eq!(
        ran,
        vec!["COPY a.txt /app/", "RUN use a", "load build context"]
    );

    // Back to the old content: the old entries hit again.
    env.reset_log();
    set_context(&env.fake, &[("a.txt", "1"), ("b.txt", "1"), ("c.txt", "2")]);
    let (r, _) = solve(&env.solver(2), &g, &[run_a, run_b]).await;
    r.unwrap();
    assert_eq!(env.fake.executed(), vec!["load build context"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_selected_file_fails_naming_the_vertex() {
    let env = Env::new();
    let mut g = BuildGraph::new();
    let (run_a, _) = context_graph(&mut g);
    set_context(&env.fake, &[("b.txt", "1")]);
    let (r, _) = solve(&env.solver(2), &g, &[run_a]).await;
    let err = r.unwrap_err();
    assert_eq!(err.to_string(), "COPY a.txt /app/: \"/a.txt\": not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cache_and_ignore_cache() {
    let env = Env::new();
    let mut g = BuildGraph::new();
    let base = image(&mut g, "alpine");
    let a = run(&mut g, base, "a");
    let b = run(&mut g, a, "b");
    let c = run(&mut g, b, "c");
    let (r, _) = solve(&env.solver(2), &g, &[c]).await;
    r.unwrap();

    env.reset_log();
    let (r, events) = solve(&env.solver(2).with_no_cache(true), &g, &[c]).await;
    r.unwrap();
    assert_eq!(env.fake.executed().len(), 4, "--no-cache runs everything");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::VertexCached { .. }))
    );

    env.reset_log();
    g.set_ignore_cache(b, true).unwrap();
    let (r, _) = solve(&env.solver(2), &g, &[c]).await;
    let out = r.unwrap();
    assert_eq!(env.fake.executed(), vec!["RUN b"]);
    assert!(!out.get(b).unwrap().cached);
    assert!(out.get(c).unwrap().cached);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_cancels_the_rest_and_names_the_vertex() {
    let env = Env::new();
    let started = Arc::new(tokio::sync::Notify::new());
    // "slow" is surely running when "bad" fails, and would never finish.
    env.fake
        .behave("RUN slow", Behaviour::HangNotify(started.clone()));
    env.fake.behave(
        "RUN bad",
        Behaviour::FailAfter(started, "exit status 2".into()),
    );
    let mut g = BuildGraph::new();
    let base = image(&mut g, "alpine");
    let slow = run(&mut g, base, "slow");
    let bad = run(&mut g, base, "bad");
    let after = run(&mut g, bad, "after");
    let (r, events) = solve(&env.solver(2), &g, &[slow, after]).await;
    let err = r.unwrap_err();
    match &err {
        SolveError::Vertex {
            id, name, inputs, ..
        } => {
            assert_eq!(*id, bad);
            assert_eq!(name, "RUN bad");
            assert_eq!(inputs.len(), 1, "the last good state is reported");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(err.to_string(), "RUN bad: exit status 2");
    assert!(!env.fake.executed().contains(&"RUN after".to_owned()));
    assert_eq!(*env.fake.cancelled.lock().unwrap(), vec!["RUN slow"]);
    assert!(events.iter().any(
        |e| matches!(e, Event::VertexFailed { id, error } if *id == bad && error.contains("exit status 2"))
    ));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::VertexDone { id, .. } if *id == slow))
    );
    // Nothing is left running.
    assert_eq!(env.fake.running.load(Ordering::SeqCst), 0);
}

#[test]
fn cache_index_persists_and_survives_concurrent_writers() {
    use rbuild_ops::CacheKey;
    use rbuild_solver::CacheRecord;
    let state = tempfile::tempdir().unwrap();
    let key = |i: usize| CacheKey::from(blake3::hash(format!("key{i}").as_bytes()));
    std::thread::scope(|s| {
        for t in 0..4 {
            let root = state.path().to_owned();
            s.spawn(move || {
                // Each thread has its own handle, as two processes would.
                let index = CacheIndex::open(&root).unwrap();
                for i in 0..50 {
                    // Half the keys are written by every thread.
                    let k = if i % 2 == 0 {
                        key(i)
                    } else {
                        key(1000 * (t + 1) + i)
                    };
                    index
                        .put(&CacheRecord::new(
                            k,
                            ResultRef::new(format!("snap-{t}-{i}")),
                            "x",
                        ))
                        .unwrap();
                    assert!(index.get(&k).unwrap().is_some());
                }
            });
        }
    });
    let index = CacheIndex::open(state.path()).unwrap();
    let entries = index.entries().unwrap();
    assert_eq!(entries.len(), 25 + 4 * 25);
    for e in &entries {
        assert_eq!(index.get(&e.key).unwrap().as_ref(), Some(e));
    }
    let old = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(index.dir().join("entries").join(format!("{}.json", key(2))))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let before = index.get(&key(2)).unwrap().unwrap().last_used_unix;
    index.touch(&key(2)).unwrap();
    let after = index.get(&key(2)).unwrap().unwrap().last_used_unix;
    assert!(
        after >= before + 7000,
        "touch marks the entry used: {before} -> {after}"
    );
    // Prune what one writer wrote.
    let removed = index
        .retain(|r| !r.result.as_str().starts_with("snap-3-") || r.key == key(0))
        .unwrap();
    assert!(!removed.is_empty());
    assert!(
        removed
            .iter()
            .all(|r| r.result.as_str().starts_with("snap-3-"))
    );
    assert_eq!(index.entries().unwrap().len(), 125 - removed.len());
    assert!(index.remove(&key(0)).unwrap());
    assert!(!index.remove(&key(0)).unwrap());
    assert!(index.get(&key(0)).unwrap().is_none());
    // No temporary files left behind.
    for f in std::fs::read_dir(index.dir().join("entries")).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        assert!(!name.starts_with(".tmp-"), "{name}");
    }
}

#[test]
fn cache_index_across_processes() {
    // Two processes writing the same index: this test binary re-runs itself
    // as the writer.
    use rbuild_ops::CacheKey;
    use rbuild_solver::CacheRecord;
    if let Ok(root) = std::env::var("RBUILD_SOLVER_TEST_WRITER") {
        let index = CacheIndex::open(std::path::Path::new(&root)).unwrap();
        let who = std::process::id();
        for i in 0..100 {
            let k = CacheKey::from(blake3::hash(format!("shared{}", i % 10).as_bytes()));
            index
                .put(&CacheRecord::new(
                    k,
                    ResultRef::new(format!("{who}-{i}")),
                    "x",
                ))
                .unwrap();
        }
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "cache_index_across_processes",
                    "--test-threads=1",
                ])
                .env("RBUILD_SOLVER_TEST_WRITER", state.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let index = CacheIndex::open(state.path()).unwrap();
    let entries = index.entries().unwrap();
    assert_eq!(entries.len(), 10);
    for e in entries {
        assert!(e.result.as_str().contains('-'), "{e:?}");
    }
}

#[test]
fn events_have_a_json_form() {
    let e = Event::VertexDone {
        id: VertexId(3),
        duration: Duration::from_millis(1200),
    };
    assert_eq!(
        e.to_json(),
        r#"{"event":"vertex_done","id":3,"duration_ms":1200}"#
    );
    let back: Event = serde_json::from_str(&e.to_json()).unwrap();
    assert_eq!(back, e);
    let log = Event::VertexLog {
        id: VertexId(1),
        stream: progress::Stream::Stderr,
        line: "hello".into(),
    };
    assert_eq!(
        log.to_json(),
        r#"{"event":"vertex_log","id":1,"stream":"stderr","line":"hello"}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertices_with_the_same_key_execute_once() {
    // Two copies of the same content from two different (named) contexts
    // onto the same base: different vertices, one cache key.
    let env = Env::new();
    set_context(&env.fake, &[("a.txt", "same")]);
    let mut g = BuildGraph::new();
    let base = image(&mut g, "alpine");
    let ctx1 = context(&mut g);
    let ctx2 = g
        .add(Vertex::new(
            SourceOp::Context {
                name: "other".into(),
                include_patterns: vec![],
                exclude_patterns: vec![],
                follow_paths: vec![],
            },
            vec![],
            "load other context",
        ))
        .unwrap();
    let first = copy(&mut g, base, ctx1, "a.txt");
    let mut v = g.get(first).unwrap().clone();
    v.inputs = vec![base, ctx2];
    v.description.name = "COPY a.txt again".into();
    let second = g.add(v).unwrap();
    assert_ne!(first, second);
    let (r, _) = solve(&env.solver(4), &g, &[first, second]).await;
    let out = r.unwrap();
    assert_eq!(out.get(first).unwrap().key, out.get(second).unwrap().key);
    let copies = env
        .fake
        .executed()
        .into_iter()
        .filter(|n| n.starts_with("COPY"))
        .count();
    assert_eq!(copies, 1);
    assert_eq!(
        out.get(first).unwrap().result,
        out.get(second).unwrap().result
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_input_without_checksum_makes_dependents_uncacheable() {
    // The fake gives no content checksum for an HTTP source without
    // `--checksum`: what reads it cannot be answered from the cache.
    let env = Env::new();
    let mut g = BuildGraph::new();
    let base = image(&mut g, "alpine");
    let http = g
        .add(Vertex::new(
            SourceOp::Http {
                url: "http://127.0.0.1:1/file".into(),
                checksum: None,
                filename: None,
                chmod: None,
            },
            vec![],
            "ADD http://127.0.0.1:1/file",
        ))
        .unwrap();
    let added = copy(&mut g, base, http, "file");
    let after = run(&mut g, added, "use it");
    let (r, _) = solve(&env.solver(2), &g, &[after]).await;
    let out = r.unwrap();
    assert!(!out.get(after).unwrap().cacheable);
    env.reset_log();
    let (r, _) = solve(&env.solver(2), &g, &[after]).await;
    r.unwrap();
    let mut ran = env.fake.executed();
    ran.sort();
    assert_eq!(
        ran,
        vec![
            "ADD http://127.0.0.1:1/file",
            "COPY file /app/",
            "RUN use it"
        ]
    );

    // With a pinned checksum the download is cacheable, and so is the rest.
    let mut g = BuildGraph::new();
    let base = image(&mut g, "alpine");
    let http = g
        .add(Vertex::new(
            SourceOp::Http {
                url: "http://127.0.0.1:1/file".into(),
                checksum: Some("sha256:0000".into()),
                filename: None,
                chmod: None,
            },
            vec![],
            "ADD --checksum http://127.0.0.1:1/file",
        ))
        .unwrap();
    let added = copy(&mut g, base, http, "file");
    let after = run(&mut g, added, "use it");
    let (r, _) = solve(&env.solver(2), &g, &[after]).await;
    r.unwrap();
    env.reset_log();
    let (r, _) = solve(&env.solver(2), &g, &[after]).await;
    assert!(r.unwrap().get(after).unwrap().cached);
    assert!(env.fake.executed().is_empty());
}

#[test]
fn solver_and_its_future_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    fn assert_sync<T: Sync>() {}
    assert_sync::<Solver>();
    assert_sync::<BuildGraph>();
    let env = Env::new();
    let solver = env.solver(1);
    let g = BuildGraph::new();
    let (tx, _rx) = progress::channel();
    let fut = solver.solve(&g, &[], tx);
    assert_send(&fut);
    drop(fut);
}

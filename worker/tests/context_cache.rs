//! The scheduler with real context checksums over a directory on disk:
//! `touch` re-runs nothing, changing one file re-runs only what selects it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rbuild_ops::Checksum;
use rbuild_ops::{BuildGraph, ImagePin, Op, Vertex, VertexId};
use rbuild_ops::{Copy, ExecOp, FileAction, FileOp, Selection, SourceOp};
use rbuild_solver::progress;
use rbuild_solver::{
    BoxFuture, CacheIndex, ContentChecksum, ExecContext, ExecError, Executor, ResultRef, Solver,
};
use rbuild_worker::context::{ContextChecksummer, NoFilter};

struct DirExecutor {
    context_dir: PathBuf,
    checksummer: ContextChecksummer,
    ran: Mutex<Vec<String>>,
}

impl ContentChecksum for DirExecutor {
    fn content_checksum(
        &self,
        input: &Vertex,
        _result: &ResultRef,
        selection: &Selection,
    ) -> Result<Option<Checksum>, ExecError> {
        if !matches!(input.op, Op::Source(SourceOp::Context { .. })) {
            return Ok(None);
        }
        self.checksummer
            .checksum(selection, &NoFilter)
            .map(Some)
            .map_err(|e| ExecError::msg(e.to_string()))
    }
}

impl Executor for DirExecutor {
    fn execute<'a>(
        &'a self,
        vertex: &'a Vertex,
        _inputs: &'a [ResultRef],
        ctx: ExecContext,
    ) -> BoxFuture<'a, Result<ResultRef, ExecError>> {
        Box::pin(async move {
            self.ran
                .lock()
                .unwrap()
                .push(vertex.description.name.clone());
            Ok(match &vertex.op {
                Op::Source(SourceOp::Context { .. }) => {
                    ResultRef::new(self.context_dir.to_string_lossy())
                }
                _ => ResultRef::new(format!("snap-{}", ctx.key)),
            })
        })
    }
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// FROM alpine; COPY go.mod; RUN download; COPY src/; RUN build.
fn graph() -> (BuildGraph, VertexId) {
    let mut g = BuildGraph::new();
    let base = g
        .add(Vertex::new(
            SourceOp::Image {
                reference: "alpine".into(),
                pin: ImagePin::ImageId("sha256:00".into()),
                platform: None,
                chain_id: None,
            },
            vec![],
            "[1/5] FROM alpine",
        ))
        .unwrap();
    let ctx = g
        .add(Vertex::new(
            SourceOp::Context {
                name: "context".into(),
                include_patterns: vec![],
                exclude_patterns: vec![],
                follow_paths: vec![],
            },
            vec![],
            "load build context",
        ))
        .unwrap();
    let copy = |g: &mut BuildGraph, on: VertexId, src: &str, name: &str| {
        g.add(Vertex::new(
            FileOp {
                base: Some(0),
                actions: vec![FileAction::Copy(Copy::new(1, vec![src.into()], "/app/"))],
            },
            vec![on, ctx],
            name,
        ))
        .unwrap()
    };
    let run = |g: &mut BuildGraph, on: VertexId, cmd: &str, name: &str| {
        g.add(Vertex::new(
            ExecOp::new(vec![cmd.into()], 0),
            vec![on],
            name,
        ))
        .unwrap()
    };
    let c1 = copy(&mut g, base, "go.mod", "[2/5] COPY go.mod");
    let r1 = run(&mut g, c1, "download", "[3/5] RUN download");
    let c2 = copy(&mut g, r1, "src/*.go", "[4/5] COPY src");
    let r2 = run(&mut g, c2, "build", "[5/5] RUN build");
    (g, r2)
}

async fn build(dir: &Path, state: &Path) -> Vec<String> {
    let exec = Arc::new(DirExecutor {
        context_dir: dir.to_owned(),
        checksummer: ContextChecksummer::open(dir, Some(state)).unwrap(),
        ran: Mutex::new(Vec::new()),
    });
    let solver = Solver::new(
        exec.clone(),
        CacheIndex::open(&rbuild_snapshotter::layout::StateLayout::new(state).cache_index())
            .unwrap(),
        2,
    );
    let (g, target) = graph();
    let (tx, _rx) = progress::channel();
    solver.solve(&g, &[target], tx).await.unwrap();
    let mut ran = exec.ran.lock().unwrap().clone();
    ran.sort();
    ran
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_reruns_nothing_and_one_change_reruns_from_its_copy() {
    let ctx = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    write(ctx.path(), "go.mod", "module x");
    write(ctx.path(), "src/main.go", "package main");
    write(ctx.path(), "src/util.go", "package main // util");
    write(ctx.path(), "README.md", "not copied");

    assert_eq!(build(ctx.path(), state.path()).await.len(), 6);

    // mtime-only change of every file: nothing but the context load.
    for rel in ["go.mod", "src/main.go", "src/util.go", "README.md"] {
        let f = std::fs::File::options()
            .write(true)
            .open(ctx.path().join(rel))
            .unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(60))
            .unwrap();
    }
    assert_eq!(
        build(ctx.path(), state.path()).await,
        vec!["load build context"]
    );

    // A file nobody copies.
    write(ctx.path(), "README.md", "changed");
    assert_eq!(
        build(ctx.path(), state.path()).await,
        vec!["load build context"]
    );

    // A file the second COPY selects: from that COPY on.
    write(ctx.path(), "src/util.go", "package main // changed");
    assert_eq!(
        build(ctx.path(), state.path()).await,
        vec!["[4/5] COPY src", "[5/5] RUN build", "load build context"]
    );

    // A new file matching the glob counts too.
    write(ctx.path(), "src/new.go", "package main // new");
    assert_eq!(
        build(ctx.path(), state.path()).await,
        vec!["[4/5] COPY src", "[5/5] RUN build", "load build context"]
    );

    // The first COPY's file: everything after it.
    write(ctx.path(), "go.mod", "module y");
    assert_eq!(
        build(ctx.path(), state.path()).await,
        vec![
            "[2/5] COPY go.mod",
            "[3/5] RUN download",
            "[4/5] COPY src",
            "[5/5] RUN build",
            "load build context"
        ]
    );
}

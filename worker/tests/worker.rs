//! The local worker end to end: graphs built by hand with `solver::ops` over
//! the conformance busybox base, solved with the real `Solver`, exported into
//! an image store and checked by unpacking. Needs root (overlay mounts and
//! namespaces) and busybox; fails saying what is missing otherwise.

#![allow(clippy::many_single_char_names)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbuild_image::import::{ImportOptions, import};
use rbuild_image::{Reference, Store};
use rbuild_ops::{BuildGraph, ImagePin, Vertex, VertexId};
use rbuild_ops::{
    CacheSharing, Chmod, Chown, Copy, ExecOp, FileAction, FileOp, Mount, MountKind, SourceOp,
    UserRef,
};
use rbuild_solver::{CacheIndex, Event, ExecError, SolveError, Solver, progress};
use rbuild_worker::{ExportOptions, LocalWorker, WorkerOptions};

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    store: Arc<Store>,
    ctx: PathBuf,
}

fn base_script() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/examples/busybox-base.sh"
    ))
}

fn setup() -> Env {
    assert!(
        nix::unistd::geteuid().is_root(),
        "cannot run: the worker tests need root (overlay mounts, namespaces)"
    );
    assert!(
        base_script().exists() && which("busybox").is_some(),
        "cannot run: testdata/examples/busybox-base.sh or busybox is missing"
    );
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let tar = root.join("base.tar");
    let st = std::process::Command::new("sh")
        .arg(base_script())
        .arg(&tar)
        .status()
        .unwrap();
    assert!(st.success());
    let store = Store::open(root.join("store")).unwrap();
    import(
        &store,
        std::fs::File::open(&tar).unwrap(),
        ImportOptions {
            tag: Some(Reference::parse("busybox:latest").unwrap()),
            source: "base.tar".into(),
            created: Some(1_600_000_000),
            ..ImportOptions::default()
        },
    )
    .unwrap();
    let ctx = root.join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    Env {
        _tmp: tmp,
        root,
        store: Arc::new(store),
        ctx,
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(cmd))
            .find(|p| p.exists())
    })
}

fn write(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

impl Env {
    fn worker(&self) -> LocalWorker {
        self.worker_with(WorkerOptions::default())
    }

    fn worker_with(&self, mut opts: WorkerOptions) -> LocalWorker {
        opts.state_root = self.root.join("state");
        opts.contexts.insert("context".into(), self.ctx.clone());
        LocalWorker::new(Arc::clone(&self.store), opts).unwrap()
    }

    /// Solves and returns (result of target, names of executed vertices).
    async fn solve(
        &self,
        worker: &LocalWorker,
        g: &BuildGraph,
        target: VertexId,
    ) -> Result<(rbuild_solver::ResultRef, Vec<String>), SolveError> {
        let cache = CacheIndex::open(
            &rbuild_snapshotter::layout::StateLayout::new(self.root.join("state")).cache_index(),
        )
        .unwrap();
        let solver = Solver::new(Arc::new(worker.clone()), cache, 2);
        let (tx, mut rx) = progress::channel();
        let out = solver.solve(g, &[target], tx).await;
        let mut names = HashMap::new();
        let mut ran = Vec::new();
        while let Ok(e) = rx.try_recv() {
            match e {
                Event::VertexStarted { id, name, .. } => {
                    names.insert(id, name);
                }
                Event::VertexDone { id, .. } => ran.push(names[&id].clone()),
                _ => {}
            }
        }
        ran.sort();
        let out = out?;
        Ok((out.get(target).unwrap().result.clone(), ran))
    }

    fn export(
        &self,
        worker: &LocalWorker,
        r: &rbuild_solver::ResultRef,
        history: usize,
    ) -> PathBuf {
        let base = self.store.find("busybox:latest").unwrap();
        let base_cfg: serde_json::Value =
            serde_json::from_slice(&self.store.read_blob(&base.id).unwrap()).unwrap();
        let mut cfg = base_cfg.clone();
        let hist = cfg["history"].as_array_mut().unwrap();
        for i in 0..history {
            hist.push(serde_json::json!({"created_by": format!("step {i}")}));
        }
        let id = worker
            .export_image(
                &self.store,
                r,
                &ExportOptions {
                    config: rbuild_image::ImageConfig::from_slice(
                        &serde_json::to_vec(&cfg).unwrap(),
                    )
                    .unwrap(),
                    base_image: Some(base.id.clone()),
                    tags: vec![Reference::parse("out:latest").unwrap()],
                    ..ExportOptions::default()
                },
            )
            .unwrap();
        let img = self.store.image(&id).unwrap();
        let dest = self.root.join(format!("unpacked-{}", &id.hex()[..12]));
        std::fs::create_dir_all(&dest).unwrap();
        self.store
            .unpack(&img, &dest, &rbuild_snapshotter::ApplyOptions::default())
            .unwrap();
        dest
    }
}

fn image(g: &mut BuildGraph, env: &Env) -> VertexId {
    let id = env.store.find("busybox:latest").unwrap().id;
    g.add(Vertex::new(
        SourceOp::Image {
            reference: "docker.io/library/busybox:latest".into(),
            pin: ImagePin::ImageId(id.to_string()),
            platform: None,
            chain_id: None,
        },
        vec![],
        "FROM busybox",
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

fn run(g: &mut BuildGraph, base: VertexId, script: &str) -> VertexId {
    let op = ExecOp::new(vec!["/bin/sh".into(), "-c".into(), script.into()], 0);
    g.add(Vertex::new(op, vec![base], format!("RUN {script}")))
        .unwrap()
}

fn copy(g: &mut BuildGraph, base: VertexId, src: VertexId, c: Copy, name: &str) -> VertexId {
    g.add(Vertex::new(
        FileOp {
            base: Some(0),
            actions: vec![FileAction::Copy(c)],
        },
        vec![base, src],
        name,
    ))
    .unwrap()
}

fn layer_names(store: &Store, image_id: &rbuild_image::Digest, index: usize) -> Vec<String> {
    let img = store.image(image_id).unwrap();
    let d = &img.diff_ids()[index];
    let mut a = tar::Archive::new(store.open_blob(d).unwrap());
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_writes_files_and_a_deleted_base_file_is_a_whiteout() {
    let env = setup();
    let w = env.worker();
    let mut g = BuildGraph::new();
    let base = image(&mut g, &env);
    let a = run(
        &mut g,
        base,
        "echo hello > /hello && mkdir -p /d/e && echo x > /d/e/f",
    );
    let b = run(&mut g, a, "true");
    let c = run(&mut g, b, "rm /etc/group");
    let (r, ran) = env.solve(&w, &g, c).await.unwrap();
    assert_eq!(ran.len(), 4, "{ran:?}");
    let dir = env.export(&w, &r, 3);
    assert_eq!(
        std::fs::read_to_string(dir.join("hello")).unwrap(),
        "hello\n"
    );
    assert_eq!(std::fs::read_to_string(dir.join("d/e/f")).unwrap(), "x\n");
    assert!(dir.join("bin/busybox").exists());
    assert!(!dir.join("etc/group").exists());
    assert!(dir.join("etc/passwd").exists());

    let img = env.store.find("out:latest").unwrap();
    // base + RUN echo + RUN rm; `RUN true` wrote nothing.
    assert_eq!(img.diff_ids().len(), 3);
    assert!(layer_names(&env.store, &img.id, 2).contains(&"etc/.wh.group".to_owned()));
    let cfg: serde_json::Value =
        serde_json::from_slice(&env.store.read_blob(&img.id).unwrap()).unwrap();
    let empties: Vec<bool> = cfg["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.get("empty_layer").and_then(serde_json::Value::as_bool) == Some(true))
        .collect();
    assert_eq!(empties, [false, false, true, false]);
    // The base layer is the imported blob, reused.
    let base_img = env.store.find("busybox:latest").unwrap();
    assert_eq!(img.diff_ids()[0], base_img.diff_ids()[0]);

    // A second export of the same snapshots reuses the layers written the
    // first time: a file slipped into the top snapshot afterwards is not
    // diffed again, so the image is the same.
    let top = LocalWorker::snapshot_of(&r).unwrap();
    std::fs::write(w.snapshots().upper(&top).join("late"), "x").unwrap();
    let again = w
        .export_image(
            &env.store,
            &r,
            &ExportOptions {
                config: rbuild_image::ImageConfig::from_slice(
                    &env.store.read_blob(&img.id).unwrap(),
                )
                .unwrap(),
                base_image: Some(base_img.id.clone()),
                tags: vec![],
                keep_empty_layers: false,
            },
        )
        .unwrap();
    assert_eq!(env.store.image(&again).unwrap().diff_ids(), img.diff_ids());
    std::fs::remove_file(w.snapshots().upper(&top).join("late")).unwrap();

    // `--output type=local`: the merged tree.
    let local = env.root.join("local-out");
    w.export_dir(&r, &local).unwrap();
    assert_eq!(
        std::fs::read_to_string(local.join("hello")).unwrap(),
        "hello\n"
    );
    assert!(!local.join("etc/group").exists());
    assert!(local.join("etc/passwd").exists());

    // Classic-builder style: the empty step keeps an (empty) layer.
    let id = w
        .export_image(
            &env.store,
            &r,
            &ExportOptions {
                config: {
                    let mut c: serde_json::Value =
                        serde_json::from_slice(&env.store.read_blob(&base_img.id).unwrap())
                            .unwrap();
                    for _ in 0..3 {
                        c["history"]
                            .as_array_mut()
                            .unwrap()
                            .push(serde_json::json!({"created_by": "RUN"}));
                    }
                    rbuild_image::ImageConfig::from_slice(&serde_json::to_vec(&c).unwrap()).unwrap()
                },
                base_image: Some(base_img.id.clone()),
                tags: vec![],
                keep_empty_layers: true,
            },
        )
        .unwrap();
    let kept = env.store.image(&id).unwrap();
    assert_eq!(kept.diff_ids().len(), 4);
    let cfg: serde_json::Value =
        serde_json::from_slice(&env.store.read_blob(&id).unwrap()).unwrap();
    assert!(
        cfg["history"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h.get("empty_layer").is_none())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_context_globs_contents_dest_dirs_chown_chmod() {
    let env = setup();
    write(&env.ctx, "a.txt", "A");
    write(&env.ctx, "b.txt", "B");
    write(&env.ctx, "c.md", "C");
    write(&env.ctx, "secret.txt", "S");
    write(&env.ctx, "dir/x", "X");
    write(&env.ctx, "dir/sub/y", "Y");
    std::os::unix::fs::symlink("x", env.ctx.join("dir/link")).unwrap();
    std::fs::hard_link(env.ctx.join("dir/x"), env.ctx.join("dir/hard")).unwrap();
    std::fs::set_permissions(
        env.ctx.join("b.txt"),
        std::fs::Permissions::from_mode(0o751),
    )
    .unwrap();
    let ignore: rbuild_worker::IgnoreFilter =
        Arc::new(|rel: &Path, _dir: bool| rel == Path::new("secret.txt"));
    let w = env.worker_with(WorkerOptions {
        ignore: Some(ignore),
        ..WorkerOptions::default()
    });
    let mut g = BuildGraph::new();
    let base = image(&mut g, &env);
    let ctx = context(&mut g);
    let s1 = copy(
        &mut g,
        base,
        ctx,
        Copy::new(1, vec!["*.txt".into()], "/dst/"),
        "COPY *.txt /dst/",
    );
    let s2 = copy(
        &mut g,
        s1,
        ctx,
        Copy::new(1, vec!["dir".into()], "/d2"),
        "COPY dir /d2",
    );
    let mut owned = Copy::new(1, vec!["a.txt".into()], "/owned");
    owned.owner = Some(Chown {
        user: UserRef::Name("bin".into()),
        group: Some(UserRef::Name("daemon".into())),
    });
    owned.mode = Some(Chmod::Octal(0o640));
    let s3 = copy(&mut g, s2, ctx, owned, "COPY --chown a.txt /owned");
    let s4 = copy(
        &mut g,
        s3,
        ctx,
        Copy::new(1, vec!["c.md".into()], "/file-no-slash"),
        "COPY c.md",
    );
    // `COPY --parents dir/sub/y /p/`, as the frontend lowers it: the root's
    // contents, keeping what the path matches.
    let mut parents = Copy::new(1, vec!["/".into()], "/p/");
    parents.include_patterns = vec!["dir/sub/y".into()];
    parents.required_paths = vec!["/dir/sub/y".into()];
    let s5 = copy(&mut g, s4, ctx, parents, "COPY --parents dir/sub/y /p/");
    let mut clamped = Copy::new(1, vec!["a.txt".into()], "/clamped");
    clamped.timestamp = Some(1_000);
    let s6 = copy(&mut g, s5, ctx, clamped, "COPY a.txt /clamped");
    let (r, _) = env.solve(&w, &g, s6).await.unwrap();
    let dir = env.export(&w, &r, 6);

    assert_eq!(
        std::fs::read_to_string(dir.join("p/dir/sub/y")).unwrap(),
        "Y"
    );
    assert_eq!(
        std::fs::metadata(dir.join("clamped")).unwrap().mtime(),
        1_000
    );
    assert_eq!(std::fs::read_to_string(dir.join("dst/a.txt")).unwrap(), "A");
    let b = std::fs::metadata(dir.join("dst/b.txt")).unwrap();
    assert_eq!(b.mode() & 0o7777, 0o751);
    assert_eq!((b.uid(), b.gid()), (0, 0));
    assert!(
        !dir.join("dst/secret.txt").exists(),
        ".dockerignore applies"
    );
    assert!(!dir.join("dst/c.md").exists());
    // Directory contents, not the directory.
    assert_eq!(std::fs::read_to_string(dir.join("d2/x")).unwrap(), "X");
    assert_eq!(std::fs::read_to_string(dir.join("d2/sub/y")).unwrap(), "Y");
    assert_eq!(
        std::fs::read_link(dir.join("d2/link")).unwrap(),
        Path::new("x")
    );
    let (x, h) = (
        std::fs::metadata(dir.join("d2/x")).unwrap(),
        std::fs::metadata(dir.join("d2/hard")).unwrap(),
    );
    assert_eq!(x.ino(), h.ino(), "hard links are preserved");
    let o = std::fs::metadata(dir.join("owned")).unwrap();
    assert_eq!((o.uid(), o.gid(), o.mode() & 0o7777), (1, 2, 0o640));
    assert_eq!(
        std::fs::read_to_string(dir.join("file-no-slash")).unwrap(),
        "C"
    );

    // A missing source names the path; an ignored one is missing too.
    for missing in ["missing.txt", "secret.txt"] {
        let mut g = BuildGraph::new();
        let base = image(&mut g, &env);
        let ctx = context(&mut g);
        let s = copy(
            &mut g,
            base,
            ctx,
            Copy::new(1, vec![missing.into()], "/x"),
            "COPY",
        );
        let e = env.solve(&w, &g, s).await.unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("\"/{missing}\": not found")),
            "{e}"
        );
    }
}

fn tar_gz(entries: &[(&str, &str)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_another_chain_and_add_extracts_archives() {
    let env = setup();
    std::fs::write(
        env.ctx.join("a.tar.gz"),
        tar_gz(&[("top.txt", "T"), ("sub/in.txt", "I")]),
    )
    .unwrap();
    write(&env.ctx, "plain.txt", "just a file");
    let w = env.worker();
    let mut g = BuildGraph::new();
    let base = image(&mut g, &env);
    let other = run(
        &mut g,
        base,
        "mkdir /out && echo built > /out/f && rm /bin/ls",
    );
    let ctx = context(&mut g);
    let s1 = copy(
        &mut g,
        base,
        other,
        Copy::new(1, vec!["/out/f".into()], "/from/"),
        "COPY --from",
    );
    let mut add = Copy::new(1, vec!["a.tar.gz".into(), "plain.txt".into()], "/ex/");
    add.attempt_unpack = true;
    let s2 = copy(&mut g, s1, ctx, add, "ADD a.tar.gz plain.txt /ex/");
    let (r, _) = env.solve(&w, &g, s2).await.unwrap();
    let dir = env.export(&w, &r, 2);
    assert_eq!(
        std::fs::read_to_string(dir.join("from/f")).unwrap(),
        "built\n"
    );
    assert!(
        dir.join("bin/ls").exists(),
        "the other chain's changes stay there"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ex/top.txt")).unwrap(),
        "T"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ex/sub/in.txt")).unwrap(),
        "I"
    );
    assert!(!dir.join("ex/a.tar.gz").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("ex/plain.txt")).unwrap(),
        "just a file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_mount_persists_between_runs() {
    let env = setup();
    let w = env.worker();
    let cache = Mount {
        target: "/cache".into(),
        kind: MountKind::Cache {
            id: "c1".into(),
            sharing: CacheSharing::Locked,
            from: None,
            source: "/".into(),
            readonly: false,
            perms: None,
        },
    };
    for (i, want) in [(1, "1"), (2, "2")] {
        let mut g = BuildGraph::new();
        let base = image(&mut g, &env);
        let mut op = ExecOp::new(
            vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("echo run{i} >> /cache/log; wc -l < /cache/log | tr -d ' ' > /count"),
            ],
            0,
        );
        op.mounts.push(cache.clone());
        let v = g
            .add(Vertex::new(op, vec![base], "RUN --mount=type=cache"))
            .unwrap();
        let (r, _) = env.solve(&w, &g, v).await.unwrap();
        let dir = env.export(&w, &r, 1);
        assert_eq!(
            std::fs::read_to_string(dir.join("count")).unwrap().trim(),
            want
        );
        assert!(
            !dir.join("cache/log").exists(),
            "cache content is not in the image"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_run_reports_exit_code_and_last_lines() {
    let env = setup();
    let w = env.worker();
    let mut g = BuildGraph::new();
    let base = image(&mut g, &env);
    let v = run(
        &mut g,
        base,
        "for i in $(seq 1 30); do echo line$i; done; exit 3",
    );
    let e = env.solve(&w, &g, v).await.unwrap_err();
    let SolveError::Vertex { source, .. } = e else {
        panic!("{e}")
    };
    let ExecError::ProcessFailed {
        code, last_lines, ..
    } = source
    else {
        panic!("{source}")
    };
    assert_eq!(code, 3);
    assert_eq!(last_lines.len(), 20);
    assert_eq!(last_lines.last().unwrap(), "line30");
    assert_eq!(last_lines[0], "line11");
    // Nothing half-made is left: only the base layer snapshot.
    let kinds: Vec<String> = w
        .snapshots()
        .list()
        .unwrap()
        .into_iter()
        .map(|(_, i)| i.kind)
        .collect();
    assert_eq!(kinds, ["layer"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_solve_is_cached_and_a_changed_file_reruns_its_copy_and_dependents() {
    let env = setup();
    write(&env.ctx, "a.txt", "one");
    write(&env.ctx, "b.txt", "bee");
    let graph = || {
        let mut g = BuildGraph::new();
        let base = image(&mut g, &env);
        let ctx = context(&mut g);
        let s1 = copy(
            &mut g,
            base,
            ctx,
            Copy::new(1, vec!["b.txt".into()], "/b.txt"),
            "COPY b.txt",
        );
        let s2 = copy(
            &mut g,
            s1,
            ctx,
            Copy::new(1, vec!["a.txt".into()], "/a.txt"),
            "COPY a.txt",
        );
        let s3 = run(&mut g, s2, "cat /a.txt /b.txt > /ab");
        (g, s3)
    };
    let w = env.worker();
    let (g, t) = graph();
    let (_, ran) = env.solve(&w, &g, t).await.unwrap();
    assert_eq!(ran.len(), 5, "{ran:?}");
    let (g, t) = graph();
    let (_, ran) = env.solve(&env.worker(), &g, t).await.unwrap();
    assert_eq!(ran, ["load build context"]);

    write(&env.ctx, "a.txt", "two");
    let (g, t) = graph();
    let w = env.worker();
    let (r, ran) = env.solve(&w, &g, t).await.unwrap();
    assert_eq!(
        ran,
        [
            "COPY a.txt",
            "RUN cat /a.txt /b.txt > /ab",
            "load build context"
        ]
    );
    let dir = env.export(&w, &r, 3);
    assert_eq!(std::fs::read_to_string(dir.join("ab")).unwrap(), "twobee");
}

fn serve_once(body: &'static [u8]) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(4) {
            let mut s = s.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(body);
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_http_url_with_checksum() {
    let env = setup();
    let body: &'static [u8] = b"downloaded content\n";
    let port = serve_once(body);
    let sum = rbuild_snapshotter::Digest::of(body).to_string();
    let w = env.worker();
    let build = |checksum: String| {
        let mut g = BuildGraph::new();
        let base = image(&mut g, &env);
        let http = g
            .add(Vertex::new(
                SourceOp::Http {
                    url: format!("http://127.0.0.1:{port}/files/data.txt"),
                    checksum: Some(checksum),
                    filename: None,
                    chmod: None,
                },
                vec![],
                "http",
            ))
            .unwrap();
        let s = copy(
            &mut g,
            base,
            http,
            Copy::new(1, vec!["data.txt".into()], "/dl/"),
            "ADD url",
        );
        (g, s)
    };
    let (g, t) = build(sum);
    let (r, _) = env.solve(&w, &g, t).await.unwrap();
    let dir = env.export(&w, &r, 1);
    assert_eq!(std::fs::read(dir.join("dl/data.txt")).unwrap(), body);
    let m = std::fs::metadata(dir.join("dl/data.txt")).unwrap();
    assert_eq!(m.mode() & 0o777, 0o600);
    assert_eq!(m.mtime(), 1_445_412_480, "Last-Modified");

    let wrong = format!("sha256:{}", "0".repeat(64));
    let (g, t) = build(wrong);
    let e = env.solve(&w, &g, t).await.unwrap_err();
    assert!(e.to_string().contains("digest mismatch"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_mounts_bind_secret_tmpfs() {
    let env = setup();
    write(&env.ctx, "src/input.txt", "from context");
    let mut secrets = HashMap::new();
    secrets.insert("token".to_owned(), b"s3cr3t".to_vec());
    let w = env.worker_with(WorkerOptions {
        secrets,
        ..WorkerOptions::default()
    });
    let mut g = BuildGraph::new();
    let base = image(&mut g, &env);
    let ctx = context(&mut g);
    let mut op = ExecOp::new(
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "cat /src/input.txt > /out1; cat /run/secrets/token > /out2; \
             echo t > /tmpfs/x && cat /tmpfs/x > /out3; \
             echo scribble > /rw/input.txt && cat /rw/input.txt > /out4; \
             cat /mnt/a.txt > /out5; echo \"$TOKEN\" > /out6"
                .into(),
        ],
        0,
    );
    op.mounts = vec![
        Mount {
            target: "/src".into(),
            kind: MountKind::Bind {
                input: 1,
                selector: "src".into(),
                readonly: true,
            },
        },
        Mount {
            target: "/run/secrets/token".into(),
            kind: MountKind::Secret {
                id: "token".into(),
                required: true,
                mode: 0o400,
                uid: 0,
                gid: 0,
                env: None,
            },
        },
        Mount {
            // A secret as an environment variable only: no file.
            target: String::new(),
            kind: MountKind::Secret {
                id: "token".into(),
                required: true,
                mode: 0o400,
                uid: 0,
                gid: 0,
                env: Some("TOKEN".into()),
            },
        },
        Mount {
            target: "/tmpfs".into(),
            kind: MountKind::Tmpfs { size: None },
        },
        Mount {
            target: "/mnt/a.txt".into(),
            kind: MountKind::Bind {
                input: 1,
                selector: "src/input.txt".into(),
                readonly: true,
            },
        },
        Mount {
            target: "/rw".into(),
            kind: MountKind::Bind {
                input: 1,
                selector: "src".into(),
                readonly: false,
            },
        },
    ];
    let v = g
        .add(Vertex::new(op.clone(), vec![base, ctx], "RUN --mount"))
        .unwrap();
    let (r, _) = env.solve(&w, &g, v).await.unwrap();
    let dir = env.export(&w, &r, 1);
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
    assert_eq!(read("out1"), "from context");
    assert_eq!(read("out2"), "s3cr3t");
    assert_eq!(read("out3"), "t\n");
    assert_eq!(read("out4"), "scribble\n");
    assert_eq!(read("out5"), "from context");
    assert_eq!(read("out6"), "s3cr3t\n");
    // Mount point directories stay (as BuildKit leaves them), file stubs do not.
    for d in ["src", "tmpfs", "rw", "mnt"] {
        assert!(dir.join(d).is_dir(), "/{d}");
        assert_eq!(std::fs::read_dir(dir.join(d)).unwrap().count(), 0, "/{d}");
    }
    assert!(!dir.join("run/secrets/token").exists());
    // Writes to a read-write bind are discarded.
    assert_eq!(
        std::fs::read_to_string(env.ctx.join("src/input.txt")).unwrap(),
        "from context"
    );

    // A required secret that was not given (another command: the first one
    // is cached, secrets are not part of keys).
    op.args[2].push(' ');
    let mut g = BuildGraph::new();
    let base = image(&mut g, &env);
    let ctx = context(&mut g);
    let v = g
        .add(Vertex::new(op, vec![base, ctx], "RUN --mount"))
        .unwrap();
    let e = env.solve(&env.worker(), &g, v).await.unwrap_err();
    assert!(e.to_string().contains("secret token: not found"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_actions_symlinked_sources_and_opaque_dirs() {
    let env = setup();
    write(&env.ctx, "real.txt", "real");
    write(&env.ctx, "skip.log", "ignored");
    write(&env.ctx, "keep/k", "k");
    std::os::unix::fs::symlink("real.txt", env.ctx.join("alias")).unwrap();
    let w = env.worker();
    let mut g = BuildGraph::new();
    let base = image(&mut g, &env);
    let ctx = context(&mut g);
    let opq = run(
        &mut g,
        base,
        "rm -rf /var && mkdir /var && echo new > /var/only",
    );
    // The symlink given as a source is followed.
    let s1 = copy(
        &mut g,
        opq,
        ctx,
        Copy::new(1, vec!["alias".into()], "/alias"),
        "COPY alias",
    );
    let mut all = Copy::new(1, vec![".".into()], "/app/");
    all.exclude_patterns = vec!["*.log".into()];
    all.mode = Some(Chmod::Symbolic("u=rwx,go=r".into()));
    let s2 = copy(&mut g, s1, ctx, all, "COPY --exclude=*.log . /app/");
    let actions = g
        .add(Vertex::new(
            FileOp {
                base: Some(0),
                actions: vec![
                    FileAction::Mkdir(rbuild_ops::Mkdir {
                        path: "/w/x/y".into(),
                        mode: 0o750,
                        make_parents: true,
                        owner: Some(Chown {
                            user: UserRef::Name("nobody".into()),
                            group: None,
                        }),
                        timestamp: None,
                    }),
                    FileAction::Mkfile(rbuild_ops::Mkfile {
                        path: "/w/x/y/file".into(),
                        data: b"heredoc\n".to_vec(),
                        mode: 0o644,
                        owner: None,
                        timestamp: Some(1_000),
                    }),
                    FileAction::Rm(rbuild_ops::Rm {
                        path: "/app/keep".into(),
                        allow_not_found: false,
                        allow_wildcard: false,
                    }),
                ],
            },
            vec![s2],
            "file actions",
        ))
        .unwrap();
    let (r, _) = env.solve(&w, &g, actions).await.unwrap();
    let dir = env.export(&w, &r, 4);
    let alias = std::fs::symlink_metadata(dir.join("alias")).unwrap();
    assert!(alias.is_file());
    assert_eq!(std::fs::read_to_string(dir.join("alias")).unwrap(), "real");
    assert_eq!(
        std::fs::read_to_string(dir.join("app/real.txt")).unwrap(),
        "real"
    );
    assert_eq!(
        std::fs::metadata(dir.join("app/real.txt")).unwrap().mode() & 0o777,
        0o744
    );
    assert!(
        std::fs::symlink_metadata(dir.join("app/alias"))
            .unwrap()
            .is_symlink()
    );
    assert!(!dir.join("app/skip.log").exists());
    assert!(!dir.join("app/keep").exists());
    let y = std::fs::metadata(dir.join("w/x/y")).unwrap();
    assert_eq!((y.uid(), y.gid(), y.mode() & 0o777), (65534, 65534, 0o750));
    let f = std::fs::metadata(dir.join("w/x/y/file")).unwrap();
    assert_eq!(f.mtime(), 1_000);
    // The replaced /var is opaque: the base's files are gone.
    assert!(!dir.join("var/tmp").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("var/only")).unwrap(),
        "new\n"
    );
    let img = env.store.find("out:latest").unwrap();
    assert!(
        layer_names(&env.store, &img.id, 1).contains(&"var/.wh..wh..opq".to_owned()),
        "{:?}",
        layer_names(&env.store, &img.id, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_cancels_running_steps_and_leaves_no_half_made_snapshot() {
    let env = setup();
    let w = env.worker();
    let mut g = BuildGraph::new();
    let base = image(&mut g, &env);
    // Without cancellation this test would wait ten minutes.
    let slow = run(&mut g, base, "echo started; sleep 600");
    let fail = run(&mut g, base, "sleep 1; exit 1");
    let both = g
        .add(Vertex::new(
            FileOp {
                base: Some(0),
                actions: vec![FileAction::Copy(Copy::new(1, vec!["/etc".into()], "/x/"))],
            },
            vec![slow, fail],
            "join",
        ))
        .unwrap();
    let e = env.solve(&w, &g, both).await.unwrap_err();
    assert!(e.to_string().contains("exit code: 1"), "{e}");
    // The killed step's snapshot is thrown away once its thread returns.
    let snaps = w.snapshots().root().to_path_buf();
    let mut leftovers = Vec::new();
    for _ in 0..600 {
        leftovers = std::fs::read_dir(&snaps)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("tmp-"))
            .collect();
        if leftovers.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A tar of one regular file `name` holding `content`.
fn one_file_tar(name: &str, content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, content).unwrap();
    b.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reads_the_pinned_image_not_what_the_tag_names_now() {
    let env = setup();
    let w = env.worker();
    let mut g = BuildGraph::new();
    // Planned against busybox:latest as it was...
    let base = image(&mut g, &env);
    let probe = run(
        &mut g,
        base,
        "test -x /bin/busybox && test ! -e /moved && echo pinned > /r",
    );
    // ...then the tag moves to another image before the solve.
    import(
        &env.store,
        std::io::Cursor::new(one_file_tar("moved", b"other image\n")),
        ImportOptions {
            tag: Some(Reference::parse("busybox:latest").unwrap()),
            source: "other.tar".into(),
            created: Some(1_600_000_001),
            ..ImportOptions::default()
        },
    )
    .unwrap();
    let (r, _) = env.solve(&w, &g, probe).await.unwrap();
    let dir = env.export(&w, &r, 1);
    assert_eq!(std::fs::read_to_string(dir.join("r")).unwrap(), "pinned\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_image_that_is_gone_is_an_error_not_a_name_lookup() {
    let env = setup();
    let w = env.worker();
    let mut g = BuildGraph::new();
    let gone = format!("sha256:{}", "ab".repeat(32));
    let base = g
        .add(Vertex::new(
            SourceOp::Image {
                // The name resolves in the store; the pin does not.
                reference: "docker.io/library/busybox:latest".into(),
                pin: ImagePin::ImageId(gone.clone()),
                platform: None,
                chain_id: None,
            },
            vec![],
            "FROM busybox",
        ))
        .unwrap();
    let e = env.solve(&w, &g, base).await.unwrap_err().to_string();
    assert!(
        e.contains(&gone) && e.contains("not in the local store"),
        "{e}"
    );
    // A manifest pin needs a registry.
    let mut g = BuildGraph::new();
    let m = g
        .add(Vertex::new(
            SourceOp::Image {
                reference: "docker.io/library/busybox:latest".into(),
                pin: ImagePin::Manifest(gone.clone()),
                platform: None,
                chain_id: None,
            },
            vec![],
            "FROM busybox",
        ))
        .unwrap();
    let e = env.solve(&w, &g, m).await.unwrap_err().to_string();
    assert!(e.contains("pinned by manifest digest"), "{e}");
}

//! Planning, solving and exporting a build: the part of `rbuild build` that needs
//! the frontend's planner (`rbuild_frontend::build_plan`) and the solver's local
//! worker (`rbuild_worker::LocalWorker`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use rbuild_frontend::dockerignore::PatternMatcher;
use rbuild_frontend::{
    BuildOptions, Entitlements, ImageResolver, Platform, ResolveError, ResolvedImage, build_plan,
};
use rbuild_image::{Digest, Store};
use rbuild_ops::{NetworkMode, VertexId};
use rbuild_solver::progress::Event;
use rbuild_solver::{CacheIndex, ExecError, ResultRef, SolveError, Solver};
use rbuild_worker::{ExportOptions, LocalWorker, WorkerOptions};

use super::{
    BuildFailure, Built, Entitlement, Network, OutputSpec, Renderer, Request, StepFailure,
};
use crate::cmd::PendingOutput;

/// Base images come from the local store (no pulling). Each is held by this
/// process's lease from the moment it is resolved: a concurrent `image prune`
/// or `rmi` leaves it, its config and its layers until the build ends.
struct StoreResolver<'a>(&'a Store);

impl ImageResolver for StoreResolver<'_> {
    fn resolve(&self, reference: &str, _: &Platform) -> Result<ResolvedImage, ResolveError> {
        let img = self.0.resolve_and_hold(reference).map_err(|e| {
            ResolveError(format!(
                "image not found in the local store ({e}); pull, load or import it first"
            ))
        })?;
        Ok(ResolvedImage {
            reference: reference.to_owned(),
            digest: Some(img.id.to_string()),
            config: img.config,
        })
    }
}

/// `.dockerignore` for the context reader, with moby's re-inclusion rules.
struct Ignore(PatternMatcher);

impl rbuild_worker::context::PathFilter for Ignore {
    fn is_excluded(&self, rel: &Path, _is_dir: bool) -> bool {
        self.0.matches(&rel.to_string_lossy())
    }
    fn descend_excluded_dir(&self, rel: &Path) -> bool {
        !self.0.can_skip_excluded_dir(&rel.to_string_lossy())
    }
}

fn source_line(src: &str, line: usize) -> String {
    src.lines()
        .nth(line.saturating_sub(1))
        .map(|l| format!("\n {line:>4} | {l}"))
        .unwrap_or_default()
}

pub fn build(req: &Request, progress: &mut Renderer) -> Result<Built, BuildFailure> {
    let store = Arc::new(
        Store::open(&req.state_root)
            .with_context(|| format!("opening the image store {}", req.state_root.display()))?,
    );
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse::<i64>().ok());
    let opts = BuildOptions {
        dockerfile_path: req.dockerfile_name.clone(),
        build_args: req.build_args.clone(),
        target: req.target.clone(),
        labels: req.labels.clone(),
        no_cache: req.no_cache,
        no_cache_filter: req.no_cache_filter.clone(),
        network: match req.network {
            Some(Network::Host) => NetworkMode::Host,
            Some(Network::None) => NetworkMode::None,
            None => NetworkMode::Sandbox,
        },
        allow: Entitlements {
            network_host: req.allow.contains(&Entitlement::NetworkHost),
            security_insecure: req.allow.contains(&Entitlement::SecurityInsecure),
        },
        dockerignore: req
            .ignore
            .as_ref()
            .map(|(_, p)| p.clone())
            .unwrap_or_default(),
        source_date_epoch: epoch,
        ..BuildOptions::default()
    };
    let plan = build_plan(&req.dockerfile, &opts, &StoreResolver(&store)).map_err(|e| {
        // With a column: rendered like a parse error, the line and a caret under it.
        if let Some(span) = e.span() {
            let diagnostic = rbuild_parser::ParseError {
                line: span.start_line,
                column: span.start_column,
                span,
                message: e.message(),
                help: None,
            };
            return BuildFailure::Dockerfile(
                diagnostic.render(&req.dockerfile_name, &req.dockerfile_src),
            );
        }
        let at = e
            .line()
            .map(|l| source_line(&req.dockerfile_src, l))
            .unwrap_or_default();
        BuildFailure::Other(anyhow!("{e}{at}"))
    })?;
    for w in &plan.warnings {
        progress.println(&format!("WARNING: {w}"));
    }

    let ignore = match &req.ignore {
        Some((file, patterns)) if !patterns.is_empty() => {
            let pm =
                PatternMatcher::new(patterns).map_err(|e| anyhow!("{}: {e}", file.display()))?;
            Some(Arc::new(Ignore(pm)) as rbuild_worker::IgnoreFilter)
        }
        _ => None,
    };
    let worker = LocalWorker::new(
        Arc::clone(&store),
        WorkerOptions {
            state_root: req.state_root.clone(),
            contexts: HashMap::from([("context".to_owned(), req.context.clone())]),
            ignore,
            secrets: req.secrets.clone(),
            source_date_epoch: epoch.and_then(|e| u64::try_from(e).ok()),
        },
    )
    .map_err(|e| anyhow!("{e}"))?;
    worker.check_support().map_err(|e| anyhow!("{e}"))?;
    let cache = CacheIndex::open(&req.state_root).map_err(|e| anyhow!("{e}"))?;
    let solver = Solver::new(Arc::new(worker.clone()), cache, req.jobs).with_no_cache(req.no_cache);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(req.jobs.max(2))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let solved = rt.block_on(async {
        let (tx, mut rx) = rbuild_solver::progress::channel();
        let targets = [plan.target];
        let mut solve = Box::pin(solver.solve(&plan.graph, &targets, tx));
        let mut interrupted = std::pin::pin!(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = async { match &mut term { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        });
        let result = loop {
            tokio::select! {
                Some(ev) = rx.recv() => progress.handle(&ev),
                r = &mut solve => break Some(r),
                () = &mut interrupted => break None,
            }
        };
        // Dropping the solve (on interrupt) cancels it: the worker kills its
        // processes and removes half-made snapshots.
        drop(solve);
        while let Ok(ev) = rx.try_recv() {
            progress.handle(&ev);
        }
        result
    });
    let outputs = match solved {
        None => return Err(anyhow!("interrupted").into()),
        Some(Ok(o)) => o,
        Some(Err(SolveError::Vertex {
            id,
            name,
            location,
            inputs,
            source,
        })) => {
            let kept: Vec<String> = progress
                .step(id)
                .map(|s| s.last_lines.iter().cloned().collect())
                .unwrap_or_default();
            let (command, last_lines) = match &source {
                ExecError::ProcessFailed {
                    command,
                    code,
                    last_lines,
                } => (
                    Some((command.clone(), *code)),
                    if last_lines.is_empty() {
                        kept
                    } else {
                        last_lines.clone()
                    },
                ),
                _ => (None, kept),
            };
            let last_good = inputs
                .first()
                .and_then(|r| save_last_good(&worker, &store, r, &plan.image).ok());
            return Err(BuildFailure::Step(Box::new(StepFailure {
                name,
                location,
                command,
                error: source.to_string(),
                last_lines: last_lines
                    .iter()
                    .skip(last_lines.len().saturating_sub(crate::progress::KEEP_LINES))
                    .cloned()
                    .collect(),
                last_good,
            })));
        }
        Some(Err(e)) => return Err(anyhow!("{e}").into()),
    };
    let target = outputs
        .get(plan.target)
        .ok_or_else(|| anyhow!("internal error: the target was not solved"))?
        .result
        .clone();

    // Timestamps: what SOURCE_DATE_EPOCH gave (the frontend set those), else the
    // time the target's snapshot was made, so a fully cached rebuild gives the
    // same image ID, as with BuildKit.
    let mut plan = plan;
    if plan.image.created.is_none() {
        let (secs, nanos) = LocalWorker::snapshot_of(&target)
            .and_then(|id| worker.snapshots().info(&id).ok())
            .and_then(|info| info.created)
            .unwrap_or_else(rbuild_image::time::now);
        let created = rbuild_image::time::format_rfc3339(secs, nanos);
        let base_entries = plan.base.as_ref().map_or(0, |b| b.config.history.len());
        for h in plan.image.history.iter_mut().skip(base_entries) {
            if h.created.is_none() {
                h.created = Some(created.clone());
            }
        }
        plan.image.created = Some(created);
    }
    let plan = plan;

    // The export is reported as one more vertex, after the graph's, named and
    // phased as BuildKit reports it.
    let export_vertex = VertexId(u32::try_from(plan.graph.len()).unwrap_or(u32::MAX));
    let export_name = match &req.output {
        OutputSpec::Store => "exporting to image",
        OutputSpec::Docker(_) => "exporting to docker image format",
        OutputSpec::Oci(_) => "exporting to oci image format",
        OutputSpec::Tar(_) => "exporting to client tarball",
        OutputSpec::Local(_) => "exporting to client directory",
    };
    progress.handle(&Event::VertexStarted {
        id: export_vertex,
        name: export_name.to_owned(),
        location: None,
    });
    let started = std::time::Instant::now();
    let exported = export(
        req,
        &plan,
        &worker,
        &store,
        &target,
        &mut Phases {
            progress,
            id: export_vertex,
        },
    );
    match &exported {
        Ok(_) => progress.handle(&Event::VertexDone {
            id: export_vertex,
            duration: started.elapsed(),
        }),
        Err(e) => progress.handle(&Event::VertexFailed {
            id: export_vertex,
            error: format!("{e:#}"),
        }),
    }
    if exported.is_ok() {
        rbuild_worker::gc::after_build(&req.state_root, &store)
            .context("collecting the build cache")?;
    }
    Ok(Built {
        id: exported?,
        warnings: Vec::new(),
    })
}

/// Reports the phases of the export vertex.
struct Phases<'a> {
    progress: &'a mut Renderer,
    id: VertexId,
}

impl Phases<'_> {
    fn status(&mut self, name: &str, completed: bool) {
        self.progress.handle(&Event::VertexStatus {
            id: self.id,
            name: name.to_owned(),
            completed,
        });
    }

    /// Runs `f` as the phase `name`.
    fn phase<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        self.status(name, false);
        let r = f();
        self.status(name, true);
        r
    }
}

/// Writes `dest` through a temporary file renamed into place (`sending
/// tarball`, then `renaming to DEST`): `dest` is complete or absent.
fn write_output(
    req: &Request,
    dest: &Path,
    phases: &mut Phases<'_>,
    write: impl FnOnce(std::io::BufWriter<std::fs::File>) -> anyhow::Result<std::fs::File>,
) -> anyhow::Result<()> {
    let (pending, file) = PendingOutput::create(&req.state_root, dest, "output")
        .with_context(|| format!("writing {}", dest.display()))?;
    phases.status("sending tarball", false);
    let file = write(std::io::BufWriter::with_capacity(1 << 20, file))
        .with_context(|| format!("writing {}", dest.display()))?;
    phases.status("sending tarball", true);
    phases.phase(&format!("renaming to {}", dest.display()), || {
        pending
            .persist(&file)
            .with_context(|| format!("writing {}", dest.display()))
    })
}

/// The export of the solved `target` to where `--output` says.
fn export(
    req: &Request,
    plan: &rbuild_frontend::BuildPlan,
    worker: &LocalWorker,
    store: &Store,
    target: &ResultRef,
    phases: &mut Phases<'_>,
) -> anyhow::Result<Option<Digest>> {
    let export_image =
        |tags: Vec<rbuild_image::Reference>, phases: &mut Phases<'_>| -> anyhow::Result<Digest> {
            worker
                .export_image_with_status(
                    store,
                    target,
                    &ExportOptions {
                        config: plan.image.clone(),
                        base_image: plan
                            .base
                            .as_ref()
                            .and_then(|b| b.digest.as_deref())
                            .and_then(|d| Digest::parse(d).ok()),
                        tags,
                        // BuildKit exports a layer for every step that makes one, even
                        // when its diff is empty; keeping them keeps the history and
                        // the frontend's layer_vertices aligned.
                        keep_empty_layers: true,
                    },
                    &mut |name, completed| phases.status(name, completed),
                )
                .map_err(|e| anyhow!("exporting the image: {e}"))
        };
    Ok(match &req.output {
        OutputSpec::Store => Some(export_image(req.tags.clone(), phases)?),
        OutputSpec::Docker(dest) | OutputSpec::Oci(dest) => {
            // Held by this process since its commit: a prune cannot take it
            // away while it is written out.
            let id = export_image(Vec::new(), phases)?;
            let image = store.image(&id).map_err(|e| anyhow!("{e}"))?;
            write_output(req, dest, phases, |out| {
                let out = rbuild_image::archive::save(
                    store,
                    &[rbuild_image::archive::SaveItem {
                        image,
                        tags: req.tags.clone(),
                    }],
                    out,
                    &rbuild_image::archive::SaveOptions::default(),
                )
                .map_err(|e| anyhow!("{e}"))?;
                Ok(out
                    .into_inner()
                    .map_err(std::io::IntoInnerError::into_error)?)
            })?;
            Some(id)
        }
        OutputSpec::Local(dest) => {
            fs_err::create_dir_all(dest)?;
            phases.phase("copying files", || {
                worker
                    .export_dir(target, dest)
                    .map_err(|e| anyhow!("exporting to {}: {e}", dest.display()))
            })?;
            None
        }
        OutputSpec::Tar(dest) => {
            // Under the state root, swept if this process dies.
            let tmp = tempfile::Builder::new()
                .prefix(&store.temp_prefix("export").map_err(|e| anyhow!("{e}"))?)
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .tempdir_in(store.tmp_dir())
                .context("creating a temporary directory")?;
            phases.phase("copying files", || {
                worker
                    .export_dir(target, tmp.path())
                    .map_err(|e| anyhow!("exporting the root filesystem: {e}"))
            })?;
            write_output(req, dest, phases, |out| {
                let mut ar = tar::Builder::new(out);
                ar.follow_symlinks(false);
                ar.append_dir_all(".", tmp.path())?;
                Ok(ar
                    .into_inner()?
                    .into_inner()
                    .map_err(std::io::IntoInnerError::into_error)?)
            })?;
            None
        }
    })
}

/// The state before the failing step as a dangling image (the final stage's
/// config), so `rbuild run ID sh` opens a shell there. Returns its short ID.
fn save_last_good(
    worker: &LocalWorker,
    store: &Store,
    result: &ResultRef,
    config: &rbuild_oci::ImageConfig,
) -> anyhow::Result<String> {
    LocalWorker::snapshot_of(result).ok_or_else(|| anyhow!("not a snapshot"))?;
    let id = worker
        .export_image(
            store,
            result,
            &ExportOptions {
                config: config.clone(),
                base_image: None,
                tags: Vec::new(),
                keep_empty_layers: true,
            },
        )
        .map_err(|e| anyhow!("{e}"))?;
    Ok(id.hex().chars().take(12).collect())
}

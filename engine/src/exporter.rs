//! Where a solved build goes: one [`Exporter`] per output. The session reports
//! the export as one more vertex, named by [`Exporter::name`], whose phases
//! the exporter reports through [`Phases`] as `BuildKit` does (`exporting
//! layers`, `writing image sha256:...`, `naming to ...`, `sending tarball`,
//! `renaming to DEST`, `copying files`).

use std::path::{Path, PathBuf};

use rbuild_frontend::BuildPlan;
use rbuild_image::{Digest, Reference, Store};
use rbuild_ops::{ImagePin, VertexId};
use rbuild_solver::progress::Event;
use rbuild_solver::{ExecError, ResultRef};
use rbuild_worker::{ExportOptions, LocalWorker};

use crate::pending::{PendingError, PendingOutput};
use crate::report::Reporter;
use crate::squash::SquashMode;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("exporting the image: {0}")]
    Image(#[source] ExecError),
    #[error("exporting to {}: {source}", .dest.display())]
    Dir {
        dest: PathBuf,
        #[source]
        source: ExecError,
    },
    #[error("exporting the root filesystem: {0}")]
    RootFs(#[source] ExecError),
    /// Writing the output file `dest` (through its temporary name) failed.
    #[error("writing {}", .dest.display())]
    Write {
        dest: PathBuf,
        #[source]
        source: Box<ExportError>,
    },
    #[error(transparent)]
    Pending(#[from] PendingError),
    #[error(transparent)]
    Store(#[from] rbuild_image::Error),
    #[error("creating a temporary directory")]
    TempDir(#[source] std::io::Error),
    /// Pushing the image to a registry failed.
    #[error("pushing {name}")]
    Push {
        name: String,
        #[source]
        source: Box<crate::transfer::TransferError>,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Squash(#[from] crate::squash::SquashError),
}

/// What an exporter gets: the solved target and what made it.
pub struct ExportContext<'a> {
    /// The state root (temporary files are held by this process's lease there).
    pub state_root: &'a Path,
    pub store: &'a Store,
    pub worker: &'a LocalWorker,
    /// The plan, its image config with the created times set.
    pub plan: &'a BuildPlan,
    /// The result of the plan's target.
    pub target: &'a ResultRef,
    /// `--squash` / `--squash-all`: the image is squashed before it is tagged.
    pub squash: Option<SquashMode>,
}

impl ExportContext<'_> {
    /// Commits the target as an image in the store under `tags` (none: a
    /// dangling image, held by this process until it ends).
    pub fn commit_image(
        &self,
        tags: Vec<Reference>,
        phases: &mut Phases<'_>,
    ) -> Result<Digest, ExportError> {
        match self.squash {
            None => self.commit_unsquashed(tags, phases),
            Some(mode) => self.commit_squashed(mode, tags, phases),
        }
    }

    /// The export of a build with `--squash`/`--squash-all`: the image is
    /// committed as usual (dangling), squashed, and the squashed image tagged;
    /// the unsquashed one is removed again when this export made it. The saving
    /// is reported as a note, a squash that saves nothing with a warning.
    fn commit_squashed(
        &self,
        mode: SquashMode,
        tags: Vec<Reference>,
        phases: &mut Phases<'_>,
    ) -> Result<Digest, ExportError> {
        let store = self.store;
        let existing: std::collections::HashSet<Digest> =
            store.images()?.into_iter().map(|i| i.id).collect();
        let unsquashed = self.commit_unsquashed(Vec::new(), phases)?;
        let img = store.image(&unsquashed)?;
        let keep = match mode {
            SquashMode::All => 0,
            SquashMode::New => self
                .plan
                .base
                .as_ref()
                .map_or(0, |b| b.config.rootfs.diff_ids.len()),
        };
        let done = phases.phase("squashing layers", || {
            crate::squash::squash_image(store, &img, keep, tags)
        })?;
        phases.note(&done.summary());
        if let Some(w) = done.warning() {
            phases.warning(&w);
        }
        if done.id() != &unsquashed && !existing.contains(&unsquashed) {
            // Best effort: another process may hold it too.
            if let Ok(lease) = store.lease() {
                let _ = lease.release(
                    rbuild_snapshotter::lease::Hold::Image,
                    &unsquashed.to_string(),
                );
            }
            let _ = store.remove(&[unsquashed.to_string()], false);
        }
        Ok(done.id().clone())
    }

    /// [`Self::commit_image`] without squashing.
    fn commit_unsquashed(
        &self,
        tags: Vec<Reference>,
        phases: &mut Phases<'_>,
    ) -> Result<Digest, ExportError> {
        self.worker
            .export_image_with_status(
                self.store,
                self.target,
                &ExportOptions {
                    config: self.plan.image.clone(),
                    base_image: self.plan.base.as_ref().and_then(|b| match &b.pin {
                        ImagePin::ImageId(d) => Digest::parse(d).ok(),
                        ImagePin::Manifest(_) => None,
                    }),
                    tags,
                    // BuildKit exports a layer for every step that makes one, even
                    // when its diff is empty; keeping them keeps the history and
                    // the frontend's layer_vertices aligned.
                    keep_empty_layers: true,
                },
                &mut |name, completed| phases.status(name, completed),
            )
            .map_err(ExportError::Image)
    }
}

/// One kind of output. Returns the image ID when the output is an image.
pub trait Exporter {
    /// The export vertex's name, as `BuildKit` reports it.
    fn name(&self) -> &str;
    fn export(
        &self,
        cx: &ExportContext<'_>,
        phases: &mut Phases<'_>,
    ) -> Result<Option<Digest>, ExportError>;
}

/// Reports the phases of the export vertex.
pub struct Phases<'a> {
    reporter: &'a mut dyn Reporter,
    id: VertexId,
}

impl<'a> Phases<'a> {
    pub(crate) fn new(reporter: &'a mut dyn Reporter, id: VertexId) -> Self {
        Self { reporter, id }
    }

    /// The phase `name` began (`completed: false`) or ended.
    pub fn status(&mut self, name: &str, completed: bool) {
        self.reporter.event(&Event::VertexStatus {
            id: self.id,
            name: name.to_owned(),
            completed,
        });
    }

    /// A line for the user about the export.
    pub fn note(&mut self, line: &str) {
        self.reporter.note(line);
    }

    /// A warning about the export.
    pub fn warning(&mut self, line: &str) {
        self.reporter.warning(line);
    }

    /// Runs `f` as the phase `name`.
    pub fn phase<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        self.status(name, false);
        let r = f();
        self.status(name, true);
        r
    }
}

/// Writes `dest` through a temporary file renamed into place (`sending
/// tarball`, then `renaming to DEST`): `dest` is complete or absent.
fn write_output(
    state_root: &Path,
    dest: &Path,
    phases: &mut Phases<'_>,
    write: impl FnOnce(std::io::BufWriter<std::fs::File>) -> Result<std::fs::File, ExportError>,
) -> Result<(), ExportError> {
    let writing = |e: ExportError| ExportError::Write {
        dest: dest.to_path_buf(),
        source: Box::new(e),
    };
    let (pending, file) =
        PendingOutput::create(state_root, dest, "output").map_err(|e| writing(e.into()))?;
    phases.status("sending tarball", false);
    let file = write(std::io::BufWriter::with_capacity(1 << 20, file)).map_err(writing)?;
    phases.status("sending tarball", true);
    phases.phase(&format!("renaming to {}", dest.display()), || {
        pending.persist(&file).map_err(|e| writing(e.into()))
    })
}

/// Into the local store under the tags (`--output type=image`, the default).
pub struct StoreExporter {
    pub tags: Vec<Reference>,
}

impl Exporter for StoreExporter {
    fn name(&self) -> &'static str {
        "exporting to image"
    }
    fn export(
        &self,
        cx: &ExportContext<'_>,
        phases: &mut Phases<'_>,
    ) -> Result<Option<Digest>, ExportError> {
        cx.commit_image(self.tags.clone(), phases).map(Some)
    }
}

/// Into the local store under the tags, then pushed to the registry of each
/// of `names` (`--push`, `--output type=image,push=true`, `type=registry`).
pub struct RegistryExporter {
    /// Tags in the store that are not pushed.
    pub tags: Vec<Reference>,
    /// Tagged in the store and pushed.
    pub names: Vec<Reference>,
    pub registry: crate::transfer::RegistryOptions,
    /// How layers are compressed (`compression=`, `compression-level=`;
    /// gzip at its default level by default).
    pub compression: crate::transfer::PushCompression,
}

impl Exporter for RegistryExporter {
    fn name(&self) -> &'static str {
        "exporting to image"
    }
    fn export(
        &self,
        cx: &ExportContext<'_>,
        phases: &mut Phases<'_>,
    ) -> Result<Option<Digest>, ExportError> {
        let mut tags = self.tags.clone();
        for n in &self.names {
            if !tags.contains(n) {
                tags.push(n.clone());
            }
        }
        let id = cx.commit_image(tags, phases)?;
        for n in &self.names {
            let pushing = format!("pushing {}", n.full_name());
            phases.status(&pushing, false);
            let pushed = crate::transfer::push(
                cx.store,
                &n.to_string(),
                self.compression,
                &self.registry,
                &mut |_| {},
            )
            .map_err(|e| ExportError::Push {
                name: n.full_name(),
                source: Box::new(e),
            })?;
            phases.status(&pushing, true);
            let m = format!("pushing manifest for {}@{}", n.full_name(), pushed.digest);
            phases.status(&m, false);
            phases.status(&m, true);
        }
        Ok(Some(id))
    }
}

/// The image as an archive at `dest` (`docker save`'s, which carries the OCI
/// layout too), under `tags`.
fn export_archive(
    cx: &ExportContext<'_>,
    phases: &mut Phases<'_>,
    dest: &Path,
    tags: &[Reference],
) -> Result<Option<Digest>, ExportError> {
    // Held by this process since its commit: a prune cannot take it away
    // while it is written out.
    let id = cx.commit_image(Vec::new(), phases)?;
    let image = cx.store.image(&id)?;
    write_output(cx.state_root, dest, phases, |out| {
        let out = rbuild_image::archive::save(
            cx.store,
            &[rbuild_image::archive::SaveItem {
                image,
                tags: tags.to_vec(),
            }],
            out,
            &rbuild_image::archive::SaveOptions::default(),
        )?;
        Ok(out
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?)
    })?;
    Ok(Some(id))
}

/// A `docker save` archive at `dest` (`--output type=docker,dest=...`).
pub struct DockerArchiveExporter {
    pub dest: PathBuf,
    pub tags: Vec<Reference>,
}

impl Exporter for DockerArchiveExporter {
    fn name(&self) -> &'static str {
        "exporting to docker image format"
    }
    fn export(
        &self,
        cx: &ExportContext<'_>,
        phases: &mut Phases<'_>,
    ) -> Result<Option<Digest>, ExportError> {
        export_archive(cx, phases, &self.dest, &self.tags)
    }
}

/// An OCI layout archive at `dest` (`--output type=oci,dest=...`).
pub struct OciLayoutExporter {
    pub dest: PathBuf,
    pub tags: Vec<Reference>,
}

impl Exporter for OciLayoutExporter {
    fn name(&self) -> &'static str {
        "exporting to oci image format"
    }
    fn export(
        &self,
        cx: &ExportContext<'_>,
        phases: &mut Phases<'_>,
    ) -> Result<Option<Digest>, ExportError> {
        export_archive(cx, phases, &self.dest, &self.tags)
    }
}

/// The final root filesystem as a tar at `dest` (`--output type=tar`).
pub struct TarExporter {
    pub dest: PathBuf,
}

impl Exporter for TarExporter {
    fn name(&self) -> &'static str {
        "exporting to client tarball"
    }
    fn export(
        &self,
        cx: &ExportContext<'_>,
        phases: &mut Phases<'_>,
    ) -> Result<Option<Digest>, ExportError> {
        // Under the state root, swept if this process dies.
        let tmp = tempfile::Builder::new()
            .prefix(&cx.store.temp_prefix("export")?)
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(cx.store.tmp_dir())
            .map_err(ExportError::TempDir)?;
        phases.phase("copying files", || {
            cx.worker
                .export_dir(cx.target, tmp.path())
                .map_err(ExportError::RootFs)
        })?;
        write_output(cx.state_root, &self.dest, phases, |out| {
            let mut ar = tar::Builder::new(out);
            ar.follow_symlinks(false);
            ar.append_dir_all(".", tmp.path())?;
            Ok(ar
                .into_inner()?
                .into_inner()
                .map_err(std::io::IntoInnerError::into_error)?)
        })?;
        Ok(None)
    }
}

/// The final root filesystem copied into the directory `dest` (`--output
/// type=local`).
pub struct LocalExporter {
    pub dest: PathBuf,
}

impl Exporter for LocalExporter {
    fn name(&self) -> &'static str {
        "exporting to client directory"
    }
    fn export(
        &self,
        cx: &ExportContext<'_>,
        phases: &mut Phases<'_>,
    ) -> Result<Option<Digest>, ExportError> {
        fs_err::create_dir_all(&self.dest)?;
        phases.phase("copying files", || {
            cx.worker
                .export_dir(cx.target, &self.dest)
                .map_err(|source| ExportError::Dir {
                    dest: self.dest.clone(),
                    source,
                })
        })?;
        Ok(None)
    }
}

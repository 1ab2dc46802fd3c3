//! The state root's layout: every file and directory rbuild keeps under it,
//! named once.
//!
//! Every crate that keeps state takes its paths from a [`StateLayout`]: the image
//! store (`blobs/`, `index.json`, `snaplayers/`, `lock`, `tmp/`), the
//! snapshotter (`snapshots/`, `leases/`), the solver's cache index
//! (`cache-index/`), the worker's records (`cache-mounts/`, `copy-reuse/`,
//! `snapshot-checksums/`, `context-checksums/`, `layer-cache/`, `git-checkouts/`), the registry records of layers (`layer-sources/`), `rbuild run`
//! (`rootfs-cache/`), the configuration (`config.toml`) and the format stamp
//! (`rbuild-format`). [`ENTRIES`] lists them with what each holds; the README's
//! list is checked against it by a test, and so is a real root after a build.
//!
//! The type lives here, the lowest crate that owns state (its `lease` module
//! says who owns what under the root), so that the image store, the worker and
//! the engine all take their paths from it; the engine re-exports it.
//!
//! **Format version.** `rbuild-format` holds `rbuild state format N`. A root
//! without it that holds a store was written by an rbuild from before the stamp
//! (format 0): its layout is format 1's, so it is migrated by writing the stamp
//! (temp file + rename). A root stamped with a newer format than this rbuild
//! reads, or with a stamp it cannot parse, is refused with a message saying what
//! to do; it is never read as if it were the current format.

use std::io;
use std::path::{Path, PathBuf};

/// The format this rbuild writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Name of the format stamp file in the root.
const FORMAT_FILE: &str = "rbuild-format";

/// Every top-level entry of a state root, with what it holds (a trailing `/`
/// marks a directory).
pub const ENTRIES: &[(&str, &str)] = &[
    (FORMAT_FILE, "the state format version"),
    (
        "blobs/",
        "content-addressed blobs (layers, configs, manifests)",
    ),
    ("index.json", "images and tags"),
    ("lock", "the store's lock file"),
    (
        "snaplayers/",
        "layers a build made, kept as their step's snapshot",
    ),
    (
        "snapshots/",
        "unpacked layers and step results (with chains/ and mounts/)",
    ),
    ("cache-index/", "cache key -> snapshot"),
    (
        "snapshot-checksums/",
        "content checksums of selections in snapshots",
    ),
    (
        "context-checksums/",
        "content checksums of build-context selections",
    ),
    ("copy-reuse/", "what each context COPY wrote"),
    (
        "git-checkouts/",
        "git checkout key (remote, commit, subdir, .git, submodules) -> snapshot",
    ),
    ("cache-mounts/", "RUN --mount=type=cache directories"),
    (
        "layer-scans/",
        "the private keys the image checks found in each layer",
    ),
    ("layer-cache/", "compressed-layer records of exports"),
    (
        "layer-sources/",
        "compressed digest, media type and registry each layer was pulled or pushed as",
    ),
    ("rootfs-cache/", "unpacked root filesystems of rbuild run"),
    ("leases/", "one locked file per running rbuild process"),
    ("run-names/", "one locked file per rbuild run --name"),
    ("tmp/", "scratch"),
    ("config.toml", "optional configuration"),
];

/// The paths of one state root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLayout {
    root: PathBuf,
}

/// Why a root's format stamp cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "state root {root} has format {found}, newer than this rbuild reads ({FORMAT_VERSION}): \
         use the rbuild that wrote it, or another --root"
    )]
    Newer { root: String, found: u32 },
    #[error(
        "state root {root}: {file} is not an rbuild format stamp ({content:?}); it is not read \
         as one: use another --root, or remove the root if it is rbuild's and may be lost"
    )]
    Unreadable {
        root: String,
        file: String,
        content: String,
    },
    #[error("state root {root}: writing the format stamp: {source}")]
    Io {
        root: String,
        #[source]
        source: io::Error,
    },
}

impl StateLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn at(&self, rel: &str) -> PathBuf {
        debug_assert!(
            ENTRIES
                .iter()
                .any(|(e, _)| rel.split('/').next() == Some(e.trim_end_matches('/'))),
            "{rel} is not a listed entry"
        );
        self.root.join(rel)
    }

    pub fn format_file(&self) -> PathBuf {
        self.at(FORMAT_FILE)
    }
    pub fn blobs(&self) -> PathBuf {
        self.at("blobs/sha256")
    }
    pub fn index_json(&self) -> PathBuf {
        self.at("index.json")
    }
    pub fn store_lock(&self) -> PathBuf {
        self.at("lock")
    }
    pub fn snap_layers(&self) -> PathBuf {
        self.at("snaplayers/sha256")
    }
    pub fn snapshots(&self) -> PathBuf {
        self.at("snapshots")
    }
    pub fn snapshot_chains(&self) -> PathBuf {
        self.at("snapshots/chains")
    }
    pub fn snapshot_mounts(&self) -> PathBuf {
        self.at("snapshots/mounts")
    }
    pub fn cache_index(&self) -> PathBuf {
        self.at("cache-index")
    }
    pub fn snapshot_checksums(&self) -> PathBuf {
        self.at("snapshot-checksums")
    }
    pub fn context_checksums(&self) -> PathBuf {
        self.at("context-checksums")
    }
    pub fn copy_reuse(&self) -> PathBuf {
        self.at("copy-reuse")
    }
    pub fn cache_mounts(&self) -> PathBuf {
        self.at("cache-mounts")
    }
    /// Records of the git checkouts kept as snapshots (git contexts and
    /// `ADD <git ref>`), one file per checkout key.
    pub fn git_checkouts(&self) -> PathBuf {
        self.at("git-checkouts")
    }
    pub fn layer_cache(&self) -> PathBuf {
        self.at("layer-cache")
    }
    pub fn layer_sources(&self) -> PathBuf {
        self.at("layer-sources")
    }
    pub fn rootfs_cache(&self) -> PathBuf {
        self.at("rootfs-cache")
    }
    pub fn run_names(&self) -> PathBuf {
        self.at("run-names")
    }
    pub fn leases(&self) -> PathBuf {
        self.at("leases")
    }
    pub fn tmp(&self) -> PathBuf {
        self.at("tmp")
    }
    /// What `SecretInLayer` found in each layer (one record per diff ID).
    pub fn layer_scans(&self) -> PathBuf {
        self.at("layer-scans")
    }
    pub fn config_toml(&self) -> PathBuf {
        self.at("config.toml")
    }

    /// The directories where processes keep temporary state that the startup
    /// sweep removes once its owner is dead (see [`crate::lease::sweep`]).
    pub fn sweep_dirs(&self) -> Vec<PathBuf> {
        vec![
            self.snapshots(),
            self.snapshot_mounts(),
            self.tmp(),
            self.rootfs_cache(),
            self.cache_mounts(),
            self.git_checkouts(),
            self.layer_scans(),
        ]
    }

    /// The format the root is stamped with: `Ok(None)` when it has no stamp.
    ///
    /// # Errors
    /// [`FormatError::Unreadable`] when the stamp is not one.
    pub fn format(&self) -> Result<Option<u32>, FormatError> {
        let file = self.format_file();
        let content = match std::fs::read(&file) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(FormatError::Io {
                    root: self.root.display().to_string(),
                    source: e,
                });
            }
        };
        let text = String::from_utf8_lossy(&content);
        text.strip_prefix("rbuild state format ")
            .and_then(|v| v.strip_suffix('\n'))
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| FormatError::Unreadable {
                root: self.root.display().to_string(),
                file: FORMAT_FILE.to_owned(),
                content: text.chars().take(64).collect(),
            })
    }

    /// Checks the root's format and migrates an older one in place: a root
    /// without a stamp (format 0, same layout) gets one, written to a temp file
    /// and renamed. Call with the root existing and private.
    ///
    /// # Errors
    /// A newer or unreadable stamp, or the stamp cannot be written.
    pub fn check_format(&self) -> Result<(), FormatError> {
        match self.format()? {
            Some(FORMAT_VERSION) => Ok(()),
            Some(found) if found > FORMAT_VERSION => Err(FormatError::Newer {
                root: self.root.display().to_string(),
                found,
            }),
            // Format 0 (no stamp: an empty new root, or one of an rbuild from
            // before the stamp) has format 1's layout: migrating is stamping.
            Some(_) | None => self.stamp(),
        }
    }

    fn stamp(&self) -> Result<(), FormatError> {
        let io_err = |source| FormatError::Io {
            root: self.root.display().to_string(),
            source,
        };
        let tmp = self
            .root
            .join(format!(".{FORMAT_FILE}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, format!("rbuild state format {FORMAT_VERSION}\n")).map_err(io_err)?;
        std::fs::rename(&tmp, self.format_file()).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_err(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_root_is_stamped_with_the_current_format() {
        let t = tempfile::tempdir().unwrap();
        let l = StateLayout::new(t.path());
        assert_eq!(l.format().unwrap(), None);
        l.check_format().unwrap();
        assert_eq!(l.format().unwrap(), Some(FORMAT_VERSION));
        assert_eq!(
            std::fs::read_to_string(l.format_file()).unwrap(),
            format!("rbuild state format {FORMAT_VERSION}\n")
        );
        // No temp file left.
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
    }

    #[test]
    fn newer_format_is_refused_and_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let l = StateLayout::new(t.path());
        std::fs::write(l.format_file(), "rbuild state format 7\n").unwrap();
        let e = l.check_format().unwrap_err().to_string();
        assert!(
            e.contains("format 7, newer than this rbuild reads (1)"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(l.format_file()).unwrap(),
            "rbuild state format 7\n"
        );
    }

    #[test]
    fn garbled_stamp_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let l = StateLayout::new(t.path());
        for bad in [
            "",
            "rbuild state format \n",
            "format 1\n",
            "rbuild state format 1x\n",
        ] {
            std::fs::write(l.format_file(), bad).unwrap();
            let e = l.check_format().unwrap_err().to_string();
            assert!(e.contains("is not an rbuild format stamp"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn every_path_is_under_a_listed_entry() {
        let l = StateLayout::new("/r");
        for p in [
            l.format_file(),
            l.blobs(),
            l.index_json(),
            l.store_lock(),
            l.snap_layers(),
            l.snapshots(),
            l.snapshot_chains(),
            l.snapshot_mounts(),
            l.cache_index(),
            l.snapshot_checksums(),
            l.context_checksums(),
            l.copy_reuse(),
            l.cache_mounts(),
            l.layer_cache(),
            l.layer_sources(),
            l.rootfs_cache(),
            l.leases(),
            l.run_names(),
            l.tmp(),
            l.config_toml(),
        ] {
            let first = p.strip_prefix("/r").unwrap().iter().next().unwrap();
            assert!(
                ENTRIES
                    .iter()
                    .any(|(e, _)| e.trim_end_matches('/') == first.to_str().unwrap()),
                "{}",
                p.display()
            );
        }
    }
}

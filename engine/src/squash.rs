//! Squashing images of the store (`rbuild build --squash`/`--squash-all`,
//! `rbuild image squash`) and the waste report (`rbuild image waste`).
//!
//! The layers above a kept bottom part of an image are folded into one layer
//! (by [`rbuild_snapshotter::squash`]); the kept layers stay as they are, so
//! their blobs stay shared. The config is the image's own, but for
//! `rootfs.diff_ids` and the history: the entries of the folded layers are
//! marked `empty_layer` and one entry for the squashed layer is added. The
//! squashed layer is cached by what went into it (the diff IDs of the whole
//! stack and the number kept): the same layers give the same layer, found in
//! `layer-cache/squash-<key>` without squashing again while the store has it.

use std::io::Write;

use rbuild_image::{Digest, History, Image, Reference, Store};
use rbuild_snapshotter::layout::StateLayout;
use rbuild_snapshotter::lease::Hold;
use rbuild_snapshotter::squash::{LayerIndex, Squash, Wasted};
use serde::Serialize;

/// What `rbuild build` squashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SquashMode {
    /// `--squash`: the layers the build added above its final stage's base.
    New,
    /// `--squash-all`: every layer.
    All,
}

/// Why a squash or a waste report failed.
#[derive(Debug, thiserror::Error)]
pub enum SquashError {
    #[error(transparent)]
    Store(#[from] rbuild_image::Error),
    #[error("reading layer {diff_id}: {source}")]
    Layer {
        diff_id: Digest,
        #[source]
        source: rbuild_snapshotter::Error,
    },
    #[error("squashing the layers of {image}: {source}")]
    Squash {
        image: String,
        #[source]
        source: rbuild_snapshotter::Error,
    },
    #[error("{0}")]
    From(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Which layers `--from` keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SquashFrom {
    /// Everything above this layer (a diff ID, or a unique prefix of its hex).
    Layer(String),
    /// The last N layers.
    Last(usize),
}

impl SquashFrom {
    /// The number of bottom layers of `img` kept.
    pub fn kept(&self, img: &Image) -> Result<usize, SquashError> {
        let ids = img.diff_ids();
        match self {
            Self::Last(n) => {
                if *n > ids.len() {
                    return Err(SquashError::From(format!(
                        "--from {n}: the image has only {} layers",
                        ids.len()
                    )));
                }
                Ok(ids.len() - n)
            }
            Self::Layer(s) => {
                let hex = s.strip_prefix("sha256:").unwrap_or(s);
                let hits: Vec<usize> = ids
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| !hex.is_empty() && d.hex().starts_with(hex))
                    .map(|(i, _)| i)
                    .collect();
                match hits.as_slice() {
                    [i] => Ok(i + 1),
                    [] => Err(SquashError::From(format!(
                        "--from {s}: no layer of the image has that diff ID (see `rbuild inspect`)"
                    ))),
                    _ => Err(SquashError::From(format!(
                        "--from {s}: more than one layer matches; give more of the diff ID"
                    ))),
                }
            }
        }
    }
}

/// What a squash did.
#[derive(Clone, Debug)]
pub enum Squashed {
    /// The new image: `folded` layers (of `before` bytes) became one of `after`.
    Done {
        id: Digest,
        folded: usize,
        before: u64,
        after: u64,
        /// The squashed layer came from the cache.
        reused: bool,
    },
    /// Fewer than two layers to fold: the image is left as it is.
    Nothing { id: Digest, folded: usize },
}

impl Squashed {
    /// The resulting image.
    pub fn id(&self) -> &Digest {
        match self {
            Self::Done { id, .. } | Self::Nothing { id, .. } => id,
        }
    }

    /// The line reported: `squashed 14 layers: 412 MB → 198 MB (−52%)`, or
    /// why nothing was done.
    pub fn summary(&self) -> String {
        match self {
            Self::Done {
                folded,
                before,
                after,
                reused,
                ..
            } => format!(
                "squashed {folded} layers: {} → {} ({}){}",
                human(*before),
                human(*after),
                percent(*before, *after),
                if *reused { " (cached)" } else { "" }
            ),
            Self::Nothing { folded, .. } => format!(
                "nothing to squash: {folded} layer{} above the kept ones; the image is left as it is",
                if *folded == 1 { "" } else { "s" }
            ),
        }
    }

    /// A warning when the squashed layer is not smaller than what it replaces.
    pub fn warning(&self) -> Option<String> {
        match self {
            Self::Done { before, after, .. } if after >= before => Some(format!(
                "the squashed layer ({}) is not smaller than the layers it replaces ({}): \
                 nothing the later layers deleted or overwrote is saved",
                human(*after),
                human(*before)
            )),
            _ => None,
        }
    }
}

/// Bytes in decimal units with three significant digits, as docker shows sizes
/// (`412 MB`, `1.23 GB`, `980 B`).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64;
    let mut u = 0;
    while v >= 999.5 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v < 9.995 {
        format!("{v:.2} {}", UNITS[u])
    } else if v < 99.95 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    }
}

/// The change from `before` to `after` in percent (`−52%`, `+3%`; one
/// decimal under 1%: `−0.4%`).
fn percent(before: u64, after: u64) -> String {
    if before == 0 || before == after {
        return "\u{b1}0%".into();
    }
    #[allow(clippy::cast_precision_loss)]
    let raw = (after as f64 - before as f64) / before as f64 * 100.0;
    let sign = if raw < 0.0 { "\u{2212}" } else { "+" };
    let mag = raw.abs();
    if mag < 0.95 {
        return format!("{sign}{mag:.1}%");
    }
    let mut mag = mag.round();
    if mag >= 100.0 && raw < 0.0 && after > 0 {
        // Not all of it: a rounded −100% would say the layer is empty.
        mag = 99.0;
    }
    format!("{sign}{mag}%")
}

/// Reads the entries of every layer of `img` (not their contents).
pub(crate) fn index_layers(store: &Store, img: &Image) -> Result<Vec<LayerIndex>, SquashError> {
    let inputs = img
        .diff_ids()
        .iter()
        .map(|d| Ok((d.clone(), store.layer_input(d)?)))
        .collect::<Result<Vec<_>, SquashError>>()?;
    // Layers are read two at a time: their files' metadata, not their bytes.
    std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .chunks(inputs.len().div_ceil(2).max(1))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|(d, input)| {
                            LayerIndex::read(input.clone()).map_err(|source| SquashError::Layer {
                                diff_id: d.clone(),
                                source,
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.extend(h.join().expect("layer indexing panicked")?);
        }
        Ok(out)
    })
}

/// The cache key of squashing `diff_ids` keeping the first `keep`.
fn cache_key(diff_ids: &[Digest], keep: usize) -> Digest {
    let mut text = String::from("rbuild squash 1\n");
    for d in diff_ids {
        text.push_str(d.as_str());
        text.push('\n');
    }
    text.push_str("keep ");
    text.push_str(&keep.to_string());
    Digest::of(text.as_bytes())
}

fn cache_path(store: &Store, key: &Digest) -> std::path::PathBuf {
    StateLayout::new(store.root())
        .layer_cache()
        .join(format!("squash-{}", key.hex()))
}

/// Whether the squashed layer a `layer-cache/squash-*` record names is gone
/// from the store (the garbage collector then removes the record).
pub(crate) fn record_gone(layout: &StateLayout, record: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(record) else {
        return false;
    };
    text.split_whitespace()
        .next()
        .and_then(|d| Digest::parse(d).ok())
        .is_none_or(|d| !layout.blobs().join(d.hex()).is_file())
}

/// The squashed layer for this key, if the cache has it and the store still
/// has its blob (held by this process from then on).
fn cached(store: &Store, key: &Digest) -> Option<(Digest, u64)> {
    let text = fs_err::read_to_string(cache_path(store, key)).ok()?;
    let mut parts = text.split_whitespace();
    let d = Digest::parse(parts.next()?).ok()?;
    let size = parts.next()?.parse().ok()?;
    let _lock = store.lock().ok()?;
    store.lease().ok()?.hold(Hold::Blob, &d.to_string()).ok()?;
    store.has_blob(&d).then_some((d, size))
}

/// Squashes the layers of `img` above its first `keep` into one and commits
/// the result as a new image tagged `tags` (held by this process). With fewer
/// than two layers to fold the image is left as it is (and given the tags).
pub fn squash_image(
    store: &Store,
    img: &Image,
    keep: usize,
    tags: Vec<Reference>,
) -> Result<Squashed, SquashError> {
    let ids = img.diff_ids().to_vec();
    let keep = keep.min(ids.len());
    let folded = ids.len() - keep;
    if folded < 2 {
        for t in &tags {
            store.tag(&img.id.to_string(), t)?;
        }
        return Ok(Squashed::Nothing {
            id: img.id.clone(),
            folded,
        });
    }
    let mut before = 0;
    for d in &ids[keep..] {
        before += store.blob_size(d)?;
    }
    let key = cache_key(&ids, keep);
    let mut txn = store.begin()?;
    let (layer, after, reused) = if let Some((d, size)) = cached(store, &key) {
        (d, size, true)
    } else {
        let layers = index_layers(store, img)?;
        let squash = Squash::new(&layers, keep).map_err(|source| SquashError::Squash {
            image: img.id.to_string(),
            source,
        })?;
        let mut failed = None;
        let (d, size) = txn.write_own_layer(|w| match squash.write(w, None) {
            Ok((_, content)) => Ok(content),
            Err(rbuild_snapshotter::Error::Io(e)) => Err(e),
            Err(e) => {
                let msg = e.to_string();
                failed = Some(e);
                Err(std::io::Error::other(msg))
            }
        })?;
        if let Some(source) = failed {
            return Err(SquashError::Squash {
                image: img.id.to_string(),
                source,
            });
        }
        (d, size, false)
    };
    let mut cfg = img.config.clone();
    let mut seen = 0usize;
    for h in &mut cfg.history {
        if h.empty_layer {
            continue;
        }
        if seen >= keep {
            h.empty_layer = true;
        }
        seen += 1;
    }
    // Histories shorter than the layers (imported images): entries for the
    // kept layers that have none.
    for _ in seen..keep {
        cfg.history.push(History {
            created_by: Some("rbuild".into()),
            ..History::default()
        });
    }
    cfg.history.push(History {
        created: cfg.created.clone(),
        created_by: Some(format!(
            "rbuild squash: {folded} layers above layer {keep} folded into one"
        )),
        comment: Some(format!(
            "squashed {}..{}",
            &ids[keep].hex()[..12],
            &ids[ids.len() - 1].hex()[..12]
        )),
        ..History::default()
    });
    let mut diff_ids = ids[..keep].to_vec();
    diff_ids.push(layer.clone());
    cfg.rootfs.diff_ids = diff_ids;
    let id = txn.add_config(&cfg, tags, img.record.parent.clone())?;
    txn.commit_held()?;
    if !reused {
        let path = cache_path(store, &key);
        if let Some(dir) = path.parent() {
            fs_err::create_dir_all(dir)?;
        }
        // Best effort: a record that cannot be written only costs a squash.
        let _ = rbuild_solver::atomic::write(&path, format!("{layer} {after}\n").as_bytes(), false);
    }
    Ok(Squashed::Done {
        id,
        folded,
        before,
        after,
        reused,
    })
}

/// The number of bottom layers of `img` that are its base image's (the
/// recorded parent, when its layers are the first of `img`'s).
pub fn base_layers(store: &Store, img: &Image) -> Option<usize> {
    let parent = store.image(img.record.parent.as_ref()?).ok()?;
    let n = parent.diff_ids().len();
    img.diff_ids().starts_with(parent.diff_ids()).then_some(n)
}

/// One layer in the waste report.
#[derive(Clone, Debug, Serialize)]
pub struct LayerWaste {
    pub diff_id: Digest,
    /// The layer tar's size.
    pub size: u64,
    /// Bytes of files in it that a later layer deletes or overwrites.
    pub wasted: u64,
    /// What made it (the history entry), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

/// What squashing would make of some layers.
#[derive(Clone, Debug, Serialize)]
pub struct Estimate {
    /// Layers folded.
    pub layers: usize,
    /// Their size now.
    pub before: u64,
    /// The size of the squashed layer.
    pub after: u64,
}

/// `rbuild image waste`.
#[derive(Clone, Debug, Serialize)]
pub struct WasteReport {
    pub image: Digest,
    pub size: u64,
    pub wasted: u64,
    pub layers: Vec<LayerWaste>,
    /// The largest wasted files (at most `top`).
    pub paths: Vec<Wasted>,
    /// Layers of the base image (what `--squash` keeps), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_layers: Option<usize>,
    /// `--squash`: the layers above the base folded (when the base is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub squash: Option<Estimate>,
    /// `--squash-all`.
    pub squash_all: Estimate,
}

/// Measures what the later layers of `img` delete or overwrite, and what
/// squashing would save. Reads the layers' entries, not their contents.
pub fn waste(store: &Store, img: &Image, top: usize) -> Result<WasteReport, SquashError> {
    let layers_idx = index_layers(store, img)?;
    let ids = img.diff_ids();
    let sq_err = |source| SquashError::Squash {
        image: img.id.to_string(),
        source,
    };
    let all = Squash::new(&layers_idx, 0).map_err(sq_err)?;
    let wasted_files = all.waste();
    let mut per_layer = vec![0u64; ids.len()];
    for w in &wasted_files {
        per_layer[w.layer] += w.size;
    }
    let made_by: Vec<Option<String>> = img
        .config
        .history
        .iter()
        .filter(|h| !h.empty_layer)
        .map(|h| h.created_by.clone())
        .collect();
    let mut layers = Vec::new();
    for (i, d) in ids.iter().enumerate() {
        layers.push(LayerWaste {
            diff_id: d.clone(),
            size: store.blob_size(d)?,
            wasted: per_layer[i],
            created_by: made_by.get(i).cloned().flatten(),
        });
    }
    let size: u64 = layers.iter().map(|l| l.size).sum();
    let squash_all = Estimate {
        layers: ids.len(),
        before: size,
        after: all.size().map_err(sq_err)?,
    };
    let base = base_layers(store, img);
    let squash = match base {
        Some(keep) if ids.len() - keep >= 2 => {
            let s = Squash::new(&layers_idx, keep).map_err(sq_err)?;
            Some(Estimate {
                layers: ids.len() - keep,
                before: layers[keep..].iter().map(|l| l.size).sum(),
                after: s.size().map_err(sq_err)?,
            })
        }
        _ => None,
    };
    Ok(WasteReport {
        image: img.id.clone(),
        size,
        wasted: per_layer.iter().sum(),
        layers,
        paths: wasted_files.into_iter().take(top).collect(),
        base_layers: base,
        squash,
        squash_all,
    })
}

impl WasteReport {
    /// The report as text.
    pub fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "image {}: {} layers, {}; {} in files a later layer deletes or overwrites",
            &self.image.hex()[..12],
            self.layers.len(),
            human(self.size),
            human(self.wasted)
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "{:>5}  {:>10}  {:>10}  CREATED BY",
            "LAYER", "SIZE", "WASTED"
        )?;
        for (i, l) in self.layers.iter().enumerate() {
            let by = l.created_by.as_deref().unwrap_or("");
            let by: String = by.chars().take(70).collect();
            writeln!(
                out,
                "{:>5}  {:>10}  {:>10}  {by}",
                i + 1,
                human(l.size),
                human(l.wasted)
            )?;
        }
        if !self.paths.is_empty() {
            writeln!(out)?;
            writeln!(out, "largest wasted files:")?;
            for w in &self.paths {
                let how = match w.how {
                    rbuild_snapshotter::squash::Gone::Deleted => "deleted",
                    rbuild_snapshotter::squash::Gone::Overwritten => "overwritten",
                };
                writeln!(
                    out,
                    "{:>10}  /{}  (layer {}, {how} in layer {})",
                    human(w.size),
                    w.path,
                    w.layer + 1,
                    w.by_layer + 1
                )?;
            }
        }
        writeln!(out)?;
        let line = |what: &str, e: &Estimate| {
            format!(
                "{what}: {} layers {} → {} ({}, saves {})",
                e.layers,
                human(e.before),
                human(e.after),
                percent(e.before, e.after),
                human(e.before.saturating_sub(e.after))
            )
        };
        match (&self.squash, self.base_layers) {
            (Some(e), Some(b)) => writeln!(out, "{} above the base's {b}", line("--squash", e))?,
            (None, Some(b)) => writeln!(
                out,
                "--squash: nothing to fold ({} layer(s) above the base's {b})",
                self.layers.len() - b
            )?,
            _ => writeln!(
                out,
                "--squash: the base image is not known (no parent recorded); see --squash-all"
            )?,
        }
        writeln!(out, "{}", line("--squash-all", &self.squash_all))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_changes_read_like_docker() {
        assert_eq!(human(412_000_000), "412 MB");
        assert_eq!(human(198_400_000), "198 MB");
        assert_eq!(human(1_234_567), "1.23 MB");
        assert_eq!(human(980), "980 B");
        assert_eq!(human(12_340), "12.3 kB");
        assert_eq!(percent(412, 198), "\u{2212}52%");
        assert_eq!(percent(100, 103), "+3%");
        assert_eq!(percent(2_060_000, 8_700), "\u{2212}99%");
        assert_eq!(percent(2_060_000, 0), "\u{2212}100%");
        assert_eq!(percent(430_000_000, 429_900_000), "\u{2212}0.0%");
        assert_eq!(percent(1000, 996), "\u{2212}0.4%");
        assert_eq!(percent(1000, 1000), "\u{b1}0%");
    }
}

//! The image rules of the build checks, run after a build on the image in the
//! store: `WastedSpace`, `BuildToolsInFinalImage`, `SecretInLayer`,
//! `WorldWritableFile`, `SetuidFileAdded` (see `docs/checks/`).
//!
//! The layers are read once, as the squasher reads them
//! ([`crate::squash::index_layers`]: every entry's metadata, no contents); its
//! merge of the stack ([`Squash::waste`]) gives the files a later layer deletes
//! or overwrites (`WastedSpace`), the entries of the layers the build added
//! (those above the base image's) give the modes and build tools, and only
//! their small regular files (up to [`SCAN_LIMIT`]) are read, for secrets and
//! private keys.

use std::collections::BTreeMap;

use rbuild_frontend::lint::{CheckConfig, LintWarning, rule};
use rbuild_image::{Digest, Store};
use rbuild_snapshotter::squash::Squash;
use rbuild_snapshotter::tarwrite::EntryKind;

/// Files up to this size are read for secrets and private keys.
pub const SCAN_LIMIT: u64 = 256 << 10;
/// `WastedSpace` fires from this many wasted bytes on.
pub const WASTE_THRESHOLD: u64 = 10 << 20;

/// What the image rules need besides the image.
pub struct ImageCheckInput<'a> {
    pub image: &'a Digest,
    /// How many of the image's layers come from the final stage's base image.
    pub base_layers: usize,
    /// The `--secret` values.
    pub secrets: Vec<&'a [u8]>,
    /// The Dockerfile has more than one stage.
    pub multi_stage: bool,
    pub config: &'a CheckConfig,
    /// The state root: where what `SecretInLayer` found in each layer, and
    /// the warnings of each image, are kept (`layer-scans/`), so an
    /// unchanged layer or image is not read again. Without `--secret` values
    /// only: nothing derived from them is written down.
    pub state_root: Option<&'a std::path::Path>,
}

/// What the private-key scan of one layer found, kept under its diff ID
/// (and the scan's limit and version), with no secret value in it.
fn scan_record(state_root: &std::path::Path, diff_id: &Digest) -> std::path::PathBuf {
    rbuild_snapshotter::layout::StateLayout::new(state_root)
        .layer_scans()
        .join(format!("{}-keys-v1-{SCAN_LIMIT}", diff_id.hex()))
}

fn read_scan(path: &std::path::Path) -> Option<Vec<String>> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes a scan record (temp file named with this process's owner token,
/// then renamed); a failure only costs a scan next time.
fn write_scan(state_root: &std::path::Path, path: &std::path::Path, found: &[String]) {
    if let Ok(bytes) = serde_json::to_vec(found) {
        write_record(state_root, path, &bytes);
    }
}

fn write_record(state_root: &std::path::Path, path: &std::path::Path, bytes: &[u8]) {
    let _ = rbuild_snapshotter::lease::Lease::current(state_root)
        .and_then(|lease| lease.write_file(path, bytes));
}

const PRIVATE_KEY: &[u8] = b"PRIVATE KEY-----";

fn is_build_tool(path: &str) -> bool {
    const BINS: &[&str] = &[
        "gcc", "g++", "cc", "c++", "clang", "clang++", "rustc", "cargo", "go", "javac", "make",
        "cmake", "ld",
    ];
    if let Some(name) = path
        .strip_prefix("usr/bin/")
        .or_else(|| path.strip_prefix("usr/local/bin/"))
        .or_else(|| path.strip_prefix("bin/"))
    {
        if BINS.contains(&name) {
            return true;
        }
    }
    path == "usr/local/go/bin/go"
        || (path.starts_with("var/cache/apt/archives/")
            && std::path::Path::new(path)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("deb")))
        || path.starts_with("root/.cache/pip/")
        || path.starts_with("root/.cargo/registry/")
        || path.starts_with("root/.npm/_cacache/")
}

fn human(n: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let mb = n as f64 / 1_000_000.0;
    format!("{mb:.1} MB")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The image rules' names, in the order they are reported.
const IMAGE_RULES: [&str; 5] = [
    "WastedSpace",
    "BuildToolsInFinalImage",
    "SecretInLayer",
    "WorldWritableFile",
    "SetuidFileAdded",
];

/// Where the warnings of one run of the image rules on an image are kept:
/// named by the image ID and every other input (the enabled rules, the base
/// layers, whether the build had stages), so a rebuild that makes the same
/// image (a fully cached build) reports them without reading its layers.
fn result_record(state_root: &std::path::Path, input: &ImageCheckInput<'_>) -> std::path::PathBuf {
    let enabled: Vec<&str> = IMAGE_RULES
        .iter()
        .copied()
        .filter(|n| rule(n).is_some_and(|r| input.config.enabled(r)))
        .collect();
    let key = format!(
        "v1 {} {} {} {}",
        input.image,
        input.base_layers,
        input.multi_stage,
        enabled.join(",")
    );
    rbuild_snapshotter::layout::StateLayout::new(state_root)
        .layer_scans()
        .join(format!("image-{}", blake3::hash(key.as_bytes()).to_hex()))
}

/// Runs the image rules on `input.image` (or reads what they found on the
/// same image with the same inputs before, see [`result_record`]).
pub fn image_checks(
    store: &Store,
    input: &ImageCheckInput<'_>,
) -> Result<Vec<LintWarning>, String> {
    let record = input
        .state_root
        .filter(|_| input.secrets.is_empty())
        .map(|root| (root, result_record(root, input)));
    if let Some(found) = record
        .as_ref()
        .and_then(|(_, p)| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<Vec<(String, String)>>(&b).ok())
    {
        return Ok(found
            .into_iter()
            .filter_map(|(n, msg)| {
                let r = rule(&n).filter(|_| IMAGE_RULES.contains(&n.as_str()))?;
                Some(LintWarning::new(r, msg, None))
            })
            .collect());
    }
    let warnings = run_image_checks(store, input)?;
    if let Some((root, path)) = &record {
        let found: Vec<(&str, &str)> = warnings
            .iter()
            .map(|w| (w.rule, w.message.as_str()))
            .collect();
        if let Ok(bytes) = serde_json::to_vec(&found) {
            write_record(root, path, &bytes);
        }
    }
    Ok(warnings)
}

#[allow(clippy::too_many_lines)]
fn run_image_checks(
    store: &Store,
    input: &ImageCheckInput<'_>,
) -> Result<Vec<LintWarning>, String> {
    let img = store.image(input.image).map_err(|e| e.to_string())?;
    // The instruction behind each layer: the history entries that made one.
    let created: Vec<String> = img
        .config
        .history
        .iter()
        .filter(|h| !h.empty_layer)
        .map(|h| h.created_by.clone().unwrap_or_default())
        .collect();
    let name_of = |i: usize| -> String {
        let c = created.get(i).cloned().unwrap_or_default();
        let c = c.trim_end_matches(" # buildkit").to_owned();
        let c = c
            .strip_prefix("RUN /bin/sh -c ")
            .map_or(c.clone(), |r| format!("RUN {r}"));
        if c.is_empty() {
            format!("layer {}", i + 1)
        } else {
            c
        }
    };
    let enabled = |n: &str| rule(n).is_some_and(|r| input.config.enabled(r));
    let mut warnings = Vec::new();
    let warn = |w: &mut Vec<LintWarning>, n: &str, msg: String| {
        if let Some(r) = rule(n) {
            w.push(LintWarning::new(r, msg, None));
        }
    };

    let layers = crate::squash::index_layers(store, &img).map_err(|e| e.to_string())?;
    let mut secrets_found: Vec<(String, usize, &str)> = Vec::new();
    let mut tools: Vec<String> = Vec::new();
    let mut writable: Vec<String> = Vec::new();
    let mut setuid: Vec<String> = Vec::new();
    for (i, layer) in layers.iter().enumerate().skip(input.base_layers) {
        let record = input
            .state_root
            .filter(|_| input.secrets.is_empty())
            .and_then(|root| Some((root, scan_record(root, img.diff_ids().get(i)?))));
        if let Some(found) = enabled("SecretInLayer")
            .then(|| record.as_ref().and_then(|(_, p)| read_scan(p)))
            .flatten()
        {
            // Scanned before: the same layer holds the same files.
            secrets_found.extend(found.into_iter().map(|p| (p, i, "a private key")));
        } else if enabled("SecretInLayer") {
            let before = secrets_found.len();
            layer
                .read_small_files(SCAN_LIMIT, &mut |meta, buf| {
                    let what = if contains(buf, PRIVATE_KEY) && contains(buf, b"-----BEGIN ") {
                        "a private key"
                    } else if input
                        .secrets
                        .iter()
                        .any(|s| s.len() >= 4 && contains(buf, s))
                    {
                        "the value of a --secret"
                    } else {
                        return;
                    };
                    let path = String::from_utf8_lossy(&meta.path).into_owned();
                    secrets_found.push((path, i, what));
                })
                .map_err(|e| e.to_string())?;
            if let Some((root, path)) = &record {
                let found: Vec<String> = secrets_found[before..]
                    .iter()
                    .map(|(p, _, _)| p.clone())
                    .collect();
                write_scan(root, path, &found);
            }
        }
        for e in layer.entries() {
            let path = String::from_utf8_lossy(&e.path);
            let is_file = e.kind == EntryKind::File;
            let is_dir = e.kind == EntryKind::Dir;
            if input.multi_stage && is_file && is_build_tool(&path) {
                tools.push(path.clone().into_owned());
            }
            let sticky_dir = is_dir && e.mode & 0o1000 != 0;
            if (is_file || is_dir) && e.mode & 0o002 != 0 && !sticky_dir {
                writable.push(path.clone().into_owned());
            }
            if is_file && e.mode & 0o6000 != 0 {
                setuid.push(path.into_owned());
            }
        }
    }

    // (adding layer, removing layer) -> bytes, for removals by the build's layers.
    let mut wasted: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    if enabled("WastedSpace") && layers.len() > input.base_layers {
        let merged = Squash::new(&layers, 0).map_err(|e| e.to_string())?;
        for w in merged.waste() {
            if w.by_layer >= input.base_layers {
                *wasted.entry((w.layer, w.by_layer)).or_default() += w.size;
            }
        }
    }
    let total: u64 = wasted.values().sum();
    if total >= WASTE_THRESHOLD {
        for ((from, by), bytes) in &wasted {
            if *bytes == 0 {
                continue;
            }
            warn(
                &mut warnings,
                "WastedSpace",
                format!(
                    "{bytes} bytes ({}) added by `{}` are deleted or overwritten by `{}`: the image ships them anyway; add and remove them in the same RUN",
                    human(*bytes),
                    name_of(*from),
                    name_of(*by)
                ),
            );
        }
    }
    let list = |v: &[String]| {
        let mut s: Vec<String> = v.iter().take(5).map(|p| format!("/{p}")).collect();
        if v.len() > 5 {
            s.push(format!("and {} more", v.len() - 5));
        }
        s.join(", ")
    };
    if enabled("BuildToolsInFinalImage") && !tools.is_empty() {
        warn(
            &mut warnings,
            "BuildToolsInFinalImage",
            format!(
                "The final stage of this multi-stage build adds build tools or package caches: {}",
                list(&tools)
            ),
        );
    }
    if enabled("SecretInLayer") {
        for (p, layer, what) in &secrets_found {
            warn(
                &mut warnings,
                "SecretInLayer",
                format!(
                    "/{p} holds {what}; it is in the layer of `{}`",
                    name_of(*layer)
                ),
            );
        }
    }
    if enabled("WorldWritableFile") && !writable.is_empty() {
        warn(
            &mut warnings,
            "WorldWritableFile",
            format!(
                "{} world-writable entries added: {}",
                writable.len(),
                list(&writable)
            ),
        );
    }
    if enabled("SetuidFileAdded") && !setuid.is_empty() {
        warn(
            &mut warnings,
            "SetuidFileAdded",
            format!("setuid/setgid files added: {}", list(&setuid)),
        );
    }
    Ok(warnings)
}

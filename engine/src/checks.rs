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

/// Runs the image rules on `input.image`.
#[allow(clippy::too_many_lines)]
pub fn image_checks(
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
        if enabled("SecretInLayer") {
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

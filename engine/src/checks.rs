//! The image rules of the build checks, run after a build on the image in the
//! store: `WastedSpace`, `BuildToolsInFinalImage`, `SecretInLayer`,
//! `WorldWritableFile`, `SetuidFileAdded` (see `docs/checks/`).
//!
//! One walk over the layers the build added (those above the base image's): a
//! layer kept as a snapshot is read from its upper directory (metadata only;
//! overlay whiteouts are 0/0 character devices), another from its tar (headers;
//! contents skipped). Only small files (up to [`SCAN_LIMIT`]) are read, for
//! secrets and private keys. (A minimal walk of its own; the squash work's layer
//! analysis may replace it.)

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;

use rbuild_frontend::lint::{CheckConfig, LintWarning, rule};
use rbuild_image::{Digest, Store};

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

#[derive(Debug, Clone)]
enum Kind {
    File(u64),
    Dir,
    Other,
    /// A whiteout of this path (and everything below it).
    Whiteout,
    /// Everything below this directory in lower layers is gone.
    Opaque,
}

struct Entry {
    path: String,
    kind: Kind,
    mode: u32,
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

/// Reads a layer's entries, and runs `content` on small regular files.
fn layer_entries(
    store: &Store,
    d: &Digest,
    content: &mut dyn FnMut(&str, &[u8]),
) -> Result<Vec<Entry>, String> {
    if let Some(upper) = store.layer_dir(d) {
        return Ok(walk_upper(&upper, content));
    }
    let blob = store.open_blob(d).map_err(|e| e.to_string())?;
    let mut ar = tar::Archive::new(blob);
    let mut out = Vec::new();
    for e in ar.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| e.to_string())?;
        let path = e
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        let mode = e.header().mode().unwrap_or(0);
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        let kind = if name == ".wh..wh..opq" {
            out.push(Entry {
                path: dir.to_owned(),
                kind: Kind::Opaque,
                mode,
            });
            continue;
        } else if let Some(real) = name.strip_prefix(".wh.") {
            let p = if dir.is_empty() {
                real.to_owned()
            } else {
                format!("{dir}/{real}")
            };
            out.push(Entry {
                path: p,
                kind: Kind::Whiteout,
                mode,
            });
            continue;
        } else if e.header().entry_type().is_file() {
            let size = e.size();
            if size <= SCAN_LIMIT {
                let mut buf = Vec::new();
                if e.read_to_end(&mut buf).is_ok() {
                    content(&path, &buf);
                }
            }
            Kind::File(size)
        } else if e.header().entry_type().is_dir() {
            Kind::Dir
        } else {
            Kind::Other
        };
        out.push(Entry { path, kind, mode });
    }
    Ok(out)
}

fn walk_upper(upper: &Path, content: &mut dyn FnMut(&str, &[u8])) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut todo = vec![upper.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let rel = p
                .strip_prefix(upper)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_default();
            let ft = m.file_type();
            let kind = if ft.is_char_device() && m.rdev() == 0 {
                Kind::Whiteout
            } else if ft.is_dir() {
                todo.push(p.clone());
                Kind::Dir
            } else if ft.is_file() {
                if m.len() <= SCAN_LIMIT
                    && let Ok(buf) = std::fs::read(&p)
                {
                    content(&rel, &buf);
                }
                Kind::File(m.len())
            } else {
                Kind::Other
            };
            out.push(Entry {
                path: rel,
                kind,
                mode: m.mode() & 0o7777,
            });
        }
    }
    out
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
    let diff_ids = img.diff_ids().to_vec();
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

    // path -> (size, layer) of the files alive so far.
    let mut alive: BTreeMap<String, (u64, usize)> = BTreeMap::new();
    // (adding layer, removing layer) -> bytes
    let mut wasted: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    let mut secrets_found: Vec<(String, usize, &str)> = Vec::new();
    let mut tools: Vec<String> = Vec::new();
    let mut writable: Vec<String> = Vec::new();
    let mut setuid: Vec<String> = Vec::new();
    let scan_secrets = enabled("SecretInLayer");
    for (i, d) in diff_ids.iter().enumerate() {
        let added = i >= input.base_layers;
        let mut found: Vec<(String, &str)> = Vec::new();
        let mut content = |path: &str, buf: &[u8]| {
            if !added || !scan_secrets {
                return;
            }
            if contains(buf, PRIVATE_KEY) && contains(buf, b"-----BEGIN ") {
                found.push((path.to_owned(), "a private key"));
            } else if input
                .secrets
                .iter()
                .any(|s| s.len() >= 4 && contains(buf, s))
            {
                found.push((path.to_owned(), "the value of a --secret"));
            }
        };
        let entries = layer_entries(store, d, &mut content)?;
        secrets_found.extend(found.into_iter().map(|(p, w)| (p, i, w)));
        for e in &entries {
            let remove_below = |alive: &mut BTreeMap<String, (u64, usize)>,
                                wasted: &mut BTreeMap<(usize, usize), u64>,
                                prefix: &str,
                                include_self: bool| {
                let keys: Vec<String> = alive
                    .range(prefix.to_owned()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .filter(|(k, _)| {
                        (include_self && k.as_str() == prefix)
                            || k[prefix.len()..].starts_with('/')
                            || prefix.is_empty()
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in keys {
                    if let Some((size, layer)) = alive.remove(&k)
                        && layer < i
                    {
                        *wasted.entry((layer, i)).or_default() += size;
                    }
                }
            };
            match e.kind {
                Kind::Whiteout => remove_below(&mut alive, &mut wasted, &e.path, true),
                Kind::Opaque => remove_below(&mut alive, &mut wasted, &e.path, false),
                Kind::File(size) => {
                    if let Some((old, layer)) = alive.insert(e.path.clone(), (size, i))
                        && layer < i
                    {
                        *wasted.entry((layer, i)).or_default() += old;
                    }
                }
                Kind::Dir | Kind::Other => {
                    if let Some((old, layer)) = alive.remove(&e.path)
                        && layer < i
                    {
                        *wasted.entry((layer, i)).or_default() += old;
                    }
                }
            }
            if !added {
                continue;
            }
            let is_file = matches!(e.kind, Kind::File(_));
            if input.multi_stage && is_file && is_build_tool(&e.path) {
                tools.push(e.path.clone());
            }
            let sticky_dir = matches!(e.kind, Kind::Dir) && e.mode & 0o1000 != 0;
            if (is_file || matches!(e.kind, Kind::Dir)) && e.mode & 0o002 != 0 && !sticky_dir {
                writable.push(e.path.clone());
            }
            if is_file && e.mode & 0o6000 != 0 {
                setuid.push(e.path.clone());
            }
        }
    }

    let total: u64 = wasted
        .iter()
        .filter(|((_, by), _)| *by >= input.base_layers)
        .map(|(_, b)| b)
        .sum();
    if enabled("WastedSpace") && total >= WASTE_THRESHOLD {
        for ((from, by), bytes) in &wasted {
            if *by < input.base_layers || *bytes == 0 {
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
    if scan_secrets {
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

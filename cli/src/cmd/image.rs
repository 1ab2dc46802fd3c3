//! The image commands: import, save, load, images, tag, rmi, history, inspect,
//! image prune (and `image ls/rm/...` aliases), with docker's output formats.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use rbuild_image::archive::{SaveItem, SaveOptions};
use rbuild_image::import::ImportOptions;
use rbuild_image::{Compression, ContainerConfig, Digest, Image, Reference, RemoveEvent, Store};
use serde_json::{Map, Value, json};

use super::fmt::{Template, go_json, go_time, human_size, since, tabwrite};

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Import a rootfs tarball as a one-layer image
    Import(ImportArgs),
    /// Save images to a tar archive (docker-archive + OCI layout)
    Save(SaveArgs),
    /// Load images from a tar archive
    Load(LoadArgs),
    /// List images
    Images(ImagesArgs),
    /// Create a tag TARGET that refers to SOURCE
    Tag(TagArgs),
    /// Remove images
    Rmi(RmiArgs),
    /// Show the history of an image
    History(HistoryArgs),
    /// Show low-level information on images
    Inspect(InspectArgs),
    /// Manage images
    #[command(subcommand)]
    Image(ImageSub),
}

#[derive(clap::Subcommand)]
pub enum ImageSub {
    /// Remove unused images
    Prune(PruneArgs),
    /// List images
    #[command(alias = "list")]
    Ls(ImagesArgs),
    /// Remove images
    Rm(RmiArgs),
    /// Create a tag TARGET that refers to SOURCE
    Tag(TagArgs),
    /// Save images to a tar archive
    Save(SaveArgs),
    /// Load images from a tar archive
    Load(LoadArgs),
    /// Import a rootfs tarball
    Import(ImportArgs),
    /// Show the history of an image
    History(HistoryArgs),
    /// Show low-level information on images
    Inspect(InspectArgs),
    /// Squash the layers above a layer (default: above the base image) into one
    Squash(super::squash::SquashArgs),
    /// Show the bytes each layer holds that a later layer deletes or overwrites
    Waste(super::squash::WasteArgs),
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// Tarball path, or - for standard input
    file: String,
    /// REPOSITORY[:TAG]
    reference: Option<String>,
    /// Apply a Dockerfile instruction to the image config
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    changes: Vec<String>,
    /// Commit message for the image's history
    #[arg(short, long)]
    message: Option<String>,
}

#[derive(clap::Args)]
pub struct SaveArgs {
    /// Write to a file instead of standard output
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Layer compression in the archive: none (as docker), gzip or zstd
    #[arg(long, default_value = "none", value_name = "none|gzip|zstd")]
    compression: String,
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Read from a tar archive file instead of standard input
    #[arg(short, long)]
    input: Option<PathBuf>,
    /// Suppress the load output
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
#[allow(clippy::struct_excessive_bools)] // one per docker flag
pub struct ImagesArgs {
    /// REPOSITORY[:TAG]
    reference: Option<String>,
    /// Show all images (default hides intermediate images)
    #[arg(short, long)]
    all: bool,
    /// Only show image IDs
    #[arg(short, long)]
    quiet: bool,
    /// Show digests
    #[arg(long)]
    digests: bool,
    /// Don't truncate output
    #[arg(long)]
    no_trunc: bool,
    /// Filter output (dangling=, since=, before=, label=, reference=)
    #[arg(short, long = "filter")]
    filter: Vec<String>,
    /// Format output using a Go template
    #[arg(long)]
    format: Option<String>,
}

#[derive(clap::Args)]
pub struct TagArgs {
    source: String,
    target: String,
}

#[derive(clap::Args)]
pub struct RmiArgs {
    /// Force removal of the image
    #[arg(short, long)]
    force: bool,
    /// Do not delete untagged parents (accepted for compatibility)
    #[arg(long)]
    no_prune: bool,
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(clap::Args)]
pub struct HistoryArgs {
    /// Don't truncate output
    #[arg(long)]
    no_trunc: bool,
    /// Only show image IDs
    #[arg(short, long)]
    quiet: bool,
    /// Print sizes and dates in human readable format
    #[arg(short = 'H', long, default_value_t = true, action = clap::ArgAction::Set)]
    human: bool,
    /// Format output using a Go template
    #[arg(long)]
    format: Option<String>,
    image: String,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Format output using a Go template
    #[arg(short, long)]
    format: Option<String>,
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Remove all unused images, not just dangling ones
    #[arg(short, long)]
    all: bool,
    /// Do not prompt for confirmation
    #[arg(short, long)]
    force: bool,
    /// Filters (accepted: none yet)
    #[arg(long)]
    filter: Vec<String>,
}

/// Runs one image command; the exit code is non-zero when any part failed.
pub fn run(cmd: ImageCommand, root: &Path) -> Result<std::process::ExitCode> {
    let store =
        || Store::open(root).with_context(|| format!("opening the state root {}", root.display()));
    match cmd {
        ImageCommand::Import(a) | ImageCommand::Image(ImageSub::Import(a)) => import(&store()?, a),
        ImageCommand::Save(a) | ImageCommand::Image(ImageSub::Save(a)) => save(&store()?, &a),
        ImageCommand::Load(a) | ImageCommand::Image(ImageSub::Load(a)) => load(&store()?, &a),
        ImageCommand::Images(a) | ImageCommand::Image(ImageSub::Ls(a)) => images(&store()?, &a),
        ImageCommand::Tag(a) | ImageCommand::Image(ImageSub::Tag(a)) => tag(&store()?, &a),
        ImageCommand::Rmi(a) | ImageCommand::Image(ImageSub::Rm(a)) => rmi(&store()?, &a),
        ImageCommand::History(a) | ImageCommand::Image(ImageSub::History(a)) => {
            history(&store()?, &a)
        }
        ImageCommand::Inspect(a) | ImageCommand::Image(ImageSub::Inspect(a)) => {
            inspect(&store()?, &a)
        }
        ImageCommand::Image(ImageSub::Prune(a)) => prune(&store()?, &a),
        ImageCommand::Image(ImageSub::Squash(a)) => super::squash::squash(&store()?, &a),
        ImageCommand::Image(ImageSub::Waste(a)) => super::squash::waste(&store()?, &a),
    }
}

const OK: std::process::ExitCode = std::process::ExitCode::SUCCESS;

fn import(store: &Store, a: ImportArgs) -> Result<std::process::ExitCode> {
    let tag = a
        .reference
        .as_deref()
        .map(Reference::parse_tagged)
        .transpose()?;
    if let Some(t) = &tag {
        if t.digest.is_some() {
            bail!("refusing to create a tag with a digest reference: {t}");
        }
    }
    let mut config = ContainerConfig::default();
    for c in &a.changes {
        super::change::apply_change(&mut config, c)
            .map_err(|e| anyhow!("invalid change {c:?}: {e}"))?;
    }
    if a.file.starts_with("http://") || a.file.starts_with("https://") {
        bail!("importing from a URL is not supported: {}", a.file);
    }
    let input: Box<dyn Read + Send> = if a.file == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(fs_err::File::open(&a.file)?)
    };
    let created = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok());
    let opts = ImportOptions {
        tag,
        config,
        message: a.message,
        source: "-".into(),
        created,
    };
    let id = rbuild_image::import::import(store, input, opts)
        .with_context(|| format!("importing {}", a.file))?;
    unpack_for_builds(store, &id);
    println!("{id}");
    Ok(OK)
}

/// Unpacks an imported or loaded image into snapshots, as `docker import` and
/// `docker load` leave their images, so that the first build `FROM` it does not
/// pay for it. As root only (what builds need); a failure only warns: the image
/// is stored, and its first `FROM` unpacks it (and reports what fails).
fn unpack_for_builds(store: &Store, id: &Digest) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    if let Err(e) = rbuild_engine::unpack_image(store, store.root(), id) {
        eprintln!(
            "warning: image {id} is stored but not unpacked (its first build will): {}",
            rbuild_engine::one_line(&e)
        );
    }
}

fn save(store: &Store, a: &SaveArgs) -> Result<std::process::ExitCode> {
    let compression = Compression::from_name(&a.compression).ok_or_else(|| {
        anyhow!(
            "unknown compression {:?}: use none, gzip or zstd",
            a.compression
        )
    })?;
    let mut items: Vec<SaveItem> = Vec::new();
    for name in &a.images {
        // Held until the archive is written: a concurrent prune or rmi leaves it.
        let img = store.resolve_and_hold(name)?;
        let id = img.id.clone();
        // By tag: record that tag; by ID: no tag, as docker does.
        let by_tag = Reference::parse_tagged(name)
            .ok()
            .filter(|r| r.digest.is_none() && img.tags.contains(r));
        match items.iter_mut().find(|i| i.image.id == id) {
            Some(it) => it.tags.extend(by_tag.filter(|t| !it.tags.contains(t))),
            None => items.push(SaveItem {
                image: img,
                tags: by_tag.into_iter().collect(),
            }),
        }
    }
    // RBUILD_COMPRESS_THREADS: compression threads (default 0: all cores), for benchmarks.
    let threads = std::env::var("RBUILD_COMPRESS_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let opts = SaveOptions {
        compression,
        threads,
    };
    if let Some(path) = &a.output {
        // `.rbuild-save-<owner>-N` beside it, renamed into place; removed by
        // the next command if this one is killed.
        let (pending, f) = rbuild_engine::PendingOutput::create(store.root(), path, "save")
            .with_context(|| format!("writing {}", path.display()))?;
        let w = std::io::BufWriter::with_capacity(1 << 20, f);
        let w = rbuild_image::archive::save(store, &items, w, &opts)?;
        let f = w
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?;
        pending
            .persist(&f)
            .with_context(|| format!("writing {}", path.display()))?;
    } else {
        let out = std::io::stdout();
        if out.is_terminal() {
            bail!("cowardly refusing to save to a terminal. Use the -o flag or redirect");
        }
        let w = std::io::BufWriter::with_capacity(1 << 20, out.lock());
        let mut w = rbuild_image::archive::save(store, &items, w, &opts)?;
        w.flush()?;
    }
    Ok(OK)
}

fn load(store: &Store, a: &LoadArgs) -> Result<std::process::ExitCode> {
    let report = if let Some(p) = &a.input {
        let f = fs_err::File::open(p)?;
        rbuild_image::archive::load(store, f).with_context(|| format!("loading {}", p.display()))?
    } else {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            bail!("requested load from stdin, but stdin is empty");
        }
        rbuild_image::archive::load(store, stdin).context("loading from standard input")?
    };
    for (tag, old) in &report.retagged {
        println!(
            "The image {tag} already exists, renaming the old one with ID {old} to empty string"
        );
    }
    for (id, _) in &report.images {
        unpack_for_builds(store, id);
    }
    for (id, tags) in &report.images {
        if tags.is_empty() {
            println!("Loaded image ID: {id}");
        }
        for t in tags {
            println!("Loaded image: {t}");
        }
    }
    Ok(OK)
}

struct Row<'a> {
    img: &'a Image,
    repo: String,
    tag: String,
    digest: String,
    size: u64,
}

fn glob(pattern: &str, s: &str) -> bool {
    // path.Match: * and ? do not match '/', [..] classes.
    fn m(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => (0..=s.len())
                .take_while(|&i| i == 0 || s[i - 1] != '/')
                .any(|i| m(&p[1..], &s[i..])),
            Some('?') => !s.is_empty() && s[0] != '/' && m(&p[1..], &s[1..]),
            Some('[') => {
                let Some(end) = p.iter().position(|&c| c == ']') else {
                    return false;
                };
                if s.is_empty() {
                    return false;
                }
                let class = &p[1..end];
                let (neg, class) = if class.first() == Some(&'^') {
                    (true, &class[1..])
                } else {
                    (false, class)
                };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        hit |= class[i] <= s[0] && s[0] <= class[i + 2];
                        i += 3;
                    } else {
                        hit |= class[i] == s[0];
                        i += 1;
                    }
                }
                hit != neg && m(&p[end + 1..], &s[1..])
            }
            Some('\\') if p.len() > 1 => !s.is_empty() && s[0] == p[1] && m(&p[2..], &s[1..]),
            Some(c) => !s.is_empty() && s[0] == *c && m(&p[1..], &s[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    m(&p, &s)
}

/// docker's reference filter: the pattern against `repo:tag`, or against `repo`.
fn reference_matches(pattern: &str, r: &Reference) -> bool {
    let pattern = Reference::parse(pattern).map_or_else(|_| pattern.to_owned(), |p| p.to_string());
    glob(&pattern, &r.to_string()) || glob(&pattern, &r.repo)
}

fn images(store: &Store, a: &ImagesArgs) -> Result<std::process::ExitCode> {
    let all = store.images()?;
    let mut dangling: Option<bool> = None;
    let mut since_t: Option<i64> = None;
    let mut before_t: Option<i64> = None;
    let mut labels: Vec<(String, Option<String>)> = Vec::new();
    let mut refs: Vec<String> = Vec::new();
    for f in &a.filter {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| anyhow!("bad format of filter (expected name=value): {f}"))?;
        match k {
            "dangling" => {
                dangling = Some(match v.to_ascii_lowercase().as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => bail!("invalid filter 'dangling={v}'"),
                });
            }
            "since" => since_t = Some(store.image(&store.resolve(v)?)?.created_unix()),
            "before" => before_t = Some(store.image(&store.resolve(v)?)?.created_unix()),
            "label" => labels.push(match v.split_once('=') {
                Some((k, val)) => (k.to_owned(), Some(val.to_owned())),
                None => (v.to_owned(), None),
            }),
            "reference" => refs.push(v.to_owned()),
            _ => bail!("invalid filter '{k}'"),
        }
    }
    if let Some(r) = &a.reference {
        refs.push(r.clone());
    }
    let parents: std::collections::HashSet<&Digest> = all
        .iter()
        .filter_map(|i| i.record.parent.as_ref())
        .collect();
    let mut rows: Vec<Row<'_>> = Vec::new();
    for img in &all {
        if !a.all && img.dangling() && (parents.contains(&img.id) || img.record.last_good) {
            continue; // intermediate image, or a failed build's last good state
        }
        if dangling.is_some_and(|d| d != img.dangling()) {
            continue;
        }
        let created = img.created_unix();
        if since_t.is_some_and(|t| created <= t) || before_t.is_some_and(|t| created >= t) {
            continue;
        }
        let img_labels = &img.config.config.labels;
        if !labels.iter().all(|(k, v)| {
            img_labels
                .get(k)
                .is_some_and(|x| v.as_ref().is_none_or(|v| v == x))
        }) {
            continue;
        }
        let size = store.image_size(img)?;
        let digest = if a.digests || a.format.is_some() {
            format!("{}", store.manifest(img)?.2)
        } else {
            String::new()
        };
        let tags: Vec<&Reference> = img
            .tags
            .iter()
            .filter(|t| refs.iter().all(|p| reference_matches(p, t)))
            .collect();
        if img.tags.is_empty() {
            if refs.is_empty() {
                rows.push(Row {
                    img,
                    repo: "<none>".into(),
                    tag: "<none>".into(),
                    digest,
                    size,
                });
            }
            continue;
        }
        for t in tags {
            // The digest it was pulled or pushed as in that repository, if any.
            let recorded = img.record.repo_digests.iter().find_map(|rd| {
                rd.split_once('@')
                    .filter(|(repo, _)| *repo == t.repo)
                    .map(|(_, d)| d.to_owned())
            });
            rows.push(Row {
                img,
                repo: t.repo.clone(),
                tag: t.tag.clone().unwrap_or_else(|| "<none>".into()),
                digest: if digest.is_empty() {
                    digest.clone()
                } else {
                    recorded.unwrap_or_else(|| digest.clone())
                },
                size,
            });
        }
    }
    let id_of = |img: &Image| {
        if a.no_trunc {
            img.id.to_string()
        } else {
            img.id.hex()[..12].to_owned()
        }
    };
    if a.quiet {
        for r in &rows {
            println!("{}", id_of(r.img));
        }
        return Ok(OK);
    }
    let row_value = |r: &Row<'_>| -> Value {
        let created = r.img.created_unix();
        json!({
            "Containers": "N/A",
            "CreatedAt": go_time(created),
            "CreatedSince": since(created),
            "Digest": if r.digest.is_empty() { "<none>".to_owned() } else { r.digest.clone() },
            "ID": id_of(r.img),
            "Repository": r.repo,
            "SharedSize": "N/A",
            "Size": human_size(r.size),
            "Tag": r.tag,
            "UniqueSize": "N/A",
            "VirtualSize": super::fmt::human_size_prec(r.size, 4),
        })
    };
    let format = a.format.clone().unwrap_or_else(|| {
        if a.digests {
            "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
                .into()
        } else {
            "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}".into()
        }
    });
    let header = json!({
        "Containers": "CONTAINERS", "CreatedAt": "CREATED AT", "CreatedSince": "CREATED", "Digest": "DIGEST",
        "ID": "IMAGE ID", "Repository": "REPOSITORY", "SharedSize": "SHARED SIZE", "Size": "SIZE", "Tag": "TAG",
        "UniqueSize": "UNIQUE SIZE", "VirtualSize": "VIRTUAL SIZE",
    });
    let values: Vec<Value> = rows.iter().map(row_value).collect();
    print_templated(&format, &header, &values)?;
    Ok(OK)
}

/// Renders `values` with a template; a `table` template gets a header and aligned columns.
fn print_templated(format: &str, header: &Value, values: &[Value]) -> Result<()> {
    // docker's `--format json`: one JSON object a line.
    let format = if format.trim() == "json" {
        "{{json .}}"
    } else {
        format
    };
    let t = Template::parse(format).map_err(|e| anyhow!(e))?;
    let mut out = String::new();
    if t.table {
        let h = t.render(header).map_err(|e| anyhow!("template: {e}"))?;
        out.push_str(&h);
        out.push('\n');
    }
    for v in values {
        out.push_str(&t.render(v).map_err(|e| anyhow!("template: {e}"))?);
        out.push('\n');
    }
    let text = if t.table { tabwrite(&out) } else { out };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn tag(store: &Store, a: &TagArgs) -> Result<std::process::ExitCode> {
    let target = Reference::parse_tagged(&a.target)?;
    if target.digest.is_some() {
        bail!(
            "refusing to create a tag with a digest reference: {}",
            a.target
        );
    }
    store.tag(&a.source, &target)?;
    Ok(OK)
}

fn rmi(store: &Store, a: &RmiArgs) -> Result<std::process::ExitCode> {
    let results = store.remove(&a.images, a.force)?;
    let mut failed = false;
    for r in results {
        match r {
            Ok(events) => print_events(&events, false),
            Err(e) => {
                failed = true;
                eprintln!("Error: {e}");
            }
        }
    }
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        OK
    })
}

pub(crate) fn print_events(events: &[RemoveEvent], lower: bool) {
    for e in events {
        match e {
            RemoveEvent::Untagged(t) => {
                println!("{}: {t}", if lower { "untagged" } else { "Untagged" });
            }
            RemoveEvent::Deleted(d) => {
                println!("{}: {d}", if lower { "deleted" } else { "Deleted" });
            }
        }
    }
}

fn ellipsis(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

fn history(store: &Store, a: &HistoryArgs) -> Result<std::process::ExitCode> {
    let img = store.image(&store.resolve(&a.image)?)?;
    let layers = store.layers(&img)?;
    let mut rows: Vec<Value> = Vec::new();
    let mut li = 0;
    let created_of = |c: Option<&str>| {
        c.and_then(rbuild_image::time::parse_rfc3339)
            .map_or(0, |t| t.0)
    };
    let hist = if img.config.history.is_empty() {
        layers
            .iter()
            .map(|_| rbuild_image::History::default())
            .collect()
    } else {
        img.config.history.clone()
    };
    for h in &hist {
        let size = if h.empty_layer {
            0
        } else {
            let s = layers.get(li).map_or(0, |l| l.content_size);
            li += 1;
            s
        };
        let created = created_of(h.created.as_deref());
        let by = h.created_by.clone().unwrap_or_default();
        let by = if a.no_trunc {
            by
        } else {
            ellipsis(&by.replace('\t', " "), 45)
        };
        rows.push(json!({
            "ID": "<missing>",
            "CreatedSince": if a.human { since(created) } else { h.created.clone().unwrap_or_default() },
            "CreatedAt": h.created.clone().unwrap_or_default(),
            "CreatedBy": by,
            "Size": if a.human { human_size(size) } else { size.to_string() },
            "Comment": h.comment.clone().unwrap_or_default(),
        }));
    }
    rows.reverse();
    if let Some(first) = rows.first_mut() {
        first["ID"] = Value::String(if a.no_trunc {
            img.id.to_string()
        } else {
            img.id.hex()[..12].to_owned()
        });
    }
    if a.quiet {
        for r in &rows {
            if r["ID"] != "<missing>" {
                println!("{}", r["ID"].as_str().unwrap_or_default());
            }
        }
        return Ok(OK);
    }
    let format = a.format.clone().unwrap_or_else(|| {
        "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}".into()
    });
    let header = json!({"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "CreatedBy": "CREATED BY", "Size": "SIZE", "Comment": "COMMENT"});
    print_templated(&format, &header, &rows)?;
    Ok(OK)
}

/// `docker image inspect`'s object for an image.
fn inspect_value(store: &Store, img: &Image) -> Result<Value> {
    let cfg = &img.config;
    let mut c = Map::new();
    for (k, v) in [
        ("Hostname", json!("")),
        ("Domainname", json!("")),
        ("User", json!("")),
        ("AttachStdin", json!(false)),
        ("AttachStdout", json!(false)),
        ("AttachStderr", json!(false)),
        ("Tty", json!(false)),
        ("OpenStdin", json!(false)),
        ("StdinOnce", json!(false)),
        ("Env", Value::Null),
        ("Cmd", Value::Null),
        ("Image", json!("")),
        ("Volumes", Value::Null),
        ("WorkingDir", json!("")),
        ("Entrypoint", Value::Null),
        ("OnBuild", Value::Null),
        ("Labels", Value::Null),
    ] {
        c.insert(k.to_owned(), v);
    }
    if let Value::Object(m) = serde_json::to_value(&cfg.config)? {
        for (k, v) in m {
            c.insert(k, v);
        }
    }
    let (_, _, mdigest) = store.manifest(img)?;
    // What it was pulled or pushed as; else the digest of the manifest `save`
    // writes, per repository it is tagged in.
    let mut repos: Vec<String> = if img.record.repo_digests.is_empty() {
        img.tags
            .iter()
            .map(|t| format!("{}@{mdigest}", t.repo))
            .collect()
    } else {
        img.record.repo_digests.clone()
    };
    repos.dedup();
    let comment = cfg
        .extra
        .get("comment")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| cfg.history.last().and_then(|h| h.comment.clone()))
        .unwrap_or_default();
    let mut v = Map::new();
    v.insert("Id".into(), json!(img.id));
    v.insert(
        "RepoTags".into(),
        json!(img.tags.iter().map(ToString::to_string).collect::<Vec<_>>()),
    );
    v.insert("RepoDigests".into(), json!(repos));
    v.insert(
        "Parent".into(),
        json!(
            img.record
                .parent
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        ),
    );
    v.insert("Comment".into(), json!(comment));
    v.insert(
        "Created".into(),
        json!(cfg.created.clone().unwrap_or_default()),
    );
    v.insert(
        "DockerVersion".into(),
        cfg.extra
            .get("docker_version")
            .cloned()
            .unwrap_or(json!("")),
    );
    v.insert(
        "Author".into(),
        json!(cfg.author.clone().unwrap_or_default()),
    );
    v.insert("Config".into(), Value::Object(c));
    v.insert("Architecture".into(), json!(cfg.architecture));
    if let Some(var) = &cfg.variant {
        v.insert("Variant".into(), json!(var));
    }
    v.insert("Os".into(), json!(cfg.os));
    v.insert("Size".into(), json!(store.image_size(img)?));
    v.insert(
        "RootFS".into(),
        json!({"Type": cfg.rootfs.kind, "Layers": cfg.rootfs.diff_ids}),
    );
    v.insert("Metadata".into(), json!({"LastTagTime": img.record.last_tag_time.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into())}));
    Ok(Value::Object(v))
}

fn inspect(store: &Store, a: &InspectArgs) -> Result<std::process::ExitCode> {
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for name in &a.images {
        match store.resolve(name).and_then(|id| store.image(&id)) {
            Ok(img) => values.push(inspect_value(store, &img)?),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if let Some(f) = &a.format {
        let t = Template::parse(f).map_err(|e| anyhow!(e))?;
        for v in &values {
            println!("{}", t.render(v).map_err(|e| anyhow!("template: {e}"))?);
        }
    } else {
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        serde::Serialize::serialize(&Value::Array(values), &mut ser)?;
        buf.push(b'\n');
        std::io::stdout().write_all(&buf)?;
    }
    for e in &errors {
        eprintln!("Error: {e}");
    }
    Ok(if errors.is_empty() {
        OK
    } else {
        std::process::ExitCode::FAILURE
    })
}

fn prune(store: &Store, a: &PruneArgs) -> Result<std::process::ExitCode> {
    if !a.filter.is_empty() {
        bail!(
            "image prune filters are not supported yet: {}",
            a.filter.join(", ")
        );
    }
    if !a.force {
        let warning = if a.all {
            "WARNING! This will remove all images without at least one container associated to them."
        } else {
            "WARNING! This will remove all dangling images."
        };
        print!("{warning}\nAre you sure you want to continue? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Ok(OK);
        }
    }
    let (events, reclaimed) = store.prune(a.all)?;
    if !events.is_empty() {
        println!("Deleted Images:");
        print_events(&events, true);
        println!();
    }
    println!("Total reclaimed space: {}", human_size(reclaimed));
    let _ = go_json;
    Ok(OK)
}

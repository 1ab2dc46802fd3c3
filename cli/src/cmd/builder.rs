//! `rbuild builder prune`.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use rbuild_engine::gc::{self, PruneOptions};
use rbuild_image::Store;

use super::fmt::human_size;

#[derive(clap::Subcommand)]
pub enum BuilderCommand {
    /// Manage the build cache
    #[command(subcommand)]
    Builder(BuilderSub),
}

#[derive(clap::Subcommand)]
pub enum BuilderSub {
    /// Remove build cache
    Prune(BuilderPruneArgs),
}

#[derive(clap::Args)]
pub struct BuilderPruneArgs {
    /// Remove all unused build cache, not just dangling ones (cache mounts too)
    #[arg(short, long)]
    pub all: bool,
    /// Do not prompt for confirmation
    #[arg(short, long)]
    pub force: bool,
    /// Provide filter values (`until=24h`)
    #[arg(long)]
    pub filter: Vec<String>,
    /// Amount of disk space to keep for cache (`10GB`, `512MiB`, bytes)
    #[arg(long, value_name = "SIZE")]
    pub keep_storage: Option<String>,
}

pub fn run(cmd: &BuilderCommand, root: &Path) -> Result<()> {
    let BuilderCommand::Builder(BuilderSub::Prune(a)) = cmd;
    let opts = prune_options(a)?;
    if !a.force && !confirm(a.all)? {
        println!("Total reclaimed space: {}", human_size(0));
        return Ok(());
    }
    let reclaimed = prune_cache(root, &opts)?;
    println!("Total reclaimed space: {}", human_size(reclaimed));
    Ok(())
}

/// Asks as docker does; `true` on `y`/`yes`.
fn confirm(all: bool) -> Result<bool> {
    let warning = if all {
        "WARNING! This will remove all build cache."
    } else {
        "WARNING! This will remove all dangling build cache."
    };
    print!("{warning} Are you sure you want to continue? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Prunes and prints the deleted objects; returns the bytes reclaimed.
pub fn prune_cache(root: &Path, opts: &PruneOptions) -> Result<u64> {
    let store =
        Store::open(root).with_context(|| format!("opening the state root {}", root.display()))?;
    let report = gc::prune(root, &store, opts)
        .with_context(|| format!("pruning the build cache of {}", root.display()))?;
    if !report.removed.is_empty() {
        println!("Deleted build cache objects:");
        for r in &report.removed {
            println!("{}", r.id);
        }
        println!();
    }
    Ok(report.reclaimed)
}

pub fn prune_options(a: &BuilderPruneArgs) -> Result<PruneOptions> {
    let mut opts = PruneOptions {
        all: a.all,
        ..PruneOptions::default()
    };
    for f in &a.filter {
        match f.split_once('=') {
            Some(("until", v)) => {
                opts.until =
                    Some(parse_duration(v).with_context(|| format!("invalid filter value {f:?}"))?);
            }
            _ => bail!("invalid filter {f:?}: builder prune supports until=DURATION"),
        }
    }
    if let Some(s) = &a.keep_storage {
        opts.keep_storage =
            Some(parse_size(s).with_context(|| format!("invalid --keep-storage {s:?}"))?);
    }
    Ok(opts)
}

/// A Go duration: `90s`, `10m`, `1h30m`, `1.5h`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        bail!("empty duration");
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..n]
            .parse()
            .map_err(|_| anyhow::anyhow!("{s:?} is not a duration (like 24h or 90m)"))?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => bail!("unknown unit {other:?} in duration {s:?}"),
        };
        rest = &rest[u..];
        total += num * secs;
    }
    Ok(Duration::from_secs_f64(total))
}

/// A size as docker's `RAMInBytes`: a number with an optional binary unit
/// (`b`, `k`/`kb`/`kib`, `m`..., case-insensitive).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let n = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let num: f64 = t[..n]
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a size (like 10GB or 512MiB)"))?;
    let mult: u64 = match t[n..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        "p" | "pb" | "pib" => 1 << 50,
        other => bail!("unknown unit {other:?} in size {s:?}"),
    };
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    Ok((num * mult as f64) as u64)
}

//! `rbuild system df` and `rbuild system prune`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use rbuild_engine::gc::{self, PruneOptions};
use rbuild_image::Store;

use super::fmt::{human_size, since, tabwrite};

#[derive(clap::Subcommand)]
pub enum SystemCommand {
    /// Manage rbuild's state
    #[command(subcommand)]
    System(SystemSub),
}

#[derive(clap::Subcommand)]
pub enum SystemSub {
    /// Show disk usage: images, build cache, local volumes (cache mounts)
    Df {
        /// Show detailed information on space usage
        #[arg(short, long)]
        verbose: bool,
    },
    /// Remove unused data: dangling images (all unused with -a), then build cache
    Prune {
        /// Remove all unused images, not just dangling ones, and all build cache
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation
        #[arg(short, long)]
        force: bool,
    },
}

pub fn run(cmd: &SystemCommand, root: &Path) -> Result<()> {
    match cmd {
        SystemCommand::System(SystemSub::Df { verbose }) => df(root, *verbose),
        SystemCommand::System(SystemSub::Prune { all, force }) => prune(root, *all, *force),
    }
}

fn prune(root: &Path, all: bool, force: bool) -> Result<()> {
    if !force {
        let (images, cache) = if all {
            (
                "all images without at least one container associated to them",
                "all build cache",
            )
        } else {
            ("all dangling images", "unused build cache")
        };
        print!(
            "WARNING! This will remove:\n  - {images}\n  - {cache}\n\nAre you sure you want to continue? [y/N] "
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            println!("Total reclaimed space: {}", human_size(0));
            return Ok(());
        }
    }
    let store =
        Store::open(root).with_context(|| format!("opening the state root {}", root.display()))?;
    let (events, images_reclaimed) = store.prune(all)?;
    if !events.is_empty() {
        println!("Deleted Images:");
        super::image::print_events(&events, true);
        println!();
    }
    drop(store);
    let cache = super::builder::prune_cache(
        root,
        &PruneOptions {
            all,
            ..PruneOptions::default()
        },
    )?;
    println!(
        "Total reclaimed space: {}",
        human_size(images_reclaimed + cache)
    );
    Ok(())
}

fn pct(part: u64, total: u64) -> u64 {
    (part * 100).checked_div(total).unwrap_or(0)
}

/// `docker system df`: every byte of the root in one row. Images: the blobs,
/// layer records and index of the store (layers kept as build snapshots are
/// in the build cache, marked active); Build Cache: the snapshots and the
/// records that speed builds up; Local Volumes: the cache mounts.
fn df(root: &Path, verbose: bool) -> Result<()> {
    let store =
        Store::open(root).with_context(|| format!("opening the state root {}", root.display()))?;
    let images = gc::images_usage(root, &store).context("measuring the images")?;
    let cache = gc::usage(root, &store).context("measuring the build cache")?;
    let mut t = String::from("TYPE\tTOTAL\tACTIVE\tSIZE\tRECLAIMABLE\n");
    let _ = writeln!(
        t,
        "Images\t{}\t{}\t{}\t{} ({}%)",
        images.count,
        images.active,
        human_size(images.size),
        human_size(images.reclaimable),
        pct(images.reclaimable, images.size)
    );
    let mounts_size: u64 = cache.mounts.iter().map(|m| m.1).sum::<u64>() + images.mounts_extra;
    let _ = writeln!(
        t,
        "Local Volumes\t{}\t0\t{}\t{} ({}%)",
        cache.mounts.len(),
        human_size(mounts_size),
        human_size(mounts_size),
        pct(mounts_size, mounts_size)
    );
    let _ = writeln!(
        t,
        "Build Cache\t{}\t{}\t{}\t{}",
        cache.items.len(),
        cache.items.iter().filter(|i| i.in_use).count(),
        human_size(cache.size()),
        human_size(cache.reclaimable())
    );
    print!("{}", tabwrite(&t));
    if verbose {
        println!("\nImages space usage:\n");
        let mut v = String::from("REPOSITORY\tTAG\tIMAGE ID\tSIZE\n");
        for i in &store.images()? {
            let size = store.image_size(i)?;
            if i.tags.is_empty() {
                let _ = writeln!(
                    v,
                    "<none>\t<none>\t{}\t{}",
                    &i.id.hex()[..12],
                    human_size(size)
                );
            }
            for tag in &i.tags {
                let _ = writeln!(
                    v,
                    "{}\t{}\t{}\t{}",
                    tag.repo,
                    tag.tag.as_deref().unwrap_or("<none>"),
                    &i.id.hex()[..12],
                    human_size(size)
                );
            }
        }
        print!("{}", tabwrite(&v));
        println!("\nLocal Volumes space usage:\n");
        let mut v = String::from("VOLUME NAME\tLINKS\tSIZE\n");
        for (name, size) in &cache.mounts {
            let _ = writeln!(v, "{name}\t0\t{}", human_size(*size));
        }
        print!("{}", tabwrite(&v));
        println!("\nBuild cache usage: {}\n", human_size(cache.size()));
        let mut v = String::from("CACHE ID\tCACHE TYPE\tSIZE\tLAST USED\tIN USE\tDESCRIPTION\n");
        let mut items: Vec<_> = cache.items.iter().collect();
        items.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.id.cmp(&b.id)));
        for i in items {
            let _ = writeln!(
                v,
                "{}\tregular\t{}\t{}\t{}\t{}",
                i.id,
                human_size(i.size),
                since(i64::try_from(i.last_used).unwrap_or(i64::MAX)),
                i.in_use,
                i.description
            );
        }
        print!("{}", tabwrite(&v));
    }
    Ok(())
}

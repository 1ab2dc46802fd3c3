//! `rbuild system df`.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use rbuild_image::Store;

use super::fmt::{human_size, tabwrite};

#[derive(clap::Subcommand)]
pub enum SystemCommand {
    /// Manage rbuild's state
    #[command(subcommand)]
    System(SystemSub),
}

#[derive(clap::Subcommand)]
pub enum SystemSub {
    /// Show disk usage: images, layers, build cache
    Df {
        /// Show detailed information on space usage
        #[arg(short, long)]
        verbose: bool,
    },
}

pub fn run(cmd: &SystemCommand, root: &Path) -> Result<()> {
    let SystemCommand::System(SystemSub::Df { verbose }) = cmd;
    let verbose = *verbose;
    let store = Store::open(root)?;
    let images = store.images()?;
    let blobs = store.blobs()?;
    let mut layer_ids = HashSet::new();
    for i in &images {
        layer_ids.extend(i.diff_ids().iter().cloned());
    }
    let size_of =
        |d: &rbuild_image::Digest| blobs.iter().find(|(b, _)| b == d).map_or(0, |(_, s)| *s);
    // Images: a tagged image is active (in use by name); dangling ones are reclaimable,
    // as are the layers only they use.
    let tagged: Vec<_> = images.iter().filter(|i| !i.dangling()).collect();
    let mut active_layers = HashSet::new();
    for i in &tagged {
        active_layers.extend(i.diff_ids().iter().cloned());
    }
    let layers_size: u64 = layer_ids.iter().map(size_of).sum();
    let active_size: u64 = active_layers.iter().map(size_of).sum();
    let orphans: Vec<_> = blobs
        .iter()
        .filter(|(d, _)| !layer_ids.contains(d) && !images.iter().any(|i| i.id == *d))
        .collect();
    let orphan_size: u64 = orphans.iter().map(|(_, s)| *s).sum();
    let reclaim = layers_size - active_size;
    let pct = |part: u64, total: u64| (part * 100).checked_div(total).unwrap_or(0);
    let cache_dir = root.join("cache");
    let (cache_n, cache_size) = dir_usage(&cache_dir);
    let mut t = String::from("TYPE\tTOTAL\tACTIVE\tSIZE\tRECLAIMABLE\n");
    let _ = writeln!(
        t,
        "Images\t{}\t{}\t{}\t{} ({}%)",
        images.len(),
        tagged.len(),
        human_size(layers_size),
        human_size(reclaim),
        pct(reclaim, layers_size)
    );
    let _ = writeln!(
        t,
        "Layers\t{}\t{}\t{}\t{} ({}%)",
        layer_ids.len() + orphans.len(),
        active_layers.len(),
        human_size(layers_size + orphan_size),
        human_size(reclaim + orphan_size),
        pct(reclaim + orphan_size, layers_size + orphan_size)
    );
    let _ = writeln!(
        t,
        "Build Cache\t{cache_n}\t0\t{}\t{}",
        human_size(cache_size),
        human_size(cache_size)
    );
    print!("{}", tabwrite(&t));
    if verbose {
        println!("\nImages space usage:\n");
        let mut v = String::from("REPOSITORY\tTAG\tIMAGE ID\tSIZE\n");
        for i in &images {
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
    }
    Ok(())
}

fn dir_usage(p: &Path) -> (u64, u64) {
    let Ok(rd) = std::fs::read_dir(p) else {
        return (0, 0);
    };
    let mut n = 0;
    let mut size = 0;
    for e in rd.flatten() {
        n += 1;
        size += walk_size(&e.path());
    }
    (n, size)
}

fn walk_size(p: &Path) -> u64 {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            std::fs::read_dir(p).map_or(0, |rd| rd.flatten().map(|e| walk_size(&e.path())).sum())
        }
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

//! `rbuild pull` and `rbuild push`, with docker's output: one line per layer
//! status (`<id>: Pulling fs layer`, `Download complete`, `Pull complete`,
//! `Pushed`, `Layer already exists`, `Mounted from REPO`), then `Digest:` and
//! `Status:` (pull) or `TAG: digest: sha256:... size: N` (push).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use rbuild_engine::transfer::{self, RegistryOptions, TransferEvent};
use rbuild_image::{Reference, Store};
use rbuild_oci::Platform;

#[derive(clap::Args)]
pub struct PullArgs {
    /// NAME[:TAG|@DIGEST]
    name: String,
    /// Download all tagged images in the repository
    #[arg(short = 'a', long = "all-tags")]
    all_tags: bool,
    /// Set platform if server is multi-platform capable (os/arch[/variant])
    #[arg(long)]
    platform: Option<String>,
    /// Suppress verbose output
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// NAME[:TAG]
    name: String,
    /// Suppress verbose output
    #[arg(short, long)]
    quiet: bool,
}

/// The plain line of an event (none for byte counts).
pub fn plain_line(ev: &TransferEvent) -> Option<String> {
    match ev {
        TransferEvent::Line(l) => Some(l.clone()),
        TransferEvent::Layer { id, status } => Some(format!("{id}: {status}")),
        TransferEvent::Progress { .. } => None,
    }
}

fn open_store(root: &Path) -> Result<Store> {
    Store::open(root).with_context(|| format!("opening the image store {}", root.display()))
}

pub fn pull(args: &PullArgs, root: &Path) -> Result<ExitCode> {
    let platform = match &args.platform {
        Some(p) => Some(
            Platform::parse(p)
                .ok_or_else(|| anyhow!("invalid platform {p:?}: want os/arch[/variant]"))?,
        ),
        None => None,
    };
    let store = open_store(root)?;
    let opts = RegistryOptions::default();
    let names = if args.all_tags {
        let r =
            Reference::parse(&args.name).map_err(|e| anyhow!("invalid reference format: {e}"))?;
        if r.tag.is_some() || r.digest.is_some() {
            anyhow::bail!("tag can't be used with --all-tags/-a");
        }
        let mut tags = transfer::list_tags(&args.name, &opts)?;
        tags.sort();
        tags.into_iter()
            .map(|t| format!("{}:{t}", r.repo))
            .collect()
    } else {
        vec![args.name.clone()]
    };
    let quiet = args.quiet;
    for name in names {
        let pulled = transfer::pull(&store, &name, platform.as_ref(), &opts, &mut |ev| {
            if !quiet {
                if let Some(l) = plain_line(&ev) {
                    println!("{l}");
                }
            }
        })?;
        println!("{}", pulled.reference.full_name());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn push(args: &PushArgs, root: &Path) -> Result<ExitCode> {
    let store = open_store(root)?;
    let opts = RegistryOptions::default();
    let quiet = args.quiet;
    let pushed = transfer::push(&store, &args.name, &opts, &mut |ev| {
        if !quiet {
            if let Some(l) = plain_line(&ev) {
                println!("{l}");
            }
        }
    })?;
    if quiet {
        println!("{}", pushed.reference.full_name());
    }
    Ok(ExitCode::SUCCESS)
}

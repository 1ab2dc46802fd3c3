//! `rbuild image squash` and `rbuild image waste`: squashing an image of the
//! store, and what its layers waste (see `rbuild_engine::squash`).

use anyhow::{Result, bail};
use rbuild_engine::squash::SquashFrom;
use rbuild_image::{Reference, Store};

#[derive(clap::Args)]
pub struct SquashArgs {
    /// The image (name, ID or name@digest)
    image: String,
    /// Keep the layers up to this one (a diff ID or a prefix of its hex) and
    /// squash everything above it; or a number N: squash the last N layers.
    /// Default: the layers above the image's base image (all when unknown)
    #[arg(long, value_name = "LAYER_ID|N")]
    from: Option<String>,
    /// Name the squashed image (`name:tag`); repeatable
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    tags: Vec<String>,
}

#[derive(clap::Args)]
pub struct WasteArgs {
    /// The image (name, ID or name@digest)
    image: String,
    /// `text` or `json`
    #[arg(long, default_value = "text", value_name = "text|json")]
    format: String,
    /// How many of the largest wasted files to list
    #[arg(long, default_value_t = 10, value_name = "N")]
    top: usize,
}

pub fn squash(store: &Store, a: &SquashArgs) -> Result<std::process::ExitCode> {
    let mut tags = Vec::new();
    for t in &a.tags {
        let r = Reference::parse_tagged(t)?;
        if r.digest.is_some() {
            bail!("refusing to create a tag with a digest reference: {t}");
        }
        tags.push(r);
    }
    let img = store.resolve_and_hold(&a.image)?;
    let keep = match &a.from {
        Some(f) => match f.parse::<usize>() {
            Ok(n) if f.len() < 12 => SquashFrom::Last(n),
            _ => SquashFrom::Layer(f.clone()),
        }
        .kept(&img)?,
        None => rbuild_engine::squash::base_layers(store, &img).unwrap_or(0),
    };
    let done = rbuild_engine::squash::squash_image(store, &img, keep, tags)?;
    eprintln!("{}", done.summary());
    if let Some(w) = done.warning() {
        eprintln!("WARNING: {w}");
    }
    println!("{}", done.id());
    Ok(std::process::ExitCode::SUCCESS)
}

pub fn waste(store: &Store, a: &WasteArgs) -> Result<std::process::ExitCode> {
    let img = store.resolve_and_hold(&a.image)?;
    let report = rbuild_engine::squash::waste(store, &img, a.top)?;
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&report)?),
        "text" => report.render(&mut std::io::stdout().lock())?,
        f => bail!("unknown format {f:?}: use text or json"),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

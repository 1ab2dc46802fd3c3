//! `import`: a rootfs tarball (plain, gzip, bzip2, xz, zstd) as a one-layer image.

use std::io::Read;

use crate::config::{History, ImageConfig, RootFs};
use crate::error::Result;
use crate::reference::Reference;
use crate::store::Store;
use rbuild_oci::host_architecture;

use crate::{ContainerConfig, Digest};

/// Options for [`import`].
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    pub tag: Option<Reference>,
    /// The runtime config (after `-c` changes).
    pub config: ContainerConfig,
    /// `-m`: the history comment; default `Imported from SRC`.
    pub message: Option<String>,
    /// What to name as the source in the default comment (`-` for stdin).
    pub source: String,
    /// `created`, seconds since the epoch (default: now).
    pub created: Option<i64>,
}

/// Imports `input` as a one-layer image; returns the image ID.
pub fn import<R: Read + Send + 'static>(
    store: &Store,
    input: R,
    opts: ImportOptions,
) -> Result<Digest> {
    let mut txn = store.begin()?;
    let (diff_id, _) = txn.put_layer(input)?;
    let created = opts.created.map_or_else(crate::time::now, |s| (s, 0));
    let created = crate::time::format_rfc3339(created.0, created.1);
    let comment = opts
        .message
        .unwrap_or_else(|| format!("Imported from {}", opts.source));
    let cfg = ImageConfig {
        created: Some(created.clone()),
        architecture: host_architecture().into(),
        os: "linux".into(),
        config: opts.config,
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id],
        },
        history: vec![History {
            created: Some(created),
            comment: Some(comment),
            ..History::default()
        }],
        ..ImageConfig::default()
    };
    let id = txn.add_config(&cfg, opts.tag.into_iter().collect(), None)?;
    txn.commit()?;
    Ok(id)
}

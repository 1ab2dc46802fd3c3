//! Squashing layers: a stack of layer tars (bottom first) folded into one
//! layer that shows, on top of the layers kept below it, the file system the
//! folded layers showed.
//!
//! Streaming in two passes: every layer is first read for its entries only (a
//! tar file is skipped through with seeks; an overlay upper dir is walked
//! without reading a file), which gives an index of entries, never contents;
//! the index is merged into the tree the folded layers make (whiteouts and
//! opaque directories applied as the OCI image spec says, hard links followed
//! to their inode); then the tree is written as one sorted, deterministic tar,
//! each file's bytes read from the layer (and offset) its inode came from.
//! Peak memory grows with the number of entries, not with their size.
//!
//! What the squashed layer keeps: a whiteout only where a kept lower layer has
//! the path, an opaque marker only on a directory a kept lower layer has with
//! something in it; a file deleted or overwritten by a later folded layer is
//! gone; modes, owners, mtimes, xattrs (file capabilities included), device
//! numbers and hard-link groups are those of the folded layers' file system
//! (a hard link whose other names were all deleted becomes a file; one into a
//! kept lower layer stays a link when the target is still there there, else
//! the content is copied from that layer).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::snapshots::{UpperItem, walk_upper};
use crate::tarwrite::{EntryKind, EntryMeta, TarWriter};

/// Where a layer's tar comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerInput {
    /// An uncompressed layer tar file (read with seeks).
    Tar(PathBuf),
    /// An overlay upper dir, as [`crate::snapshots::SnapshotStore::write_upper_layer`]
    /// writes it with this mtime clamp.
    Upper { dir: PathBuf, epoch: Option<u64> },
}

/// One item of a layer's index.
#[derive(Clone, Debug)]
enum Item {
    /// An entry (its path cleaned, no leading `/`; the root is empty). `data`:
    /// where a regular file's bytes start in a tar input.
    Entry { meta: EntryMeta, data: u64 },
    /// `.wh.NAME`: the path it removes.
    Whiteout(Vec<u8>),
    /// `.wh..wh..opq`: the directory it makes opaque.
    Opaque(Vec<u8>),
}

/// The entries of one layer, without their contents.
#[derive(Debug)]
pub struct LayerIndex {
    input: LayerInput,
    items: Vec<Item>,
}

impl LayerIndex {
    /// Reads a layer's entries (not its file contents).
    pub fn read(input: LayerInput) -> Result<Self> {
        let items = match &input {
            LayerInput::Tar(path) => index_tar(path)?,
            LayerInput::Upper { dir, epoch } => index_upper(dir, *epoch)?,
        };
        Ok(Self { input, items })
    }

    pub fn input(&self) -> &LayerInput {
        &self.input
    }

    /// The number of items (entries, whiteouts, opaque markers).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The layer's entries in order (whiteouts and opaque markers left out).
    pub fn entries(&self) -> impl Iterator<Item = &EntryMeta> {
        self.items.iter().filter_map(|i| match i {
            Item::Entry { meta, .. } => Some(meta),
            Item::Whiteout(_) | Item::Opaque(_) => None,
        })
    }

    /// Calls `f` with the bytes of every regular file of the layer up to
    /// `limit` bytes, in order (one open of a tar input, a seek per file).
    pub fn read_small_files(&self, limit: u64, f: &mut dyn FnMut(&EntryMeta, &[u8])) -> Result<()> {
        let mut tar = None;
        let mut buf = Vec::new();
        for item in &self.items {
            let Item::Entry { meta, data } = item else {
                continue;
            };
            if meta.kind != EntryKind::File || meta.size > limit {
                continue;
            }
            buf.clear();
            match &self.input {
                LayerInput::Tar(path) => {
                    if tar.is_none() {
                        tar = Some(fs_err::File::open(path)?);
                    }
                    let file = tar.as_mut().expect("opened");
                    file.seek(SeekFrom::Start(*data))?;
                    file.take(meta.size).read_to_end(&mut buf)?;
                }
                LayerInput::Upper { dir, .. } => {
                    let path = dir.join(std::ffi::OsStr::from_bytes(&meta.path));
                    fs_err::File::open(path)?.read_to_end(&mut buf)?;
                }
            }
            f(meta, &buf);
        }
        Ok(())
    }
}

fn shown(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn bad(path: &[u8], reason: &str) -> Error {
    Error::BadEntry {
        path: shown(path),
        reason: reason.to_owned(),
    }
}

/// A cleaned tar name as one `/`-joined path.
fn clean(raw: &[u8]) -> Result<Vec<u8>> {
    Ok(crate::apply::clean_name(raw)?.join(&b'/'))
}

fn index_tar(path: &std::path::Path) -> Result<Vec<Item>> {
    let f = fs_err::File::open(path)?;
    let mut archive = tar::Archive::new(f);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| Error::BadTar(format!("{}: {e}", path.display())))?;
    let mut items = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::BadTar(format!("{}: {e}", path.display())))?;
        let h = entry.header().clone();
        let ty = h.entry_type();
        if matches!(ty, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader) {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let p = clean(&raw)?;
        let (dir, base) = match p.iter().rposition(|&b| b == b'/') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (&b""[..], &p[..]),
        };
        if base == b".wh..wh..opq" {
            items.push(Item::Opaque(dir.to_vec()));
            continue;
        }
        if let Some(victim) = base.strip_prefix(b".wh.") {
            if victim.starts_with(b".wh.") || victim.is_empty() {
                continue; // reserved names (e.g. .wh..wh.plnk)
            }
            let mut v = dir.to_vec();
            if !v.is_empty() {
                v.push(b'/');
            }
            v.extend_from_slice(victim);
            items.push(Item::Whiteout(v));
            continue;
        }
        let link = || -> Result<Vec<u8>> {
            entry
                .link_name_bytes()
                .map(std::borrow::Cow::into_owned)
                .ok_or_else(|| bad(&raw, "link without a target"))
        };
        let kind = match ty {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink(link()?),
            tar::EntryType::Link => {
                let t = clean(&link()?)?;
                if t.is_empty() {
                    return Err(bad(&raw, "hard link to the root"));
                }
                EntryKind::Hardlink(t)
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let ma = h.device_major().ok().flatten().unwrap_or(0);
                let mi = h.device_minor().ok().flatten().unwrap_or(0);
                if ty == tar::EntryType::Char {
                    EntryKind::Char(ma, mi)
                } else {
                    EntryKind::Block(ma, mi)
                }
            }
            tar::EntryType::Fifo => EntryKind::Fifo,
            other => {
                return Err(bad(&raw, &format!("unsupported entry type {other:?}")));
            }
        };
        let mut xattrs = Vec::new();
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let Ok(key) = ext.key() {
                    if let Some(attr) = key.strip_prefix("SCHILY.xattr.") {
                        // As applying does: overlayfs' own attributes are dropped.
                        if !attr.starts_with("trusted.overlay.")
                            && !attr.starts_with("user.overlay.")
                        {
                            xattrs.push((attr.to_owned(), ext.value_bytes().to_vec()));
                        }
                    }
                }
            }
        }
        let size = if kind == EntryKind::File {
            entry.size()
        } else {
            0
        };
        let meta = EntryMeta {
            path: p,
            kind,
            mode: h.mode().map_err(|e| bad(&raw, &e.to_string()))? & 0o7777,
            uid: h.uid().map_err(|e| bad(&raw, &e.to_string()))?,
            gid: h.gid().map_err(|e| bad(&raw, &e.to_string()))?,
            mtime: h.mtime().map_err(|e| bad(&raw, &e.to_string()))?,
            size,
            xattrs,
        };
        items.push(Item::Entry {
            meta,
            data: entry.raw_file_position(),
        });
    }
    Ok(items)
}

fn index_upper(dir: &std::path::Path, epoch: Option<u64>) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut links = HashMap::new();
    walk_upper(dir, &[], &mut links, &mut |item| {
        items.push(match item {
            UpperItem::Entry(meta, _) => {
                let mut meta = meta.clone();
                if let Some(e) = epoch {
                    meta.mtime = meta.mtime.min(e);
                }
                Item::Entry { meta, data: 0 }
            }
            UpperItem::Whiteout(p) => Item::Whiteout(p.to_vec()),
            UpperItem::Opaque(p) => Item::Opaque(p.to_vec()),
        });
        Ok(())
    })?;
    Ok(items)
}

/// No layer set this node (a directory known only as a parent).
const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum What {
    /// A directory no merged layer has an entry for (a parent of one that has).
    #[default]
    Implicit,
    /// A directory: (layer, item) of its entry.
    Dir(u32, u32),
    /// A non-directory: its inode.
    Inode(u32),
    /// Removed (kept only where a base below may have the path).
    Whiteout,
}

#[derive(Debug)]
struct Node {
    what: What,
    /// Hides what the base below had here.
    opaque: bool,
    /// The layer whose entry made this node (`NONE` for implicit ones).
    set_by: u32,
    children: BTreeMap<Vec<u8>, Node>,
}

impl Node {
    fn new(what: What, set_by: u32) -> Self {
        Self {
            what,
            opaque: false,
            set_by,
            children: BTreeMap::new(),
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self.what, What::Implicit | What::Dir(..))
    }
}

/// How an inode's last name went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gone {
    Deleted,
    Overwritten,
}

#[derive(Debug)]
struct Inode {
    layer: u32,
    item: u32,
    /// Made by a kept lower layer.
    base: bool,
    /// The layer that last removed one of its names, and how.
    gone: Option<(u32, Gone)>,
}

fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b""[..], path),
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The folded layers merged over the kept ones, ready to be written as one layer.
pub struct Squash<'a> {
    layers: &'a [LayerIndex],
    keep: usize,
    inodes: Vec<Inode>,
    /// The file system of the kept layers (no whiteouts).
    base: Node,
    /// What the folded layers change on top of it.
    upper: Node,
}

impl<'a> Squash<'a> {
    /// Merges `layers[keep..]` over `layers[..keep]`.
    pub fn new(layers: &'a [LayerIndex], keep: usize) -> Result<Self> {
        let mut s = Self {
            layers,
            keep: keep.min(layers.len()),
            inodes: Vec::new(),
            base: Node::new(What::Implicit, NONE),
            upper: Node::new(What::Implicit, NONE),
        };
        let mut base = Node::new(What::Implicit, NONE);
        for li in 0..s.keep {
            s.merge(&mut base, None, li)?;
        }
        let mut upper = Node::new(What::Implicit, NONE);
        for li in s.keep..layers.len() {
            s.merge(&mut upper, Some(&base), li)?;
        }
        s.base = base;
        s.upper = upper;
        Ok(s)
    }

    /// How many layers are folded.
    pub fn folded(&self) -> usize {
        self.layers.len() - self.keep
    }

    fn entry(&self, layer: u32, item: u32) -> &EntryMeta {
        match &self.layers[layer as usize].items[item as usize] {
            Item::Entry { meta, .. } => meta,
            _ => unreachable!("inodes and directories point at entries"),
        }
    }

    /// Applies layer `li` to `tree` (over `base` when given: then whiteouts
    /// and opaque flags are kept for what `base` has).
    #[allow(clippy::cast_possible_truncation)]
    fn merge(&mut self, tree: &mut Node, base: Option<&Node>, li: usize) -> Result<()> {
        let layers = self.layers;
        let l = li as u32;
        for (ii, item) in layers[li].items.iter().enumerate() {
            match item {
                Item::Opaque(dir) => {
                    // What lower layers had in the directory goes, but for
                    // what this layer wrote there before the marker (kept
                    // with what lies under it, as applying does): the
                    // folded layers' entries are dropped; the base's are
                    // hidden by an opaque marker, or, when a directory
                    // written before the marker keeps the base's files
                    // under it, whited out one by one.
                    let Some((node, bdir)) = Self::walk_with_base(tree, base, dir, true)? else {
                        continue;
                    };
                    let victims: Vec<Vec<u8>> = node
                        .children
                        .iter()
                        .filter(|(_, c)| c.set_by != l)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for v in victims {
                        if let Some(old) = node.children.remove(&v) {
                            mark_gone(&mut self.inodes, &old, l, Gone::Deleted);
                        }
                    }
                    if node.children.values().any(Node::is_dir) {
                        for name in bdir.into_iter().flat_map(|b| b.children.keys()) {
                            if !node.children.contains_key(name) {
                                node.children
                                    .insert(name.clone(), Node::new(What::Whiteout, NONE));
                            }
                        }
                    } else {
                        // Nothing kept that could hold the base's files: one
                        // opaque marker says it.
                        node.opaque = base.is_some();
                    }
                }
                Item::Whiteout(path) => {
                    let (dir, name) = split_last(path);
                    let Some(parent) = Self::walk(tree, base, dir, false)? else {
                        continue;
                    };
                    if let Some(old) = parent.children.remove(name) {
                        mark_gone(&mut self.inodes, &old, l, Gone::Deleted);
                    }
                    if base.is_some() {
                        parent
                            .children
                            .insert(name.to_vec(), Node::new(What::Whiteout, l));
                    }
                }
                Item::Entry { meta, .. } => {
                    if meta.path.is_empty() {
                        if meta.kind != EntryKind::Dir {
                            return Err(bad(b"/", "the root is not a directory"));
                        }
                        tree.what = What::Dir(l, ii as u32);
                        tree.set_by = l;
                        continue;
                    }
                    let what = match &meta.kind {
                        EntryKind::Dir => What::Dir(l, ii as u32),
                        EntryKind::Hardlink(t) => {
                            What::Inode(Self::link_target(tree, base, t, &meta.path)?)
                        }
                        _ => {
                            self.inodes.push(Inode {
                                layer: l,
                                item: ii as u32,
                                base: base.is_none(),
                                gone: None,
                            });
                            What::Inode((self.inodes.len() - 1) as u32)
                        }
                    };
                    let (dir, name) = split_last(&meta.path);
                    let parent = Self::walk(tree, base, dir, true)?
                        .ok_or_else(|| bad(&meta.path, "its parent is not a directory"))?;
                    let is_dir = matches!(what, What::Dir(..));
                    match parent.children.get_mut(name) {
                        Some(old) if is_dir && old.is_dir() => {
                            old.what = what;
                            old.set_by = l;
                        }
                        Some(old) => {
                            let was = std::mem::replace(old, Node::new(what, l));
                            // A directory where something else was hides what
                            // the base had there.
                            old.opaque = is_dir && base.is_some();
                            mark_gone(&mut self.inodes, &was, l, Gone::Overwritten);
                        }
                        None => {
                            parent.children.insert(name.to_vec(), Node::new(what, l));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The directory node at `dir`, made (as an implicit directory) where
    /// missing when `create`, or when the base shows it. `None`: nothing
    /// there (a whiteout has nothing to remove), or a non-directory on the way.
    fn walk<'t>(
        tree: &'t mut Node,
        base: Option<&Node>,
        dir: &[u8],
        create: bool,
    ) -> Result<Option<&'t mut Node>> {
        Ok(Self::walk_with_base(tree, base, dir, create)?.map(|(n, _)| n))
    }

    /// [`Self::walk`], with the base's directory at `dir` when the base shows
    /// through there.
    fn walk_with_base<'t, 'b>(
        tree: &'t mut Node,
        base: Option<&'b Node>,
        dir: &[u8],
        create: bool,
    ) -> Result<Option<(&'t mut Node, Option<&'b Node>)>> {
        let mut node = tree;
        let mut b = base.filter(|_| !node.opaque);
        for c in components(dir) {
            let bchild = b.and_then(|b| b.children.get(c)).filter(|n| n.is_dir());
            if !node.children.contains_key(c) {
                if !create && bchild.is_none() {
                    return Ok(None);
                }
                node.children
                    .insert(c.to_vec(), Node::new(What::Implicit, NONE));
            }
            let child = node.children.get_mut(c).expect("inserted");
            match child.what {
                What::Inode(_) => {
                    if create {
                        return Err(bad(dir, "a parent directory is not a directory"));
                    }
                    return Ok(None);
                }
                What::Whiteout => {
                    if !create {
                        return Ok(None);
                    }
                    // Removed, then written into: a new directory (not an
                    // entry of this layer: a later opaque marker removes it,
                    // as applying does).
                    *child = Node::new(What::Implicit, NONE);
                    child.opaque = base.is_some();
                }
                _ => {}
            }
            b = if child.opaque { None } else { bchild };
            node = child;
        }
        Ok(Some((node, b)))
    }

    /// The inode a hard link entry of the merged layer names.
    fn link_target(tree: &Node, base: Option<&Node>, target: &[u8], path: &[u8]) -> Result<u32> {
        let missing = || {
            bad(
                path,
                &format!("hard link target {} does not exist", shown(target)),
            )
        };
        let mut node = Some(tree);
        let mut b = base.filter(|_| !tree.opaque);
        let comps: Vec<&[u8]> = components(target).collect();
        for (k, c) in comps.iter().enumerate() {
            let last = k + 1 == comps.len();
            let bchild = b.and_then(|b| b.children.get(*c));
            let child = node.and_then(|n| n.children.get(*c));
            match child {
                Some(n) => {
                    if matches!(n.what, What::Whiteout) || (!last && !n.is_dir()) {
                        return Err(missing());
                    }
                    b = if n.opaque { None } else { bchild };
                }
                None => b = bchild,
            }
            if !last && b.is_some_and(|n| !n.is_dir()) {
                b = None;
            }
            node = child;
        }
        let found = node.or(b).ok_or_else(missing)?;
        match found.what {
            What::Inode(id) => Ok(id),
            What::Whiteout => Err(missing()),
            _ => Err(bad(path, "hard link to a directory")),
        }
    }

    /// Writes the squashed layer to `out`; returns the writer and the layer's
    /// content size (regular files and symlink targets). Times are clamped to
    /// `epoch` when given.
    pub fn write<W: Write>(&self, out: W, epoch: Option<u64>) -> Result<(W, u64)> {
        let mut w = Emit {
            s: self,
            tar: TarWriter::new(out, epoch),
            first: HashMap::new(),
            anchors: self.anchors(),
            files: (0..self.layers.len()).map(|_| None).collect(),
            dry: None,
        };
        w.plan(&self.upper, &[]);
        w.run()?;
        let content = w.tar.content_size();
        Ok((w.tar.finish()?, content))
    }

    /// The size of the tar [`Squash::write`] would write (nothing is read).
    pub fn size(&self) -> Result<u64> {
        let skipped = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut w = Emit {
            s: self,
            tar: TarWriter::new(Counter(0), None),
            first: HashMap::new(),
            anchors: self.anchors(),
            files: Vec::new(),
            dry: Some(skipped.clone()),
        };
        w.plan(&self.upper, &[]);
        w.run()?;
        Ok(w.tar.finish()?.0 + skipped.get())
    }

    /// For inodes of the base that the folded layers link to: a path of the
    /// base that still names it after the squash (the smallest), if any.
    fn anchors(&self) -> HashMap<u32, Vec<u8>> {
        let mut wanted = HashSet::new();
        collect_inodes(&self.upper, &mut |id| {
            if self.inodes[id as usize].base {
                wanted.insert(id);
            }
        });
        let mut out = HashMap::new();
        if !wanted.is_empty() {
            self.find_anchors(&self.base, &[], &wanted, &mut out);
        }
        out
    }

    fn find_anchors(
        &self,
        node: &Node,
        path: &[u8],
        wanted: &HashSet<u32>,
        out: &mut HashMap<u32, Vec<u8>>,
    ) {
        for (name, child) in &node.children {
            let p = join(path, name);
            match child.what {
                What::Inode(id)
                    if wanted.contains(&id)
                        && !out.contains_key(&id)
                        && !self.upper_touches(&p) =>
                {
                    out.insert(id, p);
                }
                What::Implicit | What::Dir(..) => self.find_anchors(child, &p, wanted, out),
                _ => {}
            }
        }
    }

    /// Whether the folded layers replace, remove or hide the base's `path`.
    fn upper_touches(&self, path: &[u8]) -> bool {
        let mut node = &self.upper;
        if node.opaque {
            return true;
        }
        for c in components(path) {
            match node.children.get(c) {
                None => return false,
                Some(n) => {
                    if n.opaque || !n.is_dir() {
                        return true;
                    }
                    node = n;
                }
            }
        }
        true
    }
}

/// A file of a folded layer that a later folded layer deleted or overwrote.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Wasted {
    /// Where the layer wrote it.
    pub path: String,
    pub size: u64,
    /// The layer (index in the stack) that wrote it.
    pub layer: usize,
    /// The layer that removed its last name.
    pub by_layer: usize,
    pub how: Gone,
}

impl Squash<'_> {
    /// The files of the folded layers that are not in the result (no name
    /// left), largest first: their bytes are what folding saves besides
    /// whiteouts and repeated directory entries.
    pub fn waste(&self) -> Vec<Wasted> {
        let mut seen = vec![false; self.inodes.len()];
        collect_inodes(&self.upper, &mut |id| seen[id as usize] = true);
        let mut out: Vec<Wasted> = self
            .inodes
            .iter()
            .zip(seen)
            .filter(|(ino, seen)| !ino.base && !seen)
            .filter_map(|(ino, _)| {
                let meta = self.entry(ino.layer, ino.item);
                let (by, how) = ino.gone?;
                (meta.kind == EntryKind::File).then(|| Wasted {
                    path: shown(&meta.path),
                    size: meta.size,
                    layer: ino.layer as usize,
                    by_layer: by as usize,
                    how,
                })
            })
            .collect();
        out.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.cmp(&b.path)));
        out
    }
}

fn collect_inodes(node: &Node, f: &mut dyn FnMut(u32)) {
    for child in node.children.values() {
        match child.what {
            What::Inode(id) => f(id),
            What::Implicit | What::Dir(..) => collect_inodes(child, f),
            What::Whiteout => {}
        }
    }
}

fn mark_gone(inodes: &mut [Inode], node: &Node, l: u32, how: Gone) {
    match node.what {
        What::Inode(id) => inodes[id as usize].gone = Some((l, how)),
        What::Whiteout => {}
        What::Implicit | What::Dir(..) => {
            for c in node.children.values() {
                mark_gone(inodes, c, l, Gone::Deleted);
            }
        }
    }
}

/// Counts what is written.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Emit<'s, 'a, W: Write> {
    s: &'s Squash<'a>,
    tar: TarWriter<W>,
    /// Inode → the first path written for it (later ones link to it).
    first: HashMap<u32, Vec<u8>>,
    anchors: HashMap<u32, Vec<u8>>,
    files: Vec<Option<fs_err::File>>,
    /// A dry run: the padded sizes of the file contents not written.
    dry: Option<std::rc::Rc<std::cell::Cell<u64>>>,
}

impl<W: Write> Emit<'_, '_, W> {
    /// Records, in write order, the first path of every inode.
    fn plan(&mut self, node: &Node, path: &[u8]) {
        for (name, child) in &node.children {
            let p = join(path, name);
            match child.what {
                What::Inode(id) => {
                    self.first.entry(id).or_insert(p);
                }
                What::Implicit | What::Dir(..) => self.plan(child, &p),
                What::Whiteout => {}
            }
        }
    }

    fn run(&mut self) -> Result<()> {
        let s = self.s;
        let root = &s.upper;
        let b = Some(&s.base);
        if let What::Dir(l, i) = root.what {
            let mut meta = s.entry(l, i).clone();
            meta.path = b".".to_vec();
            self.tar.append(&meta, None)?;
        }
        if root.opaque && !s.base.children.is_empty() {
            self.tar.append_opaque(b"")?;
        }
        self.emit_dir(root, &[], if root.opaque { None } else { b })
    }

    /// Writes what `node` holds (its children, depth first, sorted); `b`: the
    /// base's directory at the same path, when the base shows through.
    fn emit_dir(&mut self, node: &Node, path: &[u8], b: Option<&Node>) -> Result<()> {
        for (name, child) in &node.children {
            let p = join(path, name);
            let bchild = b.and_then(|b| b.children.get(name));
            match child.what {
                What::Whiteout => {
                    if bchild.is_some() {
                        self.tar.append_whiteout(&p)?;
                    }
                }
                What::Inode(id) => self.emit_inode(id, &p)?,
                What::Dir(l, i) => {
                    let mut meta = self.s.entry(l, i).clone();
                    meta.path.clone_from(&p);
                    self.tar.append(&meta, None)?;
                    self.after_dir(child, &p, bchild)?;
                }
                What::Implicit => {
                    if !bchild.is_some_and(Node::is_dir) {
                        self.tar.append(&default_dir(&p), None)?;
                    }
                    self.after_dir(child, &p, bchild)?;
                }
            }
        }
        Ok(())
    }

    fn after_dir(&mut self, child: &Node, p: &[u8], bchild: Option<&Node>) -> Result<()> {
        let bdir = bchild.filter(|n| n.is_dir());
        if child.opaque && bdir.is_some_and(|n| !n.children.is_empty()) {
            self.tar.append_opaque(p)?;
        }
        self.emit_dir(child, p, if child.opaque { None } else { bdir })
    }

    fn emit_inode(&mut self, id: u32, path: &[u8]) -> Result<()> {
        let s = self.s;
        let ino = &s.inodes[id as usize];
        let mut meta = s.entry(ino.layer, ino.item).clone();
        let src_path = std::mem::replace(&mut meta.path, path.to_vec());
        let link = self
            .anchors
            .get(&id)
            .or_else(|| self.first.get(&id).filter(|f| f.as_slice() != path));
        if let Some(target) = link {
            meta.kind = EntryKind::Hardlink(target.clone());
            meta.size = 0;
            self.tar.append(&meta, None)?;
            return Ok(());
        }
        if meta.kind != EntryKind::File || meta.size == 0 {
            self.tar.append(&meta, None)?;
            return Ok(());
        }
        if let Some(skipped) = &self.dry {
            // The header does not depend on the size's value: written with
            // none, and the padded content counted.
            skipped.set(skipped.get() + meta.size.div_ceil(512) * 512);
            meta.size = 0;
            self.tar.append(&meta, None)?;
            return Ok(());
        }
        let layer = &s.layers[ino.layer as usize];
        let Item::Entry { data, .. } = &layer.items[ino.item as usize] else {
            unreachable!("inodes point at entries");
        };
        match &layer.input {
            LayerInput::Tar(tar_path) => {
                let slot = &mut self.files[ino.layer as usize];
                if slot.is_none() {
                    *slot = Some(fs_err::File::open(tar_path)?);
                }
                let f = slot.as_mut().expect("opened");
                f.seek(SeekFrom::Start(*data))?;
                // No more read ahead than the file needs: small files are many.
                let cap = usize::try_from(meta.size.min(256 * 1024)).unwrap_or(256 * 1024);
                let mut r = io::BufReader::with_capacity(cap.max(512), f).take(meta.size);
                self.tar.append(&meta, Some(&mut r))?;
            }
            LayerInput::Upper { dir, .. } => {
                let file_path = dir.join(std::ffi::OsStr::from_bytes(&src_path));
                let mut f = fs_err::File::open(&file_path)?;
                self.tar.append(&meta, Some(&mut f))?;
            }
        }
        Ok(())
    }
}

fn default_dir(path: &[u8]) -> EntryMeta {
    EntryMeta {
        path: path.to_vec(),
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        size: 0,
        xattrs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::Path;

    fn m(path: &str, kind: EntryKind, size: u64) -> EntryMeta {
        EntryMeta {
            path: path.into(),
            kind,
            mode: if size == u64::MAX { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            size: if size == u64::MAX { 0 } else { size },
            xattrs: vec![],
        }
    }
    fn dir(path: &str) -> (EntryMeta, Vec<u8>) {
        (m(path, EntryKind::Dir, u64::MAX), vec![])
    }
    fn file(path: &str, data: &str) -> (EntryMeta, Vec<u8>) {
        (
            m(path, EntryKind::File, data.len() as u64),
            data.as_bytes().to_vec(),
        )
    }
    fn hard(path: &str, target: &str) -> (EntryMeta, Vec<u8>) {
        (m(path, EntryKind::Hardlink(target.into()), 0), vec![])
    }
    /// `.wh.` names and opaque markers are written as the files they are.
    fn wh(path: &str) -> (EntryMeta, Vec<u8>) {
        file(path, "")
    }

    fn layer(dir: &Path, n: usize, entries: &[(EntryMeta, Vec<u8>)]) -> LayerIndex {
        let path = dir.join(format!("layer{n}.tar"));
        let mut w = TarWriter::new(fs_err::File::create(&path).unwrap(), None);
        for (meta, data) in entries {
            w.append(meta, Some(&mut &data[..])).unwrap();
        }
        w.finish().unwrap();
        LayerIndex::read(LayerInput::Tar(path)).unwrap()
    }

    fn squashed(dir: &Path, layers: &[LayerIndex], keep: usize, name: &str) -> PathBuf {
        let path = dir.join(name);
        let s = Squash::new(layers, keep).unwrap();
        let size = s.size().unwrap();
        let (f, _) = s.write(fs_err::File::create(&path).unwrap(), None).unwrap();
        drop(f);
        assert_eq!(fs_err::metadata(&path).unwrap().len(), size, "dry-run size");
        path
    }

    fn tar_path(l: &LayerIndex) -> &Path {
        match l.input() {
            LayerInput::Tar(p) => p,
            LayerInput::Upper { .. } => unreachable!(),
        }
    }

    fn apply_all(dest: &Path, tars: &[&Path]) {
        fs_err::create_dir_all(dest).unwrap();
        for t in tars {
            crate::apply_layer(
                dest,
                fs_err::File::open(t).unwrap(),
                &crate::ApplyOptions::default(),
            )
            .unwrap();
        }
    }

    /// path → description (type, mode, owner, size, content, link, device,
    /// xattrs, hard-link group as the smallest path of the group).
    fn view(root: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut groups: BTreeMap<u64, String> = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        let mut all = Vec::new();
        while let Some(d) = stack.pop() {
            for e in fs_err::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let md = fs_err::symlink_metadata(&p).unwrap();
                if md.is_dir() {
                    stack.push(p.clone());
                }
                all.push((p, md));
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        for (p, md) in &all {
            if md.is_file() && md.nlink() > 1 {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                groups.entry(md.ino()).or_insert(rel);
            }
        }
        for (p, md) in all {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let ft = md.file_type();
            let what = if ft.is_dir() {
                "dir".to_owned()
            } else if ft.is_symlink() {
                format!("link {}", fs_err::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                format!("file {:?}", fs_err::read_to_string(&p).unwrap())
            } else if ft.is_char_device() {
                format!("char {}", md.rdev())
            } else {
                "other".to_owned()
            };
            let group = groups.get(&md.ino()).cloned().unwrap_or_default();
            let x = crate::diff::read_xattrs(&p).unwrap();
            out.insert(
                rel,
                format!(
                    "{what} {:o} {}:{} group={group} xattrs={x:?}",
                    md.mode(),
                    md.uid(),
                    md.gid()
                ),
            );
        }
        out
    }

    /// For each number of kept layers: the layers above squashed (written
    /// in `dir`), applied over the kept ones; `check` gets the number, the
    /// squashed tar and the file system.
    fn each_squash(
        dir: &Path,
        layers: &[LayerIndex],
        mut check: impl FnMut(usize, &Path, BTreeMap<String, String>),
    ) {
        let tars: Vec<&Path> = layers.iter().map(tar_path).collect();
        for keep in 0..layers.len() {
            let s = squashed(dir, layers, keep, &format!("sq{keep}.tar"));
            let mut stack: Vec<&Path> = tars[..keep].to_vec();
            stack.push(&s);
            let out = dir.join(format!("out{keep}"));
            apply_all(&out, &stack);
            check(keep, &s, view(&out));
        }
    }

    fn names(tar: &Path) -> Vec<String> {
        let mut a = tar::Archive::new(fs_err::File::open(tar).unwrap());
        a.entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect()
    }

    fn need_root() {
        assert!(
            rustix::process::geteuid().is_root(),
            "these tests apply layers with owners and devices: run them as root"
        );
    }

    /// A `vfs_cap_data` (revision 2, effective) granting `cap_net_raw`.
    const CAP_NET_RAW: [u8; 20] = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    fn stack(t: &Path, base_link: bool) -> Vec<LayerIndex> {
        let mut cap = m("bin/ping", EntryKind::File, 4);
        cap.xattrs
            .push(("security.capability".into(), CAP_NET_RAW.to_vec()));
        let mut suid = m("bin/su", EntryKind::File, 2);
        suid.mode = 0o4755;
        let mut dev = m("dev/null0", EntryKind::Char(1, 3), 0);
        dev.mode = 0o666;
        vec![
            layer(
                t,
                0,
                &[
                    dir("a"),
                    file("a/f1", "one"),
                    dir("a/sub"),
                    file("a/sub/x", "x"),
                    dir("d"),
                    file("d/inner", "inner"),
                    file("h1", "base-inode"),
                    hard("h2", "h1"),
                    file("keep", "keep"),
                    file("gone", "gone"),
                ],
            ),
            layer(
                t,
                1,
                &[
                    dir("a"),
                    wh("a/.wh.f1"),
                    dir("a/sub"),
                    wh("a/sub/.wh..wh..opq"),
                    file("a/sub/y", "y"),
                    dir("bin"),
                    (cap, b"ping".to_vec()),
                    (suid, b"su".to_vec()),
                    file("big", "big content"),
                    hard("big2", "big"),
                    file("d", "d is a file now"),
                    dir("dev"),
                    (dev, vec![]),
                    if base_link {
                        hard("link-to-base", "h1")
                    } else {
                        file("link-to-base", "not a link")
                    },
                    file("tmpf", "temporary"),
                    wh(".wh.gone"),
                ],
            ),
            layer(
                t,
                2,
                &[
                    wh(".wh.big"),
                    dir("d"),
                    file("d/new", "new"),
                    file("h1", "h1 overwritten"),
                    wh(".wh.tmpf"),
                    file("gone", "back"),
                ],
            ),
        ]
    }

    #[test]
    fn squashing_gives_the_same_file_system() {
        need_root();
        let t = tempfile::tempdir().unwrap();
        let layers = stack(t.path(), true);
        let tars: Vec<&Path> = layers.iter().map(tar_path).collect();
        apply_all(&t.path().join("ref"), &tars);
        let reference = view(&t.path().join("ref"));
        // The base's hard link group lives on: link-to-base names h2's inode.
        assert_eq!(
            reference["link-to-base"].split(" group=").nth(1).unwrap(),
            reference["h2"].split(" group=").nth(1).unwrap()
        );
        each_squash(t.path(), &layers, |keep, _, got| {
            assert_eq!(got, reference, "keep {keep}");
        });
        // Whiteouts only for what the kept layer has; no opaque marker on
        // a directory the kept layers do not have.
        let n1 = names(&t.path().join("sq1.tar"));
        assert!(n1.contains(&"a/.wh.f1".to_owned()), "{n1:?}");
        assert!(n1.contains(&"a/sub/.wh..wh..opq".to_owned()), "{n1:?}");
        assert!(n1.contains(&"d/.wh..wh..opq".to_owned()), "{n1:?}");
        assert!(
            !n1.iter().any(|n| n.contains("tmpf") || n == "big"),
            "{n1:?}"
        );
        assert!(!n1.iter().any(|n| n.contains(".wh.gone")), "{n1:?}");
        let n0 = names(&t.path().join("sq0.tar"));
        assert!(!n0.iter().any(|n| n.contains(".wh.")), "{n0:?}");
        // Sorted, depth first.
        let mut sorted = n0.clone();
        sorted.sort_by(|a, b| {
            let k = |s: &str| {
                s.trim_end_matches('/')
                    .split('/')
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            k(a).cmp(&k(b))
        });
        assert_eq!(n0, sorted);
    }

    #[test]
    fn the_same_layers_squash_to_the_same_bytes() {
        let t = tempfile::tempdir().unwrap();
        let layers = stack(t.path(), true);
        let a = squashed(t.path(), &layers, 1, "a.tar");
        let again = stack(&t.path().join("x").tap_mkdir(), true);
        let b = squashed(t.path(), &again, 1, "b.tar");
        assert_eq!(fs_err::read(a).unwrap(), fs_err::read(b).unwrap());
    }

    trait TapMkdir {
        fn tap_mkdir(self) -> Self;
    }
    impl TapMkdir for PathBuf {
        fn tap_mkdir(self) -> Self {
            fs_err::create_dir_all(&self).unwrap();
            self
        }
    }

    #[test]
    fn upper_dirs_squash_like_their_tars() {
        need_root();
        let t = tempfile::tempdir().unwrap();
        // An upper dir of one layer cannot link into the layers below it.
        let layers = stack(t.path(), false);
        let mut uppers = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let up = t.path().join(format!("up{i}")).tap_mkdir();
            crate::apply::apply_overlay_layer(&up, fs_err::File::open(tar_path(l)).unwrap())
                .unwrap();
            uppers.push(
                LayerIndex::read(LayerInput::Upper {
                    dir: up,
                    epoch: None,
                })
                .unwrap(),
            );
        }
        let from_tars = squashed(t.path(), &layers, 1, "t.tar");
        let from_uppers = squashed(t.path(), &uppers, 1, "u.tar");
        let base = [tar_path(&layers[0])];
        apply_all(&t.path().join("a"), &[base[0], &from_tars]);
        apply_all(&t.path().join("b"), &[base[0], &from_uppers]);
        assert_eq!(view(&t.path().join("a")), view(&t.path().join("b")));
    }

    #[test]
    fn waste_lists_what_later_layers_removed() {
        let t = tempfile::tempdir().unwrap();
        let layers = stack(t.path(), true);
        let s = Squash::new(&layers, 0).unwrap();
        let w: Vec<(String, u64, usize, usize, Gone)> = s
            .waste()
            .into_iter()
            .map(|w| (w.path, w.size, w.layer, w.by_layer, w.how))
            .collect();
        // big lives on as big2; a/f1 and gone were deleted, d/inner went with
        // its directory, tmpf came and went; h1's first content still has a
        // name (h2, link-to-base).
        assert_eq!(
            w,
            vec![
                ("d/inner".to_owned(), 5, 0, 1, Gone::Deleted),
                ("gone".to_owned(), 4, 0, 1, Gone::Deleted),
                ("a/f1".to_owned(), 3, 0, 1, Gone::Deleted),
                ("a/sub/x".to_owned(), 1, 0, 1, Gone::Deleted),
                ("tmpf".to_owned(), 9, 1, 2, Gone::Deleted),
                ("d".to_owned(), 15, 1, 2, Gone::Overwritten),
            ]
            .into_iter()
            .fold(Vec::new(), |mut v, x| {
                v.push(x);
                v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                v
            })
        );
    }

    /// Random stacks of small layers (directories, files, hard links,
    /// whiteouts, opaque directories over a few overlapping paths): for every
    /// stack the reference applier accepts, each number of kept layers gives
    /// the same file system.
    #[test]
    fn random_stacks_squash_to_what_applying_them_gives() {
        const DIRS: [&str; 3] = ["a", "a/b", "e"];
        const LEAVES: [&str; 5] = ["a/b/c", "a/d", "e/f", "g", "a/b/h"];
        need_root();
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| -> usize {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % (n as u64)).unwrap()
        };
        let mut valid = 0;
        for case in 0..300 {
            let t = tempfile::tempdir().unwrap();
            let n_layers = 2 + next(3);
            let mut layers = Vec::new();
            let mut files: Vec<&str> = Vec::new();
            for li in 0..n_layers {
                let mut entries = Vec::new();
                for _ in 0..(2 + next(6)) {
                    let any = if next(2) == 0 {
                        DIRS[next(DIRS.len())]
                    } else {
                        LEAVES[next(LEAVES.len())]
                    };
                    match next(8) {
                        0 | 1 => entries.push(dir(DIRS[next(DIRS.len())])),
                        2..=4 => {
                            // Now and then a file where a directory was.
                            let p = if next(6) == 0 {
                                DIRS[next(DIRS.len())]
                            } else {
                                LEAVES[next(LEAVES.len())]
                            };
                            let mut f = file(p, ["x", "yy", "zzz", ""][next(4)]);
                            f.0.mode = [0o644, 0o600, 0o4755][next(3)];
                            f.0.uid = [0, 1000][next(2)];
                            entries.push(f);
                            files.push(p);
                        }
                        5 if !files.is_empty() => {
                            let target = files[next(files.len())];
                            let p = LEAVES[next(LEAVES.len())];
                            entries.push(hard(p, target));
                            files.push(p);
                        }
                        6 => {
                            let (d, b) = split_last(any.as_bytes());
                            let mut w = shown(d);
                            if !w.is_empty() {
                                w.push('/');
                            }
                            entries.push(wh(&format!("{w}.wh.{}", shown(b))));
                        }
                        _ => {
                            let d = DIRS[next(DIRS.len())];
                            entries.push(dir(d));
                            entries.push(wh(&format!("{d}/.wh..wh..opq")));
                        }
                    }
                }
                layers.push(layer(t.path(), li, &entries));
            }
            let tars: Vec<&Path> = layers.iter().map(tar_path).collect();
            let reference_dir = t.path().join("ref");
            fs_err::create_dir_all(&reference_dir).unwrap();
            let applied = tars.iter().all(|tar| {
                crate::apply_layer(
                    &reference_dir,
                    fs_err::File::open(tar).unwrap(),
                    &crate::ApplyOptions::default(),
                )
                .is_ok()
            });
            if !applied {
                continue;
            }
            valid += 1;
            let reference = view(&reference_dir);
            let shown_layers: Vec<Vec<String>> = tars.iter().map(|t| names(t)).collect();
            each_squash(t.path(), &layers, |keep, s, got| {
                assert_eq!(
                    got,
                    reference,
                    "case {case}, keep {keep}: {shown_layers:?}, squashed {:?}",
                    names(s)
                );
            });
        }
        assert!(valid >= 100, "only {valid} stacks were valid");
    }

    /// Names removed and made again within one layer (a name whited out,
    /// then made again only as a parent; a directory removed, then another
    /// made, which may get its inode number): squashed as applying gives.
    #[test]
    fn names_removed_and_made_again_in_one_layer_squash_as_they_apply() {
        need_root();
        let tops = [
            [
                file("y/s", "s"),
                wh("y/.wh.s"),
                file("y/s/f", "f"),
                wh("y/.wh..wh..opq"),
            ],
            [
                file("y/s", "s"),
                wh(".wh.y"),
                file("z/s/f", "f"),
                wh("z/.wh..wh..opq"),
            ],
        ];
        for top in tops {
            let t = tempfile::tempdir().unwrap();
            let layers = vec![
                layer(t.path(), 0, &[dir("y"), file("y/lower", "l")]),
                layer(t.path(), 1, &top),
            ];
            let tars: Vec<&Path> = layers.iter().map(tar_path).collect();
            let reference = t.path().join("ref");
            apply_all(&reference, &tars);
            let reference = view(&reference);
            each_squash(t.path(), &layers, |keep, _, got| {
                assert_eq!(got, reference, "keep {keep}: {:?}", names(tars[1]));
            });
        }
    }

    #[test]
    fn a_hard_link_to_nothing_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let layers = vec![
            layer(t.path(), 0, &[file("a", "a")]),
            layer(t.path(), 1, &[hard("b", "nothing")]),
        ];
        let e = Squash::new(&layers, 1).err().expect("refused").to_string();
        assert!(e.contains("hard link target nothing does not exist"), "{e}");
    }
}

//! The op vocabulary the frontend emits, modelled on `BuildKit`'s LLB
//! (`solver/pb/ops.proto`).
//!
//! Everything here is plain data. The only behaviour is what the cache key
//! needs: [`Op::content_selections`] says which inputs are read by content
//! (so their key contribution is a checksum of exactly the selected files), and
//! [`Op::is_volatile`] says which ops must never be answered from the cache.
//!
//! Inputs are referred to by [`InputIndex`]: a position in [`Vertex::inputs`],
//! as LLB does with `Input` indexes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::VertexId;

/// A position in [`Vertex::inputs`].
pub type InputIndex = usize;

/// One node of the build graph: an op, the vertices it reads, and what the
/// progress display shows for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vertex {
    pub op: Op,
    /// The vertices this op reads; ops refer to them by position.
    pub inputs: Vec<VertexId>,
    /// Progress name and Dockerfile location; not part of any key.
    pub description: Description,
    /// Never answer this vertex from the cache (`--no-cache-filter STAGE`).
    /// Not part of the cache key.
    pub ignore_cache: bool,
}

impl Vertex {
    /// A vertex with the given op and inputs, no location and caching allowed.
    pub fn new(op: impl Into<Op>, inputs: Vec<VertexId>, name: impl Into<String>) -> Self {
        Self {
            op: op.into(),
            inputs,
            description: Description {
                name: name.into(),
                location: None,
            },
            ignore_cache: false,
        }
    }
}

/// What the progress display shows for a vertex.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// E.g. `[stage-1 3/7] RUN make`.
    pub name: String,
    /// Where the instruction is in the Dockerfile.
    pub location: Option<SourceLocation>,
}

/// A range of lines in a Dockerfile (1-based, inclusive).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceLocation {
    pub file: String,
    pub start_line: u32,
    pub end_line: u32,
}

/// An operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    Source(SourceOp),
    Exec(ExecOp),
    File(FileOp),
    Merge(MergeOp),
}

impl From<SourceOp> for Op {
    fn from(op: SourceOp) -> Self {
        Op::Source(op)
    }
}
impl From<ExecOp> for Op {
    fn from(op: ExecOp) -> Self {
        Op::Exec(op)
    }
}
impl From<FileOp> for Op {
    fn from(op: FileOp) -> Self {
        Op::File(op)
    }
}
impl From<MergeOp> for Op {
    fn from(op: MergeOp) -> Self {
        Op::Merge(op)
    }
}

// ---------------------------------------------------------------- sources

/// What pins a base image's content: a `sha256:<hex>` digest, saying of what.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "digest", rename_all = "snake_case")]
pub enum ImagePin {
    /// The image ID: the digest of its config (an image of the local store).
    ImageId(String),
    /// The digest of its manifest (an image as a registry serves it).
    Manifest(String),
}

impl ImagePin {
    /// The `sha256:<hex>` digest.
    pub fn digest(&self) -> &str {
        match self {
            Self::ImageId(d) | Self::Manifest(d) => d,
        }
    }
}

/// A vertex with no inputs that brings content in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum SourceOp {
    /// A base image (`FROM`, `COPY --from=image`).
    Image {
        /// As written, normalised by the frontend (`docker.io/library/alpine:3.20`):
        /// for progress and errors only; the content is the one `pin` names.
        reference: String,
        /// The digest the frontend resolved the reference to: the worker reads
        /// this image, by digest, and never looks the name up again (a tag that
        /// moves between planning and solving cannot give one image's key to
        /// another's content). Part of the key.
        pin: ImagePin,
        /// `os/arch[/variant]`, when not the host's.
        platform: Option<String>,
        /// The chain ID of the image's layers (`sha256:<hex>`), when it has
        /// layers. When present it replaces `pin` in the cache key (BuildKit's
        /// second key of an image: by its layers), so the same root file system
        /// pulled, loaded or imported separately, under any name or config,
        /// gives the same key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        chain_id: Option<String>,
    },
    /// The local build context (or a named context).
    Context {
        /// `context` for the main build context.
        name: String,
        /// Only these paths are needed (followpaths / include patterns).
        include_patterns: Vec<String>,
        /// `.dockerignore` patterns, in order.
        exclude_patterns: Vec<String>,
        /// Paths whose symlinks must be followed when read.
        follow_paths: Vec<String>,
    },
    /// `ADD https://...`.
    Http {
        url: String,
        /// `--checksum=sha256:...`; when present the download is cacheable by
        /// definition.
        checksum: Option<String>,
        /// Name of the downloaded file inside the result.
        filename: Option<String>,
        /// Mode of the downloaded file.
        chmod: Option<u32>,
    },
    /// A git repository at one commit (`ADD https://host/repo.git#ref:dir`,
    /// `BuildKit`'s git source): the tree of `commit` (or of `subdir` in it),
    /// without `.git` unless `keep_git_dir`.
    Git {
        /// The remote as git takes it (`https://host/repo.git`,
        /// `git@host:repo.git`), without `#ref:subdir`.
        remote: String,
        /// The ref as written (branch, tag, commit, empty for the default
        /// branch); for progress and for `.git`'s branch, not the content.
        reference: String,
        /// The full commit (or annotated tag object, with `keep_git_dir`) the
        /// frontend resolved `reference` to: the worker checks out exactly
        /// this; with `subdir` and `keep_git_dir` it is the key, not the
        /// remote (`BuildKit` keys a git source by its commit).
        commit: String,
        /// A directory inside the repository whose contents are the result.
        subdir: String,
        /// Keep the `.git` directory (`--keep-git-dir`).
        keep_git_dir: bool,
        /// Check out the submodules (`git submodule update --init
        /// --recursive --depth=1`, `BuildKit`'s default); `?submodules=false`
        /// leaves their directories empty.
        #[serde(default = "yes")]
        submodules: bool,
    },
    /// An empty filesystem (`FROM scratch`).
    Scratch,
}

fn yes() -> bool {
    true
}

// ---------------------------------------------------------------- exec

/// `RUN`: a process over a root filesystem and mounts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExecOp {
    /// argv, already expanded by the frontend (shell form is `[sh, -c, cmd]`).
    pub args: Vec<String>,
    /// `KEY=value`, in order.
    pub env: Vec<String>,
    /// Absolute working directory.
    pub cwd: String,
    /// `user[:group]`, names or ids; empty for root.
    pub user: String,
    /// The input that is the root filesystem; its result plus the process's
    /// changes is the op's result.
    pub rootfs: InputIndex,
    pub mounts: Vec<Mount>,
    pub network: NetworkMode,
    pub security: SecurityMode,
    /// `hostname` seen by the process, when not the default.
    pub hostname: Option<String>,
    /// `--add-host` entries `(name, ip)`.
    pub extra_hosts: Vec<(String, String)>,
    /// `KEY=value` proxy variables (`HTTP_PROXY` and friends given as build args
    /// the Dockerfile does not declare), appended to `env` when the process runs.
    /// Left out of the cache key, as BuildKit leaves `ProxyEnv` out: changing a
    /// proxy does not re-run anything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proxy_env: Vec<String>,
    /// `--shm-size`: bytes of the step's `/dev/shm` (default 64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    /// `--ulimit`s of the process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
}

/// A resource limit of a RUN step (`--ulimit nofile=1024:2048`): the limit's
/// name as docker spells it (`nofile`, `nproc`, `stack`, ...), its soft and
/// hard values, `-1` for unlimited.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

impl ExecOp {
    /// A RUN with default settings (root, `/`, sandboxed network).
    pub fn new(args: Vec<String>, rootfs: InputIndex) -> Self {
        Self {
            args,
            env: Vec::new(),
            cwd: "/".to_owned(),
            user: String::new(),
            rootfs,
            mounts: Vec::new(),
            network: NetworkMode::Sandbox,
            security: SecurityMode::Sandbox,
            hostname: None,
            extra_hosts: Vec::new(),
            proxy_env: Vec::new(),
            shm_size: None,
            ulimits: Vec::new(),
        }
    }
}

/// `RUN --network`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// The default: whatever the sandbox provides (`BuildKit` `default`).
    #[default]
    Sandbox,
    Host,
    None,
}

/// `RUN --security`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    #[default]
    Sandbox,
    Insecure,
}

/// One `RUN --mount`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the container.
    pub target: String,
    pub kind: MountKind,
}

/// The kinds of `RUN --mount`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MountKind {
    /// `type=bind,from=...,source=...`.
    Bind {
        input: InputIndex,
        /// Path inside the input (`source=`); empty or `/` for all of it.
        selector: String,
        readonly: bool,
    },
    /// `type=cache`: a persistent directory shared between builds. Which
    /// cache it is follows `BuildKit`: its `id`, and with `from=` or
    /// [`CachePerms`] also the base it starts as (never `sharing`).
    Cache {
        /// `id=`, else the target as written (cleaned, not made absolute).
        id: String,
        sharing: CacheSharing,
        /// `from=`: the cache starts as a copy of `source` in this input
        /// (and is another cache than the id's own for each input result
        /// and `source`).
        from: Option<InputIndex>,
        /// `source=` as an absolute path, `/` for all: with `from`, the
        /// path of the input the cache starts as; without, the directory of
        /// the cache that is mounted.
        source: String,
        readonly: bool,
        /// `uid=`/`gid=`/`mode=`, when any was given and `source=` was not
        /// (`BuildKit` ignores them beside `source=`): the cache starts as a
        /// directory with this owner and mode, and is another cache than
        /// the id's own (one per owner and mode). `None`: a new cache is a
        /// `0755` `0:0` directory.
        perms: Option<CachePerms>,
    },
    /// `type=tmpfs`.
    Tmpfs {
        /// Bytes; `None` is the kernel's default.
        size: Option<u64>,
    },
    /// `type=secret`. The secret's content is never part of any key; only
    /// its id and placement are.
    Secret {
        id: String,
        /// `env=NAME`: also (or, with an empty `target`, only) expose the
        /// secret as this environment variable.
        #[serde(default)]
        env: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// `type=ssh`: an agent socket.
    Ssh {
        id: String,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// The owner and mode a cache mount starts with (`uid=`, `gid=`, `mode=`;
/// those not given are `0`, `0` and `0755`, so `uid=5` and
/// `uid=5,gid=0,mode=0755` are one cache, as in `BuildKit`, which makes the
/// directory with `llb.Mkdir` and so keeps only the permission bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CachePerms {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits only (`mode & 0o777`).
    pub mode: u32,
}

impl CachePerms {
    /// `mode` keeps its permission bits only.
    pub fn new(uid: u32, gid: u32, mode: u32) -> Self {
        Self {
            uid,
            gid,
            mode: mode & 0o777,
        }
    }
}

impl fmt::Display for CachePerms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uid={},gid={},mode={:04o}",
            self.uid, self.gid, self.mode
        )
    }
}

/// `RUN --mount=type=cache,sharing=...`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheSharing {
    #[default]
    Shared,
    Private,
    Locked,
}

// ---------------------------------------------------------------- file

/// `COPY`, `ADD`, `WORKDIR` creation, heredoc files: actions applied in order
/// on a base.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileOp {
    /// The input the actions apply to; `None` starts from an empty tree
    /// (`COPY --link`).
    pub base: Option<InputIndex>,
    pub actions: Vec<FileAction>,
}

/// One action of a [`FileOp`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum FileAction {
    Copy(Copy),
    Mkdir(Mkdir),
    Mkfile(Mkfile),
    Rm(Rm),
}

/// Copy paths from an input into the base.
#[allow(clippy::struct_excessive_bools)] // mirrors LLB's FileActionCopy flags
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Copy {
    /// Where the sources are read from.
    pub src_input: InputIndex,
    /// Paths or globs (Go `filepath.Match` rules) inside the source input.
    pub src_paths: Vec<String>,
    /// Destination path (absolute; a trailing `/` means "into this directory").
    pub dest: String,
    /// Follow a symlink given as a source path.
    pub follow_symlinks: bool,
    /// Copy a directory's contents, not the directory itself.
    pub dir_contents_only: bool,
    /// Create missing parents of `dest`.
    pub create_dest_path: bool,
    /// Source paths may hold wildcards.
    pub allow_wildcard: bool,
    /// A wildcard that matches nothing is not an error.
    pub allow_empty_wildcard: bool,
    /// `--chown`.
    pub owner: Option<Chown>,
    /// `--chmod`.
    pub mode: Option<Chmod>,
    /// Only copy the paths below a source that match one of these
    /// (moby/patternmatcher patterns, matched against the path below the
    /// source; the pattern after a `COPY --parents` pivot). A directory that
    /// does not match is made only when something below it is copied.
    pub include_patterns: Vec<String>,
    /// `--exclude` patterns, matched against the path below the source.
    pub exclude_patterns: Vec<String>,
    /// `ADD`: unpack local tar archives (`BuildKit`'s
    /// `attemptUnpackDockerCompatibility`).
    pub attempt_unpack: bool,
    /// Paths (from the source root) that must exist, or the copy fails with
    /// "not found": a `COPY --parents` source without wildcards, which the
    /// frontend turns into a copy of the directory before its `/./` pivot
    /// with the rest as an include pattern (`BuildKit`'s `RequiredPaths`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_paths: Vec<String>,
    /// Clamp the mtime of copied files (`SOURCE_DATE_EPOCH`), seconds.
    pub timestamp: Option<i64>,
}

impl Copy {
    /// A plain `COPY src... dest` with Dockerfile defaults.
    pub fn new(src_input: InputIndex, src_paths: Vec<String>, dest: impl Into<String>) -> Self {
        Self {
            src_input,
            src_paths,
            dest: dest.into(),
            follow_symlinks: true,
            dir_contents_only: true,
            create_dest_path: true,
            allow_wildcard: true,
            allow_empty_wildcard: true,
            owner: None,
            mode: None,
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
            attempt_unpack: false,
            required_paths: Vec::new(),
            timestamp: None,
        }
    }
}

/// `--chown=user[:group]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Chown {
    pub user: UserRef,
    pub group: Option<UserRef>,
}

/// A user or group, by number or by a name to look up in the base's
/// `/etc/passwd` / `/etc/group`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserRef {
    Id(u32),
    Name(String),
}

/// `--chmod`: octal (`0755`) or symbolic (`u+x,g-w`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Chmod {
    Octal(u32),
    Symbolic(String),
}

/// Create a directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mkdir {
    pub path: String,
    pub mode: u32,
    pub make_parents: bool,
    pub owner: Option<Chown>,
    pub timestamp: Option<i64>,
}

/// Create a file with the given content (heredocs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mkfile {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
    pub owner: Option<Chown>,
    pub timestamp: Option<i64>,
}

/// Remove a path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rm {
    pub path: String,
    pub allow_not_found: bool,
    pub allow_wildcard: bool,
}

// ---------------------------------------------------------------- merge

/// Stack inputs' filesystems in order, later over earlier (`COPY --link`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MergeOp {
    pub inputs: Vec<InputIndex>,
}

// ---------------------------------------------------------------- key rules

/// Which part of an input an op reads by content: the cache key uses a
/// checksum of exactly these paths instead of the input's own key (`BuildKit`'s
/// content-based cache keys).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Selection {
    /// Paths or globs (Go `filepath.Match`, per path component), relative to
    /// the input's root. `.` or `/` selects everything.
    pub paths: Vec<String>,
    /// Glob characters in `paths` are patterns (otherwise literal).
    pub allow_wildcard: bool,
    /// A pattern matching nothing is not an error.
    pub allow_empty_wildcard: bool,
    /// Follow a symlink that a selected path names.
    pub follow_symlinks: bool,
    /// Extra include filters (from the op), empty for all.
    pub include_patterns: Vec<String>,
    /// Extra exclude filters (from the op).
    pub exclude_patterns: Vec<String>,
}

impl Selection {
    /// Everything in the input.
    pub fn all() -> Self {
        Self {
            paths: vec![".".to_owned()],
            allow_wildcard: false,
            allow_empty_wildcard: false,
            follow_symlinks: false,
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
        }
    }

    /// Literal paths, no wildcards.
    pub fn paths<S: Into<String>>(paths: impl IntoIterator<Item = S>) -> Self {
        Self {
            paths: paths.into_iter().map(Into::into).collect(),
            ..Self::all()
        }
    }
}

impl Op {
    /// The inputs this op reads by content, with what it reads. An input may
    /// appear several times (two COPYs from the context in one `FileOp`).
    ///
    /// - every `Copy` action's source input, with its source paths;
    /// - read-only bind mounts, with their selector.
    pub fn content_selections(&self) -> Vec<(InputIndex, Selection)> {
        match self {
            Op::File(f) => f
                .actions
                .iter()
                .filter_map(|a| match a {
                    FileAction::Copy(c) => Some((
                        c.src_input,
                        Selection {
                            paths: c.src_paths.clone(),
                            allow_wildcard: c.allow_wildcard,
                            allow_empty_wildcard: c.allow_empty_wildcard,
                            follow_symlinks: c.follow_symlinks,
                            include_patterns: c.include_patterns.clone(),
                            exclude_patterns: c.exclude_patterns.clone(),
                        },
                    )),
                    _ => None,
                })
                .collect(),
            Op::Exec(e) => e
                .mounts
                .iter()
                .filter_map(|m| match &m.kind {
                    MountKind::Bind {
                        input,
                        selector,
                        readonly: true,
                    } => {
                        let path = if selector.is_empty() {
                            ".".to_owned()
                        } else {
                            selector.clone()
                        };
                        Some((
                            *input,
                            Selection {
                                paths: vec![path],
                                ..Selection::all()
                            },
                        ))
                    }
                    _ => None,
                })
                .collect(),
            Op::Source(_) | Op::Merge(_) => Vec::new(),
        }
    }

    /// Ops whose result may change while their definition does not: they are
    /// never looked up in or recorded to the cache, and run every solve. Their
    /// dependents key on a content checksum of what they read instead.
    ///
    /// - a build context (the files on disk are the truth);
    /// - an HTTP download without `--checksum`.
    pub fn is_volatile(&self) -> bool {
        matches!(
            self,
            Op::Source(SourceOp::Context { .. } | SourceOp::Http { checksum: None, .. })
        )
    }

    /// Highest input index the op refers to, for validation.
    pub fn max_input_index(&self) -> Option<InputIndex> {
        let mut all: Vec<InputIndex> = Vec::new();
        match self {
            Op::Source(_) => {}
            Op::Exec(e) => {
                all.push(e.rootfs);
                for m in &e.mounts {
                    if let MountKind::Bind { input, .. }
                    | MountKind::Cache {
                        from: Some(input), ..
                    } = &m.kind
                    {
                        all.push(*input);
                    }
                }
            }
            Op::File(f) => {
                all.extend(f.base);
                for a in &f.actions {
                    if let FileAction::Copy(c) = a {
                        all.push(c.src_input);
                    }
                }
            }
            Op::Merge(m) => all.extend(m.inputs.iter().copied()),
        }
        all.into_iter().max()
    }
}

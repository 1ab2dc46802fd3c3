//! Dockerfile + options → build graph and image config (`BuildKit`'s
//! `dockerfile2llb`).
//!
//! The conversion runs in two passes over the reachable stages. Vertices are first
//! collected in a local list (inputs always before their readers), because the
//! build-context source can only be completed — with the paths COPY/ADD/bind
//! mounts select from it — once every stage has been dispatched; then the list is
//! added to a [`BuildGraph`] in order.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use rbuild_ops::{BuildGraph, Op, Vertex, VertexId};
use rbuild_ops::{
    CachePerms, CacheSharing, Copy, Description, ExecOp, FileAction, FileOp, ImagePin, MergeOp,
    Mkdir, Mkfile, Mount as OpMount, MountKind, NetworkMode, SecurityMode, SourceLocation,
    SourceOp,
};
use rbuild_parser::shell::{Lexer, ShellError, ShellErrorKind, human_size_exact};
use rbuild_parser::{
    Command, Dockerfile, Heredoc, Instruction, InstructionKind, Mount, Span, edit_distance,
};

use crate::error::{FrontendError, ResolveError};
use crate::scope::{
    ArgValue, add_or_replace as env_set, arg_value, get as env_get,
    set_in_place as env_set_in_place,
};
use crate::util::{
    clean, dest_path, go_duration, go_quote_list, join, parse_chmod, parse_chown, parse_port_spec,
    ram_in_bytes, valid_signal,
};
use rbuild_oci::{Empty, Healthcheck, History, ImageConfig, Platform};

/// The `comment` of every history entry the frontend writes.
pub const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// The most bytes that variable values may add to a build plan (16 MiB): what
/// expansions add beyond the words as written, values ARG copies from build args and
/// global ARGs, the environment each RUN step carries, and what a stage inherits from
/// the stage it is built `FROM`. One word is limited to
/// [`rbuild_parser::shell::MAX_WORD_LEN`]; this stops many words that each stay under
/// it (`ARG B1=$A`, `ARG B2=$A`, ... or `RUN true` a thousand times under a large
/// `ENV`) from filling memory. `BuildKit` has neither limit.
pub const MAX_EXPANDED_TOTAL: usize = 16 << 20;

/// What the caller decides about a build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The Dockerfile's name as shown in messages and vertex locations.
    pub dockerfile_path: String,
    /// `--build-arg NAME=VALUE` (the cli fills in values of `--build-arg NAME`
    /// from its environment, and leaves out names the environment lacks).
    pub build_args: BTreeMap<String, String>,
    /// `--target`: the stage to build (default: the last one).
    pub target: Option<String>,
    /// `--label`: set on the final image, over the Dockerfile's labels.
    pub labels: BTreeMap<String, String>,
    /// `--no-cache`: every vertex gets `ignore_cache`.
    pub no_cache: bool,
    /// `--no-cache-filter`: stage names whose vertices get `ignore_cache`.
    pub no_cache_filter: Vec<String>,
    /// `--network`: the default for RUN without `--network`. The user's own
    /// choice: it needs no entitlement, unlike a Dockerfile's `RUN --network=host`.
    pub network: NetworkMode,
    /// `--allow`: what the Dockerfile's RUN steps may ask for beyond the sandbox.
    pub allow: Entitlements,
    /// The platform built for (`TARGETPLATFORM`); the host's by default.
    pub platform: Platform,
    /// The platform built on (`BUILDPLATFORM`); the host's.
    pub build_platform: Platform,
    /// The name of the context source (`context`).
    pub context_name: String,
    /// `.dockerignore` patterns for the context source, in order.
    pub dockerignore: Vec<String>,
    /// `SOURCE_DATE_EPOCH`: clamps created files' mtimes (seconds).
    pub source_date_epoch: Option<i64>,
    /// `--add-host`, `--shm-size`, `--ulimit`: given to every RUN step.
    pub run_extras: RunExtras,
    /// `--build-context NAME=…`: what `FROM NAME` and `COPY --from=NAME` mean
    /// when NAME is no stage.
    pub named_contexts: BTreeMap<String, NamedContext>,
}

/// A `--build-context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory, read as a context source of that name.
    Dir(std::path::PathBuf),
    /// `docker-image://REF`: that image instead.
    Image(String),
}

/// What `--add-host`, `--shm-size` and `--ulimit` give every RUN step (part
/// of its definition, as in `BuildKit`'s exec meta).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunExtras {
    /// `(name, ip)` lines of `/etc/hosts`.
    pub extra_hosts: Vec<(String, String)>,
    /// Bytes of `/dev/shm`.
    pub shm_size: Option<u64>,
    pub ulimits: Vec<rbuild_ops::Ulimit>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            dockerfile_path: "Dockerfile".to_owned(),
            build_args: BTreeMap::new(),
            target: None,
            labels: BTreeMap::new(),
            no_cache: false,
            no_cache_filter: Vec::new(),
            network: NetworkMode::Sandbox,
            allow: Entitlements::default(),
            platform: Platform::host(),
            build_platform: Platform::host(),
            context_name: "context".to_owned(),
            dockerignore: Vec::new(),
            source_date_epoch: None,
            run_extras: RunExtras::default(),
            named_contexts: BTreeMap::new(),
        }
    }
}

/// `BuildKit`'s entitlements (`--allow`): a Dockerfile's `RUN --network=host` and
/// `RUN --security=insecure` fail to plan unless the user allows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Entitlements {
    /// `network.host`: `RUN --network=host`.
    pub network_host: bool,
    /// `security.insecure`: `RUN --security=insecure` (every capability, every
    /// device, nothing masked).
    pub security_insecure: bool,
}

impl Entitlements {
    /// Every entitlement.
    pub fn all() -> Self {
        Entitlements {
            network_host: true,
            security_insecure: true,
        }
    }
}

/// A base image as the image store knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedImage {
    /// Canonical reference (`docker.io/library/busybox:latest`), for progress
    /// and errors.
    pub reference: String,
    /// The digest pinning the content, and whether it is an image ID or a
    /// manifest digest: the worker reads exactly this image.
    pub pin: ImagePin,
    /// The image's config.
    pub config: ImageConfig,
}

/// Looks up base images (`FROM`, `COPY --from=image`, `RUN --mount=from=image`).
/// Called only for stages the target needs.
pub trait ImageResolver {
    /// `reference` is the name as written in the Dockerfile, variables expanded.
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, ResolveError>;

    /// Resolves `reference` (a branch, tag, full commit or `refs/...`; empty
    /// for the default branch) of the git repository at `remote` to the full
    /// commit it names (`BuildKit`'s git source resolves by `ls-remote`
    /// before keying): an `ADD <git ref>` is keyed by that commit. Annotated
    /// tags give their commit, or the tag object itself with `keep_git_dir`
    /// (as `BuildKit`). Resolvers that reach no repositories refuse.
    fn resolve_git(
        &self,
        remote: &str,
        reference: &str,
        keep_git_dir: bool,
    ) -> Result<String, ResolveError> {
        let _ = (reference, keep_git_dir);
        Err(ResolveError(format!(
            "{remote}: git sources are not available here"
        )))
    }
}

/// The result: what to solve and what the image's config is.
#[derive(Debug, Clone)]
pub struct BuildPlan {
    pub graph: BuildGraph,
    /// The final root filesystem of the target stage.
    pub target: VertexId,
    /// The target's image config (base config inherited, history appended;
    /// `rootfs.diff_ids` are the base image's: the exporter appends the new ones).
    pub image: ImageConfig,
    /// The image at the bottom of the target's stage chain, whose layers the
    /// new ones go on top of (`None` for `FROM scratch`).
    pub base: Option<ResolvedImage>,
    /// Vertices whose snapshot adds one layer on top of the previous entry's (the
    /// first on top of `base`); one per history entry without `empty_layer` that
    /// this build added, in the same order.
    pub layer_vertices: Vec<VertexId>,
    /// The target stage's name (`stage-N` when unnamed).
    pub target_stage: String,
    /// Things worth telling the user (unused build args, ...).
    pub warnings: Vec<String>,
}

impl BuildPlan {
    /// The graph as text, one vertex per two lines (id, progress name, location,
    /// inputs, then the op as JSON), then the target and the layer vertices. For
    /// `--print-graph`-style debugging and snapshot tests.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (id, v) in self.graph.to_serializable() {
            let loc = v
                .description
                .location
                .as_ref()
                .map(|l| format!(" @{}:{}", l.file, l.start_line))
                .unwrap_or_default();
            let inputs: Vec<String> = v.inputs.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "{id} {:?}{loc} inputs=[{}]{}",
                v.description.name,
                inputs.join(" "),
                if v.ignore_cache { " ignore_cache" } else { "" }
            );
            let op = serde_json::to_string(&v.op).unwrap_or_else(|e| format!("<{e}>"));
            let _ = writeln!(out, "    {op}");
        }
        let _ = writeln!(out, "target {}", self.target);
        let layers: Vec<String> = self
            .layer_vertices
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(out, "layers [{}]", layers.join(" "));
        out
    }
}

/// Parses `src` and plans it (parse errors become [`FrontendError::Parse`]).
pub fn plan_source(
    src: &str,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Result<BuildPlan, FrontendError> {
    let df = rbuild_parser::parse(src).map_err(|error| FrontendError::Parse {
        file: opts.dockerfile_path.clone(),
        error: Box::new(error),
    })?;
    build_plan(&df, opts, resolver)
}

type Local = usize;

struct PVertex {
    op: Op,
    inputs: Vec<Local>,
    name: String,
    location: Option<SourceLocation>,
    ignore_cache: bool,
}

#[derive(Debug, Clone)]
enum BaseRef {
    Scratch,
    Image(String),
    Stage(usize),
    /// A `--build-context NAME=DIR`.
    Context(String),
}

struct Stage {
    name: Option<String>,
    display: String,
    from: Instruction,
    platform: Option<Platform>,
    base: BaseRef,
    commands: Vec<(Instruction, bool)>,
    deps: BTreeSet<usize>,
    synthetic: bool,
    resolved: Option<ResolvedImage>,
    onbuild_done: bool,
    cmd_total: usize,
    result: Option<StageResult>,
}

#[derive(Clone)]
struct StageResult {
    state: Option<Local>,
    image: ImageConfig,
    env: Vec<(String, String)>,
    build_args: Vec<(String, Option<String>)>,
    layers: Vec<Local>,
    base: Option<ResolvedImage>,
    /// What was charged to [`MAX_EXPANDED_TOTAL`] for this stage, including what it
    /// inherited: a stage built `FROM` it copies as much again.
    charged: usize,
}

/// The state of one stage while its instructions are dispatched.
struct Run {
    st: StageResult,
    display: String,
    cmd_index: usize,
    cmd_total: usize,
    cmd_set: bool,
    ignore_cache: bool,
    on_build: bool,
}

impl Run {
    fn prefix(&mut self, text: &str) -> String {
        if self.cmd_total == 0 {
            return text.to_owned();
        }
        self.cmd_index += 1;
        let width = self.cmd_total.to_string().len();
        let mut out = "[".to_owned();
        if !self.display.is_empty() {
            out.push_str(&self.display);
            out.push(' ');
        }
        let _ = write!(out, "{:>width$}/{}] ", self.cmd_index, self.cmd_total);
        if self.on_build {
            out.push_str("ONBUILD ");
        }
        out + text
    }

    fn history(&mut self, created_by: String, layer: Option<Local>, epoch: Option<&str>) {
        self.st.image.history.push(History {
            created: epoch.map(str::to_owned),
            created_by: Some(created_by),
            comment: Some(HISTORY_COMMENT.to_owned()),
            empty_layer: layer.is_none(),
            ..History::default()
        });
        if let Some(l) = layer {
            self.st.layers.push(l);
            self.st.state = Some(l);
        }
    }
}

fn config_env_set(env: &mut Vec<String>, k: &str, v: &str) {
    let entry = format!("{k}={v}");
    for e in env.iter_mut() {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        if key == k {
            *e = entry;
            return;
        }
    }
    env.push(entry);
}

/// What `FROM name` (or `COPY --from=name`, name no stage) builds on: a
/// `--build-context` of that name, else `scratch` or the image.
fn named_base(named: &BTreeMap<String, NamedContext>, name: &str) -> BaseRef {
    match named.get(name) {
        Some(NamedContext::Dir(_)) => BaseRef::Context(name.to_owned()),
        Some(NamedContext::Image(r)) => BaseRef::Image(r.clone()),
        None if name == "scratch" => BaseRef::Scratch,
        None => BaseRef::Image(name.to_owned()),
    }
}

fn env_from_config(cfg: &ImageConfig) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for e in &cfg.config.env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        env_set(&mut env, k, v);
    }
    env
}

fn uppercase_cmd(s: &str) -> String {
    match s.split_once(' ') {
        Some((a, b)) => format!("{} {b}", a.to_uppercase()),
        None => s.to_uppercase(),
    }
}

const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

const PLATFORM_ARGS: &[&str] = &[
    "TARGETSTAGE",
    "SOURCE_DATE_EPOCH",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
];

struct Planner<'a> {
    opts: &'a BuildOptions,
    resolver: &'a dyn ImageResolver,
    file: String,
    lexer: Lexer,
    vertices: Vec<PVertex>,
    context: Option<Local>,
    ctx_paths: BTreeSet<String>,
    scratch: Option<Local>,
    global: Vec<(String, String)>,
    declared: BTreeSet<String>,
    stages: Vec<Stage>,
    epoch: Option<String>,
    epoch_secs: Option<i64>,
    /// Bytes charged to [`MAX_EXPANDED_TOTAL`] so far.
    charged: Cell<usize>,
    /// An ONBUILD trigger is being dispatched.
    in_trigger: Cell<bool>,
}

/// Turns a parsed Dockerfile into a build graph and the target's image config.
pub fn build_plan(
    df: &Dockerfile,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Result<BuildPlan, FrontendError> {
    let mut p = Planner {
        opts,
        resolver,
        file: opts.dockerfile_path.clone(),
        lexer: Lexer::new(df.directives.escape),
        vertices: Vec::new(),
        context: None,
        ctx_paths: BTreeSet::new(),
        scratch: None,
        global: Vec::new(),
        declared: BTreeSet::new(),
        stages: Vec::new(),
        epoch: None,
        charged: Cell::new(0),
        in_trigger: Cell::new(false),
        epoch_secs: opts.source_date_epoch.or_else(|| {
            opts.build_args
                .get("SOURCE_DATE_EPOCH")
                .and_then(|v| v.parse().ok())
        }),
    };
    p.epoch = p.epoch_secs.map(|s| rbuild_oci::time::format_rfc3339(s, 0));
    p.run(df)
}

impl Planner<'_> {
    fn err(&self, span: &Span, message: impl Into<String>) -> FrontendError {
        FrontendError::Instruction {
            file: self.file.clone(),
            line: span.start_line,
            message: message.into(),
        }
    }

    /// `BuildKit`'s entitlement check of a RUN flag: `Err` naming the flag and the
    /// `--allow` to pass unless `allowed`.
    fn entitled(
        &self,
        span: &Span,
        allowed: bool,
        flag: &str,
        entitlement: &str,
    ) -> Result<(), FrontendError> {
        if allowed {
            return Ok(());
        }
        Err(self.err(
            span,
            format!(
                "{entitlement} is not allowed: RUN {flag} needs the entitlement \
                 {entitlement}; pass --allow {entitlement}"
            ),
        ))
    }

    fn location(&self, span: &Span) -> SourceLocation {
        SourceLocation {
            file: self.file.clone(),
            start_line: u32::try_from(span.start_line).unwrap_or(u32::MAX),
            end_line: u32::try_from(span.end_line.max(span.start_line)).unwrap_or(u32::MAX),
        }
    }

    /// A heredoc as a file `path` in an empty tree (BuildKit's "preparing
    /// inline document" vertex).
    fn inline_document(&mut self, path: &str, data: Vec<u8>, mode: u32, span: &Span) -> Local {
        let op = FileOp {
            base: None,
            actions: vec![FileAction::Mkfile(Mkfile {
                path: path.to_owned(),
                data,
                mode,
                owner: None,
                timestamp: self.epoch_secs,
            })],
        };
        self.push(
            op,
            Vec::new(),
            "[internal] preparing inline document".to_owned(),
            Some(span),
            false,
        )
    }

    fn push(
        &mut self,
        op: impl Into<Op>,
        inputs: Vec<Local>,
        name: String,
        span: Option<&Span>,
        ignore_cache: bool,
    ) -> Local {
        let location = span.map(|s| self.location(s));
        self.vertices.push(PVertex {
            op: op.into(),
            inputs,
            name,
            location,
            ignore_cache,
        });
        self.vertices.len() - 1
    }

    /// The source op of `ADD <git ref>` (`BuildKit`'s dispatchCopy): the ref
    /// resolved to its commit, checked against `--checksum` / `?checksum=`.
    fn git_source(
        &self,
        src: &str,
        keep_flag: bool,
        checksum: Option<&str>,
        span: &Span,
    ) -> Result<SourceOp, FrontendError> {
        let g = match crate::gitref::parse(src) {
            Some(Ok(g)) => g,
            Some(Err(e)) => return Err(self.err(span, format!("{src}: {e}"))),
            None => return Err(self.err(span, format!("{src}: not a git reference"))),
        };
        // `--keep-git-dir` (false unless given) and `?keep-git-dir=`.
        if keep_flag && g.keep_git_dir == Some(false) {
            return Err(self.err(span, "inconsistent keep-git-dir configuration"));
        }
        let keep_git_dir = g.keep_git_dir.unwrap_or(keep_flag);
        let checksum = match (checksum, g.checksum.as_deref()) {
            (Some(a), Some(b)) if a != b => {
                return Err(self.err(span, format!("checksum mismatch {a:?} != {b:?}")));
            }
            (Some(c), _) | (None, Some(c)) => Some(c),
            (None, None) => None,
        };
        if let Some(c) = checksum {
            if c.is_empty() || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(self.err(
                    span,
                    format!("invalid checksum {c} for Git URL, expected hex commit hash"),
                ));
            }
        }
        let commit = self
            .resolver
            .resolve_git(&g.remote, &g.reference, keep_git_dir)
            .map_err(|e| self.err(span, e.0))?;
        if let Some(c) = checksum {
            if !commit.starts_with(&c.to_ascii_lowercase()) {
                return Err(self.err(
                    span,
                    format!("{src}: expected checksum to match {c}, got {commit}"),
                ));
            }
        }
        Ok(SourceOp::Git {
            remote: g.remote,
            reference: g.reference,
            commit,
            subdir: g.subdir,
            keep_git_dir,
            submodules: g.submodules.unwrap_or(true),
        })
    }

    fn scratch(&mut self) -> Local {
        if let Some(s) = self.scratch {
            return s;
        }
        let s = self.push(
            SourceOp::Scratch,
            Vec::new(),
            "scratch".to_owned(),
            None,
            false,
        );
        self.scratch = Some(s);
        s
    }

    fn context(&mut self) -> Local {
        if let Some(c) = self.context {
            return c;
        }
        let op = SourceOp::Context {
            name: self.opts.context_name.clone(),
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
            follow_paths: Vec::new(),
        };
        let c = self.push(
            op,
            Vec::new(),
            "[internal] load build context".to_owned(),
            None,
            false,
        );
        self.context = Some(c);
        c
    }

    /// Expands `word` of `ins` with `lexer`, charging what it grew by.
    fn expand_with(
        &self,
        lexer: &Lexer,
        word: &str,
        env: &[(String, String)],
        ins: &Instruction,
    ) -> Result<rbuild_parser::shell::Expanded, FrontendError> {
        let e = lexer
            .process_word(word, env)
            .map_err(|e| self.shell_error(ins, word, &e))?;
        self.charge(e.result.len().saturating_sub(word.len()), ins, || {
            locate(ins, self.in_file(ins), word, 0).0
        })?;
        Ok(e)
    }

    fn expand(
        &self,
        word: &str,
        env: &[(String, String)],
        ins: &Instruction,
    ) -> Result<String, FrontendError> {
        self.expand_with(&self.lexer, word, env, ins)
            .map(|e| e.result)
    }

    fn expand_words(
        &self,
        word: &str,
        env: &[(String, String)],
        ins: &Instruction,
    ) -> Result<Vec<String>, FrontendError> {
        self.expand_with(&self.lexer, word, env, ins)
            .map(|e| e.words)
    }

    /// A step's progress name with variables expanded (`text` as it is when it does
    /// not expand), charging what it grew by.
    fn expand_name(
        &self,
        lexer: &Lexer,
        text: &str,
        env: &[(String, String)],
        ins: &Instruction,
    ) -> Result<String, FrontendError> {
        match lexer.process_word(text, env) {
            Ok(e) => {
                let label = || ins.keyword.to_uppercase();
                self.charge(e.result.len().saturating_sub(text.len()), ins, label)?;
                Ok(e.result)
            }
            Err(_) => Ok(text.to_owned()),
        }
    }

    /// Adds `bytes` to what variable values put into the plan; past
    /// [`MAX_EXPANDED_TOTAL`], an error at `ins` named by `what`.
    fn charge(
        &self,
        bytes: usize,
        ins: &Instruction,
        what: impl FnOnce() -> String,
    ) -> Result<(), FrontendError> {
        let total = self.charged.get().saturating_add(bytes);
        self.charged.set(total);
        if total <= MAX_EXPANDED_TOTAL {
            return Ok(());
        }
        Err(FrontendError::Expansion {
            file: self.file.clone(),
            span: keyword_span(ins, self.in_file(ins)),
            message: format!(
                "{}: the expanded values in this build add up to over {}",
                what(),
                human_size_exact(MAX_EXPANDED_TOTAL)
            ),
        })
    }

    /// Whether the spans of `ins`'s node are positions in the Dockerfile: not for an
    /// ONBUILD trigger, which is parsed from its own text (its instruction takes the
    /// span of the `FROM`).
    fn in_file(&self, ins: &Instruction) -> bool {
        !self.in_trigger.get() && ins.node.span == ins.span
    }

    /// A lexer error in `word` of `ins`, pointing at the construct that failed.
    fn shell_error(&self, ins: &Instruction, word: &str, e: &ShellError) -> FrontendError {
        let (what, span) = locate(ins, self.in_file(ins), word, e.offset);
        let message = match e.kind {
            ShellErrorKind::TooLong { .. } | ShellErrorKind::TooExpensive => {
                format!("{what}: {}", e.kind)
            }
            _ => e.to_string(),
        };
        FrontendError::Expansion {
            file: self.file.clone(),
            span,
            message,
        }
    }

    // ------------------------------------------------------------ stages

    fn run(&mut self, df: &Dockerfile) -> Result<BuildPlan, FrontendError> {
        let opts = self.opts;
        // Platform ARGs, then the meta ARGs before the first FROM.
        let bp = &opts.build_platform;
        let tp = &opts.platform;
        // TARGETSTAGE: the --target stage, else the last stage's name, else
        // `default` (a --build-arg overrides it).
        let last_name = df
            .instructions
            .iter()
            .filter_map(|i| match &i.kind {
                InstructionKind::From(f) => Some(f.alias.clone()),
                _ => None,
            })
            .next_back()
            .flatten();
        let target_stage = opts
            .build_args
            .get("TARGETSTAGE")
            .cloned()
            .or_else(|| opts.target.clone().filter(|t| !t.is_empty()))
            .or(last_name)
            .unwrap_or_else(|| "default".to_owned());
        env_set(&mut self.global, "TARGETSTAGE", &target_stage);
        for (k, v) in crate::scope::platform_args(bp, tp, false) {
            env_set(&mut self.global, k, &v);
        }
        let mut iter = df.instructions.iter().peekable();
        while let Some(ins) = iter.next_if(|i| !matches!(i.kind, InstructionKind::From(_))) {
            let InstructionKind::Arg(arg) = &ins.kind else {
                return Err(self.err(&ins.span, "no build stage in current context"));
            };
            for def in &arg.args {
                self.declared.insert(def.name.clone());
                let global = self.global.clone();
                let value = arg_value(
                    &def.name,
                    def.default.as_deref(),
                    &opts.build_args,
                    None,
                    |d| self.expand(d, &global, ins),
                )?;
                if let Some(ArgValue::BuildArg(v)) = &value {
                    self.charge(v.len(), ins, || format!("ARG {}", def.name))?;
                }
                if let Some(v) = value {
                    env_set(&mut self.global, &def.name, &v.into_string());
                }
            }
        }
        // Stages.
        for ins in iter {
            if let InstructionKind::From(from) = &ins.kind {
                let image = self.expand(&from.image, &self.global, ins)?;
                if image.is_empty() {
                    return Err(self.err(
                        &ins.span,
                        format!("base name ({}) should not be blank", from.image),
                    ));
                }
                let platform = match &from.platform {
                    Some(p) => {
                        let text = self.expand(p, &self.global.clone(), ins)?;
                        Some(Platform::parse(&text).ok_or_else(|| {
                            self.err(
                                &ins.span,
                                format!(
                                    "failed to parse platform {p}: {text:?} is not a valid platform"
                                ),
                            )
                        })?)
                    }
                    None => None,
                };
                let index = self.stages.len();
                let base = if let Some(j) = self
                    .stages
                    .iter()
                    .position(|s| s.name.as_deref() == Some(image.as_str()))
                {
                    BaseRef::Stage(j)
                } else {
                    named_base(&self.opts.named_contexts, &image)
                };
                self.stages.push(Stage {
                    name: from.alias.clone(),
                    display: from
                        .alias
                        .clone()
                        .unwrap_or_else(|| format!("stage-{index}")),
                    from: ins.clone(),
                    platform,
                    base,
                    commands: Vec::new(),
                    deps: BTreeSet::new(),
                    synthetic: false,
                    resolved: None,
                    onbuild_done: false,
                    cmd_total: 0,
                    result: None,
                });
            } else {
                let stage = self.stages.last_mut().expect("a FROM came first");
                stage.commands.push((ins.clone(), false));
            }
        }
        if self.stages.is_empty() {
            return Err(FrontendError::NoStages {
                file: self.file.clone(),
            });
        }
        let real = self.stages.len();
        for i in 0..real {
            let cmds: Vec<Instruction> = self.stages[i]
                .commands
                .iter()
                .map(|(c, _)| c.clone())
                .collect();
            for c in &cmds {
                self.add_deps(i, c)?;
            }
        }
        // Target.
        let target = match &opts.target {
            None => real - 1,
            Some(t) => {
                let lower = t.to_lowercase();
                self.stages[..real]
                    .iter()
                    .position(|s| s.name.as_deref() == Some(lower.as_str()))
                    .ok_or_else(|| {
                        let names: Vec<&str> = self.stages[..real]
                            .iter()
                            .filter_map(|s| s.name.as_deref())
                            .collect();
                        FrontendError::UnknownTarget {
                            file: self.file.clone(),
                            target: t.clone(),
                            suggestion: closest(&lower, &names),
                        }
                    })?
            }
        };
        self.check_cycles()?;
        // Resolve what the target needs; ONBUILD triggers may add more.
        loop {
            let reachable = self.reachable(target);
            for &i in &reachable {
                if let BaseRef::Image(r) = self.stages[i].base.clone() {
                    if self.stages[i].resolved.is_none() {
                        let platform = self.stages[i]
                            .platform
                            .clone()
                            .unwrap_or_else(|| opts.platform.clone());
                        let img = self.resolver.resolve(&r, &platform).map_err(|e| {
                            FrontendError::Resolve {
                                file: self.file.clone(),
                                line: self.stages[i].from.span.start_line,
                                reference: r.clone(),
                                message: e.0,
                            }
                        })?;
                        self.stages[i].resolved = Some(img);
                    }
                }
            }
            let mut new_deps = false;
            for &i in &reachable {
                if self.stages[i].onbuild_done || self.stages[i].synthetic {
                    continue;
                }
                self.stages[i].onbuild_done = true;
                let triggers: Vec<String> = match &self.stages[i].base {
                    BaseRef::Image(_) => self.stages[i]
                        .resolved
                        .as_ref()
                        .map(|r| r.config.config.on_build.clone())
                        .unwrap_or_default(),
                    BaseRef::Stage(j) => self.stages[*j]
                        .commands
                        .iter()
                        .filter_map(|(c, _)| match &c.kind {
                            InstructionKind::Onbuild(o) => Some(o.expression.clone()),
                            _ => None,
                        })
                        .collect(),
                    BaseRef::Scratch | BaseRef::Context(_) => Vec::new(),
                };
                if triggers.is_empty() {
                    continue;
                }
                let mut parsed = Vec::new();
                for t in &triggers {
                    let span = self.stages[i].from.span;
                    let df = rbuild_parser::parse(t).map_err(|e| {
                        self.err(
                            &span,
                            format!(
                                "failed to parse ONBUILD trigger {t:?} of the base image: {}",
                                e.message
                            ),
                        )
                    })?;
                    let [mut ins] =
                        <[Instruction; 1]>::try_from(df.instructions).map_err(|_| {
                            self.err(&span, "onbuild trigger should be a single expression")
                        })?;
                    if matches!(
                        ins.kind,
                        InstructionKind::From(_)
                            | InstructionKind::Onbuild(_)
                            | InstructionKind::Maintainer(_)
                    ) {
                        return Err(self.err(
                            &span,
                            format!(
                                "{} isn't allowed as an ONBUILD trigger",
                                ins.keyword.to_uppercase()
                            ),
                        ));
                    }
                    ins.span = span;
                    let before = self.stages[i].deps.len();
                    self.add_deps(i, &ins)?;
                    new_deps |= self.stages[i].deps.len() != before;
                    parsed.push((ins, true));
                }
                let stage = &mut self.stages[i];
                parsed.append(&mut stage.commands);
                stage.commands = parsed;
            }
            if !new_deps {
                break;
            }
            self.check_cycles()?;
        }
        let reachable = self.reachable(target);
        if self.stages.len() == 1 {
            self.stages[0].display = String::new();
        }
        for s in &mut self.stages {
            let mut total = usize::from(matches!(s.base, BaseRef::Image(_) | BaseRef::Context(_)));
            for (c, onbuild) in &s.commands {
                if *onbuild
                    || matches!(
                        c.kind,
                        InstructionKind::Add(_)
                            | InstructionKind::Copy(_)
                            | InstructionKind::Run(_)
                            | InstructionKind::Workdir(_)
                    )
                {
                    total += 1;
                }
            }
            s.cmd_total = total;
        }
        // Dispatch in file order (synthetic image stages first: they have no
        // instructions and anything may copy from them).
        let mut order: Vec<usize> = (real..self.stages.len())
            .filter(|i| reachable.contains(i))
            .collect();
        order.extend((0..real).filter(|i| reachable.contains(i)));
        for i in order {
            self.dispatch_stage(i)?;
        }
        self.finish(target)
    }

    fn find_stage(
        &mut self,
        from: &str,
        span: &Span,
        allow_index: bool,
    ) -> Result<usize, FrontendError> {
        let real: Vec<usize> = (0..self.stages.len())
            .filter(|&i| !self.stages[i].synthetic)
            .collect();
        if allow_index {
            if let Ok(n) = from.parse::<i64>() {
                return usize::try_from(n)
                    .ok()
                    .filter(|n| *n < real.len())
                    .map(|n| real[n])
                    .ok_or_else(|| self.err(span, format!("invalid stage index {n}")));
            }
        }
        let lower = from.to_lowercase();
        if let Some(i) = self
            .stages
            .iter()
            .position(|s| !s.synthetic && s.name.as_deref() == Some(lower.as_str()))
        {
            return Ok(i);
        }
        if let Some(i) = self.stages.iter().position(|s| {
            s.synthetic && matches!(&s.base, BaseRef::Image(r) | BaseRef::Context(r) if r == from)
        }) {
            return Ok(i);
        }
        let index = self.stages.len();
        let base = named_base(&self.opts.named_contexts, from);
        let mut from_ins = self.stages[0].from.clone();
        from_ins.span = *span;
        self.stages.push(Stage {
            name: None,
            display: String::new(),
            from: from_ins,
            platform: None,
            base,
            commands: Vec::new(),
            deps: BTreeSet::new(),
            synthetic: true,
            resolved: None,
            onbuild_done: true,
            cmd_total: 0,
            result: None,
        });
        Ok(index)
    }

    fn add_deps(&mut self, i: usize, c: &Instruction) -> Result<(), FrontendError> {
        match &c.kind {
            InstructionKind::Copy(copy) => {
                if let Some(from) = &copy.from {
                    if self
                        .lexer
                        .process_word(from, &rbuild_parser::shell::NoEnv)
                        .map(|e| e.result)
                        .ok()
                        .as_deref()
                        != Some(from.as_str())
                    {
                        return Err(self.err(&c.span, "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround"));
                    }
                    let s = self.find_stage(from, &c.span, true)?;
                    self.stages[i].deps.insert(s);
                }
            }
            InstructionKind::Run(run) => {
                for m in &run.mounts {
                    let from = match m {
                        Mount::Bind(b) => b.from.as_ref(),
                        Mount::Cache(c) => c.from.as_ref(),
                        Mount::Unexpanded(u) => u.from.as_ref(),
                        _ => None,
                    };
                    if let Some(from) = from {
                        let s = self.find_stage(from, &c.span, false)?;
                        self.stages[i].deps.insert(s);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn edges(&self, i: usize) -> Vec<usize> {
        let mut e: Vec<usize> = self.stages[i].deps.iter().copied().collect();
        if let BaseRef::Stage(j) = self.stages[i].base {
            e.push(j);
        }
        e
    }

    fn reachable(&self, target: usize) -> BTreeSet<usize> {
        crate::util::reachable(target, |s| self.edges(s))
    }

    fn check_cycles(&self) -> Result<(), FrontendError> {
        // 0 = unvisited, 1 = on the stack, 2 = done.
        fn visit(p: &Planner<'_>, i: usize, mark: &mut [u8]) -> Option<usize> {
            if mark[i] == 1 {
                return Some(i);
            }
            if mark[i] == 2 {
                return None;
            }
            mark[i] = 1;
            for j in p.edges(i) {
                if let Some(c) = visit(p, j, mark) {
                    return Some(c);
                }
            }
            mark[i] = 2;
            None
        }
        let mut mark = vec![0u8; self.stages.len()];
        for i in 0..self.stages.len() {
            if let Some(c) = visit(self, i, &mut mark) {
                let s = &self.stages[c];
                return Err(FrontendError::CircularDependency {
                    file: self.file.clone(),
                    line: s.from.span.start_line,
                    stage: s.display.clone(),
                });
            }
        }
        Ok(())
    }

    fn ignore_cache_for(&self, s: &Stage) -> bool {
        self.opts.no_cache
            || s.name.as_ref().is_some_and(|n| {
                self.opts
                    .no_cache_filter
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(n))
            })
    }

    fn dispatch_stage(&mut self, i: usize) -> Result<(), FrontendError> {
        let opts = self.opts;
        let stage_platform = self.stages[i]
            .platform
            .clone()
            .unwrap_or_else(|| opts.platform.clone());
        let ignore_cache = self.ignore_cache_for(&self.stages[i]);
        let mut run = Run {
            st: StageResult {
                state: None,
                image: ImageConfig::default(),
                env: Vec::new(),
                build_args: Vec::new(),
                layers: Vec::new(),
                base: None,
                charged: 0,
            },
            display: self.stages[i].display.clone(),
            cmd_index: 0,
            cmd_total: self.stages[i].cmd_total,
            cmd_set: false,
            ignore_cache,
            on_build: false,
        };
        let from_span = self.stages[i].from.span;
        let charged_before = self.charged.get();
        match self.stages[i].base.clone() {
            BaseRef::Stage(j) => {
                let base = self.stages[j].result.clone().ok_or_else(|| {
                    self.err(
                        &from_span,
                        format!(
                            "stage {:?} is needed before it is built",
                            self.stages[j].display
                        ),
                    )
                })?;
                // The stage's copy of its base's environment, config and history.
                let from = self.stages[i].from.clone();
                self.charge(base.charged, &from, || "FROM".to_owned())?;
                run.st = base;
                run.st.image.config.on_build.clear();
            }
            BaseRef::Scratch => {
                run.st.image = ImageConfig::empty(&stage_platform);
            }
            BaseRef::Context(name) => {
                run.st.image = ImageConfig::empty(&stage_platform);
                let op = SourceOp::Context {
                    name: name.clone(),
                    include_patterns: Vec::new(),
                    exclude_patterns: Vec::new(),
                    follow_paths: Vec::new(),
                };
                let label = run.prefix(&format!("FROM {name} (build context)"));
                run.st.state = Some(self.push(op, Vec::new(), label, Some(&from_span), false));
            }
            BaseRef::Image(_) => {
                let resolved = self.stages[i]
                    .resolved
                    .clone()
                    .expect("reachable stages are resolved");
                let mut img = resolved.config.clone();
                img.created = None;
                if img.architecture.is_empty() {
                    img.architecture.clone_from(&stage_platform.architecture);
                }
                if img.os.is_empty() {
                    img.os.clone_from(&stage_platform.os);
                }
                let is_scratch =
                    img.rootfs.diff_ids.is_empty() && img.history.iter().all(|h| h.empty_layer);
                if !is_scratch {
                    let name = run.prefix(&format!("FROM {}", display_ref(&resolved)));
                    let platform = self.stages[i]
                        .platform
                        .clone()
                        .or_else(|| {
                            (opts.platform != Platform::host()).then(|| opts.platform.clone())
                        })
                        .map(|p| p.to_string());
                    let op = SourceOp::Image {
                        reference: resolved.reference.clone(),
                        pin: resolved.pin.clone(),
                        platform,
                        chain_id: resolved.config.rootfs.chain_id().map(|d| d.to_string()),
                    };
                    run.st.state = Some(self.push(op, Vec::new(), name, Some(&from_span), false));
                }
                // The triggers run in this stage (they were put in front of its
                // instructions); the new image does not carry them on.
                img.config.on_build.clear();
                run.st.image = img;
                run.st.base = Some(resolved);
            }
        }
        if !matches!(self.stages[i].base, BaseRef::Stage(_)) {
            if run.st.image.env("PATH").is_none() {
                run.st
                    .image
                    .config
                    .env
                    .push(format!("PATH={}", rbuild_oci::DEFAULT_PATH));
            }
            run.st.env = env_from_config(&run.st.image);
        }
        let commands = self.stages[i].commands.clone();
        for (ins, on_build) in &commands {
            run.on_build = *on_build;
            self.in_trigger.set(*on_build);
            self.dispatch(&mut run, ins)?;
        }
        self.in_trigger.set(false);
        run.st.charged = self.charged.get() - charged_before;
        self.stages[i].result = Some(run.st);
        Ok(())
    }

    // ------------------------------------------------------------ instructions

    fn dispatch(&mut self, run: &mut Run, ins: &Instruction) -> Result<(), FrontendError> {
        let span = &ins.span;
        let env = run.st.env.clone();
        let epoch = self.epoch.clone();
        let epoch = epoch.as_deref();
        match &ins.kind {
            InstructionKind::From(_) => unreachable!("FROM starts a stage"),
            InstructionKind::Maintainer(m) => {
                run.st.image.author = Some(m.name.clone());
                run.history(format!("MAINTAINER {}", m.name), None, epoch);
            }
            InstructionKind::Env(e) => {
                let mut msg = "ENV".to_owned();
                let mut pairs = Vec::new();
                for kv in &e.pairs {
                    let k = self.expand(&kv.key, &env, ins)?;
                    let v = self.expand(&kv.value, &env, ins)?;
                    let _ = write!(msg, " {k}={v}");
                    pairs.push((k, v));
                }
                for (k, v) in pairs {
                    env_set(&mut run.st.env, &k, &v);
                    config_env_set(&mut run.st.image.config.env, &k, &v);
                }
                run.history(msg, None, epoch);
            }
            InstructionKind::Label(l) => {
                let mut msg = "LABEL".to_owned();
                for kv in &l.pairs {
                    let k = self.expand(&kv.key, &env, ins)?;
                    let v = self.expand(&kv.value, &env, ins)?;
                    let _ = write!(msg, " {k}={v}");
                    run.st.image.config.labels.insert(k, v);
                }
                run.history(msg, None, epoch);
            }
            InstructionKind::Arg(a) => {
                let mut parts = Vec::new();
                for def in &a.args {
                    self.declared.insert(def.name.clone());
                    let what = || format!("ARG {}", def.name);
                    let value = arg_value(
                        &def.name,
                        def.default.as_deref(),
                        &self.opts.build_args,
                        Some(&self.global),
                        |d| self.expand(d, &run.st.env, ins),
                    )?;
                    if let Some(ArgValue::BuildArg(v) | ArgValue::Global(v)) = &value {
                        self.charge(v.len(), ins, what)?;
                    }
                    let value = value.map(ArgValue::into_string);
                    if let Some(v) = &value {
                        env_set(&mut run.st.env, &def.name, v);
                        parts.push(format!("{}={v}", def.name));
                    } else {
                        parts.push(def.name.clone());
                    }
                    run.st.build_args.push((def.name.clone(), value));
                }
                run.history(format!("ARG {}", parts.join(" ")), None, epoch);
            }
            InstructionKind::Expose(e) => {
                let mut ports = Vec::new();
                for p in &e.ports {
                    for w in self.expand_words(p, &env, ins)? {
                        ports.extend(parse_port_spec(&w).map_err(|m| self.err(span, m))?);
                    }
                }
                for p in &ports {
                    run.st
                        .image
                        .config
                        .exposed_ports
                        .insert(p.clone(), Empty {});
                }
                run.history(format!("EXPOSE [{}]", ports.join(" ")), None, epoch);
            }
            InstructionKind::Volume(v) => {
                let mut vols = Vec::new();
                for path in &v.paths {
                    let p = self.expand(path, &env, ins)?;
                    if p.is_empty() {
                        return Err(self.err(span, "VOLUME specified can not be an empty string"));
                    }
                    run.st.image.config.volumes.insert(p.clone(), Empty {});
                    vols.push(p);
                }
                run.history(format!("VOLUME [{}]", vols.join(" ")), None, epoch);
            }
            InstructionKind::User(u) => {
                let user = self.expand(&u.user, &env, ins)?;
                run.history(format!("USER {user}"), None, epoch);
                run.st.image.config.user = user;
            }
            InstructionKind::Stopsignal(s) => {
                let sig = self.expand(&s.signal, &env, ins)?;
                if !valid_signal(&sig) {
                    return Err(self.err(span, format!("Invalid signal: {sig}")));
                }
                run.history(format!("STOPSIGNAL {sig}"), None, epoch);
                run.st.image.config.stop_signal = sig;
            }
            InstructionKind::Workdir(w) => {
                let requested = self.expand(&w.path, &env, ins)?;
                if requested.is_empty() {
                    return Err(self.err(span, "normalizing workdir: cannot normalize nothing"));
                }
                let wd = if requested.starts_with('/') {
                    requested
                } else {
                    let cur = &run.st.image.config.working_dir;
                    join(if cur.is_empty() { "/" } else { cur }, &requested)
                };
                run.st.image.config.working_dir.clone_from(&wd);
                let mut layer = None;
                if wd != "/" {
                    let name = self.expand_name(&self.lexer, &ins.original, &run.st.env, ins)?;
                    let name = run.prefix(&uppercase_cmd(&name));
                    let (base, inputs) = match run.st.state {
                        Some(s) => (Some(0), vec![s]),
                        None => (None, Vec::new()),
                    };
                    let op = FileOp {
                        base,
                        actions: vec![FileAction::Mkdir(Mkdir {
                            path: wd.clone(),
                            mode: 0o755,
                            make_parents: true,
                            owner: parse_chown(&run.st.image.config.user),
                            timestamp: self.epoch_secs,
                        })],
                    };
                    layer = Some(self.push(op, inputs, name, Some(span), run.ignore_cache));
                }
                run.history(format!("WORKDIR {wd}"), layer, epoch);
            }
            InstructionKind::Healthcheck(h) => {
                let hc = match h {
                    rbuild_parser::Healthcheck::None => Healthcheck {
                        test: vec!["NONE".to_owned()],
                        ..Healthcheck::default()
                    },
                    rbuild_parser::Healthcheck::Cmd {
                        command,
                        interval,
                        timeout,
                        start_period,
                        start_interval,
                        retries,
                    } => {
                        let mut test = Vec::new();
                        match command {
                            Command::Shell(s) => {
                                test.push("CMD-SHELL".to_owned());
                                test.push(s.clone());
                            }
                            Command::Exec(v) => {
                                test.push("CMD".to_owned());
                                test.extend(v.iter().cloned());
                            }
                        }
                        let n =
                            |d: &Option<rbuild_parser::Duration>| d.as_ref().map_or(0, |d| d.nanos);
                        Healthcheck {
                            test,
                            interval: n(interval),
                            timeout: n(timeout),
                            start_period: n(start_period),
                            start_interval: n(start_interval),
                            retries: retries.map_or(0, i64::from),
                        }
                    }
                };
                let msg = format!(
                    "HEALTHCHECK {{Test:[{}] Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
                    hc.test.join(" "),
                    go_duration(hc.interval),
                    go_duration(hc.timeout),
                    go_duration(hc.start_period),
                    go_duration(hc.start_interval),
                    hc.retries
                );
                run.st.image.config.healthcheck = Some(hc);
                run.history(msg, None, epoch);
            }
            InstructionKind::Shell(s) => {
                run.st.image.config.shell.clone_from(&s.shell);
                run.history(format!("SHELL [{}]", s.shell.join(" ")), None, epoch);
            }
            InstructionKind::Cmd(c) => {
                let args = with_shell(&run.st.image, &c.command);
                run.history(format!("CMD {}", go_quote_list(&args)), None, epoch);
                run.st.image.config.cmd = Some(args);
                run.st.image.config.args_escaped = true;
                run.cmd_set = true;
            }
            InstructionKind::Entrypoint(c) => {
                let args = with_shell(&run.st.image, &c.command);
                run.history(format!("ENTRYPOINT {}", go_quote_list(&args)), None, epoch);
                run.st.image.config.entrypoint = Some(args);
                if !run.cmd_set {
                    run.st.image.config.cmd = None;
                }
            }
            InstructionKind::Onbuild(o) => {
                run.st.image.config.on_build.push(o.expression.clone());
            }
            InstructionKind::Run(r) => self.dispatch_run(run, ins, r)?,
            InstructionKind::Copy(c) => {
                let from = match &c.from {
                    Some(f) => Some(self.find_stage(f, span, true)?),
                    None => None,
                };
                let spec = CopySpec {
                    add: false,
                    sources: &c.sources,
                    dest: &c.dest,
                    heredocs: &c.heredocs,
                    from,
                    chown: c.chown.as_deref(),
                    chmod: c.chmod.as_deref(),
                    parents: c.parents,
                    exclude: &c.exclude,
                    checksum: None,
                    unpack: None,
                    link: c.link,
                    keep_git_dir: false,
                };
                self.dispatch_copy(run, ins, &spec)?;
            }
            InstructionKind::Add(a) => {
                let spec = CopySpec {
                    add: true,
                    sources: &a.sources,
                    dest: &a.dest,
                    heredocs: &a.heredocs,
                    from: None,
                    chown: a.chown.as_deref(),
                    chmod: a.chmod.as_deref(),
                    parents: false,
                    exclude: &a.exclude,
                    checksum: a.checksum.as_deref(),
                    unpack: a.unpack,
                    link: a.link,
                    keep_git_dir: a.keep_git_dir,
                };
                self.dispatch_copy(run, ins, &spec)?;
            }
        }
        Ok(())
    }

    fn stage_state(&mut self, s: usize, span: &Span, run: &Run) -> Result<Local, FrontendError> {
        let Some(res) = &self.stages[s].result else {
            let name = if self.stages[s].synthetic {
                match &self.stages[s].base {
                    BaseRef::Image(r) | BaseRef::Context(r) => r.clone(),
                    _ => "scratch".to_owned(),
                }
            } else {
                self.stages[s].display.clone()
            };
            return Err(self.err(
                span,
                format!("cannot copy from stage {name:?}, it needs to be defined before current stage {:?}", run.display),
            ));
        };
        match res.state {
            Some(l) => Ok(l),
            None => Ok(self.scratch()),
        }
    }

    fn dispatch_copy(
        &mut self,
        run: &mut Run,
        ins: &Instruction,
        spec: &CopySpec<'_>,
    ) -> Result<(), FrontendError> {
        let span = &ins.span;
        let env = run.st.env.clone();
        let kw = if spec.add { "ADD" } else { "COPY" };
        let dest_raw = self.expand(spec.dest, &env, ins)?;
        let dest = dest_path(&run.st.image.config.working_dir, &dest_raw);
        let chown_s = match spec.chown {
            Some(c) => Some(self.expand(c, &env, ins)?),
            None => None,
        };
        let chmod_s = match spec.chmod {
            Some(c) => Some(self.expand(c, &env, ins)?),
            None => None,
        };
        let mode = match &chmod_s {
            Some(c) if !c.is_empty() => Some(parse_chmod(c).map_err(|m| self.err(span, m))?),
            _ => None,
        };
        let owner = chown_s.as_deref().and_then(parse_chown);
        let mut excludes = Vec::new();
        for e in spec.exclude {
            excludes.push(self.expand(e, &env, ins)?);
        }
        let checksum = match spec.checksum {
            Some(c) => Some(self.expand(c, &env, ins)?),
            None => None,
        };
        let mut sources = Vec::new();
        for s in spec.sources {
            sources.push(self.expand(s, &env, ins)?);
        }
        if checksum.is_some() {
            if sources.len() != 1 {
                return Err(self.err(span, "checksum can't be specified for multiple sources"));
            }
            if !is_http(&sources[0]) && !is_git(&sources[0]) {
                return Err(self.err(span, "checksum requires HTTP(S) or Git sources"));
            }
        }
        if let Some(c) = &checksum {
            if !is_git(&sources[0]) && !valid_digest(c) {
                return Err(self.err(span, format!("invalid checksum digest format: {c:?}")));
            }
        }
        let mut msg = kw.to_owned();
        if spec.parents {
            msg.push_str(" --parents");
        }
        if let Some(c) = &chown_s {
            let _ = write!(msg, " --chown={c}");
        }
        if let Some(c) = &chmod_s {
            let _ = write!(msg, " --chmod={c}");
        }
        let name = self.expand_name(&self.lexer, &ins.original, &env, ins)?;
        let name = run.prefix(&uppercase_cmd(&name));

        let mut inputs: Vec<Local> = Vec::new();
        // `--link` copies onto an empty tree (so it reads nothing of the
        // stage: no symlink of it is followed, a destination without a
        // trailing slash is not taken as its directory), merged onto the stage
        // afterwards. On an empty stage that is a plain copy.
        let link = spec.link.then_some(run.st.state).flatten();
        let base = if link.is_some() {
            None
        } else {
            run.st.state.map(|s| {
                inputs.push(s);
                0
            })
        };
        let input_of = |inputs: &mut Vec<Local>, l: Local| -> usize {
            if let Some(p) = inputs.iter().position(|x| *x == l) {
                p
            } else {
                inputs.push(l);
                inputs.len() - 1
            }
        };
        let mut actions = Vec::new();
        for src in &sources {
            msg.push(' ');
            msg.push_str(src);
            if is_git(src) {
                if !spec.add {
                    return Err(self.err(span, "source can't be a git ref for COPY"));
                }
                let g = self.git_source(src, spec.keep_git_dir, checksum.as_deref(), span)?;
                let h = self.push(g, Vec::new(), name.clone(), Some(span), run.ignore_cache);
                let idx = input_of(&mut inputs, h);
                let mut c = Copy::new(idx, vec!["/".to_owned()], dest.clone());
                c.follow_symlinks = false;
                c.allow_wildcard = false;
                c.allow_empty_wildcard = false;
                c.owner.clone_from(&owner);
                c.mode.clone_from(&mode);
                c.exclude_patterns.clone_from(&excludes);
                c.timestamp = self.epoch_secs;
                actions.push(FileAction::Copy(c));
                continue;
            }
            if is_http(src) {
                if !spec.add {
                    return Err(self.err(span, "source can't be a URL for COPY"));
                }
                let filename = url_basename(src);
                let op = SourceOp::Http {
                    url: src.clone(),
                    checksum: checksum.clone(),
                    filename: Some(filename.clone()),
                    chmod: None,
                };
                let h = self.push(op, Vec::new(), name.clone(), Some(span), run.ignore_cache);
                let idx = input_of(&mut inputs, h);
                let mut c = Copy::new(idx, vec![format!("/{filename}")], dest.clone());
                c.follow_symlinks = false;
                c.dir_contents_only = false;
                c.allow_wildcard = false;
                c.allow_empty_wildcard = false;
                c.attempt_unpack = spec.unpack.unwrap_or(false);
                c.owner.clone_from(&owner);
                c.mode.clone_from(&mode);
                c.exclude_patterns.clone_from(&excludes);
                c.timestamp = self.epoch_secs;
                actions.push(FileAction::Copy(c));
                continue;
            }
            // `--parents` (BuildKit's dockerfile2llb): the contents of the
            // directory before the first `/./` pivot (else of the root) are
            // copied, keeping only what the rest of the path matches, so the
            // path after the pivot is kept under the destination. Without
            // wildcards that path must exist.
            let (src_path, include, required) = if spec.parents {
                let (parent, pattern) = src.split_once("/./").unwrap_or(("/", src.as_str()));
                let pattern = clean(&join("/", pattern))
                    .trim_start_matches('/')
                    .to_owned();
                let required = if has_wildcards(parent) || has_wildcards(&pattern) {
                    Vec::new()
                } else {
                    vec![clean(&join(&join("/", parent), &pattern))]
                };
                (parent.to_owned(), vec![pattern], required)
            } else {
                (src.clone(), Vec::new(), Vec::new())
            };
            let src_input = if let Some(s) = spec.from {
                self.stage_state(s, span, run)?
            } else {
                let rel = clean(src);
                if rel == ".." || rel.starts_with("../") {
                    return Err(self.err(
                        span,
                        format!("{kw} source {src:?} is outside the build context"),
                    ));
                }
                self.ctx_paths.insert(join("/", src));
                self.context()
            };
            let idx = input_of(&mut inputs, src_input);
            let mut c = Copy::new(idx, vec![join("/", &src_path)], dest.clone());
            c.include_patterns = include;
            c.required_paths = required;
            c.attempt_unpack = spec.add && spec.unpack.unwrap_or(true);
            c.owner.clone_from(&owner);
            c.mode.clone_from(&mode);
            c.exclude_patterns.clone_from(&excludes);
            c.timestamp = self.epoch_secs;
            actions.push(FileAction::Copy(c));
        }
        for h in spec.heredocs {
            let _ = write!(msg, " <<{}", h.name);
            let body = h.body();
            let data = if h.expand {
                let lexer = Lexer::new('\\').with_skip_process_quotes(true);
                self.expand_with(&lexer, &body, &env, ins)?.result
            } else {
                body
            };
            let path = join("/", &h.name);
            let f = self.inline_document(&path, data.into_bytes(), 0o644, span);
            let idx = input_of(&mut inputs, f);
            let mut c = Copy::new(idx, vec![path], dest.clone());
            c.follow_symlinks = false;
            c.dir_contents_only = false;
            c.allow_wildcard = false;
            c.allow_empty_wildcard = false;
            c.owner.clone_from(&owner);
            c.mode.clone_from(&mode);
            c.timestamp = self.epoch_secs;
            actions.push(FileAction::Copy(c));
        }
        msg.push(' ');
        msg.push_str(&dest_raw);
        msg.push_str(" # buildkit");
        let merge_name = format!("[internal] merging {name}");
        let mut v = self.push(
            FileOp { base, actions },
            inputs,
            name,
            Some(span),
            run.ignore_cache,
        );
        if let Some(stage) = link {
            v = self.push(
                MergeOp { inputs: vec![0, 1] },
                vec![stage, v],
                merge_name,
                Some(span),
                run.ignore_cache,
            );
        }
        let epoch = self.epoch.clone();
        run.history(msg, Some(v), epoch.as_deref());
        Ok(())
    }

    #[allow(clippy::single_match_else, clippy::many_single_char_names)]
    fn dispatch_run(
        &mut self,
        run: &mut Run,
        ins: &Instruction,
        r: &rbuild_parser::Run,
    ) -> Result<(), FrontendError> {
        let span = &ins.span;
        let env = run.st.env.clone();
        let mut custom = ins.original.clone();
        let mut inputs: Vec<Local> = vec![match run.st.state {
            Some(s) => s,
            None => self.scratch(),
        }];
        let mut mounts: Vec<OpMount> = Vec::new();
        // Default ssh targets count within one RUN (BuildKit's exec).
        let mut ssh_index = 0;
        let (mut args, prepend) = match &r.command {
            Command::Shell(s) => (vec![s.clone()], true),
            Command::Exec(v) => (v.clone(), false),
        };
        if args.is_empty() || (prepend && args[0].trim().is_empty() && r.heredocs.is_empty()) {
            return Err(self.err(span, "RUN has no command to run"));
        }
        if !r.heredocs.is_empty() && prepend {
            let first = &r.heredocs[0];
            if is_single_heredoc(&args[0]) {
                let data = first.body();
                if data.starts_with("#!") {
                    let f = self.inline_document(
                        &join("/", &first.name),
                        data.clone().into_bytes(),
                        0o755,
                        span,
                    );
                    inputs.push(f);
                    mounts.push(OpMount {
                        target: "/dev/pipes/".to_owned(),
                        kind: MountKind::Bind {
                            input: inputs.len() - 1,
                            selector: "/".to_owned(),
                            readonly: true,
                        },
                    });
                    args = vec![join("/dev/pipes/", &first.name)];
                } else {
                    args = vec![data.clone()];
                }
                let _ = write!(custom, " ({})", summarize_heredoc(&first.content));
            } else {
                let mut b = args[0].clone();
                for h in &r.heredocs {
                    b.push('\n');
                    b.push_str(&h.content);
                    b.push_str(&h.name);
                }
                args = vec![b];
            }
        }
        if prepend {
            args = with_shell(&run.st.image, &Command::Shell(args.join(" ")));
        }
        let cwd = match run.st.image.config.working_dir.as_str() {
            "" => "/".to_owned(),
            w => w.to_owned(),
        };
        for m in &r.mounts {
            // `type=$VAR`: the type comes from the stage's variables (ARG, or
            // ENV, also inherited from the base stage).
            let typed;
            let m = match m {
                Mount::Unexpanded(u) => {
                    let ty = self.expand(&u.ty, &env, ins)?;
                    typed = m.with_type(&ty).map_err(|e| {
                        let msg = match &e.help {
                            Some(h) => format!("{} ({h})", e.message),
                            None => e.message.clone(),
                        };
                        self.err(span, msg)
                    })?;
                    &typed
                }
                m => m,
            };
            let ex = |me: &Self, s: &Option<String>| -> Result<Option<String>, FrontendError> {
                match s {
                    Some(v) => me.expand(v, &env, ins).map(Some),
                    None => Ok(None),
                }
            };
            let abs_target = |t: &str| {
                if t.starts_with('/') {
                    clean(t)
                } else {
                    join(&cwd, t)
                }
            };
            let octal = |me: &Self,
                         v: Option<String>,
                         def: u32,
                         what: &str|
             -> Result<u32, FrontendError> {
                match v {
                    Some(v) => u32::from_str_radix(&v, 8)
                        .map_err(|_| me.err(span, format!("invalid value {v} for {what}"))),
                    None => Ok(def),
                }
            };
            let num = |me: &Self, v: Option<String>, what: &str| -> Result<u32, FrontendError> {
                match v {
                    Some(v) => v
                        .parse()
                        .map_err(|_| me.err(span, format!("invalid value {v} for {what}"))),
                    None => Ok(0),
                }
            };
            let mount = match m {
                Mount::Bind(b) => {
                    let target = ex(self, &b.target)?
                        .ok_or_else(|| self.err(span, "mount target is required"))?;
                    let source = ex(self, &b.source)?.unwrap_or_default();
                    let input = match &b.from {
                        Some(f) => {
                            let s = self.find_stage(f, span, false)?;
                            self.stage_state(s, span, run)?
                        }
                        None => {
                            let rel = clean(&source);
                            if rel == ".." || rel.starts_with("../") {
                                return Err(self.err(
                                    span,
                                    format!("mount source {source:?} is outside the build context"),
                                ));
                            }
                            self.ctx_paths.insert(join("/", &source));
                            self.context()
                        }
                    };
                    inputs.push(input);
                    OpMount {
                        target: abs_target(&target),
                        kind: MountKind::Bind {
                            input: inputs.len() - 1,
                            selector: join("/", &source),
                            readonly: !b.readwrite,
                        },
                    }
                }
                Mount::Cache(c) => {
                    let raw_target = ex(self, &c.target)?
                        .ok_or_else(|| self.err(span, "mount target is required"))?;
                    let target = abs_target(&raw_target);
                    // BuildKit's default id is the target as written, cleaned
                    // (a relative one is not joined to the working directory).
                    let id = ex(self, &c.id)?
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| clean(&raw_target));
                    let sharing = match ex(self, &c.sharing)?.as_deref() {
                        None | Some("shared") => CacheSharing::Shared,
                        Some("private") => CacheSharing::Private,
                        Some("locked") => CacheSharing::Locked,
                        Some(o) => {
                            return Err(self.err(span, format!("unsupported sharing value {o:?}")));
                        }
                    };
                    let from = match &c.from {
                        Some(f) => {
                            let s = self.find_stage(f, span, false)?;
                            let l = self.stage_state(s, span, run)?;
                            inputs.push(l);
                            Some(inputs.len() - 1)
                        }
                        None => None,
                    };
                    let source = join("/", &ex(self, &c.source)?.unwrap_or_default());
                    let (uid, gid, mode) =
                        (ex(self, &c.uid)?, ex(self, &c.gid)?, ex(self, &c.mode)?);
                    let given = uid.is_some() || gid.is_some() || mode.is_some();
                    let perms = CachePerms::new(
                        num(self, uid, "uid")?,
                        num(self, gid, "gid")?,
                        octal(self, mode, 0o755, "mode")?,
                    );
                    // As BuildKit: `uid`/`gid`/`mode` make the cache start as
                    // `/cache` made with them on the base (scratch, or the
                    // `from=` stage, whose own `/cache` wins), unless a
                    // `source=` is given, beside which they do nothing.
                    let perms = (given && source == "/").then_some(perms);
                    let source = if perms.is_some() && from.is_some() {
                        "/cache".to_owned()
                    } else {
                        source
                    };
                    OpMount {
                        target,
                        kind: MountKind::Cache {
                            id,
                            sharing,
                            from,
                            source,
                            readonly: c.readonly,
                            perms,
                        },
                    }
                }
                Mount::Tmpfs(t) => {
                    let target = ex(self, &t.target)?
                        .ok_or_else(|| self.err(span, "mount target is required"))?;
                    let size =
                        match ex(self, &t.size)? {
                            Some(s) => Some(ram_in_bytes(&s).ok_or_else(|| {
                                self.err(span, format!("invalid tmpfs size {s:?}"))
                            })?),
                            None => None,
                        };
                    OpMount {
                        target: abs_target(&target),
                        kind: MountKind::Tmpfs { size },
                    }
                }
                Mount::Secret(s) => {
                    let target = ex(self, &s.target)?;
                    let env_name = ex(self, &s.env)?;
                    let id = match ex(self, &s.id)? {
                        Some(id) => id,
                        None => target
                            .as_deref()
                            .map(|t| t.rsplit('/').next().unwrap_or(t).to_owned())
                            .or_else(|| env_name.clone())
                            .ok_or_else(|| {
                                self.err(span, "secret mount needs an id or a target")
                            })?,
                    };
                    let target = match (target, &env_name) {
                        (Some(t), _) => abs_target(&t),
                        (None, Some(_)) => String::new(),
                        (None, None) => format!("/run/secrets/{id}"),
                    };
                    OpMount {
                        target,
                        kind: MountKind::Secret {
                            id,
                            env: env_name,
                            required: s.required,
                            mode: octal(self, ex(self, &s.mode)?, 0o400, "mode")?,
                            uid: num(self, ex(self, &s.uid)?, "uid")?,
                            gid: num(self, ex(self, &s.gid)?, "gid")?,
                        },
                    }
                }
                Mount::Unexpanded(_) => {
                    return Err(self.err(span, "mount type is still a variable after expansion"));
                }
                Mount::Ssh(s) => {
                    let target = match ex(self, &s.target)? {
                        Some(t) => abs_target(&t),
                        None => format!("/run/buildkit/ssh_agent.{ssh_index}"),
                    };
                    ssh_index += 1;
                    OpMount {
                        target,
                        kind: MountKind::Ssh {
                            id: ex(self, &s.id)?.unwrap_or_else(|| "default".to_owned()),
                            required: s.required,
                            mode: octal(self, ex(self, &s.mode)?, 0o600, "mode")?,
                            uid: num(self, ex(self, &s.uid)?, "uid")?,
                            gid: num(self, ex(self, &s.gid)?, "gid")?,
                        },
                    }
                }
            };
            if mount.target == "/" {
                return Err(self.err(span, "invalid mount target \"/\""));
            }
            mounts.push(mount);
        }
        let mut exec_env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // `SSH_AUTH_SOCK` names the first ssh mount unless the step's
        // environment has it (BuildKit's llb exec).
        let first_ssh = mounts
            .iter()
            .find(|m| matches!(m.kind, MountKind::Ssh { .. }));
        if let (Some(m), None) = (first_ssh, env_get(&env, "SSH_AUTH_SOCK")) {
            exec_env.push(format!("SSH_AUTH_SOCK={}", m.target));
        }
        // Every RUN step carries the whole environment.
        let carried: usize = exec_env.iter().map(String::len).sum();
        self.charge(carried, ins, || "RUN".to_owned())?;
        let mut op = ExecOp::new(args.clone(), 0);
        op.env = exec_env;
        // Proxy build args, in either case, reach the process as both
        // `HTTP_PROXY` and `http_proxy` (BuildKit's ProxyEnv; of two spellings
        // given, the later in sorted order wins), unless the step's
        // environment has that name.
        for p in PROXY_ARGS {
            let lower = p.to_ascii_lowercase();
            let given = self
                .opts
                .build_args
                .iter()
                .rfind(|(k, _)| k.eq_ignore_ascii_case(p));
            if let Some((_, v)) = given {
                for name in [*p, lower.as_str()] {
                    if env_get(&env, name).is_none() {
                        op.proxy_env.push(format!("{name}={v}"));
                    }
                }
            }
        }
        op.cwd = cwd;
        op.user.clone_from(&run.st.image.config.user);
        op.extra_hosts.clone_from(&self.opts.run_extras.extra_hosts);
        op.shm_size = self.opts.run_extras.shm_size;
        op.ulimits.clone_from(&self.opts.run_extras.ulimits);
        op.mounts = mounts;
        op.network = match r.network {
            None => self.opts.network,
            Some(rbuild_parser::NetworkMode::Default) => NetworkMode::Sandbox,
            Some(rbuild_parser::NetworkMode::None) => NetworkMode::None,
            Some(rbuild_parser::NetworkMode::Host) => {
                self.entitled(
                    span,
                    self.opts.allow.network_host,
                    "--network=host",
                    "network.host",
                )?;
                NetworkMode::Host
            }
        };
        op.security = match r.security {
            Some(rbuild_parser::SecurityMode::Insecure) => {
                self.entitled(
                    span,
                    self.opts.allow.security_insecure,
                    "--security=insecure",
                    "security.insecure",
                )?;
                SecurityMode::Insecure
            }
            _ => SecurityMode::Sandbox,
        };
        let raw = Lexer::new(self.lexer.escape())
            .with_raw_quotes(true)
            .with_skip_unset_env(true);
        let name = self.expand_name(&raw, &custom, &env, ins)?;
        let name = run.prefix(&uppercase_cmd(&name));
        let v = self.push(op, inputs, name, Some(span), run.ignore_cache);
        // runCommandString: the build args in scope, then argv.
        let mut shown: Vec<(String, String)> = Vec::new();
        for (k, default) in &run.st.build_args {
            let v = env_get(&env, k)
                .map(str::to_owned)
                .or_else(|| default.clone())
                .unwrap_or_default();
            env_set_in_place(&mut shown, k, &v);
        }
        let mut parts: Vec<String> = Vec::new();
        if !shown.is_empty() {
            parts.push(format!("|{}", shown.len()));
            parts.extend(shown.iter().map(|(k, v)| format!("{k}={v}")));
        }
        // And its history line the build args in scope.
        let carried: usize = shown.iter().map(|(k, v)| k.len() + v.len() + 1).sum();
        self.charge(carried, ins, || "RUN".to_owned())?;
        parts.extend(args);
        let epoch = self.epoch.clone();
        run.history(
            format!("RUN {} # buildkit", parts.join(" ")),
            Some(v),
            epoch.as_deref(),
        );
        Ok(())
    }

    // ------------------------------------------------------------ output

    fn finish(&mut self, target: usize) -> Result<BuildPlan, FrontendError> {
        let mut result = self.stages[target]
            .result
            .clone()
            .expect("the target was dispatched");
        if !self.opts.labels.is_empty() {
            for (k, v) in &self.opts.labels {
                result.image.config.labels.insert(k.clone(), v.clone());
            }
        }
        // With `SOURCE_DATE_EPOCH` the image's `created` is the epoch, as
        // BuildKit sets it (its history lines already carry it).
        if let Some(e) = &self.epoch {
            result.image.created = Some(e.clone());
        }
        let target_local = match result.state {
            Some(s) => s,
            None => self.scratch(),
        };
        if let Some(c) = self.context {
            let include: Vec<String> = if self.ctx_paths.contains("/") {
                Vec::new()
            } else {
                self.ctx_paths
                    .iter()
                    .map(|p| p.trim_start_matches('/').to_owned())
                    .collect()
            };
            self.vertices[c].op = Op::Source(SourceOp::Context {
                name: self.opts.context_name.clone(),
                include_patterns: include.clone(),
                exclude_patterns: self.opts.dockerignore.clone(),
                follow_paths: include,
            });
        }
        let mut graph = BuildGraph::new();
        let mut ids: Vec<VertexId> = Vec::with_capacity(self.vertices.len());
        for v in &self.vertices {
            let vertex = Vertex {
                op: v.op.clone(),
                inputs: v.inputs.iter().map(|&i| ids[i]).collect(),
                description: Description {
                    name: v.name.clone(),
                    location: v.location.clone(),
                },
                ignore_cache: v.ignore_cache,
            };
            let id = graph.add(vertex).map_err(|source| FrontendError::Graph {
                file: self.file.clone(),
                source,
            })?;
            ids.push(id);
        }
        let target_id = ids[target_local];
        graph
            .prune(&[target_id])
            .map_err(|source| FrontendError::Graph {
                file: self.file.clone(),
                source,
            })?;
        let mut warnings = Vec::new();
        let unused: Vec<&str> = self
            .opts
            .build_args
            .keys()
            .filter(|k| {
                !self.declared.contains(*k)
                    && !PROXY_ARGS.iter().any(|p| p.eq_ignore_ascii_case(k))
                    && !PLATFORM_ARGS.contains(&k.as_str())
                    // Read by the command for a git context.
                    && k.as_str() != "BUILDKIT_CONTEXT_KEEP_GIT_DIR"
            })
            .map(String::as_str)
            .collect();
        if !unused.is_empty() {
            warnings.push(format!(
                "One or more build-args [{}] were not consumed",
                unused.join(" ")
            ));
        }
        Ok(BuildPlan {
            graph,
            target: target_id,
            image: result.image,
            base: result.base,
            layer_vertices: result.layers.iter().map(|&l| ids[l]).collect(),
            target_stage: self.stages[target].display.clone(),
            warnings,
        })
    }
}

#[allow(clippy::struct_excessive_bools)] // one per COPY/ADD flag
struct CopySpec<'a> {
    add: bool,
    sources: &'a [String],
    dest: &'a str,
    heredocs: &'a [Heredoc],
    from: Option<usize>,
    chown: Option<&'a str>,
    chmod: Option<&'a str>,
    parents: bool,
    exclude: &'a [String],
    checksum: Option<&'a str>,
    unpack: Option<bool>,
    /// `--link`: copy onto an empty tree, then merge that onto the stage.
    link: bool,
    /// `ADD --keep-git-dir`.
    keep_git_dir: bool,
}

/// The instruction's keyword in the Dockerfile, or the whole instruction when its
/// node's spans are not positions in the Dockerfile (`in_file`, see
/// `Planner::in_file`).
fn keyword_span(ins: &Instruction, in_file: bool) -> Span {
    if in_file {
        ins.node.keyword_span
    } else {
        ins.span
    }
}

/// What `word` of `ins` is (`ARG NAME`, `ENV NAME`, `LABEL KEY`, `COPY --chown`, or
/// the instruction's name) and where byte `offset` of it is written: from there to
/// the end of the word when the word is found in an argument that is written as it
/// reads, that whole argument when it is found in one written otherwise (with
/// quotes, continuation lines), else the instruction's keyword.
fn locate(ins: &Instruction, in_file: bool, word: &str, offset: usize) -> (String, Span) {
    let node = &ins.node;
    let keyword = ins.keyword.to_uppercase();
    let fallback = (keyword.clone(), keyword_span(ins, in_file));
    if !in_file {
        return fallback;
    }
    let is_arg = matches!(ins.kind, InstructionKind::Arg(_));
    let pairs = matches!(
        ins.kind,
        InstructionKind::Env(_) | InstructionKind::Label(_)
    );
    for (i, (arg, span)) in node.args.iter().zip(&node.arg_spans).enumerate() {
        // An ARG's default comes after `NAME=`.
        let from = if is_arg {
            arg.find('=').map_or(arg.len(), |e| e + 1)
        } else {
            0
        };
        let Some(at) = arg[from..].find(word).map(|a| a + from) else {
            continue;
        };
        let what = if is_arg {
            let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
            format!("{keyword} {name}")
        } else if pairs {
            // ENV and LABEL arguments are (key, value, separator) triples.
            format!("{keyword} {}", node.args[i - i % 3])
        } else {
            keyword
        };
        return (what, sub_span(span, arg, at + offset, at + word.len()));
    }
    for (flag, span) in node.flags.iter().zip(&node.flag_spans) {
        if let Some(at) = flag.find(word) {
            let name = flag.split('=').next().unwrap_or(flag);
            let what = format!("{keyword} {name}");
            return (what, sub_span(span, flag, at + offset, at + word.len()));
        }
    }
    fallback
}

/// The part `start..end` (bytes) of `text`, which `span` covers: exact when `text`
/// is written on one line byte for byte, else the whole `span`.
fn sub_span(span: &Span, text: &str, start: usize, end: usize) -> Span {
    let end = end.max(start);
    if span.start_line != span.end_line
        || span.end - span.start != text.len()
        || !text.is_char_boundary(start)
        || end > text.len()
        || !text.is_char_boundary(end)
    {
        return *span;
    }
    let col = |b: usize| span.start_column + text[..b].chars().count();
    Span {
        start: span.start + start,
        end: span.start + end,
        start_line: span.start_line,
        start_column: col(start),
        end_line: span.start_line,
        end_column: col(end),
    }
}

fn display_ref(r: &ResolvedImage) -> String {
    r.reference.clone()
}

/// Whether a path has `*`, `?` or `[` not escaped by `\\` (`BuildKit`'s
/// `containsWildcards`).
fn has_wildcards(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' | '?' | '[' => return true,
            '\\' => {
                chars.next();
            }
            _ => {}
        }
    }
    false
}

fn is_http(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && !is_git(s)
}

/// Git sources (`BuildKit`'s `isGitSource`).
fn is_git(s: &str) -> bool {
    crate::gitref::is_git(s)
}

/// `algorithm:hex` with the hex length the algorithm needs (go-digest's `Parse`).
fn valid_digest(d: &str) -> bool {
    let Some((alg, hex)) = d.split_once(':') else {
        return false;
    };
    let len = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The file name an `ADD URL` download gets (`__unnamed__` when the URL's path
/// has none).
fn url_basename(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let path = path.split(['?', '#']).next().unwrap_or("");
    let base = clean(path);
    let base = base.rsplit('/').next().unwrap_or("");
    if base.is_empty() || base == "." {
        "__unnamed__".to_owned()
    } else {
        base.to_owned()
    }
}

/// `RUN <<EOF` with nothing else on the line (`BuildKit`'s `MustParseHeredoc`
/// succeeding on the whole command).
fn is_single_heredoc(cmd: &str) -> bool {
    let s = cmd.trim();
    let s = s.trim_start_matches(|c: char| c.is_ascii_digit());
    let Some(rest) = s.strip_prefix("<<") else {
        return false;
    };
    let rest = rest.strip_prefix('-').unwrap_or(rest).trim_start();
    !rest.is_empty() && !rest.contains(char::is_whitespace) && !rest.contains('<')
}

fn summarize_heredoc(doc: &str) -> String {
    let doc = doc.trim().replace("\r\n", "\n");
    let mut lines = doc.split('\n');
    let first = lines.next().unwrap_or("").to_owned();
    if lines.next().is_some() {
        first + "..."
    } else {
        first
    }
}

/// `BuildKit`'s `withShell`: the image's SHELL (or `/bin/sh -c`) and the command.
fn with_shell(img: &ImageConfig, cmd: &Command) -> Vec<String> {
    match cmd {
        Command::Exec(v) => v.clone(),
        Command::Shell(s) => {
            let mut out = if img.config.shell.is_empty() {
                vec!["/bin/sh".to_owned(), "-c".to_owned()]
            } else {
                img.config.shell.clone()
            };
            out.push(s.clone());
            out
        }
    }
}

fn closest(word: &str, names: &[&str]) -> Option<String> {
    names
        .iter()
        .map(|n| (edit_distance(word, n), *n))
        .filter(|(d, n)| *d <= 2.max(n.len() / 3))
        .min()
        .map(|(_, n)| n.to_owned())
}

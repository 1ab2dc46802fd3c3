//! The typed layer (BuildKit's `frontend/dockerfile/instructions`): every
//! [`Node`] becomes an [`Instruction`] with its own struct, flags checked
//! against what the instruction accepts, argument counts checked.
//!
//! Values stay unexpanded: `$VAR`, quotes and escapes are kept exactly where
//! BuildKit keeps them for its later word expansion (ENV/LABEL values, ARG
//! defaults, COPY/ADD sources, FROM image, `--mount` fields, ...).

use serde::Serialize;

use crate::ast::{Directives, Heredoc, Node, Warning};
use crate::error::{ParseError, suggest};
use crate::grammar;
use crate::span::Span;

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
    /// Accepted but discouraged constructs (e.g. empty continuation lines).
    pub warnings: Vec<Warning>,
}

/// One instruction with its position in the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instruction {
    /// The whole instruction, including continuation lines and heredoc bodies.
    pub span: Span,
    /// The instruction name as written (`run`, `RUN`).
    pub keyword: String,
    /// The logical line: continuations joined, comment lines removed.
    pub original: String,
    pub kind: InstructionKind,
    /// BuildKit's parser-level view, for [`crate::dump`].
    #[serde(skip)]
    pub node: Node,
}

/// The instruction and its typed arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "instruction", rename_all = "snake_case")]
pub enum InstructionKind {
    From(From),
    Run(Run),
    Cmd(Cmd),
    Entrypoint(Entrypoint),
    Label(Label),
    Maintainer(Maintainer),
    Expose(Expose),
    Env(Env),
    Add(Add),
    Copy(Copy),
    Volume(Volume),
    User(User),
    Workdir(Workdir),
    Arg(Arg),
    Onbuild(Onbuild),
    Stopsignal(Stopsignal),
    Healthcheck(Healthcheck),
    Shell(Shell),
}

/// The shell form (one string, run by the SHELL) or the exec form (JSON array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct From {
    /// The image reference, unexpanded (may contain `$ARG`s).
    pub image: String,
    pub platform: Option<String>,
    /// The stage name after `AS`, lowercased (BuildKit does).
    pub alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    pub command: Command,
    pub mounts: Vec<Mount>,
    pub network: Option<NetworkMode>,
    pub security: Option<SecurityMode>,
    /// Heredocs in marker order; `RUN <<EOF` makes the first one the script.
    pub heredocs: Vec<Heredoc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    Default,
    None,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityMode {
    Sandbox,
    Insecure,
}

/// A `RUN --mount=...`. Field values are raw (unexpanded) strings; literal
/// values of `sharing`, `mode`, `uid`, `gid` and booleans are validated here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Mount {
    Bind(BindMount),
    Cache(CacheMount),
    Tmpfs(TmpfsMount),
    Secret(SecretMount),
    Ssh(SshMount),
    /// A mount whose `type` is a variable (`type=$MNT_TYPE`): typed by
    /// [`Mount::with_type`] once the frontend has expanded it, as `BuildKit`
    /// parses mounts again with the stage's variables.
    Unexpanded(UnexpandedMount),
}

/// A `--mount` value whose type is not known before expansion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnexpandedMount {
    /// The `type` value as written (`$MNT_TYPE`).
    pub ty: String,
    /// `from=`, which cannot hold a variable, for the stage dependencies.
    pub from: Option<String>,
    /// The whole `--mount` value (quotes already removed by the flag splitter).
    spec: String,
    span: Span,
}

impl Mount {
    /// Types an [`Mount::Unexpanded`] mount: `ty` is its expanded `type`; the
    /// other values stay raw, for the frontend to expand like any mount's.
    /// Any other mount is returned as it is.
    pub fn with_type(&self, ty: &str) -> Result<Mount, ParseError> {
        match self {
            Mount::Unexpanded(u) => parse_mount_typed(&u.spec, u.span, Some(ty)),
            m => Ok(m.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct BindMount {
    pub target: Option<String>,
    pub source: Option<String>,
    /// Stage or image to bind from (default: the build context).
    pub from: Option<String>,
    /// `rw`/`readwrite`: writes are allowed (and discarded). Default false.
    pub readwrite: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct CacheMount {
    pub target: Option<String>,
    pub id: Option<String>,
    /// `shared` (default), `private` or `locked`.
    pub sharing: Option<String>,
    pub from: Option<String>,
    pub source: Option<String>,
    /// `ro`/`readonly`. Default false.
    pub readonly: bool,
    /// Octal permission bits, as written (default `0755`).
    pub mode: Option<String>,
    pub uid: Option<String>,
    pub gid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct TmpfsMount {
    pub target: Option<String>,
    /// Size limit in bytes, as written.
    pub size: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct SecretMount {
    /// The secret id (`id=`, or `source=`/`src=`); default: basename of target.
    pub id: Option<String>,
    pub target: Option<String>,
    /// Expose the secret as this environment variable instead of (or as well as) a file.
    pub env: Option<String>,
    pub required: bool,
    /// Octal, as written (default `0400`).
    pub mode: Option<String>,
    pub uid: Option<String>,
    pub gid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct SshMount {
    /// The SSH agent id (default `default`).
    pub id: Option<String>,
    pub target: Option<String>,
    pub required: bool,
    /// Octal, as written (default `0600`).
    pub mode: Option<String>,
    pub uid: Option<String>,
    pub gid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cmd {
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entrypoint {
    pub command: Command,
}

/// A `key=value` pair, both raw (quotes kept, unexpanded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Label {
    pub pairs: Vec<KeyValue>,
    /// The legacy `LABEL key value` form (one pair, value is the rest of the line).
    pub legacy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Maintainer {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expose {
    /// `80`, `80/tcp`, `53/udp`, `$PORT`, ... as written.
    pub ports: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Env {
    pub pairs: Vec<KeyValue>,
    /// The legacy `ENV key value` form (one pair, value is the rest of the line).
    pub legacy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Add {
    /// Source paths/URLs, raw; heredoc sources are in `heredocs` instead.
    pub sources: Vec<String>,
    pub dest: String,
    /// Written as a JSON array (sources are then literal, not word-split).
    pub json: bool,
    pub heredocs: Vec<Heredoc>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub keep_git_dir: bool,
    pub checksum: Option<String>,
    pub exclude: Vec<String>,
    pub unpack: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copy {
    /// Source paths, raw; heredoc sources are in `heredocs` instead.
    pub sources: Vec<String>,
    pub dest: String,
    /// Written as a JSON array.
    pub json: bool,
    pub heredocs: Vec<Heredoc>,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    pub paths: Vec<String>,
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workdir {
    pub path: String,
}

/// One `ARG name[=default]`; the default is raw (quotes kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgDef {
    pub name: String,
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Arg {
    pub args: Vec<ArgDef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Onbuild {
    /// The trigger, parsed (never FROM, ONBUILD or MAINTAINER).
    pub trigger: Box<Instruction>,
    /// The trigger as text, as stored in the image config's `OnBuild` list
    /// (heredoc bodies appended the way BuildKit does).
    pub expression: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stopsignal {
    pub signal: String,
}

/// A Go duration: the text as written and its value in nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Duration {
    pub text: String,
    pub nanos: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    Cmd {
        command: Command,
        interval: Option<Duration>,
        timeout: Option<Duration>,
        start_period: Option<Duration>,
        start_interval: Option<Duration>,
        retries: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shell {
    pub shell: Vec<String>,
}

/// Every instruction name, for suggestions.
pub(crate) const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Bool,
    Str,
    Strings,
}

enum FlagValue {
    Bool(bool),
    Str(String),
    Strings(Vec<String>),
}

/// BuildKit's `BFlags`: the flags one instruction accepts, parsed.
struct Flags<'n> {
    node: &'n Node,
    values: Vec<(&'static str, FlagValue, Span)>,
}

impl<'n> Flags<'n> {
    fn parse(node: &'n Node, spec: &[(&'static str, FlagKind)]) -> Result<Self, ParseError> {
        let mut values: Vec<(&'static str, FlagValue, Span)> = Vec::new();
        let accepted = || {
            if spec.is_empty() {
                format!("{} accepts no flags", node.keyword.to_uppercase())
            } else {
                let names: Vec<String> = spec.iter().map(|(n, _)| format!("--{n}")).collect();
                format!(
                    "{} accepts: {}",
                    node.keyword.to_uppercase(),
                    names.join(", ")
                )
            }
        };
        for (i, flag) in node.flags.iter().enumerate() {
            let span = node.flag_spans.get(i).copied().unwrap_or(node.keyword_span);
            let body = flag.strip_prefix("--").unwrap_or(flag);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(spec_name, kind)) = spec.iter().find(|(n, _)| *n == name) else {
                let names: Vec<&str> = spec.iter().map(|(n, _)| *n).collect();
                let mut help = accepted();
                if let Some(s) = suggest(name, &names) {
                    help = format!("did you mean --{s}? {help}");
                }
                return Err(
                    ParseError::new(span, format!("unknown flag: --{name}")).with_help(help)
                );
            };
            let existing = values.iter_mut().find(|(n, _, _)| *n == spec_name);
            if existing.is_some() && kind != FlagKind::Strings {
                return Err(ParseError::new(
                    span,
                    format!("duplicate flag specified: --{name}"),
                ));
            }
            let missing = || {
                ParseError::new(span, format!("missing a value on flag: --{name}"))
                    .with_help(format!("write it as --{name}=VALUE"))
            };
            let parsed = match kind {
                FlagKind::Bool => match value.map(str::to_ascii_lowercase).as_deref() {
                    None | Some("true") => FlagValue::Bool(true),
                    Some("") => return Err(missing()),
                    Some("false") => FlagValue::Bool(false),
                    Some(_) => {
                        return Err(ParseError::new(
                            span,
                            format!(
                                "expecting boolean value for flag --{name}, not: {}",
                                value.unwrap_or_default()
                            ),
                        )
                        .with_help(format!("use --{name}, --{name}=true or --{name}=false")));
                    }
                },
                FlagKind::Str => FlagValue::Str(value.ok_or_else(missing)?.to_string()),
                FlagKind::Strings => {
                    let v = value.ok_or_else(missing)?.to_string();
                    if let Some((_, FlagValue::Strings(list), _)) = existing {
                        list.push(v);
                        continue;
                    }
                    FlagValue::Strings(vec![v])
                }
            };
            values.push((spec_name, parsed, span));
        }
        Ok(Self { node, values })
    }

    fn get(&self, name: &str) -> Option<&(&'static str, FlagValue, Span)> {
        self.values.iter().find(|(n, _, _)| *n == name)
    }

    fn string(&self, name: &str) -> Option<String> {
        match self.get(name) {
            Some((_, FlagValue::Str(s), _)) => Some(s.clone()),
            _ => None,
        }
    }

    fn boolean(&self, name: &str) -> Option<bool> {
        match self.get(name) {
            Some((_, FlagValue::Bool(b), _)) => Some(*b),
            _ => None,
        }
    }

    fn strings(&self, name: &str) -> Vec<(String, Span)> {
        match self.get(name) {
            Some((_, FlagValue::Strings(v), span)) => {
                // All values share the span of the first occurrence unless we
                // find the exact flag word.
                v.iter()
                    .map(|s| {
                        let exact = self
                            .node
                            .flags
                            .iter()
                            .position(|f| {
                                f.strip_prefix("--").and_then(|b| b.split_once('='))
                                    == Some((name, s))
                            })
                            .and_then(|i| self.node.flag_spans.get(i).copied());
                        (s.clone(), exact.unwrap_or(*span))
                    })
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    fn span(&self, name: &str) -> Option<Span> {
        self.get(name).map(|(_, _, s)| *s)
    }
}

fn args_error(node: &Node, message: impl Into<String>) -> ParseError {
    ParseError::new(node.args_span, message)
}

fn at_least_one(node: &Node) -> ParseError {
    args_error(
        node,
        format!(
            "{} requires at least one argument",
            node.keyword.to_uppercase()
        ),
    )
}

fn exactly_one(node: &Node) -> ParseError {
    args_error(
        node,
        format!(
            "{} requires exactly one argument",
            node.keyword.to_uppercase()
        ),
    )
}

fn command_of(node: &Node) -> Command {
    if node.json {
        Command::Exec(node.args.clone())
    } else {
        Command::Shell(node.args.first().cloned().unwrap_or_default())
    }
}

fn pairs_of(node: &Node) -> Result<(Vec<KeyValue>, bool), ParseError> {
    if node.args.is_empty() {
        let name = node.keyword.to_uppercase();
        return Err(at_least_one(node).with_help(format!("{name} <key>=<value> ...")));
    }
    let mut pairs = Vec::new();
    let mut legacy = false;
    for triple in node.args.chunks(3) {
        let [key, value, sep] = triple else {
            return Err(args_error(node, "bad key/value pairs"));
        };
        if key.is_empty() {
            return Err(args_error(
                node,
                format!("{} names can not be blank", node.keyword.to_uppercase()),
            ));
        }
        legacy |= sep.is_empty();
        pairs.push(KeyValue {
            key: key.clone(),
            value: value.clone(),
        });
    }
    Ok((pairs, legacy))
}

fn is_valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn parse_duration(flags: &Flags, name: &str) -> Result<Option<Duration>, ParseError> {
    let Some(text) = flags.string(name) else {
        return Ok(None);
    };
    let span = flags.span(name).unwrap_or_default();
    if text.is_empty() {
        return Ok(None);
    }
    let nanos = grammar::go_duration(&text).ok_or_else(|| {
        ParseError::new(span, format!("invalid duration {text:?} for --{name}"))
            .with_help("use a Go duration such as 30s, 1m30s or 500ms")
    })?;
    if nanos != 0 && nanos < 1_000_000 {
        return Err(ParseError::new(
            span,
            format!("Interval \"{name}\" cannot be less than 1ms"),
        ));
    }
    Ok(Some(Duration { text, nanos }))
}

fn parse_bool_value(key: &str, value: &str, span: Span) -> Result<bool, ParseError> {
    // Go's strconv.ParseBool.
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(ParseError::new(
            span,
            format!("invalid value for {key}: {value}"),
        )),
    }
}

const MOUNT_TYPES: &[&str] = &["bind", "cache", "tmpfs", "secret", "ssh"];

fn mount_keys(ty: &str) -> &'static [&'static str] {
    match ty {
        "bind" => &[
            "type",
            "target",
            "dst",
            "destination",
            "source",
            "src",
            "from",
            "readonly",
            "ro",
            "readwrite",
            "rw",
        ],
        "cache" => &[
            "type",
            "target",
            "dst",
            "destination",
            "id",
            "sharing",
            "from",
            "source",
            "src",
            "readonly",
            "ro",
            "readwrite",
            "rw",
            "mode",
            "uid",
            "gid",
        ],
        "tmpfs" => &[
            "type",
            "target",
            "dst",
            "destination",
            "size",
            "readonly",
            "ro",
            "readwrite",
            "rw",
        ],
        "secret" => &[
            "type",
            "id",
            "source",
            "src",
            "target",
            "dst",
            "destination",
            "env",
            "required",
            "mode",
            "uid",
            "gid",
            "readonly",
            "ro",
            "readwrite",
            "rw",
        ],
        _ => &[
            "type",
            "id",
            "target",
            "dst",
            "destination",
            "required",
            "mode",
            "uid",
            "gid",
            "readonly",
            "ro",
            "readwrite",
            "rw",
        ],
    }
}

/// BuildKit's `parseMount` for one `--mount` value (quotes already removed by
/// the flag splitter), typed per mount type; with a variable as the type,
/// kept for [`Mount::with_type`].
fn parse_mount(value: &str, span: Span) -> Result<Mount, ParseError> {
    parse_mount_typed(value, span, None)
}

/// [`parse_mount`], with `ty_override` (the expanded type) for the `type` value.
fn parse_mount_typed(
    value: &str,
    span: Span,
    ty_override: Option<&str>,
) -> Result<Mount, ParseError> {
    let err = |msg: String| ParseError::new(span, msg);
    let fields = if value.is_empty() {
        None
    } else {
        grammar::csv_fields(value)
    }
    .ok_or_else(|| {
        err(format!("failed to parse csv mounts: {value:?}"))
            .with_help("write --mount=type=TYPE,key=value,... (quote a field containing commas)")
    })?;
    let mut kv: Vec<(String, Option<String>, &str)> = Vec::new();
    for field in &fields {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v.to_string())),
            None => (field.to_ascii_lowercase(), None),
        };
        kv.push((k, v, field.as_str()));
    }
    let raw_ty = kv
        .iter()
        .rev()
        .find(|(k, _, _)| k == "type")
        .and_then(|(_, v, _)| v.clone());
    if ty_override.is_none() {
        if let Some(t) = raw_ty.as_ref().filter(|t| t.contains('$')) {
            let mut from = None;
            for (k, v, _) in &kv {
                if k == "from" {
                    if v.as_ref().is_some_and(|v| v.contains('$')) {
                        return Err(err(format!(
                            "'{k}' doesn't support variable expansion, define alias stage instead"
                        )));
                    }
                    from.clone_from(v);
                }
            }
            return Ok(Mount::Unexpanded(UnexpandedMount {
                ty: t.clone(),
                from,
                spec: value.to_owned(),
                span,
            }));
        }
    }
    let ty = ty_override
        .map(str::to_owned)
        .or(raw_ty)
        .unwrap_or_else(|| "bind".to_string())
        .to_ascii_lowercase();
    if !MOUNT_TYPES.contains(&ty.as_str()) {
        let mut e = err(format!("unsupported mount type {ty:?}"));
        e = e.with_help(match suggest(&ty, MOUNT_TYPES) {
            Some(s) => format!("did you mean {s}? mount types: {}", MOUNT_TYPES.join(", ")),
            None => format!("mount types: {}", MOUNT_TYPES.join(", ")),
        });
        return Err(e);
    }
    let allowed = mount_keys(&ty);
    let mut target = None;
    let mut source = None;
    let mut from = None;
    let mut id = None;
    let mut sharing = None;
    let mut readonly = None;
    let mut mode = None;
    let mut uid = None;
    let mut gid = None;
    let mut size = None;
    let mut env = None;
    let mut required = false;
    for (key, value, field) in kv {
        if !allowed.contains(&key.as_str()) {
            let mut all: Vec<&str> = allowed.to_vec();
            all.retain(|k| *k != "type");
            let mut help = format!("keys for type={ty}: {}", all.join(", "));
            if let Some(s) = suggest(&key, &all) {
                help = format!("did you mean {s}? {help}");
            }
            return Err(
                err(format!("unexpected key '{key}' for mount type '{ty}'")).with_help(help)
            );
        }
        let literal = |v: &str| !v.contains('$');
        let Some(value) = value else {
            match key.as_str() {
                "readonly" | "ro" => readonly = Some(true),
                "readwrite" | "rw" => readonly = Some(false),
                "required" => required = true,
                _ => {
                    return Err(err(format!(
                        "invalid field '{field}' must be a key=value pair"
                    )));
                }
            }
            continue;
        };
        match key.as_str() {
            "type" => {}
            "target" | "dst" | "destination" => target = Some(value),
            "source" | "src" => source = Some(value),
            "from" => {
                if value.contains('$') {
                    return Err(err(format!(
                        "'{key}' doesn't support variable expansion, define alias stage instead"
                    )));
                }
                from = Some(value);
            }
            "id" => id = Some(value),
            "sharing" => {
                let lower = value.to_ascii_lowercase();
                if literal(&value) && !matches!(lower.as_str(), "shared" | "private" | "locked") {
                    return Err(err(format!("unsupported sharing value {value:?}"))
                        .with_help("sharing is one of shared, private, locked"));
                }
                sharing = Some(if literal(&value) { lower } else { value });
            }
            "readonly" | "ro" => readonly = Some(parse_bool_value(&key, &value, span)?),
            "readwrite" | "rw" => readonly = Some(!parse_bool_value(&key, &value, span)?),
            "required" => required = parse_bool_value(&key, &value, span)?,
            "mode" => {
                if literal(&value) && u32::from_str_radix(&value, 8).is_err() {
                    return Err(err(format!("invalid value {value} for mode"))
                        .with_help("mode is octal, e.g. mode=0755"));
                }
                mode = Some(value);
            }
            "uid" | "gid" => {
                if literal(&value) && value.parse::<u32>().is_err() {
                    return Err(err(format!("invalid value {value} for {key}")));
                }
                if key == "uid" {
                    uid = Some(value);
                } else {
                    gid = Some(value);
                }
            }
            "size" => size = Some(value),
            "env" => env = Some(value),
            _ => unreachable!("key {key} is in the allowed list"),
        }
    }
    Ok(match ty.as_str() {
        "bind" => Mount::Bind(BindMount {
            target,
            source,
            from,
            readwrite: readonly == Some(false),
        }),
        "cache" => Mount::Cache(CacheMount {
            target,
            id,
            sharing,
            from,
            source,
            readonly: readonly == Some(true),
            mode,
            uid,
            gid,
        }),
        "tmpfs" => Mount::Tmpfs(TmpfsMount { target, size }),
        "secret" => {
            if source.is_some() && id.is_some() {
                return Err(err("both source and id can't be set".to_string()));
            }
            let id = id.or(source);
            if id.is_none() && target.is_none() && env.is_none() {
                return Err(
                    err("invalid secret mount. one of source, target required".to_string())
                        .with_help(
                            "e.g. --mount=type=secret,id=mytoken,target=/run/secrets/mytoken",
                        ),
                );
            }
            Mount::Secret(SecretMount {
                id,
                target,
                env,
                required,
                mode,
                uid,
                gid,
            })
        }
        _ => Mount::Ssh(SshMount {
            id,
            target,
            required,
            mode,
            uid,
            gid,
        }),
    })
}

fn sources_and_dest(node: &Node) -> Result<(Vec<String>, String, Vec<Heredoc>), ParseError> {
    let name = node.keyword.to_uppercase();
    if node.args.len() < 2 {
        return Err(args_error(
            node,
            format!(
                "{name} requires at least two arguments, but only {} provided. Destination could not be determined",
                if node.args.is_empty() { "none was" } else { "one was" }
            ),
        )
        .with_help(format!("{name} <src>... <dest>")));
    }
    let (dest, srcs) = node.args.split_last().expect("two or more arguments");
    if !node.json && grammar::heredoc_marker(dest).is_some() {
        return Err(args_error(
            node,
            format!("{name} cannot accept a heredoc as a destination"),
        ));
    }
    let mut sources = Vec::new();
    let mut heredocs = Vec::new();
    for src in srcs {
        let marker = (!node.json)
            .then(|| grammar::heredoc_marker(src))
            .flatten()
            .and_then(|m| grammar::heredoc_name(m.word));
        match marker.and_then(|(n, _)| node.heredocs.iter().find(|h| h.name == n)) {
            Some(h) => heredocs.push(h.clone()),
            None => sources.push(src.clone()),
        }
    }
    Ok((sources, dest.clone(), heredocs))
}

/// Converts one parser-level node into a typed instruction.
pub(crate) fn instruction(node: &Node) -> Result<Instruction, ParseError> {
    let lower = node.keyword.to_lowercase();
    let no_flags = |n: &Node| Flags::parse(n, &[]).map(|_| ());
    let kind = match lower.as_str() {
        "from" => {
            let flags = Flags::parse(node, &[("platform", FlagKind::Str)])?;
            let alias = match node.args.as_slice() {
                [_] => None,
                [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                    let lower = name.to_lowercase();
                    if !is_valid_stage_name(&lower) {
                        return Err(args_error(
                            node,
                            format!(
                                "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
                            ),
                        )
                        .with_help("stage names match [a-z][a-z0-9-_.]*"));
                    }
                    Some(lower)
                }
                [] => return Err(at_least_one(node).with_help("FROM <image> [AS <name>]")),
                _ => {
                    return Err(
                        args_error(node, "FROM requires either one or three arguments")
                            .with_help("FROM [--platform=<platform>] <image> [AS <name>]"),
                    );
                }
            };
            InstructionKind::From(From {
                image: node.args[0].clone(),
                platform: flags.string("platform"),
                alias,
            })
        }
        "run" => {
            let flags = Flags::parse(
                node,
                &[
                    ("mount", FlagKind::Strings),
                    ("network", FlagKind::Str),
                    ("security", FlagKind::Str),
                ],
            )?;
            let mounts = flags
                .strings("mount")
                .iter()
                .map(|(v, span)| parse_mount(v, *span))
                .collect::<Result<Vec<_>, _>>()?;
            let network = match flags.string("network").as_deref() {
                None => None,
                Some("default") => Some(NetworkMode::Default),
                Some("none") => Some(NetworkMode::None),
                Some("host") => Some(NetworkMode::Host),
                Some(other) => {
                    return Err(ParseError::new(
                        flags.span("network").unwrap_or_default(),
                        format!("unsupported network mode {other:?}"),
                    )
                    .with_help("--network is one of default, none, host"));
                }
            };
            let security = match flags.string("security").as_deref() {
                None => None,
                Some("sandbox") => Some(SecurityMode::Sandbox),
                Some("insecure") => Some(SecurityMode::Insecure),
                Some(other) => {
                    return Err(ParseError::new(
                        flags.span("security").unwrap_or_default(),
                        format!("unsupported security mode {other:?}"),
                    )
                    .with_help("--security is one of sandbox, insecure"));
                }
            };
            InstructionKind::Run(Run {
                command: command_of(node),
                mounts,
                network,
                security,
                heredocs: node.heredocs.clone(),
            })
        }
        "cmd" => {
            no_flags(node)?;
            InstructionKind::Cmd(Cmd {
                command: command_of(node),
            })
        }
        "entrypoint" => {
            no_flags(node)?;
            InstructionKind::Entrypoint(Entrypoint {
                command: command_of(node),
            })
        }
        "label" => {
            no_flags(node)?;
            let (pairs, legacy) = pairs_of(node)?;
            InstructionKind::Label(Label { pairs, legacy })
        }
        "env" => {
            no_flags(node)?;
            let (pairs, legacy) = pairs_of(node)?;
            InstructionKind::Env(Env { pairs, legacy })
        }
        "maintainer" => {
            no_flags(node)?;
            let [name] = node.args.as_slice() else {
                return Err(exactly_one(node));
            };
            InstructionKind::Maintainer(Maintainer { name: name.clone() })
        }
        "expose" => {
            no_flags(node)?;
            if node.args.is_empty() {
                return Err(at_least_one(node).with_help("EXPOSE <port>[/<protocol>]..."));
            }
            InstructionKind::Expose(Expose {
                ports: node.args.clone(),
            })
        }
        "add" => {
            let flags = Flags::parse(
                node,
                &[
                    ("chown", FlagKind::Str),
                    ("chmod", FlagKind::Str),
                    ("link", FlagKind::Bool),
                    ("keep-git-dir", FlagKind::Bool),
                    ("checksum", FlagKind::Str),
                    ("exclude", FlagKind::Strings),
                    ("unpack", FlagKind::Bool),
                ],
            )?;
            let (sources, dest, heredocs) = sources_and_dest(node)?;
            InstructionKind::Add(Add {
                sources,
                dest,
                json: node.json,
                heredocs,
                chown: flags.string("chown"),
                chmod: flags.string("chmod"),
                link: flags.boolean("link").unwrap_or(false),
                keep_git_dir: flags.boolean("keep-git-dir").unwrap_or(false),
                checksum: flags.string("checksum"),
                exclude: flags
                    .strings("exclude")
                    .into_iter()
                    .map(|(v, _)| v)
                    .collect(),
                unpack: flags.boolean("unpack"),
            })
        }
        "copy" => {
            let flags = Flags::parse(
                node,
                &[
                    ("from", FlagKind::Str),
                    ("chown", FlagKind::Str),
                    ("chmod", FlagKind::Str),
                    ("link", FlagKind::Bool),
                    ("parents", FlagKind::Bool),
                    ("exclude", FlagKind::Strings),
                ],
            )?;
            let (sources, dest, heredocs) = sources_and_dest(node)?;
            InstructionKind::Copy(Copy {
                sources,
                dest,
                json: node.json,
                heredocs,
                from: flags.string("from"),
                chown: flags.string("chown"),
                chmod: flags.string("chmod"),
                link: flags.boolean("link").unwrap_or(false),
                parents: flags.boolean("parents").unwrap_or(false),
                exclude: flags
                    .strings("exclude")
                    .into_iter()
                    .map(|(v, _)| v)
                    .collect(),
            })
        }
        "volume" => {
            no_flags(node)?;
            if node.args.is_empty() {
                return Err(at_least_one(node));
            }
            let mut paths = Vec::new();
            for v in &node.args {
                let v = v.trim();
                if v.is_empty() {
                    return Err(args_error(
                        node,
                        "VOLUME specified can not be an empty string",
                    ));
                }
                paths.push(v.to_string());
            }
            InstructionKind::Volume(Volume {
                paths,
                json: node.json,
            })
        }
        "user" => {
            no_flags(node)?;
            let [user] = node.args.as_slice() else {
                return Err(exactly_one(node).with_help("USER <user>[:<group>]"));
            };
            InstructionKind::User(User { user: user.clone() })
        }
        "workdir" => {
            no_flags(node)?;
            let [path] = node.args.as_slice() else {
                return Err(exactly_one(node).with_help("WORKDIR <path>"));
            };
            InstructionKind::Workdir(Workdir { path: path.clone() })
        }
        "arg" => {
            no_flags(node)?;
            if node.args.is_empty() {
                return Err(at_least_one(node).with_help("ARG <name>[=<default>]..."));
            }
            let mut args = Vec::new();
            for word in &node.args {
                let (name, default) = match word.split_once('=') {
                    Some((n, d)) => (n, Some(d.to_string())),
                    None => (word.as_str(), None),
                };
                if name.is_empty() {
                    return Err(args_error(node, "ARG names can not be blank"));
                }
                args.push(ArgDef {
                    name: name.to_string(),
                    default,
                });
            }
            InstructionKind::Arg(Arg { args })
        }
        "onbuild" => {
            no_flags(node)?;
            let Some(child) = &node.child else {
                return Err(at_least_one(node).with_help("ONBUILD <instruction>"));
            };
            let trigger = child.keyword.to_uppercase();
            match trigger.as_str() {
                "ONBUILD" => {
                    return Err(ParseError::new(
                        child.keyword_span,
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                    ));
                }
                "MAINTAINER" | "FROM" => {
                    return Err(ParseError::new(
                        child.keyword_span,
                        format!("{trigger} isn't allowed as an ONBUILD trigger"),
                    ));
                }
                _ => {}
            }
            let mut child = (**child).clone();
            child.heredocs.clone_from(&node.heredocs);
            let mut expression = child.original.trim_start().to_string();
            for h in &node.heredocs {
                expression.push('\n');
                expression.push_str(&h.content);
                expression.push_str(&h.name);
            }
            let mut trigger = instruction(&child)?;
            trigger.span = child.span;
            InstructionKind::Onbuild(Onbuild {
                trigger: Box::new(trigger),
                expression,
            })
        }
        "stopsignal" => {
            no_flags(node)?;
            let [signal] = node.args.as_slice() else {
                return Err(exactly_one(node).with_help("STOPSIGNAL <signal>, e.g. SIGTERM"));
            };
            InstructionKind::Stopsignal(Stopsignal {
                signal: signal.clone(),
            })
        }
        "healthcheck" => {
            let Some(ty) = node.args.first() else {
                return Err(at_least_one(node)
                    .with_help("HEALTHCHECK [options] CMD <command>, or HEALTHCHECK NONE"));
            };
            let rest = &node.args[1..];
            match ty.to_uppercase().as_str() {
                "NONE" => {
                    if !rest.is_empty() {
                        return Err(args_error(node, "HEALTHCHECK NONE takes no arguments"));
                    }
                    InstructionKind::Healthcheck(Healthcheck::None)
                }
                "CMD" => {
                    let flags = Flags::parse(
                        node,
                        &[
                            ("interval", FlagKind::Str),
                            ("timeout", FlagKind::Str),
                            ("start-period", FlagKind::Str),
                            ("start-interval", FlagKind::Str),
                            ("retries", FlagKind::Str),
                        ],
                    )?;
                    if rest.is_empty() || (!node.json && rest[0].is_empty()) {
                        return Err(args_error(node, "Missing command after HEALTHCHECK CMD"));
                    }
                    let command = if node.json {
                        Command::Exec(rest.to_vec())
                    } else {
                        Command::Shell(rest[0].clone())
                    };
                    let retries = match flags.string("retries") {
                        None => None,
                        Some(s) if s.is_empty() => None,
                        Some(s) => {
                            let span = flags.span("retries").unwrap_or_default();
                            let n: i64 = s
                                .parse()
                                .ok()
                                .filter(|n| i32::try_from(*n).is_ok())
                                .ok_or_else(|| {
                                    ParseError::new(
                                        span,
                                        format!("invalid value {s:?} for --retries"),
                                    )
                                })?;
                            Some(u32::try_from(n).map_err(|_| {
                                ParseError::new(span, format!("--retries cannot be negative ({n})"))
                            })?)
                        }
                    };
                    InstructionKind::Healthcheck(Healthcheck::Cmd {
                        command,
                        interval: parse_duration(&flags, "interval")?,
                        timeout: parse_duration(&flags, "timeout")?,
                        start_period: parse_duration(&flags, "start-period")?,
                        start_interval: parse_duration(&flags, "start-interval")?,
                        retries,
                    })
                }
                other => {
                    return Err(args_error(
                        node,
                        format!("Unknown type {other:?} in HEALTHCHECK (try CMD)"),
                    )
                    .with_help("HEALTHCHECK [options] CMD <command>, or HEALTHCHECK NONE"));
                }
            }
        }
        "shell" => {
            no_flags(node)?;
            if node.args.is_empty() {
                return Err(at_least_one(node));
            }
            if !node.json {
                return Err(
                    args_error(node, "SHELL requires the arguments to be in JSON form").with_help(
                        r#"SHELL ["executable", "parameters"], e.g. SHELL ["/bin/bash", "-c"]"#,
                    ),
                );
            }
            InstructionKind::Shell(Shell {
                shell: node.args.clone(),
            })
        }
        _ => {
            let mut e = ParseError::new(
                node.keyword_span,
                format!("unknown instruction: {}", node.keyword),
            );
            if node.keyword.is_empty() {
                e.message = "empty instruction".to_string();
            } else if let Some(s) = suggest(&node.keyword, INSTRUCTIONS) {
                e = e.with_help(format!("did you mean {s}?"));
            } else {
                e = e.with_help(format!("instructions are: {}", INSTRUCTIONS.join(", ")));
            }
            return Err(e);
        }
    };
    Ok(Instruction {
        span: node.span,
        keyword: node.keyword.clone(),
        original: node.original.clone(),
        kind,
        node: node.clone(),
    })
}

//! `BuildKit`'s 22 build checks, invoked where `BuildKit` invokes them:
//! `instructions.Parse` (per instruction, all of the file), `toDispatchState`
//! (stage names, casing, default ARGs in FROM, FROM's arguments and platform) and
//! `dispatch` (per instruction of the stages that are dispatched: all of them in
//! check mode, those the target reaches in a build).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use rbuild_parser::shell::Lexer;
use rbuild_parser::{
    Command, Dockerfile, Healthcheck, Instruction, InstructionKind, Span, go_quote,
};
use rbuild_patterns::PatternMatcher;

use super::config::{CheckConfig, check_directive, is_directive_line};
use super::{LintFailure, LintOptions, LintReport, Sink, suggest_search, violation};
use crate::scope::{self, ArgValue, arg_value};

/// Args that never reach the environment (`nonEnvArgs`).
const NON_ENV_ARGS: &[&str] = &["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An ordered environment (`llb.EnvList`): a later set replaces in place.
#[derive(Debug, Clone, Default)]
struct EnvList(scope::Vars);

impl EnvList {
    fn set(&mut self, k: &str, v: &str) {
        scope::set_in_place(&mut self.0, k, v);
    }
    fn get(&self, k: &str) -> Option<&str> {
        scope::get(&self.0, k)
    }
    fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

/// The comments right above each instruction (`Node.PrevComment`), by start line:
/// comment lines since the previous instruction, a bare `#` clearing them, parser
/// directives left out.
pub(crate) fn prev_comments(src: &str, df: &Dockerfile) -> HashMap<usize, Vec<String>> {
    let ranges: HashMap<usize, usize> = df
        .instructions
        .iter()
        .map(|i| (i.span.start_line, i.span.end_line.max(i.span.start_line)))
        .collect();
    let body = src.strip_prefix('\u{feff}').unwrap_or(src);
    let mut out = HashMap::new();
    let mut comments: Vec<String> = Vec::new();
    let mut directives_done = false;
    let mut skip_to = 0;
    for (idx, raw) in body.split('\n').enumerate() {
        let line_no = idx + 1;
        if line_no <= skip_to {
            continue;
        }
        if let Some(&end) = ranges.get(&line_no) {
            out.insert(line_no, std::mem::take(&mut comments));
            skip_to = end;
            directives_done = true;
            continue;
        }
        let t = raw.trim_end_matches(['\r', '\n']).trim_start();
        if let Some(c) = t.strip_prefix('#') {
            let c = c.trim();
            if c.is_empty() {
                comments.clear();
            } else {
                comments.push(c.to_owned());
            }
        }
        if !directives_done {
            if is_directive_line(t) {
                comments.pop();
            } else {
                directives_done = true;
            }
        }
    }
    out
}

struct Stage<'a> {
    from: &'a Instruction,
    /// Lowercased `AS` name.
    name: Option<String>,
    image: &'a str,
    platform: Option<&'a str>,
    commands: Vec<&'a Instruction>,
    comments: Vec<String>,
    /// The earlier stage this one is based on (after FROM's expansion).
    base: Option<usize>,
    /// FROM's image name after the meta ARGs' expansion.
    base_name: Option<String>,
    /// FROM's `--platform` after the meta ARGs' expansion.
    platform_value: Option<String>,
}

#[derive(Clone, Default)]
struct StageState {
    env: EnvList,
    build_args: Vec<String>,
    workdir_set: bool,
    shell_set: bool,
    cmd: Option<Span>,
    entrypoint: Option<Span>,
    healthcheck: Option<Span>,
}

struct Ctx<'a> {
    opts: &'a LintOptions<'a>,
    cfg: CheckConfig,
    comments: HashMap<usize, Vec<String>>,
    lexer: Lexer,
    sink: Sink,
    ignore: Option<PatternMatcher>,
    /// Base images [`LintOptions::base_image`] did not know.
    unresolved_bases: usize,
    /// The image at the bottom of the target's stage chain.
    final_base: Option<String>,
}

fn build_err(message: String, span: &Span) -> LintFailure {
    LintFailure::Build {
        message,
        line: span.start_line,
    }
}

/// The check configuration: the `BUILDKIT_DOCKERFILE_CHECK` build arg replaces the
/// `# check=` directive.
fn check_config(src: &str, opts: &LintOptions<'_>) -> Result<CheckConfig, LintFailure> {
    let raw = opts
        .build_args
        .get("BUILDKIT_DOCKERFILE_CHECK")
        .cloned()
        .or_else(|| check_directive(src));
    match raw.as_deref().map(CheckConfig::parse) {
        None => Ok(CheckConfig::default()),
        Some(Ok(c)) => Ok(c),
        Some(Err(e)) => Err(LintFailure::Build {
            message: format!("failed to parse check options: {e}"),
            line: 0,
        }),
    }
}

pub(super) fn run(src: &str, df: &Dockerfile, opts: &LintOptions<'_>) -> LintReport {
    let mut report = LintReport::default();
    let cfg = match check_config(src, opts) {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    let ignore = opts
        .dockerignore
        .filter(|p| !p.is_empty())
        .and_then(|p| PatternMatcher::new(p.iter()).ok());
    let mut ctx = Ctx {
        opts,
        cfg: cfg.clone(),
        comments: prev_comments(src, df),
        lexer: Lexer::new(df.directives.escape),
        sink: Sink::default(),
        ignore,
        unresolved_bases: 0,
        final_base: None,
    };
    let result = ctx.walk(df);
    report.warnings = std::mem::take(&mut ctx.sink.warnings);
    report.error = match result {
        Err(e) => Some(e),
        Ok(()) if cfg.error && !ctx.sink.called.is_empty() => {
            Some(violation(&ctx.sink.called, &report.warnings))
        }
        Ok(()) => None,
    };
    report.config = cfg;
    report.unresolved_bases = ctx.unresolved_bases;
    report.final_base = ctx.final_base;
    report
}

impl Ctx<'_> {
    fn comments_of(&self, ins: &Instruction) -> &[String] {
        self.comments
            .get(&ins.span.start_line)
            .map_or(&[], Vec::as_slice)
    }

    fn cfg_for(&self, ins: &Instruction) -> CheckConfig {
        self.cfg.with_comments(self.comments_of(ins))
    }

    fn warn(&mut self, cfg: &CheckConfig, rule: &str, span: &Span, msg: String) {
        self.sink.run(cfg, rule, Some(span), msg);
    }

    #[allow(clippy::too_many_lines)]
    fn walk(&mut self, df: &Dockerfile) -> Result<(), LintFailure> {
        self.empty_continuations(&df.warnings);
        self.parse_level(&df.instructions);
        // Stages and the meta ARGs before the first FROM.
        let mut meta_args = Vec::new();
        let mut stages: Vec<Stage<'_>> = Vec::new();
        for ins in &df.instructions {
            match &ins.kind {
                InstructionKind::From(f) => stages.push(Stage {
                    from: ins,
                    name: f.alias.clone(),
                    image: &f.image,
                    platform: f.platform.as_deref(),
                    commands: Vec::new(),
                    comments: self.comments_of(ins).to_vec(),
                    base: None,
                    base_name: None,
                    platform_value: None,
                }),
                _ => match stages.last_mut() {
                    Some(st) => st.commands.push(ins),
                    None => {
                        if let InstructionKind::Arg(a) = &ins.kind {
                            meta_args.push((ins, a));
                        }
                    }
                },
            }
        }
        if stages.is_empty() {
            return Ok(());
        }
        let file_cfg = self.cfg.clone();
        // validateStageNames
        let mut names = BTreeSet::new();
        for st in &stages {
            if let Some(n) = &st.name {
                if n == "context" || n == "scratch" {
                    self.warn(
                        &file_cfg,
                        "ReservedStageName",
                        &st.from.span,
                        format!(
                            "Stage name should not use the same name as reserved stage {}",
                            go_quote(n)
                        ),
                    );
                }
                if !names.insert(n.clone()) {
                    self.warn(
                        &file_cfg,
                        "DuplicateStageName",
                        &st.from.span,
                        format!(
                            "Duplicate stage name {}, stage names should be unique",
                            go_quote(n)
                        ),
                    );
                }
            }
        }
        // validateCommandCasing (instructions inside stages only)
        let consistent = |s: &str| s == s.to_lowercase() || s == s.to_uppercase();
        let (mut lower, mut upper) = (0, 0);
        for st in &stages {
            for kw in
                std::iter::once(&st.from.keyword).chain(st.commands.iter().map(|c| &c.keyword))
            {
                if consistent(kw) {
                    if *kw == kw.to_lowercase() {
                        lower += 1;
                    } else {
                        upper += 1;
                    }
                }
            }
        }
        let majority_lower = lower > upper;
        for st in &stages {
            for ins in std::iter::once(st.from).chain(st.commands.iter().copied()) {
                let kw = &ins.keyword;
                let casing = if majority_lower && kw.to_lowercase() != *kw {
                    "lowercase"
                } else if !majority_lower && kw.to_uppercase() != *kw {
                    "uppercase"
                } else {
                    continue;
                };
                self.warn(
                    &file_cfg,
                    "ConsistentInstructionCasing",
                    &ins.span,
                    format!(
                        "Command '{kw}' should match the case of the command majority ({casing})"
                    ),
                );
            }
        }

        // Global args: the predefined platform args (build args override them).
        let target_name = self
            .opts
            .target
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .or_else(|| stages.last().and_then(|s| s.name.clone()))
            .unwrap_or_else(|| "default".into());
        let bp = self.opts.build_platform;
        let tp = self.opts.platform;
        let mut defaults = EnvList::default();
        let mut predefined = scope::platform_args(bp, tp, true);
        predefined.push(("TARGETSTAGE", target_name));
        for (k, v) in predefined {
            let v = self.opts.build_args.get(k).cloned().unwrap_or(v);
            defaults.set(k, &v);
        }
        // validateBaseImagesWithDefaultArgs: defaults only, no build args.
        if let Ok((args, _)) = self.meta_args(&defaults, &meta_args, None) {
            for st in &stages {
                let Ok(r) = self.lexer.process_word(st.image, &args.0) else {
                    break;
                };
                if rbuild_oci::Reference::parse(&r.result).is_err() && r.result != "scratch" {
                    self.warn(
                        &file_cfg,
                        "InvalidDefaultArgInFrom",
                        &st.from.span,
                        format!(
                            "Default value for ARG {} results in empty or invalid base image name",
                            st.image
                        ),
                    );
                }
            }
        }
        let (global, all_args) =
            self.meta_args(&defaults, &meta_args, Some(self.opts.build_args))?;
        let mut arg_keys: Vec<String> = all_args.iter().cloned().collect();
        arg_keys.extend(global.keys().map(str::to_owned));
        arg_keys.sort();
        arg_keys.dedup();

        // buildDispatchStates
        let mut first_err = None;
        for i in 0..stages.len() {
            let cfg = file_cfg.with_comments(&stages[i].comments);
            let span = stages[i].from.span;
            let m = self.lexer.process_word(stages[i].image, &global.0);
            if let Ok(m) = &m {
                self.unused_from_args(&cfg, &arg_keys, &m.unmatched, &span);
            }
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    first_err.get_or_insert(build_err(e.to_string(), &span));
                    break;
                }
            };
            if m.result.is_empty() {
                first_err.get_or_insert(build_err(
                    format!("base name ({}) should not be blank", stages[i].image),
                    &span,
                ));
                break;
            }
            let base_name = m.result.to_lowercase();
            stages[i].base = stages[..i]
                .iter()
                .position(|s| s.name.as_deref() == Some(base_name.as_str()));
            stages[i].base_name = Some(m.result.clone());
            if let Some(p) = stages[i].platform {
                let pm = match self.lexer.process_word(p, &global.0) {
                    Ok(pm) => pm,
                    Err(e) => {
                        first_err.get_or_insert(build_err(e.to_string(), &span));
                        break;
                    }
                };
                self.unused_from_args(&cfg, &arg_keys, &pm.unmatched, &span);
                stages[i].platform_value = Some(pm.result.clone());
                if pm.matched.len() == 1
                    && pm.unmatched.is_empty()
                    && pm.matched.contains("TARGETPLATFORM")
                    && global.get("TARGETPLATFORM") == Some(pm.result.as_str())
                {
                    self.warn(
                        &cfg,
                        "RedundantTargetPlatform",
                        &span,
                        format!(
                            "Setting platform to predefined {p} in FROM is redundant as this is the default behavior"
                        ),
                    );
                }
                if pm.matched.is_empty()
                    && pm.unmatched.is_empty()
                    && let Some(plat) = rbuild_oci::Platform::parse(&pm.result)
                {
                    let name = stages[i].name.clone().unwrap_or_default();
                    if !name.contains(&plat.os) && !name.contains(&plat.architecture) {
                        self.warn(
                            &cfg,
                            "FromPlatformFlagConstDisallowed",
                            &span,
                            format!(
                                "FROM --platform flag should not use constant value {}",
                                go_quote(&pm.result)
                            ),
                        );
                    }
                }
                if pm.result.is_empty() {
                    let mut msg = format!("empty platform value from expression {p}");
                    let keys: Vec<&str> = global.keys().collect();
                    if let Some(s) = pm
                        .unmatched
                        .iter()
                        .find_map(|u| suggest_search(u, keys.iter().copied()))
                    {
                        let _ = write!(msg, " (did you mean {s}?)");
                    }
                    first_err.get_or_insert(build_err(msg, &span));
                    break;
                }
                if let Some(e) = platform_error(&pm.result) {
                    let mut msg = format!("failed to parse platform {p}: {e}");
                    let keys: Vec<&str> = global.keys().collect();
                    if let Some(s) = pm
                        .unmatched
                        .iter()
                        .find_map(|u| suggest_search(u, keys.iter().copied()))
                    {
                        let _ = write!(msg, " (did you mean {s}?)");
                    }
                    first_err.get_or_insert(build_err(msg, &span));
                    break;
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }

        // Which stages are dispatched.
        let target = match self.opts.target.filter(|t| !t.is_empty()) {
            None => stages.len() - 1,
            Some(t) => {
                let t = t.to_lowercase();
                stages
                    .iter()
                    .position(|s| s.name.as_deref() == Some(t.as_str()))
                    .ok_or_else(|| LintFailure::Build {
                        message: format!("target stage {} could not be found", go_quote(&t)),
                        line: 0,
                    })?
            }
        };
        let reachable = reachable_stages(&stages, target);
        let mut bottom = target;
        for _ in 0..stages.len() {
            match stages[bottom].base {
                Some(b) => bottom = b,
                None => break,
            }
        }
        self.final_base = stages[bottom].base_name.clone().filter(|n| n != "scratch");

        // resolveBaseImage: the base images' configs, and their platforms checked.
        let mut bases: Vec<Option<rbuild_oci::ImageConfig>> = vec![None; stages.len()];
        for (i, st) in stages.iter().enumerate() {
            if !self.opts.all_stages && !reachable.contains(&i) {
                continue;
            }
            let Some(name) = st.base_name.as_deref() else {
                continue;
            };
            if st.base.is_some() || name == "scratch" {
                continue;
            }
            bases[i] = (self.opts.base_image)(name);
            match &bases[i] {
                Some(img) => {
                    let expected = st
                        .platform_value
                        .as_deref()
                        .and_then(rbuild_oci::Platform::parse)
                        .unwrap_or_else(|| self.opts.platform.clone());
                    self.base_platform(&file_cfg, name, &expected, img, &st.from.span);
                }
                None => self.unresolved_bases += 1,
            }
        }

        // dispatch
        let mut finals: Vec<Option<StageState>> = vec![None; stages.len()];
        for i in 0..stages.len() {
            if !self.opts.all_stages && !reachable.contains(&i) {
                continue;
            }
            let mut st = if let Some(b) = stages[i].base.and_then(|b| finals[b].clone()) {
                StageState {
                    cmd: None,
                    entrypoint: None,
                    healthcheck: None,
                    ..b
                }
            } else {
                {
                    let mut s = StageState::default();
                    if let Some(img) = &bases[i] {
                        for e in &img.config.env {
                            let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
                            s.env.set(k, v);
                        }
                    }
                    if s.env.get("PATH").is_none() {
                        s.env.set("PATH", DEFAULT_PATH);
                    }
                    s
                }
            };
            for ins in stages[i].commands.clone() {
                self.dispatch(&mut st, ins, &global)?;
            }
            finals[i] = Some(st);
        }
        Ok(())
    }

    /// `validateBaseImagePlatform`: the base image's OS or architecture is not
    /// the one the stage is built for (`FROM --platform`, else the target's).
    fn base_platform(
        &mut self,
        cfg: &CheckConfig,
        name: &str,
        expected: &rbuild_oci::Platform,
        img: &rbuild_oci::ImageConfig,
        span: &Span,
    ) {
        if img.os == expected.os && img.architecture == expected.architecture {
            return;
        }
        let actual = rbuild_oci::Platform {
            os: img.os.clone(),
            architecture: img.architecture.clone(),
            variant: img.variant.clone(),
        };
        self.warn(
            cfg,
            "InvalidBaseImagePlatform",
            span,
            format!(
                "Base image {name} was pulled with platform {}, expected {} for current build",
                go_quote(&format_all(&actual, img.os_version.as_deref())),
                go_quote(&format_all(expected, None))
            ),
        );
    }

    fn empty_continuations(&mut self, warnings: &[rbuild_parser::Warning]) {
        // Parser warnings: empty continuation lines, at the instruction's last line.
        for w in warnings {
            let mut span = w.span;
            span.start_line = w.span.end_line;
            span.start_column = 1;
            let cfg = self.cfg.clone();
            self.warn(
                &cfg,
                "NoEmptyContinuation",
                &span,
                "Empty continuation line".into(),
            );
        }
    }

    fn parse_level(&mut self, instructions: &[Instruction]) {
        // instructions.Parse: every instruction with its comments.
        for ins in instructions {
            let cfg = self.cfg_for(ins);
            let comments = self.comments_of(ins).to_vec();
            match &ins.kind {
                InstructionKind::Maintainer(_) => self.warn(
                    &cfg,
                    "MaintainerDeprecated",
                    &ins.span,
                    "Maintainer instruction is deprecated in favor of using label".into(),
                ),
                InstructionKind::From(f) => {
                    let args = &ins.node.args;
                    if args.len() == 3 && args[2] != args[2].to_lowercase() {
                        self.warn(
                            &cfg,
                            "StageNameCasing",
                            &ins.span,
                            format!("Stage name '{}' should be lowercase", args[2]),
                        );
                    }
                    if args.len() >= 3 {
                        let kw = &ins.keyword;
                        let lower = *kw == kw.to_lowercase();
                        let upper = *kw == kw.to_uppercase();
                        let ok = if lower {
                            args[1] == args[1].to_lowercase()
                        } else if upper {
                            args[1] == args[1].to_uppercase()
                        } else {
                            true
                        };
                        if !ok {
                            self.warn(
                                &cfg,
                                "FromAsCasing",
                                &ins.span,
                                format!("'{}' and '{}' keywords' casing do not match", args[1], kw),
                            );
                        }
                    }
                    if let Some(name) = &f.alias {
                        self.definition_description(
                            &cfg,
                            "FROM",
                            std::slice::from_ref(name),
                            &comments,
                            ins,
                        );
                    }
                }
                InstructionKind::Arg(a) => {
                    let keys: Vec<String> = a.args.iter().map(|d| d.name.clone()).collect();
                    self.definition_description(&cfg, "ARG", &keys, &comments, ins);
                }
                _ => {}
            }
        }
    }

    fn definition_description(
        &mut self,
        cfg: &CheckConfig,
        instruction: &str,
        keys: &[String],
        comments: &[String],
        ins: &Instruction,
    ) {
        let Some(last) = comments.last() else {
            return;
        };
        if keys.is_empty() {
            return;
        }
        let first = last.split(' ').next().unwrap_or_default();
        if keys.iter().any(|k| k == first) {
            return;
        }
        let example = if keys.len() > 1 {
            "<arg_key>"
        } else {
            keys[0].as_str()
        };
        self.warn(
            cfg,
            "InvalidDefinitionDescription",
            &ins.span,
            format!(
                "Comment for {instruction} should follow the format: `# {example} <description>`"
            ),
        );
    }

    fn unused_from_args(
        &mut self,
        cfg: &CheckConfig,
        keys: &[String],
        unmatched: &BTreeSet<String>,
        span: &Span,
    ) {
        for arg in unmatched {
            if keys.contains(arg) {
                continue;
            }
            let mut msg = format!("FROM argument '{arg}' is not declared");
            if let Some(s) = suggest_search(arg, keys.iter().map(String::as_str)) {
                let _ = write!(msg, " (did you mean {s}?)");
            }
            self.warn(cfg, "UndefinedArgInFrom", span, msg);
        }
    }

    /// `buildMetaArgs`: the global args after the meta ARGs, and every declared name.
    fn meta_args(
        &self,
        defaults: &EnvList,
        meta: &[(&Instruction, &rbuild_parser::Arg)],
        build_args: Option<&BTreeMap<String, String>>,
    ) -> Result<(EnvList, BTreeSet<String>), LintFailure> {
        let mut env = defaults.clone();
        let mut all = BTreeSet::new();
        let none = BTreeMap::new();
        for (ins, arg) in meta {
            for def in &arg.args {
                let value = arg_value(
                    &def.name,
                    def.default.as_deref(),
                    build_args.unwrap_or(&none),
                    None,
                    |d| {
                        self.lexer
                            .expand(d, &env.0)
                            .map_err(|e| build_err(e.to_string(), &ins.span))
                    },
                )?;
                if let Some(v) = value {
                    env.set(&def.name, &v.into_string());
                }
                all.insert(def.name.clone());
            }
        }
        Ok((env, all))
    }

    /// Expands `word` as `BuildKit`'s `Expand` does and reports its undefined variables.
    fn expand(
        &mut self,
        cfg: &CheckConfig,
        st: &StageState,
        ins: &Instruction,
        word: &str,
        lexer: Lexer,
    ) -> Result<String, LintFailure> {
        let r = lexer
            .process_word(word, &st.env.0)
            .map_err(|e| build_err(e.to_string(), &ins.span))?;
        self.report_unmatched(cfg, st, ins, &r.unmatched);
        Ok(r.result)
    }

    fn report_unmatched(
        &mut self,
        cfg: &CheckConfig,
        st: &StageState,
        ins: &Instruction,
        unmatched: &BTreeSet<String>,
    ) {
        for name in unmatched {
            if st.build_args.contains(name) || NON_ENV_ARGS.contains(&name.as_str()) {
                continue;
            }
            let mut msg = format!("Usage of undefined variable '${name}'");
            if let Some(s) = suggest_search(name, st.env.keys()) {
                let _ = write!(msg, " (did you mean ${s}?)");
            }
            self.warn(cfg, "UndefinedVar", &ins.span, msg);
        }
    }

    fn used_once(&mut self, cfg: &CheckConfig, prev: &mut Option<Span>, ins: &Instruction) {
        if let Some(p) = prev {
            let p = *p;
            self.warn(
                cfg,
                "MultipleInstructionsDisallowed",
                &p,
                format!(
                    "Multiple {} instructions should not be used in the same stage because only the last one will be used",
                    ins.keyword
                ),
            );
        }
        *prev = Some(ins.span);
    }

    fn secret_key(&mut self, cfg: &CheckConfig, instruction: &str, key: &str, ins: &Instruction) {
        if is_secret_key(key) {
            self.warn(
                cfg,
                "SecretsUsedInArgOrEnv",
                &ins.span,
                format!(
                    "Do not use ARG or ENV instructions for sensitive data ({instruction} {})",
                    go_quote(key)
                ),
            );
        }
    }

    #[allow(clippy::too_many_lines)]
    fn dispatch(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        global: &EnvList,
    ) -> Result<(), LintFailure> {
        let cfg = self.cfg_for(ins);
        let lx = self.lexer;
        match &ins.kind {
            InstructionKind::Env(e) => {
                let mut pairs = Vec::new();
                for kv in &e.pairs {
                    let k = self.expand(&cfg, st, ins, &kv.key, lx)?;
                    let v = self.expand(&cfg, st, ins, &kv.value, lx)?;
                    pairs.push((k, v));
                }
                for (k, v) in pairs {
                    if e.legacy {
                        self.legacy(&cfg, ins);
                    }
                    self.secret_key(&cfg, "ENV", &k, ins);
                    st.env.set(&k, &v);
                }
            }
            InstructionKind::Label(l) => {
                for kv in &l.pairs {
                    self.expand(&cfg, st, ins, &kv.key, lx)?;
                    self.expand(&cfg, st, ins, &kv.value, lx)?;
                }
                if l.legacy {
                    for _ in &l.pairs {
                        self.legacy(&cfg, ins);
                    }
                }
            }
            InstructionKind::Run(_) => {
                for flag in &ins.node.flags {
                    let Some(spec) = flag.strip_prefix("--mount=") else {
                        continue;
                    };
                    for field in spec.split(',') {
                        if let Some((_, v)) = field.split_once('=') {
                            self.expand(&cfg, st, ins, v, lx)?;
                        }
                    }
                }
            }
            InstructionKind::Workdir(w) => {
                let p = self.expand(&cfg, st, ins, &w.path, lx)?;
                if !st.workdir_set && !p.starts_with('/') {
                    self.warn(
                        &cfg,
                        "WorkdirRelativePath",
                        &ins.span,
                        format!(
                            "Relative workdir {} can have unexpected results if the base image changes",
                            go_quote(&p)
                        ),
                    );
                }
                st.workdir_set = true;
            }
            InstructionKind::Add(a) => {
                for w in [&a.chown, &a.chmod, &a.checksum].into_iter().flatten() {
                    self.expand(&cfg, st, ins, w, lx)?;
                }
                let mut srcs = Vec::new();
                for s in &a.sources {
                    srcs.push(self.expand(&cfg, st, ins, s, lx)?);
                }
                self.expand(&cfg, st, ins, &a.dest, lx)?;
                self.heredocs(&cfg, st, ins, &a.heredocs)?;
                for s in srcs {
                    if !is_remote(&s) {
                        self.copy_source(&cfg, ins, "Add", &s);
                    }
                }
            }
            InstructionKind::Copy(c) => {
                for w in [&c.chown, &c.chmod].into_iter().flatten() {
                    self.expand(&cfg, st, ins, w, lx)?;
                }
                let mut srcs = Vec::new();
                for s in &c.sources {
                    srcs.push(self.expand(&cfg, st, ins, s, lx)?);
                }
                self.expand(&cfg, st, ins, &c.dest, lx)?;
                self.heredocs(&cfg, st, ins, &c.heredocs)?;
                if c.from.is_none() {
                    for s in srcs {
                        self.copy_source(&cfg, ins, "Copy", &s);
                    }
                }
            }
            InstructionKind::User(u) => {
                self.expand(&cfg, st, ins, &u.user, lx)?;
            }
            InstructionKind::Volume(v) => {
                for p in &v.paths {
                    self.expand(&cfg, st, ins, p, lx)?;
                }
            }
            InstructionKind::Stopsignal(s) => {
                self.expand(&cfg, st, ins, &s.signal, lx)?;
            }
            InstructionKind::Cmd(c) => {
                let mut prev = st.cmd.take();
                self.used_once(&cfg, &mut prev, ins);
                st.cmd = prev;
                if matches!(c.command, Command::Shell(_)) && !st.shell_set {
                    self.json_args(&cfg, ins);
                }
            }
            InstructionKind::Entrypoint(e) => {
                let mut prev = st.entrypoint.take();
                self.used_once(&cfg, &mut prev, ins);
                st.entrypoint = prev;
                if matches!(e.command, Command::Shell(_)) && !st.shell_set {
                    self.json_args(&cfg, ins);
                }
            }
            InstructionKind::Healthcheck(h) => {
                let _: &Healthcheck = h;
                let mut prev = st.healthcheck.take();
                self.used_once(&cfg, &mut prev, ins);
                st.healthcheck = prev;
            }
            InstructionKind::Shell(s) => st.shell_set = !s.shell.is_empty(),
            InstructionKind::Expose(e) => {
                for p in &e.ports {
                    let Ok(words) = lx.process_words(p, &st.env.0) else {
                        continue;
                    };
                    for raw in words {
                        self.expose(&cfg, ins, &raw);
                    }
                }
            }
            InstructionKind::Arg(a) => {
                for def in &a.args {
                    self.secret_key(&cfg, "ARG", &def.name, ins);
                    let value = arg_value(
                        &def.name,
                        def.default.as_deref(),
                        self.opts.build_args,
                        Some(&global.0),
                        |d| self.expand(&cfg, st, ins, d, lx),
                    )?
                    .map(ArgValue::into_string);
                    if let Some(v) = value
                        && !NON_ENV_ARGS.contains(&def.name.as_str())
                    {
                        st.env.set(&def.name, &v);
                    }
                    st.build_args.push(def.name.clone());
                }
            }
            InstructionKind::From(_)
            | InstructionKind::Maintainer(_)
            | InstructionKind::Onbuild(_) => {}
        }
        Ok(())
    }

    fn heredocs(
        &mut self,
        cfg: &CheckConfig,
        st: &StageState,
        ins: &Instruction,
        heredocs: &[rbuild_parser::Heredoc],
    ) -> Result<(), LintFailure> {
        let raw = Lexer::new('\\').with_skip_process_quotes(true);
        for h in heredocs.iter().filter(|h| h.expand) {
            self.expand(cfg, st, ins, &h.body(), raw)?;
        }
        Ok(())
    }

    fn legacy(&mut self, cfg: &CheckConfig, ins: &Instruction) {
        let k = &ins.keyword;
        self.warn(
            cfg,
            "LegacyKeyValueFormat",
            &ins.span,
            format!("\"{k} key=value\" should be used instead of legacy \"{k} key value\" format"),
        );
    }

    fn json_args(&mut self, cfg: &CheckConfig, ins: &Instruction) {
        self.warn(
            cfg,
            "JSONArgsRecommended",
            &ins.span,
            format!(
                "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                ins.keyword
            ),
        );
    }

    fn expose(&mut self, cfg: &CheckConfig, ins: &Instruction, raw: &str) {
        let parts: Vec<&str> = raw.split(':').collect();
        let (ip, host, container) = match parts.len() {
            1 => ("", "", parts[0]),
            2 => ("", parts[0], parts[1]),
            n => (
                raw.rsplitn(3, ':').nth(2).unwrap_or(""),
                parts[n - 2],
                parts[n - 1],
            ),
        };
        let (port, proto) = container.split_once('/').unwrap_or((container, ""));
        if port.is_empty() || !matches!(proto.to_lowercase().as_str(), "" | "tcp" | "udp" | "sctp")
        {
            return;
        }
        if proto != proto.to_lowercase() {
            self.warn(
                cfg,
                "ExposeProtoCasing",
                &ins.span,
                format!("Defined protocol '{raw}' in EXPOSE instruction should be lowercase"),
            );
        }
        if !ip.is_empty() || !host.is_empty() {
            self.warn(
                cfg,
                "ExposeInvalidFormat",
                &ins.span,
                format!(
                    "EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'"
                ),
            );
        }
    }

    /// `validateCopySourcePath`.
    fn copy_source(&mut self, cfg: &CheckConfig, ins: &Instruction, cmd: &str, src: &str) {
        let Some(m) = &self.ignore else {
            return;
        };
        if m.has_exclusions() {
            return;
        }
        let src = rbuild_patterns::clean(src);
        if src == "." || src == "/" {
            let root = m
                .patterns()
                .iter()
                .any(|p| !p.is_exclusion() && matches!(p.as_str(), "*" | "**" | "**/*"));
            if !root {
                return;
            }
        }
        let path = src.trim_start_matches('/');
        if m.matches(if path.is_empty() { "." } else { path }) {
            self.warn(
                cfg,
                "CopyIgnoredFile",
                &ins.span,
                format!(
                    "Attempting to {cmd} file {} that is excluded by .dockerignore",
                    go_quote(&src)
                ),
            );
        }
    }
}

/// containerd's `platforms.Parse` errors (the part of them rbuild can tell).
/// containerd's `platforms.FormatAll(platforms.Normalize(p))`:
/// `os[(os.version)]/arch[/variant]`, `arm64/v8` as `arm64`, `arm` as `arm/v7`.
fn format_all(p: &rbuild_oci::Platform, os_version: Option<&str>) -> String {
    let mut raw = format!("{}/{}", p.os, p.architecture);
    if let Some(v) = p.variant.as_deref().filter(|v| !v.is_empty()) {
        raw.push('/');
        raw.push_str(v);
    }
    let n = rbuild_oci::Platform::parse(&raw).unwrap_or_else(|| p.clone());
    let mut out = n.os.clone();
    if let Some(v) = os_version.filter(|v| !v.is_empty()) {
        let _ = write!(out, "({v})");
    }
    let _ = write!(out, "/{}", n.architecture);
    if let Some(v) = &n.variant {
        let _ = write!(out, "/{v}");
    }
    out
}

fn platform_error(s: &str) -> Option<String> {
    let ok = |c: &str| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'))
    };
    if let Some(bad) = s.split('/').find(|c| !ok(c)) {
        return Some(format!(
            "{} is an invalid component of {}: platform specifier component must match \"^[A-Za-z0-9_.-]+$\": invalid argument",
            go_quote(bad),
            go_quote(s)
        ));
    }
    if s.split('/').count() > 3 {
        return Some(format!(
            "{}: cannot parse platform specifier: invalid argument",
            go_quote(s)
        ));
    }
    rbuild_oci::Platform::parse(s).is_none().then(|| {
        format!(
            "{}: unknown operating system or architecture: invalid argument",
            go_quote(s)
        )
    })
}

/// The checks of a file that does not parse, as far as `BuildKit` gets: with the
/// parser's AST, its empty-continuation warnings, and the per-instruction rules of
/// the instructions before the one that fails; then the error.
pub(super) fn run_parse_error(
    src: &str,
    err: &rbuild_parser::ParseError,
    opts: &LintOptions<'_>,
) -> LintReport {
    let mut report = LintReport::default();
    let message = if err.message.starts_with("unknown instruction: ") {
        let mut m = format!(
            "dockerfile parse error on line {}: {}",
            err.line, err.message
        );
        if let Some(h) = err
            .help
            .as_deref()
            .filter(|h| h.starts_with("did you mean "))
        {
            let _ = write!(m, " ({h})");
        }
        m
    } else {
        err.message.clone()
    };
    let failure = LintFailure::Parse {
        message,
        line: err.line,
    };
    let cfg = match check_config(src, opts) {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    report.error = Some(failure);
    report.config = cfg.clone();
    let Ok(ast) = rbuild_parser::parse_ast(src) else {
        return report;
    };
    // The instructions before the failing one.
    let cut = ast
        .nodes
        .iter()
        .find(|n| n.span.end >= err.span.start)
        .map_or(src.len(), |n| n.span.start);
    let prefix = rbuild_parser::parse(&src[..cut]).ok();
    let empty = Dockerfile {
        directives: ast.directives.clone(),
        instructions: Vec::new(),
        warnings: Vec::new(),
    };
    let df = prefix.as_ref().unwrap_or(&empty);
    let mut ctx = Ctx {
        opts,
        cfg,
        comments: prev_comments(src, df),
        lexer: Lexer::new(ast.directives.escape),
        sink: Sink::default(),
        ignore: None,
        unresolved_bases: 0,
        final_base: None,
    };
    ctx.empty_continuations(&ast.warnings);
    ctx.parse_level(&df.instructions);
    report.warnings = ctx.sink.warnings;
    report
}

fn is_remote(src: &str) -> bool {
    src.starts_with("http://")
        || src.starts_with("https://")
        || src.starts_with("git@")
        || src.starts_with("git://")
        || src.contains(".git#")
        || src.to_ascii_lowercase().ends_with(".git")
}

/// `(?i)(?:_|^)(?:apikey|auth|credential|credentials|key|password|pword|passwd|secret|token)(?:_|$)`
/// and not `(?i)(?:_|^)(?:public|file|version)(?:_|$)`.
pub(crate) fn is_secret_key(key: &str) -> bool {
    const DENY: &[&str] = &[
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    const ALLOW: &[&str] = &["public", "file", "version"];
    let words: Vec<String> = key.split('_').map(str::to_lowercase).collect();
    let has = |set: &[&str]| words.iter().any(|w| set.contains(&w.as_str()));
    has(DENY) && !has(ALLOW)
}

/// The target and every stage it needs (FROM, COPY --from, RUN --mount from=).
fn reachable_stages(stages: &[Stage<'_>], target: usize) -> BTreeSet<usize> {
    let find = |r: &str| -> Option<usize> {
        if let Ok(i) = r.parse::<usize>() {
            return (i < stages.len()).then_some(i);
        }
        let r = r.to_lowercase();
        stages
            .iter()
            .position(|s| s.name.as_deref() == Some(r.as_str()))
    };
    crate::util::reachable(target, |i| {
        let mut edges: Vec<usize> = stages[i].base.into_iter().collect();
        for ins in &stages[i].commands {
            let froms: Vec<&str> = match &ins.kind {
                InstructionKind::Copy(c) => c.from.iter().map(String::as_str).collect(),
                InstructionKind::Run(r) => r
                    .mounts
                    .iter()
                    .filter_map(|m| match m {
                        rbuild_parser::Mount::Bind(b) => b.from.as_deref(),
                        rbuild_parser::Mount::Cache(c) => c.from.as_deref(),
                        rbuild_parser::Mount::Unexpanded(u) => u.from.as_deref(),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            edges.extend(froms.into_iter().filter_map(find));
        }
        edges
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets() {
        for k in [
            "SECRET_PASSPHRASE",
            "SUPER_Secret",
            "password",
            "auth",
            "git_key",
            "apikey",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "PUBLIC_KEY",
            "public_token",
            "SECRET_PASSPHRASE_FILE",
            "AUTH_MODULE_VERSION",
            "sunflower",
            "keys",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }
}

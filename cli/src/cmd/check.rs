//! `rbuild check` (and `rbuild build --check`): the build checks without a build,
//! as `docker build --check` runs them: exit 0 when clean, 1 when a check fired
//! or the checks failed; text, JSON or SARIF 2.1.0. Also the summary a build
//! ends with (buildx's `N warnings found:` block) and its JSON events.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use rbuild_frontend::lint::{self, LintFailure, LintReport, LintWarning, own::ContextFacts};
use serde_json::json;

use crate::progress::ProgressMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// docker build --check's report
    #[default]
    Text,
    /// {"warnings": [...], "error": ...}
    Json,
    /// SARIF 2.1.0 (GitHub code scanning)
    Sarif,
}

#[derive(clap::Args, Debug)]
#[command(about = "Run the build checks on a Dockerfile without building")]
pub struct CheckArgs {
    /// The Dockerfile (default: CONTEXT/Dockerfile)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Set a build-time variable (`NAME` alone takes its value from the environment)
    #[arg(long = "build-arg", value_name = "K[=V]")]
    build_args: Vec<String>,
    /// Check only the stages this stage needs (default: every stage)
    #[arg(long, value_name = "STAGE")]
    target: Option<String>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Print what a rule checks and why (rbuild's rules: their page, built in)
    #[arg(long, value_name = "RULE")]
    explain: Option<String>,
    /// The build context (a directory)
    #[arg(value_name = "CONTEXT", default_value = ".")]
    context: PathBuf,
}

/// What the static checks need.
pub struct Inputs<'a> {
    pub src: &'a str,
    /// The parsed Dockerfile, or why it does not parse.
    pub dockerfile: Result<&'a rbuild_parser::Dockerfile, &'a rbuild_parser::ParseError>,
    pub context: &'a Path,
    pub ignore: Option<&'a [String]>,
    pub build_args: &'a BTreeMap<String, String>,
    pub target: Option<&'a str>,
    /// Check mode: every stage (unless a target is given).
    pub all_stages: bool,
    pub root: &'a Path,
}

/// Contexts larger than this without a `.dockerignore` fire `LargeContextWithoutDockerignore`.
pub const LARGE_CONTEXT: u64 = 64 << 20;

/// Bytes of regular files under `dir`, stopping once past `limit`.
fn context_size(dir: &Path, limit: u64) -> u64 {
    let mut total = 0u64;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_file() {
                total += e.metadata().map_or(0, |m| m.len());
                if total > limit {
                    return total;
                }
            }
        }
    }
    total
}

/// `reference`'s config when the local store has it (no pull: `rbuild check`
/// reads what is there; a build pulls first, see [`after_build`]).
fn store_config(root: &Path) -> impl Fn(&str) -> Option<rbuild_oci::ImageConfig> {
    let store = rbuild_engine::StateLayout::new(root)
        .index_json()
        .exists()
        .then(|| rbuild_image::Store::open(root).ok())
        .flatten();
    move |reference: &str| Some(store.as_ref()?.find(reference).ok()?.config)
}

/// Runs the static checks.
pub fn static_report(i: &Inputs<'_>) -> LintReport {
    let platform = rbuild_frontend::Platform::host();
    let has_ignore = i.ignore.is_some();
    let size = (!has_ignore).then(|| context_size(i.context, LARGE_CONTEXT));
    let base_image = store_config(i.root);
    let opts = lint::LintOptions {
        build_args: i.build_args,
        target: i.target,
        all_stages: i.all_stages && i.target.is_none(),
        dockerignore: i.ignore,
        platform: &platform,
        build_platform: &platform,
        base_image: &base_image,
        context: ContextFacts {
            size,
            has_dockerignore: has_ignore,
            large: LARGE_CONTEXT,
        },
        rbuild_rules: true,
    };
    match i.dockerfile {
        Ok(df) => lint::lint(i.src, df, &opts),
        Err(e) => lint::lint_parse_error(i.src, e, &opts),
    }
}

/// `rbuild check --explain RULE`: an rbuild rule's page (`docs/checks/RULE.md`,
/// built in), or a `BuildKit` rule's description and documentation URL.
fn explain(name: &str) -> anyhow::Result<String> {
    let Some(rule) = lint::rule(name) else {
        let names = lint::RULES.iter().map(|r| r.name);
        let hint = names
            .clone()
            .find(|n| n.eq_ignore_ascii_case(name))
            .map(|n| format!(" (did you mean {n}?)"))
            .unwrap_or_default();
        return Err(anyhow!("no check is called {name:?}{hint}"));
    };
    if let Some(page) = lint::doc_page(rule.name) {
        return Ok(page.to_owned());
    }
    let url = if rule.url.is_empty() {
        String::new()
    } else {
        format!("\n{}\n", rule.url)
    };
    Ok(format!(
        "# {}\n\nBuildKit's check: {}\n{url}",
        rule.name, rule.description
    ))
}

pub fn run(args: &CheckArgs, root: &Path) -> anyhow::Result<ExitCode> {
    if let Some(name) = &args.explain {
        std::io::stdout()
            .lock()
            .write_all(explain(name)?.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    let context = &args.context;
    if !context.is_dir() {
        return Err(anyhow!("context {} is not a directory", context.display()));
    }
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
    let name = args
        .file
        .as_ref()
        .map_or_else(|| "Dockerfile".to_owned(), |f| f.display().to_string());
    let src = fs_err::read_to_string(&path).map_err(|e| {
        anyhow!(
            "cannot read the Dockerfile: {}",
            e.to_string().lines().next().unwrap_or_default()
        )
    })?;
    let parsed = rbuild_parser::parse(&src);
    let ignore = rbuild_frontend::dockerignore::load(context, Some(&path))
        .context("reading the .dockerignore file")?;
    let build_args = super::build::build_arg_map(&args.build_args);
    let report = static_report(&Inputs {
        src: &src,
        dockerfile: parsed.as_ref(),
        context,
        ignore: ignore.as_ref().map(|(_, p)| p.as_slice()),
        build_args: &build_args,
        target: args.target.as_deref(),
        all_stages: true,
        root,
    });
    if let Err(e) = &parsed {
        // The warnings BuildKit gives before the error, then the error as rbuild shows it.
        if args.format == Format::Text {
            if !report.warnings.is_empty() {
                let mut r = report.clone();
                r.error = None;
                print!("{}", render_text(&r, &name, &src));
            }
            eprint!("{}", e.render(&name, &src));
            return Ok(ExitCode::FAILURE);
        }
    }
    let out = match args.format {
        Format::Text => render_text(&report, &name, &src),
        Format::Json => serde_json::to_string_pretty(&json_report(&report))? + "\n",
        Format::Sarif => serde_json::to_string_pretty(&sarif(&report.warnings, &name))? + "\n",
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    if args.format != Format::Text
        && let Some(e) = &report.error
    {
        eprintln!("ERROR: {}", e.message());
    }
    Ok(exit_for(&report))
}

/// 0 when clean, 1 when a check fired or the checks failed (`docker build --check`).
pub fn exit_for(report: &LintReport) -> ExitCode {
    if report.warnings.is_empty() && report.error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `docker build --check`'s report: each warning with its rule, URL, message and line.
pub fn render_text(report: &LintReport, name: &str, src: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let n = report.warnings.len();
    match n {
        0 => s.push_str("Check complete, no warnings found.\n"),
        1 => s.push_str("Check complete, 1 warning has been found!\n"),
        n => {
            let _ = writeln!(s, "Check complete, {n} warnings have been found!");
        }
    }
    let lines: Vec<&str> = src.lines().collect();
    for w in &report.warnings {
        s.push('\n');
        if w.url.is_empty() {
            let _ = writeln!(s, "WARNING: {}", w.rule);
        } else {
            let _ = writeln!(s, "WARNING: {} - {}", w.rule, w.url);
        }
        let _ = writeln!(s, "{}", w.description);
        let _ = writeln!(s, "{}", w.message);
        if w.line > 0 {
            let _ = writeln!(s, "{name}:{}", w.line);
            let _ = writeln!(s, "--------------------");
            let end = w.end_line.max(w.line).min(lines.len());
            for l in w.line..=end {
                let text = lines.get(l - 1).copied().unwrap_or_default();
                let _ = writeln!(s, "{l:>4} | >>> {text}");
            }
            let _ = writeln!(s, "--------------------");
        }
    }
    if let Some(e) = &report.error {
        let _ = writeln!(s, "\nERROR: {}", e.message());
        if let LintFailure::Build { line, .. } | LintFailure::Parse { line, .. } = e
            && *line > 0
        {
            let _ = writeln!(s, "{name}:{line}");
        }
    }
    s
}

pub fn warning_json(w: &LintWarning) -> serde_json::Value {
    json!({
        "rule": w.rule,
        "message": w.message,
        "description": w.description,
        "url": w.url,
        "line": w.line,
        "column": w.column,
        "level": w.level,
    })
}

pub fn json_report(report: &LintReport) -> serde_json::Value {
    json!({
        "warnings": report.warnings.iter().map(warning_json).collect::<Vec<_>>(),
        "error": report.error.as_ref().map(|e| match e {
            LintFailure::LintViolation { message, line } =>
                json!({"kind": "lint_violation", "message": message, "line": line}),
            LintFailure::Build { message, line } =>
                json!({"kind": "build", "message": message, "line": line}),
            LintFailure::Parse { message, line } =>
                json!({"kind": "parse", "message": message, "line": line}),
        }),
    })
}

/// A SARIF 2.1.0 log: one run of the `rbuild` tool, every rule rbuild knows in
/// its driver (id, description, help URI), one result per warning located at the
/// Dockerfile's line and column.
pub fn sarif(warnings: &[LintWarning], artifact: &str) -> serde_json::Value {
    let rules: Vec<serde_json::Value> = lint::RULES
        .iter()
        .map(|r| {
            let mut rule = json!({
                "id": r.name,
                "name": r.name,
                "shortDescription": {"text": r.description},
                "fullDescription": {"text": r.description},
                "defaultConfiguration": {"level": "warning"},
                "properties": {"origin": r.origin, "experimental": r.experimental},
            });
            if let Some(page) = lint::doc_page(r.name) {
                // rbuild's rules: the page itself (their `url` is its path in
                // the repository, which has no public address to link to).
                rule["help"] = json!({
                    "text": format!("{} ({})", r.description, r.url),
                    "markdown": page,
                });
            } else if r.url.is_empty() {
                rule["help"] = json!({"text": r.description});
            } else {
                rule["helpUri"] = json!(r.url);
                rule["help"] = json!({"text": format!("{} ({})", r.description, r.url)});
            }
            rule
        })
        .collect();
    let results: Vec<serde_json::Value> = warnings
        .iter()
        .map(|w| {
            let index = lint::RULES.iter().position(|r| r.name == w.rule);
            json!({
                "ruleId": w.rule,
                "ruleIndex": index,
                "level": "warning",
                "message": {"text": w.message},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": {"uri": artifact},
                        "region": {
                            "startLine": w.line.max(1),
                            "startColumn": w.column.max(1),
                        }
                    }
                }]
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "rbuild",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }]
    })
}

/// buildx's summary after a build: `N warnings found:` and one ` - Rule: message
/// (line N)` per warning (plain mode adds the rule's URL); JSON progress gets one
/// `check_warning` event per warning.
pub fn build_summary(warnings: &[LintWarning], mode: ProgressMode) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if warnings.is_empty() || mode == ProgressMode::Quiet {
        return s;
    }
    if mode == ProgressMode::Json {
        for w in warnings {
            let mut v = warning_json(w);
            v["event"] = json!("check_warning");
            let _ = writeln!(s, "{v}");
        }
        return s;
    }
    let n = warnings.len();
    let _ = writeln!(
        s,
        "\n{n} {} found:",
        if n == 1 { "warning" } else { "warnings" }
    );
    for w in warnings {
        let _ = writeln!(s, " - {}", w.short());
        if mode == ProgressMode::Plain && !w.url.is_empty() {
            let _ = writeln!(s, "   {}", w.url);
        }
    }
    s
}

/// `RBUILD_CHECKS=off`: a build runs no checks (for measuring what they cost).
fn checks_off() -> bool {
    std::env::var_os("RBUILD_CHECKS").is_some_and(|v| v == "off")
}

/// The static checks of a build: the stages its target reaches, or all of them
/// with `--check`. In a real build only `check=error=true` fails here; what the
/// planner refuses it reports itself.
pub fn for_build(req: &super::build::Request, check_mode: bool, root: &Path) -> LintReport {
    if !check_mode && checks_off() {
        return LintReport::default();
    }
    let b = &req.build;
    let mut report = static_report(&Inputs {
        src: &req.dockerfile_src,
        dockerfile: Ok(&b.dockerfile),
        context: &b.context,
        ignore: b.ignore.as_ref().map(|(_, p)| p.as_slice()),
        build_args: &b.build_args,
        target: b.target.as_deref(),
        all_stages: check_mode,
        root,
    });
    if !check_mode && matches!(report.error, Some(LintFailure::Build { .. })) {
        report.error = None;
    }
    report
}

/// `rbuild build --check`, or a build that `check=error=true` stops before it starts.
pub fn finish_check_only(
    report: &LintReport,
    req: &super::build::Request,
    check_mode: bool,
    mode: ProgressMode,
) -> anyhow::Result<ExitCode> {
    if check_mode {
        let out = render_text(report, &req.build.dockerfile_name, &req.dockerfile_src);
        std::io::stdout().lock().write_all(out.as_bytes())?;
        return Ok(exit_for(report));
    }
    let mut err = std::io::stderr().lock();
    err.write_all(build_summary(&report.warnings, mode).as_bytes())?;
    if let Some(e) = &report.error {
        writeln!(err, "ERROR: {}", e.message())?;
    }
    Ok(ExitCode::FAILURE)
}

/// After a build: the image checks (when the image is in the store), then the summary.
pub fn after_build(
    report: &LintReport,
    req: &super::build::Request,
    image: Option<&rbuild_image::Digest>,
    mode: ProgressMode,
) {
    let mut warnings = report.warnings.clone();
    if checks_off() {
        return;
    }
    if report.unresolved_bases > 0 {
        // Base images the build pulled: now in the store, their platform is checked.
        let after = for_build(req, false, &req.build.state_root);
        let pulled: Vec<LintWarning> = after
            .warnings
            .into_iter()
            .filter(|w| w.rule == "InvalidBaseImagePlatform" && !warnings.contains(w))
            .collect();
        warnings.extend(pulled);
        lint::sort_warnings(&mut warnings);
    }
    if let Some(id) = image
        && req.output == super::build::OutputSpec::Store
    {
        warnings.extend(image_checks(report, req, id));
    }
    let _ = std::io::stderr()
        .lock()
        .write_all(build_summary(&warnings, mode).as_bytes());
}

fn image_checks(
    report: &LintReport,
    req: &super::build::Request,
    id: &rbuild_image::Digest,
) -> Vec<LintWarning> {
    let Ok(store) = rbuild_image::Store::open(&req.build.state_root) else {
        return Vec::new();
    };
    let Ok(img) = store.image(id) else {
        return Vec::new();
    };
    let base_layers = report
        .final_base
        .as_ref()
        .and_then(|r| store.find(r).ok())
        .map_or(0, |base| {
            base.diff_ids()
                .iter()
                .zip(img.diff_ids())
                .take_while(|(a, b)| a == b)
                .count()
        });
    let stages = req
        .build
        .dockerfile
        .instructions
        .iter()
        .filter(|i| matches!(i.kind, rbuild_parser::InstructionKind::From(_)))
        .count();
    let input = rbuild_engine::checks::ImageCheckInput {
        image: id,
        base_layers,
        secrets: req.build.secrets.values().map(Vec::as_slice).collect(),
        multi_stage: stages > 1,
        config: &report.config,
        state_root: Some(&req.build.state_root),
    };
    match rbuild_engine::checks::image_checks(&store, &input) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("WARNING: the image checks could not read the image: {e}");
            Vec::new()
        }
    }
}

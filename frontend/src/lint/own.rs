//! rbuild's own static rules: the practices the seeds teach (one RUN for install
//! and cleanup, COPY over ADD, pinned bases, WORKDIR over `cd`, dependency
//! manifests before the sources, few layers, a `.dockerignore` for a large
//! context). Each has a page in `docs/checks/`. They honour the same `# check=`
//! configuration as `BuildKit`'s rules.

use rbuild_parser::{Command, Dockerfile, Instruction, InstructionKind, Mount};

use super::{CheckConfig, LintOptions, Sink};

/// What the caller knows about the build context.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContextFacts {
    /// Bytes of regular files in the context, counted up to a bit past `large`
    /// (`None`: not measured).
    pub size: Option<u64>,
    /// Whether the context has a `.dockerignore` (or `<Dockerfile>.dockerignore`).
    pub has_dockerignore: bool,
    /// The size past which a context without `.dockerignore` is large.
    pub large: u64,
}

/// The shell text a RUN runs (shell form, exec form joined, heredoc bodies).
fn run_text(ins: &Instruction) -> Option<String> {
    let InstructionKind::Run(r) = &ins.kind else {
        return None;
    };
    let mut s = match &r.command {
        Command::Shell(s) => s.clone(),
        Command::Exec(v) => v.join(" "),
    };
    for h in &r.heredocs {
        s.push('\n');
        s.push_str(&h.content);
    }
    Some(s)
}

/// The simple commands of a shell text, each as its words (naive: split on
/// `&&`, `||`, `;`, `|`, newlines and whitespace; quotes removed).
fn simple_commands(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let normalized = text.replace("\\\n", " ");
    for part in normalized.split(['\n', ';', '|', '&', '(', ')']) {
        let words: Vec<String> = part
            .split_whitespace()
            .map(|w| w.trim_matches(['"', '\'']).to_owned())
            .filter(|w| !w.is_empty())
            .collect();
        if !words.is_empty() {
            out.push(words);
        }
    }
    out
}

/// The command name without a leading path, `sudo` or `env VAR=x` skipped.
fn program(words: &[String]) -> (String, &[String]) {
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        if w == "sudo" || w == "env" || w == "exec" || (w.contains('=') && !w.starts_with('-')) {
            i += 1;
            continue;
        }
        break;
    }
    match words.get(i) {
        Some(w) => (
            w.rsplit('/').next().unwrap_or(w).to_owned(),
            &words[i + 1..],
        ),
        None => (String::new(), &[]),
    }
}

/// What a RUN's shell text does with package managers (independent facts).
#[derive(Default)]
#[allow(clippy::struct_excessive_bools)]
struct Pm {
    apt_update: bool,
    apt_install: bool,
    apt_no_recommends: bool,
    apt_clean: bool,
    apk_update: bool,
    apk_add: bool,
    apk_no_cache: bool,
    apk_clean: bool,
    dnf_makecache: bool,
    dnf_install: Option<String>,
    dnf_weak_off: bool,
    dnf_clean: bool,
    pip_install: bool,
    pip_no_cache: bool,
    cd: bool,
    dependency_install: Option<String>,
}

fn analyse(text: &str) -> Pm {
    let mut pm = Pm::default();
    let lower = text.to_lowercase();
    if lower.contains("/var/lib/apt/lists") && lower.contains("rm ") {
        pm.apt_clean = true;
    }
    if lower.contains("/var/cache/apk") && lower.contains("rm ") {
        pm.apk_clean = true;
    }
    if (lower.contains("/var/cache/dnf") || lower.contains("/var/cache/yum"))
        && lower.contains("rm ")
    {
        pm.dnf_clean = true;
    }
    if lower.contains("pip_no_cache_dir") {
        pm.pip_no_cache = true;
    }
    for words in simple_commands(text) {
        let (prog, args) = program(&words);
        let has = |a: &str| args.iter().any(|w| w == a);
        let sub = args
            .iter()
            .find(|w| !w.starts_with('-'))
            .map(String::as_str);
        match prog.as_str() {
            "apt-get" | "apt" | "aptitude" => match sub {
                Some("update") => pm.apt_update = true,
                Some("install") => {
                    pm.apt_install = true;
                    if has("--no-install-recommends")
                        || args.iter().any(|w| w.contains("Install-Recommends=false"))
                    {
                        pm.apt_no_recommends = true;
                    }
                }
                Some("clean") if lower.contains("/var/lib/apt/lists") => pm.apt_clean = true,
                _ => {}
            },
            "apk" => match sub {
                Some("update") => pm.apk_update = true,
                Some("add") => {
                    pm.apk_add = true;
                    if has("--no-cache") {
                        pm.apk_no_cache = true;
                    }
                }
                _ => {}
            },
            "dnf" | "yum" | "microdnf" => match sub {
                Some("makecache") => pm.dnf_makecache = true,
                Some("install") => {
                    pm.dnf_install = Some(prog.clone());
                    if args.iter().any(|w| {
                        w.contains("install_weak_deps=false")
                            || w.contains("install_weak_deps=False")
                            || w.contains("install_weak_deps=0")
                    }) {
                        pm.dnf_weak_off = true;
                    }
                }
                Some("clean") => pm.dnf_clean = true,
                _ => {}
            },
            p if p == "pip" || p == "pip3" || p.starts_with("python") => {
                let pip_args: &[String] = if p.starts_with("python") {
                    match args.iter().position(|w| w == "pip") {
                        Some(i) if args.get(i.wrapping_sub(1)).is_some_and(|w| w == "-m") => {
                            &args[i + 1..]
                        }
                        _ => &[],
                    }
                } else {
                    args
                };
                if pip_args.first().is_some_and(|w| w == "install") {
                    pm.pip_install = true;
                    if pip_args.iter().any(|w| w == "--no-cache-dir") {
                        pm.pip_no_cache = true;
                    }
                    if pip_args
                        .iter()
                        .any(|w| w == "-r" || w.starts_with("--requirement"))
                    {
                        pm.dependency_install.get_or_insert_with(|| words.join(" "));
                    }
                }
            }
            "cd" => pm.cd = true,
            "npm" if matches!(sub, Some("install" | "ci" | "i")) && args.len() == 1 => {
                pm.dependency_install.get_or_insert_with(|| words.join(" "));
            }
            "yarn" | "pnpm" if sub.is_none() || sub == Some("install") => {
                pm.dependency_install.get_or_insert_with(|| words.join(" "));
            }
            "bundle" | "composer" | "poetry" | "pipenv" if sub == Some("install") => {
                pm.dependency_install.get_or_insert_with(|| words.join(" "));
            }
            "go" if sub == Some("mod") && args.iter().any(|w| w == "download") => {
                pm.dependency_install.get_or_insert_with(|| words.join(" "));
            }
            "cargo" if sub == Some("fetch") => {
                pm.dependency_install.get_or_insert_with(|| words.join(" "));
            }
            _ => {}
        }
    }
    pm
}

/// Whether a RUN has a cache mount on one of `dirs`.
fn cache_mount(ins: &Instruction, dirs: &[&str]) -> bool {
    let InstructionKind::Run(r) = &ins.kind else {
        return false;
    };
    r.mounts.iter().any(|m| match m {
        Mount::Cache(c) => c
            .target
            .as_deref()
            .is_some_and(|t| dirs.iter().any(|d| t.trim_end_matches('/').starts_with(d))),
        _ => false,
    })
}

const ARCHIVE_EXT: &[&str] = &[
    ".tar",
    ".tar.gz",
    ".tgz",
    ".tar.bz2",
    ".tbz2",
    ".tbz",
    ".tar.xz",
    ".txz",
    ".tar.zst",
    ".tzst",
    ".tar.lz",
    ".tar.lzma",
    ".tlz",
    ".gz",
    ".bz2",
    ".xz",
    ".zst",
];

fn is_remote(s: &str) -> bool {
    s.starts_with("http://")
        || s.starts_with("https://")
        || s.starts_with("git@")
        || s.starts_with("git://")
        || s.contains(".git#")
        || s.to_ascii_lowercase().ends_with(".git")
}

#[allow(clippy::too_many_lines)]
pub(super) fn run(
    src: &str,
    df: &Dockerfile,
    opts: &LintOptions<'_>,
    cfg: &CheckConfig,
    sink: &mut Sink,
) {
    let comments = super::buildkit::prev_comments(src, df);
    let cfg_for = |ins: &Instruction| {
        cfg.with_comments(
            comments
                .get(&ins.span.start_line)
                .map_or(&[], Vec::as_slice),
        )
    };
    let mut stage_names: Vec<String> = Vec::new();
    let mut meta: Vec<(String, String)> = Vec::new();
    let mut in_stage = false;
    // Per stage: RUN run-length, COPY . seen.
    let mut consecutive: Vec<&Instruction> = Vec::new();
    let mut copy_all: Option<&Instruction> = None;
    let mut uses_context = false;

    let flush_runs = |consecutive: &mut Vec<&Instruction>, sink: &mut Sink| {
        if consecutive.len() >= 2 {
            let first = consecutive[0];
            let last = consecutive[consecutive.len() - 1];
            let c = cfg_for(last);
            sink.run(
                &c,
                "TooManyLayers",
                Some(&consecutive[1].span),
                format!(
                    "{} consecutive RUN instructions (lines {}-{}) could be one RUN: each makes a layer",
                    consecutive.len(),
                    first.span.start_line,
                    last.span.start_line
                ),
            );
        }
        consecutive.clear();
    };

    for ins in &df.instructions {
        let c = cfg_for(ins);
        match &ins.kind {
            InstructionKind::From(f) => {
                flush_runs(&mut consecutive, sink);
                copy_all = None;
                in_stage = true;
                let image = rbuild_parser::shell::Lexer::new(df.directives.escape)
                    .expand(&f.image, &meta)
                    .unwrap_or_else(|_| f.image.clone());
                let is_stage = stage_names.iter().any(|n| n.eq_ignore_ascii_case(&image));
                if let Some(a) = &f.alias {
                    stage_names.push(a.clone());
                }
                if is_stage || image == "scratch" || image.is_empty() || image.contains('$') {
                    continue;
                }
                if let Ok(r) = rbuild_oci::Reference::parse(&image) {
                    if r.digest.is_some() {
                        continue;
                    }
                    match r.tag.as_deref() {
                        None => sink.run(
                            &c,
                            "LatestOrUntaggedBase",
                            Some(&ins.span),
                            format!(
                                "Base image {image} has no tag: pin a version tag or a digest (it means :latest, which changes under you)"
                            ),
                        ),
                        Some("latest") => sink.run(
                            &c,
                            "LatestOrUntaggedBase",
                            Some(&ins.span),
                            format!(
                                "Base image {image} uses the latest tag: pin a version tag or a digest"
                            ),
                        ),
                        _ => {}
                    }
                }
            }
            InstructionKind::Arg(a) if !in_stage => {
                for d in &a.args {
                    if let Some(v) = opts.build_args.get(&d.name).or(d.default.as_ref()) {
                        meta.push((d.name.clone(), v.clone()));
                    }
                }
            }
            InstructionKind::Run(r) => {
                if r.mounts
                    .iter()
                    .any(|m| matches!(m, Mount::Bind(b) if b.from.is_none()))
                {
                    uses_context = true;
                }
                if ins.node.flags.is_empty() {
                    consecutive.push(ins);
                } else {
                    flush_runs(&mut consecutive, sink);
                }
                let text = run_text(ins).unwrap_or_default();
                let pm = analyse(&text);
                let span = Some(&ins.span);
                if (pm.apt_update && !pm.apt_install)
                    || (pm.apk_update && !pm.apk_add)
                    || (pm.dnf_makecache && pm.dnf_install.is_none())
                {
                    let what = if pm.apt_update {
                        "apt-get update"
                    } else if pm.apk_update {
                        "apk update"
                    } else {
                        "makecache"
                    };
                    sink.run(
                        &c,
                        "AptUpdateAlone",
                        span,
                        format!(
                            "{what} without an install in the same RUN: its package lists are cached in a layer of their own and go stale; update and install in one RUN"
                        ),
                    );
                }
                if pm.apt_install
                    && !pm.apt_clean
                    && !cache_mount(ins, &["/var/lib/apt", "/var/cache/apt"])
                {
                    sink.run(
                        &c,
                        "AptListsNotCleaned",
                        span,
                        "apt-get install without rm -rf /var/lib/apt/lists/* in the same RUN: the package lists stay in the layer".into(),
                    );
                }
                if pm.apk_add
                    && !pm.apk_no_cache
                    && !pm.apk_clean
                    && !cache_mount(ins, &["/var/cache/apk"])
                {
                    sink.run(
                        &c,
                        "AptListsNotCleaned",
                        span,
                        "apk add without --no-cache (or rm -rf /var/cache/apk/*) in the same RUN: the package index stays in the layer".into(),
                    );
                }
                if let Some(p) = &pm.dnf_install
                    && !pm.dnf_clean
                    && !cache_mount(ins, &["/var/cache/dnf", "/var/cache/yum"])
                {
                    sink.run(
                        &c,
                        "AptListsNotCleaned",
                        span,
                        format!(
                            "{p} install without {p} clean all in the same RUN: the package cache stays in the layer"
                        ),
                    );
                }
                if pm.pip_install && !pm.pip_no_cache && !cache_mount(ins, &["/root/.cache"]) {
                    sink.run(
                        &c,
                        "AptListsNotCleaned",
                        span,
                        "pip install without --no-cache-dir: pip's download cache stays in the layer".into(),
                    );
                }
                if pm.apt_install && !pm.apt_no_recommends {
                    sink.run(
                        &c,
                        "AptNoRecommends",
                        span,
                        "apt-get install without --no-install-recommends: recommended packages the image does not need are installed too".into(),
                    );
                }
                if pm.dnf_install.as_deref() == Some("dnf") && !pm.dnf_weak_off {
                    sink.run(
                        &c,
                        "AptNoRecommends",
                        span,
                        "dnf install without --setopt=install_weak_deps=False: weak dependencies the image does not need are installed too".into(),
                    );
                }
                if pm.cd && matches!(r.command, Command::Shell(_)) {
                    sink.run(
                        &c,
                        "CdInRun",
                        span,
                        "cd in RUN: use WORKDIR to change directories, the next instruction starts in the WORKDIR again".into(),
                    );
                }
                if let (Some(copy), Some(cmd)) = (copy_all, &pm.dependency_install) {
                    let cc = cfg_for(copy);
                    sink.run(
                        &cc,
                        "CopyAllBeforeDependencies",
                        Some(&copy.span),
                        format!(
                            "COPY of the whole context before `{cmd}` (line {}): any change to any file reruns the install; copy the dependency manifests first, install, then copy the rest",
                            ins.span.start_line
                        ),
                    );
                    copy_all = None;
                }
            }
            InstructionKind::Add(a) => {
                flush_runs(&mut consecutive, sink);
                let local: Vec<&String> = a.sources.iter().filter(|s| !is_remote(s)).collect();
                if !local.is_empty() {
                    uses_context = true;
                }
                let special = a.checksum.is_some() || a.keep_git_dir || a.unpack.is_some();
                if !special
                    && !local.is_empty()
                    && local.iter().all(|s| {
                        let l = s.to_ascii_lowercase();
                        !ARCHIVE_EXT.iter().any(|e| l.ends_with(e))
                    })
                {
                    let names: Vec<&str> = local.iter().map(|s| s.as_str()).collect();
                    sink.run(
                        &c,
                        "AddForLocalFile",
                        Some(&ins.span),
                        format!(
                            "ADD of local {} {}: use COPY, ADD is for URLs and archives to unpack",
                            if names.len() == 1 { "file" } else { "files" },
                            names.join(", ")
                        ),
                    );
                }
            }
            InstructionKind::Copy(cp) => {
                flush_runs(&mut consecutive, sink);
                if cp.from.is_none() {
                    uses_context = true;
                    if cp
                        .sources
                        .iter()
                        .any(|s| matches!(s.as_str(), "." | "./" | "/" | "*" | "./*"))
                    {
                        copy_all.get_or_insert(ins);
                    }
                }
            }
            _ => flush_runs(&mut consecutive, sink),
        }
    }
    flush_runs(&mut consecutive, sink);

    let facts = &opts.context;
    if let Some(size) = facts.size
        && !facts.has_dockerignore
        && uses_context
        && size > facts.large
    {
        sink.run(
            cfg,
            "LargeContextWithoutDockerignore",
            None,
            format!(
                "The build context holds more than {} MiB and has no .dockerignore: every build reads and hashes all of it; exclude what the build does not need (.git, build outputs, dependencies)",
                facts.large >> 20
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_analysis() {
        let pm = analyse(
            "apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*",
        );
        assert!(pm.apt_update && pm.apt_install && pm.apt_no_recommends && pm.apt_clean);
        let pm = analyse("apk add --no-cache git");
        assert!(pm.apk_add && pm.apk_no_cache);
        let pm = analyse("cd /src && make");
        assert!(pm.cd);
        let pm = analyse("python3 -m pip install -r requirements.txt");
        assert!(pm.pip_install && !pm.pip_no_cache && pm.dependency_install.is_some());
        let pm = analyse("echo apt-get update");
        assert!(!pm.apt_update);
    }
}

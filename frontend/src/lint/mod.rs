//! Build checks (`BuildKit`'s `linter` and the places `dockerfile2llb` calls it,
//! plus rbuild's own static rules): a parsed Dockerfile and the build's options in,
//! warnings (rule, message, location) out. Pure, like the rest of the frontend.
//!
//! - [`CheckConfig`]: the `# check=skip=...;error=true;experimental=...` options
//!   (the file's directive, or the `BUILDKIT_DOCKERFILE_CHECK` build arg, which
//!   replaces it), merged per instruction with a `# check=` comment right above it.
//! - [`lint`]: `BuildKit`'s 22 rules (names, messages and semantics of
//!   `frontend/dockerfile/linter/ruleset.go`), then rbuild's own rules ([`own`]).
//!   Check mode ([`LintOptions::all_stages`]) lints every stage; a build lints the
//!   stages its target reaches, as `BuildKit` does.
//! - [`RULES`]: every rule's name, description, documentation URL and level.

mod buildkit;
mod config;
pub mod own;

use std::collections::BTreeMap;

use rbuild_parser::{Span, edit_distance};
use serde::Serialize;

pub use config::{CheckConfig, check_directive};

/// Who defines a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// One of `BuildKit`'s build checks.
    Buildkit,
    /// rbuild's own rule, read from the Dockerfile.
    Rbuild,
    /// rbuild's own rule, read from the built image (run by the engine after a build).
    Image,
}

/// A check: its name, what it is about, where its documentation lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RuleInfo {
    pub name: &'static str,
    pub description: &'static str,
    /// The documentation page (`BuildKit`'s `docs.docker.com/go/dockerfile/rule/...`,
    /// or rbuild's `docs/checks/NAME.md`); empty when there is none.
    pub url: &'static str,
    /// 1 = warning (every `BuildKit` check reports level 1).
    pub level: u8,
    /// Runs only when enabled with `check=experimental=NAME|all`.
    pub experimental: bool,
    pub origin: Origin,
}

const fn bk(name: &'static str, description: &'static str, url: &'static str) -> RuleInfo {
    RuleInfo {
        name,
        description,
        url,
        level: 1,
        experimental: false,
        origin: Origin::Buildkit,
    }
}

/// Where rbuild's own rule documentation lives: `docs/checks/NAME.md` in the
/// repository, the `url` of those rules (a path relative to the repository:
/// the project has no public address yet). The same pages are built into the
/// binary ([`doc_page`], `rbuild check --explain NAME`).
pub const OWN_DOCS: &str = "docs/checks/";

/// The documentation page of one of rbuild's own rules (`docs/checks/NAME.md`,
/// embedded at build time).
pub fn doc_page(name: &str) -> Option<&'static str> {
    macro_rules! pages {
        ($($rule:literal),* $(,)?) => {
            match name {
                $($rule => Some(include_str!(concat!("../../../docs/checks/", $rule, ".md"))),)*
                _ => None,
            }
        };
    }
    pages!(
        "AptUpdateAlone",
        "AptListsNotCleaned",
        "AptNoRecommends",
        "AddForLocalFile",
        "LatestOrUntaggedBase",
        "CdInRun",
        "CopyAllBeforeDependencies",
        "TooManyLayers",
        "LargeContextWithoutDockerignore",
        "WastedSpace",
        "BuildToolsInFinalImage",
        "SecretInLayer",
        "WorldWritableFile",
        "SetuidFileAdded",
    )
}

const fn own(name: &'static str, description: &'static str, url: &'static str) -> RuleInfo {
    RuleInfo {
        name,
        description,
        url,
        level: 1,
        experimental: false,
        origin: Origin::Rbuild,
    }
}

const fn image(name: &'static str, description: &'static str, url: &'static str) -> RuleInfo {
    RuleInfo {
        name,
        description,
        url,
        level: 1,
        experimental: false,
        origin: Origin::Image,
    }
}

/// Every rule rbuild knows: `BuildKit`'s 22, then rbuild's static ones, then the
/// image-based ones the engine runs after a build.
pub static RULES: &[RuleInfo] = &[
    bk(
        "StageNameCasing",
        "Stage names should be lowercase",
        "https://docs.docker.com/go/dockerfile/rule/stage-name-casing/",
    ),
    bk(
        "FromAsCasing",
        "The 'as' keyword should match the case of the 'from' keyword",
        "https://docs.docker.com/go/dockerfile/rule/from-as-casing/",
    ),
    bk(
        "NoEmptyContinuation",
        "Empty continuation lines will become errors in a future release",
        "https://docs.docker.com/go/dockerfile/rule/no-empty-continuation/",
    ),
    bk(
        "ConsistentInstructionCasing",
        "All commands within the Dockerfile should use the same casing (either upper or lower)",
        "https://docs.docker.com/go/dockerfile/rule/consistent-instruction-casing/",
    ),
    bk(
        "DuplicateStageName",
        "Stage names should be unique",
        "https://docs.docker.com/go/dockerfile/rule/duplicate-stage-name/",
    ),
    bk(
        "ReservedStageName",
        "Reserved words should not be used as stage names",
        "https://docs.docker.com/go/dockerfile/rule/reserved-stage-name/",
    ),
    bk(
        "JSONArgsRecommended",
        "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals",
        "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/",
    ),
    bk(
        "MaintainerDeprecated",
        "The MAINTAINER instruction is deprecated, use a label instead to define an image author",
        "https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/",
    ),
    bk(
        "UndefinedArgInFrom",
        "FROM command must use declared ARGs",
        "https://docs.docker.com/go/dockerfile/rule/undefined-arg-in-from/",
    ),
    bk(
        "WorkdirRelativePath",
        "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes",
        "https://docs.docker.com/go/dockerfile/rule/workdir-relative-path/",
    ),
    bk(
        "UndefinedVar",
        "Variables should be defined before their use",
        "https://docs.docker.com/go/dockerfile/rule/undefined-var/",
    ),
    bk(
        "MultipleInstructionsDisallowed",
        "Multiple instructions of the same type should not be used in the same stage",
        "https://docs.docker.com/go/dockerfile/rule/multiple-instructions-disallowed/",
    ),
    bk(
        "LegacyKeyValueFormat",
        "Legacy key/value format with whitespace separator should not be used",
        "https://docs.docker.com/go/dockerfile/rule/legacy-key-value-format/",
    ),
    bk(
        "InvalidBaseImagePlatform",
        "Base image platform does not match expected target platform",
        // BuildKit's rule has no documentation page.
        "",
    ),
    bk(
        "RedundantTargetPlatform",
        "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior",
        "https://docs.docker.com/go/dockerfile/rule/redundant-target-platform/",
    ),
    bk(
        "SecretsUsedInArgOrEnv",
        "Sensitive data should not be used in the ARG or ENV commands",
        "https://docs.docker.com/go/dockerfile/rule/secrets-used-in-arg-or-env/",
    ),
    bk(
        "InvalidDefaultArgInFrom",
        "Default value for global ARG results in an empty or invalid base image name",
        "https://docs.docker.com/go/dockerfile/rule/invalid-default-arg-in-from/",
    ),
    bk(
        "FromPlatformFlagConstDisallowed",
        "FROM --platform flag should not use a constant value",
        "https://docs.docker.com/go/dockerfile/rule/from-platform-flag-const-disallowed/",
    ),
    bk(
        "CopyIgnoredFile",
        "Attempting to Copy file that is excluded by .dockerignore",
        "https://docs.docker.com/go/dockerfile/rule/copy-ignored-file/",
    ),
    RuleInfo {
        experimental: true,
        ..bk(
            "InvalidDefinitionDescription",
            "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment.",
            "https://docs.docker.com/go/dockerfile/rule/invalid-definition-description/",
        )
    },
    bk(
        "ExposeProtoCasing",
        "Protocol in EXPOSE instruction should be lowercase",
        "https://docs.docker.com/go/dockerfile/rule/expose-proto-casing/",
    ),
    bk(
        "ExposeInvalidFormat",
        "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release",
        "https://docs.docker.com/go/dockerfile/rule/expose-invalid-format/",
    ),
    own(
        "AptUpdateAlone",
        "apt-get update (or apk update, dnf/yum makecache) should be in the same RUN as the install it prepares",
        "docs/checks/AptUpdateAlone.md",
    ),
    own(
        "AptListsNotCleaned",
        "Package manager caches should be removed in the RUN that created them",
        "docs/checks/AptListsNotCleaned.md",
    ),
    own(
        "AptNoRecommends",
        "Package installs should not pull optional extras (recommends, pip's cache)",
        "docs/checks/AptNoRecommends.md",
    ),
    own(
        "AddForLocalFile",
        "COPY should be used instead of ADD for local files and directories",
        "docs/checks/AddForLocalFile.md",
    ),
    own(
        "LatestOrUntaggedBase",
        "Base images should be pinned to a tag other than latest, or a digest",
        "docs/checks/LatestOrUntaggedBase.md",
    ),
    own(
        "CdInRun",
        "WORKDIR should be used instead of cd in RUN",
        "docs/checks/CdInRun.md",
    ),
    own(
        "CopyAllBeforeDependencies",
        "Copying the whole context before installing dependencies defeats the layer cache",
        "docs/checks/CopyAllBeforeDependencies.md",
    ),
    own(
        "TooManyLayers",
        "Consecutive RUN instructions could be one",
        "docs/checks/TooManyLayers.md",
    ),
    own(
        "LargeContextWithoutDockerignore",
        "A large build context should have a .dockerignore",
        "docs/checks/LargeContextWithoutDockerignore.md",
    ),
    image(
        "WastedSpace",
        "Bytes a layer adds that a later layer deletes or overwrites",
        "docs/checks/WastedSpace.md",
    ),
    image(
        "BuildToolsInFinalImage",
        "Compilers and package caches should not be in the final stage of a multi-stage build",
        "docs/checks/BuildToolsInFinalImage.md",
    ),
    image(
        "SecretInLayer",
        "A secret or private key ended up in a layer",
        "docs/checks/SecretInLayer.md",
    ),
    image(
        "WorldWritableFile",
        "Files added by the build should not be world-writable",
        "docs/checks/WorldWritableFile.md",
    ),
    image(
        "SetuidFileAdded",
        "The build added a setuid or setgid file",
        "docs/checks/SetuidFileAdded.md",
    ),
];

/// The rule called `name`.
pub fn rule(name: &str) -> Option<&'static RuleInfo> {
    RULES.iter().find(|r| r.name == name)
}

fn must(name: &str) -> &'static RuleInfo {
    rule(name).unwrap_or(&RULES[0])
}

/// One warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LintWarning {
    pub rule: &'static str,
    /// The message (`BuildKit`'s `Detail`), exactly as `BuildKit` words it.
    pub message: String,
    /// 1-based first line and column of the instruction (0 when not about a line).
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub level: u8,
    pub url: &'static str,
    pub description: &'static str,
}

impl LintWarning {
    /// A warning of `rule` at `span`.
    pub fn new(rule: &'static RuleInfo, message: String, span: Option<&Span>) -> Self {
        Self {
            rule: rule.name,
            message,
            line: span.map_or(0, |s| s.start_line),
            column: span.map_or(0, |s| s.start_column),
            end_line: span.map_or(0, |s| s.end_line),
            level: rule.level,
            url: rule.url,
            description: rule.description,
        }
    }

    /// buildx's summary line: `Rule: message (line N)`.
    pub fn short(&self) -> String {
        if self.line > 0 {
            format!("{}: {} (line {})", self.rule, self.message, self.line)
        } else {
            format!("{}: {}", self.rule, self.message)
        }
    }
}

/// Why the checks (or the part of the build they walk) fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LintFailure {
    /// `check=error=true` and a rule fired: `lint violation found for rules: A, B`.
    LintViolation { message: String, line: usize },
    /// What `BuildKit`'s conversion refuses while it runs the checks (an empty
    /// platform, a bad `# check=` value, an unknown target, ...).
    Build { message: String, line: usize },
    /// The Dockerfile does not parse (`BuildKit`'s words where they differ from the parser's).
    Parse { message: String, line: usize },
}

impl LintFailure {
    pub fn message(&self) -> &str {
        match self {
            Self::LintViolation { message, .. }
            | Self::Build { message, .. }
            | Self::Parse { message, .. } => message,
        }
    }
}

/// The outcome of [`lint`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LintReport {
    /// Sorted by (line, message), as `BuildKit`'s harness compares them.
    pub warnings: Vec<LintWarning>,
    pub error: Option<LintFailure>,
    /// The effective configuration (for the image rules the engine runs later).
    #[serde(skip)]
    pub config: CheckConfig,
    /// How many base images of the linted stages [`LintOptions::base_image`] did
    /// not know (their platform is unchecked).
    #[serde(skip)]
    pub unresolved_bases: usize,
    /// The image at the bottom of the target stage's chain of `FROM`s (its
    /// name after the meta ARGs; `None` for `scratch`, or when the checks
    /// stopped before the stages were read): the layers below the build's own.
    #[serde(skip)]
    pub final_base: Option<String>,
}

/// What [`lint`] needs besides the Dockerfile.
pub struct LintOptions<'a> {
    /// `--build-arg`s (`BUILDKIT_DOCKERFILE_CHECK` among them).
    pub build_args: &'a BTreeMap<String, String>,
    /// `--target` (none: the last stage).
    pub target: Option<&'a str>,
    /// Check mode: lint every stage (`docker build --check` without a target).
    pub all_stages: bool,
    /// The context's `.dockerignore` patterns, if it has one.
    pub dockerignore: Option<&'a [String]>,
    /// `TARGETPLATFORM` and `BUILDPLATFORM`.
    pub platform: &'a rbuild_oci::Platform,
    pub build_platform: &'a rbuild_oci::Platform,
    /// A base image's config (`FROM` name after the meta ARGs), when the caller
    /// knows it: its `Env` starts the stage's (unknown: `PATH` only), and its
    /// platform is checked (`InvalidBaseImagePlatform`).
    pub base_image: &'a dyn Fn(&str) -> Option<rbuild_oci::ImageConfig>,
    /// Facts about the context for rbuild's own rules.
    pub context: own::ContextFacts,
    /// Run rbuild's own rules too (off: `BuildKit`'s rules alone, as `BuildKit` reports).
    pub rbuild_rules: bool,
}

/// Runs every static check on `df` (parsed from `src`).
pub fn lint(src: &str, df: &rbuild_parser::Dockerfile, opts: &LintOptions<'_>) -> LintReport {
    let mut report = buildkit::run(src, df, opts);
    if opts.rbuild_rules
        && (report.error.is_none()
            || matches!(report.error, Some(LintFailure::LintViolation { .. })))
    {
        let mut sink = Sink::default();
        own::run(src, df, opts, &report.config, &mut sink);
        if !sink.warnings.is_empty() {
            report.warnings.append(&mut sink.warnings);
            if report.config.error && report.error.is_none() {
                report.error = Some(violation(&sink.called, &report.warnings));
            } else if let Some(LintFailure::LintViolation { message, line }) = &report.error {
                let mut called: Vec<&str> = message
                    .trim_start_matches("lint violation found for rules: ")
                    .split(", ")
                    .collect();
                called.extend(sink.called.iter().copied());
                called.sort_unstable();
                called.dedup();
                report.error = Some(LintFailure::LintViolation {
                    message: format!("lint violation found for rules: {}", called.join(", ")),
                    line: *line,
                });
            }
        }
    }
    sort_warnings(&mut report.warnings);
    report
}

/// The checks of a Dockerfile that does not parse: the warnings `BuildKit` gives
/// before its error (see [`LintFailure::Parse`]).
pub fn lint_parse_error(
    src: &str,
    err: &rbuild_parser::ParseError,
    opts: &LintOptions<'_>,
) -> LintReport {
    let mut r = buildkit::run_parse_error(src, err, opts);
    sort_warnings(&mut r.warnings);
    r
}

/// Sorts by (line, message), as `BuildKit`'s test harness does.
pub fn sort_warnings(w: &mut [LintWarning]) {
    w.sort_by(|a, b| (a.line, &a.message).cmp(&(b.line, &b.message)));
}

fn violation(called: &[&'static str], warnings: &[LintWarning]) -> LintFailure {
    let mut names: Vec<&str> = called.to_vec();
    names.sort_unstable();
    names.dedup();
    let line = warnings
        .iter()
        .filter(|w| names.contains(&w.rule))
        .map(|w| w.line)
        .min()
        .unwrap_or(0);
    LintFailure::LintViolation {
        message: format!("lint violation found for rules: {}", names.join(", ")),
        line,
    }
}

/// Collects warnings for the rules a configuration lets through.
#[derive(Default)]
pub(crate) struct Sink {
    pub(crate) warnings: Vec<LintWarning>,
    pub(crate) called: Vec<&'static str>,
}

impl Sink {
    pub(crate) fn run(&mut self, cfg: &CheckConfig, name: &str, span: Option<&Span>, msg: String) {
        let rule = must(name);
        if !cfg.enabled(rule) {
            return;
        }
        self.called.push(rule.name);
        self.warnings.push(LintWarning::new(rule, msg, span));
    }
}

/// `BuildKit`'s `suggest.Search` (case-sensitive): the option closest to `val` by
/// Levenshtein distance, if under 3; none when `val` is one of the options.
pub(crate) fn suggest_search<'a>(
    val: &str,
    options: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best = None;
    let mut min = 3;
    for opt in options {
        if opt == val {
            return None;
        }
        let d = edit_distance(val, opt);
        if d < min {
            min = d;
            best = Some(opt);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn final_base(src: &str, target: Option<&str>, args: &[(&str, &str)]) -> Option<String> {
        let df = rbuild_parser::parse(src).unwrap();
        let build_args: BTreeMap<String, String> = args
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let p = rbuild_oci::Platform::host();
        let opts = LintOptions {
            build_args: &build_args,
            target,
            all_stages: false,
            dockerignore: None,
            platform: &p,
            build_platform: &p,
            base_image: &|_| None,
            context: own::ContextFacts::default(),
            rbuild_rules: true,
        };
        lint(src, &df, &opts).final_base
    }

    #[test]
    fn final_base_follows_the_targets_stages_and_the_meta_args() {
        let src = "ARG B=busybox:1.36\nFROM ${B} AS a\nFROM a AS b\nFROM scratch AS c\nFROM c\n";
        assert_eq!(
            final_base(src, Some("b"), &[]).as_deref(),
            Some("busybox:1.36")
        );
        assert_eq!(
            final_base(src, Some("B"), &[("B", "alpine:3")]).as_deref(),
            Some("alpine:3")
        );
        assert_eq!(final_base(src, Some("c"), &[]), None);
        assert_eq!(final_base(src, None, &[]), None);
        assert_eq!(
            final_base("FROM debian:12 AS x\nFROM x\n", None, &[]).as_deref(),
            Some("debian:12")
        );
    }

    #[test]
    fn every_own_rule_has_its_page_at_its_url() {
        for r in RULES {
            match r.origin {
                Origin::Buildkit => {
                    assert!(doc_page(r.name).is_none(), "{}", r.name);
                    assert!(
                        r.url.is_empty() || r.url.starts_with("https://docs.docker.com/"),
                        "{}",
                        r.url
                    );
                }
                Origin::Rbuild | Origin::Image => {
                    assert_eq!(r.url, format!("{OWN_DOCS}{}.md", r.name));
                    let page = doc_page(r.name).unwrap_or_else(|| panic!("{} has no page", r.name));
                    assert!(page.starts_with(&format!("# {}\n", r.name)), "{}", r.name);
                }
            }
        }
    }
}

//! Every vector of `/work/shared/peer-tests/buildkit-checks/cases` (BuildKit's own
//! build-check tests): rbuild's warnings (rule, line, message, level, sorted by
//! (line, message)) and the error outcome must be BuildKit's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rbuild_frontend::dockerignore::read_all;
use rbuild_frontend::lint::{LintFailure, LintOptions, LintReport, lint};
use rbuild_oci::Platform;
use serde_json::Value;

fn cases_dir() -> PathBuf {
    let dir = std::env::var_os("RBUILD_BUILDKIT_CHECKS")
        .map_or_else(
            || PathBuf::from("/work/shared/peer-tests/buildkit-checks"),
            PathBuf::from,
        )
        .join("cases");
    assert!(
        dir.is_dir(),
        "{} is missing: the BuildKit build-check vectors (peer-tests/buildkit-checks) are needed",
        dir.display()
    );
    dir
}

fn run_case(dir: &Path, all_stages: bool) -> LintReport {
    let src = fs_err::read_to_string(dir.join("Dockerfile")).unwrap();
    let args: Value = fs_err::read_to_string(dir.join("args.json"))
        .map_or(Value::Null, |s| serde_json::from_str(&s).unwrap());
    let build_args: BTreeMap<String, String> = args["build_args"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let target = args["frontend_attrs"]["target"].as_str().map(str::to_owned);
    let ignore = fs_err::read_to_string(dir.join("dockerignore"))
        .ok()
        .map(|s| read_all(&s));
    let parsed = rbuild_parser::parse(&src);
    let platform = Platform::host();
    let opts = LintOptions {
        build_args: &build_args,
        target: target.as_deref(),
        all_stages: all_stages && target.is_none(),
        dockerignore: ignore.as_deref(),
        platform: &platform,
        build_platform: &platform,
        base_image: &|_| None,
        context: rbuild_frontend::lint::own::ContextFacts::default(),
        rbuild_rules: false,
    };
    match parsed {
        Ok(df) => lint(&src, &df, &opts),
        Err(e) => rbuild_frontend::lint::lint_parse_error(&src, &e, &opts),
    }
}

fn buildkit_only(r: &LintReport) -> Vec<(String, usize, String, u8)> {
    r.warnings
        .iter()
        .filter(|w| {
            rbuild_frontend::lint::rule(w.rule).unwrap().origin
                == rbuild_frontend::lint::Origin::Buildkit
        })
        .map(|w| (w.rule.to_owned(), w.line, w.message.clone(), w.level))
        .collect()
}

fn expected_list(v: &Value, lines: bool) -> Vec<(String, usize, String, u8)> {
    let mut out: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let asserted = w["line_asserted"].as_bool().unwrap_or(true);
            (
                w["rule"].as_str().unwrap().to_owned(),
                if lines && asserted {
                    usize::try_from(w["line"].as_u64().unwrap()).unwrap()
                } else {
                    0
                },
                w["detail"].as_str().unwrap().to_owned(),
                u8::try_from(w["level"].as_u64().unwrap_or(1)).unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| (a.1, &a.2).cmp(&(b.1, &b.2)));
    out
}

/// Lines the harness does not check are compared as 0.
fn mask(
    mut got: Vec<(String, usize, String, u8)>,
    want: &Value,
) -> Vec<(String, usize, String, u8)> {
    let unasserted: Vec<(String, String)> = want
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["line_asserted"].as_bool() == Some(false))
        .map(|w| {
            (
                w["rule"].as_str().unwrap().to_owned(),
                w["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for g in &mut got {
        if unasserted.contains(&(g.0.clone(), g.2.clone())) {
            g.1 = 0;
        }
    }
    got.sort_by(|a, b| (a.1, &a.2).cmp(&(b.1, &b.2)));
    got
}

#[test]
fn buildkit_check_vectors() {
    let dir = cases_dir();
    let mut cases: Vec<PathBuf> = fs_err::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "{} has no cases", dir.display());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let want: Value =
            serde_json::from_str(&fs_err::read_to_string(case.join("expected.json")).unwrap())
                .unwrap();
        let report = run_case(case, true);
        let got = mask(buildkit_only(&report), &want["warnings"]);
        let exp = expected_list(&want["warnings"], true);
        if got != exp {
            failures.push(format!("{name}: warnings\n  got  {got:?}\n  want {exp:?}"));
        }
        let want_err = want["error"].as_bool().unwrap_or(false);
        match (&report.error, want_err) {
            (None, false) => {}
            (Some(e), true) => {
                let kind = match e {
                    LintFailure::LintViolation { .. } => "lint_violation",
                    LintFailure::Build { .. } => "build",
                    LintFailure::Parse { .. } => "parse",
                };
                if want["error_kind"].as_str() != Some(kind) {
                    failures.push(format!(
                        "{name}: error kind {kind}, expected {}",
                        want["error_kind"]
                    ));
                }
                if let Some(m) = want["error_message"].as_str()
                    && e.message() != m
                {
                    failures.push(format!("{name}: error {:?}, expected {m:?}", e.message()));
                }
            }
            (got, _) => failures.push(format!("{name}: error {got:?}, expected error={want_err}")),
        }
        if let Some(bw) = want.get("build_warnings") {
            let report = run_case(case, false);
            let got = mask(buildkit_only(&report), bw);
            let exp = expected_list(bw, true);
            if got != exp {
                failures.push(format!(
                    "{name}: build warnings\n  got  {got:?}\n  want {exp:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

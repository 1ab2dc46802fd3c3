//! moby/patternmatcher's table of single-pattern matches
//! (`../shared/peer-tests/patternmatcher/matches.tsv`): every row must give the same
//! answer through `matches` (moby's `MatchesOrParentMatches`) and through
//! `matches_using_parent_results`, both walking down from the top and without context.

use std::path::PathBuf;

use rbuild_frontend::dockerignore::{MatchInfo, PatternMatcher};

/// The ancestors of `path` that moby's own test walks first (`filepath.Dir`, split).
fn ancestors(path: &str) -> Vec<String> {
    let parent = match path.rfind('/') {
        Some(i) => rbuild_frontend::dockerignore::clean(&path[..=i]),
        None => return Vec::new(),
    };
    if parent == "." {
        return Vec::new();
    }
    let parts: Vec<&str> = parent.split('/').collect();
    (1..=parts.len()).map(|n| parts[..n].join("/")).collect()
}

#[test]
fn matches_tsv() {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/peer-tests/patternmatcher/matches.tsv"
    ));
    let Ok(text) = std::fs::read_to_string(&path) else {
        panic!("cannot run: {} is absent", path.display());
    };
    let mut passed = 0;
    let mut failures = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "line {}: {line:?}", i + 1);
        let (pattern, file) = (cols[0], cols[1]);
        let want = match cols[2] {
            "true" => true,
            "false" => false,
            other => panic!("line {}: bad expectation {other:?}", i + 1),
        };
        let pm = match PatternMatcher::new([pattern]) {
            Ok(pm) => pm,
            Err(e) => {
                failures.push(format!("{pattern:?}: rejected: {e}"));
                continue;
            }
        };
        let direct = pm.matches(file);

        let mut info = MatchInfo::default();
        for dir in ancestors(file) {
            info = pm.matches_using_parent_results(&dir, &info).1;
        }
        let walked = pm.matches_using_parent_results(file, &info).0;
        let no_context = pm
            .matches_using_parent_results(file, &MatchInfo::default())
            .0;

        if direct == want && walked == want && no_context == want {
            passed += 1;
        } else {
            failures.push(format!(
                "{pattern:?} vs {file:?}: want {want}, matches={direct} walked={walked} no_context={no_context}"
            ));
        }
    }
    println!("matches.tsv: {passed} passed, {} failed", failures.len());
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    assert!(passed >= 60, "too few rows read: {passed}");
}

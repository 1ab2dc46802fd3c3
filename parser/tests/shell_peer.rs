//! `BuildKit`'s own test vectors for its shell-word lexer
//! (`frontend/dockerfile/shell/envVarTest` and `wordsTest`), run through ours.
//! Every `A` and `U` line and every words case must pass.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rbuild_parser::shell::{Env, Lexer, env_from_list};

fn peer_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/peer-tests/buildkit-shell"
    ));
    assert!(
        dir.is_dir(),
        "cannot run: {} is absent (peer test vectors live beside the checkout)",
        dir.display()
    );
    dir
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Runs one word through the lexer with `env` given three ways (map, pair list,
/// `KEY=VALUE` list) and checks they agree; returns the result or `None` on error.
fn word_with_all_envs(lex: Lexer, source: &str, entries: &[&str]) -> Option<String> {
    let map = env_from_list(entries);
    let pairs: Vec<(String, String)> = map.clone().into_iter().collect();
    let std_map: std::collections::HashMap<String, String> = map.clone().into_iter().collect();
    let a = lex.process_word(source, &map).map(|e| e.result).ok();
    let b = lex.process_word(source, &pairs).map(|e| e.result).ok();
    let c = lex
        .process_word(source, &std_map as &dyn Env)
        .map(|e| e.result)
        .ok();
    assert_eq!(a, b, "map and pair list disagree on {source:?}");
    assert_eq!(a, c, "BTreeMap and HashMap disagree on {source:?}");
    a
}

#[test]
fn env_var_test() {
    let dir = peer_dir();
    let text = read(&dir.join("envVarTest"));
    let env = ["PWD=/home", "SHELL=bash", "KOREAN=한국어", "NULL="];
    let lex = Lexer::new('\\');
    let (mut passed, mut skipped) = (0, 0);
    let mut failures = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        if raw.starts_with('#') || raw.trim().is_empty() {
            continue;
        }
        let line = raw.trim();
        let parts: Vec<&str> = line.split('|').collect();
        assert_eq!(parts.len(), 3, "line {lineno}: expected 3 fields: {raw:?}");
        let platform = parts[0].trim();
        let source = parts[1].trim();
        let expected = parts[2].trim();
        match platform {
            "A" | "U" => {}
            "W" => {
                skipped += 1;
                continue;
            }
            other => panic!("line {lineno}: unknown platform {other:?}"),
        }
        let got = word_with_all_envs(lex, source, &env);
        let ok = if expected == "error" {
            got.is_none()
        } else {
            got.as_deref() == Some(expected)
        };
        if ok {
            passed += 1;
        } else {
            failures.push(format!(
                "line {lineno}: {source:?}: expected {expected:?}, got {got:?}"
            ));
        }
    }
    println!(
        "envVarTest: {passed} passed, {} failed, {skipped} skipped (Windows-only)",
        failures.len()
    );
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    assert!(passed > 200, "too few cases read: {passed}");
}

#[test]
fn words_test() {
    let dir = peer_dir();
    let text = read(&dir.join("wordsTest"));
    let lex = Lexer::new('\\');
    let mut env: Vec<String> = Vec::new();
    let mut passed = 0;
    let mut failures = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("ENV ") {
            // Trailing spaces of the value are significant.
            env.push(rest.trim_start_matches(' ').to_owned());
            continue;
        }
        let parts: Vec<&str> = line.split('|').collect();
        assert_eq!(parts.len(), 2, "line {lineno}: expected one '|': {line:?}");
        let input = parts[0].trim();
        let expected: Vec<&str> = parts[1].trim_start_matches(' ').split(',').collect();
        let map: BTreeMap<String, String> = env_from_list(&env);
        let got = match lex.process_words(input, &map) {
            Ok(words) => words,
            Err(_) => vec!["error".to_owned()],
        };
        if got == expected {
            passed += 1;
        } else {
            failures.push(format!(
                "line {lineno}: {input:?}: expected {expected:?}, got {got:?}"
            ));
        }
    }
    println!("wordsTest: {passed} passed, {} failed", failures.len());
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    assert!(passed > 20, "too few cases read: {passed}");
}

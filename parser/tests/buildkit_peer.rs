//! BuildKit's own parser test vectors: every `testfiles/*/Dockerfile` dumps to
//! its `result` byte for byte; every `testfiles-negative/*/Dockerfile` is rejected.

use std::path::{Path, PathBuf};

fn peer_dir() -> PathBuf {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/peer-tests/buildkit-parser"
    ));
    assert!(dir.is_dir(), "cannot run: {} is absent", dir.display());
    dir.to_path_buf()
}

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    cases.sort();
    cases
}

#[test]
fn testfiles_dump_like_buildkit() {
    let dir = peer_dir();
    let cases = cases(&dir.join("testfiles"));
    let mut failures = Vec::new();
    for case in &cases {
        let src = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
        let want = std::fs::read_to_string(case.join("result")).unwrap();
        match rbuild_parser::parse_ast(&src) {
            Ok(ast) => {
                let got = ast.dump();
                if got != want {
                    failures.push(format!(
                        "{}:\n--- want\n{want}--- got\n{got}",
                        case.display()
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", case.display())),
        }
    }
    println!(
        "buildkit parser testfiles: {}/{} match",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(
        cases.len() >= 33,
        "expected 33 cases, found {}",
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn negative_testfiles_are_rejected() {
    let dir = peer_dir();
    let cases = cases(&dir.join("testfiles-negative"));
    let mut accepted = Vec::new();
    for case in &cases {
        let src = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
        if let Ok(df) = rbuild_parser::parse(&src) {
            accepted.push(format!("{}: {df:?}", case.display()));
        }
    }
    println!(
        "buildkit parser negative testfiles: {}/{} rejected",
        cases.len() - accepted.len(),
        cases.len()
    );
    assert_eq!(cases.len(), 4);
    assert!(accepted.is_empty(), "{}", accepted.join("\n"));
}

//! Behaviour of the `.dockerignore` reader and matcher beyond moby's match table:
//! ordering and exclusions, `ReadAll` parsing, `filepath.Match` rules and errors,
//! the walk variant, and the directory-skipping helper.

use rbuild_frontend::dockerignore::{
    MatchInfo, PatternError, PatternMatcher, clean, load, read_all, read_all_bytes,
};

fn pm(patterns: &[&str]) -> PatternMatcher {
    PatternMatcher::new(patterns).unwrap_or_else(|e| panic!("{patterns:?}: {e}"))
}

/// The verdict a top-down walk gives `path` (as `BuildKit`'s context walker computes it).
fn walked(m: &PatternMatcher, path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let mut info = MatchInfo::default();
    let mut verdict = false;
    for n in 1..=parts.len() {
        let (v, i) = m.matches_using_parent_results(&parts[..n].join("/"), &info);
        verdict = v;
        info = i;
    }
    verdict
}

#[test]
fn last_matching_pattern_wins() {
    assert!(pm(&["*"]).matches("fileutils.go"));
    assert!(pm(&["*.go"]).matches("fileutils.go"));
    assert!(pm(&["!fileutils.go", "*.go"]).matches("fileutils.go"));
    assert!(!pm(&["*.go", "!fileutils.go"]).matches("fileutils.go"));
    assert!(!pm(&["docs", "!docs/README.md"]).matches("docs/README.md"));
    assert!(!pm(&["docs/", "!docs/README.md"]).matches("docs/README.md"));
    assert!(!pm(&["docs/*", "!docs/README.md"]).matches("docs/README.md"));
    assert!(pm(&["docs", "!docs/README.md"]).matches("docs/other.md"));
    assert!(!pm(&[]).matches("any/path/there"));
}

#[test]
fn exclusions_and_parent_directories() {
    let m = pm(&["**", "!util/docker/web"]);
    assert!(!m.matches("util/docker/web/foo"));
    assert!(m.matches("util/docker/other"));
    assert!(m.has_exclusions());
    assert!(pm(&["**", "!util/docker/web", "util/docker/web/foo"]).matches("util/docker/web/foo"));
    let whl = "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl";
    assert!(!pm(&["**", &format!("!{whl}")]).matches(whl));
    assert!(!pm(&["**", "!dist/*.whl"]).matches(whl));
    // A directory pattern excludes everything below it.
    let m = pm(&["node_modules", "build/**", "*.log", "**/*.tmp"]);
    assert!(m.matches("node_modules/x/y/z.js"));
    assert!(!m.matches("src/node_modules/x"));
    assert!(m.matches("build/out/bin"));
    assert!(!m.matches("build"));
    assert!(m.matches("app.log"));
    assert!(!m.matches("logs/app.log"));
    assert!(m.matches("a/b/c.tmp"));
    assert!(m.matches("c.tmp/inner"));
}

#[test]
fn exact_and_walk_variants() {
    let m = pm(&["docs"]);
    assert!(m.matches_exact("docs"));
    assert!(!m.matches_exact("docs/a"));
    assert!(m.matches("docs/a"));
    assert!(walked(&m, "docs/a/b"));
    // The walk reuses the parent's per-pattern results; like moby's
    // MatchesUsingParentResults it then checks a later pattern against the path
    // alone, which can differ from `matches` (BuildKit's walker gives `true` here).
    let m = pm(&["a/b", "!a"]);
    assert!(!m.matches("a/b"));
    assert!(walked(&m, "a/b"));
    // Without context the walk variant looks at the parents itself.
    assert!(
        !m.matches_using_parent_results("a/b", &MatchInfo::default())
            .0
    );
}

#[test]
fn filepath_match_rules() {
    let cases: &[(&str, &str, bool)] = &[
        ("abc", "abc", true),
        ("*", "abc", true),
        ("*c", "abc", true),
        ("a*", "a", true),
        ("a*", "abc", true),
        ("a*", "ab/c", true),
        ("a*/b", "abc/b", true),
        ("a*/b", "a/c/b", false),
        ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
        ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
        ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
        ("a*b?c*x", "abxbbxdbxebxczzx", true),
        ("a*b?c*x", "abxbbxdbxebxczzy", false),
        ("ab[c]", "abc", true),
        ("ab[b-d]", "abc", true),
        ("ab[e-g]", "abc", false),
        ("ab[^c]", "abc", false),
        ("ab[^b-d]", "abc", false),
        ("ab[^e-g]", "abc", true),
        ("a\\*b", "a*b", true),
        ("a\\*b", "ab", false),
        ("a?b", "a☺b", true),
        ("a[^a]b", "a☺b", true),
        ("a???b", "a☺b", false),
        ("a[^a][^a][^a]b", "a☺b", false),
        ("[a-ζ]*", "α", true),
        ("*[a-ζ]", "A", false),
        ("a?b", "a/b", false),
        ("a*b", "a/b", false),
        ("[\\]a]", "]", true),
        ("[\\-]", "-", true),
        ("[x\\-]", "x", true),
        ("[x\\-]", "-", true),
        ("[x\\-]", "z", false),
        ("[\\-x]", "x", true),
        ("[\\-x]", "-", true),
        ("[\\-x]", "a", false),
        ("*x", "xxx", true),
        ("a\\\\", "a\\", true),
    ];
    for &(pattern, path, want) in cases {
        assert_eq!(
            pm(&[pattern]).matches(path),
            want,
            "{pattern:?} vs {path:?}"
        );
    }
}

#[test]
fn bad_patterns_are_errors() {
    for bad in [
        "[]a]",
        "[-]",
        "[x-]",
        "[-x]",
        "\\",
        "[a-b-c]",
        "[",
        "[^",
        "[^bc",
        "a[",
        "[x\\",
        // Valid for filepath.Match, rejected by Go's regexp (l > O).
        "[Local-Only]/",
    ] {
        match PatternMatcher::new([bad]) {
            Err(PatternError::BadPattern { reason, .. }) => {
                assert!(!reason.is_empty(), "{bad:?}");
            }
            other => panic!("{bad:?}: expected a bad-pattern error, got {other:?}"),
        }
    }
    let err = PatternMatcher::new(["ok", "!"]).unwrap_err();
    assert!(matches!(err, PatternError::IllegalExclusion));
    assert_eq!(err.to_string(), "illegal exclusion pattern: \"!\"");
    let err = PatternMatcher::new(["a["]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "syntax error in pattern \"a[\": unterminated '['"
    );
}

#[test]
fn moby_regexp_quirks_are_kept() {
    // moby escapes `.+()|{}$` and nothing else that the regexp would read.
    assert!(pm(&["a.|)$(}+{bc"]).matches("a.|)$(}+{bc"));
    assert!(pm(&["a(b)c/def"]).matches("a(b)c/def/x"));
    // `*` inside brackets becomes `[^/]*` in moby's regexp, so `[*]` is the class
    // `[[^/]` repeated, then a literal `]`.
    let m = pm(&["[*]"]);
    assert!(m.matches("]"));
    assert!(m.matches("[^]"));
    assert!(!m.matches("*"));
    // An escaped letter is a regexp escape: `\d` is a digit, as in Go.
    assert!(pm(&["v\\d"]).matches("v7"));
    // Wildcards do not cross `/` but do match a newline, except `**`'s `.`.
    assert!(pm(&["a*"]).matches("a\nb"));
}

#[test]
fn patterns_are_trimmed_and_cleaned() {
    let m = pm(&["  docs  ", "", "./build/", "x/../y", "  !docs/README.md"]);
    let strs: Vec<&str> = m
        .patterns()
        .iter()
        .map(rbuild_frontend::dockerignore::Pattern::as_str)
        .collect();
    assert_eq!(strs, ["docs", "build", "y", "docs/README.md"]);
    assert!(m.patterns()[3].is_exclusion());
    assert!(m.has_exclusions());
    assert!(m.matches("build/x"));
}

#[test]
fn read_all_like_moby() {
    let content =
        "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! ";
    assert_eq!(
        read_all(content),
        [
            "test1",
            "test2",
            "a/file/here",
            "lastfile",
            "!inverted/abs/path",
            "!",
            "!"
        ]
    );
    let content = "\u{feff}# comment\r\n./src/../bin/\r\n  *.o  \r\n #not a comment\n/\n//x//y/.\n\t!\t./keep/me/..\n";
    assert_eq!(
        read_all(content),
        ["bin", "*.o", "#not a comment", "/", "x/y", "!keep"]
    );
    assert!(read_all("").is_empty());
    assert_eq!(read_all_bytes(b"a\xffb\n"), ["a\u{fffd}b"]);
    // The result feeds the matcher.
    let m = PatternMatcher::new(read_all("*.md\n!README.md\n")).unwrap();
    assert!(m.matches("CHANGES.md") && !m.matches("README.md"));
}

#[test]
fn go_filepath_clean() {
    let cases = [
        ("", "."),
        (".", "."),
        ("./", "."),
        ("a/./b/", "a/b"),
        ("a//b", "a/b"),
        ("a/../..", ".."),
        ("../a/../../b", "../../b"),
        ("/../a", "/a"),
        ("/", "/"),
        ("//", "/"),
        ("/a/b/../../..", "/"),
        ("!./x", "!./x"),
    ];
    for (input, want) in cases {
        assert_eq!(clean(input), want, "{input:?}");
    }
}

#[test]
fn skipping_excluded_directories() {
    // No exclusions: an excluded directory is never entered.
    let m = pm(&["node_modules", "*.log"]);
    assert!(m.only_prefix_exclusions());
    assert!(m.can_skip_excluded_dir("node_modules"));

    // A plain exclusion below the directory keeps it open, and only it.
    let m = pm(&["docs", "!docs/keep/README.md"]);
    assert!(m.only_prefix_exclusions());
    assert!(!m.can_skip_excluded_dir("docs"));
    assert!(!m.can_skip_excluded_dir("docs/keep"));
    assert!(m.can_skip_excluded_dir("docs/other"));
    assert!(m.can_skip_excluded_dir("doc"));

    // A trailing `/**` or `/*` still counts as a plain prefix.
    let m = pm(&["a", "!a/b/**"]);
    assert!(m.only_prefix_exclusions());
    assert!(!m.can_skip_excluded_dir("a"));
    assert!(m.can_skip_excluded_dir("a/c"));

    // Any wildcard in an exclusion could re-include something anywhere.
    let m = pm(&["docs", "!**/*.md"]);
    assert!(!m.only_prefix_exclusions());
    assert!(!m.can_skip_excluded_dir("docs"));
    assert!(!m.can_skip_excluded_dir("docs/deep/er"));
}

#[test]
fn skipping_unmatched_directories_for_includes() {
    let m = pm(&["src/app", "assets/**"]);
    assert!(m.only_prefix_inclusions());
    assert!(!m.can_skip_unmatched_dir("src"));
    assert!(m.can_skip_unmatched_dir("target"));
    assert!(!m.can_skip_unmatched_dir("assets"));
    let m = pm(&["src/*.rs"]);
    assert!(!m.only_prefix_inclusions());
    assert!(!m.can_skip_unmatched_dir("target"));
}

#[test]
fn load_prefers_the_dockerfile_specific_file() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path();
    assert!(load(ctx, None).unwrap().is_none());
    std::fs::write(ctx.join(".dockerignore"), "a\n").unwrap();
    let (path, pats) = load(ctx, Some(&ctx.join("Dockerfile"))).unwrap().unwrap();
    assert_eq!(path, ctx.join(".dockerignore"));
    assert_eq!(pats, ["a"]);
    std::fs::write(ctx.join("Dockerfile.dockerignore"), "b\n").unwrap();
    let (path, pats) = load(ctx, Some(&ctx.join("Dockerfile"))).unwrap().unwrap();
    assert_eq!(path, ctx.join("Dockerfile.dockerignore"));
    assert_eq!(pats, ["b"]);
    // A read error names the file.
    std::fs::create_dir(ctx.join("x.dockerignore")).unwrap();
    let err = load(ctx, Some(&ctx.join("x"))).unwrap_err();
    assert!(err.to_string().contains("x.dockerignore"), "{err}");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    const NAMES: &[&str] = &["a", "b", "c.md"];

    /// Every path of up to three components over NAMES.
    fn universe() -> Vec<String> {
        let mut out: Vec<String> = NAMES.iter().map(|s| (*s).to_owned()).collect();
        for _ in 0..2 {
            let mut next = Vec::new();
            for p in &out {
                for n in NAMES {
                    next.push(format!("{p}/{n}"));
                }
            }
            out.extend(next);
        }
        out.sort();
        out.dedup();
        out
    }

    fn pattern() -> impl Strategy<Value = String> {
        let comp = prop::sample::select(vec!["a", "b", "c.md", "*", "*.md", "**", "?"]);
        (
            any::<bool>(),
            prop::collection::vec(comp, 1..4),
            prop::sample::select(vec!["", "/**", "/*"]),
        )
            .prop_map(|(excl, comps, tail)| {
                let body = comps.join("/");
                if excl {
                    // Exclusions stay plain prefixes half of the time.
                    let plain: Vec<&str> = body
                        .split('/')
                        .map(|c| if c.contains(['*', '?']) { "a" } else { c })
                        .collect();
                    format!("!{}{tail}", plain.join("/"))
                } else {
                    format!("{body}{tail}")
                }
            })
    }

    proptest! {
        /// Skipping a directory the helper allows never hides a path that the walk
        /// would have kept.
        #[test]
        fn skip_is_sound(patterns in prop::collection::vec(pattern(), 1..5)) {
            let m = PatternMatcher::new(&patterns).unwrap();
            let all = universe();
            for dir in &all {
                if walked(&m, dir) && m.can_skip_excluded_dir(dir) {
                    for p in all.iter().filter(|p| p.starts_with(&format!("{dir}/"))) {
                        prop_assert!(walked(&m, p), "{patterns:?}: skipped {dir} hides kept {p}");
                    }
                }
            }
        }

        /// No pattern text makes the matcher panic; bad ones are errors.
        #[test]
        fn no_pattern_panics(p in "[a-c*?\\[\\]\\\\^!/.{}()$+|:-]{0,12}", path in "[a-c/.\\]\\[*]{0,10}") {
            if let Ok(m) = PatternMatcher::new([&p]) {
                let _ = m.matches(&path);
                let _ = m.matches_using_parent_results(&path, &MatchInfo::default());
                let _ = m.can_skip_excluded_dir(&path);
            }
        }
    }
}

//! Property tests: whatever the input, parsing and rendering never panic, and
//! accepted input renders to a dump.

use proptest::prelude::*;

fn check(src: &str) {
    match rbuild_parser::parse(src) {
        Ok(df) => {
            let dump = df.dump();
            assert_eq!(dump.lines().count(), df.instructions.len());
            for i in &df.instructions {
                assert!(i.span.start <= i.span.end && i.span.end <= src.len());
                assert!(i.span.start_line <= i.span.end_line);
                assert_eq!(i.node.arg_spans.len(), i.node.args.len());
                for a in &i.node.arg_spans {
                    assert!(a.start <= a.end && a.end <= src.len());
                    assert!(src.is_char_boundary(a.start) && src.is_char_boundary(a.end));
                }
            }
        }
        Err(e) => {
            assert!(e.span.start <= e.span.end && e.span.end <= src.len());
            let text = e.render("Dockerfile", src);
            assert!(text.starts_with(&format!("Dockerfile:{}:{}: ", e.line, e.column)));
            assert!(text.contains('^'));
        }
    }
    if let Ok(ast) = rbuild_parser::parse_ast(src) {
        let _ = ast.dump();
    }
}

const SEEDS: &[&str] = &[
    "# syntax=docker/dockerfile:1\n# escape=`\nFROM --platform=$P alpine AS b\nRUN echo `\n  hi\n",
    "FROM a\nRUN --mount=type=cache,target=/c,id=x --network=none <<EOF bash\necho $x\nEOF\n",
    "FROM a\nCOPY --from=b --chown=1:1 <<A <<\"B\" /d/\nx\nA\ny\nB\nONBUILD ADD [\"a\", \"b\"]\n",
    "FROM a\nENV a=\"b c\" d=e\\ f\nLABEL k v w\nARG x=1 y\nHEALTHCHECK --interval=5s CMD [\"true\"]\n",
    "CMD [\"a\", \"\\u00e9\\ud83d\\ude00\"]\nSHELL [\"sh\", \"-c\"]\nEXPOSE 80/tcp\nVOLUME /a /b\n",
];

fn mutated() -> impl Strategy<Value = String> {
    let alphabet = prop::sample::select(vec![
        "\\", "`", "\n", "\r\n", " ", "\t", "\"", "'", "[", "]", ",", "=", "--", "<<", "<<-", "#",
        "$", "{", "}", "EOF", "RUN ", "COPY ", "FROM ", "ONBUILD ", "\u{feff}", "é", "\u{0}",
    ]);
    (
        prop::sample::select(SEEDS.to_vec()),
        prop::collection::vec((any::<prop::sample::Index>(), 0usize..3, alphabet), 0..8),
    )
        .prop_map(|(seed, edits)| {
            let mut s = seed.to_string();
            for (at, op, text) in edits {
                let mut i = at.index(s.len() + 1);
                while !s.is_char_boundary(i) {
                    i -= 1;
                }
                match op {
                    0 => s.insert_str(i, text),
                    1 => {
                        let mut j = (i + text.len()).min(s.len());
                        while !s.is_char_boundary(j) {
                            j -= 1;
                        }
                        s.replace_range(i..j, "");
                    }
                    _ => {
                        let mut j = (i + 8).min(s.len());
                        while !s.is_char_boundary(j) {
                            j -= 1;
                        }
                        s.replace_range(i..j, text);
                    }
                }
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_strings_do_not_panic(src in any::<String>()) {
        check(&src);
    }

    #[test]
    fn arbitrary_bytes_do_not_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn dockerfile_shaped_strings_do_not_panic(
        src in "(?s)([A-Za-z]{2,11}( --[a-z-]{1,12}(=[a-z0-9,=/\"' ]{0,16})?)*( [\\[\\]\"'a-z0-9<>=$\\\\`{}-]{0,20}){0,4}(\\\\)?\r?\n){1,8}"
    ) {
        check(&src);
    }

    #[test]
    fn mutated_real_dockerfiles_do_not_panic(src in mutated()) {
        check(&src);
    }
}

#[test]
fn mutated_peer_testfiles_do_not_panic() {
    let dir = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/peer-tests/buildkit-parser/testfiles"
    ));
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("cannot run: {} is absent", dir.display());
    };
    let mut count = 0;
    for entry in entries {
        let Ok(src) = std::fs::read_to_string(entry.unwrap().path().join("Dockerfile")) else {
            continue;
        };
        // Every prefix at a char boundary (truncated files) and every line dropped.
        for (i, _) in src.char_indices().step_by(7) {
            check(&src[..i]);
            count += 1;
        }
        let lines: Vec<&str> = src.split_inclusive('\n').collect();
        for skip in 0..lines.len() {
            let s: String = lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, l)| *l)
                .collect();
            check(&s);
            count += 1;
        }
    }
    println!("checked {count} mutations");
}

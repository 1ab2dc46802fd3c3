//! Behaviour of the grammar: directives, escapes, continuations, heredocs,
//! JSON and shell forms, flags, ONBUILD, spans.

use rbuild_parser::{
    Command, Dockerfile, Healthcheck, Instruction, InstructionKind, Mount, parse, parse_ast,
};

fn ok(src: &str) -> Dockerfile {
    parse(src).unwrap_or_else(|e| panic!("{}", e.render("Dockerfile", src)))
}

fn kinds(src: &str) -> Vec<InstructionKind> {
    ok(src).instructions.into_iter().map(|i| i.kind).collect()
}

fn only(src: &str) -> Instruction {
    let mut df = ok(src);
    assert_eq!(df.instructions.len(), 1, "{:?}", df.instructions);
    df.instructions.remove(0)
}

fn shell(kind: &InstructionKind) -> &str {
    match kind {
        InstructionKind::Run(r) => match &r.command {
            Command::Shell(s) => s,
            Command::Exec(e) => panic!("exec form {e:?}"),
        },
        InstructionKind::Cmd(c) => match &c.command {
            Command::Shell(s) => s,
            Command::Exec(e) => panic!("exec form {e:?}"),
        },
        other => panic!("not RUN/CMD: {other:?}"),
    }
}

// ---- directives -------------------------------------------------------

#[test]
fn directives_at_the_top_are_read() {
    let df = ok("# syntax=docker/dockerfile:1.7\n# CHECK = skip=all\n#escape=`\nFROM a\n");
    assert_eq!(
        df.directives.syntax.as_deref(),
        Some("docker/dockerfile:1.7")
    );
    assert_eq!(df.directives.check.as_deref(), Some("skip=all"));
    assert_eq!(df.directives.escape, '`');
}

#[test]
fn directives_after_a_comment_or_blank_line_are_comments() {
    let df = ok("# a comment\n# escape=`\nFROM a\n");
    assert_eq!(df.directives.escape, '\\');
    let df = ok("\n# syntax=x\nFROM a\n");
    assert_eq!(df.directives.syntax, None);
    let df = ok("FROM a\n# syntax=x\n");
    assert_eq!(df.directives.syntax, None);
}

#[test]
fn unknown_directive_ends_directive_parsing() {
    let df = ok("# foo=bar\n# escape=`\nFROM a\n");
    assert_eq!(df.directives.escape, '\\');
}

#[test]
fn repeated_or_invalid_directives_are_errors() {
    let e = parse("# escape=`\n# escape=\\\nFROM a\n").unwrap_err();
    assert_eq!(e.message, "only one escape parser directive can be used");
    assert_eq!((e.line, e.column), (2, 1));
    let e = parse("# escape=x\nFROM a\n").unwrap_err();
    assert!(e.message.contains("invalid escape token"), "{e}");
}

#[test]
fn bom_is_skipped() {
    let df = ok("\u{feff}# syntax=s\nFROM a\n");
    assert_eq!(df.directives.syntax.as_deref(), Some("s"));
    assert_eq!(df.instructions[0].span.start, "\u{feff}# syntax=s\n".len());
    assert_eq!(df.instructions[0].span.start_line, 2);
}

// ---- escapes and continuations ---------------------------------------

#[test]
fn backtick_escape_continues_lines_and_leaves_backslashes() {
    let i = only("# escape=`\nRUN dir C:\\ `\n  && echo done\n");
    assert_eq!(shell(&i.kind), "dir C:\\   && echo done");
}

#[test]
fn continuation_skips_comments_and_empty_lines_and_warns() {
    let df = ok("RUN a \\\n# comment\n\n  b \\\n    # indented comment\n  c\n");
    assert_eq!(shell(&df.instructions[0].kind), "a   b   c");
    assert_eq!(df.warnings.len(), 1);
    assert!(df.warnings[0].message.contains("empty continuation line"));
    assert_eq!(df.instructions[0].span.start_line, 1);
    assert_eq!(df.instructions[0].span.end_line, 6);
}

#[test]
fn whitespace_after_escape_still_continues() {
    let i = only("RUN echo a \\  \t\n b\n");
    assert_eq!(shell(&i.kind), "echo a  b");
}

#[test]
fn escaped_escape_does_not_continue() {
    let df = ok("RUN echo a\\\\\nRUN b\n");
    assert_eq!(df.instructions.len(), 2);
    assert_eq!(shell(&df.instructions[0].kind), "echo a\\\\");
}

#[test]
fn continuation_at_end_of_file() {
    let i = only("FROM a \\");
    assert!(matches!(&i.kind, InstructionKind::From(f) if f.image == "a"));
    let df = ok("FROM a\nRUN x \\\n");
    assert_eq!(shell(&df.instructions[1].kind), "x");
}

#[test]
fn crlf_line_endings() {
    let df = ok("FROM a\r\nRUN b \\\r\n  c\r\n");
    assert_eq!(shell(&df.instructions[1].kind), "b   c");
}

#[test]
fn instruction_names_are_case_insensitive() {
    let df = ok("from a AS Build\nrUn b\n");
    assert_eq!(df.instructions[1].keyword, "rUn");
    match &df.instructions[0].kind {
        InstructionKind::From(f) => assert_eq!(f.alias.as_deref(), Some("build")),
        k => panic!("{k:?}"),
    }
}

// ---- JSON and shell forms ---------------------------------------------

#[test]
fn json_form_and_fallback_to_shell_form() {
    let k = kinds("CMD [\"a\", \"b c\"]\nCMD ['a']\nCMD [\"a\"\nENTRYPOINT []\nRUN [ \"x\" ] \n");
    assert!(
        matches!(&k[0], InstructionKind::Cmd(c) if c.command == Command::Exec(vec!["a".into(), "b c".into()]))
    );
    assert_eq!(shell(&k[1]), "['a']");
    assert_eq!(shell(&k[2]), "[\"a\"");
    assert!(matches!(&k[3], InstructionKind::Entrypoint(e) if e.command == Command::Exec(vec![])));
    assert!(
        matches!(&k[4], InstructionKind::Run(r) if r.command == Command::Exec(vec!["x".into()]))
    );
}

#[test]
fn nested_json_is_an_error() {
    let e = parse("CMD [\"a\", [\"b\"]]\n").unwrap_err();
    assert!(
        e.message
            .contains("arrays must be comprised of strings only")
    );
    let e = parse("CMD [\"a\", 1]\n").unwrap_err();
    assert!(e.message.contains("strings only"));
}

#[test]
fn copy_and_volume_json_forms() {
    let k = kinds("COPY [\"a b\", \"c\", \"/d e/\"]\nVOLUME [\"/v\"]\nVOLUME /x /y\n");
    match &k[0] {
        InstructionKind::Copy(c) => {
            assert_eq!(c.sources, ["a b", "c"]);
            assert_eq!(c.dest, "/d e/");
            assert!(c.json);
        }
        k => panic!("{k:?}"),
    }
    assert!(matches!(&k[1], InstructionKind::Volume(v) if v.paths == ["/v"] && v.json));
    assert!(matches!(&k[2], InstructionKind::Volume(v) if v.paths == ["/x", "/y"] && !v.json));
}

#[test]
fn shell_requires_json() {
    assert!(parse("SHELL /bin/sh -c\n").is_err());
    assert!(
        matches!(&kinds("SHELL [\"pwsh\", \"-c\"]\n")[0], InstructionKind::Shell(s) if s.shell == ["pwsh", "-c"])
    );
}

// ---- ENV, LABEL, ARG ---------------------------------------------------

#[test]
fn env_and_label_pairs_keep_quotes() {
    let k =
        kinds("ENV a=\"x y\" b=c\\ d\nENV legacy value with spaces\nLABEL \"k 1\"=v 'k2'=\"w\"\n");
    match &k[0] {
        InstructionKind::Env(e) => {
            assert!(!e.legacy);
            assert_eq!(e.pairs[0].key, "a");
            assert_eq!(e.pairs[0].value, "\"x y\"");
            assert_eq!(e.pairs[1].value, "c\\ d");
        }
        k => panic!("{k:?}"),
    }
    match &k[1] {
        InstructionKind::Env(e) => {
            assert!(e.legacy);
            assert_eq!(e.pairs[0].key, "legacy");
            assert_eq!(e.pairs[0].value, "value with spaces");
        }
        k => panic!("{k:?}"),
    }
    match &k[2] {
        InstructionKind::Label(l) => {
            assert_eq!(l.pairs[0].key, "\"k 1\"");
            assert_eq!(l.pairs[1].key, "'k2'");
            assert_eq!(l.pairs[1].value, "\"w\"");
        }
        k => panic!("{k:?}"),
    }
}

#[test]
fn env_errors() {
    assert_eq!(
        parse("ENV PATH\n").unwrap_err().message,
        "ENV must have two arguments"
    );
    assert!(
        parse("ENV a=b c\n")
            .unwrap_err()
            .message
            .contains("can't find = in \"c\"")
    );
    assert!(
        parse("ENV =b\n")
            .unwrap_err()
            .message
            .contains("names can not be blank")
    );
    assert!(
        parse("ENV\n")
            .unwrap_err()
            .message
            .contains("at least one argument")
    );
}

#[test]
fn arg_names_and_defaults() {
    match &kinds("ARG a b=1 c=\"x y\" d=\n")[0] {
        InstructionKind::Arg(a) => {
            let got: Vec<(&str, Option<&str>)> = a
                .args
                .iter()
                .map(|d| (d.name.as_str(), d.default.as_deref()))
                .collect();
            assert_eq!(
                got,
                [
                    ("a", None),
                    ("b", Some("1")),
                    ("c", Some("\"x y\"")),
                    ("d", Some(""))
                ]
            );
        }
        k => panic!("{k:?}"),
    }
}

// ---- flags ------------------------------------------------------------

#[test]
fn flags_end_at_double_dash_and_take_quotes() {
    match &kinds("COPY --from=\"build stage\" --link -- --not-a-flag /d\n")[0] {
        InstructionKind::Copy(c) => {
            assert_eq!(c.from.as_deref(), Some("build stage"));
            assert!(c.link);
            assert_eq!(c.sources, ["--not-a-flag"]);
        }
        k => panic!("{k:?}"),
    }
}

#[test]
fn flag_errors() {
    let e = parse("COPY --frm=a x y\n").unwrap_err();
    assert_eq!(e.message, "unknown flag: --frm");
    assert!(e.help.as_deref().unwrap().contains("--from"));
    assert!(
        parse("COPY --from=a --from=b x y\n")
            .unwrap_err()
            .message
            .contains("duplicate flag")
    );
    assert!(
        parse("COPY --from x y\n")
            .unwrap_err()
            .message
            .contains("missing a value")
    );
    assert!(
        parse("COPY --link=maybe x y\n")
            .unwrap_err()
            .message
            .contains("boolean")
    );
    assert!(
        parse("CMD --x echo\n")
            .unwrap_err()
            .message
            .contains("unknown flag")
    );
    assert!(
        parse("RUN --network=bridge x\n")
            .unwrap_err()
            .message
            .contains("network mode")
    );
    assert!(
        parse("RUN --security=weird x\n")
            .unwrap_err()
            .message
            .contains("security mode")
    );
}

#[test]
fn run_mounts_are_typed() {
    let i = only(concat!(
        "RUN --mount=type=cache,target=/c,sharing=LOCKED,uid=1 ",
        "--mount=type=secret,id=s,dst=/s ",
        "--mount=target=/b,source=x,from=st ",
        "--mount=\"type=tmpfs,target=/t,size=1024\" ",
        "--mount=type=ssh echo\n"
    ));
    let InstructionKind::Run(run) = &i.kind else {
        panic!()
    };
    assert_eq!(shell(&i.kind), "echo");
    match &run.mounts[0] {
        Mount::Cache(c) => {
            assert_eq!(c.target.as_deref(), Some("/c"));
            assert_eq!(c.sharing.as_deref(), Some("locked"));
            assert_eq!(c.uid.as_deref(), Some("1"));
        }
        m => panic!("{m:?}"),
    }
    assert!(
        matches!(&run.mounts[1], Mount::Secret(s) if s.id.as_deref() == Some("s") && s.target.as_deref() == Some("/s"))
    );
    assert!(
        matches!(&run.mounts[2], Mount::Bind(b) if b.from.as_deref() == Some("st") && !b.readwrite)
    );
    assert!(matches!(&run.mounts[3], Mount::Tmpfs(t) if t.size.as_deref() == Some("1024")));
    assert!(matches!(&run.mounts[4], Mount::Ssh(_)));
}

#[test]
fn mount_errors() {
    for (src, want) in [
        ("RUN --mount=type=nfs x\n", "unsupported mount type"),
        (
            "RUN --mount=type=bind,mode=0755 x\n",
            "unexpected key 'mode'",
        ),
        (
            "RUN --mount=type=cache,sharing=all x\n",
            "unsupported sharing value",
        ),
        (
            "RUN --mount=type=cache,mode=999 x\n",
            "invalid value 999 for mode",
        ),
        (
            "RUN --mount=type=secret x\n",
            "one of source, target required",
        ),
        (
            "RUN --mount=type=bind,from=$X x\n",
            "doesn't support variable expansion",
        ),
        (
            "RUN --mount=type=bind,target x\n",
            "must be a key=value pair",
        ),
        (
            "RUN --mount=type=bind,required x\n",
            "unexpected key 'required'",
        ),
        ("RUN --mount= x\n", "failed to parse csv mounts"),
    ] {
        let e = parse(src).expect_err(src);
        assert!(e.message.contains(want), "{src}: {}", e.message);
    }
    // Values with variables are kept for the frontend to expand.
    let i = only("RUN --mount=type=cache,target=$T,mode=$M x\n");
    let InstructionKind::Run(run) = &i.kind else {
        panic!()
    };
    assert!(matches!(&run.mounts[0], Mount::Cache(c) if c.mode.as_deref() == Some("$M")));
}

// ---- FROM, HEALTHCHECK, ONBUILD, others -------------------------------

#[test]
fn from_forms() {
    match &kinds("FROM --platform=$P img:1 aS Stage.1\n")[0] {
        InstructionKind::From(f) => {
            assert_eq!(f.image, "img:1");
            assert_eq!(f.platform.as_deref(), Some("$P"));
            assert_eq!(f.alias.as_deref(), Some("stage.1"));
        }
        k => panic!("{k:?}"),
    }
    assert!(
        parse("FROM a b\n")
            .unwrap_err()
            .message
            .contains("one or three")
    );
    assert!(
        parse("FROM a AS 9x\n")
            .unwrap_err()
            .message
            .contains("invalid name for build stage")
    );
}

#[test]
fn healthcheck_forms() {
    let k = kinds(
        "HEALTHCHECK NONE\nHEALTHCHECK --interval=1m30s --retries=2 CMD curl -f x\nHEALTHCHECK cmd [\"a\"]\n",
    );
    assert!(matches!(
        k[0],
        InstructionKind::Healthcheck(Healthcheck::None)
    ));
    match &k[1] {
        InstructionKind::Healthcheck(Healthcheck::Cmd {
            command,
            interval,
            retries,
            timeout,
            ..
        }) => {
            assert_eq!(command, &Command::Shell("curl -f x".into()));
            assert_eq!(interval.as_ref().unwrap().nanos, 90_000_000_000);
            assert_eq!(*retries, Some(2));
            assert!(timeout.is_none());
        }
        k => panic!("{k:?}"),
    }
    assert!(
        matches!(&k[2], InstructionKind::Healthcheck(Healthcheck::Cmd { command: Command::Exec(v), .. }) if v == &["a"])
    );
    for (src, want) in [
        ("HEALTHCHECK\n", "at least one argument"),
        ("HEALTHCHECK NONE x\n", "takes no arguments"),
        ("HEALTHCHECK CMD\n", "Missing command"),
        ("HEALTHCHECK CONNECT TCP 7000\n", "Unknown type"),
        ("HEALTHCHECK --interval=5 CMD x\n", "invalid duration"),
        ("HEALTHCHECK --retries=-1 CMD x\n", "cannot be negative"),
        (
            "HEALTHCHECK --timeout=10us CMD x\n",
            "cannot be less than 1ms",
        ),
    ] {
        let e = parse(src).expect_err(src);
        assert!(e.message.contains(want), "{src}: {}", e.message);
    }
}

#[test]
fn onbuild_wraps_instructions() {
    let i = only("ONBUILD COPY --from=x a /b\n");
    match &i.kind {
        InstructionKind::Onbuild(o) => {
            assert_eq!(o.expression, "COPY --from=x a /b");
            assert!(
                matches!(&o.trigger.kind, InstructionKind::Copy(c) if c.from.as_deref() == Some("x"))
            );
            assert_eq!(o.trigger.span.start_column, 9);
        }
        k => panic!("{k:?}"),
    }
    for (src, want) in [
        ("ONBUILD FROM a\n", "FROM isn't allowed"),
        ("ONBUILD MAINTAINER a\n", "MAINTAINER isn't allowed"),
        ("ONBUILD ONBUILD RUN a\n", "Chaining ONBUILD"),
        ("ONBUILD\n", "at least one argument"),
        ("ONBUILD NOPE x\n", "unknown instruction"),
    ] {
        let e = parse(src).expect_err(src);
        assert!(e.message.contains(want), "{src}: {}", e.message);
    }
}

#[test]
fn argument_counts() {
    for (src, want) in [
        ("USER\n", "exactly one argument"),
        ("WORKDIR\n", "exactly one argument"),
        ("STOPSIGNAL\n", "exactly one argument"),
        ("MAINTAINER\n", "exactly one argument"),
        ("EXPOSE\n", "at least one argument"),
        ("VOLUME\n", "at least one argument"),
        ("COPY a\n", "at least two arguments"),
        ("ADD a\n", "at least two arguments"),
        ("ARG\n", "at least one argument"),
        ("LABEL\n", "at least one argument"),
    ] {
        let e = parse(src).expect_err(src);
        assert!(e.message.contains(want), "{src}: {}", e.message);
    }
    // Spaces are part of the single argument of these.
    let k = kinds("USER a b\nWORKDIR /my dir\n");
    assert!(matches!(&k[0], InstructionKind::User(u) if u.user == "a b"));
    assert!(matches!(&k[1], InstructionKind::Workdir(w) if w.path == "/my dir"));
}

#[test]
fn unknown_instruction_suggests() {
    let e = parse("FROM a\nCOPPY x y\n").unwrap_err();
    assert_eq!(e.message, "unknown instruction: COPPY");
    assert_eq!(e.help.as_deref(), Some("did you mean COPY?"));
    assert_eq!((e.line, e.column), (2, 1));
}

#[test]
fn empty_files_are_rejected() {
    for src in ["", "\n\n", "# only\n# comments\n", "   \n\t\n"] {
        assert_eq!(
            parse(src).unwrap_err().message,
            "file with no instructions",
            "{src:?}"
        );
    }
}

#[test]
fn overlong_lines_are_rejected() {
    let src = format!("FROM a\nLABEL x={}\n", "a".repeat(70_000));
    assert!(
        parse(&src)
            .unwrap_err()
            .message
            .contains("max allowed size of 65535")
    );
}

// ---- heredocs ---------------------------------------------------------

#[test]
fn heredoc_forms() {
    let src = "FROM a\nRUN <<EOF\necho $x\nEOF\nRUN 3<<-'END' python3\n\tprint(1)\n\tEND\nRUN <<  SP\nSP\nCOPY <<A <<\"B\" /dst/\nB\nA\nA\nB\nRUN [\"<<EOF\"]\nRUN \"<<NOT\"\n";
    let df = ok(src);
    let run = |i: usize| match &df.instructions[i].kind {
        InstructionKind::Run(r) => r.clone(),
        k => panic!("{k:?}"),
    };
    let h = &run(1).heredocs[0];
    assert_eq!(
        (h.name.as_str(), h.expand, h.chomp, h.fd),
        ("EOF", true, false, None)
    );
    assert_eq!(h.content, "echo $x\n");
    assert_eq!((h.span.start_line, h.span.end_line), (3, 4));
    assert_eq!(df.instructions[1].span.end_line, 4);

    let h = &run(2).heredocs[0];
    assert_eq!(
        (h.name.as_str(), h.expand, h.chomp, h.fd),
        ("END", false, true, Some(3))
    );
    assert_eq!(h.content, "\tprint(1)\n");
    assert_eq!(h.body(), "print(1)\n");
    assert_eq!(shell(&df.instructions[2].kind), "3<<-'END' python3");

    assert_eq!(run(3).heredocs[0].name, "SP");

    match &df.instructions[4].kind {
        InstructionKind::Copy(c) => {
            assert!(c.sources.is_empty());
            assert_eq!(c.dest, "/dst/");
            assert_eq!(c.heredocs.len(), 2);
            assert_eq!(
                (c.heredocs[0].name.as_str(), c.heredocs[0].content.as_str()),
                ("A", "B\n")
            );
            assert_eq!(
                (c.heredocs[1].name.as_str(), c.heredocs[1].content.as_str()),
                ("B", "A\n")
            );
            assert!(!c.heredocs[1].expand);
        }
        k => panic!("{k:?}"),
    }
    assert!(run(5).heredocs.is_empty());
    assert!(run(6).heredocs.is_empty());
    assert_eq!(df.instructions.len(), 7);
}

#[test]
fn heredoc_content_is_not_processed() {
    let df = ok("RUN <<EOF\n# not a comment \\\n\n  spaced\nEOF\nRUN b\n");
    let InstructionKind::Run(r) = &df.instructions[0].kind else {
        panic!()
    };
    assert_eq!(r.heredocs[0].content, "# not a comment \\\n\n  spaced\n");
    assert_eq!(df.instructions.len(), 2);
}

#[test]
fn heredoc_errors() {
    let e = parse("FROM a\nRUN <<EOF\necho\n").unwrap_err();
    assert_eq!(e.message, "unterminated heredoc");
    assert_eq!((e.line, e.column), (2, 5));
    let e = parse("COPY a <<EOF\nx\nEOF\n").unwrap_err();
    assert!(
        e.message
            .contains("cannot accept a heredoc as a destination")
    );
}

#[test]
fn heredoc_only_for_run_copy_add() {
    // `USER <<X` is not a heredoc: the next line is an instruction.
    let e = parse("USER <<X\nX\n").unwrap_err();
    assert_eq!(e.message, "unknown instruction: X");
}

#[test]
fn onbuild_heredoc() {
    let i = only("ONBUILD RUN <<EOF\necho hi\nEOF\n");
    let InstructionKind::Onbuild(o) = &i.kind else {
        panic!()
    };
    assert_eq!(o.expression, "RUN <<EOF\necho hi\nEOF");
    let InstructionKind::Run(r) = &o.trigger.kind else {
        panic!()
    };
    assert_eq!(r.heredocs[0].content, "echo hi\n");
}

// ---- spans and the AST level --------------------------------------------

#[test]
fn spans_are_lines_and_columns() {
    let df = ok("FROM a\n\n  RUN  --network=none \\\n   echo ü\n");
    let run = &df.instructions[1];
    assert_eq!(run.span.start_line, 3);
    assert_eq!(run.span.start_column, 3);
    assert_eq!(run.span.end_line, 4);
    assert_eq!(run.span.end_column, 10);
    assert_eq!(run.original, "RUN  --network=none    echo ü");
    let node = &run.node;
    assert_eq!(node.flag_spans[0].start_column, 8);
    assert_eq!(node.args_span.start_line, 4);
    assert_eq!(node.args_span.start_column, 4);
}

#[test]
fn ast_level_keeps_what_instructions_reject() {
    let ast = parse_ast("HEALTHCHECK CONNECT TCP 7000\nCOPY --user=me a b\nFOO bar\n").unwrap();
    assert_eq!(
        ast.dump(),
        "(healthcheck \"CONNECT\" \"TCP 7000\")\n(copy [\"--user=me\"] \"a\" \"b\")\n(foo)\n"
    );
}

#[test]
fn dockerfile_dump_matches_ast_dump() {
    let src = "FROM a\nONBUILD RUN [\"x\"]\nENV a=b c=d\n";
    assert_eq!(ok(src).dump(), parse_ast(src).unwrap().dump());
    assert_eq!(
        ok(src).dump(),
        "(from \"a\")\n(onbuild (run \"x\"))\n(env \"a\" \"b\" \"=\" \"c\" \"d\" \"=\")\n"
    );
}

#[test]
fn argument_spans() {
    let src = "FROM img AS b\nCOPY --from=b a  \\\n  c /d/\nENV k=\"v 1\" legacy=x\nCMD [\"a\", \"b\"]\nLABEL old value here\n";
    let df = ok(src);
    let text = |span: rbuild_parser::Span| &src[span.start..span.end];
    let spans = |i: usize| -> Vec<&str> {
        df.instructions[i]
            .node
            .arg_spans
            .iter()
            .map(|s| text(*s))
            .collect()
    };
    assert_eq!(spans(0), ["img", "AS", "b"]);
    assert_eq!(spans(1), ["a", "c", "/d/"]);
    assert_eq!(df.instructions[1].node.arg_spans[1].start_line, 3);
    assert_eq!(spans(2), ["k", "\"v 1\"", "=", "legacy", "x", "="]);
    assert_eq!(spans(3), ["\"a\"", "\"b\""]);
    assert_eq!(spans(4), ["old", "value here", ""]);
}

//! Build checks through the binary: `rbuild check` (text, JSON, SARIF), exit
//! codes, `check=error=true`, rbuild's own rules (each triggers and does not),
//! the summary a build ends with, and no crash on any Dockerfile we have.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::Env;
use serde_json::Value;

/// A context directory `name` with these files.
fn context(env: &Env, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = env.path(name);
    for (f, content) in files {
        let p = dir.join(f);
        fs_err::create_dir_all(p.parent().unwrap()).unwrap();
        fs_err::write(p, content).unwrap();
    }
    dir
}

fn check(env: &Env, dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["check"];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    env.run(&args)
}

fn check_json(env: &Env, dockerfile: &str) -> (i32, Value) {
    let dir = context(env, "ctx-json", &[("Dockerfile", dockerfile)]);
    let out = check(env, &dir, &["--format", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "invalid JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), v)
}

fn rules(v: &Value) -> Vec<(String, u64)> {
    v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["rule"].as_str().unwrap().to_owned(),
                w["line"].as_u64().unwrap(),
            )
        })
        .collect()
}

const SMELLY: &str = "FROM busybox:1.36 as base\nMAINTAINER me@example.org\nENV FOO bar\nCMD echo one\nCMD [\"echo\", \"two\"]\n";

#[test]
fn check_reports_buildkits_words_and_exits_1() {
    let env = Env::new();
    let (code, v) = check_json(&env, SMELLY);
    assert_eq!(code, 1, "{v}");
    let w = v["warnings"].as_array().unwrap();
    let find = |rule: &str| {
        w.iter()
            .find(|x| x["rule"] == rule)
            .unwrap_or_else(|| panic!("{rule} missing in {v}"))
    };
    assert_eq!(
        find("FromAsCasing")["message"],
        "'as' and 'FROM' keywords' casing do not match"
    );
    assert_eq!(find("FromAsCasing")["line"], 1);
    assert_eq!(
        find("MaintainerDeprecated")["message"],
        "Maintainer instruction is deprecated in favor of using label"
    );
    assert_eq!(
        find("LegacyKeyValueFormat")["message"],
        "\"ENV key=value\" should be used instead of legacy \"ENV key value\" format"
    );
    let multi = find("MultipleInstructionsDisallowed");
    assert_eq!(multi["line"], 4, "the CMD that is ignored");
    assert_eq!(
        multi["url"],
        "https://docs.docker.com/go/dockerfile/rule/multiple-instructions-disallowed/"
    );
    assert_eq!(find("JSONArgsRecommended")["line"], 4);

    // Text: docker build --check's report, exit 1.
    let dir = context(&env, "ctx-text", &[("Dockerfile", SMELLY)]);
    let out = check(&env, &dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Check complete, 5 warnings have been found!"),
        "{text}"
    );
    assert!(
        text.contains(
            "WARNING: FromAsCasing - https://docs.docker.com/go/dockerfile/rule/from-as-casing/"
        ),
        "{text}"
    );
    assert!(text.contains("Dockerfile:1\n"), "{text}");

    // Clean: exit 0.
    let clean = context(
        &env,
        "ctx-clean",
        &[("Dockerfile", "FROM busybox:1.36\nCMD [\"true\"]\n")],
    );
    let out = check(&env, &clean, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("no warnings found"));
}

#[test]
fn check_directive_build_arg_target_and_error() {
    let env = Env::new();
    // skip in the directive, per instruction, and replaced by the build arg.
    let df = "# check=skip=FromAsCasing\nFROM busybox:1.36 as base\n# check=skip=LegacyKeyValueFormat\nENV A b\nENV C d\n";
    let (_, v) = check_json(&env, df);
    assert_eq!(
        rules(&v),
        vec![("LegacyKeyValueFormat".to_owned(), 5)],
        "{v}"
    );
    let dir = context(&env, "ctx-arg", &[("Dockerfile", df)]);
    let out = check(
        &env,
        &dir,
        &[
            "--format",
            "json",
            "--build-arg",
            "BUILDKIT_DOCKERFILE_CHECK=skip=LegacyKeyValueFormat",
        ],
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rules(&v), vec![("FromAsCasing".to_owned(), 2)], "{v}");

    // error=true: the lint violation, as BuildKit words it.
    let dir = context(
        &env,
        "ctx-err",
        &[(
            "Dockerfile",
            "# check=error=true\nFROM busybox:1.36 as base\nCMD [\"true\"]\n",
        )],
    );
    let out = check(&env, &dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ERROR: lint violation found for rules: FromAsCasing"),
        "{text}"
    );

    // --target: only the stages the target needs.
    let df = "FROM busybox:1.36 AS a\nCMD echo a\nFROM busybox:1.36 AS b\nCMD [\"b\"]\n";
    let dir = context(&env, "ctx-target", &[("Dockerfile", df)]);
    let all: Value =
        serde_json::from_slice(&check(&env, &dir, &["--format", "json"]).stdout).unwrap();
    assert!(
        rules(&all).contains(&("JSONArgsRecommended".to_owned(), 2)),
        "{all}"
    );
    let b: Value =
        serde_json::from_slice(&check(&env, &dir, &["--format", "json", "--target", "b"]).stdout)
            .unwrap();
    assert!(rules(&b).is_empty(), "{b}");

    // A bad Dockerfile: a one-line error naming the file, exit 1, no panic.
    let dir = context(
        &env,
        "ctx-bad",
        &[("Dockerfile", "FROM busybox:1.36 AS Bad\nFROBNICATE x\n")],
    );
    let out = check(&env, &dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Dockerfile:2") && !err.contains("panicked"),
        "{err}"
    );
    // The warnings BuildKit gives before its parse error.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Stage name 'Bad' should be lowercase"),
        "{text}"
    );
    let out = check(&env, &dir, &["--format", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "parse", "{v}");
    assert_eq!(
        v["error"]["message"],
        "dockerfile parse error on line 2: unknown instruction: FROBNICATE"
    );
}

#[test]
fn sarif_validates_against_the_2_1_0_schema() {
    let env = Env::new();
    let dir = context(&env, "ctx", &[("Dockerfile", SMELLY)]);
    let out = check(&env, &dir, &["--format", "sarif"]);
    assert_eq!(out.status.code(), Some(1));
    let log: Value = serde_json::from_slice(&out.stdout).unwrap();
    let schema_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/sarif-schema-2.1.0.json"
    );
    let schema: Value = serde_json::from_str(
        &fs_err::read_to_string(schema_path)
            .unwrap_or_else(|e| panic!("{schema_path} is missing: {e}")),
    )
    .unwrap();
    let validator = jsonschema::draft4::new(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&log)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "SARIF invalid: {errors:?}");
    // What GitHub code scanning reads.
    let run = &log["runs"][0];
    let results = run["results"].as_array().unwrap();
    let r = results
        .iter()
        .find(|r| r["ruleId"] == "FromAsCasing")
        .unwrap();
    assert_eq!(
        r["message"]["text"],
        "'as' and 'FROM' keywords' casing do not match"
    );
    let region = &r["locations"][0]["physicalLocation"]["region"];
    assert_eq!(region["startLine"], 1);
    assert_eq!(region["startColumn"], 1);
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    let rule = &rules[usize::try_from(r["ruleIndex"].as_u64().unwrap()).unwrap()];
    assert_eq!(rule["id"], "FromAsCasing");
    assert_eq!(
        rule["helpUri"],
        "https://docs.docker.com/go/dockerfile/rule/from-as-casing/"
    );
    // rbuild's rules carry their page as markdown help.
    let own = rules.iter().find(|r| r["id"] == "CdInRun").unwrap();
    assert!(
        own["help"]["markdown"]
            .as_str()
            .unwrap()
            .starts_with("# CdInRun\n"),
        "{own}"
    );
    assert!(own.get("helpUri").is_none(), "{own}");
    // A broken log does not validate (the validator is not a no-op).
    let mut broken = log.clone();
    broken["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] =
        Value::from(0);
    assert!(!validator.is_valid(&broken));
}

/// rbuild's own rules: (rule, a Dockerfile that triggers it, one that does not).
const OWN: &[(&str, &str, &str)] = &[
    (
        "AptUpdateAlone",
        "FROM debian:12\nRUN apt-get update\n",
        "FROM debian:12\nRUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*\n",
    ),
    (
        "AptListsNotCleaned",
        "FROM debian:12\nRUN apt-get update && apt-get install -y --no-install-recommends curl\n",
        "FROM debian:12\nRUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*\n",
    ),
    (
        "AptListsNotCleaned",
        "FROM alpine:3.20\nRUN apk add git\n",
        "FROM alpine:3.20\nRUN apk add --no-cache git\n",
    ),
    (
        "AptListsNotCleaned",
        "FROM fedora:40\nRUN dnf install -y --setopt=install_weak_deps=False make\n",
        "FROM fedora:40\nRUN dnf install -y --setopt=install_weak_deps=False make && dnf clean all\n",
    ),
    (
        "AptListsNotCleaned",
        "FROM python:3.12\nRUN pip install flask\n",
        "FROM python:3.12\nRUN pip install --no-cache-dir flask\n",
    ),
    (
        "AptNoRecommends",
        "FROM debian:12\nRUN apt-get update && apt-get install -y curl && rm -rf /var/lib/apt/lists/*\n",
        "FROM debian:12\nRUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*\n",
    ),
    (
        "AptNoRecommends",
        "FROM fedora:40\nRUN dnf install -y make && dnf clean all\n",
        "FROM fedora:40\nRUN dnf install -y --setopt=install_weak_deps=False make && dnf clean all\n",
    ),
    (
        "AddForLocalFile",
        "FROM busybox:1.36\nADD app.sh /app/\n",
        "FROM busybox:1.36\nCOPY app.sh /app/\nADD rootfs.tar.gz /\n",
    ),
    (
        "LatestOrUntaggedBase",
        "FROM busybox\n",
        "FROM busybox:1.36 AS b\nFROM b\nFROM scratch\n",
    ),
    (
        "LatestOrUntaggedBase",
        "FROM busybox:latest\n",
        "FROM busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000\n",
    ),
    (
        "CdInRun",
        "FROM busybox:1.36\nRUN cd /tmp && ls\n",
        "FROM busybox:1.36\nWORKDIR /tmp\nRUN ls\n",
    ),
    (
        "CopyAllBeforeDependencies",
        "FROM node:20\nWORKDIR /app\nCOPY . .\nRUN npm ci\n",
        "FROM node:20\nWORKDIR /app\nCOPY package.json package-lock.json ./\nRUN npm ci\nCOPY . .\n",
    ),
    (
        "TooManyLayers",
        "FROM busybox:1.36\nRUN echo a > /a\nRUN echo b > /b\n",
        "FROM busybox:1.36\nRUN echo a > /a && echo b > /b\n",
    ),
];

#[test]
fn own_rules_trigger_and_do_not() {
    let env = Env::new();
    for (rule, bad, good) in OWN {
        let (code, v) = check_json(&env, bad);
        assert!(
            rules(&v).iter().any(|(r, _)| r == rule),
            "{rule} did not trigger on:\n{bad}\n{v}"
        );
        assert_eq!(code, 1);
        let url = v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["rule"] == *rule)
            .unwrap()["url"]
            .clone();
        let (_, v) = check_json(&env, good);
        assert!(
            !rules(&v).iter().any(|(r, _)| r == rule),
            "{rule} triggered on:\n{good}\n{v}"
        );
        // Every rule has its page: the warning's url is its path in the
        // repository, and --explain prints the same page from the binary.
        assert_eq!(url, format!("docs/checks/{rule}.md"));
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../docs/checks/{rule}.md"));
        let page = fs_err::read_to_string(&doc).unwrap();
        assert_eq!(env.ok(&["check", "--explain", rule]), page);
    }
    for rule in ["WastedSpace", "SecretInLayer"] {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../docs/checks/{rule}.md"));
        let page = fs_err::read_to_string(&doc).unwrap();
        assert_eq!(env.ok(&["check", "--explain", rule]), page);
    }
    // BuildKit's rules: description and URL; an unknown name is an error.
    let out = env.ok(&["check", "--explain", "FromAsCasing"]);
    assert!(
        out.contains("https://docs.docker.com/go/dockerfile/rule/from-as-casing/"),
        "{out}"
    );
    let err = env.fails(&["check", "--explain", "cdinrun"]);
    assert!(
        err.contains("no check is called \"cdinrun\" (did you mean CdInRun?)"),
        "{err}"
    );
    // Skipped like BuildKit's rules.
    let (_, v) = check_json(
        &env,
        "# check=skip=CdInRun,LatestOrUntaggedBase\nFROM busybox\nRUN cd /tmp && ls\n",
    );
    assert!(rules(&v).is_empty(), "{v}");
}

#[test]
fn large_context_without_dockerignore() {
    let env = Env::new();
    let df = "FROM busybox:1.36\nCOPY . /src\n";
    let dir = context(&env, "big", &[("Dockerfile", df)]);
    // A sparse 70 MiB file: large by size, no disk used.
    let f = fs_err::File::create(dir.join("blob")).unwrap();
    f.set_len(70 << 20).unwrap();
    let v: Value =
        serde_json::from_slice(&check(&env, &dir, &["--format", "json"]).stdout).unwrap();
    assert!(
        rules(&v)
            .iter()
            .any(|(r, _)| r == "LargeContextWithoutDockerignore"),
        "{v}"
    );
    fs_err::write(dir.join(".dockerignore"), "blob\n").unwrap();
    let v: Value =
        serde_json::from_slice(&check(&env, &dir, &["--format", "json"]).stdout).unwrap();
    assert!(
        !rules(&v)
            .iter()
            .any(|(r, _)| r == "LargeContextWithoutDockerignore"),
        "{v}"
    );
}

#[test]
fn check_runs_on_every_dockerfile_we_have_without_crashing() {
    let env = Env::new();
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
    let conformance = Path::new("/work/shared/conformance/cases");
    assert!(
        conformance.is_dir(),
        "{} is missing: the shared conformance cases are needed",
        conformance.display()
    );
    let mut files = Vec::new();
    let mut todo = vec![testdata, conformance.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs_err::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "Dockerfile" || n.ends_with(".Dockerfile"))
            {
                files.push(p);
            }
        }
    }
    assert!(files.len() > 40, "only {} Dockerfiles found", files.len());
    for f in &files {
        let ctx = f.parent().unwrap();
        for format in ["text", "json", "sarif"] {
            let out = env.run(&[
                "check",
                "-f",
                f.to_str().unwrap(),
                "--format",
                format,
                ctx.to_str().unwrap(),
            ]);
            let code = out.status.code();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                matches!(code, Some(0 | 1)) && !err.contains("panicked"),
                "{} ({format}): exit {code:?}\n{err}",
                f.display()
            );
            if format != "text" && code == Some(0) {
                serde_json::from_slice::<Value>(&out.stdout).unwrap();
            }
        }
    }
}

#[test]
fn a_build_runs_the_checks_and_ends_with_the_summary() {
    let env = common::build_env();
    let df = "FROM busybox as base\nENV FOO bar\nCMD [\"true\"]\n";
    let dir = context(&env, "b", &[("Dockerfile", df)]);
    let out = env.run(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "chk",
        dir.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warnings found:\n"), "{err}");
    assert!(
        err.contains(" - FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)\n   https://docs.docker.com/go/dockerfile/rule/from-as-casing/"),
        "{err}"
    );
    assert!(err.contains(" - LegacyKeyValueFormat: \"ENV key=value\" should be used instead of legacy \"ENV key value\" format (line 2)"), "{err}");

    // JSON progress: one check_warning event per warning.
    let out = env.run(&[
        "build",
        "--progress",
        "json",
        "-t",
        "chk",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let events: Vec<Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v["event"] == "check_warning")
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["rule"] == "FromAsCasing" && e["line"] == 1),
        "{events:?}"
    );

    // A build lints only the stages its target reaches.
    let df2 = "FROM busybox AS unused\nCMD echo x\nFROM busybox\nCMD [\"true\"]\n";
    let dir2 = context(&env, "b2", &[("Dockerfile", df2)]);
    let out = env.run(&["build", "--progress", "plain", dir2.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("JSONArgsRecommended"), "{err}");
    let out = env.run(&["build", "--check", dir2.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("JSONArgsRecommended"));

    // check=error=true fails the build, with BuildKit's message; --check builds nothing.
    let df3 = "# check=error=true\nFROM busybox as base\nCMD [\"true\"]\n";
    let dir3 = context(&env, "b3", &[("Dockerfile", df3)]);
    let out = env.run(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "never",
        dir3.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lint violation found for rules: FromAsCasing, LatestOrUntaggedBase"),
        "{err}"
    );
    let images = env.ok(&["images"]);
    assert!(!images.contains("never"), "{images}");
}

/// The summary lines of a build's stderr that name `rule`.
fn summary_lines<'a>(err: &'a str, rule: &str) -> Vec<&'a str> {
    let prefix = format!(" - {rule}: ");
    err.lines().filter(|l| l.starts_with(&prefix)).collect()
}

fn build(env: &Env, name: &str, df: &str, extra: &[&str]) -> String {
    let dir = context(env, name, &[("Dockerfile", df)]);
    let mut args = vec!["build", "--progress", "plain", "-t", name];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap());
    let out = env.run(&args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{df}\n{err}");
    err
}

#[test]
fn wasted_space_names_the_instructions_and_the_size() {
    let env = common::build_env();
    let err = build(
        &env,
        "waste",
        "FROM busybox\nRUN dd if=/dev/zero of=/big bs=1048576 count=50\nRUN rm /big\n",
        &[],
    );
    let lines = summary_lines(&err, "WastedSpace");
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("52428800 bytes (52.4 MB) added by `RUN dd if=/dev/zero of=/big bs=1048576 count=50` are deleted or overwritten by `RUN rm /big`"),
        "{err}"
    );
    let err = build(
        &env,
        "nowaste",
        "FROM busybox\nRUN dd if=/dev/zero of=/big bs=1048576 count=50 && rm /big\n",
        &[],
    );
    assert!(summary_lines(&err, "WastedSpace").is_empty(), "{err}");
}

#[test]
fn image_rules_secrets_modes_and_build_tools() {
    let env = common::build_env();
    let secret = env.path("token");
    fs_err::write(&secret, "s3cr3t-t0ken-value").unwrap();
    let spec = format!("id=tok,src={}", secret.display());
    let bad = "FROM busybox\n\
        RUN --mount=type=secret,id=tok cat /run/secrets/tok > /leaked && printf -- '-----BEGIN OPENSSH PRIVATE KEY-----\\nabc\\n-----END OPENSSH PRIVATE KEY-----\\n' > /id_key && touch /w /s && chmod 666 /w && chmod 4755 /s\n";
    let err = build(&env, "imgbad", bad, &["--secret", &spec]);
    let secrets = summary_lines(&err, "SecretInLayer");
    assert!(
        secrets
            .iter()
            .any(|l| l.contains("/leaked holds the value of a --secret")),
        "{err}"
    );
    assert!(
        secrets
            .iter()
            .any(|l| l.contains("/id_key holds a private key")),
        "{err}"
    );
    assert!(
        summary_lines(&err, "WorldWritableFile")
            .iter()
            .any(|l| l.contains("/w")),
        "{err}"
    );
    assert!(
        summary_lines(&err, "SetuidFileAdded")
            .iter()
            .any(|l| l.contains("/s")),
        "{err}"
    );
    assert!(
        summary_lines(&err, "BuildToolsInFinalImage").is_empty(),
        "{err}"
    );

    // What the base image brings is not the build's: a stage chain down to
    // that image (through a meta ARG) adds nothing to report.
    let err = build(
        &env,
        "wwbase",
        "FROM busybox\nRUN touch /ww && chmod 666 /ww\n",
        &[],
    );
    assert_eq!(summary_lines(&err, "WorldWritableFile").len(), 1, "{err}");
    let err = build(
        &env,
        "onww",
        "ARG BASE=wwbase\nFROM ${BASE} AS base\nFROM base\nENV a=b\n",
        &[],
    );
    assert!(summary_lines(&err, "WorldWritableFile").is_empty(), "{err}");

    let good = "FROM busybox\n\
        RUN --mount=type=secret,id=tok wc -c /run/secrets/tok > /size && touch /w /s && chmod 644 /w && chmod 755 /s\n";
    let err = build(&env, "imggood", good, &["--secret", &spec]);
    for rule in ["SecretInLayer", "WorldWritableFile", "SetuidFileAdded"] {
        assert!(summary_lines(&err, rule).is_empty(), "{rule}: {err}");
    }

    // Build tools in the final stage of a multi-stage build (not of a single-stage one).
    let tools =
        "RUN mkdir -p /usr/bin && printf '#!/bin/sh\\n' > /usr/bin/gcc && chmod 755 /usr/bin/gcc\n";
    let multi = format!(
        "FROM busybox AS build\nRUN echo built > /out\nFROM busybox\nCOPY --from=build /out /out\n{tools}"
    );
    let err = build(&env, "tools", &multi, &[]);
    assert!(
        summary_lines(&err, "BuildToolsInFinalImage")
            .iter()
            .any(|l| l.contains("/usr/bin/gcc")),
        "{err}"
    );
    let clean =
        "FROM busybox AS build\nRUN echo built > /out\nFROM busybox\nCOPY --from=build /out /out\n";
    let err = build(&env, "notools", clean, &[]);
    assert!(
        summary_lines(&err, "BuildToolsInFinalImage").is_empty(),
        "{err}"
    );
    let single = format!("FROM busybox\n{tools}");
    let err = build(&env, "single", &single, &[]);
    assert!(
        summary_lines(&err, "BuildToolsInFinalImage").is_empty(),
        "{err}"
    );
}

/// A docker-archive holding one image `tag` whose config says `os/arch`
/// (a one-layer rootfs; nothing in it needs to run).
fn foreign_archive(env: &Env, tag: &str, arch: &str) -> PathBuf {
    use sha2::Digest as _;
    let mut l = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    l.append_data(&mut h, "etc/", &[][..]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(arch.len() as u64);
    l.append_data(&mut h, "etc/seed", arch.as_bytes()).unwrap();
    let layer = l.into_inner().unwrap();
    let diff_id = format!("{:x}", sha2::Sha256::digest(&layer));
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        "history": [{"created_by": "test layer"}],
    })
    .to_string();
    let config_hex = format!("{:x}", sha2::Sha256::digest(config.as_bytes()));
    let manifest = serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [tag],
        "Layers": [format!("{diff_id}/layer.tar")],
    }])
    .to_string();
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        (format!("{config_hex}.json"), config.as_bytes()),
        (format!("{diff_id}/layer.tar"), layer.as_slice()),
        ("manifest.json".to_owned(), manifest.as_bytes()),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    }
    let path = env.path(&format!("{arch}.tar"));
    fs_err::write(&path, b.into_inner().unwrap()).unwrap();
    path
}

#[test]
fn invalid_base_image_platform_from_the_base_images_config() {
    let env = common::build_env();
    let host = rbuild_host_arch();
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    let archive = foreign_archive(&env, "foreign:1", other);
    env.ok(&["load", "-i", archive.to_str().unwrap()]);
    let want = format!(
        "Base image foreign:1 was pulled with platform \"linux/{other}\", expected \"linux/{host}\" for current build"
    );

    // A build (no RUN: it succeeds whatever the architecture) warns at FROM's line.
    let err = build(&env, "foreign", "FROM foreign:1\nENV foo=bar\n", &[]);
    let lines = summary_lines(&err, "InvalidBaseImagePlatform");
    assert_eq!(
        lines,
        [format!(" - InvalidBaseImagePlatform: {want} (line 1)")],
        "{err}"
    );

    // rbuild check reads the store too: rule, line and message in JSON.
    let (code, v) = check_json(&env, "ARG BASE=foreign:1\nFROM ${BASE}\nENV foo=bar\n");
    assert_eq!(code, 1);
    let w: Vec<&Value> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["rule"] == "InvalidBaseImagePlatform")
        .collect();
    assert_eq!(w.len(), 1, "{v}");
    assert_eq!(w[0]["line"], 2);
    assert_eq!(w[0]["message"], want);

    // FROM --platform sets what is expected: the foreign image matches it, the
    // host's busybox does not.
    let df = format!(
        "FROM --platform=linux/{other} foreign:1 AS {other}\nFROM --platform=linux/{other} busybox AS b{other}\nFROM busybox\nCOPY --from={other} /etc/seed /seed\n"
    );
    let (_, v) = check_json(&env, &df);
    let w: Vec<(String, u64)> = rules(&v)
        .into_iter()
        .filter(|(r, _)| r == "InvalidBaseImagePlatform")
        .collect();
    assert_eq!(w, [("InvalidBaseImagePlatform".to_owned(), 2)], "{v}");
    let msg = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["rule"] == "InvalidBaseImagePlatform")
        .unwrap()["message"]
        .clone();
    assert_eq!(
        msg,
        format!(
            "Base image busybox was pulled with platform \"linux/{host}\", expected \"linux/{other}\" for current build"
        )
    );

    // A base the build pulls from a registry (not in the store before the build).
    let reg = common::registry::Registry::start();
    let remote = format!("{}/foreign:1", reg.host());
    env.ok(&["tag", "foreign:1", &remote]);
    env.ok(&["push", &remote]);
    let fresh = Env::new();
    let err = build(
        &fresh,
        "pulled",
        &format!("FROM {remote}\nENV foo=bar\n"),
        &[],
    );
    assert_eq!(
        summary_lines(&err, "InvalidBaseImagePlatform"),
        [format!(
            " - InvalidBaseImagePlatform: Base image {remote} was pulled with platform \"linux/{other}\", expected \"linux/{host}\" for current build (line 1)"
        )],
        "{err}"
    );

    // The host's own image does not fire it; skip= silences it.
    let err = build(&env, "native", "FROM busybox\nENV foo=bar\n", &[]);
    assert!(
        summary_lines(&err, "InvalidBaseImagePlatform").is_empty(),
        "{err}"
    );
    let err = build(
        &env,
        "skipped",
        "# check=skip=InvalidBaseImagePlatform\nFROM foreign:1\nENV foo=bar\n",
        &[],
    );
    assert!(
        summary_lines(&err, "InvalidBaseImagePlatform").is_empty(),
        "{err}"
    );
}

/// The host's architecture in GOARCH terms.
fn rbuild_host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("this test knows amd64 and arm64 hosts, not {other}"),
    }
}

/// The image rules read an image's layers once: a rebuild that makes the
/// same image reports what they found from `layer-scans/` (a record per
/// image), and a new image over the same layers scans none of them again
/// (a record per layer); builds with `--secret` values keep nothing.
#[test]
fn image_rules_keep_what_they_found_per_image_and_per_layer() {
    let env = common::build_env();
    let df = "FROM busybox\n\
        RUN printf -- '-----BEGIN OPENSSH PRIVATE KEY-----\\nabc\\n-----END OPENSSH PRIVATE KEY-----\\n' > /id_key && chmod 666 /id_key\n";
    let found = |err: &str| summary_lines(err, "SecretInLayer").join("\n");
    let err = build(&env, "kept", df, &[]);
    assert!(found(&err).contains("/id_key holds a private key"), "{err}");
    assert_eq!(summary_lines(&err, "WorldWritableFile").len(), 1, "{err}");
    let scans = env.root().join("layer-scans");
    let records = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs_err::read_dir(&scans)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let image_record = records()
        .into_iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("image-")
        })
        .expect("a record of the image's warnings");
    // The same image again: the record is what is reported (written here
    // by the test, to see it read), the layers are not read.
    fs_err::write(
        &image_record,
        r#"[["SecretInLayer","/from-the-record holds a private key; it is in the layer of `RUN x`"]]"#,
    )
    .unwrap();
    let err = build(&env, "kept", df, &[]);
    assert!(found(&err).contains("/from-the-record"), "{err}");
    assert!(summary_lines(&err, "WorldWritableFile").is_empty(), "{err}");
    // Another image (a label) over the same layers: the warnings are made
    // again, the private-key scan of the RUN's layer comes from its record.
    let layer_record = records()
        .into_iter()
        .find(|p| {
            p.to_string_lossy().contains("-keys-v1-")
                && fs_err::read_to_string(p).unwrap().contains("id_key")
        })
        .expect("a record of the RUN layer's scan");
    fs_err::write(&layer_record, r#"["from/the/layer/record"]"#).unwrap();
    let err = build(&env, "kept2", &format!("{df}LABEL x=1\n"), &[]);
    assert!(
        found(&err).contains("/from/the/layer/record holds a private key"),
        "{err}"
    );
    assert_eq!(summary_lines(&err, "WorldWritableFile").len(), 1, "{err}");
    // With a --secret value nothing is kept or read: the real scan.
    let before = records().len();
    let secret = env.path("token");
    fs_err::write(&secret, "s3cr3t-t0ken-value").unwrap();
    let spec = format!("id=tok,src={}", secret.display());
    let err = build(
        &env,
        "kept3",
        &format!("{df}LABEL x=2\n"),
        &["--secret", &spec],
    );
    assert!(found(&err).contains("/id_key holds a private key"), "{err}");
    assert_eq!(
        records().len(),
        before,
        "a record was written for a build with a secret"
    );
    env.ok(&["builder", "prune", "-a", "-f"]);
    assert_eq!(
        records(),
        Vec::<PathBuf>::new(),
        "builder prune -a leaves records"
    );
}

//! `rbuild parse` run as a real binary on the project's testdata Dockerfiles.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn rbuild() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rbuild"))
}

fn testdata(name: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/dockerfiles"
    ))
    .join(name)
}

fn parse_json(name: &str) -> Value {
    let out = rbuild()
        .args(["parse", "-f"])
        .arg(testdata(name))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: exit {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{name}: invalid JSON: {e}"))
}

fn kinds(doc: &Value) -> Vec<String> {
    doc["instructions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"]["instruction"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_testdata_dockerfile_parses_to_json() {
    let dir = testdata("");
    let mut count = 0;
    for entry in fs_err::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "Dockerfile") {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let doc = parse_json(&name);
            assert!(!kinds(&doc).is_empty(), "{name}: no instructions");
            count += 1;
        }
    }
    assert!(count >= 7, "only {count} testdata Dockerfiles");
}

#[test]
fn nginx_debian_fields() {
    let doc = parse_json("nginx-debian.Dockerfile");
    assert_eq!(doc["directives"]["syntax"], "docker/dockerfile:1");
    let ins = &doc["instructions"];
    assert_eq!(ins[0]["kind"]["image"], "debian:bookworm-slim");
    assert_eq!(ins[0]["span"]["start_line"], 3);
    let label = &ins[1]["kind"];
    assert_eq!(label["pairs"][0]["key"], "maintainer");
    assert_eq!(
        label["pairs"][0]["value"],
        "\"rbuild tests <tests@example.invalid>\""
    );
    assert_eq!(label["pairs"].as_array().unwrap().len(), 3);
    let run = ins
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"]["instruction"] == "run")
        .unwrap();
    // The comment line inside the continuation is gone, the command is one line.
    let shell = run["kind"]["command"]["shell"].as_str().unwrap();
    assert!(shell.starts_with("set -x "), "{shell}");
    assert!(!shell.contains("comments inside"), "{shell}");
    assert!(shell.contains("apt-get install --no-install-recommends"));
    assert_eq!(run["span"]["start_line"], 12);
    assert_eq!(run["span"]["end_line"], 22);
    let health = ins
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"]["instruction"] == "healthcheck")
        .unwrap();
    assert_eq!(health["kind"]["type"], "cmd");
    assert_eq!(health["kind"]["interval"]["nanos"], 30_000_000_000_i64);
    assert_eq!(health["kind"]["retries"], 3);
    assert_eq!(
        health["kind"]["command"]["shell"],
        "curl -fsS http://localhost/ || exit 1"
    );
}

#[test]
fn go_multistage_fields() {
    let doc = parse_json("go-multistage.Dockerfile");
    let ins = doc["instructions"].as_array().unwrap();
    let froms: Vec<&Value> = ins
        .iter()
        .filter(|i| i["kind"]["instruction"] == "from")
        .collect();
    assert_eq!(froms.len(), 3);
    assert_eq!(froms[0]["kind"]["platform"], "$BUILDPLATFORM");
    assert_eq!(
        froms[0]["kind"]["image"],
        "golang:${GO_VERSION}-alpine${ALPINE_VERSION}"
    );
    assert_eq!(froms[0]["kind"]["alias"], "build");
    let runs: Vec<&Value> = ins
        .iter()
        .filter(|i| i["kind"]["instruction"] == "run")
        .collect();
    let mounts = runs[1]["kind"]["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 3);
    assert_eq!(mounts[1]["type"], "cache");
    assert_eq!(mounts[1]["id"], "gobuild");
    assert_eq!(mounts[2]["type"], "secret");
    assert_eq!(mounts[2]["required"], false);
    assert_eq!(runs[2]["kind"]["network"], "none");
    let copy = ins
        .iter()
        .rev()
        .find(|i| i["kind"]["instruction"] == "copy")
        .unwrap();
    assert_eq!(copy["kind"]["from"], "build");
    assert_eq!(copy["kind"]["chown"], "65532:65532");
    assert_eq!(copy["kind"]["link"], true);
}

#[test]
fn onbuild_base_and_child() {
    let doc = parse_json("onbuild-base.Dockerfile");
    let ins = doc["instructions"].as_array().unwrap();
    let triggers: Vec<&Value> = ins
        .iter()
        .filter(|i| i["kind"]["instruction"] == "onbuild")
        .map(|i| &i["kind"]["trigger"]["kind"])
        .collect();
    assert_eq!(triggers.len(), 6);
    assert_eq!(triggers[0]["instruction"], "arg");
    assert_eq!(triggers[4]["instruction"], "run");
    assert_eq!(
        triggers[4]["heredocs"][0]["content"],
        "python -m compileall -q /app\n"
    );
    assert_eq!(triggers[5]["instruction"], "label");
    let expr = ins[6]["kind"]["expression"].as_str().unwrap();
    assert_eq!(expr, "RUN <<EOF\npython -m compileall -q /app\nEOF");

    let child = parse_json("onbuild-child.Dockerfile");
    assert_eq!(
        kinds(&child),
        ["from", "env", "expose", "cmd"].map(String::from)
    );
}

#[test]
fn every_instruction_kind_and_flag() {
    let doc = parse_json("every-instruction.Dockerfile");
    assert_eq!(doc["directives"]["check"], "skip=JSONArgsRecommended");
    let mut seen = kinds(&doc);
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen,
        [
            "add",
            "arg",
            "cmd",
            "copy",
            "entrypoint",
            "env",
            "expose",
            "from",
            "healthcheck",
            "label",
            "maintainer",
            "onbuild",
            "run",
            "shell",
            "stopsignal",
            "user",
            "volume",
            "workdir"
        ]
        .map(String::from)
    );
    let ins = doc["instructions"].as_array().unwrap();
    let big_run = ins
        .iter()
        .find(|i| {
            i["kind"]["instruction"] == "run" && i["kind"]["mounts"].as_array().unwrap().len() == 5
        })
        .expect("the RUN with five mounts");
    let m = &big_run["kind"]["mounts"];
    assert_eq!(m[0]["type"], "bind");
    assert_eq!(m[0]["readwrite"], true);
    assert_eq!(m[1]["sharing"], "private");
    assert_eq!(m[1]["readonly"], true);
    assert_eq!(m[2]["size"], "65536");
    assert_eq!(m[3]["env"], "TOKEN");
    assert_eq!(m[3]["required"], true);
    assert_eq!(m[4]["type"], "ssh");
    assert_eq!(big_run["kind"]["network"], "host");
    assert_eq!(big_run["kind"]["security"], "insecure");
    let copy = ins
        .iter()
        .find(|i| i["kind"]["instruction"] == "copy")
        .unwrap();
    assert_eq!(copy["kind"]["sources"], serde_json::json!(["a", "b"]));
    assert_eq!(copy["kind"]["exclude"], serde_json::json!(["*.md", "tmp"]));
    assert_eq!(copy["kind"]["parents"], true);
    assert_eq!(copy["kind"]["chmod"], "644");
    let args = ins
        .iter()
        .find(|i| {
            i["kind"]["instruction"] == "arg" && i["kind"]["args"].as_array().unwrap().len() == 3
        })
        .unwrap();
    assert_eq!(
        args["kind"]["args"],
        serde_json::json!([
            {"name": "NAME", "default": null},
            {"name": "VERSION", "default": "1.2.3"},
            {"name": "EMPTY", "default": ""}
        ])
    );
    let last = ins.last().unwrap();
    assert_eq!(last["kind"]["type"], "none");
}

#[test]
fn heredocs_are_attached() {
    let doc = parse_json("heredocs.Dockerfile");
    let ins = doc["instructions"].as_array().unwrap();
    let h = |i: usize| &ins[i]["kind"]["heredocs"];
    assert_eq!(
        h(1)[0]["content"],
        "apt-get update\napt-get install -y python3\n"
    );
    assert_eq!(h(1)[0]["expand"], true);
    assert_eq!(h(2)[0]["chomp"], true);
    assert_eq!(
        h(2)[0]["content"],
        "\tset -e\n\techo \"tabs are stripped: $HOME\"\n"
    );
    assert_eq!(h(3)[0]["expand"], false);
    assert_eq!(h(4).as_array().unwrap().len(), 2);
    assert_eq!(h(4)[1]["name"], "B");
    assert_eq!(h(4)[1]["expand"], false);
    assert_eq!(ins[5]["kind"]["dest"], "/etc/motd");
    assert_eq!(ins[5]["kind"]["sources"], serde_json::json!([]));
    assert_eq!(h(6)[0]["content"], "\t#!/bin/sh\n\techo hello\n");
    assert_eq!(ins[7]["kind"]["instruction"], "add");
}

#[test]
fn windows_escape_backtick() {
    let doc = parse_json("windows-escape.Dockerfile");
    assert_eq!(doc["directives"]["escape"], "`");
    let ins = doc["instructions"].as_array().unwrap();
    let run = &ins[5]["kind"];
    let shell = run["command"]["shell"].as_str().unwrap();
    assert!(shell.contains("C:\\tools ;     Write-Host"), "{shell}");
    assert_eq!(ins[2]["kind"]["pairs"][0]["value"], "C:\\tools");
}

#[test]
fn dump_format() {
    let out = rbuild()
        .args(["parse", "--format", "dump", "-f"])
        .arg(testdata("onbuild-base.Dockerfile"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    insta::assert_snapshot!(text);
}

#[test]
fn reads_stdin() {
    let mut child = rbuild()
        .args(["parse", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from alpine\nrun echo hi\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["instructions"][1]["keyword"], "run");
    assert_eq!(
        doc["instructions"][1]["kind"]["command"]["shell"],
        "echo hi"
    );
}

#[test]
fn defaults_to_dockerfile_in_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    let out = rbuild()
        .arg("parse")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["instructions"][0]["kind"]["image"], "scratch");

    let empty = tempfile::tempdir().unwrap();
    let out = rbuild()
        .arg("parse")
        .current_dir(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("Dockerfile"), "{err}");
}

fn failing(name: &str) -> (Output, String) {
    let out = rbuild()
        .args(["parse", "-f"])
        .arg(format!("../testdata/dockerfiles/invalid/{name}"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{name} should fail");
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    (out, err)
}

#[test]
fn unknown_instruction_diagnostic() {
    let (_, err) = failing("unknown-instruction.Dockerfile");
    assert!(
        err.starts_with("../testdata/dockerfiles/invalid/unknown-instruction.Dockerfile:3:1: ")
    );
    insta::assert_snapshot!(err);
}

#[test]
fn bad_flag_diagnostic() {
    let (_, err) = failing("bad-flag.Dockerfile");
    assert!(err.contains(":2:6: unknown flag: --form"));
    assert!(err.contains("^^^^"));
    insta::assert_snapshot!(err);
}

#[test]
fn version_and_help() {
    let out = rbuild().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("rbuild "));
    let out = rbuild().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("parse"));
    let out = rbuild().args(["parse", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--format"));
}

#[test]
fn dump_matches_buildkit_peer_results() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/peer-tests/buildkit-parser/testfiles"
    ));
    let Ok(entries) = fs_err::read_dir(dir) else {
        panic!("cannot run: {} is absent", dir.display());
    };
    let mut checked = 0;
    for entry in entries {
        let case = entry.unwrap().path();
        let out = rbuild()
            .args(["parse", "--format", "dump", "-f"])
            .arg(case.join("Dockerfile"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", case.display());
        let want = fs_err::read_to_string(case.join("result")).unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            want,
            "{}",
            case.display()
        );
        checked += 1;
    }
    assert_eq!(checked, 33);
}

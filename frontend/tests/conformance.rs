//! Plans every conformance case and compares the image config with what
//! `BuildKit` produced (`expected.json`'s `config`).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{FakeResolver, opts};
use rbuild_frontend::{BuildPlan, plan_source};
use serde_json::{Map, Value};

const KEYS: &[&str] = &[
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "Healthcheck",
    "OnBuild",
    "Shell",
];

fn view(plan: &BuildPlan) -> Map<String, Value> {
    let cfg = serde_json::to_value(&plan.image.config).unwrap();
    let mut out = Map::new();
    for k in KEYS {
        if let Some(v) = cfg.get(*k) {
            let empty = v.is_null()
                || v.as_array().is_some_and(Vec::is_empty)
                || v.as_object().is_some_and(Map::is_empty)
                || v.as_str() == Some("");
            if !empty {
                out.insert((*k).to_owned(), v.clone());
            }
        }
    }
    if let Some(a) = plan.image.author.as_ref().filter(|a| !a.is_empty()) {
        out.insert("Author".to_owned(), Value::String(a.clone()));
    }
    out
}

#[test]
fn conformance_cases_plan_to_the_reference_config() {
    let cases = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/cases"
    ));
    assert!(cases.is_dir(), "cannot run: {} is absent", cases.display());
    let mut names: Vec<_> = std::fs::read_dir(cases)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.json").is_file())
        .collect();
    names.sort();
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in names {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let meta: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let expected: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let ctx = dir.join("context");
        let mut resolver = FakeResolver::new();
        for pre in meta["pre"].as_array().into_iter().flatten() {
            let df = pre[0].as_str().unwrap();
            let tag = pre[1].as_str().unwrap();
            let src = std::fs::read_to_string(ctx.join(df)).unwrap();
            let plan = plan_source(&src, &opts(), &resolver)
                .unwrap_or_else(|e| panic!("{name}: pre-build {df}: {e}"));
            resolver.add_plan(tag, &plan);
        }
        let mut o = opts();
        o.dockerfile_path = ctx.join("Dockerfile").display().to_string();
        if let Some(args) = meta["args"].as_object() {
            o.build_args = args
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect::<BTreeMap<_, _>>();
        }
        o.target = meta["target"].as_str().map(str::to_owned);
        let src = std::fs::read_to_string(ctx.join("Dockerfile")).unwrap();
        let result = plan_source(&src, &o, &resolver);
        if expected["expect"] == "failure" {
            if name == "fail-unknown-instruction" {
                assert!(result.is_err(), "{name} must fail at plan time");
                let msg = result.unwrap_err().to_string();
                assert!(msg.contains("FROBNICATE"), "{msg}");
            }
            continue;
        }
        let plan = match result {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        checked += 1;
        // Layers relative to the imported busybox (one layer), as imgview counts.
        let base_layers = plan
            .base
            .as_ref()
            .map_or(0, |b| b.config.rootfs.diff_ids.len());
        let layers = base_layers + plan.layer_vertices.len();
        let want = usize::try_from(expected["layers"].as_u64().unwrap()).unwrap();
        if layers != want + 1 {
            failures.push(format!(
                "{name}: {} layers over busybox, reference {want}",
                layers.saturating_sub(1)
            ));
        }
        let got = Value::Object(view(&plan));
        if got != expected["config"] {
            failures.push(format!(
                "{name}:\n  expected {}\n  got      {}",
                expected["config"], got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 30, "only {checked} cases checked");
}

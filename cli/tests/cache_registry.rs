//! A build cache shared through a registry (`--cache-to type=registry`,
//! `--cache-from type=registry` or an image, `type=inline`), through the
//! binary, against a real `docker-registry` on 127.0.0.1: two state roots
//! (A and B) stand for two machines. What B downloaded is read from the
//! registry's access log; what the registry holds, from its storage.
//!
//! Needs root (steps run in the sandbox), the busybox base from
//! `testdata/examples/busybox-base.sh` and `docker-registry`; fails saying
//! what is missing otherwise.

mod common;

use std::collections::BTreeSet;

use common::cache::{
    F2, F3, F4, FROM, T2, T3, build_one_mount, multi_context, one_mount_machine, only_f4_runs_again,
};
use common::registry::Registry;
use common::steps::{Machine, Steps, set};

/// A blob of the registry's storage as JSON.
fn blob_json(reg: &Registry, digest: &str) -> serde_json::Value {
    let bytes = fs_err::read(reg.blob_data(digest)).unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("blob {digest}: {e}"))
}

/// The digest `repo:tag` names in the registry's storage.
fn tag_digest(reg: &Registry, repo: &str, tag: &str) -> String {
    let link = reg.dir.path().join(format!(
        "data/docker/registry/v2/repositories/{repo}/_manifests/tags/{tag}/current/link"
    ));
    fs_err::read_to_string(link).unwrap().trim().to_owned()
}

/// The cache manifest and its config under `repo:tag`.
fn cache_of(reg: &Registry, repo: &str, tag: &str) -> (serde_json::Value, serde_json::Value) {
    let m = blob_json(reg, &tag_digest(reg, repo, tag));
    assert_eq!(
        m["config"]["mediaType"], "application/vnd.rbuild.cache.config.v1+json",
        "{m}"
    );
    let c = blob_json(reg, m["config"]["digest"].as_str().unwrap());
    (m, c)
}

/// The layer blobs of the record of step `name`, bottom first, each as
/// (digest, is a base image's layer).
fn record_chain(config: &serde_json::Value, name: &str) -> Vec<(String, bool)> {
    let record = config["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["description"] == name)
        .unwrap_or_else(|| panic!("no record of {name}: {config}"));
    let mut next = record["layer"].as_u64();
    let mut chain = Vec::new();
    while let Some(i) = next {
        let l = &config["layers"][usize::try_from(i).unwrap()];
        chain.push((
            l["blob"].as_str().unwrap().to_owned(),
            l["base"].as_bool().unwrap_or(false),
        ));
        next = l["parent"].as_u64();
    }
    chain.reverse();
    chain
}

/// The step layers (not the base's) of `name`'s record.
fn step_blobs(config: &serde_json::Value, name: &str) -> BTreeSet<String> {
    record_chain(config, name)
        .into_iter()
        .filter(|(_, base)| !base)
        .map(|(d, _)| d)
        .collect()
}

#[test]
fn a_registry_cache_in_max_mode_makes_a_fresh_machine_run_nothing() {
    let reg = Registry::start();
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = format!("{}/cache/app:max", reg.host());
    let to = format!("type=registry,ref={cache},mode=max");
    let (sa, id_a) = a.build(&["--cache-to", &to, &a.p("ctx")]);
    assert!(
        sa.ran.contains(&format!("exporting cache to {cache}")),
        "the export is a step:\n{}",
        sa.log
    );
    // The manifest went last: after every blob upload of the export.
    let reqs = reg.requests();
    let put_manifest = reqs
        .iter()
        .rposition(|r| r.starts_with("PUT ") && r.contains("/manifests/"))
        .unwrap_or_else(|| panic!("no manifest PUT: {reqs:?}"));
    let last_blob = reqs
        .iter()
        .rposition(|r| r.starts_with("PUT ") && r.contains("/blobs/uploads/"))
        .unwrap_or_else(|| panic!("no blob upload: {reqs:?}"));
    assert!(last_blob < put_manifest, "{reqs:?}");
    let (m, config) = cache_of(&reg, "cache/app", "max");
    // mode=max: every step result has its layers.
    for step in [T2, T3, F2, F3, F4] {
        assert!(!step_blobs(&config, step).is_empty(), "{step}: {config}");
    }
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }

    // B: a fresh state root, the same base, the context elsewhere.
    let b = Machine::with_base_of(&a);
    multi_context(&b, "elsewhere/ctx");
    let before = reg.requests().len();
    let from = format!("type=registry,ref={cache}");
    let (sb, id_b) = b.build(&["--cache-from", &from, &b.p("elsewhere/ctx")]);
    assert!(
        sb.ran
            .contains(&format!("importing cache manifest from {cache}")),
        "the import is a step:\n{}",
        sb.log
    );
    assert_eq!(
        Steps::steps(&sb.cached),
        set(&[FROM, T2, T3, F2, F3, F4]),
        "{}",
        sb.log
    );
    assert_eq!(Steps::steps(&sb.ran), set(&[]), "{}", sb.log);
    assert_eq!(id_a, id_b, "the same image ID (A's created time travelled)");
    assert_eq!(b.cat(&id_b, "/app.out"), "a1\nb1\n");
    assert_eq!(b.cat(&id_b, "/tool.out"), "TOOL ONE\n");
    // Downloaded: the cache config and the final result's step layers; not
    // the other stage's layers, not the base B has.
    let got: BTreeSet<String> = Registry::blob_gets(&reg.requests()[before..])
        .into_iter()
        .collect();
    let mut want = step_blobs(&config, F4);
    want.insert(m["config"]["digest"].as_str().unwrap().to_owned());
    assert_eq!(got, want, "{:?}", &reg.requests()[before..]);

    // One file of the final stage changes: from its COPY on, the rest (the
    // other stage) stays cached.
    let b2 = Machine::with_base_of(&a);
    multi_context(&b2, "ctx");
    b2.write("ctx/app/b.txt", "b2\n");
    let (s2, id2) = b2.build(&["--cache-from", &from, &b2.p("ctx")]);
    assert_eq!(Steps::steps(&s2.cached), set(&[FROM, T2, T3]), "{}", s2.log);
    assert_eq!(
        Steps::steps(&s2.ran),
        set(&[FROM, F2, F3, F4]),
        "{}",
        s2.log
    );
    assert_eq!(b2.cat(&id2, "/app.out"), "a1\nb2\n");
    assert_eq!(b2.cat(&id2, "/tool.out"), "TOOL ONE\n");
}

#[test]
fn a_machine_that_imported_lazily_exports_the_layers_it_never_fetched_by_mounting_them() {
    let reg = Registry::start();
    let a = Machine::new();
    multi_context(&a, "ctx");
    let one = format!("{}/cache/app:one", reg.host());
    let (_, id_a) = a.build(&[
        "--cache-to",
        &format!("type=registry,ref={one},mode=max"),
        &a.p("ctx"),
    ]);
    let (_, first) = cache_of(&reg, "cache/app", "one");

    // B runs nothing, fetches the final result's layers only, and exports
    // every record's layers to another repository.
    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    let two = format!("{}/cache/other:two", reg.host());
    let before = reg.requests().len();
    let (s, id_b) = b.build(&[
        "--cache-from",
        &format!("type=registry,ref={one}"),
        "--cache-to",
        &format!("type=registry,ref={two},mode=max"),
        &b.p("ctx"),
    ]);
    assert_eq!(Steps::steps(&s.ran), set(&[]), "{}", s.log);
    assert_eq!(id_a, id_b);
    let reqs = reg.requests()[before..].to_vec();
    let got: BTreeSet<String> = Registry::blob_gets(&reqs).into_iter().collect();
    let tools: BTreeSet<String> = step_blobs(&first, T3);
    assert!(
        got.is_disjoint(&tools),
        "the other stage's layers were downloaded: {reqs:?}"
    );
    let (_, second) = cache_of(&reg, "cache/other", "two");
    assert_eq!(step_blobs(&second, T3), tools, "{second}");
    for blob in &tools {
        assert!(
            reqs.iter().any(|r| r.starts_with("POST ")
                && r.contains(&format!("mount={blob}"))
                && r.contains("from=cache/app")),
            "{blob} was not mounted from cache/app: {reqs:?}"
        );
    }

    // The base's layer, which B has but never downloaded, is mounted from
    // the imported cache's repository too, not uploaded.
    for (blob, _) in record_chain(&first, F4)
        .into_iter()
        .filter(|(_, base)| *base)
    {
        assert!(
            !reqs
                .iter()
                .any(|r| r.starts_with("PUT ") && r.contains(&format!("digest={blob}"))),
            "{blob} was uploaded: {reqs:?}"
        );
    }

    // And the new cache serves a third machine.
    let c = Machine::with_base_of(&a);
    multi_context(&c, "ctx");
    let (s, id_c) = c.build(&[
        "--cache-from",
        &format!("type=registry,ref={two}"),
        &c.p("ctx"),
    ]);
    assert_eq!(Steps::steps(&s.ran), set(&[]), "{}", s.log);
    assert_eq!(id_a, id_c);
    assert_eq!(c.cat(&id_c, "/tool.out"), "TOOL ONE\n");
}

#[test]
fn an_unchanged_re_export_compresses_and_uploads_nothing() {
    let reg = Registry::start();
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = format!("{}/cache/app:again", reg.host());
    let to = format!("type=registry,ref={cache},mode=max");
    a.build(&["--cache-to", &to, &a.p("ctx")]);
    let (first, _) = cache_of(&reg, "cache/app", "again");
    // Each step snapshot of A gets a file it did not have: a layer written
    // again from the snapshot would differ. An unchanged re-export names
    // each layer by the digest remembered from the first, which the
    // registry has (a HEAD), and writes none.
    let snapshots = a.env.root().join("snapshots");
    let mut tampered = 0;
    for e in fs_err::read_dir(&snapshots).unwrap() {
        let dir = e.unwrap().path();
        let Ok(meta) = fs_err::read_to_string(dir.join("meta.json")) else {
            continue;
        };
        if dir.join("fs").is_dir() && !meta.contains(r#""kind":"layer""#) {
            fs_err::write(dir.join("fs/tampered.txt"), "x").unwrap();
            tampered += 1;
        }
    }
    assert!(tampered >= 5, "{tampered} step snapshots");
    let before = reg.requests().len();
    let (s, _) = a.build(&["--cache-to", &to, &a.p("ctx")]);
    assert_eq!(Steps::steps(&s.ran), set(&[]), "{}", s.log);
    let reqs = reg.requests()[before..].to_vec();
    assert!(
        !reqs.iter().any(|r| r.contains("/blobs/uploads/")),
        "a blob was uploaded: {reqs:?}"
    );
    let (second, _) = cache_of(&reg, "cache/app", "again");
    assert_eq!(first["layers"], second["layers"]);
}

/// The layers the cache export compressed itself: the compressed-blob
/// records it leaves beside each snapshot's layer record (`.gzip`).
fn compressed_by_cache_export(m: &Machine) -> usize {
    let dir = m.env.root().join("layer-cache");
    fs_err::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".gzip"))
        })
        .count()
}

#[test]
fn a_push_with_a_max_mode_registry_cache_compresses_each_layer_once() {
    let reg = Registry::start();
    let a = Machine::new();
    multi_context(&a, "ctx");
    let image = format!("{}/app:once", reg.host());
    let cache = format!("{}/cache/app:once", reg.host());
    let pushed = a.env.run(&[
        "build",
        "--progress",
        "plain",
        "--push",
        "-t",
        &image,
        "--cache-to",
        &format!("type=registry,ref={cache},mode=max"),
        &a.p("ctx"),
    ]);
    let err = String::from_utf8_lossy(&pushed.stderr);
    assert!(pushed.status.success(), "{err}");
    // The push compressed the image's four layers (the base and F2-F4) and
    // uploaded them; the cache export compressed only the two layers of
    // the tools stage, which the image does not have (T2, T3), and mounted
    // the image's from its repository.
    assert_eq!(compressed_by_cache_export(&a), 2);
    let manifest = blob_json(&reg, &tag_digest(&reg, "app", "once"));
    let image_layers: BTreeSet<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(image_layers.len(), 4, "{manifest}");
    let (cache_manifest, _) = cache_of(&reg, "cache/app", "once");
    let cache_layers: BTreeSet<String> = cache_manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(cache_layers.len(), 6, "{cache_manifest}");
    assert!(
        image_layers.is_subset(&cache_layers),
        "{image_layers:?} {cache_layers:?}"
    );
    let reqs = reg.requests();
    let mounted: BTreeSet<String> = reqs
        .iter()
        .filter(|r| r.starts_with("POST /v2/cache/app/blobs/uploads/?mount="))
        .filter_map(|r| {
            r.split("mount=")
                .nth(1)?
                .split('&')
                .next()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(mounted, image_layers, "{reqs:?}");
    // Uploads into the cache: the two tools layers and the cache config.
    let uploads = reqs
        .iter()
        .filter(|r| r.starts_with("PUT /v2/cache/app/blobs/uploads/"))
        .count();
    assert_eq!(uploads, 3, "{reqs:?}");

    // The cache serves a fresh machine: every step cached.
    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    let (steps, id_b) = b.build(&[
        "--cache-from",
        &format!("type=registry,ref={cache}"),
        &b.p("ctx"),
    ]);
    assert_eq!(Steps::steps(&steps.ran), set(&[]), "{}", steps.log);
    assert_eq!(b.cat(&id_b, "/app.out"), "a1\nb1\n");
    assert_eq!(b.cat(&id_b, "/tool.out"), "TOOL ONE\n");
}

#[test]
fn a_min_mode_registry_cache_makes_an_unchanged_build_fetch_only_the_final_layers() {
    let reg = Registry::start();
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = format!("{}/cache/app:min", reg.host());
    let (_, id_a) = a.build(&[
        "--cache-to",
        &format!("type=registry,ref={cache}"),
        &a.p("ctx"),
    ]);
    let (m, config) = cache_of(&reg, "cache/app", "min");
    let with_layers: Vec<&str> = config["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("layer").is_some())
        .map(|r| r["description"].as_str().unwrap())
        .collect();
    assert_eq!(with_layers, [F4], "{config}");

    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    let before = reg.requests().len();
    // A bare reference works as type=registry.
    let (s, id_b) = b.build(&["--cache-from", &cache, &b.p("ctx")]);
    assert_eq!(Steps::steps(&s.ran), set(&[]), "{}", s.log);
    assert_eq!(
        Steps::steps(&s.cached),
        set(&[FROM, T2, T3, F2, F3, F4]),
        "{}",
        s.log
    );
    assert_eq!(id_a, id_b);
    let got: BTreeSet<String> = Registry::blob_gets(&reg.requests()[before..])
        .into_iter()
        .collect();
    let mut want = step_blobs(&config, F4);
    assert_eq!(want.len(), 3, "F2, F3 and F4's layers: {config}");
    want.insert(m["config"]["digest"].as_str().unwrap().to_owned());
    assert_eq!(got, want, "{:?}", &reg.requests()[before..]);
    // Those are the image's own layers (by diff ID), above the base.
    let diff_ids = b
        .env
        .ok(&["inspect", "--format", "{{json .RootFS.Layers}}", &id_b]);
    let diff_ids: Vec<String> = serde_json::from_str(diff_ids.trim()).unwrap();
    let cached_diff_ids: BTreeSet<String> = config["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| !l["base"].as_bool().unwrap_or(false))
        .map(|l| l["diff_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        cached_diff_ids.is_subset(&diff_ids.iter().cloned().collect()),
        "{cached_diff_ids:?} ⊄ {diff_ids:?}"
    );
    assert_eq!(b.cat(&id_b, "/tool.out"), "TOOL ONE\n");
}

#[test]
fn an_inline_cache_pushed_with_the_image_serves_a_fresh_machine() {
    let reg = Registry::start();
    let a = Machine::new();
    multi_context(&a, "ctx");
    let image = format!("{}/app:inline", reg.host());
    let pushed = a.env.run(&[
        "build",
        "--progress",
        "plain",
        "--push",
        "-t",
        &image,
        "--cache-to",
        "type=inline",
        &a.p("ctx"),
    ]);
    let err = String::from_utf8_lossy(&pushed.stderr);
    assert!(pushed.status.success(), "{err}");
    // The pushed config carries the records.
    let manifest = blob_json(&reg, &tag_digest(&reg, "app", "inline"));
    let config = blob_json(&reg, manifest["config"]["digest"].as_str().unwrap());
    let inline = &config["rbuild.cache.v1"];
    assert!(
        inline["records"].as_array().is_some_and(|r| r.len() >= 6),
        "{config}"
    );

    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    let before = reg.requests().len();
    let (steps, id_b) = b.build(&["--cache-from", &image, &b.p("ctx")]);
    assert!(
        steps
            .ran
            .contains(&format!("importing cache manifest from {image}")),
        "{}",
        steps.log
    );
    assert_eq!(Steps::steps(&steps.ran), set(&[]), "{}", steps.log);
    assert_eq!(
        Steps::steps(&steps.cached),
        set(&[FROM, T2, T3, F2, F3, F4]),
        "{}",
        steps.log
    );
    assert_eq!(b.cat(&id_b, "/app.out"), "a1\nb1\n");
    assert_eq!(b.cat(&id_b, "/tool.out"), "TOOL ONE\n");
    // What came: the image config and the image's layers above the base.
    let gets = Registry::blob_gets(&reg.requests()[before..]);
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    assert!(gets.contains(&manifest["config"]["digest"].as_str().unwrap().to_owned()));
    assert!(
        !gets.contains(&layers[0]),
        "the base layer was not fetched: {gets:?}"
    );
    assert_eq!(gets.len(), 1 + 3, "config + 3 step layers: {gets:?}");

    // A machine that builds from it with an inline cache of its own makes
    // the same image as A pushed (the same records, the same created time).
    let c = Machine::with_base_of(&a);
    multi_context(&c, "ctx");
    let (steps, id_c) = c.build(&[
        "--cache-from",
        &image,
        "--cache-to",
        "type=inline",
        &c.p("ctx"),
    ]);
    assert_eq!(Steps::steps(&steps.ran), set(&[]), "{}", steps.log);
    let id_a = a.env.ok(&["inspect", "--format", "{{.Id}}", &image]);
    assert_eq!(id_c, id_a.trim());
}

#[test]
fn a_missing_ref_or_corrupt_cache_manifest_warns_and_builds() {
    let reg = Registry::start();
    let a = Machine::new();
    multi_context(&a, "ctx");
    let missing = format!("{}/cache/none:x", reg.host());
    let o = a.env.run(&[
        "build",
        "--progress",
        "plain",
        "--cache-from",
        &format!("type=registry,ref={missing}"),
        &a.p("ctx"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("cache import from {missing} failed")),
        "a warning names the source:\n{err}"
    );

    let cache = format!("{}/cache/app:bad", reg.host());
    a.build(&[
        "--cache-to",
        &format!("type=registry,ref={cache},mode=max"),
        &a.p("ctx"),
    ]);
    let b = Machine::with_base_of(&a);
    multi_context(&b, "ctx");
    let build_b = |cache: &str| {
        let o = b.env.run(&[
            "build",
            "--progress",
            "plain",
            "--cache-from",
            &format!("type=registry,ref={cache}"),
            &b.p("ctx"),
        ]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        err.lines()
            .find(|l| l.contains(&format!("cache import from {cache} failed")))
            .unwrap_or_else(|| panic!("no warning naming {cache}:\n{err}"))
            .to_owned()
    };
    // The manifest's bytes garbled in the registry's storage (the registry
    // then fails to serve it).
    let (m, _) = cache_of(&reg, "cache/app", "bad");
    let m_path = reg.blob_data(&tag_digest(&reg, "cache/app", "bad"));
    let m_bytes = fs_err::read(&m_path).unwrap();
    fs_err::write(&m_path, b"{garbage").unwrap();
    let warning = build_b(&cache);
    assert!(warning.contains("manifests/bad"), "{warning}");
    fs_err::write(&m_path, m_bytes).unwrap();
    // Its config's bytes corrupted in the registry's storage (they no
    // longer match their digest).
    fs_err::write(
        reg.blob_data(m["config"]["digest"].as_str().unwrap()),
        b"{garbage",
    )
    .unwrap();
    // And a manifest whose config is rbuild's type but not a cache
    // description (its digest right).
    let garbage = common::registry::put_blob(&reg, "cache/app", b"{\"records\": 7}");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.rbuild.cache.config.v1+json",
            "digest": garbage,
            "size": 14,
        },
        "layers": [],
    });
    common::registry::put_manifest(
        &reg,
        "cache/app",
        "garbage",
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
    for (cache, why) in [
        (cache.clone(), "digest mismatch"),
        (format!("{}/cache/app:garbage", reg.host()), "cache config"),
    ] {
        let warning = build_b(&cache);
        assert!(warning.contains(why), "{warning}");
    }
}

#[test]
fn a_blob_missing_from_the_registry_makes_its_step_run() {
    let reg = Registry::start();
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = format!("{}/cache/app:hole", reg.host());
    a.build(&[
        "--cache-to",
        &format!("type=registry,ref={cache},mode=max"),
        &a.p("ctx"),
    ]);
    let (_, config) = cache_of(&reg, "cache/app", "hole");
    // The top layer of the final step: gone from the registry's storage.
    let (top, _) = record_chain(&config, F4).pop().unwrap();
    fs_err::remove_file(reg.blob_data(&top)).unwrap();
    let (b, id) = only_f4_runs_again(&a, &format!("type=registry,ref={cache}"));
    assert_eq!(b.cat(&id, "/app.out"), "a1\nb1\n");
}

#[test]
fn an_export_to_a_dead_registry_fails_the_build_unless_ignore_error() {
    let a = Machine::new();
    multi_context(&a, "ctx");
    let dead = format!("127.0.0.1:{}/cache/app:x", common::registry::free_port());
    let o = a.env.run(&[
        "build",
        "--progress",
        "plain",
        "--cache-to",
        &format!("type=registry,ref={dead},ignore-error=true"),
        &a.p("ctx"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "exporting cache to {dead} failed (ignore-error=true)"
        )),
        "{err}"
    );

    let o = a.env.run(&[
        "build",
        "--progress",
        "plain",
        "--cache-to",
        &format!("type=registry,ref={dead}"),
        &a.p("ctx"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("exporting cache to {dead}")) && last.contains("127.0.0.1"),
        "the error names the export and the registry: {err}"
    );
}

#[test]
fn zstd_caches_round_trip_through_a_registry_and_a_directory() {
    let reg = Registry::start();
    let a = Machine::new();
    multi_context(&a, "ctx");
    let cache = format!("{}/cache/app:zstd", reg.host());
    let dir = a.p("zcache");
    let (_, id_a) = a.build(&[
        "--cache-to",
        &format!("type=registry,ref={cache},mode=max,compression=zstd"),
        "--cache-to",
        &format!("type=local,dest={dir},mode=max,compression=zstd"),
        &a.p("ctx"),
    ]);
    let (m, _) = cache_of(&reg, "cache/app", "zstd");
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd",
            "{m}"
        );
        let data = fs_err::read(reg.blob_data(l["digest"].as_str().unwrap())).unwrap();
        assert_eq!(&data[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    }
    for from in [
        format!("type=registry,ref={cache}"),
        format!("type=local,src={dir}"),
    ] {
        let b = Machine::with_base_of(&a);
        multi_context(&b, "ctx");
        let (s, id_b) = b.build(&["--cache-from", &from, &b.p("ctx")]);
        assert_eq!(Steps::steps(&s.ran), set(&[]), "{from}: {}", s.log);
        assert_eq!(id_a, id_b, "{from}");
        assert_eq!(b.cat(&id_b, "/tool.out"), "TOOL ONE\n");
    }
}

#[test]
fn two_machines_exporting_to_one_ref_at_once_leave_a_cache_that_imports() {
    let reg = Registry::start();
    let a1 = Machine::new();
    let a2 = Machine::with_base_of(&a1);
    multi_context(&a1, "ctx");
    multi_context(&a2, "ctx");
    a2.write("ctx/app/b.txt", "b from a2\n");
    a2.write("ctx/tool.txt", "tool two\n");
    let cache = format!("{}/cache/app:shared", reg.host());
    let to = format!("type=registry,ref={cache},mode=max");
    let spawn = |m: &Machine| {
        m.env
            .cmd(&[
                "build",
                "--progress",
                "plain",
                "--cache-to",
                &to,
                &m.p("ctx"),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (c1, c2) = (spawn(&a1), spawn(&a2));
    for c in [c1, c2] {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // Whichever manifest won names only blobs the registry has.
    let (m, _) = cache_of(&reg, "cache/app", "shared");
    for l in m["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert!(reg.blob_data(d).is_file(), "{d} missing: {m}");
    }
    // And a third machine imports it: every step cached or run, none failed.
    let b = Machine::with_base_of(&a1);
    multi_context(&b, "ctx");
    let o = b.env.run(&[
        "build",
        "--progress",
        "plain",
        "--cache-from",
        &format!("type=registry,ref={cache}"),
        &b.p("ctx"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("failed"), "{err}");
    assert!(!err.contains("not usable"), "{err}");
    assert!(err.contains("CACHED"), "{err}");
}

#[test]
fn cache_mounts_travel_through_a_registry_with_cache_mounts_true() {
    let reg = Registry::start();
    let a = one_mount_machine(None);
    let cache = format!("{}/cache/mounts:1", reg.host());
    let to = format!("type=registry,ref={cache},mode=max,cache-mounts=true");
    build_one_mount(&a, "a", &["--cache-to", &to]);
    let (_, config) = cache_of(&reg, "cache/mounts", "1");
    let mounts = config["cache_mounts"].as_array().expect("cache_mounts");
    assert_eq!(mounts.len(), 1, "{config}");
    assert_eq!(mounts[0]["id"], "pkgs", "{config}");

    // B's RUN (another N: it runs) sees A's file in the mount.
    let b = one_mount_machine(Some(&a));
    let from = format!("type=registry,ref={cache},cache-mounts=true");
    let (s, id) = build_one_mount(&b, "b", &["--cache-from", &from]);
    assert!(s.ran.iter().any(|n| n.contains("RUN --mount")), "{}", s.log);
    assert_eq!(b.cat(&id, "/pkgs"), "from-a\nfrom-b\n");

    // Without the option, nothing of the mounts travels.
    let c = one_mount_machine(Some(&a));
    let from = format!("type=registry,ref={cache}");
    let (_, id) = build_one_mount(&c, "c", &["--cache-from", &from]);
    assert_eq!(c.cat(&id, "/pkgs"), "from-c\n");
}

//! The image store commands, through the real binary.

mod common;

use common::{Env, have, rootfs_tar, snapshot};

#[test]
fn import_save_load_save_is_byte_identical() {
    let env = Env::new();
    let id = env.import_rootfs("busybox:latest", "a");
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let s1 = env.path("s1.tar");
    let s2 = env.path("s2.tar");
    env.ok(&["save", "busybox", "-o", s1.to_str().unwrap()]);
    env.ok(&["rmi", "busybox"]);
    assert_eq!(env.ok(&["images", "-q"]), "");
    let out = env.ok(&["load", "-i", s1.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: busybox:latest\n");
    env.ok(&["save", "busybox:latest", "-o", s2.to_str().unwrap()]);
    assert_eq!(fs_err::read(&s1).unwrap(), fs_err::read(&s2).unwrap());
    // And through stdin/stdout.
    let o = env.cmd(&["save", "busybox"]).output().unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout, fs_err::read(&s1).unwrap());
    let o = env.with_stdin(&["load"], &o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn save_writes_the_combined_docker_and_oci_layout() {
    let env = Env::new();
    let id = env.import_rootfs("app:v1", "a");
    env.ok(&["tag", "app:v1", "other/app:v2"]);
    let out = env.path("s.tar");
    env.ok(&[
        "save",
        "-o",
        out.to_str().unwrap(),
        "app:v1",
        "other/app:v2",
    ]);
    let mut names = Vec::new();
    let mut files = std::collections::HashMap::new();
    let mut a = tar::Archive::new(fs_err::File::open(&out).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        assert_eq!(e.header().mtime().unwrap(), 0);
        names.push(name.clone());
        files.insert(name, data);
    }
    for want in [
        "manifest.json",
        "repositories",
        "oci-layout",
        "index.json",
        &format!("blobs/sha256/{}", &id[7..]),
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["app:v1", "other/app:v2"])
    );
    assert_eq!(manifest[0]["Config"], format!("blobs/sha256/{}", &id[7..]));
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["io.containerd.image.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        names,
        vec!["docker.io/library/app:v1", "docker.io/other/app:v2"]
    );
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "v1"
    );
    let repos: serde_json::Value = serde_json::from_slice(&files["repositories"]).unwrap();
    assert!(repos["other/app"]["v2"].is_string());
}

#[test]
fn import_reads_compressed_tarballs_and_stdin() {
    let env = Env::new();
    let plain = env.path("r.tar");
    fs_err::write(&plain, rootfs_tar("c")).unwrap();
    let id_plain = env
        .ok(&["import", plain.to_str().unwrap(), "c:plain"])
        .trim()
        .to_owned();
    let diff = |name: &str| env.ok(&["inspect", "--format", "{{json .RootFS.Layers}}", name]);
    for (tool, ext) in [
        ("gzip", "gz"),
        ("bzip2", "bz2"),
        ("xz", "xz"),
        ("zstd", "zst"),
    ] {
        assert!(have(tool), "cannot run: {tool}: not installed");
        let st = std::process::Command::new(tool)
            .arg("-k")
            .arg("-f")
            .arg(&plain)
            .status()
            .unwrap();
        assert!(st.success());
        let comp = env.path(&format!("r.tar.{ext}"));
        let tag = format!("c:{tool}");
        env.ok(&["import", comp.to_str().unwrap(), &tag]);
        assert_eq!(
            diff(&tag),
            diff("c:plain"),
            "{tool} import gives the same layer"
        );
    }
    let o = env.with_stdin(&["import", "-", "c:stdin"], &rootfs_tar("c"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(diff("c:stdin"), diff("c:plain"));
    assert!(id_plain.starts_with("sha256:"));
}

#[test]
fn import_changes_and_message_reach_the_config() {
    let env = Env::new();
    let tar = env.path("r.tar");
    fs_err::write(&tar, rootfs_tar("x")).unwrap();
    env.ok(&[
        "import",
        "-c",
        r#"CMD ["/bin/sh", "-c", "echo hi"]"#,
        "-c",
        "ENTRYPOINT /entry",
        "-c",
        "ENV A=1 B=\"two words\"",
        "-c",
        "EXPOSE 80 53/udp",
        "-c",
        "LABEL version=1.0",
        "-c",
        "USER nobody",
        "-c",
        "VOLUME /data",
        "-c",
        "WORKDIR /srv",
        "-c",
        "STOPSIGNAL SIGTERM",
        "-m",
        "my message",
        tar.to_str().unwrap(),
        "changed:1",
    ]);
    let cfg: serde_json::Value =
        serde_json::from_str(&env.ok(&["inspect", "--format", "{{json .Config}}", "changed:1"]))
            .unwrap();
    assert_eq!(cfg["Cmd"], serde_json::json!(["/bin/sh", "-c", "echo hi"]));
    assert_eq!(
        cfg["Entrypoint"],
        serde_json::json!(["/bin/sh", "-c", "/entry"])
    );
    assert_eq!(cfg["Env"], serde_json::json!(["A=1", "B=two words"]));
    assert_eq!(
        cfg["ExposedPorts"],
        serde_json::json!({"53/udp": {}, "80/tcp": {}})
    );
    assert_eq!(cfg["Labels"], serde_json::json!({"version": "1.0"}));
    assert_eq!(cfg["User"], "nobody");
    assert_eq!(cfg["Volumes"], serde_json::json!({"/data": {}}));
    assert_eq!(cfg["WorkingDir"], "/srv");
    assert_eq!(cfg["StopSignal"], "SIGTERM");
    let hist = env.ok(&["history", "--format", "{{.Comment}}", "changed:1"]);
    assert_eq!(hist, "my message\n");
    let err = env.fails(&["import", "-c", "RUN echo", tar.to_str().unwrap()]);
    assert!(err.contains("RUN"), "{err}");
}

#[test]
#[allow(clippy::many_single_char_names)]
fn images_lists_formats_and_filters() {
    let env = Env::new();
    let a = env.import_rootfs("alpha:1", "a");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = env.import_rootfs("beta:2", "b");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let tar = env.path("l.tar");
    fs_err::write(&tar, rootfs_tar("c")).unwrap();
    let c = env
        .ok(&[
            "import",
            "-c",
            "LABEL team=core",
            tar.to_str().unwrap(),
            "gamma/app:3",
        ])
        .trim()
        .to_owned();
    let short = |id: &str| id[7..19].to_owned();

    let table = env.ok(&["images"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("REPOSITORY   TAG       IMAGE ID       CREATED"),
        "{table}"
    );
    assert!(lines[0].ends_with("SIZE"));
    assert_eq!(lines.len(), 4);
    assert!(
        lines[1].starts_with("gamma/app") && lines[1].contains(&short(&c)),
        "newest first: {table}"
    );
    assert!(lines[1].contains(" ago "), "{table}");

    assert_eq!(
        env.ok(&["images", "-q"]),
        format!("{}\n{}\n{}\n", short(&c), short(&b), short(&a))
    );
    assert_eq!(
        env.ok(&["images", "-q", "--no-trunc", "beta"]),
        format!("{b}\n")
    );
    assert_eq!(
        env.ok(&["images", "--format", "{{.ID}}: {{.Repository}}"]),
        format!(
            "{}: gamma/app\n{}: beta\n{}: alpha\n",
            short(&c),
            short(&b),
            short(&a)
        )
    );
    assert_eq!(
        env.ok(&[
            "images",
            "-f",
            "since=alpha:1",
            "--format",
            "{{.Repository}}:{{.Tag}}"
        ]),
        "gamma/app:3\nbeta:2\n"
    );
    assert_eq!(
        env.ok(&[
            "images",
            "-f",
            "before=beta:2",
            "--format",
            "{{.Repository}}"
        ]),
        "alpha\n"
    );
    assert_eq!(
        env.ok(&["images", "-f", "label=team", "--format", "{{.Repository}}"]),
        "gamma/app\n"
    );
    assert_eq!(
        env.ok(&[
            "images",
            "-f",
            "label=team=other",
            "--format",
            "{{.Repository}}"
        ]),
        ""
    );
    assert_eq!(
        env.ok(&[
            "images",
            "-f",
            "reference=*a*",
            "--format",
            "{{.Repository}}"
        ]),
        "beta\nalpha\n"
    );
    assert_eq!(
        env.ok(&[
            "images",
            "-f",
            "reference=gamma/*",
            "--format",
            "{{.Repository}}"
        ]),
        "gamma/app\n"
    );
    assert_eq!(
        env.ok(&["images", "alpha:1", "--format", "{{.Tag}}"]),
        "1\n"
    );
    assert_eq!(
        env.ok(&["images", "-f", "dangling=true"]).lines().count(),
        1,
        "header only"
    );

    let json_line = env.ok(&["images", "--format", "{{json .}}", "beta"]);
    let v: serde_json::Value = serde_json::from_str(json_line.trim()).unwrap();
    assert_eq!(v["Repository"], "beta");
    assert_eq!(v["ID"], short(&b));
    assert!(v["Size"].as_str().unwrap().ends_with('B'));
    let t = env.ok(&[
        "images",
        "--format",
        "table {{.Repository}}\\t{{.Tag}}",
        "beta",
    ]);
    assert_eq!(t, "REPOSITORY   TAG\nbeta         2\n");
    let digests = env.ok(&["images", "--digests", "beta"]);
    assert!(
        digests.lines().next().unwrap().contains("DIGEST") && digests.contains("sha256:"),
        "{digests}"
    );

    let err = env.fails(&["images", "-f", "bogus=1"]);
    assert!(err.contains("invalid filter"), "{err}");
    env.fails(&["images", "-f", "since=nope:1"]);
}

#[test]
fn retagging_leaves_a_dangling_image_that_rmi_removes() {
    let env = Env::new();
    let old = env.import_rootfs("app:latest", "one");
    let new = env.import_rootfs("app:latest", "two");
    assert_ne!(old, new);
    let dangling = env.ok(&["images", "-f", "dangling=true"]);
    assert!(
        dangling.contains("<none>") && dangling.contains(&old[7..19]),
        "{dangling}"
    );
    let q = env.ok(&["images", "-q", "-f", "dangling=true"]);
    let ids: Vec<&str> = q.split_whitespace().collect();
    assert_eq!(ids, vec![&old[7..19]]);
    let mut args = vec!["rmi"];
    args.extend(ids);
    let out = env.ok(&args);
    assert!(out.starts_with(&format!("Deleted: {old}\n")), "{out}");
    assert_eq!(env.ok(&["images", "-q", "-f", "dangling=true"]), "");
    assert_eq!(env.ok(&["images", "-q"]), format!("{}\n", &new[7..19]));
}

#[test]
fn rmi_follows_docker_rules() {
    let env = Env::new();
    let id = env.import_rootfs("one:latest", "s");
    env.ok(&["tag", "one", "two:latest"]);
    // Removing one of two tags only untags.
    assert_eq!(env.ok(&["rmi", "one"]), "Untagged: one:latest\n");
    env.ok(&["tag", "two", "three:x"]);
    // By ID with tags in several repositories: refused without -f.
    let err = env.fails(&["rmi", &id[7..19]]);
    assert!(
        err.contains("must be forced") && err.contains("multiple repositories"),
        "{err}"
    );
    let out = env.ok(&["rmi", "-f", &id[7..19]]);
    let layer_del = out.lines().filter(|l| l.starts_with("Deleted: ")).count();
    assert_eq!(out.lines().next().unwrap(), "Untagged: three:x");
    assert!(
        out.contains("Untagged: two:latest") && out.contains(&format!("Deleted: {id}")),
        "{out}"
    );
    assert_eq!(layer_del, 2, "the image and its layer: {out}");
    // A layer shared with another image stays.
    let a = env.import_rootfs("a:1", "shared");
    let tar = env.path("rootfs-shared.tar");
    let b = env
        .ok(&["import", "-m", "other config", tar.to_str().unwrap(), "b:1"])
        .trim()
        .to_owned();
    assert_ne!(a, b);
    let out = env.ok(&["rmi", "a:1"]);
    assert_eq!(
        out,
        format!("Untagged: a:1\nDeleted: {a}\n"),
        "layer still used by b:1"
    );
    let out = env.ok(&["rmi", &format!("b@{b}")]);
    assert!(
        out.contains(&format!("Deleted: {b}")) && out.lines().count() == 3,
        "{out}"
    );
    // Unknown names.
    let err = env.fails(&["rmi", "nope:1"]);
    assert_eq!(err.trim(), "Error: No such image: nope:1");
}

#[test]
fn an_ambiguous_short_id_is_refused() {
    let env = Env::new();
    let tar = env.path("r.tar");
    fs_err::write(&tar, rootfs_tar("amb")).unwrap();
    let mut seen: std::collections::HashMap<char, String> = std::collections::HashMap::new();
    for i in 0..64 {
        let id = env
            .ok(&["import", "-m", &format!("m{i}"), tar.to_str().unwrap()])
            .trim()
            .to_owned();
        let c = id.chars().nth(7).unwrap();
        if let Some(prev) = seen.get(&c) {
            assert_ne!(prev, &id);
            let err = env.fails(&["rmi", &c.to_string()]);
            assert!(err.contains("ambiguous"), "{err}");
            let err = env.fails(&["inspect", &c.to_string()]);
            assert!(err.contains("ambiguous"), "{err}");
            return;
        }
        seen.insert(c, id);
    }
    panic!("no two IDs shared a first digit in 64 imports");
}

#[test]
fn history_and_inspect() {
    let env = Env::new();
    let id = env.import_rootfs("h:1", "h");
    let h = env.ok(&["history", "h:1"]);
    let lines: Vec<&str> = h.lines().collect();
    assert!(
        lines[0].starts_with("IMAGE          CREATED")
            && lines[0].contains("CREATED BY")
            && lines[0].contains("COMMENT"),
        "{h}"
    );
    assert!(
        lines[1].starts_with(&id[7..19]) && lines[1].contains("Imported from -"),
        "{h}"
    );
    assert_eq!(
        env.ok(&["history", "-q", "h:1"]),
        format!("{}\n", &id[7..19])
    );
    assert_eq!(
        env.ok(&["history", "-q", "--no-trunc", "h:1"]),
        format!("{id}\n")
    );

    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "h:1"])).unwrap();
    let o = &v[0];
    assert_eq!(o["Id"], id);
    assert_eq!(o["RepoTags"], serde_json::json!(["h:1"]));
    assert!(
        o["RepoDigests"][0]
            .as_str()
            .unwrap()
            .starts_with("h@sha256:")
    );
    assert_eq!(o["Os"], "linux");
    assert_eq!(o["RootFS"]["Type"], "layers");
    assert_eq!(
        o["Size"].as_u64().unwrap(),
        38,
        "docker's size: files (30 + 1) and the symlink target (7)"
    );
    for k in [
        "Created",
        "Author",
        "Config",
        "Architecture",
        "History",
        "Metadata",
    ]
    .iter()
    .filter(|k| **k != "History")
    {
        assert!(o.get(*k).is_some(), "{k} missing");
    }
    assert_eq!(
        env.ok(&[
            "inspect",
            "--format",
            "{{.Id}} {{index .RepoTags 0}}",
            "h:1"
        ]),
        format!("{id} h:1\n")
    );
    // Missing names: found ones printed, one error line, non-zero exit.
    let out = env.run(&["inspect", "h:1", "missing:1"]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Error: No such image: missing:1"
    );
    env.fails(&["history", "missing:1"]);
}

#[test]
fn tag_validates_names() {
    let env = Env::new();
    env.import_rootfs("t:1", "t");
    env.ok(&["tag", "t:1", "localhost:5000/team/t:2"]);
    assert_eq!(
        env.ok(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "localhost:5000/team/t"
        ]),
        "localhost:5000/team/t:2\n"
    );
    let err = env.fails(&["tag", "t:1", "Bad/Name"]);
    assert!(err.contains("invalid reference format"), "{err}");
    env.fails(&["tag", "nope", "x:1"]);
}

fn load_report(env: &Env, path: &std::path::Path) -> String {
    env.ok(&["load", "-i", path.to_str().unwrap()])
}

#[test]
fn load_reads_oci_layout_legacy_docker_archive_and_gzip() {
    let env = Env::new();
    let id = env.import_rootfs("l:1", "l");
    let saved = env.path("s.tar");
    env.ok(&["save", "l:1", "-o", saved.to_str().unwrap()]);
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut a = tar::Archive::new(fs_err::File::open(&saved).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut d = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut d).unwrap();
        entries.push((e.path().unwrap().display().to_string(), d));
    }
    let write_tar = |name: &str, files: &[(String, Vec<u8>)]| {
        let mut b = tar::Builder::new(Vec::new());
        for (p, d) in files {
            if p.ends_with('/')
                || d.is_empty()
                    && !p.contains('.')
                    && p.starts_with("blobs")
                    && !p.contains("sha256/")
            {
                continue;
            }
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, p, &d[..]).unwrap();
        }
        let path = env.path(name);
        fs_err::write(&path, b.into_inner().unwrap()).unwrap();
        path
    };
    // OCI layout only.
    let oci: Vec<_> = entries
        .iter()
        .filter(|(p, _)| p != "manifest.json" && p != "repositories")
        .cloned()
        .collect();
    let p = write_tar("oci.tar", &oci);
    env.ok(&["rmi", "l:1"]);
    assert_eq!(load_report(&env, &p), "Loaded image: l:1\n");
    // Gzip-compressed archive.
    let gz = env.path("s.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &fs_err::read(&saved).unwrap()).unwrap();
    fs_err::write(&gz, enc.finish().unwrap()).unwrap();
    env.ok(&["rmi", "l:1"]);
    assert_eq!(load_report(&env, &gz), "Loaded image: l:1\n");
    // Legacy docker-archive: per-layer folders, <id>.json config.
    let find =
        |pred: &dyn Fn(&str) -> bool| entries.iter().find(|(p, _)| pred(p)).unwrap().1.clone();
    let config = find(&|p: &str| p == format!("blobs/sha256/{}", &id[7..]));
    let cfg: serde_json::Value = serde_json::from_slice(&config).unwrap();
    let diff = cfg["rootfs"]["diff_ids"][0].as_str().unwrap()[7..].to_owned();
    let layer = find(&|p: &str| p == format!("blobs/sha256/{diff}"));
    let layer_dir = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let manifest = serde_json::json!([{"Config": format!("{}.json", &id[7..]), "RepoTags": ["legacy:1"], "Layers": [format!("{layer_dir}/layer.tar")]}]);
    let legacy = vec![
        (format!("{}.json", &id[7..]), config.clone()),
        (format!("{layer_dir}/VERSION"), b"1.0".to_vec()),
        (format!("{layer_dir}/json"), b"{}".to_vec()),
        (format!("{layer_dir}/layer.tar"), layer),
        (
            "manifest.json".to_owned(),
            serde_json::to_vec(&manifest).unwrap(),
        ),
        (
            "repositories".to_owned(),
            format!("{{\"legacy\":{{\"1\":\"{layer_dir}\"}}}}").into_bytes(),
        ),
    ];
    let p = write_tar("legacy.tar", &legacy);
    assert_eq!(load_report(&env, &p), "Loaded image: legacy:1\n");
    assert_eq!(
        env.ok(&["images", "-q", "--no-trunc", "legacy"]),
        format!("{id}\n")
    );
    // Untagged: an OCI layout without names.
    let mut idx: serde_json::Value =
        serde_json::from_slice(&find(&|p: &str| p == "index.json")).unwrap();
    idx["manifests"][0]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    let mut untagged: Vec<_> = oci
        .iter()
        .filter(|(p, _)| p != "index.json")
        .cloned()
        .collect();
    untagged.push(("index.json".into(), serde_json::to_vec(&idx).unwrap()));
    let p = write_tar("untagged.tar", &untagged);
    env.ok(&["rmi", "-f", &id]);
    assert_eq!(load_report(&env, &p), format!("Loaded image ID: {id}\n"));
}

#[test]
fn save_with_gzip_layers_loads_back() {
    let env = Env::new();
    let id = env.import_rootfs("z:1", "z");
    for comp in ["gzip", "zstd"] {
        let out = env.path(&format!("{comp}.tar"));
        env.ok(&[
            "save",
            "--compression",
            comp,
            "-o",
            out.to_str().unwrap(),
            "z:1",
        ]);
        let other = Env::new();
        assert_eq!(load_report(&other, &out), "Loaded image: z:1\n");
        assert_eq!(other.ok(&["images", "-q", "--no-trunc"]), format!("{id}\n"));
    }
}

#[test]
fn prune_and_df() {
    let env = Env::new();
    let old = env.import_rootfs("p:1", "one");
    let keep = env.import_rootfs("p:1", "two");
    let df = env.ok(&["system", "df"]);
    let lines: Vec<&str> = df.lines().collect();
    assert!(
        lines[0].starts_with("TYPE") && lines[0].contains("RECLAIMABLE"),
        "{df}"
    );
    assert!(
        lines[1].starts_with("Images") && lines[1].split_whitespace().nth(1) == Some("2"),
        "{df}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("Local Volumes"))
            && lines.iter().any(|l| l.starts_with("Build Cache")),
        "{df}"
    );
    let out = env.ok(&["image", "prune", "-f"]);
    assert!(
        out.starts_with("Deleted Images:\n") && out.contains(&format!("deleted: {old}")),
        "{out}"
    );
    assert!(out.contains("Total reclaimed space: "), "{out}");
    assert_eq!(env.ok(&["images", "-q", "--no-trunc"]), format!("{keep}\n"));
    let out = env.ok(&["image", "prune", "-f"]);
    assert_eq!(out, "Total reclaimed space: 0B\n");
    let out = env.ok(&["image", "prune", "-a", "-f"]);
    assert!(
        out.contains("untagged: p:1") && out.contains(&format!("deleted: {keep}")),
        "{out}"
    );
    assert_eq!(env.ok(&["images", "-q"]), "");
    let blobs: Vec<_> = std::fs::read_dir(env.root().join("blobs/sha256"))
        .unwrap()
        .collect();
    assert!(blobs.is_empty(), "every blob is gone");
}

#[test]
fn bad_input_leaves_the_store_exactly_as_it_was() {
    let env = Env::new();
    env.import_rootfs("good:1", "g");
    let saved = env.path("s.tar");
    env.ok(&["save", "good:1", "-o", saved.to_str().unwrap()]);
    // Truncated archive.
    let data = fs_err::read(&saved).unwrap();
    let cut = env.path("cut.tar");
    fs_err::write(&cut, &data[..data.len() / 2 + 100]).unwrap();
    env.ok(&["rmi", "good:1"]);
    let before_empty = snapshot(&env.root());
    let err = env.fails(&["load", "-i", cut.to_str().unwrap()]);
    assert!(
        err.contains("truncated") || err.contains("invalid"),
        "{err}"
    );
    assert_eq!(
        snapshot(&env.root()),
        before_empty,
        "truncated load changed the store"
    );
    env.ok(&["load", "-i", saved.to_str().unwrap()]);
    let before = snapshot(&env.root());
    let check = |what: &str, args: &[&str], needle: &str| {
        let err = env.fails(args);
        assert!(err.to_lowercase().contains(needle), "{what}: {err}");
        assert_eq!(snapshot(&env.root()), before, "{what} changed the store");
    };
    // A blob whose digest does not match: flip a byte inside the layer blob.
    let mut corrupt = data.clone();
    let mut a = tar::Archive::new(&data[..]);
    let mut layer_off = None;
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        if e.header().size().unwrap() > 1000 {
            layer_off = Some(usize::try_from(e.raw_file_position()).unwrap());
        }
    }
    corrupt[layer_off.unwrap() + 700] ^= 0xff;
    let bad = env.path("corrupt.tar");
    fs_err::write(&bad, &corrupt).unwrap();
    check(
        "corrupt blob",
        &["load", "-i", bad.to_str().unwrap()],
        "does not match",
    );
    // Not a tarball at all.
    let junk = env.path("junk.tar");
    fs_err::write(&junk, vec![b'x'; 4096]).unwrap();
    check(
        "junk load",
        &["load", "-i", junk.to_str().unwrap()],
        "invalid",
    );
    check(
        "junk import",
        &["import", junk.to_str().unwrap(), "junk:1"],
        "invalid",
    );
    // A tar entry escaping its root.
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
    h.set_size(4);
    h.set_mode(0o644);
    h.set_cksum();
    let mut evil = h.as_bytes().to_vec();
    evil.extend_from_slice(b"boom");
    evil.resize(512 + 512 + 1024, 0);
    let evil_path = env.path("evil.tar");
    fs_err::write(&evil_path, &evil).unwrap();
    check(
        "escaping import",
        &["import", evil_path.to_str().unwrap(), "evil:1"],
        "escapes",
    );
    assert!(!env.dir.path().join("escape").exists());
    // Truncated import.
    let rootfs = rootfs_tar("t");
    let tcut = env.path("tcut.tar");
    fs_err::write(&tcut, &rootfs[..700]).unwrap();
    check(
        "truncated import",
        &["import", tcut.to_str().unwrap(), "cut:1"],
        "truncated",
    );
    // Unknown image names.
    check(
        "unknown save",
        &["save", "-o", env.path("x.tar").to_str().unwrap(), "nope:1"],
        "no such image",
    );
    check("unknown rmi", &["rmi", "nope:1"], "no such image");
    check("unknown tag", &["tag", "nope:1", "x:1"], "no such image");
    assert!(!env.path("x.tar").exists());
}

#[test]
fn concurrent_writers_do_not_corrupt_the_index() {
    let env = Env::new();
    env.import_rootfs("base:1", "base");
    let mut children = Vec::new();
    for i in 0..8 {
        let tar = env.path(&format!("c{i}.tar"));
        fs_err::write(&tar, rootfs_tar(&format!("c{i}"))).unwrap();
        children.push(
            env.cmd(&["import", tar.to_str().unwrap(), &format!("c:{i}")])
                .spawn()
                .unwrap(),
        );
        children.push(
            env.cmd(&["tag", "base:1", &format!("t:{i}")])
                .spawn()
                .unwrap(),
        );
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let tags = env.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    for i in 0..8 {
        assert!(
            tags.contains(&format!("c:{i}\n")) && tags.contains(&format!("t:{i}\n")),
            "{tags}"
        );
    }
}

/// Layer chains unpacked in the root's snapshot store (`snapshots/chains/`).
fn unpacked_chains(env: &Env) -> usize {
    fs_err::read_dir(env.root().join("snapshots").join("chains")).map_or(0, Iterator::count)
}

#[test]
fn import_and_load_leave_the_image_unpacked_for_builds() {
    // As docker import/load: the first build FROM the image unpacks nothing.
    let env = common::build_env(); // imports busybox
    assert_eq!(unpacked_chains(&env), 1, "import unpacks the layer");
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), "FROM busybox\nRUN echo hi > /f\n").unwrap();
    env.ok(&["build", "-q", "-t", "two:layers", ctx.to_str().unwrap()]);
    assert_eq!(unpacked_chains(&env), 1, "the build unpacked nothing more");
    let tar = env.path("two.tar");
    env.ok(&["save", "two:layers", "-o", tar.to_str().unwrap()]);

    let fresh = Env::new();
    assert_eq!(unpacked_chains(&fresh), 0);
    let out = fresh.ok(&["load", "-i", tar.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: two:layers\n");
    assert_eq!(unpacked_chains(&fresh), 2, "load unpacks both layers");
    fresh.ok(&["run", "--rm", "two:layers", "grep", "-qx", "hi", "/f"]);
    // Unpacked layers are no build cache to reclaim while the image is here.
    fresh.ok(&["builder", "prune", "-a", "-f"]);
    assert_eq!(unpacked_chains(&fresh), 2);
    fresh.ok(&["rmi", "two:layers"]);
    fresh.ok(&["builder", "prune", "-a", "-f"]);
    assert_eq!(unpacked_chains(&fresh), 0, "and go with it");
}

//! Squashing through the binary: `rbuild build --squash`, `--squash-all`,
//! `rbuild image squash` and `rbuild image waste`.
//!
//! The image under test is a base loaded from an archive this test writes
//! (busybox, then two layers with what a RUN of busybox cannot make: xattrs, a
//! file capability, whiteouts and an opaque directory written as tar entries)
//! and RUN steps on top that replace a directory by a file and back, delete
//! base files, recreate a directory (an opaque one in the overlay), hard link,
//! mknod and chmod u+s. Each squashed image must show the same file system as
//! the unsquashed one: compared with the conformance harness's `imgview.py`,
//! with a view of the layers of this test that keeps hard-link groups,
//! `SCHILY.xattr.*` records and device numbers, and with `docker run` of each
//! loaded into docker. `buildah bud --squash` of the same Dockerfile is the
//! peer of `--squash-all`. (Docker's classic `--squash` needs a dockerd with
//! `--experimental`; the shared dockerd is not, so it is not a peer here.)

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Env, build_env, docker, have};
use rbuild_snapshotter::tarwrite::{EntryKind, EntryMeta, TarWriter};
use sha2::Digest as _;

fn meta(path: &str, kind: EntryKind, mode: u32) -> EntryMeta {
    EntryMeta {
        path: path.into(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        size: 0,
        xattrs: Vec::new(),
    }
}

/// A `vfs_cap_data` (revision 2, effective) granting `cap_net_raw`.
const CAP_NET_RAW: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    /// A file with mode, owner and xattrs.
    Full(&'a str, &'a str, u32, u64, Vec<(&'a str, Vec<u8>)>),
    Link(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Whiteout(&'a str),
    Opaque(&'a str),
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut w = TarWriter::new(Vec::new(), None);
    for e in entries {
        match e {
            E::Dir(p) => w.append(&meta(p, EntryKind::Dir, 0o755), None).unwrap(),
            E::File(p, data) => {
                let mut m = meta(p, EntryKind::File, 0o644);
                m.size = data.len() as u64;
                w.append(&m, Some(&mut data.as_bytes())).unwrap();
            }
            E::Full(p, data, mode, owner, xattrs) => {
                let mut m = meta(p, EntryKind::File, *mode);
                m.size = data.len() as u64;
                m.uid = *owner;
                m.gid = *owner;
                m.xattrs = xattrs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect();
                w.append(&m, Some(&mut data.as_bytes())).unwrap();
            }
            E::Link(p, t) => w
                .append(&meta(p, EntryKind::Hardlink((*t).into()), 0o644), None)
                .unwrap(),
            E::Char(p, ma, mi) => w
                .append(&meta(p, EntryKind::Char(*ma, *mi), 0o666), None)
                .unwrap(),
            E::Whiteout(p) => w.append_whiteout(p.as_bytes()).unwrap(),
            E::Opaque(p) => w.append_opaque(p.as_bytes()).unwrap(),
        }
    }
    w.finish().unwrap()
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(data))
}

/// A docker-archive holding one image of `layers`, tagged `tag`.
fn docker_archive(layers: &[Vec<u8>], tag: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
    let history: Vec<serde_json::Value> = (0..layers.len())
        .map(|i| serde_json::json!({"created": "2023-11-14T22:13:20Z", "created_by": format!("layer {}", i + 1)}))
        .collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2023-11-14T22:13:20Z",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    let config = serde_json::to_vec(&config).unwrap();
    let names: Vec<String> = (0..layers.len()).map(|i| format!("l{i}.tar")).collect();
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": "config.json", "RepoTags": [tag], "Layers": names}
    ]))
    .unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("config.json", &config);
    for (n, l) in names.iter().zip(layers) {
        add(n, l);
    }
    add("manifest.json", &manifest);
    b.into_inner().unwrap()
}

/// The layers of a docker-archive (what `rbuild save` writes), bottom first.
fn archive_layers(archive: &Path) -> Vec<Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut a = tar::Archive::new(fs_err::File::open(archive).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(name.trim_start_matches("./").to_owned(), data);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| files[l.as_str().unwrap()].clone())
        .collect()
}

#[derive(Clone, Debug)]
struct Node {
    desc: String,
    inode: u64,
}

/// The file system the layers make, applied as the OCI image spec says, as
/// `path → type, mode, owner, content or target, device, xattrs, hard-link
/// group` (the smallest path of the inode's names). No mtimes.
#[allow(clippy::many_single_char_names)]
fn fs_view(layers: &[Vec<u8>]) -> BTreeMap<String, String> {
    let mut fs: BTreeMap<String, Node> = BTreeMap::new();
    let mut next_inode = 0u64;
    let remove_under = |fs: &mut BTreeMap<String, Node>, p: &str, keep: &dyn Fn(&str) -> bool| {
        let prefix = if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        };
        let victims: Vec<String> = fs
            .keys()
            .filter(|k| k.starts_with(&prefix) && !keep(k))
            .cloned()
            .collect();
        for v in victims {
            fs.remove(&v);
        }
    };
    for data in layers {
        let mut written: Vec<String> = Vec::new();
        let mut a = tar::Archive::new(&data[..]);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let p = raw
                .trim_start_matches("./")
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_owned();
            let (dir, base) = p.rsplit_once('/').unwrap_or(("", p.as_str()));
            if base == ".wh..wh..opq" {
                // What this layer wrote inside the directory stays.
                let inside = format!("{dir}/");
                let w: Vec<String> = written
                    .iter()
                    .filter(|x| x.starts_with(&inside))
                    .cloned()
                    .collect();
                remove_under(&mut fs, dir, &|k| {
                    w.iter().any(|x| k == x || k.starts_with(&format!("{x}/")))
                });
                continue;
            }
            if let Some(victim) = base.strip_prefix(".wh.") {
                let v = if dir.is_empty() {
                    victim.to_owned()
                } else {
                    format!("{dir}/{victim}")
                };
                fs.remove(&v);
                remove_under(&mut fs, &v, &|_| false);
                continue;
            }
            if p.is_empty() || p == "." {
                continue;
            }
            let h = e.header().clone();
            let ty = h.entry_type();
            let mut xattrs = Vec::new();
            if let Ok(Some(exts)) = e.pax_extensions() {
                for x in exts.flatten() {
                    if let Ok(k) = x.key() {
                        if let Some(k) = k.strip_prefix("SCHILY.xattr.") {
                            xattrs.push(format!("{k}={:?}", x.value_bytes()));
                        }
                    }
                }
            }
            xattrs.sort();
            let old_is_dir = fs.get(&p).is_some_and(|n| n.desc.starts_with("dir "));
            if !(ty.is_dir() && old_is_dir) {
                remove_under(&mut fs, &p, &|_| false);
            }
            written.push(p.clone());
            let node = if ty == tar::EntryType::Link {
                let t = String::from_utf8_lossy(&e.link_name_bytes().unwrap())
                    .trim_start_matches("./")
                    .trim_start_matches('/')
                    .to_owned();
                fs.get(&t)
                    .unwrap_or_else(|| panic!("hard link {p} to missing {t}"))
                    .clone()
            } else {
                let what = match ty {
                    tar::EntryType::Directory => "dir".to_owned(),
                    tar::EntryType::Regular => {
                        let mut d = Vec::new();
                        e.read_to_end(&mut d).unwrap();
                        format!("file {}", &sha(&d)[7..19])
                    }
                    tar::EntryType::Symlink => format!(
                        "symlink {}",
                        String::from_utf8_lossy(&e.link_name_bytes().unwrap())
                    ),
                    tar::EntryType::Char | tar::EntryType::Block => format!(
                        "dev {:?} {}:{}",
                        ty,
                        h.device_major().unwrap().unwrap(),
                        h.device_minor().unwrap().unwrap()
                    ),
                    tar::EntryType::Fifo => "fifo".to_owned(),
                    other => panic!("unexpected entry type {other:?} at {p}"),
                };
                next_inode += 1;
                Node {
                    desc: format!(
                        "{what} {:o} {}:{} xattrs={}",
                        h.mode().unwrap(),
                        h.uid().unwrap(),
                        h.gid().unwrap(),
                        xattrs.join(",")
                    ),
                    inode: next_inode,
                }
            };
            fs.insert(p, node);
        }
    }
    let mut names: BTreeMap<u64, Vec<&String>> = BTreeMap::new();
    for (p, n) in &fs {
        names.entry(n.inode).or_default().push(p);
    }
    fs.iter()
        .map(|(p, n)| {
            let group = &names[&n.inode];
            let g = if group.len() > 1 {
                format!(" linked-with={}", group[0])
            } else {
                String::new()
            };
            (p.clone(), format!("{}{g}", n.desc))
        })
        .collect()
}

/// Asserts two maps are equal, showing only the entries that differ.
fn same<V: PartialEq + std::fmt::Debug>(
    a: &BTreeMap<String, V>,
    b: &BTreeMap<String, V>,
    what: &str,
) {
    let diff: Vec<String> = a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {:?} vs {:?}", a.get(k), b.get(k)))
        .collect();
    assert!(diff.is_empty(), "{what}:\n{}", diff.join("\n"));
}

fn fs_of(v: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    v["fs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn imgview(archive: &Path) -> serde_json::Value {
    let script = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/imgview.py"
    ));
    assert!(
        script.is_file(),
        "{} is missing: the conformance harness (../shared beside the checkout) is needed",
        script.display()
    );
    assert!(have("python3"), "python3 is missing: install python3");
    let o = Command::new("python3")
        .arg(&script)
        .arg(archive)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "imgview.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// What `docker run` of the image shows: every path (but docker's own files),
/// type, mode, owner, size of non-directories, device numbers, content hash,
/// and hard-link groups (by inode, named by the smallest path).
fn docker_view(image: &str) -> String {
    let script = r"find / -xdev ! -path / ! -path /etc/hosts ! -path /etc/hostname ! -path /etc/resolv.conf ! -path /.dockerenv -exec stat -c '%n|%i|%F|%a|%u:%g|%s|%t:%T' {} + ; echo ==; find / -xdev -type f ! -path /etc/hosts ! -path /etc/hostname ! -path /etc/resolv.conf ! -path /.dockerenv -exec md5sum {} +";
    let o = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "sh",
            image,
            "-c",
            script,
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "docker run {image}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8(o.stdout).unwrap();
    let (stats, sums) = out.split_once("==\n").unwrap();
    let sums: BTreeMap<&str, &str> = sums
        .lines()
        .filter_map(|l| l.split_once("  ").map(|(h, p)| (p, h)))
        .collect();
    let mut rows: Vec<Vec<&str>> = stats.lines().map(|l| l.split('|').collect()).collect();
    rows.sort();
    let mut group: BTreeMap<&str, &str> = BTreeMap::new();
    for r in &rows {
        group.entry(r[1]).or_insert(r[0]);
    }
    let mut links: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        *links.entry(r[1]).or_default() += 1;
    }
    rows.iter()
        .map(|r| -> String {
            let size = if r[2] == "directory" { "-" } else { r[5] };
            let linked = if r[2] == "regular file" && links[r[1]] > 1 {
                group[r[1]]
            } else {
                ""
            };
            format!(
                "{} {} {} {} {size} {} {} {linked}\n",
                r[0],
                r[2],
                r[3],
                r[4],
                r[6],
                sums.get(r[0]).unwrap_or(&"")
            )
        })
        .collect::<Vec<String>>()
        .concat()
}

/// The base: busybox, then a layer with xattrs, a capability, a setuid file,
/// a device node, hard links and directories, then one that deletes,
/// replaces and makes opaque.
fn base_archive(env: &Env, tag: &str) -> PathBuf {
    let busybox = fs_err::read(env.path("base.tar")).unwrap();
    let l2 = layer(&[
        E::Dir("bin"),
        E::Full(
            "bin/ping",
            "pretend ping",
            0o755,
            0,
            vec![("security.capability", CAP_NET_RAW.to_vec())],
        ),
        E::Full("bin/su-x", "setuid", 0o4755, 0, vec![]),
        E::Dir("data"),
        E::Dir("data/dev"),
        E::Char("data/dev/null2", 1, 3),
        E::Dir("data/dir-to-file"),
        E::File("data/dir-to-file/inside", "inside"),
        E::File("data/file-to-dir", "a file"),
        E::File("data/gone", "gone later"),
        E::File("data/hl1", "linked content"),
        E::Link("data/hl2", "data/hl1"),
        E::File("data/keep", "kept"),
        E::Dir("data/opq"),
        E::File("data/opq/a", "a"),
        E::File("data/opq/b", "b"),
        E::Full(
            "data/xattr",
            "has an xattr",
            0o640,
            1000,
            vec![("user.rbuild.test", b"hello\0world".to_vec())],
        ),
    ]);
    let l3 = layer(&[
        E::Dir("data"),
        // (imgview.py does not drop what a directory held when a file
        // replaces it without a whiteout.)
        E::Whiteout("data/dir-to-file"),
        E::File("data/dir-to-file", "now a file"),
        E::Whiteout("data/gone"),
        E::Dir("data/opq"),
        E::Opaque("data/opq"),
        E::File("data/opq/c", "c"),
        E::Dir("etc"),
        E::Whiteout("etc/group"),
    ]);
    let path = env.path("sqbase.tar");
    fs_err::write(&path, docker_archive(&[busybox, l2, l3], tag)).unwrap();
    path
}

const DOCKERFILE: &str = "FROM sqbase
RUN rm /data/dir-to-file && mkdir /data/dir-to-file && echo back > /data/dir-to-file/back
RUN rm /data/file-to-dir && mkdir /data/file-to-dir && echo in > /data/file-to-dir/in
RUN rm -rf /data/opq && mkdir /data/opq && echo new > /data/opq/new && rm /etc/passwd
RUN mkdir -p /build/deps && dd if=/dev/zero of=/build/deps/big bs=1024 count=512 2>/dev/null && ln /data/keep /data/keep-link
RUN rm -rf /build && rm /data/hl1 && mknod /data/dev/zero2 c 1 5 && echo s > /bin/su-y && chmod 4755 /bin/su-y
";

fn save(env: &Env, image: &str) -> PathBuf {
    let p = env.path(&format!("{}.tar", image.replace([':', '/'], "_")));
    env.ok(&["save", "-o", p.to_str().unwrap(), image]);
    p
}

fn build(env: &Env, ctx: &Path, extra: &[&str], tag: &str) -> String {
    let mut args = vec!["build", "--progress=plain", "-t", tag];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    let o = env.run(&args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "rbuild {args:?}: {err}");
    err
}

#[test]
fn squashed_images_show_the_same_file_system_three_ways() {
    let env = build_env();
    let stamp = std::process::id();
    let base = base_archive(&env, "sqbase:latest");
    env.ok(&["load", "-i", base.to_str().unwrap()]);
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();

    build(&env, &ctx, &[], "full");
    let sq_err = build(&env, &ctx, &["--squash"], "sq");
    let all_err = build(&env, &ctx, &["--squash-all"], "sqall");
    assert!(sq_err.contains("squashed 5 layers: "), "{sq_err}");
    assert!(all_err.contains("squashed 8 layers: "), "{all_err}");
    // Everything above busybox (the base's two layers and the five steps).
    let full_ids: Vec<String> =
        serde_json::from_str(&env.ok(&["inspect", "--format", "{{json .RootFS.Layers}}", "full"]))
            .unwrap();
    assert_eq!(full_ids.len(), 8);
    let out = env
        .cmd(&[
            "image",
            "squash",
            "full",
            "--from",
            &full_ids[0][7..19],
            "-t",
            "isq",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let isq_err = String::from_utf8_lossy(&out.stderr);
    assert!(isq_err.contains("squashed 7 layers: "), "{isq_err}");

    let archives: Vec<(&str, PathBuf)> = ["full", "sq", "sqall", "isq"]
        .into_iter()
        .map(|t| (t, save(&env, t)))
        .collect();
    let layers: BTreeMap<&str, Vec<Vec<u8>>> = archives
        .iter()
        .map(|(t, p)| (*t, archive_layers(p)))
        .collect();
    // Layer counts: --squash keeps the base's three layers and adds one;
    // --squash-all makes one; image squash --from the first keeps it.
    assert_eq!(layers["full"].len(), 8);
    assert_eq!(layers["sq"].len(), 4);
    assert_eq!(layers["sqall"].len(), 1);
    assert_eq!(layers["isq"].len(), 2);
    assert_eq!(
        layers["sq"][..3],
        layers["full"][..3],
        "the base's layers stay"
    );
    assert_eq!(layers["isq"][0], layers["full"][0]);

    let reference = fs_view(&layers["full"]);
    // The view sees what it must: the capability and xattr, the device, the
    // setuid bits, the hard-link groups, what was deleted.
    assert!(
        reference["bin/ping"].contains("security.capability="),
        "{reference:?}"
    );
    assert!(reference["data/xattr"].contains("user.rbuild.test="));
    assert!(reference["data/dev/null2"].contains("1:3"));
    assert!(reference["data/dev/zero2"].contains("1:5"));
    assert!(reference["bin/su-x"].contains(" 4755 "));
    assert!(reference["bin/su-y"].contains(" 4755 "));
    assert!(reference["data/keep-link"].contains("linked-with=data/keep"));
    assert!(!reference["data/hl2"].contains("linked-with"));
    assert!(reference["data/dir-to-file"].starts_with("dir "));
    assert!(reference["data/file-to-dir"].starts_with("dir "));
    for gone in [
        "data/gone",
        "etc/group",
        "etc/passwd",
        "build",
        "data/opq/a",
        "data/opq/c",
        "data/hl1",
    ] {
        assert!(!reference.contains_key(gone), "{gone} should be gone");
    }
    let view0 = imgview(&archives[0].1);
    for (tag, archive) in &archives[1..] {
        assert_eq!(
            fs_view(&layers[tag]),
            reference,
            "{tag}: the same file system"
        );
        let v = imgview(archive);
        assert_eq!(
            v["fs"], view0["fs"],
            "{tag}: imgview.py sees the same files"
        );
        assert_eq!(v["config"], view0["config"], "{tag}: the same config");
    }
    // Whiteouts and opaque markers only where the kept layers have the path.
    let names = |l: &[u8]| -> Vec<String> {
        tar::Archive::new(l)
            .entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect()
    };
    let sq_top = names(layers["sq"].last().unwrap());
    assert!(
        sq_top.contains(&"data/opq/.wh..wh..opq".to_owned()),
        "{sq_top:?}"
    );
    assert!(sq_top.contains(&"etc/.wh.passwd".to_owned()), "{sq_top:?}");
    assert!(!sq_top.iter().any(|n| n.starts_with("build")), "{sq_top:?}");
    let isq_top = names(&layers["isq"][1]);
    assert!(isq_top.contains(&"etc/.wh.group".to_owned()), "{isq_top:?}");
    assert!(
        !isq_top
            .iter()
            .any(|n| n.contains(".wh.gone") || n.contains(".wh..wh..opq")),
        "{isq_top:?}"
    );
    assert!(
        !names(&layers["sqall"][0])
            .iter()
            .any(|n| n.contains(".wh."))
    );

    // History: every entry kept, the folded ones empty, one for the squash.
    let hist = |t: &str| -> Vec<serde_json::Value> {
        let id = env.ok(&["inspect", "--format", "{{.Id}}", t]);
        let cfg = fs_err::read(env.root().join("blobs/sha256").join(&id.trim()[7..])).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
        v["history"].as_array().unwrap().clone()
    };
    let full_h = hist("full");
    let sq_h = hist("sq");
    assert_eq!(sq_h.len(), full_h.len() + 1);
    let non_empty = |h: &[serde_json::Value]| {
        h.iter()
            .filter(|e| !e["empty_layer"].as_bool().unwrap_or(false))
            .count()
    };
    assert_eq!(non_empty(&sq_h), 4);
    assert!(
        sq_h.last().unwrap()["created_by"]
            .as_str()
            .unwrap()
            .contains("5 layers"),
        "{sq_h:?}"
    );

    // docker runs each with the same file tree.
    docker::require();
    let mut tags = Vec::new();
    // Loaded under names of this test only: a shared dockerd's `full:latest`
    // is not touched.
    let mut cleanup = docker::RemoveOnDrop::default();
    for (tag, _) in &archives {
        let name = format!("rbuild-squash-test-{stamp}-{tag}:latest");
        env.ok(&["tag", tag, &name]);
        let archive = save(&env, &name);
        cleanup.0.push(name.clone());
        let loaded = docker::load(&archive);
        assert!(loaded.contains(&name), "{loaded}");
        tags.push(name);
    }
    let dv = docker_view(&tags[0]);
    assert!(
        dv.contains("/data/dev/null2 character special file 666 0:0 0 1:3"),
        "{dv}"
    );
    assert!(dv.contains("/bin/su-y regular file 4755"), "{dv}");
    let line = |p: &str| {
        dv.lines()
            .find(|l| l.starts_with(&format!("{p} ")))
            .unwrap_or_else(|| panic!("{p} not in {dv}"))
            .to_owned()
    };
    assert!(line("/data/keep-link").ends_with(" /data/keep"), "{dv}");
    assert!(line("/data/keep").ends_with(" /data/keep"), "{dv}");
    assert!(!line("/data/hl2").ends_with("/data/hl1"), "{dv}");
    for gone in [
        "/etc/group ",
        "/etc/passwd ",
        "/data/opq/a ",
        "/data/gone ",
        "/build",
    ] {
        assert!(!dv.contains(gone), "{gone} in {dv}");
    }
    for t in &tags[1..] {
        assert_eq!(docker_view(t), dv, "{t}: docker run shows the same files");
    }
}

#[test]
fn buildah_bud_squash_gives_the_same_file_tree_as_squash_all() {
    let env = build_env();
    assert!(have("buildah"), "buildah is missing: install buildah");
    let base = base_archive(&env, "sqbase:latest");
    env.ok(&["load", "-i", base.to_str().unwrap()]);
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    build(&env, &ctx, &["--squash-all"], "sqall");
    let ours = save(&env, "sqall");

    let store = env.path("buildah");
    let buildah = |args: &[&str]| -> String {
        let o = Command::new("buildah")
            .arg("--root")
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "buildah {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    buildah(&["pull", &format!("docker-archive:{}", base.display())]);
    let out = env.path("bud.tar");
    buildah(&[
        "bud",
        "--squash",
        // mknod in a RUN step needs the capability under runc.
        "--isolation",
        "oci",
        "--cap-add",
        "CAP_MKNOD",
        "--pull-never",
        "--network",
        "none",
        "-t",
        "bud:latest",
        ctx.to_str().unwrap(),
    ]);
    buildah(&[
        "push",
        "bud:latest",
        &format!("docker-archive:{}:bud:latest", out.display()),
    ]);
    let theirs = archive_layers(&out);
    assert_eq!(theirs.len(), 1, "buildah's --squash makes one layer");
    let ours_layers = archive_layers(&ours);
    // What buildah's RUN leaves behind (an empty /etc/hostname stub and the
    // /run mount point) is not the build's: left out of its view.
    let mut their_view = fs_view(&theirs);
    assert!(
        their_view
            .remove("etc/hostname")
            .is_none_or(|h| h.starts_with("file e3b0c44298fc "))
    );
    assert!(
        their_view
            .remove("run")
            .is_none_or(|r| r.starts_with("dir "))
    );
    same(&their_view, &fs_view(&ours_layers), "buildah vs rbuild");
    let mut their_img = fs_of(&imgview(&out));
    their_img.remove("/etc/hostname");
    their_img.remove("/run");
    // buildah writes no entry for the root directory; the busybox layer has
    // one (mode 0700, from mktemp), and so has rbuild's squashed layer.
    let mut our_img = fs_of(&imgview(&ours));
    assert_eq!(our_img.remove("/"), Some("dir 0700 0:0 0 -".into()));
    same(&their_img, &our_img, "imgview.py: buildah vs rbuild");
    let _ = std::fs::remove_dir_all(&store);
}

/// Parses `412 MB` (as the summary shows sizes) into bytes.
fn parse_size(s: &str) -> f64 {
    let (n, unit) = s.trim().split_once(' ').unwrap();
    let n: f64 = n.parse().unwrap();
    n * match unit {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        u => panic!("unit {u}"),
    }
}

fn close(shown: f64, actual: u64, what: &str) {
    #[allow(clippy::cast_precision_loss)]
    let actual = actual as f64;
    assert!(
        (shown - actual).abs() <= actual * 0.006 + 1.0,
        "{what}: shown {shown}, actual {actual}"
    );
}

#[test]
fn the_seeds_install_build_remove_chain_shrinks_and_the_numbers_add_up() {
    let env = build_env();
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    // The seeds' nginx build, cut into steps as people write it: deps
    // installed in one layer, the build in others, the deps removed at the end.
    fs_err::write(
        ctx.join("Dockerfile"),
        "FROM busybox
RUN mkdir -p /software /usr/local/deps && dd if=/dev/urandom of=/usr/local/deps/gcc bs=65536 count=24 2>/dev/null && dd if=/dev/urandom of=/usr/local/deps/perl bs=65536 count=8 2>/dev/null
RUN cp /bin/busybox /software/src && echo configured > /software/config.log
RUN mkdir -p /opt/nginx/sbin /data/nginx/logs && cp /software/src /opt/nginx/sbin/nginx
RUN rm -rf /software /usr/local/deps && echo cleaned > /var/cleaned
",
    )
    .unwrap();
    build(&env, &ctx, &[], "ngx-plain");
    let err = build(&env, &ctx, &["--squash"], "ngx");
    let line = err
        .lines()
        .find(|l| l.starts_with("squashed 4 layers: "))
        .unwrap_or_else(|| panic!("no summary line in {err}"));
    let rest = line.strip_prefix("squashed 4 layers: ").unwrap();
    let (before, rest) = rest.split_once(" → ").unwrap();
    let (after, pct) = rest.split_once(" (").unwrap();
    let plain = archive_layers(&save(&env, "ngx-plain"));
    let squashed = archive_layers(&save(&env, "ngx"));
    assert_eq!(plain.len(), 5);
    assert_eq!(squashed.len(), 2);
    let folded: u64 = plain[1..].iter().map(|l| l.len() as u64).sum();
    let new = squashed[1].len() as u64;
    close(parse_size(before), folded, "size before");
    close(parse_size(after), new, "size after");
    assert!(new * 2 < folded, "the deps are gone: {new} vs {folded}");
    assert!(pct.starts_with('\u{2212}'), "{line}");
    assert!(!err.contains("WARNING"), "{err}");
    assert_eq!(fs_view(&plain), fs_view(&squashed));

    // The waste report counts the same bytes.
    let w: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "waste", "ngx-plain", "--format", "json"]))
            .unwrap();
    let sizes: Vec<u64> = w["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .collect();
    let actual: Vec<u64> = plain.iter().map(|l| l.len() as u64).collect();
    assert_eq!(sizes, actual);
    assert_eq!(w["base_layers"], 1);
    assert_eq!(w["squash"]["before"].as_u64().unwrap(), folded);
    assert_eq!(w["squash"]["after"].as_u64().unwrap(), new);
    assert_eq!(w["layers"][1]["wasted"].as_u64().unwrap(), 32 * 65536);
    let paths: Vec<&str> = w["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    let mut largest = paths[..3].to_vec();
    largest.sort_unstable();
    assert_eq!(
        largest,
        ["software/src", "usr/local/deps/gcc", "usr/local/deps/perl"]
    );
    let all = archive_layers(&save(&env, &{
        build(&env, &ctx, &["--squash-all"], "ngx-all");
        "ngx-all".to_owned()
    }));
    assert_eq!(
        w["squash_all"]["after"].as_u64().unwrap(),
        all[0].len() as u64
    );
    let text = env.ok(&["image", "waste", "ngx-plain"]);
    assert!(text.contains("/usr/local/deps/gcc"), "{text}");
    assert!(text.contains("--squash: 4 layers"), "{text}");

    // Rebuilt: every step cached, the squash too: the same image.
    let id = env.ok(&["inspect", "--format", "{{.Id}}", "ngx"]);
    let again = build(&env, &ctx, &["--squash"], "ngx");
    assert!(again.contains("(cached)"), "{again}");
    assert_eq!(env.ok(&["inspect", "--format", "{{.Id}}", "ngx"]), id);
    // No dangling unsquashed image is left behind.
    let dangling = env.ok(&["images", "-q", "-f", "dangling=true"]);
    assert_eq!(dangling.trim(), "", "{dangling}");

    // The squash records go with the squashed layers.
    let records = || -> Vec<String> {
        fs_err::read_dir(env.root().join("layer-cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("squash-"))
            .collect()
    };
    assert_eq!(records().len(), 2, "{:?}", records());
    env.ok(&["builder", "prune", "-a", "-f"]);
    assert_eq!(records().len(), 2, "kept while their images are there");
    env.ok(&["rmi", "ngx", "ngx-all"]);
    env.ok(&["builder", "prune", "-a", "-f"]);
    assert_eq!(records(), Vec::<String>::new());
}

#[test]
fn one_layer_is_not_squashed_and_bad_requests_fail_in_one_line() {
    let env = build_env();
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), "FROM busybox\nRUN echo x > /x\n").unwrap();
    let err = build(&env, &ctx, &["--squash"], "one");
    assert!(err.contains("nothing to squash: 1 layer"), "{err}");
    let layers: Vec<String> =
        serde_json::from_str(&env.ok(&["inspect", "--format", "{{json .RootFS.Layers}}", "one"]))
            .unwrap();
    assert_eq!(layers.len(), 2);
    fs_err::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo x > /x\nRUN echo y > /y\n",
    )
    .unwrap();
    let err = build(&env, &ctx, &["--squash"], "two");
    assert!(err.contains("squashed 2 layers: "), "{err}");
    let e = env.fails(&["image", "squash", "two", "--from", "9"]);
    assert!(e.contains("--from 9: the image has only 2 layers"), "{e}");
    let e = env.fails(&[
        "image",
        "squash",
        "two",
        "--from",
        "sha256:ffffffffffffffffff",
    ]);
    assert!(e.contains("no layer of the image has that diff ID"), "{e}");
    let e = env.fails(&["image", "squash", "no-such-image"]);
    assert!(e.contains("no-such-image"), "{e}");
    let e = env.fails(&["image", "waste", "two", "--format", "yaml"]);
    assert!(e.contains("unknown format"), "{e}");
    // A squash that saves nothing is said so: the only name left of a big
    // file of the kept layer is a hard link a folded layer made to it, so its
    // bytes must be copied into the squashed layer.
    let big = "x".repeat(200_000);
    let archive = docker_archive(
        &[
            layer(&[E::File("big", &big), E::Link("big2", "big")]),
            layer(&[E::Link("kept-link", "big")]),
            layer(&[E::Whiteout("big"), E::Whiteout("big2")]),
        ],
        "grows:latest",
    );
    let path = env.path("grows.tar");
    fs_err::write(&path, archive).unwrap();
    env.ok(&["load", "-i", path.to_str().unwrap()]);
    let o = env
        .cmd(&["image", "squash", "grows", "--from", "2", "-t", "grown"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("squashed 2 layers: "), "{err}");
    assert!(
        err.contains("WARNING: the squashed layer") && err.contains("is not smaller"),
        "{err}"
    );
    let grown = save(&env, "grown");
    let view = fs_view(&archive_layers(&grown));
    assert!(view["kept-link"].starts_with("file "), "{view:?}");
    assert!(!view.contains_key("big"));
    same(
        &fs_view(&archive_layers(&save(&env, "grows"))),
        &view,
        "the grown squash shows the same files",
    );
    let o = env.run(&["build", "--squash", "--squash-all", ctx.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot be used with"),
        "{o:?}"
    );
}

/// A dockerd of the test's own, started `--experimental` (the classic
/// builder's `--squash` needs it) with its data root, exec root and socket in
/// `dir`; stopped, and its images removed, when dropped. The shared dockerd
/// is not touched.
struct PrivateDockerd {
    child: std::process::Child,
    host: String,
}

impl PrivateDockerd {
    fn start(dir: &Path) -> Self {
        assert!(have("dockerd"), "dockerd is missing: install docker.io");
        fs_err::create_dir_all(dir).unwrap();
        fs_err::write(dir.join("daemon.json"), "{}").unwrap();
        // A short socket path: sun_path holds 107 bytes.
        let sock = std::env::temp_dir().join(format!("rbuild-sq-{}.sock", std::process::id()));
        let host = format!("unix://{}", sock.display());
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(dir.join("daemon.json"))
            .args([
                "--experimental",
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
            ])
            .arg("--data-root")
            .arg(dir.join("root"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .args(["-H", &host])
            .stdout(Stdio::null())
            .stderr(
                fs_err::File::create(dir.join("log"))
                    .unwrap()
                    .into_parts()
                    .0,
            )
            .spawn()
            .unwrap();
        let d = Self { child, host };
        for _ in 0..120 {
            if d.docker_ok(&["info"]) {
                return d;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        panic!(
            "the private dockerd did not answer in 60 s: {}",
            fs_err::read_to_string(dir.join("log")).unwrap_or_default()
        );
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .args(["-H", &self.host])
            .args(args)
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn docker_ok(&self, args: &[&str]) -> bool {
        self.docker(args).status.success()
    }

    fn must(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        let ids = self.docker(&["images", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rmi", "-f", id]);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..60 {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn docker_classic_squash_gives_the_same_file_tree_as_squash() {
    let env = build_env();
    assert!(have("docker"), "docker is missing: install docker.io");
    let base = base_archive(&env, "sqbase:latest");
    env.ok(&["load", "-i", base.to_str().unwrap()]);
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    build(&env, &ctx, &["--squash"], "sq");
    let ours = archive_layers(&save(&env, "sq"));
    let base_layers = archive_layers(&base);

    let d = PrivateDockerd::start(&env.path("dockerd"));
    d.must(&["load", "-i", base.to_str().unwrap()]);
    d.must(&[
        "build",
        "--squash",
        "-t",
        "classic:sq",
        ctx.to_str().unwrap(),
    ]);
    let out = env.path("classic.tar");
    d.must(&["save", "-o", out.to_str().unwrap(), "classic:sq"]);
    let theirs = archive_layers(&out);

    // Both keep the base's layers as they are and add one layer.
    assert_eq!(theirs.len(), base_layers.len() + 1, "docker's layers");
    assert_eq!(ours.len(), base_layers.len() + 1, "rbuild's layers");
    for (i, l) in base_layers.iter().enumerate() {
        assert!(ours[i] == *l, "rbuild changed base layer {i}");
    }
    // The classic builder's containers leave their mount points behind
    // (/etc/hosts, /etc/hostname, /etc/resolv.conf, /.dockerenv): not the
    // build's files.
    let mut their_view = normalized(fs_view(&theirs));
    for p in ["etc/hosts", "etc/hostname", "etc/resolv.conf", ".dockerenv"] {
        their_view.remove(p);
    }
    let our_full = fs_view(&ours);
    // rbuild keeps the hard link a RUN made to a base file (the copy-up put
    // both names in the step's layer); docker's classic squash turns the
    // link into a second copy. Both show the same content.
    assert!(
        our_full["data/keep-link"].contains("linked-with=data/keep"),
        "{our_full:?}"
    );
    let mut our_view = normalized(our_full);
    // The mount points a RUN step leaves (as BuildKit 0.8 does; see the
    // README's differences): the classic builder leaves none.
    for p in ["dev", "proc", "sys"] {
        assert!(
            our_view.remove(p).is_some_and(|v| v.starts_with("dir ")),
            "{p}"
        );
    }
    same(
        &their_view,
        &our_view,
        "docker classic --squash vs rbuild --squash",
    );
}

/// A view with modes reduced to their permission bits (docker's tar headers
/// carry the file type bits too) and without hard-link annotations.
fn normalized(view: BTreeMap<String, String>) -> BTreeMap<String, String> {
    view.into_iter()
        .map(|(k, v)| {
            let mut done = false;
            let toks: Vec<String> = v
                .split(' ')
                .filter(|t| !t.starts_with("linked-with="))
                .map(|t| {
                    if !done && t.len() >= 3 && t.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                        done = true;
                        format!("{:o}", u32::from_str_radix(t, 8).unwrap() & 0o7777)
                    } else {
                        t.to_owned()
                    }
                })
                .collect();
            (k, toks.join(" "))
        })
        .collect()
}

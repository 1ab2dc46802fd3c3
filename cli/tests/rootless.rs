//! Builds without root: rbuild run as `nobody` (`setpriv --reuid=65534
//! --regid=65534 --clear-groups`) enters a user namespace of its own and
//! writes the same layers a build as root writes.
//!
//! Host files: the tests give `nobody` subordinate ids by adding one line
//! (`nobody:1000000000:65536`) to `/etc/subuid` and `/etc/subgid` unless it
//! has some already, and remove exactly that line when they end (a Drop
//! guard, so also when an assertion fails); the test without subordinate ids
//! sets `nobody`'s lines aside and puts them back the same way. Other lines
//! are left as they are. The tests hold one lock while they change those
//! files, so they never overlap.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use common::{BIN, Env, build_env, have, make_base_tar};

const NOBODY: u32 = 65534;
const OUR_LINE: &str = "nobody:1000000000:65536";

static ID_FILES: Mutex<()> = Mutex::new(());

fn lines_of(path: &str) -> Vec<String> {
    match fs_err::read_to_string(path) {
        Ok(s) => s.lines().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot read {path}: {e}"),
    }
}

fn is_nobodys(line: &str) -> bool {
    matches!(line.split(':').next(), Some("nobody" | "65534"))
}

/// Writes `lines` to `path` through a temp file and a rename (mode 0644).
fn write_lines(path: &str, lines: &[String]) {
    let tmp = format!("{path}.rbuild-test-{}", std::process::id());
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    fs_err::write(&tmp, text).unwrap();
    fs_err::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    fs_err::rename(&tmp, path).unwrap();
}

/// `/etc/subuid` and `/etc/subgid` as a test needs them for `nobody`, put back
/// when dropped: `added` lines are removed again, `stashed` ones restored.
struct SubIds {
    _lock: std::sync::MutexGuard<'static, ()>,
    added: Vec<&'static str>,
    stashed: Vec<(&'static str, Vec<String>)>,
}

const FILES: [&str; 2] = ["/etc/subuid", "/etc/subgid"];

impl SubIds {
    fn lock() -> std::sync::MutexGuard<'static, ()> {
        ID_FILES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `nobody` has subordinate ids (ours unless it has its own).
    fn present() -> SubIds {
        assert!(
            have("newuidmap") && have("newgidmap"),
            "cannot run: newuidmap/newgidmap are missing: install uidmap"
        );
        let mut g = SubIds {
            _lock: Self::lock(),
            added: Vec::new(),
            stashed: Vec::new(),
        };
        for f in FILES {
            let mut lines = lines_of(f);
            if !lines.iter().any(|l| is_nobodys(l)) {
                lines.push(OUR_LINE.to_owned());
                write_lines(f, &lines);
                g.added.push(f);
            }
        }
        g
    }

    /// `nobody` has none (its lines are set aside).
    fn absent() -> SubIds {
        let mut g = SubIds {
            _lock: Self::lock(),
            added: Vec::new(),
            stashed: Vec::new(),
        };
        for f in FILES {
            let (theirs, rest): (Vec<String>, Vec<String>) =
                lines_of(f).into_iter().partition(|l| is_nobodys(l));
            if !theirs.is_empty() {
                write_lines(f, &rest);
                g.stashed.push((f, theirs));
            }
        }
        g
    }
}

impl Drop for SubIds {
    fn drop(&mut self) {
        for f in &self.added {
            let mut lines = lines_of(f);
            if let Some(i) = lines.iter().position(|l| l == OUR_LINE) {
                lines.remove(i);
                write_lines(f, &lines);
            }
        }
        for (f, theirs) in &self.stashed {
            let mut lines = lines_of(f);
            lines.extend(theirs.iter().cloned());
            write_lines(f, &lines);
        }
    }
}

/// A state root and scratch dir that `nobody` owns, with the busybox base
/// imported (as `nobody`) as `busybox:latest`.
fn nobody_env() -> Env {
    assert!(
        nix::unistd::geteuid().is_root(),
        "cannot run: these tests need root (to become nobody and to edit /etc/subuid)"
    );
    assert!(
        have("setpriv"),
        "cannot run: setpriv is missing: install util-linux"
    );
    let env = Env::new();
    let top = env.dir.path();
    fs_err::set_permissions(top, std::fs::Permissions::from_mode(0o755)).unwrap();
    nix::unistd::chown(top, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    let tar = env.path("base.tar");
    make_base_tar(&tar);
    let o = as_nobody(&env, &["import", tar.to_str().unwrap(), "busybox:latest"]);
    assert!(o.status.success(), "import as nobody: {}", text(&o));
    env
}

/// The rbuild binary as `nobody` can run it: the test binary's own, or a copy
/// in `env`'s dir when the checkout is out of nobody's reach (under /root).
fn nobody_bin(env: &Env) -> PathBuf {
    let reachable = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "test",
            "-x",
            BIN,
        ])
        .status()
        .is_ok_and(|s| s.success());
    if reachable {
        return PathBuf::from(BIN);
    }
    let copy = env.path("rbuild");
    if !copy.exists() {
        fs_err::copy(BIN, &copy).unwrap();
    }
    copy
}

fn as_nobody(env: &Env, args: &[&str]) -> Output {
    as_nobody_with(env, &[], args)
}

/// [`as_nobody`] with environment variables `vars` set too.
fn as_nobody_with(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(nobody_bin(env))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", env.dir.path())
        .env("RBUILD_ROOT", env.root())
        .env("DOCKER_CONFIG", env.path("docker-config"))
        .envs(vars.iter().copied())
        .current_dir(env.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `rbuild build -q --network none -t TAG CTX` as `nobody`, whatever its status.
fn build_as_nobody(env: &Env, ctx: &Path, tag: &str) -> Output {
    build_as_nobody_with(env, &[], ctx, tag)
}

/// [`build_as_nobody`] with environment variables `vars` set too.
fn build_as_nobody_with(env: &Env, vars: &[(&str, &str)], ctx: &Path, tag: &str) -> Output {
    as_nobody_with(
        env,
        vars,
        &[
            "build",
            "-q",
            "--network",
            "none",
            "-t",
            tag,
            ctx.to_str().unwrap(),
        ],
    )
}

/// The test's Dockerfile built as root (overlay) and saved: the reference
/// the builds as `nobody` are compared with. The env holds the archive.
fn root_reference() -> (Env, PathBuf) {
    let env = build_env();
    let ctx = context(&env);
    env.ok(&[
        "build",
        "-q",
        "--network",
        "none",
        "-t",
        "rl:1",
        ctx.to_str().unwrap(),
    ]);
    let tar = env.path("root.tar");
    env.ok(&["save", "-o", tar.to_str().unwrap(), "rl:1"]);
    (env, tar)
}

/// Builds `ctx` as `nobody` tagged `tag` and saves the image to `out`
/// (`rbuild save`), asserting that both succeed.
fn build_and_save_as_nobody(env: &Env, ctx: &Path, tag: &str, out: &Path) {
    build_and_save_as_nobody_with(env, &[], ctx, tag, out);
}

/// [`build_and_save_as_nobody`] with environment variables `vars` set for the build.
fn build_and_save_as_nobody_with(
    env: &Env,
    vars: &[(&str, &str)],
    ctx: &Path,
    tag: &str,
    out: &Path,
) {
    let o = build_as_nobody_with(env, vars, ctx, tag);
    assert!(o.status.success(), "build as nobody: {}", text(&o));
    let o = as_nobody(env, &["save", "-o", out.to_str().unwrap(), tag]);
    assert!(o.status.success(), "save as nobody: {}", text(&o));
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const DOCKERFILE: &str = "\
FROM busybox:latest AS build
RUN --mount=type=cache,target=/cache echo cached >> /cache/c && cp /cache/c /made \\
 && mkdir /owned && chown 33:44 /owned && echo x > /owned/f && chown 2000:3000 /owned/f
COPY --chown=1000:1000 ctx.txt /ctx.txt
FROM busybox:latest
COPY --from=build --chown=1000:1000 /made /out/made
COPY --from=build /owned /owned
COPY --from=build /ctx.txt /ctx.txt
RUN chown 1000:1000 /out && touch /out/new && chown 1234:5678 /out/new \\
 && echo 'bob:x:1001:1001::/tmp:/bin/sh' >> /etc/passwd
USER 1001
RUN id -u > /tmp/bob && id -g >> /tmp/bob
";

fn context(env: &Env) -> PathBuf {
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    fs_err::write(ctx.join("ctx.txt"), "from the context\n").unwrap();
    for p in [ctx.join("Dockerfile"), ctx.join("ctx.txt")] {
        fs_err::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    fs_err::set_permissions(&ctx, std::fs::Permissions::from_mode(0o755)).unwrap();
    ctx
}

/// Every layer's tar headers but the mtime, in order: (layer, path, type,
/// uid, gid, user name, group name, mode, size, link, PAX records).
type Header = (
    usize,
    String,
    u8,
    u64,
    u64,
    String,
    String,
    u32,
    u64,
    String,
    String,
);

fn headers(archive: &Path) -> Vec<Header> {
    let mut blobs = BTreeMap::new();
    let mut outer = tar::Archive::new(fs_err::File::open(archive).unwrap());
    for e in outer.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        blobs.insert(name, data);
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&blobs["manifest.json"]).expect("manifest.json");
    let layers = manifest[0]["Layers"].as_array().expect("Layers").clone();
    let mut out = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let raw = &blobs[l.as_str().unwrap()];
        let data = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut d = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut d)
                .unwrap();
            d
        } else {
            raw.clone()
        };
        let mut t = tar::Archive::new(&data[..]);
        for e in t.entries().unwrap() {
            let mut e = e.unwrap();
            let pax: Vec<String> = e
                .pax_extensions()
                .unwrap()
                .into_iter()
                .flatten()
                .map(|x| {
                    let x = x.unwrap();
                    format!(
                        "{}={}",
                        x.key().unwrap(),
                        String::from_utf8_lossy(x.value_bytes())
                    )
                })
                .filter(|x| !x.contains("time="))
                .collect();
            let h = e.header();
            out.push((
                i,
                e.path().unwrap().to_string_lossy().into_owned(),
                h.entry_type().as_byte(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.username()
                    .unwrap_or_default()
                    .unwrap_or_default()
                    .to_owned(),
                h.groupname()
                    .unwrap_or_default()
                    .unwrap_or_default()
                    .to_owned(),
                h.mode().unwrap(),
                h.size().unwrap(),
                h.link_name()
                    .unwrap()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                pax.join(","),
            ));
        }
    }
    out
}

/// The owner (uid:gid) of each path as the last layer that has it says.
fn owners(h: &[Header]) -> BTreeMap<String, String> {
    h.iter()
        .map(|x| {
            (
                x.1.trim_end_matches('/').to_owned(),
                format!("{}:{}", x.3, x.4),
            )
        })
        .collect()
}

/// Removes the test's image from dockerd even when an assertion fails.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

#[test]
fn nobody_builds_multi_stage_with_the_owners_a_root_build_records() {
    // As root: the reference.
    let (_root_env, root_tar) = root_reference();

    let _ids = SubIds::present();
    let env = nobody_env();
    let ctx = context(&env);
    let tar = env.path("nobody.tar");
    build_and_save_as_nobody(&env, &ctx, "rl:1", &tar);

    let o = as_nobody(&env, &["info"]);
    assert!(
        o.status.success() && text(&o).contains("subordinate ids of /etc/subuid"),
        "info as nobody: {}",
        text(&o)
    );

    let (ours, theirs) = (headers(&tar), headers(&root_tar));
    assert_eq!(ours, theirs, "the tar headers differ from a root build's");
    let owned = owners(&ours);
    for (p, want) in [
        ("out/made", "1000:1000"),
        ("out/new", "1234:5678"),
        ("out", "1000:1000"),
        ("owned/f", "2000:3000"),
        ("ctx.txt", "1000:1000"),
        ("tmp/bob", "1001:1001"),
    ] {
        assert_eq!(owned.get(p).map(String::as_str), Some(want), "owner of {p}");
    }
    // The state root is the user's: nothing in it belongs to the host's root.
    let o = Command::new("find")
        .arg(env.root())
        .args(["-user", "0", "-print", "-quit"])
        .output()
        .unwrap();
    assert_eq!(
        text(&o),
        "",
        "files owned by the host's root in nobody's state root"
    );

    // docker sees the same owners.
    assert!(
        have("docker")
            && Command::new("docker")
                .arg("info")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        "cannot run: dockerd is not reachable (docker info failed)"
    );
    let name = format!("rbuild-rootless-test-{}:latest", std::process::id());
    let _rm = RemoveImage(name.clone());
    let o = as_nobody(&env, &["tag", "rl:1", &name]);
    assert!(o.status.success(), "tag: {}", text(&o));
    let tagged = env.path("tagged.tar");
    let o = as_nobody(&env, &["save", "-o", tagged.to_str().unwrap(), &name]);
    assert!(o.status.success(), "save: {}", text(&o));
    let o = Command::new("docker")
        .args(["load", "-i"])
        .arg(&tagged)
        .output()
        .unwrap();
    assert!(o.status.success(), "docker load: {}", text(&o));
    let paths = [
        "/out",
        "/out/made",
        "/out/new",
        "/owned/f",
        "/ctx.txt",
        "/tmp/bob",
    ];
    let o = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "0",
            &name,
            "stat",
            "-c",
            "%n %u:%g",
        ])
        .args(paths)
        .output()
        .unwrap();
    assert!(o.status.success(), "docker run: {}", text(&o));
    let want: Vec<String> = paths
        .iter()
        .map(|p| format!("{p} {}", owned[p.trim_start_matches('/')]))
        .collect();
    let want = want.join("\n") + "\n";
    assert_eq!(String::from_utf8_lossy(&o.stdout), want);
}

#[test]
fn nobody_without_subordinate_ids_builds_with_every_file_root_s() {
    let _ids = SubIds::absent();
    let env = nobody_env();
    let ctx = env.path("ctx1");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::set_permissions(&ctx, std::fs::Permissions::from_mode(0o755)).unwrap();
    fs_err::write(
        ctx.join("Dockerfile"),
        "FROM busybox:latest\nRUN echo a > /a && chown 1000:1000 /a; stat -c %u:%g /a > /seen\n\
         COPY --chown=1000:1000 Dockerfile /df\n",
    )
    .unwrap();
    let tar = env.path("one.tar");
    build_and_save_as_nobody(&env, &ctx, "one:1", &tar);
    let owned = owners(&headers(&tar));
    let o = as_nobody(&env, &["info"]);
    assert!(
        o.status.success() && text(&o).contains("your id only"),
        "info as nobody: {}",
        text(&o)
    );
    assert_eq!(
        owned["a"], "0:0",
        "the RUN's chown to an unmapped id fails there"
    );
    assert_eq!(
        owned["df"], "0:0",
        "COPY --chown to an unmapped id leaves root's"
    );

    // A step as another user cannot run: one line saying what to do.
    fs_err::write(
        ctx.join("Dockerfile"),
        "FROM busybox:latest\nUSER 1001\nRUN id\n",
    )
    .unwrap();
    let o = build_as_nobody(&env, &ctx, "two:1");
    assert!(
        !o.status.success(),
        "USER 1001 without subordinate ids must fail"
    );
    let err = text(&o);
    assert!(
        err.contains("/etc/subuid") && !err.contains("panicked"),
        "the error says to configure subordinate ids: {err}"
    );
}

/// Where the kernel refuses overlayfs in a user namespace (before 5.11),
/// rbuild uses the copying snapshotter; forced here with
/// `RBUILD_SNAPSHOTTER=copy`, a build as `nobody` gives the tar headers a
/// root build gives with overlay.
#[test]
fn nobody_with_the_copying_snapshotter_builds_the_layers_root_builds_with_overlay() {
    let (_root_env, root_tar) = root_reference();

    let _ids = SubIds::present();
    let env = nobody_env();
    let ctx = context(&env);
    let copy = [("RBUILD_SNAPSHOTTER", "copy")];
    let o = as_nobody_with(&env, &copy, &["info"]);
    assert!(
        o.status.success() && text(&o).contains("Snapshotter: copy"),
        "info as nobody: {}",
        text(&o)
    );
    let tar = env.path("nobody.tar");
    build_and_save_as_nobody_with(&env, &copy, &ctx, "rl:1", &tar);
    assert_eq!(
        headers(&tar),
        headers(&root_tar),
        "the tar headers differ from a root build's"
    );
    let mounts = env.root().join("snapshots/mounts");
    assert_eq!(
        fs_err::read_dir(&mounts).unwrap().count(),
        0,
        "copies left in {}",
        mounts.display()
    );
}

//! The copying snapshotter (`RBUILD_SNAPSHOTTER=copy`, chosen by itself where
//! overlayfs cannot be mounted, e.g. a rootless build on a kernel before 5.11):
//! steps run in a copy of their parent and their changes are moved into the
//! snapshot as overlayfs would have left them, so a build makes the same
//! layers, and the same image ID, with either snapshotter.
//!
//! Builds need root (`common::build_env`); the rootless side is in
//! `rootless.rs` and `.ci/conformance-rootless` (run by CI with the copying
//! snapshotter too).

mod common;

use std::process::{Output, Stdio};

use common::{Env, build_env};

/// Every change overlayfs records in its own way: files changed, removed and
/// replaced by other types, a directory removed and made again (an opaque
/// directory), a hard link written through one name (overlayfs's copy-up
/// breaks it: the other name keeps the old content), a new link to a file of
/// the base (overlayfs copies the file up with it), a symlink replaced by a
/// directory, file ops (COPY) over a base, and a COPY --from a stage of
/// several layers.
const DOCKERFILE: &str = "\
FROM busybox:latest AS base
RUN mkdir -p /d/sub /e && echo 1 > /d/sub/f && echo 2 > /d/g && ln /d/g /d/h \\
 && ln -s /d/g /d/s && echo keep > /e/k && chown 1000:1000 /d/sub/f
FROM base
RUN rm -rf /d/sub && rm /bin/wget && echo 3 >> /d/g && chmod 600 /d/g \\
 && mkdir /bin/newdir && rm /d/s && mkdir /d/s
RUN rm /e/k && rmdir /e && echo file > /e && ln -s /e /elink
COPY --from=base /d /copied
COPY ctx.txt /copied/sub/
RUN rm -rf /copied && mkdir /copied && echo again > /copied/x && touch /etc/passwd \
 && ln /etc/group /etc/group-link
";

fn context(env: &Env) -> std::path::PathBuf {
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    fs_err::write(ctx.join("ctx.txt"), "from the context\n").unwrap();
    ctx
}

fn with(env: &Env, snapshotter: &str, args: &[&str]) -> Output {
    env.cmd(args)
        .env("RBUILD_SNAPSHOTTER", snapshotter)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn build(env: &Env, snapshotter: &str, tag: &str) -> String {
    let ctx = context(env);
    let o = with(
        env,
        snapshotter,
        &[
            "build",
            "-q",
            "--no-cache",
            "--network",
            "none",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
            "-t",
            tag,
            ctx.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "build with {snapshotter}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

#[test]
fn the_copying_snapshotter_makes_the_image_overlay_makes() {
    let env = build_env();
    let info = text(&with(&env, "copy", &["info"]));
    assert!(
        info.contains("Snapshotter: copy (RBUILD_SNAPSHOTTER=copy)"),
        "{info}"
    );
    let overlay = build(&env, "overlay", "o:1");
    let copy = build(&env, "copy", "c:1");
    assert!(overlay.starts_with("sha256:"), "{overlay}");
    assert_eq!(
        copy, overlay,
        "the copying snapshotter made another image than overlay"
    );
    // What the image holds, read by a container over a copy too.
    let o = with(
        &env,
        "copy",
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "c:1",
            "sh",
            "-c",
            "cat /d/g /d/h /copied/x /e; ls -A /copied; test -d /d/s && test ! -e /bin/wget \
             && test ! -e /d/sub && stat -c %a /d/g && stat -c %h /etc/group-link",
        ],
    );
    assert!(o.status.success(), "run: {}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "2\n3\n2\nagain\nfile\nx\n600\n2\n",
        "/d/h keeps the old content, as after overlayfs's copy-up"
    );
    // No copy is left behind.
    let mounts = env.root().join("snapshots/mounts");
    let left: Vec<_> = fs_err::read_dir(&mounts)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", mounts.display());
}

#[test]
fn a_failed_step_over_a_copy_leaves_nothing_and_says_why() {
    let env = build_env();
    let ctx = env.path("fail");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(
        ctx.join("Dockerfile"),
        "FROM busybox:latest\nRUN echo made > /made && exit 3\n",
    )
    .unwrap();
    let o = with(
        &env,
        "copy",
        &["build", "--network", "none", ctx.to_str().unwrap()],
    );
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("did not complete successfully: exit code: 3"),
        "{out}"
    );
    assert!(!out.contains("panicked"), "{out}");
    let mounts = env.root().join("snapshots/mounts");
    assert_eq!(fs_err::read_dir(&mounts).unwrap().count(), 0, "copies left");
}

#[test]
fn an_unknown_snapshotter_is_refused_in_one_line() {
    let env = build_env();
    let ctx = env.path("c");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), "FROM busybox:latest\nRUN true\n").unwrap();
    let o = with(&env, "zfs", &["build", ctx.to_str().unwrap()]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("RBUILD_SNAPSHOTTER=\"zfs\": the snapshotter is one of overlay, copy, auto"),
        "{out}"
    );
    assert!(!out.contains("panicked"), "{out}");
}

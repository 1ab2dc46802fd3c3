//! Real tools read what rbuild writes and rbuild reads what they write: docker
//! (dockerd must be running), skopeo, umoci. Each test fails saying what is missing when its
//! tool is unavailable. Only images these tests load are used; nothing is pulled.

mod common;

use std::process::Command;

use common::{Env, base_sh, docker, have};

/// Imports the busybox rootfs from the conformance base script as `name`.
fn import_busybox(env: &Env, name: &str) -> String {
    let Some(base) = base_sh() else {
        panic!("cannot run: testdata/examples/busybox-base.sh not found");
    };
    assert!(have("busybox"), "cannot run: busybox not installed");
    let tar = env.path("busybox-rootfs.tar");
    let st = Command::new(base).arg(&tar).status().unwrap();
    assert!(st.success());
    env.ok(&["import", "-c", "CMD [\"sh\"]", tar.to_str().unwrap(), name])
        .trim()
        .to_owned()
}

fn sh(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn docker_loads_and_runs_what_rbuild_saves_and_rbuild_loads_docker_save() {
    docker::require();
    let env = Env::new();
    let name = format!("rbuild-peer-test-{}:latest", std::process::id());
    let _cleanup = docker::RemoveOnDrop::one(&name);
    let id = import_busybox(&env, &name);
    let archive = env.path("rb.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), &name]);
    let out = docker::load(&archive);
    assert!(out.contains(&format!("Loaded image: {name}")), "{out}");
    let (ok, out) = sh(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        &name,
        "cat",
        "/etc/passwd",
    ]));
    assert!(
        ok && out.starts_with("root:x:0:0:root:/root:/bin/sh"),
        "docker run: {out}"
    );
    let (ok, out) =
        sh(Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", &name]));
    assert!(
        ok && out.trim() == id,
        "docker sees the same image ID: {out} vs {id}"
    );
    let (ok, out) =
        sh(Command::new("docker").args(["image", "inspect", "--format", "{{.Size}}", &name]));
    assert!(ok, "{out}");
    assert_eq!(
        out.trim(),
        env.ok(&["inspect", "--format", "{{.Size}}", &name]).trim(),
        "same size as docker"
    );
    // And back: docker save → rbuild load.
    let dsave = env.path("docker.tar");
    let (ok, out) = sh(Command::new("docker")
        .args(["save", "-o"])
        .arg(&dsave)
        .arg(&name));
    assert!(ok, "docker save: {out}");
    let other = Env::new();
    let out = other.ok(&["load", "-i", dsave.to_str().unwrap()]);
    assert_eq!(out, format!("Loaded image: {name}\n"));
    assert_eq!(other.ok(&["images", "-q", "--no-trunc"]), format!("{id}\n"));
}

#[test]
fn skopeo_reads_the_oci_side_and_rbuild_reads_skopeo_docker_archives() {
    assert!(have("skopeo"), "cannot run: skopeo not installed");
    let env = Env::new();
    let id = env.import_rootfs("sk/app:1", "skopeo");
    let archive = env.path("rb.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), "sk/app:1"]);
    let (ok, out) = sh(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display())));
    assert!(ok, "skopeo inspect: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), 1);
    assert_eq!(v["Os"], "linux");
    let (ok, out) = sh(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker-archive:{}", archive.display())));
    assert!(ok, "skopeo inspect docker-archive: {out}");
    // skopeo's own docker-archive, loaded by rbuild.
    let out_path = env.path("skopeo.tar");
    let (ok, out) = sh(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!(
            "docker-archive:{}:copied/app:2",
            out_path.display()
        )));
    assert!(ok, "skopeo copy: {out}");
    let other = Env::new();
    assert_eq!(
        other.ok(&["load", "-i", out_path.to_str().unwrap()]),
        "Loaded image: copied/app:2\n"
    );
    assert_eq!(other.ok(&["images", "-q", "--no-trunc"]), format!("{id}\n"));
    // And an OCI layout written by skopeo (gzip layers).
    let oci_dir = env.path("oci-dir");
    let (ok, out) = sh(Command::new("skopeo")
        .arg("copy")
        .arg("--dest-compress")
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("oci:{}:v3", oci_dir.display())));
    assert!(ok, "skopeo copy oci: {out}");
    let oci_tar = env.path("oci.tar");
    let (ok, out) = sh(Command::new("tar")
        .arg("-C")
        .arg(&oci_dir)
        .arg("-cf")
        .arg(&oci_tar)
        .arg("."));
    assert!(ok, "{out}");
    let third = Env::new();
    assert_eq!(
        third.ok(&["load", "-i", oci_tar.to_str().unwrap()]),
        format!("Loaded image ID: {id}\n")
    );
}

#[test]
fn umoci_unpacks_the_oci_layout() {
    assert!(have("umoci"), "cannot run: umoci not installed");
    let env = Env::new();
    env.import_rootfs("umo:1", "umoci");
    let archive = env.path("rb.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), "umo:1"]);
    let layout = env.path("layout");
    fs_err::create_dir(&layout).unwrap();
    let (ok, out) = sh(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-xf")
        .arg(&archive));
    assert!(ok, "{out}");
    let bundle = env.path("bundle");
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack");
    if !std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
    {
        cmd.arg("--rootless");
    }
    let (ok, out) = sh(cmd
        .arg("--image")
        .arg(format!("{}:1", layout.display()))
        .arg(&bundle));
    assert!(ok, "umoci unpack: {out}");
    assert_eq!(
        fs_err::read_to_string(bundle.join("rootfs/etc/seed")).unwrap(),
        "umoci"
    );
    assert_eq!(
        fs_err::read_link(bundle.join("rootfs/bin/sh"))
            .unwrap()
            .to_str(),
        Some("busybox")
    );
}

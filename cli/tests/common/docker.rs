//! dockerd as a peer of the tests (CI starts one: `dockerd --bridge=none
//! --iptables=false`): a test that needs it fails saying it is missing; the
//! images a test gives it are removed again, even when an assertion fails.

use std::path::Path;
use std::process::{Command, Stdio};

use super::have;

/// Fails the test, saying what is missing, unless dockerd answers
/// (`docker info`).
pub fn require() {
    assert!(
        have("docker"),
        "cannot run: docker is missing: install docker.io"
    );
    let answers = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        answers,
        "cannot run: dockerd is not reachable (docker info failed; start it with \
         `dockerd --bridge=none --iptables=false`)"
    );
}

/// `docker load -i archive`, asserting it worked; what it printed.
pub fn load(archive: &Path) -> String {
    let o = Command::new("docker")
        .args(["load", "-i"])
        .arg(archive)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "docker load: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Removes these images from dockerd when dropped.
#[derive(Default)]
pub struct RemoveOnDrop(pub Vec<String>);

impl RemoveOnDrop {
    pub fn one(image: &str) -> Self {
        Self(vec![image.to_owned()])
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = Command::new("docker")
                .args(["rmi", "-f", image])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

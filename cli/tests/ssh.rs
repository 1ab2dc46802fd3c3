//! `RUN --mount=type=ssh` with `rbuild build --ssh`, through the binary: a
//! step talks to an agent through the forwarded socket (the system
//! `ssh-agent` holding a key made by `ssh-keygen`, or rbuild's own agent
//! holding key files), with the client below, built static so it runs in
//! the busybox base (busybox has no `ssh-add`). The socket never reaches a
//! layer, and its path is no part of the step's cache key.
//!
//! Needs root, the busybox base, `rustc` (for the client) and
//! `openssh-client` (`ssh-agent`, `ssh-add`, `ssh-keygen`); fails saying what
//! is missing otherwise.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::steps::{Machine, Steps};

/// Lists the identities of the agent at `$SSH_AUTH_SOCK` (one `identity
/// COMMENT` line each) and has the first sign `rbuild` (`signature ALG
/// LEN`), as `ssh-add -l` and an ssh client would.
const CLIENT: &str = r#"
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

fn call(s: &mut UnixStream, body: &[u8]) -> Vec<u8> {
    let mut m = (body.len() as u32).to_be_bytes().to_vec();
    m.extend_from_slice(body);
    s.write_all(&m).unwrap();
    let mut n = [0u8; 4];
    s.read_exact(&mut n).unwrap();
    let mut r = vec![0; u32::from_be_bytes(n) as usize];
    s.read_exact(&mut r).unwrap();
    r
}

fn string<'a>(b: &mut &'a [u8]) -> &'a [u8] {
    let n = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
    let s = &b[4..4 + n];
    *b = &b[4 + n..];
    s
}

fn main() {
    let path = std::env::var("SSH_AUTH_SOCK").expect("SSH_AUTH_SOCK is not set");
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("connect {path}: {e}");
            std::process::exit(2);
        }
    };
    let r = call(&mut s, &[11]);
    assert_eq!(r[0], 12, "not an identities answer: {r:?}");
    let n = u32::from_be_bytes(r[1..5].try_into().unwrap());
    let mut rest = &r[5..];
    let mut first = None;
    for _ in 0..n {
        let blob = string(&mut rest).to_vec();
        println!("identity {}", String::from_utf8_lossy(string(&mut rest)));
        first.get_or_insert(blob);
    }
    let Some(blob) = first else { return };
    let mut req = vec![13];
    for f in [&blob[..], b"rbuild"] {
        req.extend_from_slice(&(f.len() as u32).to_be_bytes());
        req.extend_from_slice(f);
    }
    req.extend_from_slice(&0u32.to_be_bytes());
    let r = call(&mut s, &req);
    if r[0] != 14 {
        println!("sign refused");
        return;
    }
    let mut rest = &r[1..];
    let mut sig = string(&mut rest);
    let alg = String::from_utf8_lossy(string(&mut sig)).into_owned();
    println!("signature {alg} {}", string(&mut sig).len());
    // Adding a key is refused (a read-only agent).
    println!("add answered {}", call(&mut s, &[17, 0, 0, 0, 0])[0]);
}
"#;

fn tool(name: &str) -> Command {
    assert!(
        common::have(name),
        "{name} is missing: install openssh-client"
    );
    Command::new(name)
}

/// Builds the client statically into `dir/client`.
fn client(dir: &Path) -> PathBuf {
    let src = dir.join("client.rs");
    fs_err::write(&src, CLIENT).unwrap();
    let out = dir.join("client");
    common::compile_static(&src, &out);
    out
}

/// An ed25519 key made by ssh-keygen with `comment`.
fn keygen(path: &Path, comment: &str) {
    let ok = tool("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen failed");
}

/// The system `ssh-agent` on `sock`, holding `key`; killed when dropped.
struct Agent(Child);

impl Agent {
    fn start(sock: &Path, key: &Path) -> Agent {
        let mut child = tool("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(sock)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // -D prints the environment lines once it listens.
        let mut first = [0u8; 1];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut first)
            .unwrap();
        let agent = Agent(child);
        let ok = tool("ssh-add")
            .arg("-q")
            .arg(key)
            .env("SSH_AUTH_SOCK", sock)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "ssh-add {} failed", key.display());
        agent
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every entry name of every layer in a docker archive.
fn layer_entries(archive: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut outer = tar::Archive::new(fs_err::File::open(archive).unwrap());
    for e in outer.entries().unwrap() {
        let mut e = e.unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if data.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&data[..])
                .read_to_end(&mut plain)
                .unwrap();
            data = plain;
        }
        if data.len() < 512 || &data[257..262] != b"ustar" {
            continue;
        }
        for inner in tar::Archive::new(&data[..]).entries().unwrap() {
            names.push(inner.unwrap().path().unwrap().display().to_string());
        }
    }
    names
}

fn build(b: &Machine, args: &[&str], auth_sock: Option<&Path>) -> Steps {
    let mut a = vec!["build", "--progress", "json"];
    a.extend_from_slice(args);
    let mut cmd = b.env.cmd(&a);
    cmd.env_remove("SSH_AUTH_SOCK");
    if let Some(s) = auth_sock {
        cmd.env("SSH_AUTH_SOCK", s);
    }
    let o = cmd.stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "build {args:?} failed:\n{err}");
    Steps::parse(&err)
}

/// The name of the one RUN step among `set`.
fn run_step(set: &std::collections::BTreeSet<String>, log: &str) -> String {
    let runs: Vec<&String> = set.iter().filter(|n| n.starts_with("[2/2] RUN")).collect();
    assert_eq!(runs.len(), 1, "{log}");
    runs[0].clone()
}

#[test]
fn a_step_talks_to_the_agent_of_ssh_default_through_its_own_socket() {
    let b = Machine::new();
    let ctx = b.env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    client(&ctx);
    let key = b.env.path("id_test");
    keygen(&key, "forwarded@rbuild-test");
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=bind,source=client,target=/usr/bin/agent-client \
             --mount=type=ssh \
             mkdir /out && agent-client > /out/agent && echo \"$SSH_AUTH_SOCK\" > /out/sock \
             && stat -c '%u %g %a %F' \"$SSH_AUTH_SOCK\" > /out/stat\n",
    );
    let sock_a = b.env.path("agent-a.sock");
    let _agent_a = Agent::start(&sock_a, &key);
    let archive = b.p("image.tar");
    // `--ssh default`: the agent of $SSH_AUTH_SOCK.
    let first = build(
        &b,
        &["--ssh", "default", "-t", "ssh:1", &b.p("ctx")],
        Some(&sock_a),
    );
    b.env.ok(&["save", "-o", &archive, "ssh:1"]);
    let step = run_step(&first.ran, &first.log);
    assert!(step.contains("--mount=type=ssh"), "{step}");
    let cat = |p: &str| b.env.ok(&["run", "--rm", "ssh:1", "cat", p]);
    assert_eq!(
        cat("/out/agent"),
        "identity forwarded@rbuild-test\nsignature ssh-ed25519 64\nadd answered 5\n"
    );
    assert_eq!(cat("/out/sock"), "/run/buildkit/ssh_agent.0\n");
    assert_eq!(cat("/out/stat"), "0 0 600 socket\n");
    // Not the agent's own socket: a socket of the step's.
    let names = layer_entries(Path::new(&archive));
    assert!(names.iter().any(|n| n.contains("out/agent")), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.contains("ssh_agent") || n.contains("ssh_auth_sock")),
        "the agent socket is in a layer: {names:?}"
    );
    let o = b.env.run(&[
        "run",
        "--rm",
        "ssh:1",
        "test",
        "-e",
        "/run/buildkit/ssh_agent.0",
    ]);
    assert!(!o.status.success(), "the socket's stub is in the image");
    // No socket, directory or file of the forwarder is left in the state root.
    let left = common::snapshot(&b.env.root());
    assert!(
        !left.iter().any(|p| p.contains("ssh_auth_sock")),
        "{left:?}"
    );

    // Another agent at another path, the same key: the step is cached
    // (neither the socket path nor the agent is in the key).
    let sock_b = b.env.path("elsewhere/agent-b.sock");
    fs_err::create_dir_all(sock_b.parent().unwrap()).unwrap();
    let _agent_b = Agent::start(&sock_b, &key);
    let second = build(
        &b,
        &[
            "--ssh",
            &format!("default={}", sock_b.display()),
            &b.p("ctx"),
        ],
        None,
    );
    assert_eq!(run_step(&second.cached, &second.log), step);
    assert!(
        second.ran.iter().all(|n| !n.contains("RUN")),
        "{}",
        second.log
    );
    assert!(first.keys.contains_key(&step), "{}", first.log);
    assert_eq!(first.keys.get(&step), second.keys.get(&step));
}

#[test]
fn key_files_are_served_by_rbuilds_agent_with_the_mounts_options() {
    let b = Machine::new();
    let ctx = b.env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    client(&ctx);
    let key = b.env.path("deploy_key");
    keygen(&key, "deploy@rbuild-test");
    let other = b.env.path("other_key");
    keygen(&other, "other@rbuild-test");
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\n\
         RUN --mount=type=bind,source=client,target=/usr/bin/agent-client \
             --mount=type=ssh,id=deploy,target=/agent.sock,uid=1000,gid=1001,mode=0660,required \
             --mount=type=ssh \
             mkdir /out && agent-client > /out/agent && echo \"$SSH_AUTH_SOCK\" > /out/sock \
             && stat -c '%u %g %a %F' /agent.sock > /out/stat \
             && if [ -e /run/buildkit/ssh_agent.1 ]; then echo yes; else echo no; fi > /out/unforwarded\n",
    );
    let out = b.env.path("out");
    build(
        &b,
        &[
            "--ssh",
            &format!("deploy={},{}", key.display(), other.display()),
            "--output",
            &format!("type=local,dest={}", out.display()),
            &b.p("ctx"),
        ],
        None,
    );
    let read = |p: &str| fs_err::read_to_string(out.join(p)).unwrap();
    assert_eq!(
        read("out/agent"),
        "identity deploy@rbuild-test\nidentity other@rbuild-test\nsignature ssh-ed25519 64\nadd answered 5\n"
    );
    // SSH_AUTH_SOCK names the first ssh mount; the default id, not given
    // and not required, is not mounted.
    assert_eq!(read("out/sock"), "/agent.sock\n");
    assert_eq!(read("out/stat"), "1000 1001 660 socket\n");
    assert_eq!(read("out/unforwarded"), "no\n");
    assert!(std::fs::symlink_metadata(out.join("agent.sock")).is_err());
}

/// The one `ERROR:` line of a failed build (a step's failure, shown as
/// `BuildKit` shows it: the step, the Dockerfile line, then the error).
fn step_error(b: &Machine, args: &[&str]) -> String {
    let o = b.env.run(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("ERROR:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_owned()
}

#[test]
fn a_required_ssh_mount_without_ssh_fails_naming_the_id() {
    let b = Machine::new();
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\nRUN --mount=type=ssh,id=deploy,required=true true\n",
    );
    let err = step_error(&b, &["build", "--progress", "quiet", &b.p("ctx")]);
    assert!(err.contains("no SSH key \"deploy\" forwarded"), "{err}");
    // Another id forwarded does not stand in for it.
    let key = b.env.path("k");
    keygen(&key, "k");
    let err = step_error(
        &b,
        &[
            "build",
            "--progress",
            "quiet",
            "--ssh",
            &format!("default={}", key.display()),
            &b.p("ctx"),
        ],
    );
    assert!(err.contains("no SSH key \"deploy\" forwarded"), "{err}");
}

#[test]
fn bad_ssh_values_are_one_line_errors() {
    let b = Machine::new();
    b.write("ctx/Dockerfile", "FROM busybox\nRUN true\n");
    let missing = b.env.path("no-such-agent");
    let mut cmd = b.env.cmd(&["build", "--ssh", "default", &b.p("ctx")]);
    let o = cmd.env_remove("SSH_AUTH_SOCK").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("SSH_AUTH_SOCK"), "{err}");
    let err = b.env.fails(&[
        "build",
        "--ssh",
        &format!("x={}", missing.display()),
        &b.p("ctx"),
    ]);
    assert!(
        err.contains("--ssh x:") && err.contains("no-such-agent"),
        "{err}"
    );
    let junk = b.env.path("junk");
    fs_err::write(&junk, "not a key\n").unwrap();
    let err = b.env.fails(&[
        "build",
        "--ssh",
        &format!("x={}", junk.display()),
        &b.p("ctx"),
    ]);
    assert!(err.contains("not an OpenSSH private key"), "{err}");
    let err = b
        .env
        .fails(&["build", "--ssh", "a=/x,raw=maybe", &b.p("ctx")]);
    assert!(err.contains("invalid value for 'raw'"), "{err}");
}

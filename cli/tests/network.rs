//! The default network of RUN steps and `rbuild run` (a network namespace of
//! their own, connected through pasta or slirp4netns), `--network none`, and the
//! error when no helper is installed. Needs root, `ip` (iproute2), `busybox` and
//! `pasta` (passt).
//!
//! No address outside the machine is touched: rbuild runs inside a network
//! namespace the test makes ("host"), joined by a veth pair to a second one
//! ("outside") that serves HTTP and has no route anywhere else. So the gateway
//! pasta copies from the "host" is the "outside" namespace, 10.0.2.2 leads
//! there and is dropped, and the "host"'s loopback server is the test's own.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{BIN, Env};

const HOST_ADDR: &str = "10.213.7.1";
/// The "outside" end of the veth pair: the "host"'s gateway.
const GATEWAY_ADDR: &str = "10.213.7.2";
/// The server "outside", behind the gateway (not the gateway's own address).
const OUTSIDE_ADDR: &str = "10.99.0.1";
const OUTSIDE_PORT: u16 = 8080;
/// The "host"'s loopback service a RUN must not reach.
const LOOPBACK_PORT: u16 = 18081;

fn need(tool: &str, package: &str) {
    assert!(
        common::have(tool),
        "{tool} is missing: install {package} (apt-get install -y {package})"
    );
}

fn need_all() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "cannot run: network namespaces need root"
    );
    need("ip", "iproute2");
    need("busybox", "busybox-static");
    need("pasta", "passt");
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Two network namespaces joined by a veth pair: "host" (where rbuild runs,
/// default route to "outside") and "outside" (an HTTP server); plus a server
/// on the "host"'s 127.0.0.1. Removed on drop.
struct TestNet {
    host: String,
    outside: String,
    servers: Vec<Child>,
    www: tempfile::TempDir,
}

impl TestNet {
    fn new() -> TestNet {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let host = format!("rbt-{id}-h");
        let outside = format!("rbt-{id}-o");
        ip(&["netns", "add", &host]);
        let mut net = TestNet {
            host: host.clone(),
            outside: outside.clone(),
            servers: Vec::new(),
            www: tempfile::tempdir().unwrap(),
        };
        ip(&["netns", "add", &outside]);
        // Both ends made right in their namespaces: nothing in the machine's own.
        ip(&[
            "link", "add", "veth-h", "netns", &host, "type", "veth", "peer", "name", "veth-o",
            "netns", &outside,
        ]);
        for (ns, dev, addr) in [
            (&host, "veth-h", HOST_ADDR),
            (&outside, "veth-o", GATEWAY_ADDR),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n",
            &outside,
            "addr",
            "add",
            &format!("{OUTSIDE_ADDR}/32"),
            "dev",
            "lo",
        ]);
        ip(&["-n", &host, "route", "add", "default", "via", GATEWAY_ADDR]);

        let www = net.www.path().to_path_buf();
        for (dir, token) in [
            ("outside", "OUTSIDE-REACHED"),
            ("loopback", "LOOPBACK-LEAKED"),
        ] {
            std::fs::create_dir(www.join(dir)).unwrap();
            std::fs::write(www.join(dir).join("token.txt"), format!("{token}\n")).unwrap();
        }
        let outside_at = format!("{OUTSIDE_ADDR}:{OUTSIDE_PORT}");
        let loopback_at = format!("127.0.0.1:{LOOPBACK_PORT}");
        net.serve(&outside, &outside_at, &www.join("outside"));
        net.serve(&host, &loopback_at, &www.join("loopback"));
        TestNet::wait_served(&outside, &outside_at, "OUTSIDE-REACHED");
        TestNet::wait_served(&host, &loopback_at, "LOOPBACK-LEAKED");
        net
    }

    fn serve(&mut self, ns: &str, at: &str, dir: &Path) {
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "busybox", "httpd", "-f", "-p", at, "-h",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.servers.push(child);
    }

    /// Waits until `ns` gets `token` from the server at `at`.
    fn wait_served(ns: &str, at: &str, token: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if http_get_in(ns, at).contains(token) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test's HTTP server at {at} in {ns} did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `rbuild ARGS` run in the "host" namespace.
    fn rbuild(&self, env: &Env, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.host, BIN])
            .args(args)
            .env("RBUILD_ROOT", env.root())
            .env_remove("SOURCE_DATE_EPOCH")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// `GET /token.txt` from `at`, made from network namespace `ns` (by a thread
/// that joins it); what came back, or an empty string.
fn http_get_in(ns: &str, at: &str) -> String {
    use std::io::{Read, Write};
    let ns_file = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    let at: std::net::SocketAddr = at.parse().unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&at, Duration::from_secs(2)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"GET /token.txt HTTP/1.0\r\n\r\n");
        let mut got = String::new();
        let _ = s.read_to_string(&mut got);
        got
    })
    .join()
    .unwrap()
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.host, &self.outside] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn context(env: &Env, dockerfile: &str) -> PathBuf {
    let dir = env.path("ctx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    dir
}

/// A shell command getting `/token.txt` from ADDR PORT, 3 s at most (busybox
/// 1.35's `wget -T` crashes, hence `timeout`).
fn get(addr: &str, port: u16) -> String {
    format!("timeout 3 wget -q -O - http://{addr}:{port}/token.txt")
}

/// The script a RUN runs: fetch from the outside server, then try the host's
/// loopback server through 127.0.0.1, the gateway and 10.0.2.2; one line each.
fn probe_script() -> String {
    format!(
        "echo \"fetched=$({fetch})\"; \
         gw=$(ip route | awk '/^default/ {{print $3}}'); echo \"gateway=$gw\"; \
         for a in 127.0.0.1 $gw 10.0.2.2; do \
           r=$({probe} 2>/dev/null); echo \"loopback via $a: ${{r:-unreachable}}\"; \
         done",
        fetch = get(OUTSIDE_ADDR, OUTSIDE_PORT),
        probe = get("$a", LOOPBACK_PORT),
    )
}

/// Checks the probe's lines: the outside was reached, nothing on the host's
/// loopback was, and the gateway is the one pasta copied (the "outside" side).
fn check_probe(out: &str) {
    assert!(out.contains("fetched=OUTSIDE-REACHED"), "{out}");
    assert!(
        out.contains(&format!("gateway={GATEWAY_ADDR}")),
        "expected the host's gateway in the step's namespace: {out}"
    );
    for a in ["127.0.0.1", GATEWAY_ADDR, "10.0.2.2"] {
        assert!(
            out.contains(&format!("loopback via {a}: unreachable")),
            "the host's loopback server must be unreachable via {a}: {out}"
        );
    }
    assert!(!out.contains("LOOPBACK-LEAKED"), "{out}");
}

/// A RUN without `--network` (and `rbuild run` without it) reaches a server
/// outside through the helper, but not the host's 127.0.0.1 services: not
/// through 127.0.0.1 (its own loopback), the gateway (`--no-map-gw`) or
/// 10.0.2.2.
#[test]
fn default_network_reaches_outside_but_not_host_loopback() {
    need_all();
    let env = common::build_env();
    let net = TestNet::new();
    let ctx = context(
        &env,
        &format!(
            "FROM busybox\nRUN {}\nRUN cat /proc/net/dev\n",
            probe_script()
        ),
    );
    let o = net.rbuild(
        &env,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            "probe",
            ctx.to_str().unwrap(),
        ],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    check_probe(&out);
    // Its own interface next to lo (the host's is veth-h here).
    assert!(out.contains("veth-h:"), "{out}");

    // `rbuild run`'s default is the same network.
    let o = net.rbuild(
        &env,
        &["run", "--rm", "busybox", "sh", "-c", &probe_script()],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    check_probe(&out);

    // `--network default` is the explicit spelling of the same.
    let o = net.rbuild(
        &env,
        &[
            "run",
            "--rm",
            "--network",
            "default",
            "busybox",
            "sh",
            "-c",
            &format!(
                "echo \"fetched=$({})\"; ls /sys/class/net",
                get(OUTSIDE_ADDR, OUTSIDE_PORT)
            ),
        ],
    );
    let out = text(&o);
    assert!(
        out.contains("fetched=OUTSIDE-REACHED") && out.contains("veth-h"),
        "{out}"
    );

    // --network host, by contrast, is the host's own: its loopback server is
    // reachable (so the probe above can tell).
    let o = net.rbuild(
        &env,
        &[
            "run",
            "--rm",
            "--network",
            "host",
            "busybox",
            "sh",
            "-c",
            &get("127.0.0.1", LOOPBACK_PORT),
        ],
    );
    assert!(text(&o).contains("LOOPBACK-LEAKED"), "{}", text(&o));
}

/// The interface names a step printed after `key` (not the echoed command).
fn ifs(out: &str, key: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split(key).nth(1))
        .find(|rest| !rest.starts_with('$'))
        .unwrap_or_else(|| panic!("no {key} line: {out}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// `--network none` (the build's, a RUN's own, `rbuild run`'s) has only `lo`.
#[test]
fn none_network_has_only_loopback() {
    need_all();
    let env = common::build_env();
    let ctx = context(
        &env,
        "FROM busybox\n\
         RUN echo \"default-ifs=$(ls /sys/class/net | tr '\\n' ' ')\"\n\
         RUN --network=none echo \"none-ifs=$(ls /sys/class/net | tr '\\n' ' ')\"\n",
    );
    let o = env.run(&["build", "--progress", "plain", ctx.to_str().unwrap()]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(ifs(&out, "none-ifs="), ["lo"], "{out}");
    let default_ifs = ifs(&out, "default-ifs=");
    assert!(
        default_ifs.contains(&"lo".to_string()) && default_ifs.len() >= 2,
        "{out}"
    );

    // The build's --network none applies to every RUN without its own.
    let ctx2 = env.path("ctx2");
    std::fs::create_dir_all(&ctx2).unwrap();
    std::fs::write(
        ctx2.join("Dockerfile"),
        "FROM busybox\nRUN echo \"build-none-ifs=$(ls /sys/class/net | tr '\\n' ' ')\"; cat /proc/net/dev\n",
    )
    .unwrap();
    let o = env.run(&[
        "build",
        "--progress",
        "plain",
        "--network",
        "none",
        ctx2.to_str().unwrap(),
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(ifs(&out, "build-none-ifs="), ["lo"], "{out}");

    let o = env.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "ls",
        "/sys/class/net",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "lo");
}

/// Neither pasta nor slirp4netns on PATH: the default network fails with an
/// error naming both (and their packages); `--network none` still works.
#[test]
fn missing_network_helpers_are_named() {
    need_all();
    let env = common::build_env();
    let empty = env.path("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let ctx = context(&env, "FROM busybox\nRUN echo ran-$((40+2))\n");

    let o = env
        .cmd(&["build", "--progress", "plain", ctx.to_str().unwrap()])
        .env("PATH", &empty)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(!out.contains("panicked"), "{out}");
    for word in ["pasta", "`passt`", "slirp4netns", "--network"] {
        assert!(out.contains(word), "error should name {word}: {out}");
    }
    assert!(!out.contains("ran-42"), "the step must not run: {out}");

    let o = env
        .cmd(&["run", "--rm", "busybox", "echo", "ran-without-helper"])
        .env("PATH", &empty)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one-line error: {err}");
    assert!(
        err.contains("pasta") && err.contains("slirp4netns"),
        "{err}"
    );
    assert!(o.stdout.is_empty());

    let o = env
        .cmd(&[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox",
            "echo",
            "none-ok",
        ])
        .env("PATH", &empty)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "none-ok");
}

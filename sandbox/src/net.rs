//! The network of [`crate::NetworkMode::Private`]: the sandbox's own network
//! namespace, connected to the outside by a user-mode network helper the parent
//! starts once the namespace exists: `pasta` (Debian/Ubuntu package `passt`) or,
//! when it is not installed, `slirp4netns`.
//!
//! The helper attaches to the namespace through an fd the parent passes it
//! (`/proc/self/fd/3` in the helper: it cannot open `/proc/PID/ns/net` itself
//! once it has dropped its capabilities), configures the interface, address,
//! routes and `lo` there, and says it is ready (pasta writes its pid file, the
//! fd 4 we pass; slirp4netns writes to `--ready-fd`). The sandbox's init waits
//! for that before it starts the main process. pasta writes its pid file only
//! after filling its socket and pipe pools, 15 to 30 ms after the namespace is
//! configured; when rbuild runs as root it watches the namespace's routing
//! table (a netlink socket made there) and releases init as soon as the
//! default routes of every IP version the helper configures are in place:
//! packets sent before the helper's main loop runs wait in the tap device's
//! queue. The helper is killed when the run ends (and dies with the thread
//! that started it).
//!
//! Host loopback services stay out of reach: pasta runs with `--no-map-gw` (the
//! gateway address is not mapped to the host's 127.0.0.1) and `-T none -U none`
//! (no port of the namespace's own 127.0.0.1 is forwarded to the host's);
//! `-t none -u none` forwards no host port into the namespace. slirp4netns runs
//! with `--disable-host-loopback` (10.0.2.2 does not reach the host's loopback).

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::{SandboxError, sys};

/// The address a namespace served by pasta sends DNS queries to when the host's
/// resolver is on its loopback (systemd-resolved's 127.0.0.53, a local dnsmasq):
/// pasta forwards them to that resolver (`--dns-forward`).
pub(crate) const PASTA_DNS_FORWARD: &str = "169.254.1.1";
/// slirp4netns's built-in DNS forwarder.
pub(crate) const SLIRP_DNS: &str = "10.0.2.3";

/// How long the helper may take to configure the namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The user-mode network helper found on `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Helper {
    Pasta(PathBuf),
    Slirp4netns(PathBuf),
}

impl Helper {
    fn name(&self) -> &'static str {
        match self {
            Helper::Pasta(_) => "pasta",
            Helper::Slirp4netns(_) => "slirp4netns",
        }
    }
}

/// Looks `pasta`, then `slirp4netns`, up in `path` (a `PATH` value).
pub(crate) fn find_helper(path: Option<&std::ffi::OsStr>) -> Result<Helper, SandboxError> {
    let find = |name: &str| {
        path.into_iter()
            .flat_map(std::env::split_paths)
            .filter(|d| d.is_absolute())
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
    };
    if let Some(p) = find("pasta") {
        return Ok(Helper::Pasta(p));
    }
    if let Some(p) = find("slirp4netns") {
        return Ok(Helper::Slirp4netns(p));
    }
    Err(SandboxError::Network(
        "the default network needs a user-mode network helper, and neither `pasta` \
         (package `passt`) nor `slirp4netns` (package `slirp4netns`) is on PATH; \
         install one of them, or use --network host or --network none"
            .into(),
    ))
}

/// As non-root the helper opens `/dev/net/tun` with this user's rights (in the
/// sandbox's user namespace): an error saying so when it may not.
pub(crate) fn check_tun_access() -> Result<(), SandboxError> {
    use nix::unistd::{AccessFlags, access};
    // Root of a user namespace (rootless rbuild) is still the user on the host.
    if (nix::unistd::geteuid().is_root() && !crate::rootless::in_user_namespace())
        || access("/dev/net/tun", AccessFlags::R_OK | AccessFlags::W_OK).is_ok()
    {
        return Ok(());
    }
    Err(SandboxError::Network(
        "the default network as non-root needs /dev/net/tun readable and writable by \
         this user (the helper makes its tap device there); run as root, make it mode \
         0666, or use --network host or --network none"
            .into(),
    ))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn is_loopback(addr: &str) -> bool {
    addr.parse::<std::net::IpAddr>()
        .is_ok_and(|a| a.is_loopback())
}

/// The sandbox's `/etc/resolv.conf` from the host's, for a namespace served by
/// `helper`: nameservers on the host's loopback are unreachable from there, so
/// they are replaced by the helper's forwarder (pasta forwards to the host's
/// first resolver only, so only a loopback first resolver is replaced; other
/// loopback ones are dropped). `None` when no usable nameserver is left.
pub(crate) fn resolv_conf(host: &str, helper: &Helper) -> Option<String> {
    let mut out = String::new();
    let mut first = true;
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let addr = words.next().unwrap_or("");
            let was_first = std::mem::replace(&mut first, false);
            if is_loopback(addr) {
                let forwarder = match helper {
                    Helper::Pasta(_) if was_first && addr.parse::<std::net::Ipv4Addr>().is_ok() => {
                        PASTA_DNS_FORWARD
                    }
                    Helper::Slirp4netns(_) => SLIRP_DNS,
                    Helper::Pasta(_) => continue,
                };
                let line = format!("nameserver {forwarder}\n");
                if !out.contains(&line) {
                    out.push_str(&line);
                    servers += 1;
                }
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    (servers > 0).then_some(out)
}

/// Whether the host's first IPv4 nameserver is on its loopback (pasta then
/// needs `--dns-forward`).
fn first_v4_nameserver_is_loopback(host: &str) -> bool {
    host.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.split_whitespace().next())
        .find_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .is_some_and(|a| a.is_loopback())
}

/// A running helper. Dropping it kills the helper (a thread reaps it).
pub(crate) struct Running {
    name: &'static str,
    child: Option<Child>,
    ready: OwnedFd,
    stderr: OwnedFd,
    stop: Option<OwnedFd>,
    /// A netlink socket in the namespace, subscribed to route changes, with the
    /// default routes still awaited (IPv4, IPv6).
    routes: Option<(OwnedFd, [bool; 2])>,
}

/// Which IP versions have a default route on the host (pasta configures those
/// it finds usable; slirp4netns only IPv4).
fn host_default_routes() -> [bool; 2] {
    let v4 = std::fs::read_to_string("/proc/net/route").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 7 && f[1] == "00000000" && f[7] == "00000000"
        })
    });
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").is_ok_and(|t| {
        t.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo"
        })
    });
    [v4, v6]
}

/// A `NETLINK_ROUTE` socket in the network namespace of `netns` (made by a
/// short-lived thread that joins it), or `None` when this process may not join
/// it (not root).
fn route_monitor(netns: &OwnedFd) -> Option<OwnedFd> {
    const RTMGRP_IPV4_ROUTE: u32 = 0x40;
    const RTMGRP_IPV6_ROUTE: u32 = 0x400;
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let fd = netns.as_raw_fd();
    let sock = std::thread::scope(|s| {
        s.spawn(move || {
            sys::setns(fd, libc::CLONE_NEWNET).ok()?;
            sys::netlink_route_socket(RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE).ok()
        })
        .join()
        .ok()
        .flatten()
    })?;
    fcntl(&sock, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).ok()?;
    Some(sock)
}

/// Marks the default routes announced in a batch of netlink messages.
fn note_default_routes(mut msgs: &[u8], want: &mut [bool; 2]) {
    const RTM_NEWROUTE: u16 = 24;
    while msgs.len() >= 16 {
        let len = u32::from_ne_bytes(msgs[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(msgs[4..6].try_into().expect("2 bytes"));
        if len < 16 || len > msgs.len() {
            return;
        }
        // struct rtmsg: family, dst_len, ...
        if kind == RTM_NEWROUTE && len >= 16 + 12 && msgs[17] == 0 {
            match i32::from(msgs[16]) {
                libc::AF_INET => want[0] = false,
                libc::AF_INET6 => want[1] = false,
                _ => {}
            }
        }
        msgs = &msgs[((len + 3) & !3).min(msgs.len())..];
    }
}

/// Starts `helper` for the network namespace of `netns` (an open
/// `/proc/PID/ns/net`), joining `userns` first when given (non-root runs).
pub(crate) fn start(
    helper: &Helper,
    netns: &OwnedFd,
    userns: Option<&OwnedFd>,
    host_resolv: &str,
) -> Result<Running, SandboxError> {
    let (ready_r, ready_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(crate::sys_err("pipe"))?;
    let mut cmd;
    match helper {
        Helper::Pasta(path) => {
            cmd = Command::new(path);
            cmd.args([
                "--foreground",
                "--quiet",
                "--config-net",
                "--no-map-gw",
                "-t",
                "none",
                "-u",
                "none",
                "-T",
                "none",
                "-U",
                "none",
                "--pid",
                "/proc/self/fd/4",
            ]);
            if nix::unistd::geteuid().is_root() {
                // pasta started as root changes to `nobody` by default, which may
                // not join a namespace rbuild (root) made.
                cmd.args(["--runas", "0"]);
            }
            if first_v4_nameserver_is_loopback(host_resolv) {
                cmd.args(["--dns-forward", PASTA_DNS_FORWARD]);
            }
            if userns.is_some() {
                cmd.args(["--userns", "/proc/self/fd/5"]);
            }
            cmd.args(["--netns", "/proc/self/fd/3"]);
        }
        Helper::Slirp4netns(path) => {
            cmd = Command::new(path);
            cmd.args([
                "--configure",
                "--mtu=65520",
                "--disable-host-loopback",
                "--ready-fd=4",
                "--netns-type=path",
            ]);
            if userns.is_some() {
                cmd.arg("--userns-path=/proc/self/fd/5");
            }
            cmd.args(["/proc/self/fd/3", "tap0"]);
        }
    }
    let routes = route_monitor(netns).map(|sock| {
        let mut want = host_default_routes();
        if matches!(helper, Helper::Slirp4netns(_)) {
            want[1] = false;
        }
        (sock, want)
    });
    let mut fds = vec![(netns.as_raw_fd(), 3), (ready_w.as_raw_fd(), 4)];
    if let Some(u) = userns {
        fds.push((u.as_raw_fd(), 5));
    }
    sys::pass_fds_and_die_with_thread(&mut cmd, &fds);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        SandboxError::Network(format!(
            "cannot start {} for the step's network: {e}",
            helper.name()
        ))
    })?;
    drop(ready_w);
    let stderr: OwnedFd = child.stderr.take().expect("piped").into();
    for fd in [&ready_r, &stderr] {
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(crate::sys_err("fcntl"))?;
    }
    Ok(Running {
        name: helper.name(),
        child: Some(child),
        ready: ready_r,
        stderr,
        stop: None,
        routes: routes.filter(|(_, want)| want.iter().any(|w| *w)),
    })
}

impl Running {
    /// Waits until the helper has configured the namespace; an error (with what
    /// the helper said) when it exits first or takes too long.
    pub(crate) fn wait_ready(&mut self) -> Result<(), SandboxError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut said = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.failed(&said, "did not configure the network in time"));
            }
            let mut pfds = [
                libc::pollfd {
                    fd: self.ready.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.stderr.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.routes.as_ref().map_or(-1, |(s, _)| s.as_raw_fd()),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            let _ = sys::poll(&mut pfds, ms);
            if pfds[0].revents & libc::POLLIN != 0 {
                return Ok(());
            }
            if pfds[2].revents != 0
                && let Some((sock, want)) = &mut self.routes
            {
                let mut msgs = [0u8; 16384];
                while let Ok(n) = nix::unistd::read(&*sock, &mut msgs) {
                    if n == 0 {
                        break;
                    }
                    note_default_routes(&msgs[..n], want);
                }
                if !want.iter().any(|w| *w) {
                    return Ok(());
                }
            }
            if pfds[1].revents != 0 {
                match nix::unistd::read(&self.stderr, &mut buf) {
                    Ok(0) => return Err(self.failed(&said, "exited")),
                    Ok(n) => said.extend_from_slice(&buf[..n]),
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                    Err(_) => return Err(self.failed(&said, "exited")),
                }
            } else if pfds[0].revents != 0 {
                // The ready fd closed without a byte: the helper is gone.
                let mut f = std::fs::File::from(self.stderr.try_clone()?);
                let _ = f.read_to_end(&mut said);
                return Err(self.failed(&said, "exited"));
            }
        }
    }

    fn failed(&mut self, said: &[u8], what: &str) -> SandboxError {
        let status = self.child.as_mut().and_then(|c| {
            let _ = c.kill();
            c.wait().ok()
        });
        self.child = None;
        // pasta says "Failed to send N bytes to syslog" for each line when there
        // is no syslog: not the reason.
        let said: Vec<String> = String::from_utf8_lossy(said)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.contains("to syslog"))
            .map(str::to_string)
            .collect();
        let mut msg = format!("{} {what}", self.name);
        if let Some(s) = status.filter(|_| what == "exited") {
            msg = format!("{msg} ({s})");
        }
        if !said.is_empty() {
            msg.push_str(": ");
            msg.push_str(&said.join("; "));
        }
        SandboxError::Network(format!("cannot set up the step's network: {msg}"))
    }
}

impl Running {
    /// Hands the helper to a thread that drains its stderr (so a chatty helper
    /// never blocks on a full pipe) and kills and reaps it when this handle is
    /// dropped.
    pub(crate) fn detach(&mut self) -> Result<(), SandboxError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let (stop_r, stop_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(crate::sys_err("pipe"))?;
        let stderr = self.stderr.try_clone()?;
        self.stop = Some(stop_w);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let mut pfds = [
                    libc::pollfd {
                        fd: stop_r.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: stderr.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                let _ = sys::poll(&mut pfds, -1);
                if pfds[0].revents != 0 {
                    let _ = child.kill();
                    break;
                }
                if pfds[1].revents != 0 {
                    match nix::unistd::read(&stderr, &mut buf) {
                        Ok(0) => break,
                        Ok(_) | Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                        Err(_) => break,
                    }
                }
            }
            // Its exit (tearing down the tap device and its sockets) takes tens
            // of milliseconds the step does not wait for.
            let _ = child.wait();
        });
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A detached helper: closing `stop` makes its thread kill it.
        self.stop.take();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolvers_are_replaced_by_the_forwarder() {
        let pasta = Helper::Pasta("/usr/bin/pasta".into());
        let slirp = Helper::Slirp4netns("/usr/bin/slirp4netns".into());
        let stub = "# systemd\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
        assert_eq!(
            resolv_conf(stub, &pasta).unwrap(),
            "# systemd\nnameserver 169.254.1.1\noptions edns0 trust-ad\nsearch lan\n"
        );
        assert_eq!(
            resolv_conf(stub, &slirp).unwrap(),
            "# systemd\nnameserver 10.0.2.3\noptions edns0 trust-ad\nsearch lan\n"
        );
        assert!(first_v4_nameserver_is_loopback(stub));
        // Only the first is forwarded by pasta; later loopback ones are dropped.
        let mixed = "nameserver 10.1.1.1\nnameserver 127.0.0.1\nnameserver ::1\n";
        assert_eq!(resolv_conf(mixed, &pasta).unwrap(), "nameserver 10.1.1.1\n");
        assert!(!first_v4_nameserver_is_loopback(mixed));
        assert_eq!(
            resolv_conf("nameserver 10.255.255.53\n", &pasta).unwrap(),
            "nameserver 10.255.255.53\n"
        );
        assert_eq!(resolv_conf("nameserver ::1\n", &pasta), None);
        assert_eq!(resolv_conf("", &slirp), None);
    }

    #[test]
    fn helper_lookup_prefers_pasta_and_names_both_packages_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = find_helper(Some(empty.as_os_str()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pasta") && e.contains("passt") && e.contains("slirp4netns"),
            "{e}"
        );
        let both = dir.path().join("both");
        std::fs::create_dir(&both).unwrap();
        for n in ["pasta", "slirp4netns"] {
            let p = both.join(n);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        let path = std::env::join_paths([&empty, &both]).unwrap();
        assert_eq!(
            find_helper(Some(&path)).unwrap(),
            Helper::Pasta(both.join("pasta"))
        );
        std::fs::remove_file(both.join("pasta")).unwrap();
        assert_eq!(
            find_helper(Some(&path)).unwrap(),
            Helper::Slirp4netns(both.join("slirp4netns"))
        );
    }
}

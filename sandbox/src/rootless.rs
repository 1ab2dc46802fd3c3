//! Rootless builds: an ordinary user's rbuild enters a user namespace of its
//! own for the whole command, as rootless buildah (`buildah unshare`) and
//! rootless `BuildKit` (rootlesskit) do. Inside it rbuild is uid 0: snapshots
//! are overlay-mounted, layers are unpacked with their owners and diffed into
//! tars that record the namespace's ids (0, 1000, …) exactly as a build as
//! root records them, and each step's sandbox nests its own namespaces below.
//!
//! The map: the user's own id becomes 0, and the user's subordinate ranges
//! (`/etc/subuid`, `/etc/subgid`, written by `newuidmap`/`newgidmap` of the
//! `uidmap` package) become 1, 2, …, so files owned by other users keep their
//! owners. Without subordinate ranges (or without those tools) only the user's
//! own id is mapped: every file then belongs to root in the namespace, an
//! owner other than 0 cannot be set (it is left as root), and a step cannot
//! run as another user.
//!
//! [`enter`] must be called while the process has a single thread (at the top
//! of `main`): `unshare(CLONE_NEWUSER)` refuses multi-threaded callers.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::{SandboxError, sys};

/// One line of a uid or gid map: `count` ids from `inside` map to `outside`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// How the namespace entered by [`enter`] maps ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootless {
    pub uid_map: Vec<IdRange>,
    pub gid_map: Vec<IdRange>,
    /// Whether subordinate ranges are mapped (else only the user's own ids).
    pub subordinate: bool,
}

static ENTERED: OnceLock<Rootless> = OnceLock::new();

/// The namespace this process entered with [`enter`], if it did.
pub fn entered() -> Option<&'static Rootless> {
    ENTERED.get()
}

/// The subordinate ranges of the user `name` (uid `id`) in `text` (the format of
/// `/etc/subuid`: `NAME_OR_ID:START:COUNT` lines), in file order.
pub fn subordinate_ranges(text: &str, name: Option<&str>, id: u32) -> Vec<(u32, u32)> {
    let id = id.to_string();
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            if f.next().is_some() || !(Some(who) == name || who == id) {
                return None;
            }
            let (start, count) = (start.parse().ok()?, count.parse().ok()?);
            (count > 0).then_some((start, count))
        })
        .collect()
}

/// The map for `own` (the user's id, mapped to 0) and its subordinate ranges
/// (mapped from 1 on, in order).
pub fn id_map(own: u32, ranges: &[(u32, u32)]) -> Vec<IdRange> {
    let mut map = vec![IdRange {
        inside: 0,
        outside: own,
        count: 1,
    }];
    let mut next = 1u32;
    for &(start, count) in ranges {
        let Some(end) = next.checked_add(count) else {
            break;
        };
        map.push(IdRange {
            inside: next,
            outside: start,
            count,
        });
        next = end;
    }
    map
}

/// Whether this process is in a user namespace other than the initial one
/// (its uid map is not the identity over every id).
pub fn in_user_namespace() -> bool {
    static IN: OnceLock<bool> = OnceLock::new();
    *IN.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map")
            .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
    })
}

/// Whether gid `gid` has a mapping in this process's user namespace.
pub fn gid_mapped(gid: u32) -> bool {
    id_mapped("/proc/self/gid_map", gid)
}

/// Whether uid `uid` has a mapping in this process's user namespace.
pub fn uid_mapped(uid: u32) -> bool {
    id_mapped("/proc/self/uid_map", uid)
}

fn id_mapped(path: &str, id: u32) -> bool {
    std::fs::read_to_string(path).is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            f.len() == 3 && (f[0]..f[0] + f[2]).contains(&u64::from(id))
        })
    })
}

/// Whether `setgroups(2)` is allowed in this user namespace (not after a map
/// written without `newgidmap`, which needs `/proc/self/setgroups` = deny).
pub fn setgroups_allowed() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").map_or(true, |s| s.trim() != "deny")
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn read_or_empty(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// What [`enter`] would do for this user: `None` as root; else the maps, and
/// where subordinate ids are mapped the `newuidmap` and `newgidmap` to use.
pub fn plan() -> Option<(Rootless, Option<(PathBuf, PathBuf)>)> {
    if nix::unistd::geteuid().is_root() {
        return None;
    }
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name);
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name);
    let sub_u = subordinate_ranges(
        &read_or_empty(Path::new("/etc/subuid")),
        name.as_deref(),
        uid,
    );
    // /etc/subgid names the user too (shadow's `newgidmap` looks the ranges up
    // by the user's name or uid); a group's name is taken as well.
    let mut sub_g = subordinate_ranges(
        &read_or_empty(Path::new("/etc/subgid")),
        name.as_deref(),
        uid,
    );
    if sub_g.is_empty() {
        sub_g = subordinate_ranges(
            &read_or_empty(Path::new("/etc/subgid")),
            group.as_deref(),
            gid,
        );
    }
    let tools = find_tool("newuidmap").zip(find_tool("newgidmap"));
    Some(match tools {
        Some(tools) if !sub_u.is_empty() && !sub_g.is_empty() => (
            Rootless {
                uid_map: id_map(uid, &sub_u),
                gid_map: id_map(gid, &sub_g),
                subordinate: true,
            },
            Some(tools),
        ),
        _ => (
            Rootless {
                uid_map: id_map(uid, &[]),
                gid_map: id_map(gid, &[]),
                subordinate: false,
            },
            None,
        ),
    })
}

/// Enters a new user and mount namespace when not running as root (see the
/// module doc); `Ok(None)` as root, where nothing changes. The process must be
/// single-threaded.
pub fn enter() -> Result<Option<&'static Rootless>, SandboxError> {
    if let Some(r) = ENTERED.get() {
        return Ok(Some(r));
    }
    let Some((rootless, tools)) = plan() else {
        return Ok(None);
    };
    crate::check_support()?;
    if let Some((newuidmap, newgidmap)) = tools {
        enter_with_helpers(&rootless, &newuidmap, &newgidmap)?;
    } else {
        unshare()?;
        let w = |file: &str, data: String| {
            fs_err::write(format!("/proc/self/{file}"), data).map_err(SandboxError::Io)
        };
        let (uid, gid) = (rootless.uid_map[0].outside, rootless.gid_map[0].outside);
        w("setgroups", "deny".into())?;
        w("uid_map", format!("0 {uid} 1\n"))?;
        w("gid_map", format!("0 {gid} 1\n"))?;
    }
    become_root(rootless.subordinate)?;
    Ok(Some(ENTERED.get_or_init(|| rootless)))
}

fn unshare() -> Result<(), SandboxError> {
    sys::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS).map_err(|e| {
        SandboxError::UserNamespace(format!(
            "cannot create a user namespace ({e}); building as non-root needs unprivileged \
             user namespaces (sysctls kernel.unprivileged_userns_clone, \
             user.max_user_namespaces, kernel.apparmor_restrict_unprivileged_userns); \
             run as root or enable them"
        ))
    })
}

fn map_args(tool: &Path, pid: u32, map: &[IdRange]) -> Result<Vec<CString>, SandboxError> {
    let mut args = vec![
        crate::cpath(tool)?,
        CString::new(pid.to_string()).expect("digits"),
    ];
    for r in map {
        for n in [r.inside, r.outside, r.count] {
            args.push(CString::new(n.to_string()).expect("digits"));
        }
    }
    Ok(args)
}

/// Unshares, with `newuidmap` and `newgidmap` writing the maps: two children
/// forked before the unshare (so they stay in the initial namespace, where the
/// set-uid tools work) wait for a byte each and exec the tools on our pid.
fn enter_with_helpers(
    r: &Rootless,
    newuidmap: &Path,
    newgidmap: &Path,
) -> Result<(), SandboxError> {
    let pid = std::process::id();
    let jobs = [
        map_args(newuidmap, pid, &r.uid_map)?,
        map_args(newgidmap, pid, &r.gid_map)?,
    ];
    let (go_r, go_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(crate::sys_err("pipe"))?;
    let mut children = Vec::new();
    for args in &jobs {
        let argv: Vec<*const libc::c_char> = args
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp = [std::ptr::null()];
        match sys::clone_fork(0) {
            Ok(0) => {
                // The child: wait for the parent's unshare, then exec the tool.
                use std::os::fd::AsRawFd;
                if !sys::read_byte(go_r.as_raw_fd()) {
                    sys::exit(1);
                }
                sys::reset_signals();
                sys::execve(&args[0], &argv, &envp);
                sys::exit(127);
            }
            Ok(child) => children.push(child),
            Err(e) => {
                drop(go_w);
                reap(&children);
                return Err(SandboxError::Sys {
                    what: "fork".into(),
                    source: e,
                });
            }
        }
    }
    drop(go_r);
    if let Err(e) = unshare() {
        drop(go_w);
        reap(&children);
        return Err(e);
    }
    nix::unistd::write(&go_w, b"gg").map_err(crate::sys_err("pipe write"))?;
    drop(go_w);
    for (child, tool) in children.iter().zip([newuidmap, newgidmap]) {
        let status = sys::waitpid(*child).map_err(crate::sys_err("waitpid"))?.1;
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            return Err(SandboxError::UserNamespace(format!(
                "{} failed (status {status:#x}) mapping the subordinate ids of /etc/subuid and \
                 /etc/subgid; check those entries, or remove them to map only your own id",
                tool.display()
            )));
        }
    }
    Ok(())
}

fn reap(children: &[libc::pid_t]) {
    for c in children {
        let _ = sys::waitpid(*c);
    }
}

/// After the maps are written: the namespace's root for every id, with no
/// supplementary groups (unmapped ones) where `setgroups` is allowed, and
/// mounts private to this namespace.
fn become_root(setgroups: bool) -> Result<(), SandboxError> {
    let root_g = nix::unistd::Gid::from_raw(0);
    let root_u = nix::unistd::Uid::from_raw(0);
    if setgroups {
        nix::unistd::setgroups(&[]).map_err(crate::sys_err("setgroups"))?;
    }
    nix::unistd::setresgid(root_g, root_g, root_g).map_err(crate::sys_err("setresgid"))?;
    nix::unistd::setresuid(root_u, root_u, root_u).map_err(crate::sys_err("setresuid"))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(crate::sys_err("making the mounts private"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_by_name_or_id() {
        let text = "alice:100000:65536\n# c\nbob:200000:10\n1000:300000:5\nbad\nalice:x:1\n";
        assert_eq!(
            subordinate_ranges(text, Some("alice"), 1000),
            vec![(100_000, 65_536), (300_000, 5)]
        );
        assert_eq!(
            subordinate_ranges(text, Some("bob"), 1001),
            vec![(200_000, 10)]
        );
        assert!(subordinate_ranges(text, None, 7).is_empty());
    }

    #[test]
    fn map_puts_own_id_at_zero_and_ranges_after() {
        assert_eq!(
            id_map(65534, &[(100_000, 65_536), (300_000, 5)]),
            vec![
                IdRange {
                    inside: 0,
                    outside: 65534,
                    count: 1
                },
                IdRange {
                    inside: 1,
                    outside: 100_000,
                    count: 65_536
                },
                IdRange {
                    inside: 65_537,
                    outside: 300_000,
                    count: 5
                },
            ]
        );
    }
}

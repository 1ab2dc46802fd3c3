//! `USER` resolution against the image's own `/etc/passwd` and `/etc/group`.
//!
//! Semantics follow moby/sys/user's `GetExecUser` (what runc and `BuildKit` use):
//! `name`, `name:group`, `uid`, `uid:gid`, `uid:group`, `name:gid`. A user name must
//! exist in passwd; a numeric uid need not. Without an explicit group the primary
//! group comes from passwd and the supplementary groups are the groups listing the
//! user as a member; with an explicit group only that group is used.

use std::path::{Component, Path, PathBuf};

use crate::SandboxError;

/// A resolved user: what the process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups as `docker run` sets them (the primary gid first).
    pub groups: Vec<u32>,
    /// Supplementary groups as `BuildKit`'s executor sets them for a build
    /// step (`GetUser`: none when the `USER` is empty or a numeric `uid:gid`,
    /// else only the groups listing a user named without a group; the primary
    /// gid is not added).
    pub step_groups: Vec<u32>,
    /// Home directory from passwd, `/` when the user has no entry.
    pub home: String,
}

#[derive(Debug, Clone)]
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

#[derive(Debug, Clone)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).map_or_else(String::new, |s| (*s).to_string()),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The uid and gid of the user `name` in the text of a passwd file (the first
/// entry of that name).
pub fn passwd_ids(passwd: &str, name: &str) -> Option<(u32, u32)> {
    parse_passwd(passwd)
        .into_iter()
        .find(|e| e.name == name)
        .map(|e| (e.uid, e.gid))
}

/// The gid of the group `name` in the text of a group file (the first entry of
/// that name).
pub fn group_id(group: &str, name: &str) -> Option<u32> {
    parse_group(group)
        .into_iter()
        .find(|e| e.name == name)
        .map(|e| e.gid)
}

/// Resolves `spec` (the `USER` string; empty means root) against the given file
/// contents (`None` when the image has no such file).
pub fn resolve_user_in(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, SandboxError> {
    let spec = spec.trim();
    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_arg = if user_arg.is_empty() { "0" } else { user_arg };
    let passwd_entries = passwd.map(parse_passwd).unwrap_or_default();
    let group_entries = group.map(parse_group).unwrap_or_default();

    let numeric_uid: Option<u32> = user_arg.parse().ok();
    let matched = passwd_entries
        .iter()
        .find(|e| e.name == user_arg || numeric_uid == Some(e.uid));
    let (uid, mut gid, home, matched_name) = match (matched, numeric_uid) {
        (Some(e), _) => (e.uid, e.gid, e.home.clone(), Some(e.name.clone())),
        (None, Some(uid)) => (uid, 0, "/".to_string(), None),
        (None, None) => {
            return Err(SandboxError::UnknownUser {
                user: user_arg.to_string(),
                reason: if passwd.is_some() {
                    "no matching entries in passwd file".into()
                } else {
                    "the image has no /etc/passwd".into()
                },
            });
        }
    };
    let home = if home.is_empty() { "/".into() } else { home };

    let mut groups = Vec::new();
    match group_arg {
        Some(g) if !g.is_empty() => {
            let numeric_gid: Option<u32> = g.parse().ok();
            if let Some(e) = group_entries
                .iter()
                .find(|e| e.name == g || numeric_gid == Some(e.gid))
            {
                gid = e.gid;
            } else if let Some(n) = numeric_gid {
                gid = n;
            } else {
                return Err(SandboxError::UnknownUser {
                    user: spec.to_string(),
                    reason: format!("unable to find group {g}: no matching entries in group file"),
                });
            }
        }
        _ => {
            if let Some(name) = &matched_name {
                groups.extend(
                    group_entries
                        .iter()
                        .filter(|e| e.members.iter().any(|m| m == name))
                        .map(|e| e.gid),
                );
            }
        }
    }
    let both_numeric = spec.is_empty()
        || spec
            .split_once(':')
            .is_some_and(|(u, g)| u.parse::<u32>().is_ok() && g.parse::<u32>().is_ok());
    let step_groups = if both_numeric {
        Vec::new()
    } else {
        groups.clone()
    };
    let mut all = vec![gid];
    for g in groups {
        if !all.contains(&g) {
            all.push(g);
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        groups: all,
        step_groups,
        home,
    })
}

/// Resolves `spec` against `rootfs/etc/passwd` and `rootfs/etc/group`.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<ResolvedUser, SandboxError> {
    let read = |p: &str| -> Result<Option<String>, SandboxError> {
        let path = resolve_in_root(rootfs, Path::new(p));
        match fs_err::read(&path) {
            Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SandboxError::Io(e)),
        }
    };
    let passwd = read("/etc/passwd")?;
    let group = read("/etc/group")?;
    resolve_user_in(spec, passwd.as_deref(), group.as_deref())
}

/// Resolves `path` inside `root` as if `root` were `/`: symlinks (absolute or
/// relative) never lead outside `root`. Components that do not exist are appended
/// as they are.
pub fn resolve_in_root(root: &Path, path: &Path) -> PathBuf {
    let mut todo: Vec<PathBuf> = path
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(PathBuf::from(s)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut cur = PathBuf::new(); // relative to root
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c.as_os_str() == ".." {
            cur.pop();
            continue;
        }
        let candidate = cur.join(&c);
        let full = root.join(&candidate);
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() && links < 40 => {
                links += 1;
                let Ok(target) = std::fs::read_link(&full) else {
                    cur = candidate;
                    continue;
                };
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                for comp in target.components().rev() {
                    match comp {
                        Component::Normal(s) => todo.push(PathBuf::from(s)),
                        Component::ParentDir => todo.push(PathBuf::from("..")),
                        _ => {}
                    }
                }
            }
            _ => cur = candidate,
        }
    }
    root.join(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n";
    const GROUP: &str =
        "root:x:0:\napp:x:1000:\nwheel:x:10:app,other\naudio:x:29:app\nnogroup:x:65534:\n";

    fn r(spec: &str) -> Result<ResolvedUser, SandboxError> {
        resolve_user_in(spec, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn empty_spec_is_root() {
        let u = r("").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert_eq!(u.groups, vec![0]);
        assert_eq!(u.step_groups, Vec::<u32>::new());
    }

    #[test]
    fn step_groups_follow_buildkit_get_user() {
        const G: &str = "root:x:0:\nwheel:x:10:root,app\napp:x:1000:\n";
        let s = |spec: &str| {
            resolve_user_in(spec, Some(PASSWD), Some(G))
                .unwrap()
                .step_groups
        };
        // The empty USER and numeric pairs take BuildKit's fast path: no groups.
        assert_eq!(s(""), Vec::<u32>::new());
        assert_eq!(s("0:0"), Vec::<u32>::new());
        assert_eq!(s("1000:1000"), Vec::<u32>::new());
        // Named (or a lone uid) users get the groups listing them, not their own.
        assert_eq!(s("root"), vec![10]);
        assert_eq!(s("0"), vec![10]);
        assert_eq!(s("1000"), vec![10]);
        assert_eq!(s("app"), vec![10]);
        assert_eq!(s("app:app"), Vec::<u32>::new());
        assert_eq!(s("4000"), Vec::<u32>::new());
    }

    #[test]
    fn name_gets_primary_and_member_groups() {
        let u = r("app").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.groups, vec![1000, 10, 29]);
        assert_eq!(u.step_groups, vec![10, 29]);
        assert_eq!(u.home, "/home/app");
    }

    #[test]
    fn explicit_group_replaces_supplementary() {
        let u = r("app:wheel").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 10));
        assert_eq!(u.groups, vec![10]);
        assert_eq!(u.step_groups, Vec::<u32>::new());
        let u = r("1000:29").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 29));
        assert_eq!(u.step_groups, Vec::<u32>::new());
        let u = r("app:4242").unwrap();
        assert_eq!(u.gid, 4242);
    }

    #[test]
    fn names_to_ids_by_name_only() {
        assert_eq!(passwd_ids(PASSWD, "app"), Some((1000, 1000)));
        assert_eq!(passwd_ids(PASSWD, "1000"), None);
        assert_eq!(passwd_ids(PASSWD, "ghost"), None);
        assert_eq!(group_id(GROUP, "wheel"), Some(10));
        assert_eq!(group_id(GROUP, "10"), None);
    }

    #[test]
    fn numeric_uid_without_entry() {
        let u = r("4000").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4000, 0, "/"));
        let u = r("4000:4001").unwrap();
        assert_eq!((u.uid, u.gid), (4000, 4001));
    }

    #[test]
    fn numeric_uid_with_entry_uses_it() {
        let u = r("65534").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (65534, 65534, "/home"));
    }

    #[test]
    fn unknown_user_is_named() {
        let e = r("ghost").unwrap_err().to_string();
        assert!(e.contains("ghost"), "{e}");
        let e = r("app:nogrp").unwrap_err().to_string();
        assert!(e.contains("nogrp"), "{e}");
        let e = resolve_user_in("app", None, None).unwrap_err().to_string();
        assert!(e.contains("app") && e.contains("passwd"), "{e}");
    }

    #[test]
    fn resolve_in_root_stays_inside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("var/run")).unwrap();
        std::os::unix::fs::symlink("/var/run", root.join("run")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", root.join("var/esc")).unwrap();
        assert_eq!(
            resolve_in_root(root, Path::new("/run/secrets/x")),
            root.join("var/run/secrets/x")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/var/esc/passwd")),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(root, Path::new("/../../etc")),
            root.join("etc")
        );
    }
}

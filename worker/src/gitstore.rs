//! Git checkouts kept by commit, shared by git build contexts and
//! `ADD <git ref>` (`BuildKit`'s git source keeps one snapshot per commit,
//! subdirectory and `.git`, and resolves the ref with `ls-remote` every
//! time).
//!
//! A checkout is a snapshot of the snapshot store (kind `git`), so it is
//! build cache like any step result: `builder prune` and the collection after
//! a build remove it, `system df` counts it, a live process's lease keeps it.
//! `<root>/git-checkouts/<key>` names it: a small JSON record (the snapshot
//! and, for `system df`, what it is a checkout of) written to a temporary
//! name carrying the owner token and renamed into place; its mtime is the
//! checkout's last use. `key` is the blake3 hash of the normalised remote,
//! the commit, the subdirectory, whether `.git` is kept (with the ref it
//! names then) and whether submodules are checked out. A record whose
//! snapshot is gone is a miss (and `builder prune` removes it).

use std::path::{Path, PathBuf};

use rbuild_snapshotter::layout::StateLayout;
use rbuild_snapshotter::snapshots::{SnapshotId, SnapshotStore};
use rbuild_solver::ExecError;

use crate::error::err;
use crate::git::Checkout;

/// A checkout in the store.
#[derive(Debug, Clone)]
pub struct Stored {
    pub snapshot: SnapshotId,
    /// `false` when an earlier checkout of the same key was reused.
    pub fetched: bool,
}

/// What a record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record file.
    pub path: PathBuf,
    pub snapshot: SnapshotId,
    /// The remote with any password replaced.
    pub remote: String,
    pub commit: String,
    pub subdir: String,
    /// Seconds since the Unix epoch of the last use.
    pub last_used: u64,
}

impl Record {
    /// For `system df -v`: `git checkout REMOTE#COMMIT[:SUBDIR]`.
    pub fn description(&self) -> String {
        let sub = if self.subdir.is_empty() {
            String::new()
        } else {
            format!(":{}", self.subdir)
        };
        format!("git checkout {}#{}{sub}", self.remote, self.commit)
    }
}

/// `remote` with its scheme and host in lower case and trailing slashes
/// removed: the same repository written two ways shares its checkouts. A
/// user and password stay (checkouts fetched with other credentials are not
/// shared).
pub fn normalise_remote(remote: &str) -> String {
    let r = remote.trim_end_matches('/');
    if let Some(i) = r.find("://") {
        let (scheme, rest) = (&r[..i], &r[i + 3..]);
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (user, host) = match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        };
        return format!(
            "{}://{user}{}{path}",
            scheme.to_ascii_lowercase(),
            host.to_ascii_lowercase()
        );
    }
    // scp-style `user@host:path`.
    match r.split_once('@').and_then(|(u, rest)| {
        rest.split_once(':')
            .map(|(h, p)| format!("{u}@{}:{p}", h.to_ascii_lowercase()))
    }) {
        Some(s) => s,
        None => r.to_owned(),
    }
}

/// The key of a checkout (64 hex digits).
pub fn key(c: &Checkout<'_>) -> String {
    let mut h = blake3::Hasher::new_derive_key("rbuild git checkout key v1");
    let remote = normalise_remote(c.remote);
    // `.git` names the ref it was fetched as.
    let reference = if c.keep_git_dir { c.reference } else { "" };
    for part in [
        remote.as_str(),
        c.commit,
        c.subdir,
        if c.keep_git_dir { "git-dir" } else { "" },
        reference,
        if c.submodules { "submodules" } else { "" },
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads one record file; `None` when it is not one.
fn read_record(path: &Path) -> Option<Record> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let last_used = std::fs::metadata(path)
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Some(Record {
        path: path.to_path_buf(),
        snapshot: SnapshotId::parse(&s("snapshot")?)?,
        remote: s("remote").unwrap_or_default(),
        commit: s("commit").unwrap_or_default(),
        subdir: s("subdir").unwrap_or_default(),
        last_used,
    })
}

/// Every record under `state_root` (temporary files of writers left out);
/// a file that is no record is listed with `None`.
pub fn records(state_root: &Path) -> Vec<(PathBuf, Option<Record>)> {
    let dir = StateLayout::new(state_root).git_checkouts();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = rd
        .flatten()
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                !n.starts_with('.') && rbuild_snapshotter::lease::token_in(n).is_none()
            })
        })
        .map(|e| {
            let p = e.path();
            let r = read_record(&p);
            (p, r)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The stored checkout of `c`, or a new one: `fetch` is called (to report
/// it) just before a fetch, which [`crate::git::checkout`] makes into a new
/// snapshot, recorded under the key. The snapshot is held by this process's
/// lease either way.
pub fn checkout(
    snapshots: &SnapshotStore,
    state_root: &Path,
    c: &Checkout<'_>,
    fetch: impl FnOnce(),
) -> Result<Stored, ExecError> {
    let dir = StateLayout::new(state_root).git_checkouts();
    let path = dir.join(key(c));
    if let Some(rec) = read_record(&path) {
        // Held before it is looked at: a prune meanwhile either sees the
        // hold or has removed it (then it is fetched again).
        snapshots.hold(&rec.snapshot).map_err(err)?;
        if snapshots.exists(&rec.snapshot) {
            let _ = filetime::set_file_mtime(&path, filetime::FileTime::now());
            return Ok(Stored {
                snapshot: rec.snapshot,
                fetched: false,
            });
        }
    }
    fetch();
    let tmp = StateLayout::new(state_root).tmp();
    fs_err::create_dir_all(&tmp).map_err(err)?;
    let scratch = tempfile::Builder::new()
        .prefix(&snapshots.temp_prefix("git"))
        .tempdir_in(&tmp)
        .map_err(err)?;
    let active = snapshots.prepare(None, "git").map_err(err)?;
    let id = match crate::git::checkout(c, &active.upper, scratch.path()) {
        Ok(()) => snapshots.commit(active).map_err(err)?,
        Err(e) => {
            let _ = snapshots.abort(active);
            return Err(e);
        }
    };
    drop(scratch);
    let record = serde_json::json!({
        "snapshot": id.as_str(),
        "remote": crate::git::redact(c.remote),
        "commit": c.commit,
        "subdir": c.subdir,
        "keep_git_dir": c.keep_git_dir,
        "submodules": c.submodules,
        "created": now_unix(),
    });
    snapshots
        .lease()
        .write_file(&path, record.to_string().as_bytes())
        .map_err(err)?;
    Ok(Stored {
        snapshot: id,
        fetched: true,
    })
}

/// Removes the records whose snapshot is gone (and files that are no
/// record); returns the bytes freed.
pub fn remove_dangling(state_root: &Path, snapshots: &SnapshotStore) -> u64 {
    let mut freed = 0;
    for (p, r) in records(state_root) {
        if r.is_some_and(|r| snapshots.exists(&r.snapshot)) {
            continue;
        }
        let size = std::fs::symlink_metadata(&p).map_or(0, |m| m.len());
        if std::fs::remove_file(&p).is_ok() {
            freed += size;
        }
    }
    freed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_are_normalised_and_redacted() {
        assert_eq!(
            normalise_remote("HTTPS://Git.Example.COM/Org/Repo.git/"),
            "https://git.example.com/Org/Repo.git"
        );
        assert_eq!(
            normalise_remote("https://User:Tok@Host:8080/r.git"),
            "https://User:Tok@host:8080/r.git"
        );
        assert_eq!(
            normalise_remote("git@GitHub.com:o/r.git"),
            "git@github.com:o/r.git"
        );
        let redact = crate::git::redact;
        assert_eq!(
            redact("https://u:secret@h/r.git"),
            "https://u:xxxxx@h/r.git"
        );
        assert_eq!(redact("https://u@h/r.git"), "https://u@h/r.git");
        assert_eq!(redact("git@h:r.git"), "git@h:r.git");
    }

    #[test]
    fn the_key_names_everything_the_checkout_depends_on() {
        let base = Checkout {
            remote: "https://h/r.git",
            reference: "main",
            commit: "0123456789012345678901234567890123456789",
            subdir: "",
            keep_git_dir: false,
            submodules: true,
        };
        let k = key(&base);
        assert_eq!(
            k,
            key(&Checkout {
                remote: "https://H/r.git/",
                ..base.clone()
            })
        );
        // The ref only matters with `.git`.
        assert_eq!(
            k,
            key(&Checkout {
                reference: "v1",
                ..base.clone()
            })
        );
        for other in [
            Checkout {
                remote: "https://h/s.git",
                ..base.clone()
            },
            Checkout {
                commit: "1123456789012345678901234567890123456789",
                ..base.clone()
            },
            Checkout {
                subdir: "d",
                ..base.clone()
            },
            Checkout {
                keep_git_dir: true,
                ..base.clone()
            },
            Checkout {
                submodules: false,
                ..base.clone()
            },
        ] {
            assert_ne!(k, key(&other), "{other:?}");
        }
        let kept = Checkout {
            keep_git_dir: true,
            ..base.clone()
        };
        assert_ne!(
            key(&kept),
            key(&Checkout {
                reference: "v1",
                ..kept.clone()
            })
        );
    }
}

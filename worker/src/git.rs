//! Git sources through the system `git`, as `BuildKit`'s `source/git`: a ref
//! is resolved to its commit with `git ls-remote` (which is what keys an
//! `ADD <git ref>`), then that commit alone is fetched (`--depth=1`) into a
//! scratch repository and checked out, with its submodules (`git submodule
//! update --init --recursive --depth=1`, unless `?submodules=false`), without
//! `.git` unless asked for.
//!
//! Only the remotes the frontend's `gitref` accepts reach here (`http(s)`,
//! `git`, `ssh`, scp-style); git runs with no terminal prompt, no system
//! configuration, and the `file` and `ext` transports refused. Submodules are
//! fetched under the same rules (git hands `-c` settings down to the git
//! processes `git submodule` runs); a relative submodule URL (`../sub.git`)
//! is resolved against the remote, as git does.

use std::path::Path;
use std::process::{Command, Stdio};

use rbuild_solver::ExecError;

/// An I/O error as an [`ExecError`] (fs-err's messages name the path).
fn err(e: impl std::error::Error + Send + Sync + 'static) -> ExecError {
    ExecError::Other(Box::new(e))
}

/// What `git ls-remote` says a ref is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The object the ref points to: a commit, or an annotated tag object.
    pub object: String,
    /// The commit an annotated tag points to (`None` otherwise).
    pub tag_commit: Option<String>,
    /// The full ref that matched (`refs/heads/main`); the commit itself
    /// when the ref was a commit.
    pub full_ref: String,
}

impl Resolved {
    /// The commit to key and check out: an annotated tag's commit, unless
    /// `.git` is kept (then the tag object, as `BuildKit`).
    pub fn key_commit(&self, keep_git_dir: bool) -> &str {
        match &self.tag_commit {
            Some(c) if !keep_git_dir => c,
            _ => &self.object,
        }
    }
}

fn is_commit_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `remote` with the password of a `scheme://user:password@host` URL
/// replaced by `xxxxx` (`BuildKit`'s `RedactCredentials`).
pub fn redact(remote: &str) -> String {
    let Some(i) = remote.find("://") else {
        return remote.to_owned();
    };
    let rest = &remote[i + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return remote.to_owned();
    };
    match authority[..at].split_once(':') {
        Some((user, _)) => format!("{}{user}:xxxxx{}", &remote[..i + 3], &remote[i + 3 + at..]),
        None => remote.to_owned(),
    }
}

/// A `git` command with prompts, system configuration and local transports off.
fn git() -> Command {
    let mut c = Command::new("git");
    c.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROTOCOL_FROM_USER", "0")
        .env("LC_ALL", "C")
        .args([
            // A stalled server fails the fetch instead of hanging the build.
            "-c",
            "http.lowSpeedLimit=1",
            "-c",
            "http.lowSpeedTime=300",
            "-c",
            "protocol.file.allow=never",
            "-c",
            "protocol.ext.allow=never",
            "-c",
            "advice.detachedHead=false",
            "-c",
            "init.defaultBranch=master",
        ])
        .stdin(Stdio::null());
    if std::env::var_os("GIT_SSH_COMMAND").is_none() && std::env::var_os("GIT_SSH").is_none() {
        c.env(
            "GIT_SSH_COMMAND",
            "ssh -o BatchMode=yes -o ServerAliveInterval=30 -o ServerAliveCountMax=10",
        );
    }
    c
}

/// Runs `cmd`, returning its stdout; a failure is one line: `what` and the
/// last line git printed on stderr.
fn run(cmd: Command, what: &str) -> Result<String, ExecError> {
    run_as(cmd, what, false)
}

/// [`run`]; with `first_fatal`, the failure names the first `fatal:` line
/// (the cause, where `git submodule` repeats a retry and its summary after
/// it) when there is one.
fn run_as(mut cmd: Command, what: &str, first_fatal: bool) -> Result<String, ExecError> {
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ExecError::msg(format!("{what}: git is not installed (install git)"))
        } else {
            crate::error::context(format!("{what}: running git"), e)
        }
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut lines = stderr.lines().map(str::trim);
    let why = first_fatal
        .then(|| lines.clone().find(|l| l.starts_with("fatal:")))
        .flatten()
        .or_else(|| lines.rfind(|l| !l.is_empty() && !l.starts_with("hint:")))
        .unwrap_or("no output")
        .to_owned();
    Err(ExecError::msg(format!("{what}: {why}")))
}

/// Resolves `reference` of `remote` (`BuildKit`'s `resolveMetadataFromURL`):
/// a full commit is itself; otherwise `git ls-remote` matches it as
/// `refs/<ref>`, then as a branch, then as a tag (branches win, as with git
/// checkout); empty is the remote's default branch.
pub fn resolve(remote: &str, reference: &str) -> Result<Resolved, ExecError> {
    if is_commit_sha(reference) {
        return Ok(Resolved {
            object: reference.to_owned(),
            tag_commit: None,
            full_ref: reference.to_owned(),
        });
    }
    let mut reference = reference.to_owned();
    if reference.is_empty() {
        let mut c = git();
        c.args(["ls-remote", "--symref", "--", remote, "HEAD"]);
        let out = run(c, &format!("{remote}: failed to fetch remote"))?;
        reference = out
            .lines()
            .find_map(|l| {
                l.strip_prefix("ref: ")
                    .and_then(|r| r.split('\t').next())
                    .and_then(|r| r.strip_prefix("refs/heads/"))
                    .map(str::to_owned)
            })
            .ok_or_else(|| ExecError::msg(format!("{remote}: no default branch")))?;
    }
    let mut c = git();
    let peeled = format!("{reference}^{{}}");
    c.args(["ls-remote", "--", remote, &reference, &peeled]);
    let out = run(c, &format!("{remote}: failed to fetch remote"))?;
    let bare = reference.strip_prefix("refs/").unwrap_or(&reference);
    let partial = format!("refs/{bare}");
    let head = format!(
        "refs/heads/{}",
        reference.strip_prefix("refs/heads/").unwrap_or(&reference)
    );
    let tag = format!(
        "refs/tags/{}",
        reference.strip_prefix("refs/tags/").unwrap_or(&reference)
    );
    let peeled_tag = format!("{tag}^{{}}");
    let (mut sha, mut head_sha, mut tag_sha, mut peeled_sha) = (None, None, None, None);
    for line in out.lines() {
        let Some((s, r)) = line.split_once('\t') else {
            continue;
        };
        let s = Some(s.to_owned());
        if r == partial {
            sha = s;
        } else if r == head {
            head_sha = s;
        } else if r == tag {
            tag_sha = s;
        } else if r == peeled_tag {
            peeled_sha = s;
        }
    }
    let (object, full_ref, tag_commit) = if let Some(s) = sha {
        let tc = if partial.starts_with("refs/tags/") {
            peeled_sha
        } else {
            None
        };
        (s, partial, tc)
    } else if let Some(s) = head_sha {
        (s, head, None)
    } else if let Some(s) = tag_sha {
        (s, tag, peeled_sha)
    } else {
        return Err(ExecError::msg(format!(
            "{remote}: repository does not contain ref {reference}"
        )));
    };
    if !is_commit_sha(&object) {
        return Err(ExecError::msg(format!(
            "{remote}: invalid commit sha {object:?}"
        )));
    }
    Ok(Resolved {
        object,
        tag_commit,
        full_ref,
    })
}

/// What to check out.
#[derive(Debug, Clone)]
pub struct Checkout<'a> {
    pub remote: &'a str,
    /// As written (empty: the default branch).
    pub reference: &'a str,
    /// The resolved commit (or tag object with `keep_git_dir`), see
    /// [`Resolved::key_commit`].
    pub commit: &'a str,
    pub subdir: &'a str,
    pub keep_git_dir: bool,
    /// Check the submodules out too (`BuildKit`'s default).
    pub submodules: bool,
}

/// Fetches `c.commit` of `c.remote` and writes its tree (or `c.subdir`'s) into
/// `dest`, an empty directory, with the submodules when `c.submodules`, and
/// with `.git` when `c.keep_git_dir` and no subdirectory (otherwise no `.git`
/// at all, not even the submodules' `.git` files, which would point into the
/// scratch repository). `scratch` is an empty directory for the fetch,
/// removed by the caller.
pub fn checkout(c: &Checkout<'_>, dest: &Path, scratch: &Path) -> Result<(), ExecError> {
    let what = format!("{}#{}", c.remote, c.reference);
    if !is_commit_sha(c.commit) {
        return Err(ExecError::msg(format!(
            "{what}: {:?} is not a full commit id",
            c.commit
        )));
    }
    let keep_here = c.keep_git_dir && c.subdir.is_empty();
    let (git_dir, work_tree) = if keep_here {
        (dest.join(".git"), dest.to_path_buf())
    } else if c.subdir.is_empty() {
        (scratch.join("repo.git"), dest.to_path_buf())
    } else {
        (scratch.join("repo.git"), scratch.join("tree"))
    };
    fs_err::create_dir_all(&work_tree).map_err(err)?;
    let g = |args: &[&str]| {
        let mut cmd = git();
        cmd.arg("--git-dir").arg(&git_dir);
        cmd.arg("--work-tree").arg(&work_tree);
        cmd.args(args);
        cmd
    };
    let mut init = git();
    init.arg("init").arg("-q");
    if c.commit.len() == 64 {
        init.arg("--object-format=sha256");
    }
    if keep_here {
        init.arg(&work_tree);
    } else {
        init.arg("--bare").arg(&git_dir);
    }
    run(init, &format!("{what}: git init"))?;
    run(
        g(&["remote", "add", "origin", c.remote]),
        &format!("{what}: git remote add"),
    )?;
    // The ref (so the remote needs nothing special), or the commit itself
    // when given as one; checked against the resolved commit either way.
    let full_ref = if is_commit_sha(c.reference) {
        None
    } else {
        Some(resolve(c.remote, c.reference)?.full_ref)
    };
    let spec = match &full_ref {
        Some(r) if keep_here => format!("+{r}:{r}"),
        Some(r) => r.clone(),
        None => c.commit.to_owned(),
    };
    let fetched = run(
        g(&["fetch", "-q", "--depth=1", "--no-tags", "origin", &spec]),
        &format!("{what}: failed to fetch remote"),
    )
    .and_then(|_| {
        run(
            g(&["rev-parse", "FETCH_HEAD"]),
            &format!("{what}: git rev-parse"),
        )
    })
    .map(|s| s.trim().to_owned());
    let matches = |f: &str| {
        f == c.commit
            || run(g(&["rev-parse", &format!("{f}^{{commit}}")]), "rev-parse")
                .is_ok_and(|p| p.trim() == c.commit)
    };
    match fetched {
        Ok(f) if matches(&f) => {}
        first => {
            // The ref moved since it was resolved (or the commit is no tip):
            // ask for the commit itself, then for everything.
            let by_commit = run(
                g(&["fetch", "-q", "--depth=1", "--no-tags", "origin", c.commit]),
                &format!("{what}: failed to fetch remote"),
            );
            if by_commit.is_err() {
                let all = run(
                    g(&[
                        "fetch",
                        "-q",
                        "--tags",
                        "origin",
                        "+refs/heads/*:refs/remotes/origin/*",
                    ]),
                    &format!("{what}: failed to fetch remote"),
                );
                if let Err(e) = all {
                    return Err(first.err().unwrap_or(e));
                }
            }
            let have = format!("{}^{{object}}", c.commit);
            if run(g(&["cat-file", "-e", &have]), "cat-file").is_err() {
                return Err(ExecError::msg(format!(
                    "{what}: fetched ref does not match expected commit {} and the commit cannot be found in the repository",
                    c.commit
                )));
            }
        }
    }
    let tree = format!("{}^{{commit}}", c.commit);
    if keep_here {
        run(
            g(&["checkout", "-q", "--detach", &tree]),
            &format!("{what}: failed to checkout"),
        )?;
        let _ = fs_err::remove_file(git_dir.join("FETCH_HEAD"));
        run(
            g(&["reflog", "expire", "--all", "--expire=now"]),
            &format!("{what}: git reflog"),
        )?;
        // `.git` keeps no password (`BuildKit` sets the redacted URL too).
        let redacted = redact(c.remote);
        if redacted != c.remote {
            run(
                g(&["remote", "set-url", "origin", &redacted]),
                &format!("{what}: git remote set-url"),
            )?;
        }
    } else {
        run(
            g(&["checkout", "-q", "--no-overlay", &tree, "--", "."]),
            &format!("{what}: failed to checkout"),
        )?;
    }
    if c.submodules {
        let mut update = g(&[
            "submodule",
            "--quiet",
            "update",
            "--init",
            "--recursive",
            "--depth=1",
        ]);
        update.current_dir(&work_tree);
        run_as(
            update,
            &format!("{what}: failed to update submodules"),
            true,
        )?;
        if !keep_here && work_tree.join(".gitmodules").exists() {
            remove_git_entries(&work_tree).map_err(err)?;
        }
    }
    if !c.subdir.is_empty() {
        move_subdir(&work_tree, c.subdir, dest, &what)?;
    }
    Ok(())
}

/// Removes every `.git` under `dir` (the submodules' `.git` files: git
/// itself never checks a `.git` path out), not following symlinks.
fn remove_git_entries(dir: &Path) -> std::io::Result<()> {
    for entry in fs_err::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if entry.file_name() == ".git" {
            if kind.is_dir() {
                fs_err::remove_dir_all(entry.path())?;
            } else {
                fs_err::remove_file(entry.path())?;
            }
        } else if kind.is_dir() {
            remove_git_entries(&entry.path())?;
        }
    }
    Ok(())
}

/// Moves the contents of `tree/subdir` into `dest`; every component of
/// `subdir` must be a directory (no symlink leads out of the checkout).
fn move_subdir(tree: &Path, subdir: &str, dest: &Path, what: &str) -> Result<(), ExecError> {
    let mut dir = tree.to_path_buf();
    for part in subdir.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
        match fs_err::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ExecError::msg(format!(
                    "{what}: invalid subdir {subdir}: {part} is not a directory"
                )));
            }
            Err(_) => {
                return Err(ExecError::msg(format!(
                    "{what}: subdir {subdir} not found in the repository"
                )));
            }
        }
    }
    for entry in fs_err::read_dir(&dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        fs_err::rename(entry.path(), dest.join(entry.file_name())).map_err(err)?;
    }
    Ok(())
}

//! `ExecOp`: a process in the sandbox over an overlay of the rootfs chain.

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rbuild_sandbox::{CancelToken, Mount as SbMount, Output, ProcessSpec, Rootfs};
use rbuild_snapshotter::snapshots::ReadGuard;

use crate::error::WorkerError;
use rbuild_ops::{CachePerms, CacheSharing, ExecOp, MountKind, NetworkMode, SecurityMode};
use rbuild_solver::progress::{Stream, VertexLogger};
use rbuild_solver::{ExecContext, ExecError, ResultRef, StepLimit};

use crate::cachemounts::{CacheMountKey, dir_name, try_lock};
use crate::fsutil::{clean_rel, mkdir_all};
use crate::state::{Inner, Res, err, snap_ref};

const LAST_LINES: usize = 20;

/// Bytes of a step's output (stdout and stderr together) sent to progress
/// before the rest is clipped: `BuildKit`'s default (`BUILDKIT_STEP_LOG_MAX_SIZE`).
pub(crate) const DEFAULT_LOG_MAX: u64 = 2 << 20;

/// What is left of a step's output budget; shared by its two streams.
struct LogBudget {
    left: u64,
    limit: u64,
    clipped: bool,
}

impl LogBudget {
    /// How many bytes of a line of `len` bytes (plus its newline) progress
    /// gets; `None` once clipped.
    fn take(&mut self, len: usize) -> Option<usize> {
        if self.clipped {
            return None;
        }
        let need = len as u64 + 1;
        if need <= self.left {
            self.left -= need;
            return Some(len);
        }
        self.clipped = true;
        Some(usize::try_from(self.left).unwrap_or(len).min(len))
    }

    /// `BuildKit`'s note: `[output clipped, log limit 2MiB reached]`.
    fn note(&self) -> String {
        format!(
            "[output clipped, log limit {} reached]",
            binary_size(self.limit)
        )
    }
}

/// `2MiB`, `512KiB`, `1.5MiB`, `100B`, as `BuildKit`'s note shows sizes.
fn binary_size(b: u64) -> String {
    #[allow(clippy::cast_precision_loss)] // one decimal shown
    let mut v = b as f64;
    let mut unit = "B";
    for u in ["KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    let s = format!("{v:.1}");
    format!("{}{unit}", s.strip_suffix(".0").unwrap_or(&s))
}

/// Holds what a run's mounts need alive: read-only views, cache locks, copies.
#[derive(Default)]
struct Keep {
    guards: Vec<ReadGuard>,
    locks: Vec<nix::fcntl::Flock<std::fs::File>>,
    temps: Vec<tempfile::TempDir>,
    /// Agent sockets of ssh mounts, served for the run.
    ssh: Vec<rbuild_sshforward::Forwarder>,
}

fn join_selector(root: &Path, selector: &str) -> PathBuf {
    let sel = selector.trim_start_matches('/');
    if sel.is_empty() || sel == "." {
        root.to_path_buf()
    } else {
        rbuild_sandbox::user::resolve_in_root(root, Path::new(sel))
    }
}

fn input_path(
    inner: &Inner,
    inputs: &[ResultRef],
    index: usize,
    keep: &mut Keep,
) -> Result<PathBuf, ExecError> {
    let r = inputs
        .get(index)
        .ok_or_else(|| ExecError::msg(format!("mount input {index} does not exist")))?;
    match inner.resolve(r)? {
        Res::Context(dir) => Ok(dir),
        Res::Snap(id) => {
            let g = inner.snapshots.mount_ro(&id).map_err(err)?;
            let p = g.path().to_path_buf();
            keep.guards.push(g);
            Ok(p)
        }
    }
}

/// The directory of cache mount `key` (made when missing), which with
/// `from` starts as a copy of path `source` of that input (and is another
/// cache for each input result and path, as `BuildKit` keys it by the ref of
/// its base); see `crate::cachemounts`.
fn cache_dir(
    inner: &Inner,
    inputs: &[ResultRef],
    key: &CacheMountKey,
    sharing: CacheSharing,
    from: Option<usize>,
    source: &str,
    keep: &mut Keep,
) -> Result<PathBuf, ExecError> {
    let base = rbuild_snapshotter::layout::StateLayout::new(&inner.state_root).cache_mounts();
    fs_err::create_dir_all(&base).map_err(err)?;
    let from_ref = match from {
        Some(i) => Some(
            inputs
                .get(i)
                .ok_or_else(|| ExecError::msg(format!("mount input {i} does not exist")))?,
        ),
        None => None,
    };
    let name = dir_name(key, from_ref.map(|r| (r.as_str(), source)));
    let dir = match sharing {
        CacheSharing::Shared => base.join(&name),
        CacheSharing::Locked => {
            let l = try_lock(&base.join(format!("{name}.lock")), true)?;
            keep.locks.extend(l);
            base.join(&name)
        }
        CacheSharing::Private => {
            let mut n = 0;
            loop {
                let candidate = if n == 0 {
                    name.clone()
                } else {
                    format!("{name}.{n}")
                };
                if let Some(l) = try_lock(&base.join(format!("{candidate}.lock")), false)? {
                    keep.locks.push(l);
                    break base.join(candidate);
                }
                n += 1;
            }
        }
    };
    if !dir.exists() {
        // Made under a name of its own (two steps of one build, or two
        // builds, may make the same cache at once; the owner token in the
        // name lets the next command sweep it when this process is dead),
        // then renamed into place unless another got there first: the first
        // one made is the cache.
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{}{name}-", inner.snapshots.temp_prefix(".tmp")))
            .tempdir_in(&base)
            .map_err(err)?;
        let made = tmp.path().join("d");
        // With `from`, the input's `source` as it is (owner and mode kept);
        // a missing one is made with the perms (BuildKit's `llb.Mkdir` of
        // `/cache` on the stage, which leaves an existing one alone).
        // Without, an imported cache mount (`--cache-from
        // ...,cache-mounts=true`) as it was exported, else a new directory;
        // either way its top has the owner and mode of its key (a layer has
        // no entry for its top).
        let perms = if let Some(input) = from {
            let src = join_selector(&input_path(inner, inputs, input, keep)?, source);
            match std::fs::symlink_metadata(&src) {
                Ok(m) if m.is_dir() => {
                    rbuild_snapshotter::overlay::copy_lower_stack(&[src], &made).map_err(err)?;
                    None
                }
                Ok(_) => {
                    return Err(ExecError::msg(format!(
                        "cache mount source \"{source}\": not a directory"
                    )));
                }
                Err(_) if key.perms.is_some() => {
                    fs_err::create_dir(&made).map_err(err)?;
                    key.perms
                }
                Err(_) => {
                    return Err(ExecError::msg(format!(
                        "cache mount source \"{source}\": not found"
                    )));
                }
            }
        } else {
            if !crate::cachemounts::seed(inner, key, &made) {
                fs_err::create_dir(&made).map_err(err)?;
            }
            Some(key.perms.unwrap_or(CachePerms::new(0, 0, 0o755)))
        };
        if let Some(p) = perms {
            fs_err::set_permissions(&made, std::fs::Permissions::from_mode(p.mode)).map_err(err)?;
            nix::unistd::chown(&made, Some(p.uid.into()), Some(p.gid.into()))
                .map_err(|e| crate::error::context(format!("chown {}", made.display()), e))?;
        }
        match nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &made,
            nix::fcntl::AT_FDCWD,
            &dir,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) if dir.is_dir() => {}
            // A file system without RENAME_NOREPLACE: a plain rename, which
            // fails onto a directory another filled first.
            Err(nix::errno::Errno::EINVAL)
                if fs_err::rename(&made, &dir).is_ok() || dir.is_dir() => {}
            Err(e) => {
                return Err(crate::error::context(
                    format!("cannot create cache dir {}", dir.display()),
                    e,
                ));
            }
        }
    }
    // Without `from`, `source` is a directory of the cache that is mounted
    // (BuildKit mounts the selector of the cache's ref).
    if from.is_none() && !matches!(source.trim_start_matches('/'), "" | ".") {
        let sub = join_selector(&dir, source);
        if !sub.is_dir() {
            return Err(ExecError::msg(format!(
                "cache mount source \"{source}\": not found in cache {key}"
            )));
        }
        return Ok(sub);
    }
    Ok(dir)
}

/// The sandbox mounts of a RUN, and the environment entries of secrets mounted
/// as environment variables (`--mount=type=secret,env=NAME`).
fn mounts(
    inner: &Inner,
    op: &ExecOp,
    inputs: &[ResultRef],
    keep: &mut Keep,
    secret_env: &mut Vec<String>,
) -> Result<Vec<SbMount>, ExecError> {
    let mut out = Vec::new();
    for m in &op.mounts {
        let target = PathBuf::from(&m.target);
        match &m.kind {
            MountKind::Bind {
                input,
                selector,
                readonly,
            } => {
                let src = join_selector(&input_path(inner, inputs, *input, keep)?, selector);
                if !src.exists() {
                    return Err(ExecError::msg(format!(
                        "bind mount source \"/{}\": not found",
                        selector.trim_start_matches('/')
                    )));
                }
                if *readonly {
                    out.push(SbMount::bind(src, target));
                } else {
                    // Writes to a read-write bind are discarded (BuildKit):
                    // bind a scratch copy.
                    let t = tempfile::Builder::new()
                        .prefix(&inner.snapshots.temp_prefix("rwbind"))
                        .tempdir_in(inner.snapshots.mounts_dir())
                        .map_err(err)?;
                    let copy = t.path().join("d");
                    if src.is_dir() {
                        rbuild_snapshotter::overlay::copy_lower_stack(&[src], &copy)
                            .map_err(err)?;
                    } else {
                        fs_err::copy(&src, &copy).map_err(err)?;
                    }
                    keep.temps.push(t);
                    out.push(SbMount::Bind {
                        source: copy,
                        target,
                        readonly: false,
                    });
                }
            }
            MountKind::Cache {
                id,
                sharing,
                from,
                source,
                readonly,
                perms,
            } => {
                let key = CacheMountKey {
                    id: if id.is_empty() { &m.target } else { id }.clone(),
                    perms: *perms,
                };
                let dir = cache_dir(inner, inputs, &key, *sharing, *from, source, keep)?;
                if *readonly {
                    out.push(SbMount::bind(dir, target));
                } else {
                    out.push(SbMount::Cache {
                        source: dir,
                        target,
                    });
                }
            }
            MountKind::Tmpfs { size } => out.push(SbMount::Tmpfs {
                target,
                size: *size,
            }),
            MountKind::Secret {
                id,
                required,
                mode,
                uid,
                gid,
                env,
            } => match inner.secrets.get(id) {
                Some(data) => {
                    if let Some(name) = env {
                        secret_env.push(format!("{name}={}", String::from_utf8_lossy(data)));
                    }
                    // With only `env=`, the secret is not mounted as a file.
                    if !m.target.is_empty() {
                        out.push(SbMount::Secret {
                            target,
                            data: data.clone(),
                            uid: *uid,
                            gid: *gid,
                            mode: *mode,
                        });
                    }
                }
                None if *required => {
                    return Err(ExecError::msg(format!("secret {id}: not found")));
                }
                None => {}
            },
            MountKind::Ssh {
                id,
                required,
                mode,
                uid,
                gid,
            } => match inner.ssh.get(id) {
                Some(source) => {
                    // A socket of the step's own, outside its root; as a
                    // user (a user namespace maps only this user, as root)
                    // it stays this user's.
                    let owner = nix::unistd::geteuid().is_root().then_some((*uid, *gid));
                    let fw = rbuild_sshforward::Forwarder::start(
                        &inner.snapshots.mounts_dir(),
                        &inner.snapshots.temp_prefix("ssh"),
                        Arc::clone(source),
                        owner,
                        *mode,
                    )
                    .map_err(err)?;
                    out.push(SbMount::Bind {
                        source: fw.socket().to_path_buf(),
                        target,
                        readonly: false,
                    });
                    keep.ssh.push(fw);
                }
                None if *required => {
                    return Err(ExecError::msg(format!(
                        "no SSH key {id:?} forwarded from the client (pass --ssh {id}=SOCKET_OR_KEYFILE, or --ssh {id} for $SSH_AUTH_SOCK)"
                    )));
                }
                None => {}
            },
        }
    }
    Ok(out)
}

/// Creates the directories mount targets need (a directory target itself, a
/// file target's parent) in the step's snapshot before the run, so they stay
/// in the image as `BuildKit` leaves them; the sandbox then only creates (and
/// removes) file stubs.
fn stub_mount_dirs(
    inner: &Inner,
    active: &rbuild_snapshotter::snapshots::Active,
    copy: Option<&Path>,
    mounts: &[SbMount],
) -> Result<(), ExecError> {
    let mut dirs = Vec::new();
    for m in mounts {
        match m {
            SbMount::Bind { source, target, .. } => {
                if source.is_dir() {
                    dirs.push(target.clone());
                } else if let Some(p) = target.parent() {
                    dirs.push(p.to_path_buf());
                }
            }
            SbMount::Cache { target, .. } | SbMount::Tmpfs { target, .. } => {
                dirs.push(target.clone());
            }
            SbMount::Secret { target, .. } => {
                if let Some(p) = target.parent() {
                    dirs.push(p.to_path_buf());
                }
            }
        }
    }
    if dirs.is_empty() {
        return Ok(());
    }
    if let Some(root) = copy {
        // The copying snapshotter: the step's root is a plain directory.
        for d in dirs {
            let rel = clean_rel(&d.to_string_lossy())?;
            mkdir_all(root, &rel, None, 0o755)?;
        }
        return Ok(());
    }
    let t = tempfile::Builder::new()
        .prefix(&inner.snapshots.temp_prefix("stub"))
        .tempdir_in(inner.snapshots.mounts_dir())
        .map_err(err)?;
    let layout = rbuild_snapshotter::overlay::OverlayLayout {
        lower: active.lowers.clone(),
        upper: active.upper.clone(),
        work: active.work.clone(),
    };
    let mount = rbuild_snapshotter::overlay::mount_overlay(&layout, t.path()).map_err(err)?;
    for d in dirs {
        let rel = clean_rel(&d.to_string_lossy())?;
        mkdir_all(mount.target(), &rel, None, 0o755)?;
    }
    mount.unmount().map_err(err)?;
    Ok(())
}

/// Makes the mount points of mounts nested in a cache mount (`--mount=type=cache,
/// target=/c --mount=type=cache,target=/c/sub`) in the cache directory itself
/// before the run. Made by the sandbox, they would be removed after the run:
/// in a cache that steps running at the same time share, one step's removal
/// pulls the mount point from under another's nested mount. They stay in the
/// cache, as `BuildKit` leaves them.
fn nested_cache_mount_points(inner: &Inner, mounts: &[SbMount]) -> Result<(), ExecError> {
    let caches = rbuild_snapshotter::layout::StateLayout::new(&inner.state_root).cache_mounts();
    let target_of = |m: &SbMount| -> PathBuf {
        match m {
            SbMount::Bind { target, .. }
            | SbMount::Cache { target, .. }
            | SbMount::Tmpfs { target, .. }
            | SbMount::Secret { target, .. } => target.clone(),
        }
    };
    for (i, m) in mounts.iter().enumerate() {
        let t = target_of(m);
        let outer = mounts
            .iter()
            .enumerate()
            .filter(|&(j, o)| j != i && t.starts_with(target_of(o)) && t != target_of(o))
            .max_by_key(|(_, o)| target_of(o).components().count());
        let Some((_, o)) = outer else { continue };
        let source = match o {
            SbMount::Cache { source, .. } => source,
            SbMount::Bind { source, .. } if source.starts_with(&caches) => source,
            _ => continue,
        };
        let Ok(rel) = t.strip_prefix(target_of(o)) else {
            continue;
        };
        let is_dir = match m {
            SbMount::Bind { source, .. } => source.is_dir(),
            SbMount::Cache { .. } | SbMount::Tmpfs { .. } => true,
            SbMount::Secret { .. } => false,
        };
        if is_dir {
            mkdir_all(source, rel, None, 0o755)?;
        } else if let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) {
            let dir = mkdir_all(source, parent, None, 0o755)?;
            // Never through a symlink a step left in the cache.
            match fs_err::OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(dir.join(name))
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(e)),
            }
        }
    }
    Ok(())
}

/// The files the sandbox creates as mount points (`/etc/hosts`, `/etc/hostname`,
/// `/etc/resolv.conf`, the file targets of bind and secret mounts) that do not
/// exist in the step's parent chain: where each would land in the upper dir.
/// After the run those still empty are removed, as `BuildKit`'s mount-stub cleaner
/// does, so no stub reaches the snapshot, a layer or a later `COPY --from`.
fn file_stubs(lowers: &[PathBuf], mounts: &[SbMount]) -> Result<Vec<PathBuf>, ExecError> {
    let mut targets: Vec<PathBuf> = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"]
        .iter()
        .map(PathBuf::from)
        .collect();
    for m in mounts {
        match m {
            SbMount::Bind { source, target, .. } if !source.is_dir() => {
                targets.push(target.clone());
            }
            SbMount::Secret { target, .. } => targets.push(target.clone()),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for t in targets {
        let found = rbuild_snapshotter::lookup::lookup(lowers, &t).map_err(err)?;
        if found.meta.is_none() && !found.rel.as_os_str().is_empty() {
            out.push(found.rel);
        }
    }
    Ok(out)
}

/// Removes the stubs `file_stubs` listed from `upper` (only empty regular files),
/// then each parent directory that overlayfs copied up only to hold a stub: one
/// now empty, not opaque, with the mode and owner of the directory the lowers
/// show there (only its mtime changed, by the stub coming and going). So a RUN
/// that writes nothing leaves an empty upper dir, as it did before the stubs.
fn remove_file_stubs(upper: &Path, lowers: &[PathBuf], stubs: &[PathBuf]) -> Result<(), ExecError> {
    use std::os::unix::fs::MetadataExt;
    for rel in stubs {
        let p = upper.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_file() && m.len() == 0 => {
                fs_err::remove_file(&p).map_err(err)?;
            }
            _ => continue,
        }
        let mut dir = rel.parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            let up = upper.join(d);
            let Ok(um) = std::fs::symlink_metadata(&up) else {
                break;
            };
            let empty = um.is_dir() && fs_err::read_dir(&up).map_err(err)?.next().is_none();
            let below = rbuild_snapshotter::lookup::lookup(lowers, d).map_err(err)?;
            let same = below.rel == d
                && below.meta.as_ref().is_some_and(|lm| {
                    lm.is_dir()
                        && lm.mode() == um.mode()
                        && lm.uid() == um.uid()
                        && lm.gid() == um.gid()
                });
            if !(empty && same && !has_own_xattrs(&up)) {
                break;
            }
            fs_err::remove_dir(&up).map_err(err)?;
            dir = d.parent();
        }
    }
    Ok(())
}

/// Whether an upper directory carries xattrs of its own beyond overlayfs's
/// bookkeeping (`trusted.overlay.*`, `user.overlay.*`): an opaque marker, or
/// attributes a command set, make it a real change.
fn has_own_xattrs(dir: &Path) -> bool {
    match rbuild_snapshotter::diff::read_xattrs(dir) {
        Ok(x) => x.iter().any(|(k, _)| {
            k == "trusted.overlay.opaque"
                || k == "user.overlay.opaque"
                || !(k.starts_with("trusted.overlay.") || k.starts_with("user.overlay."))
        }),
        Err(_) => true,
    }
}

/// One `syncfs(2)` per file system holding one of `dirs`: what the step's
/// programs were told was synced (their `fsync` & co returned at once) is on
/// disk before the step's snapshot is committed.
fn sync_filesystems(dirs: &[PathBuf]) -> Result<(), ExecError> {
    use std::os::unix::fs::MetadataExt;
    let mut done = Vec::new();
    for d in dirs {
        let f = fs_err::File::open(d).map_err(err)?;
        let dev = f.metadata().map_err(err)?.dev();
        if done.contains(&dev) {
            continue;
        }
        nix::unistd::syncfs(&f).map_err(|e| {
            crate::error::context(format!("syncing the file system of {}", d.display()), e)
        })?;
        done.push(dev);
    }
    Ok(())
}

/// Output lines to progress (until the step's budget is spent: then a part
/// of the line and the clipping note) and to the last lines an error shows
/// (always).
fn sink(
    logger: VertexLogger,
    stream: Stream,
    last: Arc<Mutex<VecDeque<String>>>,
    budget: Arc<Mutex<LogBudget>>,
) -> Output {
    Output::lines(move |line: &[u8]| {
        let s = String::from_utf8_lossy(line).into_owned();
        {
            let mut l = last.lock().expect("last lines");
            if l.len() == LAST_LINES {
                l.pop_front();
            }
            l.push_back(s.clone());
        }
        let mut b = budget.lock().expect("log budget");
        match b.take(line.len()) {
            Some(n) if n == line.len() => logger.log(stream, s),
            Some(n) => {
                if n > 0 {
                    logger.log(stream, String::from_utf8_lossy(&line[..n]).into_owned());
                }
                logger.log(stream, b.note());
            }
            None => {}
        }
    })
}

pub(crate) fn run(
    inner: &Inner,
    op: &ExecOp,
    inputs: &[ResultRef],
    ctx: &ExecContext,
    cancel: CancelToken,
) -> Result<ResultRef, ExecError> {
    let rootfs = inputs
        .get(op.rootfs)
        .ok_or_else(|| ExecError::msg("exec rootfs input does not exist"))?;
    let Res::Snap(parent) = inner.resolve(rootfs)? else {
        return Err(ExecError::msg(
            "a build context cannot be a RUN root filesystem",
        ));
    };
    let active = inner
        .snapshots
        .prepare(Some(&parent), "exec")
        .map_err(err)?;
    let mut keep = Keep::default();
    let result = (|| {
        let mut secret_env = Vec::new();
        let mounts = mounts(inner, op, inputs, &mut keep, &mut secret_env)?;
        let stubs = file_stubs(&active.lowers, &mounts)?;
        // The copying snapshotter: the step runs in a full copy of its
        // parent, whose changes are moved into the upper dir after it.
        let copy = if inner.snapshots.copies().map_err(err)? {
            let t = inner.snapshots.materialize(&active).map_err(err)?;
            let root = t.path().join("root");
            keep.temps.push(t);
            Some(root)
        } else {
            None
        };
        stub_mount_dirs(inner, &active, copy.as_deref(), &mounts)?;
        nested_cache_mount_points(inner, &mounts)?;
        let last = Arc::new(Mutex::new(VecDeque::new()));
        let mut spec = ProcessSpec::new(op.args.clone());
        spec.env.clone_from(&op.env);
        spec.env.extend(op.proxy_env.iter().cloned());
        spec.env.extend(secret_env);
        spec.cwd.clone_from(&op.cwd);
        spec.user.clone_from(&op.user);
        spec.step_groups = true;
        if let Some(h) = &op.hostname {
            spec.hostname.clone_from(h);
        }
        spec.extra_hosts.clone_from(&op.extra_hosts);
        spec.shm_size = op.shm_size;
        spec.rlimits = op
            .ulimits
            .iter()
            .map(|u| rbuild_sandbox::Rlimit {
                name: u.name.clone(),
                soft: u64::try_from(u.soft).ok(),
                hard: u64::try_from(u.hard).ok(),
            })
            .collect();
        spec.network = match op.network {
            // A network namespace of the step's own (Docker's default bridge).
            NetworkMode::Sandbox => rbuild_sandbox::NetworkMode::Private,
            NetworkMode::Host => rbuild_sandbox::NetworkMode::Host,
            NetworkMode::None => rbuild_sandbox::NetworkMode::None,
        };
        spec.security = match op.security {
            SecurityMode::Sandbox => rbuild_sandbox::SecurityMode::Sandbox,
            SecurityMode::Insecure => rbuild_sandbox::SecurityMode::Insecure,
        };
        // What the step may write that outlives it: synced once below unless
        // the programs sync themselves (`--sync=full`). Read-write binds are
        // scratch copies thrown away after the step: not synced.
        spec.skip_sync = !inner.full_sync;
        let caches: Vec<PathBuf> = mounts
            .iter()
            .filter_map(|m| match m {
                SbMount::Cache { source, .. } => Some(source.clone()),
                _ => None,
            })
            .collect();
        spec.mounts = mounts;
        spec.cancel = Some(cancel);
        // The sandbox's mount point, under a directory swept once this
        // process is dead (not in /tmp, where a killed build's would stay).
        let scratch = tempfile::Builder::new()
            .prefix(&inner.snapshots.temp_prefix("sandbox"))
            .tempdir_in(inner.snapshots.mounts_dir())
            .map_err(err)?;
        spec.scratch_dir = Some(scratch.path().to_path_buf());
        keep.temps.push(scratch);
        spec.limits = inner.limits.clone();
        spec.timeout = inner.step_timeout;
        let budget = Arc::new(Mutex::new(LogBudget {
            left: inner.log_max,
            limit: inner.log_max,
            clipped: false,
        }));
        spec.stdout = sink(
            ctx.logger.clone(),
            Stream::Stdout,
            Arc::clone(&last),
            Arc::clone(&budget),
        );
        spec.stderr = sink(
            ctx.logger.clone(),
            Stream::Stderr,
            Arc::clone(&last),
            budget,
        );
        let last_lines =
            || -> Vec<String> { last.lock().expect("last lines").iter().cloned().collect() };
        let rootfs = match &copy {
            Some(root) => Rootfs::Dir(root.clone()),
            None => Rootfs::Overlay {
                lower: active.lowers.clone(),
                upper: active.upper.clone(),
                work: active.work.clone(),
            },
        };
        let limit_exceeded = |limit| ExecError::LimitExceeded {
            command: op.args.clone(),
            limit,
            last_lines: last_lines(),
        };
        let status = rbuild_sandbox::run(&rootfs, spec).map_err(|e| match e {
            rbuild_sandbox::SandboxError::TimedOut(d) => limit_exceeded(StepLimit::Timeout(d)),
            e => WorkerError::Sandbox(e).into(),
        })?;
        if let (Some(root), true) = (&copy, status.success()) {
            inner.snapshots.capture(&active, root).map_err(err)?;
        }
        remove_file_stubs(&active.upper, &active.lowers, &stubs)?;
        if !inner.full_sync {
            // The cache mounts keep what even a failed step wrote.
            let mut dirs = caches;
            if status.success() {
                dirs.push(active.upper.clone());
            }
            sync_filesystems(&dirs)?;
        }
        if !status.success() {
            return Err(match status.limit {
                Some(rbuild_sandbox::LimitHit::OutOfMemory) => {
                    limit_exceeded(StepLimit::Memory(inner.limits.memory.unwrap_or_default()))
                }
                Some(rbuild_sandbox::LimitHit::Pids) => {
                    limit_exceeded(StepLimit::Pids(inner.limits.pids.unwrap_or_default()))
                }
                None => ExecError::ProcessFailed {
                    command: op.args.clone(),
                    code: status.code,
                    last_lines: last_lines(),
                    seccomp: op.security == SecurityMode::Sandbox,
                },
            });
        }
        Ok(())
    })();
    drop(keep);
    match result {
        Ok(()) => Ok(snap_ref(&inner.snapshots.commit(active).map_err(err)?)),
        Err(e) => {
            let _ = inner.snapshots.abort(active);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_budget_clips_once_with_buildkits_note() {
        let mut b = LogBudget {
            left: 10,
            limit: 10,
            clipped: false,
        };
        assert_eq!(b.take(4), Some(4)); // "abcd\n": 5 left
        assert_eq!(b.take(4), Some(4)); // 0 left
        assert_eq!(b.take(3), Some(0)); // clipped here: nothing of it fits
        assert_eq!(b.take(1), None);
        assert_eq!(b.note(), "[output clipped, log limit 10B reached]");
        let mut b = LogBudget {
            left: 6,
            limit: 6,
            clipped: false,
        };
        assert_eq!(b.take(10), Some(6));
        assert!(b.clipped);
    }

    #[test]
    fn sizes_in_the_note_read_like_buildkits() {
        assert_eq!(binary_size(DEFAULT_LOG_MAX), "2MiB");
        assert_eq!(binary_size(512 << 10), "512KiB");
        assert_eq!(binary_size(1536 << 10), "1.5MiB");
        assert_eq!(binary_size(100), "100B");
    }
}

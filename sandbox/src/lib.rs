//! rbuild-sandbox: runs one process isolated in Linux namespaces over a root
//! directory, the way runc runs a RUN step for `BuildKit`.
//!
//! ```no_run
//! use rbuild_sandbox::{run, ProcessSpec, Rootfs, Output};
//! let mut spec = ProcessSpec::new(["/bin/sh", "-c", "echo hi"]);
//! spec.stdout = Output::lines(|line| println!("out: {}", String::from_utf8_lossy(line)));
//! let status = run(&Rootfs::Dir("/path/to/rootfs".into()), spec).unwrap();
//! assert_eq!(status.code, 0);
//! ```
//!
//! How a run goes: the caller's thread forks (raw `clone`) a child in new mount,
//! pid, uts, ipc, cgroup and (for [`NetworkMode::None`]) network namespaces, plus a
//! user namespace mapping the caller to root when not running as root. That child
//! is pid 1 of the new pid namespace, the sandbox's init: it makes every mount
//! private, binds (or overlay-mounts) the rootfs `nodev`, mounts `/proc`, a
//! minimal `/dev` (binds of the allowed host devices on a `nodev` tmpfs) and
//! `/sys`, `pivot_root`s into it, bind-mounts generated `/etc/hosts`,
//! `/etc/hostname` and `/etc/resolv.conf` and the requested mounts (`nodev`
//! too), sets the hostname and brings `lo` up, then forks the main process, which sets its user,
//! groups and capabilities, installs the seccomp filter (module `seccomp`, compiled
//! in the parent) and execs. Init reaps every process until the main one
//! ends, kills the rest, unmounts and removes the mount points it created, reports
//! the status and exits; the kernel then kills anything left in the pid namespace
//! and drops the mount namespace with all its mounts. On timeout or cancel the
//! caller kills init, which takes every process of the step with it.
//!
//! Unsafe code: this crate is the one place of the workspace allowed to hold it
//! (`unsafe_code = "allow"` in its Cargo.toml lints); all of it lives in
//! [`sys`] (raw syscalls), each block commented. The code between the fork and
//! exec (module `child`) only calls those allocation-free wrappers on data the
//! parent prepared.

mod cgroup;
mod child;
mod net;
pub mod rootless;
mod seccomp;
mod sys;
pub mod user;

use std::ffi::{CStr, CString};
use std::fmt;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::stat::Mode;

use crate::cgroup::StepCgroup;
pub use crate::cgroup::{LimitHit, Limits};
use crate::child::{Op, Plan};
pub use crate::user::{ResolvedUser, resolve_user};

/// Network of the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// A new network namespace with only `lo`, up.
    None,
    /// The host's network namespace.
    #[default]
    Host,
    /// A new network namespace of its own with `lo` and outbound access through a
    /// user-mode network helper, `pasta` (package `passt`) or else `slirp4netns`,
    /// whichever is on `PATH`: Docker's default bridge, without a daemon. The
    /// host's loopback services are out of reach (see the `net` module).
    Private,
}

/// `RUN --security=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityMode {
    /// Docker's default capability set for root, `no_new_privs`, masked /proc
    /// paths, and only Docker's default devices can be opened (`/dev/null`,
    /// `zero`, `full`, `random`, `urandom`, `tty`, the ptys): every other mount is
    /// `nodev`, so device nodes can be made but not opened. Docker's default
    /// seccomp profile (unless [`ProcessSpec::seccomp`] is off).
    #[default]
    Sandbox,
    /// Every capability kept, nothing masked, any device node can be opened
    /// (`--security=insecure`, as `docker run --privileged`; `/dev` still holds
    /// only the default devices). No seccomp profile.
    Insecure,
}

/// A mount inside the sandbox (RUN `--mount`). Targets are absolute paths inside
/// the rootfs; missing mount points are created for the run and removed after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// Bind a host file or directory (recursively); read-only unless `readonly` is
    /// false.
    Bind {
        source: PathBuf,
        target: PathBuf,
        readonly: bool,
    },
    /// A cache directory (already chosen, locked and created with its
    /// uid/gid/mode by the caller), bound read-write.
    Cache { source: PathBuf, target: PathBuf },
    /// A fresh tmpfs (mode 1777), `size` in bytes.
    Tmpfs { target: PathBuf, size: Option<u64> },
    /// A secret file, read-only, owned by `uid:gid` with `mode`. The bytes only
    /// live in a private temporary file outside the rootfs for the run.
    Secret {
        target: PathBuf,
        data: Vec<u8>,
        uid: u32,
        gid: u32,
        mode: u32,
    },
}

impl Mount {
    /// A read-only bind mount.
    pub fn bind(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Mount {
        Mount::Bind {
            source: source.into(),
            target: target.into(),
            readonly: true,
        }
    }

    /// A secret at `/run/secrets/ID`, mode 0400, owned by root.
    pub fn secret(id: &str, data: impl Into<Vec<u8>>) -> Mount {
        Mount::Secret {
            target: Path::new("/run/secrets").join(id),
            data: data.into(),
            uid: 0,
            gid: 0,
            mode: 0o400,
        }
    }

    fn target(&self) -> &Path {
        match self {
            Mount::Bind { target, .. }
            | Mount::Cache { target, .. }
            | Mount::Tmpfs { target, .. }
            | Mount::Secret { target, .. } => target,
        }
    }
}

/// Receives each line of output (without its `\n`) as soon as it is complete; a
/// last unterminated line is delivered at the end.
pub type LineSink = Box<dyn FnMut(&[u8]) + Send>;

/// Where the process's stdout or stderr goes.
#[derive(Default)]
pub enum Output {
    /// `/dev/null`.
    #[default]
    Null,
    /// The caller's own fd 1 / fd 2 (for `rbuild run`).
    Inherit,
    /// Streamed line by line to a callback.
    Lines(LineSink),
}

impl Output {
    pub fn lines(f: impl FnMut(&[u8]) + Send + 'static) -> Output {
        Output::Lines(Box::new(f))
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Output::Null => "Null",
            Output::Inherit => "Inherit",
            Output::Lines(_) => "Lines",
        })
    }
}

/// The process's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Input {
    #[default]
    Null,
    /// The caller's fd 0.
    Inherit,
}

/// Cancels a running sandbox from another thread (SIGINT/SIGTERM handling): every
/// process of the step is killed and [`run`] returns [`SandboxError::Cancelled`].
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What to run and how.
#[derive(Debug)]
#[allow(clippy::struct_excessive_bools)] // independent switches of one run, not a state machine
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the `PATH` of `env` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=value` entries. `PATH` defaults to Docker's default path and `HOME`
    /// to the user's home from the image's passwd when absent.
    pub env: Vec<String>,
    /// Working directory inside; created (owned by the user) when missing.
    pub cwd: String,
    /// `USER` string: `name`, `name:group`, `uid`, `uid:gid`; empty = root.
    pub user: String,
    pub hostname: String,
    pub network: NetworkMode,
    pub security: SecurityMode,
    pub mounts: Vec<Mount>,
    /// Kill the step after this long ([`SandboxError::TimedOut`]).
    pub timeout: Option<Duration>,
    /// Memory, CPU and pids limits: the run gets a cgroup of its own (see
    /// [`Limits`]); none set, no cgroup is touched.
    pub limits: Limits,
    pub cancel: Option<CancelToken>,
    pub stdin: Input,
    /// Give the process a pseudo-terminal (`rbuild run -t`), allocated in the
    /// sandbox's own devpts and made its controlling terminal. The caller's stdin
    /// (when `stdin` is [`Input::Inherit`]) is relayed to it and its output to the
    /// caller's stdout; `stdout`/`stderr` are then unused. The caller's terminal, if
    /// stdin is one, is put in raw mode for the run and its window size copied.
    pub terminal: bool,
    pub stdout: Output,
    pub stderr: Output,
    /// Where to make the temporary mount point of a [`Rootfs::Overlay`]
    /// (default: the system's temporary directory). A caller that sweeps what
    /// a killed process left gives a directory of its own here.
    pub scratch_dir: Option<PathBuf>,
    /// Docker's default seccomp profile for [`SecurityMode::Sandbox`] (the
    /// default; `false` is `--security-opt seccomp=unconfined`).
    /// [`SecurityMode::Insecure`] never has it.
    pub seccomp: bool,
    /// `fsync`, `fdatasync`, `sync_file_range`, `syncfs` and `sync` return 0
    /// without syncing (a seccomp rule, in every security mode), for a caller
    /// that makes the result durable itself (one `syncfs` when it commits).
    pub skip_sync: bool,
    /// `(name, ip)` lines added to the generated `/etc/hosts` (`--add-host`).
    pub extra_hosts: Vec<(String, String)>,
    /// Bytes of the `/dev/shm` tmpfs (default 64 MiB, as docker's).
    pub shm_size: Option<u64>,
    /// Resource limits set on the process before exec (`--ulimit`).
    pub rlimits: Vec<Rlimit>,
    /// Mount the root filesystem read-only (`rbuild run --read-only`).
    pub readonly_rootfs: bool,
    /// Supplementary groups as `BuildKit` gives a build step
    /// ([`ResolvedUser::step_groups`]) instead of as `docker run` does.
    pub step_groups: bool,
}

/// A resource limit (`setrlimit`) by docker's name of it, `None` for
/// unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    pub name: String,
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// The `--ulimit` names docker knows and their `RLIMIT_*` resources.
const RLIMITS: &[(&str, libc::__rlimit_resource_t)] = &[
    ("core", libc::RLIMIT_CORE),
    ("cpu", libc::RLIMIT_CPU),
    ("data", libc::RLIMIT_DATA),
    ("fsize", libc::RLIMIT_FSIZE),
    ("locks", libc::RLIMIT_LOCKS),
    ("memlock", libc::RLIMIT_MEMLOCK),
    ("msgqueue", libc::RLIMIT_MSGQUEUE),
    ("nice", libc::RLIMIT_NICE),
    ("nofile", libc::RLIMIT_NOFILE),
    ("nproc", libc::RLIMIT_NPROC),
    ("rss", libc::RLIMIT_RSS),
    ("rtprio", libc::RLIMIT_RTPRIO),
    ("rttime", libc::RLIMIT_RTTIME),
    ("sigpending", libc::RLIMIT_SIGPENDING),
    ("stack", libc::RLIMIT_STACK),
];

/// Whether `name` is a resource limit `--ulimit` takes.
pub fn is_rlimit_name(name: &str) -> bool {
    RLIMITS.iter().any(|(n, _)| *n == name)
}

impl ProcessSpec {
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ProcessSpec {
            args: args.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: "/".into(),
            user: String::new(),
            hostname: "rbuild".into(),
            network: NetworkMode::Host,
            security: SecurityMode::Sandbox,
            mounts: Vec::new(),
            timeout: None,
            limits: Limits::default(),
            cancel: None,
            stdin: Input::Null,
            terminal: false,
            stdout: Output::Null,
            stderr: Output::Null,
            scratch_dir: None,
            seccomp: true,
            skip_sync: false,
            extra_hosts: Vec::new(),
            shm_size: None,
            rlimits: Vec::new(),
            readonly_rootfs: false,
            step_groups: false,
        }
    }
}

/// The root filesystem of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rootfs {
    /// A directory prepared by the caller (a plain directory, or an overlay the
    /// snapshotter mounted). Writes go to it.
    Dir(PathBuf),
    /// An overlay the sandbox mounts itself, inside its own mount namespace (so it
    /// vanishes with the run, and works in a user namespace where the kernel allows
    /// it). `lower` is top-most first, as in overlayfs's `lowerdir`.
    Overlay {
        lower: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
}

/// How the main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, or 128+n when killed by signal n (like a shell's `$?`).
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// A limit of [`ProcessSpec::limits`] the run hit (set only when the
    /// process failed): a process was OOM-killed, or a fork was refused.
    pub limit: Option<LimitHit>,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    fn from_wait(status: i32) -> Self {
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            ExitStatus {
                code: 128 + sig,
                signal: Some(sig),
                limit: None,
            }
        } else {
            ExitStatus {
                code: libc::WEXITSTATUS(status),
                signal: None,
                limit: None,
            }
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.signal {
            Some(s) => write!(f, "killed by signal {s} (exit code {})", self.code)?,
            None => write!(f, "exit code {}", self.code)?,
        }
        match self.limit {
            Some(LimitHit::OutOfMemory) => f.write_str("; out of memory"),
            Some(LimitHit::Pids) => f.write_str("; pids limit reached"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("invalid process spec: {0}")]
    InvalidSpec(String),
    #[error("unable to find user {user}: {reason}")]
    UnknownUser { user: String, reason: String },
    #[error("{0}")]
    UserNamespace(String),
    #[error("{what}: {source}")]
    Sys {
        what: String,
        source: nix::errno::Errno,
    },
    #[error("sandbox setup failed: {message}")]
    Setup { message: String },
    /// The step's own network could not be set up (no helper, or it failed).
    #[error("{0}")]
    Network(String),
    #[error("cannot run {command:?}: {}", exec_reason(*errno))]
    Exec {
        command: String,
        errno: nix::errno::Errno,
    },
    #[error("timed out after {0:?}; every process of the step was killed")]
    TimedOut(Duration),
    /// A resource limit could not be applied (no cgroup, not writable, a
    /// value the kernel refuses).
    #[error("cannot apply resource limits: {0}")]
    Cgroup(String),
    #[error("cancelled; every process of the step was killed")]
    Cancelled,
}

fn exec_reason(e: nix::errno::Errno) -> String {
    match e {
        nix::errno::Errno::ENOENT => "executable file not found in $PATH".into(),
        e => e.desc().to_string(),
    }
}

impl SandboxError {
    /// The exit code a shell (and `docker run`) gives this failure: 127 for a
    /// command not found, 126 for one that cannot be executed, 125 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            SandboxError::Exec { errno, .. } if *errno == nix::errno::Errno::ENOENT => 127,
            SandboxError::Exec { .. } => 126,
            SandboxError::TimedOut(_) | SandboxError::Cancelled => 137,
            _ => 125,
        }
    }
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Sys { what, source }
}

/// `PATH` when the process is given none. The same value as `rbuild_oci::DEFAULT_PATH`
/// (the image config's default), kept here because the sandbox depends on no rbuild
/// crate (change both together).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default capability set (moby `oci/caps/defaults.go`).
pub const DEFAULT_CAPS: &[u32] = &[
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    18, // SYS_CHROOT
    27, // MKNOD
    29, // AUDIT_WRITE
    31, // SETFCAP
];

const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn cstr(b: impl AsRef<[u8]>, what: &str) -> Result<CString, SandboxError> {
    CString::new(b.as_ref())
        .map_err(|_| SandboxError::InvalidSpec(format!("{what} contains a NUL byte")))
}

fn cpath(p: &Path) -> Result<CString, SandboxError> {
    cstr(p.as_os_str().as_bytes(), &format!("path {}", p.display()))
}

/// Whether this process can create the sandbox's namespaces: root, or a user
/// namespace where the kernel allows unprivileged ones. The error says what is
/// missing.
pub fn check_support() -> Result<(), SandboxError> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Err(SandboxError::UserNamespace(
            "running as non-root needs unprivileged user namespaces, disabled by \
             kernel.unprivileged_userns_clone=0; run as root or enable it"
                .into(),
        ));
    }
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Err(SandboxError::UserNamespace(
            "running as non-root needs user namespaces, disabled by \
             user.max_user_namespaces=0; run as root or raise it"
                .into(),
        ));
    }
    Ok(())
}

/// Whether `limits` can be applied here: makes a cgroup with them and removes
/// it (nothing when no limit is set). The error says what is missing.
pub fn check_limits(limits: &Limits) -> Result<(), SandboxError> {
    StepCgroup::create(limits).map(drop)
}

/// Reads a file of the image: in the rootfs directory, or through the overlay's
/// layers (upper first) when the overlay is not mounted on this side.
fn read_image_file(rootfs: &Rootfs, path: &str) -> Result<Option<Vec<u8>>, SandboxError> {
    let dirs: Vec<&Path> = match rootfs {
        Rootfs::Dir(d) => vec![d],
        Rootfs::Overlay { lower, upper, .. } => std::iter::once(upper.as_path())
            .chain(lower.iter().map(PathBuf::as_path))
            .collect(),
    };
    for d in dirs {
        let p = user::resolve_in_root(d, Path::new(path));
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() => return Ok(Some(fs_err::read(&p)?)),
            Ok(_) => return Ok(None), // whiteout (char device) or not a file
            Err(_) => {}
        }
    }
    Ok(None)
}

/// /proc, /dev and /sys are mounted before the pivot, through host paths: refuse
/// an image where they are anything but directories (a symlink would be followed
/// on the host side).
fn check_mount_dirs(rootfs: &Rootfs) -> Result<(), SandboxError> {
    let dirs: Vec<&Path> = match rootfs {
        Rootfs::Dir(d) => vec![d],
        Rootfs::Overlay { lower, upper, .. } => std::iter::once(upper.as_path())
            .chain(lower.iter().map(PathBuf::as_path))
            .collect(),
    };
    for name in ["proc", "dev", "sys"] {
        // The top-most layer that has the name decides.
        if let Some(m) = dirs
            .iter()
            .find_map(|d| std::fs::symlink_metadata(d.join(name)).ok())
            && !m.is_dir()
            && !(m.file_type().is_char_device() && m.rdev() == 0)
        {
            return Err(SandboxError::InvalidSpec(format!(
                "the image's /{name} is not a directory; refusing to mount over it"
            )));
        }
    }
    Ok(())
}

fn resolve(rootfs: &Rootfs, spec: &str) -> Result<ResolvedUser, SandboxError> {
    let passwd = read_image_file(rootfs, "/etc/passwd")?;
    let group = read_image_file(rootfs, "/etc/group")?;
    let s = |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    user::resolve_user_in(spec, s(&passwd).as_deref(), s(&group).as_deref())
}

fn open_path_ro(p: &Path) -> Result<OwnedFd, SandboxError> {
    nix::fcntl::open(p, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(sys_err(format!("open {}", p.display())))
}

fn open_path(p: &Path) -> Result<OwnedFd, SandboxError> {
    nix::fcntl::open(p, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(sys_err(format!("open {}", p.display())))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys_err("pipe"))
}

/// Builds ops, tracking the rootfs prefix of pre-pivot paths.
struct OpList {
    ops: Vec<Op>,
    offsets: Vec<usize>,
    /// Whether attached trees are made `nodev` (see [`SecurityMode`]).
    nodev: bool,
}

/// Marks an op that cleanup must never undo (the rootfs mounts, the pivot).
const NEVER_UNDO: usize = usize::MAX;

impl OpList {
    fn push(&mut self, op: Op, offset: usize) {
        self.ops.push(op);
        self.offsets.push(offset);
    }

    fn mkdir_all(&mut self, target: &Path, mode: u32, remove: bool, chown: Option<(u32, u32)>) {
        let mut cur = PathBuf::from("/");
        for c in target.components().skip(1) {
            cur.push(c);
            self.push(
                Op::Mkdir {
                    path: cpath(&cur).expect("validated"),
                    mode,
                    remove,
                    chown,
                },
                0,
            );
        }
    }

    /// Mount point for `target` inside (after the pivot): parents, then a dir or file.
    fn mount_point(&mut self, target: &Path, is_dir: bool) {
        if let Some(parent) = target.parent() {
            self.mkdir_all(parent, 0o755, true, None);
        }
        let path = cpath(target).expect("validated");
        if is_dir {
            self.push(
                Op::Mkdir {
                    path,
                    mode: 0o755,
                    remove: true,
                    chown: None,
                },
                0,
            );
        } else {
            self.push(
                Op::MkFile {
                    path,
                    remove: true,
                    optional: false,
                },
                0,
            );
        }
    }

    /// A file with `data` made by init in its /dev tmpfs, bound at `target` (whose
    /// mount point must exist), then unlinked from /dev (after the pivot).
    fn memory_file(
        &mut self,
        name: &str,
        data: Vec<u8>,
        mode: u32,
        owner: (u32, u32),
        target: &Path,
        readonly: bool,
    ) {
        let staging = CString::new(format!("/dev/.rbuild-{name}")).expect("no NUL");
        self.push(
            Op::WriteFile {
                path: staging.clone(),
                data,
                mode,
                owner,
            },
            0,
        );
        self.bind(staging.clone(), target, readonly, false);
        self.push(Op::Unlink { path: staging }, 0);
    }

    /// Attaches the tree cloned from `fd` at `target` (after the pivot).
    fn attach(&mut self, fd: &OwnedFd, target: &Path, readonly: bool, optional: bool) {
        let target = cpath(target).expect("validated");
        self.push(
            Op::MoveMount {
                fd: fd.as_raw_fd(),
                target: target.clone(),
                optional,
                nodev: self.nodev,
            },
            0,
        );
        if readonly {
            self.push(Op::RemountRo { target, optional }, 0);
        }
    }

    fn bind(&mut self, source: CString, target: &Path, readonly: bool, optional: bool) {
        let target = cpath(target).expect("validated");
        self.push(
            Op::Mount {
                source: Some(source),
                target: target.clone(),
                fstype: None,
                flags: libc::MS_BIND | libc::MS_REC,
                data: None,
                retry_data: None,
                optional,
            },
            0,
        );
        if readonly {
            self.push(Op::RemountRo { target, optional }, 0);
        }
    }
}

fn hosts_file(hostname: &str, extra: &[(String, String)]) -> String {
    let mut out =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (name, ip) in extra {
        out.extend([ip.as_str(), "\t", name.as_str(), "\n"]);
    }
    out
}

fn resolv_conf(helper: Option<&net::Helper>) -> Vec<u8> {
    if let Some(h) = helper {
        let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        return match net::resolv_conf(&host, h) {
            Some(conf) => conf.into_bytes(),
            None => BUILDKIT_RESOLV_CONF.to_vec(),
        };
    }
    match std::fs::read("/etc/resolv.conf") {
        Ok(b)
            if String::from_utf8_lossy(&b)
                .lines()
                .any(|l| l.trim_start().starts_with("nameserver") && !l.contains("127.0.0.53")) =>
        {
            b
        }
        // No usable host nameserver (none, or systemd-resolved's stub that is
        // unreachable from another namespace): BuildKit's default.
        _ => BUILDKIT_RESOLV_CONF.to_vec(),
    }
}

/// `BuildKit`'s resolv.conf when the host has no nameserver usable from the
/// sandbox.
const BUILDKIT_RESOLV_CONF: &[u8] = b"nameserver 8.8.8.8\nnameserver 8.8.4.4\nnameserver 2001:4860:4860::8888\nnameserver 2001:4860:4860::8844\n";

fn validate(spec: &ProcessSpec) -> Result<(), SandboxError> {
    if spec.args.is_empty() || spec.args[0].is_empty() {
        return Err(SandboxError::InvalidSpec("no command to run".into()));
    }
    if !spec.cwd.starts_with('/') {
        return Err(SandboxError::InvalidSpec(format!(
            "working directory {:?} is not absolute",
            spec.cwd
        )));
    }
    for m in &spec.mounts {
        let t = m.target();
        if !t.is_absolute() || t == Path::new("/") {
            return Err(SandboxError::InvalidSpec(format!(
                "mount target {} must be an absolute path other than /",
                t.display()
            )));
        }
        if t.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(SandboxError::InvalidSpec(format!(
                "mount target {} must not contain ..",
                t.display()
            )));
        }
        cpath(t)?;
    }
    for e in &spec.env {
        if !e.contains('=') {
            return Err(SandboxError::InvalidSpec(format!(
                "environment entry {e:?} has no '='"
            )));
        }
    }
    if spec.hostname.is_empty() || spec.hostname.len() > 64 {
        return Err(SandboxError::InvalidSpec(format!(
            "hostname {:?} must be 1 to 64 bytes",
            spec.hostname
        )));
    }
    Ok(())
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63)
}

/// Runs `spec` over `rootfs` and waits for it. Blocking: from async code, call it
/// in `spawn_blocking`. Output sinks are called from the calling thread.
///
/// `Ok` carries the main process's exit status (whatever it is); `Err` means the
/// process could not be started (setup, user, exec) or was killed by the timeout or
/// the cancel token.
pub fn run(rootfs: &Rootfs, mut spec: ProcessSpec) -> Result<ExitStatus, SandboxError> {
    validate(&spec)?;
    check_support()?;
    let userns = !nix::unistd::geteuid().is_root();
    let user = resolve(rootfs, &spec.user)?;
    if userns && user.uid != 0 {
        return Err(SandboxError::UserNamespace(format!(
            "running as user {:?} (uid {}) needs root: without root only uid 0 is mapped \
             in the sandbox's user namespace",
            spec.user, user.uid
        )));
    }
    // Already in a user namespace (rootless rbuild, see `rootless`): only the
    // ids it maps exist; `setgroups` may be denied; gid 5 (tty) may be unmapped.
    let nested = !userns && rootless::in_user_namespace();
    if nested
        && !(rootless::uid_mapped(user.uid)
            && rootless::gid_mapped(user.gid)
            && user.groups.iter().all(|g| rootless::gid_mapped(*g)))
    {
        return Err(SandboxError::UserNamespace(format!(
            "running as user {:?} (uid {}, gid {}) needs that id mapped in rbuild's user \
             namespace: as non-root, give this user subordinate ids in /etc/subuid and \
             /etc/subgid (and install newuidmap/newgidmap, package uidmap), or run as root",
            spec.user, user.uid, user.gid
        )));
    }

    // A mount point for an overlay the sandbox mounts itself.
    let state = match rootfs {
        Rootfs::Dir(_) => None,
        Rootfs::Overlay { .. } => {
            let mut b = tempfile::Builder::new();
            b.prefix("rbuild-sandbox-")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
            let dir = match &spec.scratch_dir {
                Some(d) => b.tempdir_in(d),
                None => b.tempdir(),
            };
            Some(dir.map_err(SandboxError::Io)?)
        }
    };
    let root_host: PathBuf = match (rootfs, &state) {
        (Rootfs::Dir(d), _) => fs_err::canonicalize(d)?,
        (Rootfs::Overlay { .. }, Some(state)) => {
            let p = state.path().join("root");
            fs_err::create_dir(&p)?;
            p
        }
        (Rootfs::Overlay { .. }, None) => unreachable!("state dir made above"),
    };
    if !root_host.is_dir() {
        return Err(SandboxError::InvalidSpec(format!(
            "rootfs {} is not a directory",
            root_host.display()
        )));
    }
    check_mount_dirs(rootfs)?;
    // The network helper of a private network, looked up before anything is made.
    let net_helper = match spec.network {
        NetworkMode::Private => {
            let helper = net::find_helper(std::env::var_os("PATH").as_deref())?;
            net::check_tun_access()?;
            Some(helper)
        }
        NetworkMode::None | NetworkMode::Host => None,
    };
    // Host paths bound into the sandbox (cloned with open_tree before the pivot).
    let mut keep: Vec<OwnedFd> = Vec::new();
    let mut keep_paths: Vec<PathBuf> = Vec::new();

    // ---- the op list ----
    let r = cpath(&root_host)?;
    let rlen = r.as_bytes().len();
    let under = |p: &str| cstr([r.as_bytes(), p.as_bytes()].concat(), "path");
    // Devices: Docker's default device cgroup lets a container make any device
    // node (CAP_MKNOD) but read or write only /dev/null, zero, full, random,
    // urandom, tty and the ptys. Here every mount of the sandbox is `nodev` but
    // the binds of those host devices and the sandbox's own devpts: a node made
    // by `mknod`, shipped in a layer or found in a cache or bind mount lands in
    // the layer but cannot be opened. `--security=insecure` lifts it, as
    // BuildKit's insecure mode allows every device.
    let nodev = spec.security == SecurityMode::Sandbox;
    let mut ops = OpList {
        ops: Vec::new(),
        offsets: Vec::new(),
        nodev,
    };
    ops.push(
        Op::Mount {
            source: None,
            target: c"/".into(),
            fstype: None,
            flags: libc::MS_REC | libc::MS_PRIVATE,
            data: None,
            retry_data: None,
            optional: false,
        },
        NEVER_UNDO,
    );
    match rootfs {
        Rootfs::Dir(_) => {
            ops.push(
                Op::Mount {
                    source: Some(r.clone()),
                    target: r.clone(),
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REC,
                    data: None,
                    retry_data: None,
                    optional: false,
                },
                NEVER_UNDO,
            );
            if nodev {
                // A bind takes its flags from the source mount, not from
                // `mount(2)`'s: set them on the new mounts.
                ops.push(Op::Nodev { target: r.clone() }, NEVER_UNDO);
            }
        }
        Rootfs::Overlay { lower, upper, work } => {
            if lower.is_empty() {
                return Err(SandboxError::InvalidSpec(
                    "overlay without lower dirs".into(),
                ));
            }
            let join = |ps: &[PathBuf]| {
                ps.iter()
                    .map(|p| p.as_os_str().as_bytes().to_vec())
                    .collect::<Vec<_>>()
                    .join(&b':')
            };
            let mut data = b"lowerdir=".to_vec();
            data.extend(join(lower));
            data.extend(b",upperdir=");
            data.extend(upper.as_os_str().as_bytes());
            data.extend(b",workdir=");
            data.extend(work.as_os_str().as_bytes());
            if userns || nested {
                data.extend(b",userxattr");
            }
            // `volatile` (Linux 5.10): overlayfs skips its own syncs of the upper
            // layer, above all the fsync of every file it copies up (dpkg links
            // each file it replaces: one copy-up and one fsync per file). Taken
            // with the programs' syncs (`skip_sync`): the caller makes the upper
            // dir durable itself when it keeps it. An older kernel refuses the
            // option (EINVAL): mounted then without it. (Left out where it would
            // not fit in the kernel's one page of options.)
            let retry = if spec.skip_sync && data.len() + b",volatile".len() <= 4095 {
                let plain = data.clone();
                data.extend(b",volatile");
                Some(plain)
            } else {
                None
            };
            if data.len() > 4095 {
                return Err(SandboxError::InvalidSpec(format!(
                    "overlay options for {} layers are {} bytes, over the kernel's one-page \
                     limit; merge layers or use a directory rootfs",
                    lower.len(),
                    data.len()
                )));
            }
            ops.push(
                Op::Mount {
                    source: Some(c"overlay".into()),
                    target: r.clone(),
                    fstype: Some(c"overlay".into()),
                    flags: if nodev { libc::MS_NODEV } else { 0 },
                    data: Some(cstr(data, "overlay options")?),
                    retry_data: retry.map(|d| cstr(d, "overlay options")).transpose()?,
                    optional: false,
                },
                NEVER_UNDO,
            );
        }
    }
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mkdir_pre =
        |ops: &mut OpList, p: &str, mode: u32, remove: bool| -> Result<(), SandboxError> {
            ops.push(
                Op::Mkdir {
                    path: under(p)?,
                    mode,
                    remove,
                    chown: None,
                },
                rlen,
            );
            Ok(())
        };
    let mount_pre = |ops: &mut OpList,
                     src: &CStr,
                     p: &str,
                     fstype: Option<&CStr>,
                     flags: libc::c_ulong,
                     data: Option<&str>,
                     optional: bool|
     -> Result<(), SandboxError> {
        ops.push(
            Op::Mount {
                source: Some(src.into()),
                target: under(p)?,
                fstype: fstype.map(Into::into),
                flags,
                data: data.map(|d| cstr(d, "mount data")).transpose()?,
                retry_data: None,
                optional,
            },
            rlen,
        );
        Ok(())
    };
    mkdir_pre(&mut ops, "/proc", 0o755, false)?;
    mount_pre(
        &mut ops,
        c"proc",
        "/proc",
        Some(c"proc"),
        nosuid_nodev_noexec,
        None,
        false,
    )?;
    mkdir_pre(&mut ops, "/dev", 0o755, false)?;
    // The device binds below keep their own (the host /dev's) flags over the
    // nodev tmpfs.
    mount_pre(
        &mut ops,
        c"tmpfs",
        "/dev",
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_STRICTATIME | if nodev { libc::MS_NODEV } else { 0 },
        Some("mode=755,size=65536k"),
        false,
    )?;
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        let p = format!("/dev/{dev}");
        ops.push(
            Op::MkFile {
                path: under(&p)?,
                remove: false,
                optional: false,
            },
            rlen,
        );
        let src = cstr(&p, "dev")?;
        mount_pre(&mut ops, &src, &p, None, libc::MS_BIND, None, dev == "tty")?;
    }
    mkdir_pre(&mut ops, "/dev/pts", 0o755, false)?;
    let pts_opts = if userns || (nested && !rootless::gid_mapped(5)) {
        "newinstance,ptmxmode=0666,mode=0620"
    } else {
        "newinstance,ptmxmode=0666,mode=0620,gid=5"
    };
    mount_pre(
        &mut ops,
        c"devpts",
        "/dev/pts",
        Some(c"devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(pts_opts),
        false,
    )?;
    for (target, link) in [
        ("pts/ptmx", "/dev/ptmx"),
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
        ("/proc/kcore", "/dev/core"),
    ] {
        ops.push(
            Op::Symlink {
                target: cstr(target, "link")?,
                link: under(link)?,
            },
            rlen,
        );
    }
    mkdir_pre(&mut ops, "/dev/shm", 0o1777, false)?;
    mount_pre(
        &mut ops,
        c"shm",
        "/dev/shm",
        Some(c"tmpfs"),
        nosuid_nodev_noexec,
        Some(&format!(
            "mode=1777,size={}",
            spec.shm_size.unwrap_or(64 << 20)
        )),
        false,
    )?;
    mkdir_pre(&mut ops, "/dev/mqueue", 0o755, false)?;
    mount_pre(
        &mut ops,
        c"mqueue",
        "/dev/mqueue",
        Some(c"mqueue"),
        nosuid_nodev_noexec,
        None,
        true,
    )?;
    mkdir_pre(&mut ops, "/sys", 0o755, false)?;
    // sysfs needs a network namespace of our own in a user namespace; without one
    // /sys stays an empty directory.
    mount_pre(
        &mut ops,
        c"sysfs",
        "/sys",
        Some(c"sysfs"),
        nosuid_nodev_noexec | libc::MS_RDONLY,
        None,
        true,
    )?;
    let pivot_at = ops.ops.len();
    ops.push(Op::PivotRoot { dir: r.clone() }, NEVER_UNDO);

    // /etc files, bound over placeholders. The placeholders of /proc, /dev, /sys
    // (0755 directories, as runc makes them) and these three files stay in the
    // rootfs: removing them here would mean unmounting first, which waits for an
    // RCU grace period and costs more than the whole rest of the run. A caller
    // that keeps the rootfs (the build's exec worker) removes the empty file
    // placeholders that did not exist before from its upper dir once the run is
    // over and nothing is mounted. The mount points of the requested mounts are
    // removed here.
    // Their contents are written by init into its /dev tmpfs (memory only, gone
    // with the run), bound read-only like BuildKit does, and unlinked there.
    ops.mkdir_all(Path::new("/etc"), 0o755, true, None);
    for (file, data) in [
        (
            "hosts",
            hosts_file(&spec.hostname, &spec.extra_hosts).into_bytes(),
        ),
        ("hostname", format!("{}\n", spec.hostname).into_bytes()),
        ("resolv.conf", resolv_conf(net_helper.as_ref())),
    ] {
        let target = PathBuf::from("/etc").join(file);
        ops.push(
            Op::MkFile {
                path: cpath(&target)?,
                remove: false,
                optional: true,
            },
            0,
        );
        ops.memory_file(file, data, 0o644, (0, 0), &target, true);
    }

    // Requested mounts.
    for (i, m) in spec.mounts.iter().enumerate() {
        match m {
            Mount::Bind {
                source,
                target,
                readonly,
            } => {
                let is_dir = fs_err::metadata(source)?.is_dir();
                let fd = open_path(source)?;
                ops.mount_point(target, is_dir);
                ops.attach(&fd, target, *readonly, false);
                keep.push(fd);
                keep_paths.push(fs_err::canonicalize(source)?);
            }
            Mount::Cache { source, target } => {
                if !fs_err::metadata(source)?.is_dir() {
                    return Err(SandboxError::InvalidSpec(format!(
                        "cache mount source {} is not a directory",
                        source.display()
                    )));
                }
                let fd = open_path(source)?;
                ops.mount_point(target, true);
                ops.attach(&fd, target, false, false);
                keep.push(fd);
                keep_paths.push(fs_err::canonicalize(source)?);
            }
            Mount::Tmpfs { target, size } => {
                ops.mount_point(target, true);
                let mut data = "mode=1777".to_string();
                if let Some(s) = size {
                    data = format!("{data},size={s}");
                }
                ops.push(
                    Op::Mount {
                        source: Some(c"tmpfs".into()),
                        target: cpath(target)?,
                        fstype: Some(c"tmpfs".into()),
                        flags: libc::MS_NOSUID | libc::MS_NODEV,
                        data: Some(cstr(data, "tmpfs options")?),
                        retry_data: None,
                        optional: false,
                    },
                    0,
                );
            }
            Mount::Secret {
                target,
                data,
                uid,
                gid,
                mode,
            } => {
                // In a user namespace only root is mapped: the file stays root's.
                let owner = if userns { (0, 0) } else { (*uid, *gid) };
                ops.mount_point(target, false);
                ops.memory_file(
                    &format!("secret-{i}"),
                    data.clone(),
                    *mode & 0o7777,
                    owner,
                    target,
                    true,
                );
            }
        }
    }
    if spec.security == SecurityMode::Sandbox {
        for p in MASKED_PATHS {
            let target = cstr(p, "path")?;
            let is_dir = std::fs::metadata(p).is_ok_and(|m| m.is_dir());
            ops.push(
                Op::Mount {
                    source: Some(if is_dir {
                        c"tmpfs".into()
                    } else {
                        c"/dev/null".into()
                    }),
                    target,
                    fstype: is_dir.then(|| c"tmpfs".into()),
                    flags: if is_dir {
                        libc::MS_RDONLY
                    } else {
                        libc::MS_BIND
                    },
                    data: None,
                    retry_data: None,
                    optional: true,
                },
                0,
            );
        }
        for p in READONLY_PATHS {
            ops.bind(cstr(p, "path")?, Path::new(p), true, true);
        }
    }
    ops.mkdir_all(
        Path::new(&spec.cwd),
        0o755,
        false,
        Some((user.uid, user.gid)),
    );
    // Last, once every mount point is made: the root itself read-only (its
    // submounts keep their own flags).
    if spec.readonly_rootfs {
        ops.push(
            Op::RemountRo {
                target: c"/".into(),
                optional: false,
            },
            0,
        );
    }
    // Bind sources are cloned inside the sandbox's mount namespace before the pivot
    // (see `Op::OpenTree`).
    for (fd, path) in keep.iter().zip(&keep_paths).rev() {
        ops.ops.insert(
            pivot_at,
            Op::OpenTree {
                path: cpath(path)?,
                fd: fd.as_raw_fd(),
            },
        );
        ops.offsets.insert(pivot_at, NEVER_UNDO);
    }

    // ---- exec data ----
    let mut env = spec.env.clone();
    let has = |env: &[String], k: &str| {
        env.iter()
            .any(|e| e.split_once('=').is_some_and(|(a, _)| a == k))
    };
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={}", user.home));
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string();
    let argv0 = &spec.args[0];
    let exec_candidates: Vec<CString> = if argv0.contains('/') {
        vec![cstr(argv0, "command")?]
    } else {
        path_var
            .split(':')
            .map(|d| if d.is_empty() { "." } else { d })
            .map(|d| cstr(format!("{}/{argv0}", d.trim_end_matches('/')), "command"))
            .collect::<Result<_, _>>()?
    };
    let argv: Vec<CString> = spec
        .args
        .iter()
        .map(|a| cstr(a, "argument"))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env
        .iter()
        .map(|e| cstr(e, "environment entry"))
        .collect::<Result<_, _>>()?;
    let ptrs = |v: &[CString]| {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect::<Vec<_>>()
    };

    // The step's cgroup (only with limits), made before the fork so a limit
    // that cannot be applied fails before anything runs; removed on drop,
    // after init (declared below) is gone.
    let cgroup = StepCgroup::create(&spec.limits)?;

    // ---- fds ----
    let (err_r, err_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    // Init waits on it until the parent has written its user-namespace id maps
    // (or moved it into its cgroup v2, where clone3 could not).
    let sync = if userns || cgroup.as_ref().is_some_and(StepCgroup::is_v2) {
        Some(pipe()?)
    } else {
        None
    };
    // Init waits on it before starting the main process, until the network
    // helper has configured the namespace.
    let net_sync = if net_helper.is_some() {
        Some(pipe()?)
    } else {
        None
    };
    let devnull = || -> Result<OwnedFd, SandboxError> {
        nix::fcntl::open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(sys_err("open /dev/null"))
    };
    let mut child_fds: Vec<OwnedFd> = Vec::new();
    let stdin_fd = match spec.stdin {
        Input::Null => {
            let f = devnull()?;
            let raw = f.as_raw_fd();
            child_fds.push(f);
            raw
        }
        Input::Inherit => 0,
    };
    let mut readers: Vec<(OwnedFd, LineBuf)> = Vec::new();
    let mut out_fd = |o: Output,
                      inherit: RawFd,
                      readers: &mut Vec<(OwnedFd, LineBuf)>|
     -> Result<RawFd, SandboxError> {
        Ok(match o {
            Output::Null => {
                let f = devnull()?;
                let raw = f.as_raw_fd();
                child_fds.push(f);
                raw
            }
            Output::Inherit => inherit,
            Output::Lines(sink) => {
                let (r, w) = pipe()?;
                fcntl(&r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(sys_err("fcntl"))?;
                let raw = w.as_raw_fd();
                child_fds.push(w);
                readers.push((
                    r,
                    LineBuf {
                        buf: Vec::new(),
                        sink,
                        eof: false,
                    },
                ));
                raw
            }
        })
    };
    let relay_stdin = spec.terminal && spec.stdin == Input::Inherit;
    if spec.terminal {
        spec.stdout = Output::Null;
        spec.stderr = Output::Null;
    }
    let pty_sock = if spec.terminal {
        Some(sys::socketpair().map_err(sys_err("socketpair"))?)
    } else {
        None
    };
    let stdout_fd = out_fd(std::mem::take(&mut spec.stdout), 1, &mut readers)?;
    let stderr_fd = out_fd(std::mem::take(&mut spec.stderr), 2, &mut readers)?;

    let mut keep_fds: Vec<RawFd> = keep.iter().map(AsRawFd::as_raw_fd).collect();
    keep_fds.extend([
        err_w.as_raw_fd(),
        status_w.as_raw_fd(),
        stdin_fd,
        stdout_fd,
        stderr_fd,
    ]);
    if let Some((r, _)) = &sync {
        keep_fds.push(r.as_raw_fd());
    }
    if let Some((r, _)) = &net_sync {
        keep_fds.push(r.as_raw_fd());
    }
    if let Some((_, child_end)) = &pty_sock {
        keep_fds.push(child_end.as_raw_fd());
    }
    keep_fds.sort_unstable();
    keep_fds.dedup();

    let caps = match spec.security {
        SecurityMode::Sandbox => Some(DEFAULT_CAPS.iter().fold(0u64, |a, c| a | (1 << c))),
        SecurityMode::Insecure => None,
    };
    let n_ops = ops.ops.len();
    let mut plan = Plan {
        ops: ops.ops,
        inside_offset: ops.offsets,
        done: vec![false; n_ops],
        hostname: cstr(&spec.hostname, "hostname")?,
        loopback_up: spec.network != NetworkMode::Host,
        cwd: cstr(&spec.cwd, "working directory")?,
        argv_ptrs: ptrs(&argv),
        envp_ptrs: ptrs(&envp),
        exec_candidates,
        argv,
        envp,
        uid: user.uid,
        gid: user.gid,
        groups: if spec.step_groups {
            user.step_groups.clone()
        } else {
            user.groups.clone()
        },
        set_groups: !userns && (!nested || rootless::setgroups_allowed()),
        caps,
        last_cap: last_cap(),
        no_new_privs: spec.security == SecurityMode::Sandbox,
        rlimits: spec
            .rlimits
            .iter()
            .map(|r| {
                RLIMITS
                    .iter()
                    .find(|(n, _)| *n == r.name)
                    .map(|(_, res)| {
                        (
                            *res,
                            r.soft.unwrap_or(libc::RLIM_INFINITY),
                            r.hard.unwrap_or(libc::RLIM_INFINITY),
                        )
                    })
                    .ok_or_else(|| {
                        SandboxError::InvalidSpec(format!("unknown resource limit {:?}", r.name))
                    })
            })
            .collect::<Result<_, _>>()?,
        seccomp: seccomp::filter(seccomp::FilterKind {
            profile: spec.seccomp && spec.security == SecurityMode::Sandbox,
            skip_sync: spec.skip_sync,
        })?,
        stdio: [stdin_fd, stdout_fd, stderr_fd],
        pty_sock: pty_sock.as_ref().map_or(-1, |(_, c)| c.as_raw_fd()),
        err_fd: err_w.as_raw_fd(),
        status_fd: status_w.as_raw_fd(),
        sync_fd: sync.as_ref().map_or(-1, |(r, _)| r.as_raw_fd()),
        cgroup_join: cgroup
            .as_ref()
            .map(StepCgroup::v1_tasks_files)
            .unwrap_or_default(),
        unshare_cgroupns: cgroup.is_some(),
        net_fd: net_sync.as_ref().map_or(-1, |(r, _)| r.as_raw_fd()),
        keep_fds,
    };

    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    // With a cgroup of its own, init unshares its cgroup namespace once it is
    // in it (that cgroup becomes its root); otherwise right here.
    if cgroup.is_none() {
        flags |= libc::CLONE_NEWCGROUP;
    }
    if spec.network != NetworkMode::Host {
        flags |= libc::CLONE_NEWNET;
    }
    if userns {
        flags |= libc::CLONE_NEWUSER;
    }
    // cgroup v2: init is born in its cgroup (falling back to a move below on
    // kernels without clone3's CLONE_INTO_CGROUP).
    let cgroup_fd = cgroup.as_ref().and_then(StepCgroup::v2_fd);
    let born_in_cgroup = cgroup_fd
        .as_ref()
        .and_then(|fd| sys::clone_into_cgroup(flags, fd.as_raw_fd()).ok());
    // (With v1, init moves itself in: see `Plan::cgroup_join`.)
    let moved_later = cgroup.as_ref().is_some_and(StepCgroup::is_v2) && born_in_cgroup.is_none();
    let cloned = match born_in_cgroup {
        Some(pid) => Ok(pid),
        None => sys::clone_fork(flags),
    };
    let pid = match cloned {
        Ok(0) => child::init(&mut plan),
        Ok(pid) => pid,
        Err(e) => {
            return Err(if userns {
                SandboxError::UserNamespace(format!(
                    "cannot create a user namespace as non-root ({e}); the kernel does not \
                     allow unprivileged user namespaces here (see \
                     kernel.unprivileged_userns_clone, user.max_user_namespaces, \
                     kernel.apparmor_restrict_unprivileged_userns); run as root"
                ))
            } else {
                SandboxError::Sys {
                    what: "clone with new namespaces".into(),
                    source: e,
                }
            });
        }
    };
    // The parent's copies of the child's ends.
    drop(err_w);
    drop(status_w);
    drop(child_fds);
    drop(keep);
    drop(cgroup_fd);
    let guard = KillGuard(pid);

    if let Some((sync_r, sync_w)) = sync {
        drop(sync_r);
        if userns {
            write_id_maps(pid).map_err(|e| {
                SandboxError::UserNamespace(format!(
                    "cannot map the user into the sandbox's user namespace as non-root ({e}); \
                     run as root or allow unprivileged user namespaces"
                ))
            })?;
        }
        if let Some(cg) = &cgroup
            && moved_later
        {
            cg.add(pid)?;
        }
        nix::unistd::write(&sync_w, b"1").map_err(sys_err("sync with sandbox"))?;
    }
    // The private network: the helper attaches to the namespace while init
    // sets up the mounts; init starts the main process once it is configured.
    // Killed when `_net` is dropped, after the run.
    // On failure init is not released (it cleans up and exits when `net_w`
    // closes) and the error is reported after it ended, unless init reported
    // one of its own.
    let mut net_err: Option<SandboxError> = None;
    let _net = match (&net_helper, net_sync) {
        (Some(helper), Some((net_r, net_w))) => {
            drop(net_r);
            let setup = || -> Result<net::Running, SandboxError> {
                let ns = |kind: &str| -> Result<OwnedFd, SandboxError> {
                    open_path_ro(&PathBuf::from(format!("/proc/{pid}/ns/{kind}")))
                };
                let netns = ns("net")?;
                let user_ns = if userns { Some(ns("user")?) } else { None };
                let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                let mut running = net::start(helper, &netns, user_ns.as_ref(), &host_resolv)?;
                running.wait_ready()?;
                running.detach()?;
                Ok(running)
            };
            match setup() {
                Ok(running) => {
                    // An init that already failed has closed its end.
                    let _ = nix::unistd::write(&net_w, b"1");
                    Some(running)
                }
                Err(e) => {
                    net_err = Some(e);
                    None
                }
            }
        }
        _ => None,
    };
    let pidfd = sys::pidfd_open(pid).map_err(sys_err("pidfd_open"))?;
    fcntl(&err_r, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(sys_err("fcntl"))?;
    let mut relay = match pty_sock {
        Some((ours, child_end)) => {
            drop(child_end);
            // None when init failed before making the terminal: reported below.
            match sys::recv_fd(ours.as_raw_fd()).map_err(sys_err("receive the terminal"))? {
                Some(master) => Some(TermRelay::new(master, relay_stdin)?),
                None => None,
            }
        }
        None => None,
    };

    // ---- wait: stream output, watch the deadline and the cancel token ----
    let start = Instant::now();
    let deadline = spec.timeout.map(|t| start + t);
    let mut err_bytes = Vec::new();
    let mut killed: Option<SandboxError> = None;
    let mut grace: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut pfds = vec![libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(t) = &relay {
            t.poll_fds(&mut pfds);
        }
        // (The error pipe is read after the end: its few bytes fit in the pipe.)
        for (r, _) in readers.iter().filter(|(_, lb)| !lb.eof) {
            pfds.push(libc::pollfd {
                fd: r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let mut timeout_ms: i32 = -1;
        if let Some(g) = grace {
            let left = g.saturating_duration_since(Instant::now());
            timeout_ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(0) + 1;
        } else {
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                timeout_ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(0) + 1;
            }
            if spec.cancel.is_some() {
                timeout_ms = if timeout_ms < 0 {
                    50
                } else {
                    timeout_ms.min(50)
                };
            }
        }
        let _ = sys_poll(&mut pfds, timeout_ms);
        if let Some(t) = &mut relay {
            t.pump(&pfds, &mut buf);
        }
        for (r, lb) in readers.iter_mut().filter(|(_, lb)| !lb.eof) {
            loop {
                match read_some(r, &mut buf) {
                    ReadResult::Data(n) => lb.push(&buf[..n]),
                    ReadResult::Eof => {
                        lb.eof = true;
                        break;
                    }
                    ReadResult::WouldBlock => break,
                }
            }
        }
        if pfds[0].revents != 0 {
            break;
        }
        if let Some(g) = grace {
            if Instant::now() >= g {
                // init did not finish its cleanup in time: kill it, and with it
                // (the kernel's doing) every process of its pid namespace.
                sys::kill(pid, libc::SIGKILL);
                grace = Some(Instant::now() + Duration::from_secs(3600));
            }
        } else {
            if let Some(d) = deadline
                && Instant::now() >= d
            {
                killed = Some(SandboxError::TimedOut(spec.timeout.unwrap_or_default()));
            } else if spec.cancel.as_ref().is_some_and(CancelToken::is_cancelled) {
                killed = Some(SandboxError::Cancelled);
            }
            if killed.is_some() {
                // Kill init's children (the main process): init then kills the
                // rest, undoes its mounts and mount points, and exits.
                kill_children(pid);
                grace = Some(Instant::now() + KILL_GRACE);
            }
        }
    }
    let (_, init_status) = sys::waitpid(pid).map_err(sys_err("waitpid"))?;
    std::mem::forget(guard);
    // Everything in the pid namespace is gone now: drain what is left.
    if let Some(t) = &mut relay {
        t.drain(&mut buf);
    }
    drop(relay);
    while let ReadResult::Data(n) = read_some(&err_r, &mut buf) {
        err_bytes.extend_from_slice(&buf[..n]);
    }
    for (r, lb) in &mut readers {
        while let ReadResult::Data(n) = read_some(r, &mut buf) {
            lb.push(&buf[..n]);
        }
        lb.finish();
    }
    let mut status_bytes = Vec::new();
    let _ = std::fs::File::from(status_r).read_to_end(&mut status_bytes);
    drop(state);
    // Every process of the step is gone: read the cgroup's counters, then
    // remove it.
    let hit = cgroup.as_ref().and_then(StepCgroup::hit);
    drop(cgroup);

    if let Some(e) = killed {
        return Err(e);
    }
    if err_bytes.len() >= 5 {
        let errno = nix::errno::Errno::from_raw(i32::from_le_bytes(
            err_bytes[..4].try_into().expect("4 bytes"),
        ));
        let kind = err_bytes[4];
        let msg = String::from_utf8_lossy(&err_bytes[5..]).into_owned();
        if kind == child::KIND_EXEC {
            return Err(SandboxError::Exec {
                command: spec.args[0].clone(),
                errno,
            });
        }
        let msg = msg.strip_suffix(": ").unwrap_or(&msg).to_string();
        let hint =
            if userns && matches!(errno, nix::errno::Errno::EPERM | nix::errno::Errno::EACCES) {
                " (running as non-root in a user namespace: the kernel or a security module \
             may restrict what unprivileged user namespaces can mount, e.g. \
             kernel.apparmor_restrict_unprivileged_userns=1; run as root)"
            } else {
                ""
            };
        return Err(SandboxError::Setup {
            message: format!("{msg}: {}{hint}", errno.desc()),
        });
    }
    if let Some(e) = net_err {
        return Err(e);
    }
    if let Ok(b) = <[u8; 4]>::try_from(status_bytes.as_slice()) {
        let mut status = ExitStatus::from_wait(i32::from_le_bytes(b));
        if !status.success() {
            status.limit = hit;
        }
        return Ok(status);
    }
    if hit.is_some() {
        // The OOM killer (or a refused fork) took init itself before it could
        // report: the step was killed by the limit.
        return Ok(ExitStatus {
            code: 128 + libc::SIGKILL,
            signal: Some(libc::SIGKILL),
            limit: hit,
        });
    }
    Err(SandboxError::Setup {
        message: format!(
            "the sandbox's init ended without a status ({})",
            ExitStatus::from_wait(init_status)
        ),
    })
}

/// How long init gets to clean up after a timeout or cancel killed the main
/// process, before it is killed too.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// SIGKILLs the children of `pid` (listed by /proc/PID/task/PID/children); kills
/// `pid` itself when they cannot be listed.
fn kill_children(pid: libc::pid_t) {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
    match list {
        Ok(l) if !l.trim().is_empty() => {
            for c in l
                .split_whitespace()
                .filter_map(|c| c.parse::<libc::pid_t>().ok())
            {
                sys::kill(c, libc::SIGKILL);
            }
        }
        _ => sys::kill(pid, libc::SIGKILL),
    }
}

/// Kills the sandbox's init if `run` returns early with an error.
struct KillGuard(libc::pid_t);

impl Drop for KillGuard {
    fn drop(&mut self) {
        sys::kill(self.0, libc::SIGKILL);
        let _ = sys::waitpid(self.0);
    }
}

fn write_id_maps(pid: libc::pid_t) -> Result<(), SandboxError> {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    let base = PathBuf::from(format!("/proc/{pid}"));
    fs_err::write(base.join("setgroups"), "deny")?;
    fs_err::write(base.join("uid_map"), format!("0 {uid} 1\n"))?;
    fs_err::write(base.join("gid_map"), format!("0 {gid} 1\n"))?;
    Ok(())
}

fn sys_poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> Result<i32, nix::errno::Errno> {
    sys::poll(fds, timeout_ms)
}

enum ReadResult {
    Data(usize),
    Eof,
    WouldBlock,
}

fn read_some(fd: &OwnedFd, buf: &mut [u8]) -> ReadResult {
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(0) => return ReadResult::Eof,
            Ok(n) => return ReadResult::Data(n),
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => return ReadResult::WouldBlock,
            // EIO from a pty master whose slave is closed; any other error ends
            // the stream too.
            Err(_) => return ReadResult::Eof,
        }
    }
}

/// Relays between the caller's terminal and a pty master (`ProcessSpec::terminal`).
struct TermRelay {
    master: OwnedFd,
    master_open: bool,
    stdin_open: bool,
    saved: Option<nix::sys::termios::Termios>,
}

impl TermRelay {
    fn new(master: OwnedFd, relay_stdin: bool) -> Result<Self, SandboxError> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        fcntl(&master, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(sys_err("fcntl"))?;
        let stdin = std::io::stdin();
        let mut saved = None;
        if relay_stdin && nix::unistd::isatty(&stdin).unwrap_or(false) {
            sys::copy_winsize(0, master.as_raw_fd());
            if let Ok(t) = tcgetattr(&stdin) {
                let mut raw = t.clone();
                cfmakeraw(&mut raw);
                if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_ok() {
                    saved = Some(t);
                }
            }
        } else if nix::unistd::isatty(std::io::stdout()).unwrap_or(false) {
            sys::copy_winsize(1, master.as_raw_fd());
        }
        Ok(TermRelay {
            master,
            master_open: true,
            stdin_open: relay_stdin,
            saved,
        })
    }

    fn poll_fds(&self, pfds: &mut Vec<libc::pollfd>) {
        if self.master_open {
            pfds.push(libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if self.stdin_open {
            pfds.push(libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
    }

    fn pump(&mut self, pfds: &[libc::pollfd], buf: &mut [u8]) {
        self.drain(buf);
        let stdin_ready = pfds.iter().any(|p| p.fd == 0 && p.revents != 0);
        if self.stdin_open && stdin_ready {
            // One read: poll said it will not block.
            match nix::unistd::read(std::io::stdin(), buf) {
                Ok(0) | Err(_) => self.stdin_open = false,
                Ok(n) => sys::write_all(self.master.as_raw_fd(), &buf[..n]),
            }
        }
    }

    /// Copies what the master has to the caller's stdout.
    fn drain(&mut self, buf: &mut [u8]) {
        while self.master_open {
            match read_some(&self.master, buf) {
                ReadResult::Data(n) => sys::write_all(1, &buf[..n]),
                ReadResult::WouldBlock => break,
                // EIO once the last slave fd is closed.
                ReadResult::Eof => self.master_open = false,
            }
        }
    }
}

impl Drop for TermRelay {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// Splits a stream into lines for a sink.
struct LineBuf {
    buf: Vec<u8>,
    sink: LineSink,
    eof: bool,
}

const MAX_LINE: usize = 1 << 20;

impl LineBuf {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            (self.sink)(&self.buf[start..start + pos]);
            start += pos + 1;
        }
        self.buf.drain(..start);
        if self.buf.len() >= MAX_LINE {
            (self.sink)(&self.buf);
            self.buf.clear();
        }
    }

    fn finish(&mut self) {
        if !self.buf.is_empty() {
            (self.sink)(&self.buf);
            self.buf.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]]) -> Vec<String> {
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let o2 = Arc::clone(&out);
        let mut lb = LineBuf {
            buf: Vec::new(),
            sink: Box::new(move |l| {
                o2.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(l).into_owned());
            }),
            eof: false,
        };
        for c in chunks {
            lb.push(c);
        }
        lb.finish();
        out.lock().unwrap().clone()
    }

    #[test]
    fn lines_are_split_across_chunks() {
        assert_eq!(collect(&[b"a\nb", b"c\n\nd"]), ["a", "bc", "", "d"]);
        assert_eq!(collect(&[b"x\n"]), ["x"]);
        assert_eq!(collect(&[]), Vec::<String>::new());
    }

    #[test]
    fn overlong_lines_are_cut() {
        let big = vec![b'x'; MAX_LINE + 10];
        let lines = collect(&[&big, b"\n"]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE + 10);
        assert_eq!(lines[1], "");
    }

    #[test]
    fn exit_status_like_a_shell() {
        assert_eq!(
            ExitStatus::from_wait(3 << 8),
            ExitStatus {
                code: 3,
                signal: None,
                limit: None,
            }
        );
        assert_eq!(
            ExitStatus::from_wait(9),
            ExitStatus {
                code: 137,
                signal: Some(9),
                limit: None,
            }
        );
    }

    #[test]
    fn exec_errors_map_to_shell_codes() {
        let e = SandboxError::Exec {
            command: "x".into(),
            errno: nix::errno::Errno::ENOENT,
        };
        assert_eq!(e.exit_code(), 127);
        assert!(e.to_string().contains("not found"));
        let e = SandboxError::Exec {
            command: "x".into(),
            errno: nix::errno::Errno::EACCES,
        };
        assert_eq!(e.exit_code(), 126);
    }
}

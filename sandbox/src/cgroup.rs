//! Resource limits of a run: a cgroup of its own for the step.
//!
//! A run with [`Limits`] gets a fresh cgroup, `rbuild-<pid>-<n>`, made below
//! the cgroup the rbuild process is in, with the limits written before the
//! sandbox's init enters it: with cgroup v2 init is born in it (`clone3` with
//! `CLONE_INTO_CGROUP`); with v1 init moves itself in (writes `0` to each
//! `tasks` file) before it does anything else, so no code of the step runs
//! outside it. After the run the counters say whether a limit ended it (an
//! OOM kill, a refused fork) and the cgroup is removed. A run without limits
//! touches no cgroup at all.
//!
//! Two layouts:
//! - cgroup v2 (`/sys/fs/cgroup` is `cgroup2`): one directory; the controllers
//!   the limits need are enabled in the parent's `cgroup.subtree_control`. A
//!   cgroup v2 parent with processes of its own cannot enable controllers for
//!   its children (the "no internal processes" rule): then, as root, the step
//!   cgroups go below `<cgroup root>/rbuild` instead (`BuildKit`'s and
//!   Docker's daemons have a cgroup of their own for the same reason).
//! - cgroup v1 (or the hybrid layout, v1 hierarchies plus an empty unified
//!   one): one directory per controller hierarchy that a limit needs
//!   (`memory.limit_in_bytes`, `memory.memsw.limit_in_bytes`,
//!   `cpu.cfs_period_us`/`cpu.cfs_quota_us`, `cpuset.cpus`/`cpuset.mems`,
//!   `pids.max`).
//!
//! Where cgroups are not writable (non-root without a delegated subtree) a
//! requested limit fails with an error saying so.
//!
//! The cgroup files are read and written with `std::fs`, not `fs-err`: the
//! errno decides (EBUSY, EACCES), and every error message names the path.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::SandboxError;

/// Resource limits of a run, with the meaning of `docker run`'s and `docker
/// build`'s flags of the same names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `--memory`: bytes of memory (at least 6 MiB, Docker's minimum).
    pub memory: Option<u64>,
    /// `--memory-swap`: memory plus swap, in bytes; `-1`: unlimited swap.
    /// Needs `memory`. Unset with `memory` set: as much swap as memory, like
    /// Docker (where the kernel accounts swap).
    pub memory_swap: Option<i64>,
    /// `--cpu-quota`: microseconds of CPU time per period.
    pub cpu_quota: Option<u64>,
    /// `--cpu-period`: microseconds (default 100000, the kernel's).
    pub cpu_period: Option<u64>,
    /// `--cpuset-cpus`: the CPUs the step may use (`0-3`, `0,1`).
    pub cpuset_cpus: Option<String>,
    /// `--pids-limit`: at most this many processes (threads) at once.
    pub pids: Option<u64>,
}

/// The minimum of `--memory` (Docker's).
pub const MIN_MEMORY: u64 = 6 * 1024 * 1024;

impl Limits {
    /// No limit set: a run needs no cgroup.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// Checks the values on their own (what the kernel will refuse is reported
    /// when the cgroup is made).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(m) = self.memory
            && m < MIN_MEMORY
        {
            return Err(format!(
                "memory limit {m} bytes is below the minimum of 6 MiB"
            ));
        }
        if let Some(s) = self.memory_swap {
            let Some(m) = self.memory else {
                return Err("a memory-swap limit needs a memory limit too".into());
            };
            if s != -1 && (s < 0 || u64::try_from(s).unwrap_or(0) < m) {
                return Err(format!(
                    "memory-swap limit {s} must be at least the memory limit ({m}), or -1 \
                     for unlimited swap"
                ));
            }
        }
        if let Some(p) = self.cpu_period
            && !(1000..=1_000_000).contains(&p)
        {
            return Err(format!(
                "cpu period {p} must be between 1000 and 1000000 microseconds"
            ));
        }
        if let Some(q) = self.cpu_quota
            && q < 1000
        {
            return Err(format!("cpu quota {q} must be at least 1000 microseconds"));
        }
        if let Some(c) = &self.cpuset_cpus
            && (c.is_empty()
                || !c
                    .chars()
                    .all(|ch| ch.is_ascii_digit() || ch == ',' || ch == '-'))
        {
            return Err(format!(
                "cpuset {c:?} is not a list of CPUs (like 0-3 or 0,2)"
            ));
        }
        if self.pids == Some(0) {
            return Err("pids limit 0 would not even allow the process itself".into());
        }
        Ok(())
    }

    fn controllers(&self) -> Vec<Controller> {
        let mut c = Vec::new();
        if self.memory.is_some() {
            c.push(Controller::Memory);
        }
        if self.cpu_quota.is_some() || self.cpu_period.is_some() {
            c.push(Controller::Cpu);
        }
        if self.cpuset_cpus.is_some() {
            c.push(Controller::Cpuset);
        }
        if self.pids.is_some() {
            c.push(Controller::Pids);
        }
        c
    }
}

/// The limit that ended a run (see [`crate::ExitStatus::limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// A process of the step was killed by the OOM killer of its cgroup.
    OutOfMemory,
    /// A fork or clone failed because the pids limit was reached.
    Pids,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Memory,
    Cpu,
    Cpuset,
    Pids,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Cpuset => "cpuset",
            Controller::Pids => "pids",
        }
    }
}

/// Where this process's cgroups are: one directory per v1 hierarchy, or the
/// unified (v2) one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `(controllers of the hierarchy, this process's cgroup directory in it)`.
    V1(Vec<(Vec<String>, PathBuf)>),
    V2 {
        /// Where cgroup2 is mounted (the root of this cgroup namespace).
        mount: PathBuf,
        /// This process's cgroup directory.
        own: PathBuf,
    },
}

/// Undoes the `\040`-style escapes of a mountinfo path.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `dir` for the cgroup `path` of a hierarchy mounted at `mount_point` whose
/// mount shows the cgroup `mount_root`.
fn cgroup_dir(mount_point: &str, mount_root: &str, path: &str) -> Option<PathBuf> {
    let rel = if mount_root == "/" {
        path
    } else {
        let rest = path.strip_prefix(mount_root)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest
    };
    let mut dir = PathBuf::from(mount_point);
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        if c == ".." {
            return None;
        }
        dir.push(c);
    }
    Some(dir)
}

impl Layout {
    /// This process's layout from `/proc/self/mountinfo` and `/proc/self/cgroup`.
    pub(crate) fn current() -> Result<Layout, SandboxError> {
        let read =
            |p: &str| fs_err::read_to_string(p).map_err(|e| SandboxError::Cgroup(e.to_string()));
        Layout::parse(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?)
    }

    pub(crate) fn parse(mountinfo: &str, cgroup: &str) -> Result<Layout, SandboxError> {
        // /proc/self/cgroup: `id:controllers:path`.
        let mut v2_path = None;
        let mut v1_paths: Vec<(Vec<String>, String)> = Vec::new();
        for line in cgroup.lines() {
            let mut it = line.splitn(3, ':');
            let (Some(_), Some(ctls), Some(path)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if ctls.is_empty() {
                v2_path = Some(path.to_owned());
            } else {
                v1_paths.push((
                    ctls.split(',').map(str::to_owned).collect(),
                    path.to_owned(),
                ));
            }
        }
        let mut v1 = Vec::new();
        let mut v2 = None;
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let (root, point) = (unescape(pre[3]), unescape(pre[4]));
            match post[0] {
                "cgroup2" if v2.is_none() => {
                    if let Some(p) = &v2_path
                        && let Some(own) = cgroup_dir(&point, &root, p)
                    {
                        v2 = Some((PathBuf::from(&point), own));
                    }
                }
                "cgroup" => {
                    let opts: Vec<&str> = post[2].split(',').collect();
                    let Some((ctls, path)) = v1_paths
                        .iter()
                        .find(|(ctls, _)| ctls.iter().all(|c| opts.contains(&c.as_str())))
                    else {
                        continue;
                    };
                    if v1.iter().any(|(c, _)| c == ctls) {
                        continue;
                    }
                    if let Some(dir) = cgroup_dir(&point, &root, path) {
                        v1.push((ctls.clone(), dir));
                    }
                }
                _ => {}
            }
        }
        let known = |c: &String| ["memory", "cpu", "cpuset", "pids"].contains(&c.as_str());
        if v1.iter().any(|(ctls, _)| ctls.iter().any(known)) {
            return Ok(Layout::V1(v1));
        }
        match v2 {
            Some((mount, own)) => Ok(Layout::V2 { mount, own }),
            None => Err(SandboxError::Cgroup(
                "no cgroup file system is mounted (neither cgroup v2 at /sys/fs/cgroup nor \
                 v1 controller hierarchies)"
                    .into(),
            )),
        }
    }
}

/// The cgroup of one run; removed on drop.
#[derive(Debug)]
pub(crate) struct StepCgroup {
    /// Every directory made, in order (v1: one per hierarchy).
    dirs: Vec<PathBuf>,
    v2: bool,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn cg_err(what: &str, path: &Path, e: &io::Error) -> SandboxError {
    let hint = match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
            "; resource limits need root, or a cgroup v2 subtree delegated to this user \
             (e.g. systemd-run --user --scope -p Delegate=yes)"
        }
        _ => "",
    };
    SandboxError::Cgroup(format!("{what} {}: {e}{hint}", path.display()))
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), SandboxError> {
    let p = dir.join(file);
    std::fs::write(&p, value).map_err(|e| cg_err(&format!("cannot write {value:?} to"), &p, &e))
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

/// The value of `key` in a flat-keyed cgroup file (`oom_kill 1`).
fn counter(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

impl StepCgroup {
    /// A new cgroup with `limits` in this process's layout; `None` when no
    /// limit is set (nothing is touched then).
    pub(crate) fn create(limits: &Limits) -> Result<Option<StepCgroup>, SandboxError> {
        if limits.is_empty() {
            return Ok(None);
        }
        limits.validate().map_err(SandboxError::InvalidSpec)?;
        let layout = Layout::current()?;
        Self::create_in(&layout, limits, nix::unistd::geteuid().is_root()).map(Some)
    }

    pub(crate) fn create_in(
        layout: &Layout,
        limits: &Limits,
        root: bool,
    ) -> Result<StepCgroup, SandboxError> {
        let name = format!(
            "rbuild-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut cg = StepCgroup {
            dirs: Vec::new(),
            v2: matches!(layout, Layout::V2 { .. }),
            memory: None,
            pids: None,
        };
        let needed = limits.controllers();
        match layout {
            Layout::V1(hiers) => {
                for c in &needed {
                    let Some((_, parent)) = hiers
                        .iter()
                        .find(|(ctls, _)| ctls.iter().any(|n| n == c.name()))
                    else {
                        return Err(SandboxError::Cgroup(format!(
                            "the {} cgroup controller is not mounted here (cgroup v1 without \
                             it); cannot apply the {} limit",
                            c.name(),
                            c.name()
                        )));
                    };
                    sweep_once(parent);
                    let dir = parent.join(&name);
                    if !cg.dirs.contains(&dir) {
                        std::fs::create_dir(&dir)
                            .map_err(|e| cg_err("cannot create the step's cgroup", &dir, &e))?;
                        cg.dirs.push(dir.clone());
                    }
                    cg.set_v1(*c, &dir, parent, limits)?;
                }
            }
            Layout::V2 { mount, own } => {
                let names: Vec<&str> = needed.iter().map(|c| c.name()).collect();
                let parent = match enable_controllers(own, &names) {
                    Ok(()) => own.clone(),
                    // `own` holds processes (rbuild's own among them): as root,
                    // use a cgroup of rbuild's own below the root.
                    Err(e) if root && e.raw_os_error() == Some(libc::EBUSY) => {
                        let base = mount.join("rbuild");
                        enable_controllers(mount, &names)
                            .map_err(|e| cg_err("cannot enable controllers in", mount, &e))?;
                        match std::fs::create_dir(&base) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                            Err(e) => return Err(cg_err("cannot create", &base, &e)),
                        }
                        enable_controllers(&base, &names)
                            .map_err(|e| cg_err("cannot enable controllers in", &base, &e))?;
                        base
                    }
                    Err(e) => {
                        return Err(cg_err(
                            &format!(
                                "cannot enable the {} controller(s) for child cgroups of",
                                names.join(", ")
                            ),
                            own,
                            &e,
                        ));
                    }
                };
                sweep_once(&parent);
                let dir = parent.join(&name);
                std::fs::create_dir(&dir)
                    .map_err(|e| cg_err("cannot create the step's cgroup", &dir, &e))?;
                cg.dirs.push(dir.clone());
                cg.set_v2(&dir, limits)?;
            }
        }
        Ok(cg)
    }

    fn set_v1(
        &mut self,
        c: Controller,
        dir: &Path,
        parent: &Path,
        limits: &Limits,
    ) -> Result<(), SandboxError> {
        match c {
            Controller::Memory => {
                let m = limits.memory.unwrap_or_default();
                write(dir, "memory.limit_in_bytes", &m.to_string())?;
                let memsw = dir.join("memory.memsw.limit_in_bytes").exists();
                match limits.memory_swap {
                    Some(-1) if memsw => write(dir, "memory.memsw.limit_in_bytes", "-1")?,
                    Some(s) if memsw => write(dir, "memory.memsw.limit_in_bytes", &s.to_string())?,
                    Some(_) => {
                        return Err(SandboxError::Cgroup(format!(
                            "cannot apply the memory-swap limit: the kernel does not account \
                             swap here ({} is missing; boot with swapaccount=1)",
                            dir.join("memory.memsw.limit_in_bytes").display()
                        )));
                    }
                    None if memsw => write(
                        dir,
                        "memory.memsw.limit_in_bytes",
                        &m.saturating_mul(2).to_string(),
                    )?,
                    None => {}
                }
                self.memory = Some(dir.to_path_buf());
            }
            Controller::Cpu => {
                if let Some(p) = limits.cpu_period {
                    write(dir, "cpu.cfs_period_us", &p.to_string())?;
                }
                if let Some(q) = limits.cpu_quota {
                    write(dir, "cpu.cfs_quota_us", &q.to_string())?;
                }
            }
            Controller::Cpuset => {
                Self::set_cpus(dir, parent, limits)?;
                // A new v1 cpuset has no memory nodes: the parent's.
                let mems = read(parent, "cpuset.mems").unwrap_or_default();
                write(dir, "cpuset.mems", mems.trim())?;
            }
            Controller::Pids => {
                write(
                    dir,
                    "pids.max",
                    &limits.pids.unwrap_or_default().to_string(),
                )?;
                self.pids = Some(dir.to_path_buf());
            }
        }
        Ok(())
    }

    fn set_cpus(dir: &Path, parent: &Path, limits: &Limits) -> Result<(), SandboxError> {
        let cpus = limits.cpuset_cpus.as_deref().unwrap_or_default();
        write(dir, "cpuset.cpus", cpus).map_err(|e| {
            let avail = read(parent, "cpuset.effective_cpus")
                .or_else(|| read(parent, "cpuset.cpus.effective"))
                .or_else(|| read(parent, "cpuset.cpus"))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default();
            match e {
                SandboxError::Cgroup(m) if !avail.is_empty() => SandboxError::Cgroup(format!(
                    "the cpuset {cpus:?}: {m} (the CPUs available are {avail})"
                )),
                e => e,
            }
        })
    }

    fn set_v2(&mut self, dir: &Path, limits: &Limits) -> Result<(), SandboxError> {
        if let Some(m) = limits.memory {
            write(dir, "memory.max", &m.to_string())?;
            let swap_file = dir.join("memory.swap.max").exists();
            match limits.memory_swap {
                Some(-1) if swap_file => write(dir, "memory.swap.max", "max")?,
                Some(s) if swap_file => write(
                    dir,
                    "memory.swap.max",
                    &u64::try_from(s).unwrap_or(0).saturating_sub(m).to_string(),
                )?,
                Some(_) => {
                    return Err(SandboxError::Cgroup(format!(
                        "cannot apply the memory-swap limit: the kernel does not account \
                         swap here ({} is missing)",
                        dir.join("memory.swap.max").display()
                    )));
                }
                None if swap_file => write(dir, "memory.swap.max", &m.to_string())?,
                None => {}
            }
            self.memory = Some(dir.to_path_buf());
        }
        if limits.cpu_quota.is_some() || limits.cpu_period.is_some() {
            let period = limits.cpu_period.unwrap_or(100_000);
            let quota = limits
                .cpu_quota
                .map_or_else(|| "max".to_owned(), |q| q.to_string());
            write(dir, "cpu.max", &format!("{quota} {period}"))?;
        }
        if limits.cpuset_cpus.is_some() {
            let parent = dir.parent().unwrap_or(dir).to_path_buf();
            Self::set_cpus(dir, &parent, limits)?;
        }
        if let Some(p) = limits.pids {
            write(dir, "pids.max", &p.to_string())?;
            self.pids = Some(dir.to_path_buf());
        }
        Ok(())
    }

    pub(crate) fn is_v2(&self) -> bool {
        self.v2
    }

    /// With cgroup v2: the step cgroup's directory, opened for `clone3`'s
    /// `CLONE_INTO_CGROUP` (init is then born in it).
    pub(crate) fn v2_fd(&self) -> Option<std::os::fd::OwnedFd> {
        if !self.v2 {
            return None;
        }
        let dir = self.dirs.first()?;
        nix::fcntl::open(
            dir.as_path(),
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()
    }

    /// With cgroup v1: the `tasks` file of each of the step's cgroups, where
    /// init writes `0` first thing to move itself in. A thread moving itself
    /// skips the kernel's global threadgroup lock, whose writer side (taken
    /// when another process is moved through `cgroup.procs`) waits for an RCU
    /// grace period: 5 to 15 ms per step on a busy machine.
    pub(crate) fn v1_tasks_files(&self) -> Vec<std::ffi::CString> {
        if self.v2 {
            return Vec::new();
        }
        self.dirs
            .iter()
            .filter_map(|d| {
                std::ffi::CString::new(d.join("tasks").into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// Moves process `pid` (the sandbox's init, waiting on its sync pipe) in
    /// (cgroup v2 on a kernel without `CLONE_INTO_CGROUP`).
    pub(crate) fn add(&self, pid: libc::pid_t) -> Result<(), SandboxError> {
        for d in &self.dirs {
            write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Which limit the run hit, if any: an OOM kill first, then the pids limit.
    pub(crate) fn hit(&self) -> Option<LimitHit> {
        if let Some(d) = &self.memory {
            let (file, key) = if self.v2 {
                ("memory.events", "oom_kill")
            } else {
                ("memory.oom_control", "oom_kill")
            };
            if read(d, file).is_some_and(|t| counter(&t, key) > 0) {
                return Some(LimitHit::OutOfMemory);
            }
        }
        if let Some(d) = &self.pids
            && read(d, "pids.events").is_some_and(|t| counter(&t, "max") > 0)
        {
            return Some(LimitHit::Pids);
        }
        None
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            remove(d);
        }
    }
}

/// Removes an empty cgroup, waiting briefly while the kernel still counts
/// exiting processes in it (EBUSY).
fn remove(dir: &Path) {
    for _ in 0..200 {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => return,
        }
    }
}

/// Enables `names` in `dir/cgroup.subtree_control` (those not yet enabled).
fn enable_controllers(dir: &Path, names: &[&str]) -> io::Result<()> {
    let on = std::fs::read_to_string(dir.join("cgroup.subtree_control"))?;
    let missing: Vec<&&str> = names
        .iter()
        .filter(|n| !on.split_whitespace().any(|o| o == **n))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let available = std::fs::read_to_string(dir.join("cgroup.controllers"))?;
    if let Some(n) = missing
        .iter()
        .find(|n| !available.split_whitespace().any(|a| a == ***n))
    {
        return Err(io::Error::other(format!(
            "the {n} controller is not available (not delegated to {})",
            dir.display()
        )));
    }
    let value = missing
        .iter()
        .map(|n| format!("+{n}"))
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(dir.join("cgroup.subtree_control"), value)
}

/// Once per process and parent: removes the step cgroups a killed rbuild
/// left (`rbuild-<pid>-<n>` whose process is gone). A populated one is never
/// removed (rmdir refuses).
fn sweep_once(parent: &Path) {
    static SWEPT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    {
        let mut swept = SWEPT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if swept.iter().any(|p| p == parent) {
            return;
        }
        swept.push(parent.to_path_buf());
    }
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    let me = std::process::id();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("rbuild-"))
            .and_then(|n| n.split_once('-'))
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != me && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
3:cpuset:/
1:cpu,cpuacct:/x y
0::/
";

    #[test]
    fn hybrid_layout_is_v1_per_hierarchy() {
        let l = Layout::parse(HYBRID_MOUNTS, HYBRID_CGROUP).unwrap();
        let Layout::V1(h) = l else {
            panic!("v1 expected: {l:?}")
        };
        let dir = |c: &str| {
            h.iter()
                .find(|(ctls, _)| ctls.iter().any(|n| n == c))
                .map(|(_, d)| d.clone())
        };
        assert_eq!(
            dir("memory").unwrap(),
            Path::new("/sys/fs/cgroup/memory/process_api/abc")
        );
        assert_eq!(dir("pids").unwrap(), Path::new("/sys/fs/cgroup/pids"));
        assert_eq!(
            dir("cpu").unwrap(),
            Path::new("/sys/fs/cgroup/cpu,cpuacct/x y")
        );
    }

    #[test]
    fn unified_layout_is_v2_with_namespaced_mounts() {
        let mounts = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let l = Layout::parse(mounts, "0::/user.slice/session-1.scope\n").unwrap();
        assert_eq!(
            l,
            Layout::V2 {
                mount: "/sys/fs/cgroup".into(),
                own: "/sys/fs/cgroup/user.slice/session-1.scope".into()
            }
        );
        // A mount of a subtree (a container's view): paths are below its root.
        let mounts = "30 23 0:26 /docker/c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let l = Layout::parse(mounts, "0::/docker/c1/sub\n").unwrap();
        assert_eq!(
            l,
            Layout::V2 {
                mount: "/sys/fs/cgroup".into(),
                own: "/sys/fs/cgroup/sub".into()
            }
        );
        assert!(Layout::parse("", "0::/\n").is_err());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/a\\b"), r"/a\\b");
    }

    #[test]
    fn counters_are_read_by_key() {
        let t = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(counter(t, "oom_kill"), 2);
        assert_eq!(counter("max 0\n", "max"), 0);
        assert_eq!(counter("low 0\nhigh 3\n", "max"), 0);
    }

    #[test]
    fn limits_are_checked_like_docker() {
        let ok = Limits {
            memory: Some(64 << 20),
            memory_swap: Some(-1),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpuset_cpus: Some("0-1".into()),
            pids: Some(100),
        };
        assert!(ok.validate().is_ok());
        for bad in [
            Limits {
                memory: Some(1 << 20),
                ..Limits::default()
            },
            Limits {
                memory_swap: Some(1 << 30),
                ..Limits::default()
            },
            Limits {
                memory: Some(64 << 20),
                memory_swap: Some(1 << 20),
                ..Limits::default()
            },
            Limits {
                cpu_period: Some(10),
                ..Limits::default()
            },
            Limits {
                cpuset_cpus: Some("all".into()),
                ..Limits::default()
            },
            Limits {
                pids: Some(0),
                ..Limits::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(Limits::default().is_empty());
    }

    /// The v2 writes against a directory shaped like a delegated cgroup (the
    /// files the kernel would have): controllers enabled in the parent, the
    /// limits in the step's cgroup, the cgroup gone after drop.
    #[test]
    fn v2_limits_are_written_and_the_cgroup_removed() {
        let t = tempfile::tempdir().unwrap();
        let own = t.path().join("own");
        fs_err::create_dir(&own).unwrap();
        fs_err::write(
            own.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs_err::write(own.join("cgroup.subtree_control"), "memory\n").unwrap();
        let layout = Layout::V2 {
            mount: t.path().to_path_buf(),
            own: own.clone(),
        };
        let limits = Limits {
            memory: Some(64 << 20),
            cpu_quota: Some(50_000),
            pids: Some(100),
            ..Limits::default()
        };
        let cg = StepCgroup::create_in(&layout, &limits, true).unwrap();
        // (A plain file here: the kernel would have taken "+cpu +pids".)
        assert_eq!(
            fs_err::read_to_string(own.join("cgroup.subtree_control")).unwrap(),
            "+cpu +pids"
        );
        let dir = cg.dirs[0].clone();
        assert!(dir.starts_with(&own));
        let get = |f: &str| fs_err::read_to_string(dir.join(f)).unwrap();
        assert_eq!(get("memory.max"), "67108864");
        assert_eq!(get("cpu.max"), "50000 100000");
        assert_eq!(get("pids.max"), "100");
        assert_eq!(cg.hit(), None);
        fs_err::write(dir.join("memory.events"), "low 0\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(cg.hit(), Some(LimitHit::OutOfMemory));
        for f in ["memory.max", "cpu.max", "pids.max", "memory.events"] {
            fs_err::remove_file(dir.join(f)).unwrap();
        }
        drop(cg);
        assert!(!dir.exists());
    }

    /// `clone3(CLONE_INTO_CGROUP)` (the v2 path; the v2 hierarchy of this
    /// machine, `/sys/fs/cgroup` or the hybrid layout's `unified`, has no
    /// controllers but takes processes): the child is in the cgroup from its
    /// first instruction.
    #[test]
    fn clone3_puts_the_child_in_a_v2_cgroup_at_birth() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "cannot run: creating cgroups needs root"
        );
        let mountinfo = fs_err::read_to_string("/proc/self/mountinfo").unwrap();
        let v2_only = mountinfo
            .lines()
            .filter(|l| l.contains(" - cgroup2 "))
            .collect::<Vec<_>>()
            .join("\n");
        let cgroup = fs_err::read_to_string("/proc/self/cgroup").unwrap();
        let Ok(Layout::V2 { mount, own }) = Layout::parse(&v2_only, &cgroup) else {
            panic!("cannot run: cgroup2 is not mounted here:\n{mountinfo}");
        };
        let dir = own.join(format!("rbuild-test-{}", std::process::id()));
        fs_err::create_dir(&dir).unwrap();
        let fd = nix::fcntl::open(
            &dir,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let pid = match crate::sys::clone_into_cgroup(0, std::os::fd::AsRawFd::as_raw_fd(&fd)) {
            Ok(0) => {
                crate::sys::read_byte(std::os::fd::AsRawFd::as_raw_fd(&r));
                crate::sys::exit(0)
            }
            Ok(pid) => pid,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                panic!("clone3 with CLONE_INTO_CGROUP failed: {e}");
            }
        };
        let seen = fs_err::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        nix::unistd::write(&w, b"1").unwrap();
        let (_, status) = crate::sys::waitpid(pid).unwrap();
        remove(&dir);
        let rel = dir.strip_prefix(&mount).unwrap();
        assert!(
            seen.lines().any(|l| l == format!("0::/{}", rel.display())),
            "{seen}"
        );
        assert_eq!(status, 0);
        assert!(!dir.exists());
    }

    #[test]
    fn a_controller_that_is_not_delegated_is_named() {
        let t = tempfile::tempdir().unwrap();
        let own = t.path().join("own");
        fs_err::create_dir(&own).unwrap();
        fs_err::write(own.join("cgroup.controllers"), "memory\n").unwrap();
        fs_err::write(own.join("cgroup.subtree_control"), "").unwrap();
        let layout = Layout::V2 {
            mount: t.path().to_path_buf(),
            own,
        };
        let e = StepCgroup::create_in(
            &layout,
            &Limits {
                pids: Some(10),
                ..Limits::default()
            },
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pids controller is not available"), "{e}");
    }
}

//! What runs after the fork: the sandbox's init (pid 1 of the new pid namespace)
//! and the step's main process.
//!
//! The parent prepares a [`Plan`] (every path, string and array allocated up
//! front); the code here only walks it with the allocation-free calls of
//! [`crate::sys`], so it is safe to run in the child of a multi-threaded parent.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use libc::{c_char, c_ulong};

use crate::sys::{self, Errno};

/// One step of the mount setup.
pub(crate) enum Op {
    /// mkdir; `remove` = remove it again after the run when this run created it.
    Mkdir {
        path: CString,
        mode: u32,
        remove: bool,
        chown: Option<(u32, u32)>,
    },
    /// Create an empty file (a mount point for a file); same `remove` rule.
    MkFile {
        path: CString,
        remove: bool,
        optional: bool,
    },
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: c_ulong,
        data: Option<CString>,
        /// Options to mount with instead when the kernel refuses `data` with
        /// `EINVAL` (an overlay option an older kernel does not know).
        retry_data: Option<CString>,
        optional: bool,
    },
    /// Remount a bind mount read-only (keeping its locked flags).
    RemountRo {
        target: CString,
        optional: bool,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// `pivot_root` into the directory, detach the old root.
    PivotRoot {
        dir: CString,
    },
    /// Before the pivot: clone the mount tree at a host path (`open_tree`) to fd
    /// number `fd` (reserved by the parent's own fd for that path). A bind source
    /// must be in the sandbox's mount namespace, and after the pivot the host paths
    /// are gone: the detached copy is attached later by `MoveMount`.
    OpenTree {
        path: CString,
        fd: RawFd,
    },
    /// Create a file with these contents, mode and owner (exclusively).
    WriteFile {
        path: CString,
        data: Vec<u8>,
        mode: u32,
        owner: (u32, u32),
    },
    /// Remove a file (errors ignored).
    Unlink {
        path: CString,
    },
    /// After the pivot: attach the tree of an `OpenTree` at `target`, first made
    /// `nodev` (every mount of it) when `nodev` is set.
    MoveMount {
        fd: RawFd,
        target: CString,
        optional: bool,
        nodev: bool,
    },
    /// Make the mount at `target` and every mount below it `nodev`: device nodes
    /// there can still be made (`mknod`) but not opened.
    Nodev {
        target: CString,
    },
}

impl Op {
    fn path(&self) -> &CStr {
        match self {
            Op::Mkdir { path, .. }
            | Op::MkFile { path, .. }
            | Op::OpenTree { path, .. }
            | Op::WriteFile { path, .. }
            | Op::Unlink { path } => path,
            Op::Mount { target, .. }
            | Op::RemountRo { target, .. }
            | Op::MoveMount { target, .. }
            | Op::Nodev { target } => target,
            Op::Symlink { link, .. } => link,
            Op::PivotRoot { dir } => dir,
        }
    }
}

#[allow(clippy::struct_excessive_bools)] // independent switches of one flat plan
pub(crate) struct Plan {
    pub ops: Vec<Op>,
    /// For ops before the pivot: how many leading bytes of the path are the host
    /// path of the rootfs (0 after the pivot). Used to name paths inside for cleanup.
    pub inside_offset: Vec<usize>,
    /// Filled by the child: which `Mkdir`/`MkFile`/`Mount` ops took effect.
    pub done: Vec<bool>,
    pub hostname: CString,
    pub loopback_up: bool,
    pub cwd: CString,
    pub exec_candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub argv_ptrs: Vec<*const c_char>,
    #[allow(dead_code)] // owns the strings `envp_ptrs` points to
    pub envp: Vec<CString>,
    pub envp_ptrs: Vec<*const c_char>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    pub set_groups: bool,
    /// `None`: keep every capability (`security=insecure`).
    pub caps: Option<u64>,
    pub last_cap: u32,
    pub no_new_privs: bool,
    /// `setrlimit`s before the credentials change: (resource, soft, hard).
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    /// The seccomp program to install just before exec (see `crate::seccomp`).
    pub seccomp: Option<std::sync::Arc<Vec<libc::sock_filter>>>,
    pub stdio: [RawFd; 3],
    /// Unix socket to send a new pty's master to the parent over (-1: no pty).
    pub pty_sock: RawFd,
    /// Write end of the error pipe (close-on-exec: EOF in the parent = exec done).
    pub err_fd: RawFd,
    /// Write end of the status pipe: init writes the main process's wait status.
    pub status_fd: RawFd,
    /// Read end of the sync pipe (-1 without a user namespace or cgroup): init
    /// waits for a byte until the parent has set up its id maps and cgroup.
    pub sync_fd: RawFd,
    /// cgroup v1 `tasks` files init writes `0` to after the sync (moving
    /// itself into the step's cgroups).
    pub cgroup_join: Vec<CString>,
    /// Unshare the cgroup namespace after that (init is then in the step's
    /// cgroup, which becomes the namespace's root).
    pub unshare_cgroupns: bool,
    /// Read end of the network sync pipe: a byte once the network helper has
    /// configured the namespace (-1 without a private network).
    pub net_fd: RawFd,
    /// Fds init keeps, sorted; every other fd is closed first thing.
    pub keep_fds: Vec<RawFd>,
}

pub(crate) const KIND_SETUP: u8 = b'S';
pub(crate) const KIND_EXEC: u8 = b'E';

/// Reports an error to the parent: errno (4 bytes LE), kind, what, ": ", path.
fn report(fd: RawFd, kind: u8, errno: Errno, what: &str, path: &CStr) {
    // One write so concurrent writers do not interleave (below PIPE_BUF).
    let mut buf = [0u8; 1024];
    let mut n = 0;
    let mut put = |b: &[u8]| {
        let take = b.len().min(buf.len() - n);
        buf[n..n + take].copy_from_slice(&b[..take]);
        n += take;
    };
    put(&(errno as i32).to_le_bytes());
    put(&[kind]);
    put(what.as_bytes());
    put(b": ");
    put(path.to_bytes());
    sys::write_all(fd, &buf[..n]);
}

fn fail(plan: &Plan, what: &str, path: &CStr, e: Errno) -> ! {
    report(plan.err_fd, KIND_SETUP, e, what, path);
    sys::exit(125)
}

/// The child right after `clone`: becomes the sandbox's init. Never returns.
pub(crate) fn init(plan: &mut Plan) -> ! {
    // Die with the parent thread (rbuild killed → every process of the step dies
    // with this pid 1).
    let _ = sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong);
    sys::set_name(c"rbuild-init");
    if plan.sync_fd >= 0 && !sys::read_byte(plan.sync_fd) {
        // The parent gave up (could not write the id maps or the cgroup).
        sys::exit(125);
    }
    for tasks in &plan.cgroup_join {
        if let Err(e) = sys::write_file(tasks, b"0") {
            fail(plan, "join the step's cgroup", tasks, e);
        }
    }
    if plan.unshare_cgroupns
        && let Err(e) = sys::unshare(libc::CLONE_NEWCGROUP)
    {
        fail(plan, "unshare the cgroup namespace", c"", e);
    }
    sys::reset_signals();
    close_other_fds(&plan.keep_fds);
    sys::umask(0);

    for i in 0..plan.ops.len() {
        match run_op(&plan.ops[i]) {
            Ok(true) => plan.done[i] = true,
            Ok(false) => {}
            Err((what, e)) => {
                report(plan.err_fd, KIND_SETUP, e, what, plan.ops[i].path());
                cleanup(plan);
                sys::exit(125);
            }
        }
    }
    if let Err(e) = sys::sethostname(&plan.hostname) {
        fail(plan, "sethostname", &plan.hostname, e);
    }
    if plan.loopback_up
        && let Err(e) = sys::loopback_up()
    {
        fail(plan, "bring up loopback interface", c"lo", e);
    }

    if plan.pty_sock >= 0 {
        // A terminal from the sandbox's own devpts: the master goes to the parent,
        // the slave becomes the main process's stdio and controlling terminal.
        let (master, slave) = match sys::open_pty() {
            Ok(p) => p,
            Err(e) => fail(plan, "open a pseudo-terminal", c"/dev/ptmx", e),
        };
        if let Err(e) = sys::send_fd(plan.pty_sock, master) {
            fail(plan, "pass the terminal to rbuild", c"", e);
        }
        sys::close(master);
        sys::close(plan.pty_sock);
        plan.stdio = [slave, slave, slave];
    }
    if plan.net_fd >= 0 {
        if !sys::read_byte(plan.net_fd) {
            // The parent gave up (the network helper failed; it reports why).
            cleanup(plan);
            sys::exit(125);
        }
        sys::close(plan.net_fd);
    }
    let main = match sys::clone_fork(0) {
        Ok(0) => exec_main(plan),
        Ok(pid) => pid,
        Err(e) => fail(plan, "fork", c"main process", e),
    };
    // Only the main process (and the parent) may hold these now.
    sys::close(plan.err_fd);
    for fd in plan.stdio {
        if fd > 2 {
            sys::close(fd);
        }
    }

    // Reap every child; the step ends when the main process ends.
    let main_status = loop {
        match sys::waitpid(-1) {
            Ok((pid, status)) if pid == main => break status,
            Ok(_) => {}
            Err(_) => break 0x7f00, // no children left: cannot happen; report 127
        }
    };
    // Kill what the step left running, reap it, then undo the mounts and remove
    // the mount points this run created, so they never end up in the layer.
    sys::kill(-1, libc::SIGKILL);
    while sys::waitpid(-1).is_ok() {}
    cleanup(plan);
    sys::write_all(plan.status_fd, &main_status.to_le_bytes());
    sys::exit(0)
}

fn close_other_fds(keep: &[RawFd]) {
    let mut next: u32 = 3;
    for &fd in keep {
        let Ok(fd) = u32::try_from(fd) else { continue };
        if fd < next {
            continue;
        }
        if fd > next {
            sys::close_range(next, fd - 1);
        }
        next = fd + 1;
    }
    sys::close_range(next, u32::MAX);
}

/// Runs one op: Ok(true) when it created/mounted something.
fn run_op(op: &Op) -> Result<bool, (&'static str, Errno)> {
    match op {
        Op::Mkdir {
            path, mode, chown, ..
        } => match sys::mkdir(path, *mode) {
            Ok(()) => {
                if let Some((uid, gid)) = chown {
                    sys::chown(path, *uid, *gid).map_err(|e| ("chown", e))?;
                }
                Ok(true)
            }
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(("mkdir", e)),
        },
        Op::MkFile { path, optional, .. } => match sys::create_file(path, 0o644) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(_) if *optional => Ok(false),
            Err(e) => Err(("create mount point", e)),
        },
        Op::Mount {
            source,
            target,
            fstype,
            flags,
            data,
            retry_data,
            optional,
        } => match sys::mount(
            source.as_deref(),
            target,
            fstype.as_deref(),
            *flags,
            data.as_deref(),
        )
        .or_else(|e| match retry_data {
            Some(d) if e == Errno::EINVAL => sys::mount(
                source.as_deref(),
                target,
                fstype.as_deref(),
                *flags,
                Some(d),
            ),
            _ => Err(e),
        }) {
            Ok(()) => Ok(true),
            Err(_) if *optional => Ok(false),
            Err(e) => Err(("mount", e)),
        },
        Op::RemountRo { target, optional } => {
            let res = sys::locked_mount_flags(target).and_then(|locked| {
                sys::mount(
                    None,
                    target,
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | locked,
                    None,
                )
            });
            match res {
                Ok(()) => Ok(false),
                Err(_) if *optional => Ok(false),
                Err(e) => Err(("remount read-only", e)),
            }
        }
        Op::Symlink { target, link } => match sys::symlink(target, link) {
            Ok(()) | Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(("symlink", e)),
        },
        Op::WriteFile {
            path,
            data,
            mode,
            owner,
        } => {
            sys::write_new_file(path, data, *mode, *owner).map_err(|e| ("write", e))?;
            Ok(false)
        }
        Op::Unlink { path } => {
            let _ = sys::unlink(path);
            Ok(false)
        }
        Op::OpenTree { path, fd } => {
            sys::open_tree_at(path, *fd).map_err(|e| ("open_tree", e))?;
            Ok(false)
        }
        Op::MoveMount {
            fd,
            target,
            optional,
            nodev,
        } => {
            if *nodev {
                sys::set_nodev_fd(*fd).map_err(|e| ("set nodev on the mount", e))?;
            }
            match sys::move_mount(*fd, target) {
                Ok(()) => Ok(true),
                Err(_) if *optional => Ok(false),
                Err(e) => Err(("mount", e)),
            }
        }
        Op::Nodev { target } => {
            sys::set_nodev_recursive(target).map_err(|e| ("set nodev on the mount", e))?;
            Ok(false)
        }
        Op::PivotRoot { dir } => {
            sys::chdir(dir).map_err(|e| ("chdir", e))?;
            sys::pivot_root_here().map_err(|e| ("pivot_root", e))?;
            sys::umount_detach(c".").map_err(|e| ("detach old root", e))?;
            sys::chdir(c"/").map_err(|e| ("chdir", e))?;
            Ok(false)
        }
    }
}

/// After the main process: unmount in reverse order, then remove the mount points
/// this run created (only while empty), in reverse order.
fn cleanup(plan: &Plan) {
    let _ = sys::chdir(c"/");
    let inside = |i: usize| -> Option<&CStr> {
        let bytes = plan.ops[i].path().to_bytes_with_nul();
        let off = plan.inside_offset[i];
        if off == 0 {
            return Some(plan.ops[i].path());
        }
        // Paths before the pivot: strip the rootfs prefix; the rootfs itself is "/".
        let rest = bytes.get(off..)?;
        if rest == b"\0" {
            return None;
        }
        CStr::from_bytes_with_nul(rest).ok()
    };
    // Only mounts on mount points this run created need undoing (a lazy detach
    // takes the mounts below along); the rest go with the mount namespace.
    for i in (0..plan.ops.len()).rev() {
        if !plan.done[i] || !matches!(plan.ops[i], Op::Mount { .. } | Op::MoveMount { .. }) {
            continue;
        }
        let created_here = (0..i).any(|j| {
            plan.done[j]
                && matches!(
                    plan.ops[j],
                    Op::Mkdir { remove: true, .. } | Op::MkFile { remove: true, .. }
                )
                && plan.ops[j].path() == plan.ops[i].path()
        });
        if created_here && let Some(p) = inside(i) {
            let _ = sys::umount_detach(p);
        }
    }
    for i in (0..plan.ops.len()).rev() {
        if !plan.done[i] {
            continue;
        }
        match &plan.ops[i] {
            Op::Mkdir { remove: true, .. } => {
                if let Some(p) = inside(i) {
                    let _ = sys::rmdir(p);
                }
            }
            Op::MkFile { remove: true, .. } => {
                if let Some(p) = inside(i)
                    && let Ok((true, 0)) = sys::stat_file(p)
                {
                    let _ = sys::unlink(p);
                }
            }
            _ => {}
        }
    }
}

fn install_seccomp(plan: &Plan) {
    if let Some(prog) = &plan.seccomp
        && let Err(e) = sys::seccomp_filter(prog)
    {
        fail(plan, "install the seccomp filter", c"", e);
    }
}

/// The main process: stdio, cwd, credentials, capabilities, exec.
fn exec_main(plan: &Plan) -> ! {
    sys::setsid();
    sys::umask(0o022);
    for (i, &fd) in plan.stdio.iter().enumerate() {
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        if let Err(e) = sys::dup2(fd, i as RawFd) {
            fail(plan, "set up stdio", c"", e);
        }
    }
    if plan.pty_sock >= 0
        && let Err(e) = sys::set_controlling_tty(0)
    {
        fail(plan, "set the controlling terminal", c"", e);
    }
    if let Err(e) = sys::chdir(&plan.cwd) {
        fail(plan, "chdir to working directory", &plan.cwd, e);
    }
    // Without no_new_privs (security=insecure) a filter needs CAP_SYS_ADMIN:
    // installed while the process still has every capability.
    if !plan.no_new_privs {
        install_seccomp(plan);
    }
    for &(resource, soft, hard) in &plan.rlimits {
        if let Err(e) = sys::setrlimit(resource, soft, hard) {
            fail(plan, "setrlimit (--ulimit)", c"", e);
        }
    }
    if plan.set_groups
        && let Err(e) = sys::setgroups(&plan.groups)
    {
        fail(plan, "setgroups", c"", e);
    }
    if let Err(e) = sys::setresgid(plan.gid) {
        fail(plan, "setgid", c"", e);
    }
    if let Some(keep) = plan.caps {
        for cap in 0..=plan.last_cap {
            if keep & (1u64 << cap) == 0 {
                // EINVAL for caps the kernel does not know: ignore.
                let _ = sys::prctl(libc::PR_CAPBSET_DROP, c_ulong::from(cap));
            }
        }
    }
    if let Err(e) = sys::setresuid(plan.uid) {
        fail(plan, "setuid", c"", e);
    }
    if plan.uid == 0
        && let Some(keep) = plan.caps
        && let Err(e) = sys::capset(keep)
    {
        fail(plan, "capset", c"", e);
    }
    if plan.no_new_privs
        && let Err(e) = sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
    {
        fail(plan, "set no_new_privs", c"", e);
    }
    if plan.no_new_privs {
        install_seccomp(plan);
    }
    let mut err = Errno::ENOENT;
    for cand in &plan.exec_candidates {
        let e = sys::execve(cand, &plan.argv_ptrs, &plan.envp_ptrs);
        // Like execvp: keep searching past missing entries, remember EACCES.
        match e {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => err = e,
            _ => {
                err = e;
                break;
            }
        }
    }
    report(plan.err_fd, KIND_EXEC, err, "exec", &plan.argv[0]);
    sys::exit(if err == Errno::ENOENT { 127 } else { 126 })
}

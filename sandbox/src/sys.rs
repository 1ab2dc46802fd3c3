//! The raw system calls of the sandbox: the one module of the workspace holding
//! `unsafe` code, each block commented.
//!
//! Every function here is allocation-free and async-signal-safe so that it can be
//! called between `clone` and `execve` in a child of a multi-threaded parent (where
//! another thread may have held the allocator's lock at the time of the fork).
//! Paths are passed as `&CStr` prepared by the parent before the fork.

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::ptr;

use libc::{c_char, c_int, c_ulong};
pub use nix::errno::Errno;

pub type SysResult<T> = Result<T, Errno>;

fn check(ret: c_int) -> SysResult<c_int> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn check_long(ret: libc::c_long) -> SysResult<libc::c_long> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

fn opt_ptr(s: Option<&CStr>) -> *const c_char {
    s.map_or(ptr::null(), CStr::as_ptr)
}

/// `clone(flags | SIGCHLD)` without a new stack: like `fork`, the child continues on
/// a copy of the parent's stack and returns 0; the parent gets the child's pid.
pub fn clone_fork(flags: c_int) -> SysResult<libc::pid_t> {
    // SAFETY: the raw clone syscall with a null stack pointer behaves like fork(2):
    // the child gets a copy-on-write copy of the address space, including this stack
    // frame. No pointers are passed. The caller's child branch only calls the
    // allocation-free functions of this module and ends in execve or _exit.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            c_ulong::from(u32::from_ne_bytes(flags.to_ne_bytes())) | libc::SIGCHLD as c_ulong,
            ptr::null_mut::<libc::c_void>(),
            ptr::null_mut::<libc::c_void>(),
            ptr::null_mut::<libc::c_void>(),
            0 as c_ulong,
        )
    };
    check_long(ret).map(|p| libc::pid_t::try_from(p).unwrap_or(-1))
}

/// `struct clone_args` of `clone3(2)` (the version with `cgroup`).
#[repr(C, align(8))]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Like [`clone_fork`], with the child born in the cgroup v2 directory
/// `cgroup_fd` (`clone3` with `CLONE_INTO_CGROUP`): no move afterwards, which
/// on a busy machine costs the writer side of the kernel's threadgroup lock
/// (an RCU grace period, milliseconds). `ENOSYS`/`E2BIG` on kernels before 5.7.
pub fn clone_into_cgroup(flags: c_int, cgroup_fd: RawFd) -> SysResult<libc::pid_t> {
    let args = CloneArgs {
        flags: u64::from(u32::from_ne_bytes(flags.to_ne_bytes())) | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: u64::try_from(cgroup_fd).map_err(|_| Errno::EBADF)?,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with no stack (0/0) behaves like fork(2), as in
    // `clone_fork`: the child continues on a copy-on-write copy of this stack
    // and returns 0. `args` is a valid clone_args of the size passed, alive
    // for the call; the kernel only reads it. The caller's child branch only
    // calls the allocation-free functions of this module.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    check_long(ret).map(|p| libc::pid_t::try_from(p).unwrap_or(-1))
}

pub fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: c_ulong,
    data: Option<&CStr>,
) -> SysResult<()> {
    // SAFETY: all pointers are NUL-terminated strings or null, valid for the call.
    check(unsafe {
        libc::mount(
            opt_ptr(src),
            target.as_ptr(),
            opt_ptr(fstype),
            flags,
            opt_ptr(data).cast(),
        )
    })
    .map(drop)
}

pub fn umount_detach(target: &CStr) -> SysResult<()> {
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

pub fn mkdir(path: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::mkdir(path.as_ptr(), mode) }).map(drop)
}

pub fn rmdir(path: &CStr) -> SysResult<()> {
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::rmdir(path.as_ptr()) }).map(drop)
}

pub fn unlink(path: &CStr) -> SysResult<()> {
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::unlink(path.as_ptr()) }).map(drop)
}

/// Creates an empty file; `Err(EEXIST)` when something is already there.
pub fn create_file(path: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: valid NUL-terminated path; the fd is closed right away.
    let fd = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            mode,
        )
    })?;
    close(fd);
    Ok(())
}

/// Creates `path` (it must not exist) with `data`, `mode` and `owner`.
pub fn write_new_file(path: &CStr, data: &[u8], mode: u32, owner: (u32, u32)) -> SysResult<()> {
    // SAFETY: valid NUL-terminated path.
    let fd = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            0o600,
        )
    })?;
    let mut rest = data;
    let mut res = Ok(());
    while !rest.is_empty() {
        // SAFETY: pointer and length describe `rest`.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            res = Err(e);
            break;
        }
        rest = &rest[usize::try_from(n).unwrap_or(0)..];
    }
    // SAFETY: integer fd and ids / mode.
    let res = res
        .and_then(|()| check(unsafe { libc::fchown(fd, owner.0, owner.1) }).map(drop))
        .and_then(|()| check(unsafe { libc::fchmod(fd, mode) }).map(drop));
    close(fd);
    res
}

/// `(is_regular_file, size)` of `path`, following symlinks.
pub fn stat_file(path: &CStr) -> SysResult<(bool, i64)> {
    // SAFETY: zeroed stat is a valid out-parameter; the path is NUL-terminated.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    check(unsafe { libc::stat(path.as_ptr(), &raw mut st) })?;
    Ok((st.st_mode & libc::S_IFMT == libc::S_IFREG, st.st_size))
}

/// Mount flags of the filesystem at `path` that a read-only remount must keep (in a
/// user namespace the kernel refuses to clear locked flags).
pub fn locked_mount_flags(path: &CStr) -> SysResult<c_ulong> {
    // SAFETY: zeroed statvfs is a valid out-parameter; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    check(unsafe { libc::statvfs(path.as_ptr(), &raw mut st) })?;
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

pub fn symlink(target: &CStr, link: &CStr) -> SysResult<()> {
    // SAFETY: valid NUL-terminated strings.
    check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }).map(drop)
}

pub fn chown(path: &CStr, uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::chown(path.as_ptr(), uid, gid) }).map(drop)
}

pub fn chdir(path: &CStr) -> SysResult<()> {
    // SAFETY: valid NUL-terminated path.
    check(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
}

pub fn pivot_root_here() -> SysResult<()> {
    let dot = c".";
    // SAFETY: pivot_root(".", ".") with valid strings: stacks the old root on top of
    // the new one at the current directory (see pivot_root(2), NOTES).
    check_long(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) }).map(drop)
}

pub fn sethostname(name: &CStr) -> SysResult<()> {
    let b = name.to_bytes();
    // SAFETY: pointer and length describe the bytes of `name`.
    check(unsafe { libc::sethostname(b.as_ptr().cast(), b.len()) }).map(drop)
}

// The credential calls below are raw syscalls on purpose: glibc's wrappers
// (setgroups, setresuid, setresgid) broadcast the change to every thread of the
// process and take glibc's thread-list lock to do so. After a raw `clone` from a
// multi-threaded parent, glibc still believes in the parent's threads and the lock
// may have been copied held: the wrappers would deadlock. The raw syscalls change
// the calling thread only, which here is the whole process.

pub fn setgroups(groups: &[libc::gid_t]) -> SysResult<()> {
    // SAFETY: pointer and length describe the slice.
    check_long(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })
        .map(drop)
}

pub fn setresgid(gid: u32) -> SysResult<()> {
    // SAFETY: plain integer arguments.
    check_long(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(drop)
}

pub fn setresuid(uid: u32) -> SysResult<()> {
    // SAFETY: plain integer arguments.
    check_long(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
}

pub fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> SysResult<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `limit` is a valid rlimit that outlives the call, which only reads it.
    check(unsafe { libc::setrlimit(resource, &raw const limit) }).map(drop)
}

pub fn setsid() {
    // SAFETY: no arguments; failure (already a group leader) is harmless.
    unsafe { libc::setsid() };
}

pub fn prctl(option: c_int, arg: c_ulong) -> SysResult<()> {
    // SAFETY: the prctl options used here (PR_SET_PDEATHSIG, PR_CAPBSET_DROP,
    // PR_SET_NO_NEW_PRIVS, PR_SET_KEEPCAPS) take integer arguments only.
    check(unsafe { libc::prctl(option, arg, 0 as c_ulong, 0 as c_ulong, 0 as c_ulong) }).map(drop)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets the effective, permitted and inheritable capability sets to `caps`.
pub fn capset(caps: u64) -> SysResult<()> {
    let mut header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    #[allow(clippy::cast_possible_truncation)]
    let (lo, hi) = (caps as u32, (caps >> 32) as u32);
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: lo,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: hi,
        },
    ];
    // SAFETY: header and two data structs as capset(2) wants for version 3.
    check_long(unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) }).map(drop)
}

pub fn dup2(from: RawFd, to: RawFd) -> SysResult<()> {
    if from == to {
        return clear_cloexec(to);
    }
    // SAFETY: integer fds; dup2 clears FD_CLOEXEC on `to`.
    check(unsafe { libc::dup2(from, to) }).map(drop)
}

fn clear_cloexec(fd: RawFd) -> SysResult<()> {
    // SAFETY: integer fd and flag.
    check(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map(drop)
}

pub fn close(fd: RawFd) {
    // SAFETY: closes an fd this process owns (a copy inherited over the fork).
    unsafe { libc::close(fd) };
}

/// Closes every fd in `first..=last`.
pub fn close_range(first: u32, last: u32) {
    // SAFETY: close_range(2) on integer bounds; errors (old kernels) are ignored,
    // the fds are close-on-exec anyway.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as c_ulong) };
}

pub fn write_all(fd: RawFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: pointer and length describe `buf`.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            return;
        }
        buf = &buf[usize::try_from(n).unwrap_or(0)..];
    }
}

/// Blocks until one byte (or EOF) arrives on `fd`; true when a byte came.
pub fn read_byte(fd: RawFd) -> bool {
    let mut b = 0u8;
    loop {
        // SAFETY: reads at most one byte into `b`.
        let n = unsafe { libc::read(fd, (&raw mut b).cast(), 1) };
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        return n == 1;
    }
}

/// `waitpid(pid, 0)`, retried on EINTR: `(pid, raw status)`.
pub fn waitpid(pid: libc::pid_t) -> SysResult<(libc::pid_t, c_int)> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-parameter.
        let r = unsafe { libc::waitpid(pid, &raw mut status, libc::__WALL) };
        if r == -1 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(e);
        }
        return Ok((r, status));
    }
}

pub fn kill(pid: libc::pid_t, sig: c_int) {
    // SAFETY: integer arguments.
    unsafe { libc::kill(pid, sig) };
}

pub fn exit(code: c_int) -> ! {
    // SAFETY: _exit ends the process without running Rust or libc destructors,
    // which must not run in a forked child.
    unsafe { libc::_exit(code) }
}

/// Resets every signal disposition to the default and unblocks all signals (a
/// forked child inherits the parent's handlers and mask; ignored signals such as
/// Rust's SIGPIPE would stay ignored across execve).
pub fn reset_signals() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: SIG_DFL is a valid disposition for every catchable signal;
        // errors (for signals reserved by libc) are ignored.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: an empty, initialised set passed by pointer.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const set, ptr::null_mut());
    }
}

/// `execve(path, argv, envp)`; returns only on failure.
pub fn execve(path: &CStr, argv: &[*const c_char], envp: &[*const c_char]) -> Errno {
    // SAFETY: argv and envp are null-terminated arrays of pointers to NUL-terminated
    // strings owned by the caller's plan, alive for the call.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Errno::last()
}

/// Brings the loopback interface up (in a fresh network namespace it is down).
pub fn loopback_up() -> SysResult<()> {
    // SAFETY: a plain socket(2) call.
    let sock =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name[0] = c_char::try_from(b'l').unwrap_or(0);
    req.ifr_name[1] = c_char::try_from(b'o').unwrap_or(0);
    // SAFETY: SIOCGIFFLAGS / SIOCSIFFLAGS read and write `req`, a valid ifreq.
    let r = unsafe {
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &raw mut req) == -1 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
            libc::ioctl(sock, libc::SIOCSIFFLAGS, &raw mut req)
        }
    };
    let res = check(r).map(drop);
    close(sock);
    res
}

/// `pidfd_open(pid)`: an fd that becomes readable when the process exits.
pub fn pidfd_open(pid: libc::pid_t) -> SysResult<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: integer arguments.
    let fd = check_long(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as c_ulong) })?;
    let fd = RawFd::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd; we are its only owner.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

pub fn poll(fds: &mut [libc::pollfd], timeout_ms: c_int) -> SysResult<c_int> {
    let n = libc::nfds_t::try_from(fds.len()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: pointer and length describe the slice of pollfd structs.
    check(unsafe { libc::poll(fds.as_mut_ptr(), n, timeout_ms) })
}

pub fn umask(mask: u32) {
    // SAFETY: integer argument.
    unsafe { libc::umask(mask) };
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `open_tree(path, OPEN_TREE_CLONE | AT_RECURSIVE)`: a detached copy of the mount
/// tree at `path`, put at fd number `at`. Such a copy can be attached with
/// [`move_mount`] after the pivot, when `path` itself is no longer reachable.
pub fn open_tree_at(path: &CStr, at: RawFd) -> SysResult<()> {
    // SAFETY: valid NUL-terminated path and integer flags.
    let fd = check_long(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    })?;
    let fd = RawFd::try_from(fd).map_err(|_| Errno::EBADF)?;
    if fd == at {
        return Ok(());
    }
    // SAFETY: integer fds; `at` is an fd number this process owns.
    let r = check(unsafe { libc::dup3(fd, at, libc::O_CLOEXEC) });
    close(fd);
    r.map(drop)
}

/// Attaches the detached mount tree `fd` (from [`open_tree_at`]) at `target`.
pub fn move_mount(fd: RawFd, target: &CStr) -> SysResult<()> {
    // SAFETY: an fd, an empty string, and a valid NUL-terminated path.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Sets `nodev` on the mount at `path` and every mount below it
/// (`mount_setattr(AT_RECURSIVE, MOUNT_ATTR_NODEV)`): device nodes on them can be
/// created but not opened. The other flags (locked ones included) are left alone.
pub fn set_nodev_recursive(path: &CStr) -> SysResult<()> {
    set_nodev_at(libc::AT_FDCWD, path, 0)
}

/// Like [`set_nodev_recursive`] for the (detached) mount tree of `fd`.
pub fn set_nodev_fd(fd: RawFd) -> SysResult<()> {
    set_nodev_at(fd, c"", libc::AT_EMPTY_PATH as libc::c_uint)
}

fn set_nodev_at(dirfd: RawFd, path: &CStr, flags: libc::c_uint) -> SysResult<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a NUL-terminated path, a pointer to a mount_attr that lives for the
    // call and its exact size, as mount_setattr(2) wants.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags | AT_RECURSIVE,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// Names the calling thread (what `ps` shows as its command name).
pub fn set_name(name: &CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
}

/// Opens a new pseudo-terminal in this mount namespace's `/dev/ptmx`:
/// `(master, slave)`.
pub fn open_pty() -> SysResult<(RawFd, RawFd)> {
    // SAFETY: valid NUL-terminated path.
    let master = check(unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    })?;
    let unlock: c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int; TIOCGPTPEER takes open flags and returns
    // a new fd for the slave side.
    let slave = unsafe {
        if libc::ioctl(master, libc::TIOCSPTLCK, &raw const unlock) == -1 {
            -1
        } else {
            libc::ioctl(
                master,
                libc::TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        }
    };
    match check(slave) {
        Ok(slave) => Ok((master, slave)),
        Err(e) => {
            close(master);
            Err(e)
        }
    }
}

/// Makes the terminal on `fd` the calling process's controlling terminal.
pub fn set_controlling_tty(fd: RawFd) -> SysResult<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) }).map(drop)
}

/// Copies the window size of the terminal `from` to the terminal `to`.
pub fn copy_winsize(from: RawFd, to: RawFd) {
    // SAFETY: zeroed winsize is valid; TIOCGWINSZ/TIOCSWINSZ read/write it.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(from, libc::TIOCGWINSZ, &raw mut ws) == 0 {
            libc::ioctl(to, libc::TIOCSWINSZ, &raw const ws);
        }
    }
}

const FD_SPACE: usize = 64;

/// Sends `fd` over the unix socket `sock` (`SCM_RIGHTS`).
pub fn send_fd(sock: RawFd, fd: RawFd) -> SysResult<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut space = [0u8; FD_SPACE];
    // SAFETY: msghdr points at the iovec and the control buffer above, both alive
    // and large enough for one fd (CMSG_SPACE(4) = 24 on Linux, buffer is 64).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>(), fd);
        check_long(libc::sendmsg(sock, &raw const msg, 0) as libc::c_long).map(drop)
    }
}

/// Receives an fd sent with [`send_fd`]; `None` when the peer closed first.
pub fn recv_fd(sock: RawFd) -> SysResult<Option<std::os::fd::OwnedFd>> {
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut space = [0u8; FD_SPACE];
    // SAFETY: as in send_fd; the received fd (if any) is owned by us from here.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = space.len();
        let n = loop {
            let n = libc::recvmsg(sock, &raw mut msg, libc::MSG_CMSG_CLOEXEC);
            if n == -1 && Errno::last() == Errno::EINTR {
                continue;
            }
            break n;
        };
        check_long(n as libc::c_long)?;
        if n == 0 {
            return Ok(None);
        }
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Ok(None);
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>());
        Ok(Some(std::os::fd::OwnedFd::from_raw_fd(fd)))
    }
}

/// A connected pair of close-on-exec unix stream sockets.
pub fn socketpair() -> SysResult<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` has room for the two fds socketpair(2) writes.
    check(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: the kernel just returned these fds; we are their only owner.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Installs the seccomp filter `prog` on the calling thread
/// (`seccomp(SECCOMP_SET_MODE_FILTER, 0, &prog)`). Needs `no_new_privs` or
/// `CAP_SYS_ADMIN` in the user namespace.
pub fn seccomp_filter(prog: &[libc::sock_filter]) -> SysResult<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| Errno::EINVAL)?,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog.len()` instructions that live for the
    // call (the kernel copies them); flags 0.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as c_ulong,
            &raw const fprog,
        )
    })
    .map(drop)
}

/// `unshare(flags)` (used for `CLONE_NEWCGROUP` once the sandbox's init is in
/// its step cgroup, so that cgroup is the root of its cgroup namespace).
pub fn unshare(flags: c_int) -> SysResult<()> {
    // SAFETY: integer flags; unshare(2) takes no pointers.
    check(unsafe { libc::unshare(flags) }).map(drop)
}

/// Writes `data` to the existing file `path` in one `write` (a cgroup file).
pub fn write_file(path: &CStr, data: &[u8]) -> SysResult<()> {
    // SAFETY: valid NUL-terminated path; the fd is closed below.
    let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) })?;
    // SAFETY: pointer and length describe `data`.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let res = if n < 0 { Err(Errno::last()) } else { Ok(()) };
    close(fd);
    res
}

/// Prepares `cmd` to get each `(ours, theirs)` fd of `fds` as fd number
/// `theirs` (close-on-exec cleared), and to be killed when the calling thread
/// ends (`PR_SET_PDEATHSIG`): for the network helper (`crate::net`), which must
/// not outlive the step. At most four fds; `theirs` must be 3 or above.
pub fn pass_fds_and_die_with_thread(cmd: &mut std::process::Command, fds: &[(RawFd, RawFd)]) {
    use std::os::unix::process::CommandExt;
    let mut map = [(-1, -1); 4];
    for (slot, fd) in map.iter_mut().zip(fds) {
        *slot = *fd;
    }
    let closure = move || -> std::io::Result<()> {
        // Copy every source first (to fds ≥ 64, close-on-exec), so that a target
        // number that is also another pair's source is not clobbered.
        let mut tmp = [-1; 4];
        for (t, &(ours, _)) in tmp.iter_mut().zip(&map) {
            if ours >= 0 {
                // SAFETY: fcntl on an fd this (forked) process holds.
                *t = unsafe { libc::fcntl(ours, libc::F_DUPFD_CLOEXEC, 64) };
                if *t < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        for (&t, &(_, theirs)) in tmp.iter().zip(&map) {
            if t >= 0 {
                // SAFETY: integer fds; dup2 leaves `theirs` without FD_CLOEXEC.
                if unsafe { libc::dup2(t, theirs) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong) };
        Ok(())
    };
    // SAFETY: the closure runs between fork and exec; it only calls the
    // async-signal-safe fcntl, dup2 and prctl on a fixed array (no allocation,
    // no lock).
    unsafe { cmd.pre_exec(closure) };
}

/// `setns(fd, nstype)` for the calling thread.
pub fn setns(fd: RawFd, nstype: c_int) -> SysResult<()> {
    // SAFETY: integer arguments; only the calling thread changes namespace.
    check(unsafe { libc::setns(fd, nstype) }).map(drop)
}

/// A `NETLINK_ROUTE` socket of the calling thread's network namespace,
/// subscribed to the multicast `groups` (`RTMGRP_*`), close-on-exec.
pub fn netlink_route_socket(groups: u32) -> SysResult<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: a plain socket(2) call.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    })?;
    // SAFETY: the kernel just returned this fd; we are its only owner.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::sa_family_t::try_from(libc::AF_NETLINK).unwrap_or(16);
    addr.nl_groups = groups;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_nl>()).unwrap_or(12);
    // SAFETY: `addr` is a valid sockaddr_nl of `len` bytes.
    check(unsafe { libc::bind(fd, (&raw const addr).cast(), len) })?;
    Ok(sock)
}

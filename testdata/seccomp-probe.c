/* A static probe of the seccomp profile (cli/tests/seccomp.rs builds it with
 * `gcc -static -O2`). Each probe runs in a child of its own (so that one that
 * succeeds, e.g. an unshare, changes nothing for the next) and prints one line,
 * `NAME: ok` or `NAME: ERRNO` (or `NAME: signal N` if the child died).
 *
 *   seccomp-probe            every probe
 *   seccomp-probe NAME...    those probes
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *errname(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    case EFAULT: return "EFAULT";
    case EBADF: return "EBADF";
    case EACCES: return "EACCES";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case ENODEV: return "ENODEV";
    case ENOENT: return "ENOENT";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ESRCH: return "ESRCH";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "errno %d", e);
        return buf;
    }
    }
}

/* 0 for success, else an errno. */
typedef int (*probe_fn)(void);

static int ret(long r) { return r < 0 ? errno : 0; }

/* A child made by a raw clone/clone3 that succeeded just exits. */
static int wait_child(long pid) {
    if (pid < 0) return errno;
    if (pid == 0) _exit(0);
    waitpid((pid_t)pid, NULL, __WALL);
    return 0;
}

static int p_fork(void) { return wait_child(syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0)); }

static int p_clone_newuser(void) {
    return wait_child(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
}

static int p_unshare_user(void) { return ret(syscall(SYS_unshare, CLONE_NEWUSER)); }

static int p_clone3(void) {
    uint64_t args[11];
    memset(args, 0, sizeof args);
    args[4] = SIGCHLD; /* exit_signal */
    return wait_child(syscall(435 /* clone3 */, args, sizeof args));
}

static int p_personality_allowed(void) { return ret(syscall(SYS_personality, 0xffffffffUL)); }
static int p_personality_linux(void) { return ret(syscall(SYS_personality, 0UL)); }
/* ADDR_NO_RANDOMIZE: not one of the profile's values. */
static int p_personality_refused(void) { return ret(syscall(SYS_personality, 0x0040000UL)); }

static int p_socket_vsock(void) {
    long fd = syscall(SYS_socket, 40 /* AF_VSOCK */, SOCK_STREAM, 0);
    if (fd >= 0) close((int)fd);
    return ret(fd);
}

static int p_socket_inet(void) {
    long fd = syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
    if (fd >= 0) close((int)fd);
    return ret(fd);
}

/* KEYCTL_GET_KEYRING_ID of the session keyring, without creating it. */
static int p_keyctl(void) { return ret(syscall(SYS_keyctl, 0, -3, 0)); }

/* BPF_MAP_CREATE with a zeroed attr: EINVAL when the kernel gets to see it. */
static int p_bpf(void) {
    char attr[64];
    memset(attr, 0, sizeof attr);
    return ret(syscall(SYS_bpf, 0, attr, sizeof attr));
}

/* A mount that can never take effect (its target does not exist): EPERM from
 * the filter, ENOENT from a kernel that got to look at it. */
static int p_mount(void) {
    return ret(mount("none", "/nonexistent/seccomp-probe", "tmpfs", 0, NULL));
}

static int p_chroot(void) { return ret(chroot("/")); }

/* PTRACE_ATTACH to a child of ours that sleeps. */
static int p_ptrace(void) {
    pid_t c = fork();
    if (c < 0) return errno;
    if (c == 0) {
        for (;;) pause();
    }
    int r = ret(ptrace(PTRACE_ATTACH, c, 0, 0));
    if (r == 0) {
        waitpid(c, NULL, __WALL);
        ptrace(PTRACE_DETACH, c, 0, 0);
    }
    kill(c, SIGKILL);
    waitpid(c, NULL, __WALL);
    return r;
}

#if defined(__x86_64__)
/* A syscall through the i386 entry (int 0x80) from 64-bit code. */
static long int80(long nr, long a, long b, long c) {
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return r;
}

static int p_i386_getpid(void) {
    long r = int80(20 /* getpid */, 0, 0, 0);
    return r < 0 ? (int)-r : (r == getpid() ? 0 : EINVAL);
}

static int p_i386_keyctl(void) {
    long r = int80(288 /* keyctl */, 0, -3, 0);
    return r < 0 ? (int)-r : 0;
}

/* getpid through the x32 ABI (bit 30): ENOSYS from kernels without x32. */
static int p_x32_getpid(void) { return ret(syscall(0x40000000 | 39)); }
#endif

/* set_mempolicy_home_node (450): newer than every syscall the profile names. */
static int p_syscall_450(void) { return ret(syscall(450, 0, 0, 0, 0)); }

static int p_fsync_badfd(void) { return ret(fsync(999)); }
static int p_fdatasync_badfd(void) { return ret(fdatasync(999)); }
static int p_syncfs_badfd(void) { return ret(syscall(SYS_syncfs, 999)); }

struct probe {
    const char *name;
    probe_fn fn;
};

static const struct probe probes[] = {
    {"fork", p_fork},
    {"clone_newuser", p_clone_newuser},
    {"unshare_user", p_unshare_user},
    {"clone3", p_clone3},
    {"personality_query", p_personality_allowed},
    {"personality_linux", p_personality_linux},
    {"personality_refused", p_personality_refused},
    {"socket_inet", p_socket_inet},
    {"socket_vsock", p_socket_vsock},
    {"keyctl", p_keyctl},
    {"bpf", p_bpf},
    {"mount", p_mount},
    {"chroot", p_chroot},
    {"ptrace", p_ptrace},
#if defined(__x86_64__)
    {"i386_getpid", p_i386_getpid},
    {"i386_keyctl", p_i386_keyctl},
    {"x32_getpid", p_x32_getpid},
#endif
    {"syscall_450", p_syscall_450},
    {"fsync_badfd", p_fsync_badfd},
    {"fdatasync_badfd", p_fdatasync_badfd},
    {"syncfs_badfd", p_syncfs_badfd},
};

static void run(const struct probe *p) {
    fflush(stdout);
    pid_t c = fork();
    if (c < 0) {
        printf("%s: fork failed: %s\n", p->name, errname(errno));
        return;
    }
    if (c == 0) {
        int e = p->fn();
        printf("%s: %s\n", p->name, e == 0 ? "ok" : errname(e));
        fflush(stdout);
        _exit(0);
    }
    int st;
    waitpid(c, &st, 0);
    if (WIFSIGNALED(st)) printf("%s: signal %d\n", p->name, WTERMSIG(st));
}

int main(int argc, char **argv) {
    size_t n = sizeof probes / sizeof probes[0];
    if (argc == 1) {
        for (size_t i = 0; i < n; i++) run(&probes[i]);
        return 0;
    }
    for (int a = 1; a < argc; a++) {
        size_t i;
        for (i = 0; i < n; i++) {
            if (strcmp(argv[a], probes[i].name) == 0) break;
        }
        if (i == n) {
            fprintf(stderr, "seccomp-probe: no probe %s\n", argv[a]);
            return 2;
        }
        run(&probes[i]);
    }
    return 0;
}

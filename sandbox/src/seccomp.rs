//! Docker's default seccomp profile, compiled to a classic BPF program for the
//! main process of a run (installed by [`crate::child`] just before `execve`).
//!
//! The profile is moby's `profiles/seccomp/default.json` exactly as docker
//! 20.10.24 ships it (`seccomp/default.json`, verbatim). It is evaluated the
//! way moby's `setupSeccomp` does for a container: a group of syscalls applies
//! when its `includes` (every listed capability in the bounding set, the native
//! architecture listed, the kernel at least `minKernel`) hold and its `excludes`
//! do not; the bounding set is Docker's default one ([`crate::DEFAULT_CAPS`]),
//! so `clone` with namespace flags, `unshare`, `mount`, `bpf`, ... stay refused.
//! It is then compiled the way runc 1.1 (with libseccomp) loads it:
//!
//! - the architectures of the profile's `archMap` entry for the native one:
//!   `x86_64` with its x32 ABI (same audit arch, syscall numbers with bit 30 set)
//!   and i386; aarch64 alone (its 32-bit arm ABI is not in the table here, so
//!   32-bit arm binaries are killed on an aarch64 host, where Docker runs them);
//! - every syscall a name resolves to on each of them gets the group's action,
//!   argument conditions compared over 64 bits on 64-bit ABIs and over the low
//!   32 bits on i386 and x32 (libseccomp's rule);
//! - anything else: `ERRNO(EPERM)`; a syscall number above the highest the
//!   filter names for its ABI: `ERRNO(ENOSYS)` (runc's stub, so that libc
//!   falls back from syscalls newer than the profile, e.g. `fchmodat2`);
//! - any other architecture: the process is killed (libseccomp's default).
//!
//! One deliberate difference from 20.10.24: `socket(AF_VSOCK, ...)` is refused
//! with EPERM, as docker >= 23 and containerd do (20.10.22 had it too; 20.10.23
//! reverted it for compatibility). vsock is not namespaced: from a VM it reaches
//! the hypervisor host.
//!
//! Why not the `seccompiler` crate: it compiles one architecture per program,
//! kills on any other (no i386, no x32 bit), has one match action per filter
//! (the profile needs ALLOW, ERRNO(ENOSYS) and ERRNO(0) side by side) and takes
//! syscall numbers, not names, so the name tables would be needed anyway. The
//! emitter below is small: per ABI a binary search on the syscall number down
//! to short `jeq` chains.
//!
//! The program is built in the parent (it allocates) and cached per variant
//! for the life of the process; the child only passes a pointer to the kernel.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use libc::sock_filter;
use serde_json::Value;

use crate::SandboxError;

const PROFILE: &str = include_str!("seccomp/default.json");
/// Syscall numbers per ABI (see `seccomp/gen_syscalls.py`).
const SYSCALLS: &str = include_str!("seccomp/syscalls.tsv");

/// The syscalls that return 0 without doing anything when the caller syncs the
/// result itself ([`FilterKind::skip_sync`]). `arm_sync_file_range` and
/// `sync_file_range2` are `sync_file_range` under the names some ABIs use.
pub(crate) const SYNC_CALLS: &[&str] = &[
    "fsync",
    "fdatasync",
    "sync_file_range",
    "sync_file_range2",
    "arm_sync_file_range",
    "syncfs",
    "sync",
];

/// Which filter a run gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FilterKind {
    /// Docker's default profile; `false`: everything allowed (but see
    /// `skip_sync`).
    pub profile: bool,
    /// The [`SYNC_CALLS`] return 0 without syncing.
    pub skip_sync: bool,
}

/// The compiled program, or `None` when `kind` asks for no filtering at all.
pub(crate) fn filter(kind: FilterKind) -> Result<Option<Arc<Vec<sock_filter>>>, SandboxError> {
    static CACHE: OnceLock<Mutex<HashMap<FilterKind, Arc<Vec<sock_filter>>>>> = OnceLock::new();
    if !kind.profile && !kind.skip_sync {
        return Ok(None);
    }
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(p) = cache.get(&kind) {
        return Ok(Some(Arc::clone(p)));
    }
    let caps: Vec<&str> = crate::DEFAULT_CAPS
        .iter()
        .filter_map(|&c| CAP_NAMES.get(c as usize).copied())
        .collect();
    let prog = Arc::new(compile(&Host::native(), kind, &caps, kernel_version())?);
    cache.insert(kind, Arc::clone(&prog));
    Ok(Some(prog))
}

/// An ABI the filter covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Abi {
    X86_64,
    I386,
    X32,
    Aarch64,
}

impl Abi {
    fn column(self) -> usize {
        match self {
            Abi::X86_64 => 0,
            Abi::I386 => 1,
            Abi::X32 => 2,
            Abi::Aarch64 => 3,
        }
    }

    /// Whether syscall arguments are 64 bits wide (libseccomp compares both
    /// halves there, only the low half elsewhere).
    fn wide_args(self) -> bool {
        matches!(self, Abi::X86_64 | Abi::Aarch64)
    }
}

pub(crate) const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
pub(crate) const AUDIT_ARCH_I386: u32 = 0x4000_0003;
pub(crate) const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
pub(crate) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The machine the filter is for: moby's name of the native architecture (for
/// `includes.arches`/`excludes.arches`) and the audit architectures with their
/// ABIs (x32 shares `x86_64`'s audit arch and is told apart by bit 30 of the
/// syscall number).
pub(crate) struct Host {
    pub native: &'static str,
    pub arches: Vec<(u32, Vec<Abi>)>,
}

impl Host {
    pub(crate) fn native() -> Host {
        if cfg!(target_arch = "x86_64") {
            Host::x86_64()
        } else if cfg!(target_arch = "aarch64") {
            Host {
                native: "arm64",
                arches: vec![(AUDIT_ARCH_AARCH64, vec![Abi::Aarch64])],
            }
        } else {
            Host {
                native: "",
                arches: Vec::new(),
            }
        }
    }

    pub(crate) fn x86_64() -> Host {
        Host {
            native: "amd64",
            arches: vec![
                (AUDIT_ARCH_X86_64, vec![Abi::X86_64, Abi::X32]),
                (AUDIT_ARCH_I386, vec![Abi::I386]),
            ],
        }
    }
}

/// `/proc/sys/kernel/osrelease` as (version, major revision), like moby's
/// `kernelGreaterEqualThan`.
fn kernel_version() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = s
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Capability names by number (for the profile's `caps` filters).
const CAP_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// A comparison of one syscall argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq(u64),
    Ne(u64),
    /// `(arg & mask) == value`
    MaskedEq {
        mask: u64,
        value: u64,
    },
}

#[derive(Clone, Debug)]
struct Rule {
    /// All must hold (empty: always).
    conds: Vec<(u8, Cmp)>,
    action: u32,
}

/// One group of the profile after the includes/excludes evaluation.
struct Group {
    names: Vec<String>,
    rule: Rule,
}

fn bad(msg: impl Into<String>) -> SandboxError {
    SandboxError::Setup {
        message: format!("seccomp profile: {}", msg.into()),
    }
}

/// The profile's groups that apply on `host` for a process with `caps` in its
/// bounding set on kernel `kernel`, with the `AF_VSOCK` change (see the module
/// docs).
fn groups(host: &Host, caps: &[&str], kernel: (u64, u64)) -> Result<Vec<Group>, SandboxError> {
    let v: Value = serde_json::from_str(PROFILE).map_err(|e| bad(e.to_string()))?;
    let strs = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let min_kernel = |f: Option<&Value>| -> Option<(u64, u64)> {
        let s = f?.get("minKernel")?.as_str()?;
        let (a, b) = s.split_once('.')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let mut out = Vec::new();
    for s in v
        .get("syscalls")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no syscalls"))?
    {
        let inc = s.get("includes");
        let exc = s.get("excludes");
        let field = |f: Option<&Value>, k: &str| strs(f.and_then(|f| f.get(k)));
        if field(exc, "arches").iter().any(|a| a == host.native)
            || field(exc, "caps")
                .iter()
                .any(|c| caps.contains(&c.as_str()))
            || min_kernel(exc).is_some_and(|m| kernel >= m)
        {
            continue;
        }
        let arches = field(inc, "arches");
        if (!arches.is_empty() && !arches.iter().any(|a| a == host.native))
            || field(inc, "caps")
                .iter()
                .any(|c| !caps.contains(&c.as_str()))
            || min_kernel(inc).is_some_and(|m| kernel < m)
        {
            continue;
        }
        let action = match s.get("action").and_then(Value::as_str) {
            Some("SCMP_ACT_ALLOW") => RET_ALLOW,
            Some("SCMP_ACT_ERRNO") => {
                let errno = s.get("errnoRet").and_then(Value::as_u64).unwrap_or(1);
                RET_ERRNO | u32::try_from(errno & 0xffff).unwrap_or(1)
            }
            other => return Err(bad(format!("unsupported action {other:?}"))),
        };
        let mut conds = Vec::new();
        for a in s
            .get("args")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = a.get("index").and_then(Value::as_u64).unwrap_or(0);
            let value = a.get("value").and_then(Value::as_u64).unwrap_or(0);
            let two = a.get("valueTwo").and_then(Value::as_u64).unwrap_or(0);
            let cmp = match a.get("op").and_then(Value::as_str) {
                Some("SCMP_CMP_EQ") => Cmp::Eq(value),
                Some("SCMP_CMP_NE") => Cmp::Ne(value),
                // libseccomp: `value` is the mask, `valueTwo` the datum.
                Some("SCMP_CMP_MASKED_EQ") => Cmp::MaskedEq {
                    mask: value,
                    value: two,
                },
                other => return Err(bad(format!("unsupported comparison {other:?}"))),
            };
            let index = u8::try_from(index)
                .ok()
                .filter(|i| *i < 6)
                .ok_or_else(|| bad(format!("argument index {index}")))?;
            conds.push((index, cmp));
        }
        let mut names = strs(s.get("names"));
        if let Some(n) = s.get("name").and_then(Value::as_str) {
            names.push(n.to_owned());
        }
        // socket(AF_VSOCK) refused: socket leaves the plain allowlist for a
        // rule allowing every other family (docker >= 23's profile).
        if action == RET_ALLOW && conds.is_empty() && names.iter().any(|n| n == "socket") {
            names.retain(|n| n != "socket");
            out.push(Group {
                names: vec!["socket".into()],
                rule: Rule {
                    conds: vec![(0, Cmp::Ne(u64::from(AF_VSOCK)))],
                    action: RET_ALLOW,
                },
            });
        }
        out.push(Group {
            names,
            rule: Rule { conds, action },
        });
    }
    Ok(out)
}

const AF_VSOCK: u32 = 40;

/// Syscall name -> number per ABI column.
fn table() -> HashMap<&'static str, [Option<u32>; 4]> {
    let mut t = HashMap::new();
    for line in SYSCALLS.lines().filter(|l| !l.starts_with('#')) {
        let mut f = line.split('\t');
        let Some(name) = f.next() else { continue };
        let mut nums = [None; 4];
        for n in &mut nums {
            *n = f.next().and_then(|x| x.trim().parse().ok());
        }
        t.insert(name, nums);
    }
    t
}

/// Compiles the filter for `host`.
pub(crate) fn compile(
    host: &Host,
    kind: FilterKind,
    caps: &[&str],
    kernel: (u64, u64),
) -> Result<Vec<sock_filter>, SandboxError> {
    if host.arches.is_empty() {
        return Err(bad(
            "no syscall table for this architecture (x86_64 and aarch64 are supported); \
             use --security-opt seccomp=unconfined / --sync=full",
        ));
    }
    let table = table();
    let groups = if kind.profile {
        groups(host, caps, kernel)?
    } else {
        Vec::new()
    };
    let default = if kind.profile {
        RET_ERRNO | libc::EPERM as u32
    } else {
        RET_ALLOW
    };
    let mut asm = Asm::default();
    // Dispatch on the architecture.
    asm.push(Ins::Ld(OFF_ARCH));
    let arch_labels: Vec<Label> = host.arches.iter().map(|_| asm.label()).collect();
    for ((audit, _), &l) in host.arches.iter().zip(&arch_labels) {
        let next = asm.label();
        asm.push(Ins::J(BPF_JEQ, *audit, NEXT, next));
        asm.push(Ins::Ja(l));
        asm.push(Ins::Mark(next));
    }
    asm.push(Ins::Ret(RET_KILL_PROCESS));
    for ((_, abis), &l) in host.arches.iter().zip(&arch_labels) {
        asm.push(Ins::Mark(l));
        asm.push(Ins::Ld(OFF_NR));
        let sections: Vec<Label> = abis.iter().map(|_| asm.label()).collect();
        if abis.len() > 1 {
            // x86_64 / x32: bit 30 of the number picks the ABI.
            let (native, x32) = (sections[0], sections[1]);
            asm.push(Ins::J(BPF_JSET, X32_SYSCALL_BIT, NEXT, native));
            asm.push(Ins::Ja(x32));
        }
        for (&abi, &s) in abis.iter().zip(&sections) {
            asm.push(Ins::Mark(s));
            section(&mut asm, abi, &groups, &table, kind, default);
        }
    }
    let prog = asm.assemble()?;
    if prog.len() > 4096 {
        return Err(bad(format!(
            "{} instructions, over the kernel's 4096",
            prog.len()
        )));
    }
    Ok(prog)
}

/// The rules of one ABI by syscall number, and the number above which runc's
/// stub answers ENOSYS (with the profile).
fn abi_rules(
    abi: Abi,
    groups: &[Group],
    table: &HashMap<&'static str, [Option<u32>; 4]>,
    kind: FilterKind,
) -> (BTreeMap<u32, Vec<Rule>>, Option<u32>) {
    let nr_of = |name: &str| table.get(name).and_then(|n| n[abi.column()]);
    let mut rules: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
    for g in groups {
        for n in &g.names {
            if let Some(nr) = nr_of(n) {
                rules.entry(nr).or_default().push(g.rule.clone());
            }
        }
    }
    // runc: numbers above the highest one the filter names get ENOSYS.
    let max = rules.keys().next_back().copied().filter(|_| kind.profile);
    if kind.skip_sync {
        for n in SYNC_CALLS {
            if let Some(nr) = nr_of(n) {
                rules.insert(
                    nr,
                    vec![Rule {
                        conds: Vec::new(),
                        action: RET_ERRNO,
                    }],
                );
            }
        }
    }
    (rules, max)
}

/// The rules of one ABI, then the search for the syscall.
fn section(
    asm: &mut Asm,
    abi: Abi,
    groups: &[Group],
    table: &HashMap<&'static str, [Option<u32>; 4]>,
    kind: FilterKind,
    default: u32,
) {
    let (rules, max) = abi_rules(abi, groups, table, kind);
    if let Some(max) = max {
        let chain = asm.label();
        asm.push(Ins::J(BPF_JGT, max, NEXT, chain));
        asm.push(Ins::Ret(RET_ERRNO | libc::ENOSYS as u32));
        asm.push(Ins::Mark(chain));
    }
    let entries: Vec<(u32, &Vec<Rule>)> = rules.iter().map(|(&nr, rs)| (nr, rs)).collect();
    tree(asm, abi, &entries, default);
}

/// A binary search over the syscall numbers (`entries` sorted) down to short
/// `jeq` chains: a few comparisons for any syscall, and a program the kernel's
/// per-syscall action cache evaluates quickly when the filter is installed
/// (it runs the filter once per syscall number and architecture).
fn tree(asm: &mut Asm, abi: Abi, entries: &[(u32, &Vec<Rule>)], default: u32) {
    if entries.len() > 4 {
        let mid = entries.len() / 2;
        let (left, right) = entries.split_at(mid);
        let (lower, upper) = (asm.label(), asm.label());
        // jgt: the upper half (far away: through a `ja`), else the lower.
        asm.push(Ins::J(BPF_JGT, left[left.len() - 1].0, NEXT, lower));
        asm.push(Ins::Ja(upper));
        asm.push(Ins::Mark(lower));
        tree(asm, abi, left, default);
        asm.push(Ins::Mark(upper));
        tree(asm, abi, right, default);
        return;
    }
    for &(nr, rs) in entries {
        let next = asm.label();
        asm.push(Ins::J(BPF_JEQ, nr, NEXT, next));
        for r in rs.iter().filter(|r| !r.conds.is_empty()) {
            let fail = asm.label();
            for &(arg, cmp) in &r.conds {
                cond(asm, abi, arg, cmp, fail);
            }
            asm.push(Ins::Ret(r.action));
            asm.push(Ins::Mark(fail));
        }
        let last = rs
            .iter()
            .find(|r| r.conds.is_empty())
            .map_or(default, |r| r.action);
        asm.push(Ins::Ret(last));
        asm.push(Ins::Mark(next));
    }
    asm.push(Ins::Ret(default));
}

/// Falls through when argument `arg` satisfies `cmp`, jumps to `fail` if not.
#[allow(clippy::cast_possible_truncation)]
fn cond(asm: &mut Asm, abi: Abi, arg: u8, cmp: Cmp, fail: Label) {
    let lo = OFF_ARGS + 8 * u32::from(arg) + if cfg!(target_endian = "big") { 4 } else { 0 };
    let hi = OFF_ARGS + 8 * u32::from(arg) + if cfg!(target_endian = "big") { 0 } else { 4 };
    let wide = abi.wide_args();
    let split = |v: u64| ((v >> 32) as u32, v as u32);
    match cmp {
        Cmp::Eq(v) => {
            let (vh, vl) = split(v);
            if wide {
                asm.push(Ins::Ld(hi));
                asm.push(Ins::J(BPF_JEQ, vh, NEXT, fail));
            }
            asm.push(Ins::Ld(lo));
            asm.push(Ins::J(BPF_JEQ, vl, NEXT, fail));
        }
        Cmp::Ne(v) => {
            let (vh, vl) = split(v);
            let pass = asm.label();
            if wide {
                asm.push(Ins::Ld(hi));
                asm.push(Ins::J(BPF_JEQ, vh, NEXT, pass));
            }
            asm.push(Ins::Ld(lo));
            asm.push(Ins::J(BPF_JEQ, vl, fail, NEXT));
            asm.push(Ins::Mark(pass));
        }
        Cmp::MaskedEq { mask, value } => {
            let (mh, ml) = split(mask);
            let (vh, vl) = split(value);
            let mut half = |off: u32, m: u32, v: u32| {
                if m == 0 {
                    // (x & 0) == v: always or never.
                    if v != 0 {
                        asm.push(Ins::Ja(fail));
                    }
                    return;
                }
                asm.push(Ins::Ld(off));
                if m != u32::MAX {
                    asm.push(Ins::And(m));
                }
                asm.push(Ins::J(BPF_JEQ, v, NEXT, fail));
            };
            if wide {
                half(hi, mh, vh);
            }
            half(lo, ml, vl);
        }
    }
}

// ---- a tiny assembler for classic BPF ----

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JA: u16 = 0x05;
const BPF_JEQ: u16 = 0x15;
const BPF_JGT: u16 = 0x25;
const BPF_JSET: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

type Label = usize;
/// The instruction after the jump.
const NEXT: Label = usize::MAX;

enum Ins {
    /// `A = seccomp_data[k]` (32 bits).
    Ld(u32),
    And(u32),
    /// Conditional jump: code, constant, where to go when true / false.
    J(u16, u32, Label, Label),
    /// Unconditional jump (32-bit offset).
    Ja(Label),
    Ret(u32),
    /// Where a label points (no instruction).
    Mark(Label),
}

#[derive(Default)]
struct Asm {
    ins: Vec<Ins>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels += 1;
        self.labels - 1
    }

    fn push(&mut self, i: Ins) {
        self.ins.push(i);
    }

    fn assemble(&self) -> Result<Vec<sock_filter>, SandboxError> {
        let mut at = vec![usize::MAX; self.labels];
        let mut n = 0;
        for i in &self.ins {
            match i {
                Ins::Mark(l) => at[*l] = n,
                _ => n += 1,
            }
        }
        let mut out = Vec::with_capacity(n);
        let off = |from: usize, l: Label| -> Result<u32, SandboxError> {
            if l == NEXT {
                return Ok(0);
            }
            let to = at[l];
            to.checked_sub(from + 1)
                .and_then(|d| u32::try_from(d).ok())
                .ok_or_else(|| bad("backward or unplaced jump"))
        };
        for i in &self.ins {
            let pos = out.len();
            let (code, jt, jf, k) = match *i {
                Ins::Mark(_) => continue,
                Ins::Ld(k) => (BPF_LD_W_ABS, 0, 0, k),
                Ins::And(k) => (BPF_ALU_AND_K, 0, 0, k),
                Ins::Ja(l) => (BPF_JA, 0, 0, off(pos, l)?),
                Ins::Ret(k) => (BPF_RET_K, 0, 0, k),
                Ins::J(code, k, t, f) => {
                    let short = |d: u32| u8::try_from(d).map_err(|_| bad("jump too long"));
                    (code, short(off(pos, t)?)?, short(off(pos, f)?)?, k)
                }
            };
            out.push(sock_filter { code, jt, jf, k });
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs a program like the kernel does for one syscall: its return value.
    pub(crate) fn eval(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let mut a: u32 = 0;
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    let k = i.k as usize;
                    a = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                BPF_ALU_AND_K => a &= i.k,
                BPF_JA => pc += i.k as usize,
                BPF_JEQ | BPF_JGT | BPF_JSET => {
                    let t = match i.code {
                        BPF_JEQ => a == i.k,
                        BPF_JGT => a > i.k,
                        _ => a & i.k != 0,
                    };
                    pc += usize::from(if t { i.jt } else { i.jf });
                }
                BPF_RET_K => return i.k,
                c => panic!("unknown code {c:#x}"),
            }
        }
    }

    const CAPS: &[&str] = &[
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_RAW",
        "CAP_SYS_CHROOT",
        "CAP_MKNOD",
        "CAP_AUDIT_WRITE",
        "CAP_SETFCAP",
    ];

    fn prog(profile: bool, skip_sync: bool) -> Vec<sock_filter> {
        compile(
            &Host::x86_64(),
            FilterKind { profile, skip_sync },
            CAPS,
            (6, 1),
        )
        .unwrap()
    }

    const EPERM: u32 = RET_ERRNO | 1;
    const ENOSYS: u32 = RET_ERRNO | 0x26;
    const X: u32 = AUDIT_ARCH_X86_64;

    fn nr(name: &str, abi: Abi) -> u32 {
        table()[name][abi.column()].unwrap()
    }

    #[test]
    fn default_caps_and_profile_on_x86_64() {
        let p = prog(true, false);
        assert!(p.len() < 4096, "{}", p.len());
        let x = |name: &str, args: [u64; 6]| eval(&p, X, nr(name, Abi::X86_64), args);
        assert_eq!(x("read", [0; 6]), RET_ALLOW);
        assert_eq!(x("execve", [0; 6]), RET_ALLOW);
        assert_eq!(
            x("chroot", [0; 6]),
            RET_ALLOW,
            "CAP_SYS_CHROOT is a default cap"
        );
        for refused in [
            "keyctl", "bpf", "mount", "unshare", "setns", "reboot", "add_key",
        ] {
            assert_eq!(x(refused, [0; 6]), EPERM, "{refused}");
        }
        assert_eq!(x("clone3", [0; 6]), ENOSYS);
        // clone: plain fork/thread flags yes, namespaces no.
        assert_eq!(x("clone", [0x0011, 0, 0, 0, 0, 0]), RET_ALLOW); // SIGCHLD
        assert_eq!(x("clone", [0x003d_0f00, 0, 0, 0, 0, 0]), RET_ALLOW); // pthread
        assert_eq!(x("clone", [0x1000_0000 | 0x11, 0, 0, 0, 0, 0]), EPERM); // NEWUSER
        assert_eq!(x("clone", [0x0002_0000, 0, 0, 0, 0, 0]), EPERM); // NEWNS
        // personality: the allowed values only.
        for ok in [0u64, 8, 0x20000, 0x20008, 0xffff_ffff] {
            assert_eq!(x("personality", [ok, 0, 0, 0, 0, 0]), RET_ALLOW, "{ok:#x}");
        }
        assert_eq!(x("personality", [0x0040_0000, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(x("personality", [1 << 32, 0, 0, 0, 0, 0]), EPERM);
        // socket: every family but vsock.
        assert_eq!(x("socket", [2, 1, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(x("socket", [40, 1, 0, 0, 0, 0]), EPERM);
        // ptrace: allowed on kernels >= 4.8 (minKernel).
        assert_eq!(x("ptrace", [0; 6]), RET_ALLOW);
        // runc's ENOSYS past the highest syscall named: futex_waitv (449).
        assert_eq!(eval(&p, X, 449, [0; 6]), RET_ALLOW);
        assert_eq!(eval(&p, X, 450, [0; 6]), ENOSYS);
        assert_eq!(eval(&p, X, 452, [0; 6]), ENOSYS); // fchmodat2
        // The sync calls are left alone without skip_sync.
        assert_eq!(x("fsync", [0; 6]), RET_ALLOW);
        // Other architectures are killed.
        assert_eq!(eval(&p, AUDIT_ARCH_AARCH64, 63, [0; 6]), RET_KILL_PROCESS);
    }

    #[test]
    fn i386_and_x32_abis() {
        let p = prog(true, false);
        let i = |name: &str, args: [u64; 6]| eval(&p, AUDIT_ARCH_I386, nr(name, Abi::I386), args);
        assert_eq!(i("getpid", [0; 6]), RET_ALLOW);
        assert_eq!(i("socketcall", [0; 6]), RET_ALLOW);
        assert_eq!(i("keyctl", [0; 6]), EPERM);
        assert_eq!(i("clone", [0x11, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(i("clone", [0x1000_0011, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(i("modify_ldt", [0; 6]), RET_ALLOW);
        let x32 = |name: &str| eval(&p, X, nr(name, Abi::X32), [0; 6]);
        assert_eq!(x32("read"), RET_ALLOW);
        assert_eq!(x32("rt_sigaction"), RET_ALLOW); // x32's own number (512 + bit)
        assert_eq!(x32("keyctl"), EPERM);
        assert_eq!(eval(&p, X, X32_SYSCALL_BIT | 0x258, [0; 6]), ENOSYS);
    }

    #[test]
    fn skip_sync_returns_zero_for_the_sync_calls() {
        for profile in [true, false] {
            let p = prog(profile, true);
            for name in ["fsync", "fdatasync", "sync_file_range", "syncfs", "sync"] {
                assert_eq!(
                    eval(&p, X, nr(name, Abi::X86_64), [999, 0, 0, 0, 0, 0]),
                    RET_ERRNO
                );
                assert_eq!(
                    eval(&p, AUDIT_ARCH_I386, nr(name, Abi::I386), [0; 6]),
                    RET_ERRNO
                );
                assert_eq!(eval(&p, X, nr(name, Abi::X32), [0; 6]), RET_ERRNO);
            }
            let other = eval(&p, X, nr("keyctl", Abi::X86_64), [0; 6]);
            assert_eq!(other, if profile { EPERM } else { RET_ALLOW });
            assert_eq!(
                eval(&p, X, 1000, [0; 6]),
                if profile { ENOSYS } else { RET_ALLOW }
            );
        }
        assert!(
            filter(FilterKind {
                profile: false,
                skip_sync: false
            })
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn privileged_caps_open_the_gated_groups() {
        let mut caps = CAPS.to_vec();
        caps.extend(["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]);
        let p = compile(
            &Host::x86_64(),
            FilterKind {
                profile: true,
                skip_sync: false,
            },
            &caps,
            (6, 1),
        )
        .unwrap();
        let x = |name: &str, a0: u64| eval(&p, X, nr(name, Abi::X86_64), [a0, 0, 0, 0, 0, 0]);
        assert_eq!(x("mount", 0), RET_ALLOW);
        assert_eq!(x("clone", 0x1000_0011), RET_ALLOW);
        assert_eq!(x("clone3", 0), RET_ALLOW);
        assert_eq!(x("process_vm_readv", 0), RET_ALLOW);
        // An old kernel has no ptrace without CAP_SYS_PTRACE.
        let old = compile(
            &Host::x86_64(),
            FilterKind {
                profile: true,
                skip_sync: false,
            },
            CAPS,
            (4, 4),
        )
        .unwrap();
        assert_eq!(eval(&old, X, nr("ptrace", Abi::X86_64), [0; 6]), EPERM);
    }

    /// What the profile says for one syscall, straight from the rules (no BPF).
    fn reference(
        abi: Abi,
        kind: FilterKind,
        (rules, max): &(BTreeMap<u32, Vec<Rule>>, Option<u32>),
        nr: u32,
        args: [u64; 6],
    ) -> u32 {
        let default = if kind.profile { EPERM } else { RET_ALLOW };
        if max.is_some_and(|m| nr > m) {
            return ENOSYS;
        }
        let Some(rs) = rules.get(&nr) else {
            return default;
        };
        let arg = |i: u8| {
            let a = args[usize::from(i)];
            if abi.wide_args() { a } else { a & 0xffff_ffff }
        };
        let narrow = |v: u64| if abi.wide_args() { v } else { v & 0xffff_ffff };
        let holds = |&(i, cmp): &(u8, Cmp)| match cmp {
            Cmp::Eq(v) => arg(i) == narrow(v),
            Cmp::Ne(v) => arg(i) != narrow(v),
            Cmp::MaskedEq { mask, value } => arg(i) & narrow(mask) == narrow(value),
        };
        rs.iter()
            .filter(|r| !r.conds.is_empty())
            .find(|r| r.conds.iter().all(holds))
            .or_else(|| rs.iter().find(|r| r.conds.is_empty()))
            .map_or(default, |r| r.action)
    }

    #[test]
    fn the_program_agrees_with_the_rules_for_every_syscall() {
        let argsets: [[u64; 6]; 6] = [
            [0; 6],
            [0x11, 1, 0, 0, 0, 0],
            [0x1000_0011, 0, 0, 0, 0, 0],
            [40, 1, 0, 0, 0, 0],
            [0xffff_ffff, 0, 0, 0, 0, 0],
            [(1 << 32) | 8, 0x20008, 0, 0, 0, 0],
        ];
        for (profile, skip_sync) in [(true, false), (true, true), (false, true)] {
            let kind = FilterKind { profile, skip_sync };
            let p = compile(&Host::x86_64(), kind, CAPS, (6, 1)).unwrap();
            let groups = if profile {
                groups(&Host::x86_64(), CAPS, (6, 1)).unwrap()
            } else {
                Vec::new()
            };
            for (arch, abi, base) in [
                (X, Abi::X86_64, 0),
                (X, Abi::X32, X32_SYSCALL_BIT),
                (AUDIT_ARCH_I386, Abi::I386, 0),
            ] {
                let rules = abi_rules(abi, &groups, &table(), kind);
                for n in 0..700 {
                    for args in argsets {
                        assert_eq!(
                            eval(&p, arch, base | n, args),
                            reference(abi, kind, &rules, base | n, args),
                            "{abi:?} {n} {args:x?} {kind:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn aarch64_gets_the_same_profile() {
        let host = Host {
            native: "arm64",
            arches: vec![(AUDIT_ARCH_AARCH64, vec![Abi::Aarch64])],
        };
        let p = compile(
            &host,
            FilterKind {
                profile: true,
                skip_sync: true,
            },
            CAPS,
            (6, 1),
        )
        .unwrap();
        let a = AUDIT_ARCH_AARCH64;
        let x = |name: &str, a0: u64| eval(&p, a, nr(name, Abi::Aarch64), [a0, 0, 0, 0, 0, 0]);
        assert_eq!(x("read", 0), RET_ALLOW);
        assert_eq!(x("keyctl", 0), EPERM);
        assert_eq!(x("mount", 0), EPERM);
        assert_eq!(x("clone3", 0), ENOSYS);
        assert_eq!(x("clone", 0x11), RET_ALLOW);
        assert_eq!(x("clone", 0x1000_0011), EPERM);
        assert_eq!(x("socket", 40), EPERM);
        assert_eq!(x("fsync", 999), RET_ERRNO);
        assert_eq!(eval(&p, a, 450, [0; 6]), ENOSYS);
        // 32-bit arm binaries: not covered (no table), killed like any
        // architecture the filter does not know.
        assert_eq!(eval(&p, 0x4000_0028, 4, [0; 6]), RET_KILL_PROCESS);
        assert_eq!(eval(&p, X, 0, [0; 6]), RET_KILL_PROCESS);
    }
}

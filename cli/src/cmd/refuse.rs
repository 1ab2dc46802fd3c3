//! What docker and buildx users type that rbuild does not take: the command
//! line without a subcommand (`rbuild -f Dockerfile -t name .` is `rbuild
//! build`), and the flags of `docker build`, `docker buildx build` and `docker
//! run` that rbuild does not implement, refused with one line naming the flag
//! (and, where there is one, the rbuild flag that does the job), exit code 125
//! as docker's for a flag error.

use std::ffi::OsString;
use std::process::ExitCode;

/// The exit code docker gives a flag error.
pub const FLAG_ERROR: u8 = 125;

/// Why a flag of `docker build`/`docker buildx build` is not taken by `rbuild
/// build` (flags rbuild implements are not listed: clap takes them).
const BUILD: &[(&str, &str)] = &[
    (
        "--attest",
        "not supported: rbuild makes no attestations (SBOM, provenance)",
    ),
    (
        "--builder",
        "not supported: rbuild has no builder instances, it builds in its own process",
    ),
    (
        "--call",
        "not supported: rbuild only builds (see `rbuild parse` for the syntax tree)",
    ),
    (
        "--cgroup-parent",
        "not supported: RUN steps are in cgroups of rbuild's own",
    ),
    (
        "--compress",
        "not supported: rbuild reads the context directly, nothing is sent to compress",
    ),
    (
        "--cpu-shares",
        "not supported: use --cpu-quota and --cpu-period",
    ),
    (
        "-c",
        "not supported (--cpu-shares): use --cpu-quota and --cpu-period",
    ),
    ("--cpuset-mems", "not supported: use --cpuset-cpus"),
    (
        "--debug",
        "not supported: use --progress=plain to see each step's output",
    ),
    (
        "-D",
        "not supported (--debug): use --progress=plain to see each step's output",
    ),
    (
        "--detach",
        "not supported: rbuild has no build server to detach",
    ),
    (
        "--disable-content-trust",
        "not supported: rbuild does not verify content trust signatures",
    ),
    (
        "--isolation",
        "not supported: rbuild isolates RUN steps with Linux namespaces only",
    ),
    ("--policy", "not supported: rbuild has no build policies"),
    (
        "--provenance",
        "not supported: rbuild makes no attestations (provenance)",
    ),
    (
        "--sbom",
        "not supported: rbuild makes no attestations (SBOM)",
    ),
    (
        "--security-opt",
        "not supported for builds: use RUN --security=insecure with --allow security.insecure",
    ),
];

/// Why a flag of `docker run` is not taken by `rbuild run`.
const RUN: &[(&str, &str)] = &[
    ("--mount", "not supported: use -v HOST:CTR[:ro] or --tmpfs"),
    ("--add-host", "not supported"),
    ("--annotation", "not supported"),
    ("--attach", "not supported: rbuild run is always attached"),
    (
        "-a",
        "not supported (--attach): rbuild run is always attached",
    ),
    ("--blkio-weight", "not supported"),
    ("--blkio-weight-device", "not supported"),
    (
        "--cap-add",
        "not supported: rbuild run keeps docker's default capabilities",
    ),
    (
        "--cap-drop",
        "not supported: rbuild run keeps docker's default capabilities",
    ),
    ("--cgroup-parent", "not supported"),
    ("--cgroupns", "not supported"),
    (
        "--cidfile",
        "not supported: rbuild run makes no container record",
    ),
    (
        "--cpu-count",
        "not supported: use --cpu-quota and --cpu-period",
    ),
    (
        "--cpu-percent",
        "not supported: use --cpu-quota and --cpu-period",
    ),
    ("--cpu-rt-period", "not supported"),
    ("--cpu-rt-runtime", "not supported"),
    (
        "--cpu-shares",
        "not supported: use --cpu-quota and --cpu-period",
    ),
    (
        "-c",
        "not supported (--cpu-shares): use --cpu-quota and --cpu-period",
    ),
    ("--cpus", "not supported: use --cpu-quota and --cpu-period"),
    ("--cpuset-mems", "not supported: use --cpuset-cpus"),
    (
        "--detach",
        "not supported: rbuild run has no daemon to leave the container with",
    ),
    (
        "-d",
        "not supported (--detach): rbuild run has no daemon to leave the container with",
    ),
    ("--detach-keys", "not supported"),
    ("--device", "not supported"),
    ("--device-cgroup-rule", "not supported"),
    ("--device-read-bps", "not supported"),
    ("--device-read-iops", "not supported"),
    ("--device-write-bps", "not supported"),
    ("--device-write-iops", "not supported"),
    ("--disable-content-trust", "not supported"),
    ("--dns", "not supported"),
    ("--dns-option", "not supported"),
    ("--dns-search", "not supported"),
    ("--domainname", "not supported: use --hostname"),
    ("--expose", "not supported: rbuild run publishes no ports"),
    ("--gpus", "not supported"),
    ("--group-add", "not supported"),
    ("--health-cmd", "not supported"),
    ("--health-interval", "not supported"),
    ("--health-retries", "not supported"),
    ("--health-start-interval", "not supported"),
    ("--health-start-period", "not supported"),
    ("--health-timeout", "not supported"),
    (
        "--init",
        "not supported: rbuild run reaps the container's processes itself",
    ),
    ("--io-maxbandwidth", "not supported"),
    ("--io-maxiops", "not supported"),
    ("--ip", "not supported"),
    ("--ip6", "not supported"),
    ("--ipc", "not supported"),
    (
        "--isolation",
        "not supported: rbuild isolates with Linux namespaces only",
    ),
    ("--kernel-memory", "not supported: use --memory"),
    (
        "--label",
        "not supported: rbuild run makes no container record",
    ),
    (
        "-l",
        "not supported (--label): rbuild run makes no container record",
    ),
    (
        "--label-file",
        "not supported: rbuild run makes no container record",
    ),
    ("--link", "not supported"),
    ("--link-local-ip", "not supported"),
    (
        "--log-driver",
        "not supported: the output goes to rbuild's stdout and stderr",
    ),
    (
        "--log-opt",
        "not supported: the output goes to rbuild's stdout and stderr",
    ),
    ("--mac-address", "not supported"),
    ("--memory-reservation", "not supported: use --memory"),
    ("--memory-swappiness", "not supported"),
    ("--network-alias", "not supported"),
    ("--no-healthcheck", "not supported"),
    ("--oom-kill-disable", "not supported"),
    ("--oom-score-adj", "not supported"),
    ("--pid", "not supported"),
    (
        "--platform",
        "not supported: rbuild runs images of the host's platform",
    ),
    ("--privileged", "not supported"),
    ("--publish", "not supported: use --network host"),
    ("-p", "not supported (--publish): use --network host"),
    ("--publish-all", "not supported: use --network host"),
    ("-P", "not supported (--publish-all): use --network host"),
    ("--pull", "not supported: use rbuild pull first"),
    ("--quiet", "not supported"),
    ("-q", "not supported (--quiet)"),
    (
        "--restart",
        "not supported: rbuild run has no daemon to restart the container",
    ),
    (
        "--runtime",
        "not supported: rbuild runs the container itself",
    ),
    ("--shm-size", "not supported"),
    (
        "--sig-proxy",
        "not supported: signals always reach the container",
    ),
    ("--stop-signal", "not supported"),
    ("--stop-timeout", "not supported"),
    ("--storage-opt", "not supported"),
    ("--sysctl", "not supported"),
    ("--ulimit", "not supported"),
    ("--userns", "not supported"),
    ("--uts", "not supported"),
    ("--volume-driver", "not supported"),
    (
        "--volumes-from",
        "not supported: rbuild run makes no container record",
    ),
];

/// The refusal table of subcommand `sub` (`build` or `run`).
fn table(sub: &str) -> &'static [(&'static str, &'static str)] {
    match sub {
        "build" => BUILD,
        "run" => RUN,
        _ => &[],
    }
}

/// The one-line error for the flag `arg` (`--flag`, `--flag=value`, `-x`) that
/// `rbuild SUB` does not take.
pub fn flag_message(sub: &str, arg: &str) -> String {
    let name = arg.split_once('=').map_or(arg, |(n, _)| n);
    // `-pVALUE`: the short flag is the first letter.
    let short: String = if name.starts_with("--") {
        name.to_owned()
    } else {
        name.chars().take(2).collect()
    };
    let prog = if sub.is_empty() {
        "rbuild".to_owned()
    } else {
        format!("rbuild {sub}")
    };
    match table(sub).iter().find(|(f, _)| *f == short) {
        Some((f, why)) => format!("{prog}: {f} is {why}"),
        None => format!("{prog}: unknown flag: {short} (see `{prog} --help`)"),
    }
}

/// The words that select a subcommand, with `help`.
fn subcommands(cmd: &clap::Command) -> Vec<String> {
    let mut names = vec!["help".to_owned()];
    for s in cmd.get_subcommands() {
        names.push(s.get_name().to_owned());
        names.extend(s.get_all_aliases().map(str::to_owned));
    }
    names
}

/// `argv` with `build` put in where the first word (after the global `--root
/// DIR`) is neither a subcommand nor `-h`/`--help`/`-V`/`--version`: `rbuild
/// -f Dockerfile -t name .` is `rbuild build -f Dockerfile -t name .`.
pub fn default_to_build(argv: Vec<OsString>, cmd: &clap::Command) -> Vec<OsString> {
    let names = subcommands(cmd);
    let mut i = 1;
    while let Some(a) = argv.get(i).and_then(|a| a.to_str()) {
        if a == "--root" {
            i += 2;
        } else if a.starts_with("--root=") {
            i += 1;
        } else {
            break;
        }
    }
    let Some(first) = argv.get(i) else {
        return argv; // `rbuild` alone: clap's help
    };
    let first = first.to_string_lossy();
    if names.iter().any(|n| *n == first)
        || matches!(first.as_ref(), "-h" | "--help" | "-V" | "--version")
    {
        return argv;
    }
    let mut out = argv;
    out.insert(i, OsString::from("build"));
    out
}

/// The subcommand `argv` names (after the global `--root DIR`), if any.
fn subcommand_of(argv: &[OsString]) -> String {
    let mut i = 1;
    while let Some(a) = argv.get(i).and_then(|a| a.to_str()) {
        if a == "--root" {
            i += 2;
        } else if a.starts_with('-') {
            i += 1;
        } else {
            return a.to_owned();
        }
    }
    String::new()
}

/// Reports a command-line error of clap: help and version as clap prints
/// them; an unknown flag with [`flag_message`]; anything else as clap's first
/// line. Flag errors exit with 125, as docker's.
pub fn clap_error(e: &clap::Error, argv: &[OsString]) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
        _ => {}
    }
    let sub = subcommand_of(argv);
    let unknown = match (e.kind(), e.get(ContextKind::InvalidArg)) {
        (ErrorKind::UnknownArgument, Some(ContextValue::String(arg))) => Some(arg),
        _ => None,
    };
    let line = unknown.map_or_else(|| first_paragraph(e, &sub), |arg| flag_message(&sub, arg));
    eprintln!("{line}");
    ExitCode::from(FLAG_ERROR)
}

/// Clap's error as one line: its first paragraph (`… not provided:` and the
/// names under it), with the command's name.
fn first_paragraph(e: &clap::Error, sub: &str) -> String {
    let text = e.render().to_string();
    let first = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let first = first.trim_start_matches("error: ");
    let prog = if sub.is_empty() {
        "rbuild".to_owned()
    } else {
        format!("rbuild {sub}")
    };
    format!("{prog}: {first} (see `{prog} --help`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_messages_name_the_flag() {
        assert_eq!(
            flag_message("build", "--sbom=true"),
            "rbuild build: --sbom is not supported: rbuild makes no attestations (SBOM)"
        );
        assert_eq!(
            flag_message("run", "-p80:80"),
            "rbuild run: -p is not supported (--publish): use --network host"
        );
        assert_eq!(
            flag_message("build", "--frobnicate"),
            "rbuild build: unknown flag: --frobnicate (see `rbuild build --help`)"
        );
    }

    #[test]
    fn tables_have_no_duplicates() {
        for t in [BUILD, RUN] {
            let mut names: Vec<_> = t.iter().map(|(f, _)| *f).collect();
            names.sort_unstable();
            let n = names.len();
            names.dedup();
            assert_eq!(n, names.len());
        }
    }
}

//! `rbuild version`, `rbuild info` (the state root, what it holds, the kernel
//! features rbuild uses) and `rbuild completion bash|zsh|fish`.

use std::path::Path;

use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum InfoCommand {
    /// Show rbuild's version
    Version,
    /// Show the state root, its storage use and the kernel features found
    Info {
        /// `json`: one JSON object
        #[arg(long, value_name = "FORMAT")]
        format: Option<String>,
    },
    /// Print a shell completion script (`rbuild completion bash > /etc/bash_completion.d/rbuild`)
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Runs the command; `cli` is the whole command line's definition (for the
/// completion scripts).
pub fn run(c: &InfoCommand, root: &Path, cli: clap::Command) -> Result<()> {
    match c {
        InfoCommand::Version => {
            let platform = rbuild_oci::Platform::host();
            println!("rbuild:");
            println!(" Version:    {}", env!("CARGO_PKG_VERSION"));
            println!(" OS/Arch:    {platform}");
            println!(" Frontend:   Dockerfile (docker/dockerfile:1 syntax, built in)");
            Ok(())
        }
        InfoCommand::Info { format } => info(root, format.as_deref()),
        InfoCommand::Completion { shell } => {
            let mut cli = cli;
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            // Into memory first: the generator panics on a write error (a
            // closed pipe); here that ends the output quietly.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli, "rbuild", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
    }
}

/// Bytes the files under `dir` take on disk (blocks), each inode once.
fn disk_use(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if seen.insert((m.dev(), m.ino())) {
                total += m.blocks() * 512;
            }
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// How build steps get their root filesystem here (a test mount in the
/// state root decides, unless `RBUILD_SNAPSHOTTER` does).
fn snapshotter(root: &Path) -> String {
    use rbuild_snapshotter::snapshots::{Backend, SnapshotStore};
    if !root.is_dir() {
        return "not known yet (no state root)".to_owned();
    }
    match SnapshotStore::open(root)
        .map_err(|e| e.to_string())
        .and_then(|s| s.backend().cloned().map_err(|e| e.to_string()))
    {
        Ok(Backend::Overlay) => "overlay".to_owned(),
        Ok(Backend::Copy { reason }) => format!("copy ({reason})"),
        Err(e) => format!("error: {e}"),
    }
}

/// How rbuild maps ids when run as this user (see README, "What needs root").
fn rootless() -> String {
    match rbuild_sandbox::rootless::plan() {
        None => "no (running as root)".to_owned(),
        Some((r, _)) if r.subordinate => {
            let n = |m: &[rbuild_sandbox::rootless::IdRange]| {
                m.iter().map(|r| u64::from(r.count)).sum::<u64>()
            };
            format!(
                "yes: a user namespace with {} uids and {} gids (your id and the \
                 subordinate ids of /etc/subuid and /etc/subgid)",
                n(&r.uid_map),
                n(&r.gid_map)
            )
        }
        Some(_) => "yes: a user namespace with your id only (no subordinate ids in \
                    /etc/subuid and /etc/subgid, or no newuidmap/newgidmap): files of \
                    other owners become root's"
            .to_owned(),
    }
}

/// The kernel features rbuild uses, as found on this machine.
fn kernel_features() -> Vec<(&'static str, String)> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let overlay = read("/proc/filesystems")
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"));
    let max_userns = read("/proc/sys/user/max_user_namespaces")
        .trim()
        .parse::<u64>()
        .unwrap_or(0);
    let unpriv = read("/proc/sys/kernel/unprivileged_userns_clone");
    let userns = if max_userns == 0 {
        "no (user.max_user_namespaces is 0)".to_owned()
    } else if unpriv.trim() == "0" {
        "yes, for root only (kernel.unprivileged_userns_clone is 0)".to_owned()
    } else {
        "yes".to_owned()
    };
    let cgroups = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let c = read("/sys/fs/cgroup/cgroup.controllers");
        format!("v2 (controllers: {})", c.trim())
    } else if Path::new("/sys/fs/cgroup/memory").is_dir() {
        "v1".to_owned()
    } else {
        "not found".to_owned()
    };
    let have = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
    };
    let net = ["pasta", "slirp4netns"]
        .into_iter()
        .filter(|t| have(t))
        .collect::<Vec<_>>();
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    vec![
        ("Kernel", kernel),
        (
            "Overlayfs",
            if overlay {
                "yes"
            } else {
                "no (copying snapshots)"
            }
            .to_owned(),
        ),
        ("User namespaces", userns),
        ("Rootless", rootless()),
        ("Cgroups", cgroups),
        (
            "Network helper",
            if net.is_empty() {
                "none (RUN steps get loopback only; install passt or slirp4netns)".to_owned()
            } else {
                net.join(", ")
            },
        ),
    ]
}

fn info(root: &Path, format: Option<&str>) -> Result<()> {
    let used = if root.is_dir() { disk_use(root) } else { 0 };
    let mut rows: Vec<(&str, String)> = vec![
        ("Version", env!("CARGO_PKG_VERSION").to_owned()),
        ("State root", root.display().to_string()),
        ("Storage used", super::fmt::human_size(used)),
    ];
    if root.is_dir()
        && let Ok(store) = rbuild_image::Store::open(root)
    {
        if let Ok(images) = store.images() {
            rows.push(("Images", images.len().to_string()));
        }
    }
    rows.extend(kernel_features());
    rows.push(("Snapshotter", snapshotter(root)));
    match format {
        Some("json" | "{{json .}}") => {
            let mut m = serde_json::Map::new();
            for (k, v) in &rows {
                m.insert((*k).to_owned(), serde_json::Value::String(v.clone()));
            }
            m.insert("StorageBytes".into(), serde_json::Value::from(used));
            println!("{}", serde_json::Value::Object(m));
        }
        Some(other) => anyhow::bail!("unknown format {other:?} (known: json)"),
        None => {
            for (k, v) in rows {
                println!("{k}: {v}");
            }
        }
    }
    Ok(())
}

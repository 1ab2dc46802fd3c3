//! `rbuild pull` and `rbuild push`, with docker's output: one line per layer
//! status (`<id>: Pulling fs layer`, `Download complete`, `Pull complete`,
//! `Pushed`, `Layer already exists`, `Mounted from REPO`), then `Digest:` and
//! `Status:` (pull) or `TAG: digest: sha256:... size: N` (push).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use rbuild_engine::transfer::{self, RegistryOptions, TransferEvent};
use rbuild_image::{Reference, Store};
use rbuild_oci::Platform;

#[derive(clap::Args)]
pub struct PullArgs {
    /// NAME[:TAG|@DIGEST]
    name: String,
    /// Download all tagged images in the repository
    #[arg(short = 'a', long = "all-tags")]
    all_tags: bool,
    /// Set platform if server is multi-platform capable (os/arch[/variant])
    #[arg(long)]
    platform: Option<String>,
    /// Suppress verbose output
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct PushArgs {
    /// NAME[:TAG]
    name: String,
    /// Suppress verbose output
    #[arg(short, long)]
    quiet: bool,
}

/// The plain line of an event (none for byte counts).
pub fn plain_line(ev: &TransferEvent) -> Option<String> {
    match ev {
        TransferEvent::Line(l) => Some(l.clone()),
        TransferEvent::Layer { id, status } => Some(format!("{id}: {status}")),
        TransferEvent::Progress { .. } => None,
    }
}

/// How pull and push output is shown: plain lines, or on a terminal one
/// indicatif bar per layer (status, bytes, rate) as `docker pull` shows it.
enum View {
    Quiet,
    Plain,
    Tty {
        multi: indicatif::MultiProgress,
        bars: std::collections::HashMap<String, indicatif::ProgressBar>,
        /// Lines that come after the layers (`Digest:`, `Status:`), printed
        /// below the bars at the end.
        after: Vec<String>,
    },
}

impl View {
    fn new(quiet: bool) -> Self {
        if quiet {
            Self::Quiet
        } else if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            Self::Tty {
                multi: indicatif::MultiProgress::with_draw_target(
                    indicatif::ProgressDrawTarget::stdout(),
                ),
                bars: std::collections::HashMap::new(),
                after: Vec::new(),
            }
        } else {
            Self::Plain
        }
    }

    fn event(&mut self, ev: &TransferEvent) {
        match self {
            Self::Quiet => {}
            Self::Plain => {
                if let Some(l) = plain_line(ev) {
                    println!("{l}");
                }
            }
            Self::Tty { multi, bars, after } => match ev {
                TransferEvent::Line(l) if bars.is_empty() => {
                    let _ = multi.println(l);
                }
                TransferEvent::Line(l) => after.push(l.clone()),
                TransferEvent::Layer { id, status } => {
                    let bar = bars.entry(id.clone()).or_insert_with(|| {
                        let b = multi.add(indicatif::ProgressBar::new(0));
                        b.set_style(
                            indicatif::ProgressStyle::with_template("{prefix}: {msg}")
                                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                        );
                        b.set_prefix(id.clone());
                        b
                    });
                    bar.set_message(status.clone());
                }
                TransferEvent::Progress { id, current, total } => {
                    if let Some(bar) = bars.get(id) {
                        if bar.length() != Some(*total) {
                            bar.set_length(*total);
                            bar.set_style(
                                indicatif::ProgressStyle::with_template(
                                    "{prefix}: {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                                )
                                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                                .progress_chars("=> "),
                            );
                        }
                        bar.set_position(*current);
                    }
                }
            },
        }
    }

    /// Leaves each layer's last status on the screen.
    fn finish(&mut self) {
        if let Self::Tty { bars, after, .. } = self {
            for b in bars.values() {
                b.set_style(
                    indicatif::ProgressStyle::with_template("{prefix}: {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b.finish();
            }
            for l in after.drain(..) {
                println!("{l}");
            }
        }
    }
}

fn open_store(root: &Path) -> Result<Store> {
    Store::open(root).with_context(|| format!("opening the image store {}", root.display()))
}

pub fn pull(args: &PullArgs, root: &Path) -> Result<ExitCode> {
    let platform = match &args.platform {
        Some(p) => Some(
            Platform::parse(p)
                .ok_or_else(|| anyhow!("invalid platform {p:?}: want os/arch[/variant]"))?,
        ),
        None => None,
    };
    let store = open_store(root)?;
    let opts = RegistryOptions::load(root)?;
    let names = if args.all_tags {
        let r =
            Reference::parse(&args.name).map_err(|e| anyhow!("invalid reference format: {e}"))?;
        if r.tag.is_some() || r.digest.is_some() {
            anyhow::bail!("tag can't be used with --all-tags/-a");
        }
        let mut tags = transfer::list_tags(&args.name, &opts)?;
        tags.sort();
        tags.into_iter()
            .map(|t| format!("{}:{t}", r.repo))
            .collect()
    } else {
        vec![args.name.clone()]
    };
    for name in names {
        let mut view = View::new(args.quiet);
        let pulled = transfer::pull(&store, &name, platform.as_ref(), &opts, &mut |ev| {
            view.event(&ev);
        });
        view.finish();
        println!("{}", pulled?.reference.full_name());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn push(args: &PushArgs, root: &Path) -> Result<ExitCode> {
    let store = open_store(root)?;
    let opts = RegistryOptions::load(root)?;
    let mut view = View::new(args.quiet);
    let pushed = transfer::push(
        &store,
        &args.name,
        rbuild_image::Compression::Gzip,
        &opts,
        &mut |ev| view.event(&ev),
    );
    view.finish();
    let pushed = pushed?;
    if args.quiet {
        println!("{}", pushed.reference.full_name());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct LoginArgs {
    /// Server (default: Docker Hub)
    server: Option<String>,
    /// Username
    #[arg(short, long)]
    username: Option<String>,
    /// Password
    #[arg(short, long)]
    password: Option<String>,
    /// Take the password from stdin
    #[arg(long)]
    password_stdin: bool,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    /// Server (default: Docker Hub)
    server: Option<String>,
}

pub fn login(args: &LoginArgs, root: &Path) -> Result<ExitCode> {
    let registry = transfer::login_registry(args.server.as_deref());
    let config = rbuild_registry::DockerConfig::from_env();
    if args.password.is_some() && args.password_stdin {
        anyhow::bail!("--password and --password-stdin are mutually exclusive");
    }
    let password = if args.password_stdin {
        if args.username.is_none() {
            anyhow::bail!("Must provide --username with --password-stdin");
        }
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        Some(s.trim_end_matches(['\n', '\r']).to_owned())
    } else {
        if args.password.is_some() {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        }
        args.password.clone()
    };
    let creds = match (args.username.clone(), password) {
        (Some(u), Some(p)) => rbuild_registry::Credentials {
            username: u,
            password: p,
            identity_token: None,
        },
        (None, None) if config.get(&registry)?.is_some() => {
            // docker re-checks what it has.
            println!("Authenticating with existing credentials...");
            config.get(&registry)?.expect("checked above")
        }
        (user, pass) => {
            // docker asks on a terminal for what is missing.
            if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                anyhow::bail!(
                    "cannot perform an interactive login from a non TTY device: give \
                     --username and --password-stdin (or --password) to log in to {registry}"
                );
            }
            let username = match user {
                Some(u) => u,
                None => prompt_line("Username: ")?,
            };
            if username.is_empty() {
                anyhow::bail!("login to {registry}: the username is empty");
            }
            let password = match pass {
                Some(p) => p,
                None => prompt_secret("Password: ")?,
            };
            if password.is_empty() {
                anyhow::bail!("login to {registry}: the password is empty");
            }
            rbuild_registry::Credentials {
                username,
                password,
                identity_token: None,
            }
        }
    };
    transfer::login(&registry, &creds, &RegistryOptions::load(root)?, &config)?;
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

/// Prints `prompt` and reads one line from the terminal on stdin.
fn prompt_line(prompt: &str) -> Result<String> {
    use std::io::Write as _;
    print!("{prompt}");
    std::io::stdout().flush()?;
    let mut s = String::new();
    std::io::stdin()
        .read_line(&mut s)
        .context("reading the username")?;
    Ok(s.trim_end_matches(['\n', '\r']).trim().to_owned())
}

/// Prints `prompt` and reads one line from the terminal on stdin without
/// echoing it (the terminal's echo is switched off while it is typed).
fn prompt_secret(prompt: &str) -> Result<String> {
    use nix::sys::termios::{self, LocalFlags, SetArg};
    use std::io::Write as _;
    print!("{prompt}");
    std::io::stdout().flush()?;
    let stdin = std::io::stdin();
    let saved = termios::tcgetattr(&stdin).context("reading the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    termios::tcsetattr(&stdin, SetArg::TCSAFLUSH, &quiet)
        .context("switching the terminal's echo off")?;
    let mut s = String::new();
    let read = stdin.read_line(&mut s);
    let restored = termios::tcsetattr(&stdin, SetArg::TCSAFLUSH, &saved);
    println!();
    read.context("reading the password")?;
    restored.context("restoring the terminal's echo")?;
    Ok(s.trim_end_matches(['\n', '\r']).to_owned())
}

pub fn logout(args: &LogoutArgs) -> Result<ExitCode> {
    let registry = transfer::login_registry(args.server.as_deref());
    let config = rbuild_registry::DockerConfig::from_env();
    if config.erase(&registry)? {
        println!(
            "Removing login credentials for {}",
            rbuild_registry::config::config_key(&registry)
        );
    } else {
        println!(
            "Not logged in to {}",
            rbuild_registry::config::config_key(&registry)
        );
    }
    Ok(ExitCode::SUCCESS)
}

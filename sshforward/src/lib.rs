//! SSH agent forwarding for `RUN --mount=type=ssh` (`BuildKit`'s
//! `session/sshforward`, without a session: the agent is on this machine).
//!
//! `rbuild build --ssh ID[=PATH[,PATH...]]` names an [`AgentSource`] per id:
//! an agent's socket (`$SSH_AUTH_SOCK` when no path is given) or private key
//! files, which an in-process agent holds. A step that mounts the id gets a
//! [`Forwarder`]: a socket of its own in a private temporary directory (never
//! in the step's root), owned and moded as the mount says, which serves a
//! read-only agent: listing identities and signing are passed on, adding,
//! removing, locking and extensions are refused, as `BuildKit`'s
//! `readOnlyAgent` does. With `raw=true` the bytes are passed on as they come.

mod keys;
mod proto;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub use keys::Keyring;

/// The id of `--ssh default` and of a mount without `id=`.
pub const DEFAULT_ID: &str = "default";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// A `--ssh` value that does not parse.
    #[error("--ssh {value}: {reason}")]
    Flag { value: String, reason: String },
    /// A `--ssh` source that cannot be used.
    #[error("--ssh {id}: {reason}")]
    Source { id: String, reason: String },
    /// The same id given twice.
    #[error("--ssh {0}: duplicate agent id")]
    Duplicate(String),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::errno::Errno,
    },
}

/// One `--ssh` value: `ID[=PATH[,PATH...]][,raw=true]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSpec {
    pub id: String,
    /// Agent socket or private key files; empty: `$SSH_AUTH_SOCK`.
    pub paths: Vec<PathBuf>,
    /// Pass the socket's bytes on unfiltered (`raw=true`, one socket only).
    pub raw: bool,
}

impl SshSpec {
    /// Parses one `--ssh` value as `buildctl` and `buildx` do.
    pub fn parse(value: &str) -> Result<SshSpec, SshError> {
        let bad = |reason: &str| SshError::Flag {
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let (id, rest) = match value.split_once('=') {
            Some((id, rest)) => (id, Some(rest)),
            None => (value, None),
        };
        let id = if id.is_empty() { DEFAULT_ID } else { id };
        let mut spec = SshSpec {
            id: id.to_owned(),
            paths: Vec::new(),
            raw: false,
        };
        for p in rest.into_iter().flat_map(|r| r.split(',')) {
            match p.split_once('=') {
                Some(("raw", v)) => {
                    spec.raw = match v.to_ascii_lowercase().as_str() {
                        "1" | "t" | "true" => true,
                        "0" | "f" | "false" => false,
                        _ => return Err(bad(&format!("invalid value for 'raw': {v}"))),
                    };
                }
                _ if p.is_empty() => {}
                _ => spec.paths.push(PathBuf::from(p)),
            }
        }
        if spec.raw && spec.paths.len() > 1 {
            return Err(bad("raw mode must supply exactly one socket path"));
        }
        Ok(spec)
    }
}

/// Where a forwarded agent's answers come from.
pub enum AgentSource {
    /// An agent listening on a unix socket (read-only unless `raw`).
    Socket { path: PathBuf, raw: bool },
    /// Private keys held in this process.
    Keys(Keyring),
}

impl fmt::Debug for AgentSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentSource::Socket { path, raw } => f
                .debug_struct("Socket")
                .field("path", path)
                .field("raw", raw)
                .finish(),
            AgentSource::Keys(k) => f.debug_tuple("Keys").field(&k.len()).finish(),
        }
    }
}

impl AgentSource {
    /// The source of `spec`: with no path, the socket `auth_sock` (the
    /// caller's `$SSH_AUTH_SOCK`); one socket, or key files (not both).
    pub fn open(spec: &SshSpec, auth_sock: Option<&Path>) -> Result<AgentSource, SshError> {
        let fail = |reason: String| SshError::Source {
            id: spec.id.clone(),
            reason,
        };
        let paths: Vec<PathBuf> = if spec.paths.is_empty() {
            match auth_sock {
                Some(p) if !p.as_os_str().is_empty() => vec![p.to_path_buf()],
                _ => {
                    return Err(fail(
                        "invalid empty ssh agent socket: make sure SSH_AUTH_SOCK is set".to_owned(),
                    ));
                }
            }
        } else {
            spec.paths.clone()
        };
        let mut socket = None;
        let mut keyring = Keyring::default();
        for p in &paths {
            if socket.is_some() {
                return Err(fail("only a single socket is allowed".to_owned()));
            }
            let meta = fs_err::metadata(p).map_err(|e| fail(e.to_string()))?;
            if meta.file_type().is_socket() {
                socket = Some(p.clone());
                continue;
            }
            if spec.raw {
                return Err(fail("raw mode only supported with socket paths".to_owned()));
            }
            keyring.add_file(p).map_err(fail)?;
        }
        match socket {
            Some(_) if !keyring.is_empty() => {
                Err(fail("invalid combination of keys and sockets".to_owned()))
            }
            Some(path) => Ok(AgentSource::Socket {
                path,
                raw: spec.raw,
            }),
            None => Ok(AgentSource::Keys(keyring)),
        }
    }

    /// The sources of all `--ssh` values by id.
    pub fn open_all(
        specs: &[SshSpec],
        auth_sock: Option<&Path>,
    ) -> Result<HashMap<String, Arc<AgentSource>>, SshError> {
        let mut out = HashMap::new();
        for s in specs {
            if out.contains_key(&s.id) {
                return Err(SshError::Duplicate(s.id.clone()));
            }
            out.insert(s.id.clone(), Arc::new(AgentSource::open(s, auth_sock)?));
        }
        Ok(out)
    }
}

/// The longest socket path `bind` takes (`sun_path` less its NUL).
const SUN_PATH_MAX: usize = 107;

/// A forwarded agent socket for one step, served until dropped.
pub struct Forwarder {
    dir: Option<tempfile::TempDir>,
    socket: PathBuf,
    /// Dropped to stop the accept loop (its read end then polls as hung up).
    stop: Option<std::os::fd::OwnedFd>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
}

impl Forwarder {
    /// Listens on `ssh_auth_sock` in a new private directory under `parent`
    /// (or the system temp dir when that path is too long for a socket),
    /// with `mode` and, given `owner`, that uid and gid.
    pub fn start(
        parent: &Path,
        prefix: &str,
        source: Arc<AgentSource>,
        owner: Option<(u32, u32)>,
        mode: u32,
    ) -> Result<Forwarder, SshError> {
        let name = "ssh_auth_sock";
        let mk = |base: &Path| {
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in(base)
                .map_err(|e| {
                    SshError::Io(io::Error::new(
                        e.kind(),
                        format!("creating a temp dir in {}: {e}", base.display()),
                    ))
                })
        };
        let mut dir = mk(parent)?;
        if dir.path().join(name).as_os_str().len() > SUN_PATH_MAX {
            dir = mk(&std::env::temp_dir())?;
        }
        let socket = dir.path().join(name);
        let listener = UnixListener::bind(&socket).map_err(|e| {
            SshError::Io(io::Error::new(
                e.kind(),
                format!("listening on {}: {e}", socket.display()),
            ))
        })?;
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(&socket, Some(uid.into()), Some(gid.into())).map_err(|e| {
                SshError::Sys {
                    what: format!("chown {}", socket.display()),
                    source: e,
                }
            })?;
        }
        fs_err::set_permissions(&socket, std::fs::Permissions::from_mode(mode & 0o7777))?;
        let (stop_r, stop_w) = nix::unistd::pipe().map_err(|e| SshError::Sys {
            what: "pipe".to_owned(),
            source: e,
        })?;
        let conns = Arc::new(Mutex::new(Vec::new()));
        let conns2 = Arc::clone(&conns);
        let accept = std::thread::Builder::new()
            .name("ssh-forward".to_owned())
            .spawn(move || accept_loop(&listener, &stop_r, &source, &conns2))?;
        Ok(Forwarder {
            dir: Some(dir),
            socket,
            stop: Some(stop_w),
            accept: Some(accept),
            conns,
        })
    }

    /// The socket to bind into the step.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // Connections still open (a step's daemon outliving it) end now.
        for c in self
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}

fn accept_loop(
    listener: &UnixListener,
    stop: &std::os::fd::OwnedFd,
    source: &Arc<AgentSource>,
    conns: &Arc<Mutex<Vec<UnixStream>>>,
) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        let Ok((client, _)) = listener.accept() else {
            continue;
        };
        if let Ok(c) = client.try_clone() {
            conns
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(c);
        }
        let source = Arc::clone(source);
        let _ = std::thread::Builder::new()
            .name("ssh-agent-conn".to_owned())
            .spawn(move || serve(client, &source));
    }
}

/// Serves one connection of a step.
fn serve(client: UnixStream, source: &AgentSource) {
    match source {
        AgentSource::Socket { path, raw: true } => {
            let Ok(up) = UnixStream::connect(path) else {
                return;
            };
            pipe_raw(client, up);
        }
        AgentSource::Socket { path, raw: false } => {
            let Ok(up) = UnixStream::connect(path) else {
                return;
            };
            let _ = proto::serve_read_only(&client, |req| proto::relay(&up, req));
        }
        AgentSource::Keys(k) => {
            let _ = proto::serve_read_only(&client, |req| Ok(k.answer(req)));
        }
    }
}

/// Copies both ways until either side closes, then closes both.
fn pipe_raw(client: UnixStream, up: UnixStream) {
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    let t = std::thread::spawn(move || {
        let _ = io::copy(&mut c2, &mut u2);
        let _ = u2.shutdown(std::net::Shutdown::Both);
    });
    let (mut up, mut client) = (up, client);
    let _ = io::copy(&mut up, &mut client);
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = t.join();
}

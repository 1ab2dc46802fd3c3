//! Credentials as docker keeps them: `config.json` in `$DOCKER_CONFIG` (else
//! `~/.docker`), with `auths` (base64 `user:password`, or an `identitytoken`),
//! `credHelpers` (per registry) and `credsStore` (for all): the
//! `docker-credential-NAME` helpers are run with `get`, `store` and `erase`
//! as docker runs them. podman's `auth.json` (`$REGISTRY_AUTH_FILE`, else
//! `$XDG_RUNTIME_DIR/containers/auth.json`) is read when docker's file has
//! nothing for a registry.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::auth::{CredentialSource, Credentials};
use crate::reference::DOCKER_HUB;

/// The key docker files Docker Hub's credentials under.
pub const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Why reading or writing credentials failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {reason}", .path.display())]
    Bad { path: PathBuf, reason: String },
    #[error("credential helper docker-credential-{helper}: {reason}")]
    Helper { helper: String, reason: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// docker's configuration file (and podman's auth file for reading).
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// `config.json`.
    pub path: PathBuf,
    /// podman's `auth.json`, if one is to be read.
    pub podman: Option<PathBuf>,
}

/// The key of a registry in `auths` / `credHelpers`.
pub fn config_key(registry: &str) -> String {
    if registry == DOCKER_HUB || registry == "index.docker.io" || registry == "registry-1.docker.io"
    {
        DOCKER_HUB_KEY.to_owned()
    } else {
        registry.to_owned()
    }
}

/// The host part of an `auths` key (`https://host/v1/` → `host`).
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`; podman's
    /// `$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`.
    pub fn from_env() -> Self {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .filter(|d| !d.is_empty())
            .map_or_else(
                || {
                    std::env::var_os("HOME")
                        .map_or_else(|| PathBuf::from("/root"), PathBuf::from)
                        .join(".docker")
                },
                PathBuf::from,
            );
        let podman = std::env::var_os("REGISTRY_AUTH_FILE")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_RUNTIME_DIR")
                    .filter(|d| !d.is_empty())
                    .map(|d| PathBuf::from(d).join("containers/auth.json"))
            });
        Self {
            path: dir.join("config.json"),
            podman,
        }
    }

    fn read(path: &Path) -> Result<Map<String, Value>, ConfigError> {
        match fs_err::read(path) {
            Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(Map::new()),
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => Err(ConfigError::Bad {
                    path: path.to_owned(),
                    reason: "not a JSON object".into(),
                }),
                Err(e) => Err(ConfigError::Bad {
                    path: path.to_owned(),
                    reason: e.to_string(),
                }),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes the file through a temporary name, mode 0600.
    fn write(&self, m: &Map<String, Value>) -> Result<(), ConfigError> {
        use fs_err::os::unix::fs::OpenOptionsExt as _;
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        fs_err::create_dir_all(dir)?;
        let tmp = dir.join(format!(".config.json.{}.tmp", std::process::id()));
        {
            let mut f = fs_err::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut data = serde_json::to_vec_pretty(m).map_err(std::io::Error::other)?;
            data.push(b'\n');
            f.write_all(&data)?;
            f.sync_all()?;
        }
        fs_err::rename(&tmp, &self.path)?;
        Ok(())
    }

    /// The helper that holds `registry`'s credentials, if any.
    fn helper_for(m: &Map<String, Value>, registry: &str) -> Option<String> {
        let key = config_key(registry);
        m.get("credHelpers")
            .and_then(Value::as_object)
            .and_then(|h| h.get(&key).or_else(|| h.get(registry)))
            .or_else(|| m.get("credsStore"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    }

    /// The credentials for `registry`: its helper's, else `auths`, else podman's.
    pub fn get(&self, registry: &str) -> Result<Option<Credentials>, ConfigError> {
        let m = Self::read(&self.path)?;
        if let Some(h) = Self::helper_for(&m, registry) {
            if let Some(c) = helper_get(&h, &config_key(registry))? {
                return Ok(Some(c));
            }
        }
        if let Some(c) = auths_entry(&m, registry, &self.path)? {
            return Ok(Some(c));
        }
        if let Some(p) = &self.podman {
            let pm = Self::read(p)?;
            return auths_entry(&pm, registry, p);
        }
        Ok(None)
    }

    /// Stores credentials for `registry` (in its helper when one is set, as
    /// docker does; else base64 in `auths`).
    pub fn store(&self, registry: &str, c: &Credentials) -> Result<(), ConfigError> {
        let mut m = Self::read(&self.path)?;
        let key = config_key(registry);
        if let Some(h) = Self::helper_for(&m, registry) {
            helper_store(&h, &key, c)?;
            // docker leaves an empty entry behind so `auths` lists the registry.
            let auths = m
                .entry("auths")
                .or_insert_with(|| json!({}))
                .as_object_mut();
            if let Some(a) = auths {
                a.insert(key, json!({}));
            }
            return self.write(&m);
        }
        let entry = json!({
            "auth": base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", c.username, c.password)),
        });
        match m.entry("auths").or_insert_with(|| json!({})) {
            Value::Object(a) => {
                a.insert(key, entry);
            }
            other => *other = json!({ key: entry }),
        }
        self.write(&m)
    }

    /// Removes `registry`'s credentials; whether there were any.
    pub fn erase(&self, registry: &str) -> Result<bool, ConfigError> {
        let mut m = Self::read(&self.path)?;
        let key = config_key(registry);
        let mut found = false;
        if let Some(h) = Self::helper_for(&m, registry) {
            found |= helper_get(&h, &key)?.is_some();
            if found {
                helper_erase(&h, &key)?;
            }
        }
        if let Some(a) = m.get_mut("auths").and_then(Value::as_object_mut) {
            let keys: Vec<String> = a
                .keys()
                .filter(|k| **k == key || key_host(k) == key_host(&key))
                .cloned()
                .collect();
            for k in keys {
                a.remove(&k);
                found = true;
            }
        }
        if found {
            self.write(&m)?;
        }
        Ok(found)
    }
}

/// The `auths` entry of `registry` in a docker or podman file.
fn auths_entry(
    m: &Map<String, Value>,
    registry: &str,
    path: &Path,
) -> Result<Option<Credentials>, ConfigError> {
    let Some(auths) = m.get("auths").and_then(Value::as_object) else {
        return Ok(None);
    };
    let key = config_key(registry);
    let entry = auths.get(&key).or_else(|| {
        auths
            .iter()
            .find(|(k, _)| key_host(k) == key_host(&key))
            .map(|(_, v)| v)
    });
    let Some(e) = entry else { return Ok(None) };
    if let Some(t) = e
        .get("identitytoken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        return Ok(Some(Credentials {
            username: String::new(),
            password: String::new(),
            identity_token: Some(t.to_owned()),
        }));
    }
    let Some(auth) = e
        .get("auth")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
    else {
        return Ok(None);
    };
    let bad = |reason: &str| ConfigError::Bad {
        path: path.to_owned(),
        reason: format!("the auth of {key} {reason}"),
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| bad("is not base64"))?;
    let text = String::from_utf8(raw).map_err(|_| bad("is not UTF-8"))?;
    let (u, p) = text
        .split_once(':')
        .ok_or_else(|| bad("is not user:password"))?;
    Ok(Some(Credentials {
        username: u.to_owned(),
        password: p.to_owned(),
        identity_token: None,
    }))
}

fn run_helper(helper: &str, verb: &str, input: &[u8]) -> Result<(bool, String), ConfigError> {
    let prog = format!("docker-credential-{helper}");
    let err = |reason: String| ConfigError::Helper {
        helper: helper.to_owned(),
        reason,
    };
    let mut child = Command::new(&prog)
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run {prog}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| err(format!("{verb}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("{verb}: {e}")))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

fn helper_get(helper: &str, server: &str) -> Result<Option<Credentials>, ConfigError> {
    let (ok, out) = run_helper(helper, "get", server.as_bytes())?;
    if !ok {
        // "credentials not found in native keychain" is no error.
        if out.contains("not found") {
            return Ok(None);
        }
        return Err(ConfigError::Helper {
            helper: helper.to_owned(),
            reason: format!("get: {}", out.trim()),
        });
    }
    let v: Value = serde_json::from_str(out.trim()).map_err(|e| ConfigError::Helper {
        helper: helper.to_owned(),
        reason: format!("get: not JSON: {e}"),
    })?;
    let user = v["Username"].as_str().unwrap_or("").to_owned();
    let secret = v["Secret"].as_str().unwrap_or("").to_owned();
    if secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if user == "<token>" {
        Credentials {
            username: String::new(),
            password: String::new(),
            identity_token: Some(secret),
        }
    } else {
        Credentials {
            username: user,
            password: secret,
            identity_token: None,
        }
    }))
}

fn helper_store(helper: &str, server: &str, c: &Credentials) -> Result<(), ConfigError> {
    let input = json!({"ServerURL": server, "Username": c.username, "Secret": c.password});
    let (ok, out) = run_helper(helper, "store", input.to_string().as_bytes())?;
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Helper {
            helper: helper.to_owned(),
            reason: format!("store: {}", out.trim()),
        })
    }
}

fn helper_erase(helper: &str, server: &str) -> Result<(), ConfigError> {
    let (ok, out) = run_helper(helper, "erase", server.as_bytes())?;
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Helper {
            helper: helper.to_owned(),
            reason: format!("erase: {}", out.trim()),
        })
    }
}

impl CredentialSource for DockerConfig {
    /// A file or helper that cannot be read gives no credentials (the
    /// registry's 401 then says to log in); `login` reports such errors.
    fn credentials(&self, registry: &str) -> Option<Credentials> {
        self.get(registry).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auths_round_trip_and_hub_keys() {
        let dir = tempfile::tempdir().unwrap();
        let c = DockerConfig {
            path: dir.path().join("d/config.json"),
            podman: None,
        };
        assert_eq!(c.get("127.0.0.1:5000").unwrap(), None);
        let creds = Credentials {
            username: "u".into(),
            password: "p:w".into(),
            identity_token: None,
        };
        c.store("127.0.0.1:5000", &creds).unwrap();
        c.store("docker.io", &creds).unwrap();
        let text = fs_err::read_to_string(&c.path).unwrap();
        assert!(text.contains("\"https://index.docker.io/v1/\""), "{text}");
        assert!(text.contains("dTpwOnc="), "{text}");
        assert_eq!(c.get("127.0.0.1:5000").unwrap(), Some(creds.clone()));
        assert_eq!(c.get("docker.io").unwrap(), Some(creds));
        assert!(c.erase("127.0.0.1:5000").unwrap());
        assert!(!c.erase("127.0.0.1:5000").unwrap());
        assert_eq!(c.get("127.0.0.1:5000").unwrap(), None);
    }

    #[test]
    fn identity_tokens_and_podman_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let docker = dir.path().join("config.json");
        let podman = dir.path().join("auth.json");
        fs_err::write(
            &docker,
            r#"{"auths":{"https://reg.example":{"identitytoken":"tok"}}}"#,
        )
        .unwrap();
        fs_err::write(&podman, r#"{"auths":{"other.example":{"auth":"YTpi"}}}"#).unwrap();
        let c = DockerConfig {
            path: docker,
            podman: Some(podman),
        };
        let t = c.get("reg.example").unwrap().unwrap();
        assert_eq!(t.identity_token.as_deref(), Some("tok"));
        let o = c.get("other.example").unwrap().unwrap();
        assert_eq!((o.username.as_str(), o.password.as_str()), ("a", "b"));
        fs_err::write(&c.path, "{not json").unwrap();
        let e = c.get("reg.example").unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}

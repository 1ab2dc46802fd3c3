//! Docker's image config JSON (`application/vnd.docker.container.image.v1+json`,
//! also valid as an OCI image config), as plain serde types.
//!
//! Field names are exactly Docker's. Every field the model does not know is kept in
//! an `extra` map, so a config read from a store and written back loses nothing.
//! `null` where a list or object is expected reads as empty.

// Docker's JSON has maps to empty objects: `{"80/tcp": {}}`, `{"/data": {}}`
// (also inside the serde-generated code, hence module-wide).
#![allow(clippy::zero_sized_map_values)]

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Reads `null` (or a missing field, with `#[serde(default)]`) as `T::default()`.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// An empty JSON object (`{}`), the value type of `ExposedPorts` and `Volumes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// The whole image config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// RFC 3339 creation time; the frontend leaves it `None` (the exporter sets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// `MAINTAINER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// The runtime config.
    #[serde(default, deserialize_with = "null_default")]
    pub config: ContainerConfig,
    #[serde(default, deserialize_with = "null_default")]
    pub rootfs: RootFs,
    #[serde(default, deserialize_with = "null_default")]
    pub history: Vec<History>,
    /// Fields not modelled here (`container`, `container_config`, `docker_version`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `rootfs`: the layer diff IDs, bottom first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default = "layers")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<String>,
}

fn layers() -> String {
    "layers".to_owned()
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: layers(),
            diff_ids: Vec::new(),
        }
    }
}

/// One `history` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// True when the step changed no files (no layer in `rootfs`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `config`: what a container started from the image gets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub user: String,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub env: Vec<String>,
    /// `None` (unset) differs from `Some([])` only in memory; both are omitted.
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "is_none_or_empty")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub volumes: BTreeMap<String, Empty>,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub working_dir: String,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "null_default"
    )]
    pub stop_signal: String,
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        deserialize_with = "null_default"
    )]
    pub args_escaped: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub on_build: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub shell: Vec<String>,
    /// Docker's other container-config fields (`Hostname`, `Tty`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[allow(clippy::ref_option)] // serde's skip_serializing_if passes &Option
fn is_none_or_empty(v: &Option<Vec<String>>) -> bool {
    v.as_ref().is_none_or(Vec::is_empty)
}

/// `Healthcheck`; durations in nanoseconds, zero meaning "inherit the default".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes &T
fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl ImageConfig {
    /// The value of `name` in `config.Env`, if set.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.config
            .env
            .iter()
            .rev()
            .find_map(|e| match e.split_once('=') {
                Some((k, v)) if k == name => Some(v),
                None if e == name => Some(""),
                _ => None,
            })
    }

    /// The image a `FROM scratch` stage starts with (`BuildKit`'s `emptyImage`):
    /// platform, `WorkingDir` `/` and the default `PATH`.
    pub fn empty(platform: &Platform) -> Self {
        let mut img = Self {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            ..Self::default()
        };
        "/".clone_into(&mut img.config.working_dir);
        img.config.env = vec![format!("PATH={DEFAULT_PATH}")];
        img
    }
}

/// `PATH` for a Linux image whose base sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An OCI platform: `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on, in OCI terms (`linux/amd64`, `linux/arm64`, ...).
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64", None),
            "loongarch64" => ("loong64", None),
            "mips64" => ("mips64", None),
            other => (other, None),
        };
        let os = match std::env::consts::OS {
            "macos" => "darwin",
            other => other,
        };
        Self {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Parses `os[/arch[/variant]]` (containerd's normalisation of the common
    /// aliases: `x86_64` → `amd64`, `aarch64` → `arm64`, `arm64/v8` → `arm64`).
    pub fn parse(s: &str) -> Option<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) || parts.len() > 3 {
            return None;
        }
        let os = parts[0].to_ascii_lowercase();
        let host = Self::host();
        let (mut arch, mut variant) = match parts.get(1) {
            Some(a) => (
                a.to_ascii_lowercase(),
                parts.get(2).map(|v| v.to_ascii_lowercase()),
            ),
            None => (host.architecture.clone(), host.variant.clone()),
        };
        match arch.as_str() {
            "x86_64" | "x86-64" => "amd64".clone_into(&mut arch),
            "aarch64" => "arm64".clone_into(&mut arch),
            "i386" => "386".clone_into(&mut arch),
            "armhf" => {
                "arm".clone_into(&mut arch);
                variant = Some("v7".to_owned());
            }
            _ => {}
        }
        if arch == "arm64" && variant.as_deref() == Some("v8") {
            variant = None;
        }
        if arch == "arm" && variant.is_none() {
            variant = Some("v7".to_owned());
        }
        Some(Self {
            os,
            architecture: arch,
            variant,
        })
    }
}

impl Default for Platform {
    fn default() -> Self {
        Self::host()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

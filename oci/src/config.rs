//! The image config: Docker's JSON (`application/vnd.docker.container.image.v1+json`,
//! also valid as an OCI image config `application/vnd.oci.image.config.v1+json`):
//! the OCI fields plus the ones Docker adds (Healthcheck, `OnBuild`, Shell,
//! `ArgsEscaped`, ...), as plain serde types.
//!
//! Field names are exactly Docker's. Every field the model does not know is kept in
//! an `extra` map, so a config read from a store and written back loses nothing.
//! `null` where a list or object is expected reads as empty; empty values are
//! omitted when written (except `config`, always written).
//!
//! oci-spec's `ImageConfiguration` has no place for Docker's fields and no way to
//! carry unknown ones, so these types are our own, with the same JSON names.

// Docker's JSON has maps to empty objects: `{"80/tcp": {}}`, `{"/data": {}}`
// (also inside the serde-generated code, hence module-wide).
#![allow(clippy::zero_sized_map_values)]

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::{Digest, Platform};

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
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub history: Vec<History>,
    /// Fields not modelled here (`container`, `container_config`, `docker_version`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `rootfs`: the layer diff IDs, bottom first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default = "layers")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<Digest>,
}

fn layers() -> String {
    "layers".to_owned()
}

impl RootFs {
    /// The chain ID of the top layer (`ChainID(L0) = DiffID(L0)`,
    /// `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`, as the OCI
    /// image spec defines it); `None` for an image without layers.
    pub fn chain_id(&self) -> Option<Digest> {
        let mut chain: Option<Digest> = None;
        for d in &self.diff_ids {
            chain = Some(match chain {
                None => d.clone(),
                Some(c) => Digest::of(format!("{c} {d}").as_bytes()),
            });
        }
        chain
    }
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
    #[serde(
        default,
        skip_serializing_if = "std::ops::Not::not",
        deserialize_with = "null_default"
    )]
    pub empty_layer: bool,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
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
    pub extra: BTreeMap<String, Value>,
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
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "null_default"
    )]
    pub interval: i64,
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "null_default"
    )]
    pub timeout: i64,
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "null_default"
    )]
    pub start_period: i64,
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "null_default"
    )]
    pub start_interval: i64,
    #[serde(
        default,
        skip_serializing_if = "is_zero",
        deserialize_with = "null_default"
    )]
    pub retries: i64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes &T
fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl ImageConfig {
    /// Parses a config blob (a JSON object).
    pub fn from_slice(data: &[u8]) -> crate::Result<Self> {
        let v: Value =
            serde_json::from_slice(data).map_err(|e| crate::Error::BadConfig(e.to_string()))?;
        if !v.is_object() {
            return Err(crate::Error::BadConfig("not a JSON object".into()));
        }
        serde_json::from_value(v).map_err(|e| crate::Error::BadConfig(e.to_string()))
    }

    /// The canonical JSON bytes of this config (its sha256 is the image ID).
    pub fn to_canonical(&self) -> crate::Result<Vec<u8>> {
        crate::json::canonical(self)
    }

    /// The image ID this config would have.
    pub fn id(&self) -> crate::Result<Digest> {
        Ok(Digest::of(&self.to_canonical()?))
    }

    /// `created` as seconds since the epoch (0 when absent or unparsable).
    pub fn created_unix(&self) -> i64 {
        self.created
            .as_deref()
            .and_then(crate::time::parse_rfc3339)
            .map_or(0, |t| t.0)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_fields_and_unknown_fields_survive_a_round_trip() {
        let src = r#"{"architecture":"amd64","os":"linux","config":{"Healthcheck":{"Test":["CMD","true"],"Interval":30000000000},"OnBuild":["RUN x"],"Shell":["/bin/bash","-c"],"ArgsEscaped":true,"Hostname":"h","Env":["A=b"]},"rootfs":{"type":"layers","diff_ids":[]},"docker_version":"25.0","container_config":{"Cmd":["x"]}}"#;
        let c = ImageConfig::from_slice(src.as_bytes()).unwrap();
        let out: Value = serde_json::from_slice(&c.to_canonical().unwrap()).unwrap();
        let orig: Value = serde_json::from_str(src).unwrap();
        assert_eq!(out, orig);
    }

    #[test]
    fn the_id_is_stable_whatever_the_field_order() {
        let a = ImageConfig::from_slice(
            br#"{"os":"linux","architecture":"amd64","rootfs":{"diff_ids":[],"type":"layers"}}"#,
        )
        .unwrap();
        let b = ImageConfig::from_slice(
            br#"{"architecture":"amd64","rootfs":{"type":"layers","diff_ids":[]},"os":"linux"}"#,
        )
        .unwrap();
        assert_eq!(a.id().unwrap(), b.id().unwrap());
    }

    #[test]
    fn empty_values_are_omitted_and_nulls_read_as_empty() {
        let c = ImageConfig::from_slice(
            br#"{"architecture":"amd64","os":"linux","config":{"Env":null,"User":"","Entrypoint":[],"Healthcheck":{"Test":["NONE"],"Interval":null}},"history":null,"rootfs":{"type":"layers","diff_ids":null}}"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(c.to_canonical().unwrap()).unwrap(),
            r#"{"architecture":"amd64","config":{"Healthcheck":{"Test":["NONE"]}},"os":"linux","rootfs":{"diff_ids":[],"type":"layers"}}"#
        );
        assert!(ImageConfig::from_slice(b"[]").is_err());
    }
}

//! The image config: the OCI image configuration plus the fields Docker adds
//! (Healthcheck, `OnBuild`, Shell, `ArgsEscaped`, ...). Fields this crate does not
//! know are kept in `extra` and written back, so nothing is ever dropped.
//!
//! oci-spec's `ImageConfiguration` has no place for Docker's fields and no way to
//! carry unknown ones, so these types are our own, with the same JSON names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Digest;

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

/// The image config (`application/vnd.oci.image.config.v1+json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "os.version"
    )]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ContainerConfig>,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Docker's and others' fields this crate does not model (container, `docker_version`, ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The runtime part of the config, with Docker's field names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub args_escaped: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Docker's HEALTHCHECK (durations in nanoseconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `rootfs`: the layer diff IDs, bottom first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default = "layers")]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

fn layers() -> String {
    "layers".into()
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
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub empty_layer: bool,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl ImageConfig {
    /// Parses a config blob.
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

    /// The runtime config, created empty when absent.
    pub fn config_mut(&mut self) -> &mut ContainerConfig {
        self.config.get_or_insert_with(ContainerConfig::default)
    }
}

/// The architecture of this machine in GOARCH terms.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "arm" => "arm",
        other => other,
    }
}

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
}

//! Platforms (`os/arch[/variant]`) and the host's architecture in GOARCH terms.

use std::fmt;

/// The GOARCH name of a Rust `target_arch` (`std::env::consts::ARCH`) and the
/// variant an image for it carries, as Go's `runtime.GOARCH` (and containerd's
/// default platform) would name that machine. Rust spells both endiannesses of
/// 64-bit POWER `powerpc64`; the caller passes `little_endian` to tell them apart
/// (`ppc64le` is the one Linux images are built for).
pub fn goarch(rust_arch: &str, little_endian: bool) -> (&str, Option<&'static str>) {
    match rust_arch {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", None),
        "x86" => ("386", None),
        "arm" => ("arm", Some("v7")),
        "powerpc64" if little_endian => ("ppc64le", None),
        "powerpc64" => ("ppc64", None),
        "powerpc" => ("ppc", None),
        "mips64" if little_endian => ("mips64le", None),
        "mips" if little_endian => ("mipsle", None),
        "loongarch64" => ("loong64", None),
        other => (other, None),
    }
}

/// The architecture of this machine in GOARCH terms (`amd64`, `arm64`, `ppc64le`, ...).
pub fn host_architecture() -> &'static str {
    goarch(std::env::consts::ARCH, cfg!(target_endian = "little")).0
}

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
        let (architecture, variant) =
            goarch(std::env::consts::ARCH, cfg!(target_endian = "little"));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_architectures_map_to_goarch() {
        for (rust, le, want) in [
            ("x86_64", true, ("amd64", None)),
            ("aarch64", true, ("arm64", None)),
            ("x86", true, ("386", None)),
            ("arm", true, ("arm", Some("v7"))),
            ("powerpc64", false, ("ppc64", None)),
            ("powerpc64", true, ("ppc64le", None)),
            ("riscv64", true, ("riscv64", None)),
            ("s390x", false, ("s390x", None)),
            ("loongarch64", true, ("loong64", None)),
            ("mips64", false, ("mips64", None)),
            ("mips64", true, ("mips64le", None)),
        ] {
            assert_eq!(goarch(rust, le), want, "{rust} little_endian={le}");
        }
    }

    #[test]
    fn the_host_platform_uses_the_one_mapping() {
        let host = Platform::host();
        assert_eq!(host.architecture, host_architecture());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(host.to_string(), "linux/amd64");
    }

    #[test]
    fn platform_aliases_are_normalised() {
        let p = |s| Platform::parse(s).unwrap().to_string();
        assert_eq!(p("linux/x86_64"), "linux/amd64");
        assert_eq!(p("linux/aarch64"), "linux/arm64");
        assert_eq!(p("linux/arm64/v8"), "linux/arm64");
        assert_eq!(p("linux/armhf"), "linux/arm/v7");
        assert_eq!(p("linux/arm"), "linux/arm/v7");
        assert_eq!(p("Linux/AMD64"), "linux/amd64");
        assert!(Platform::parse("linux//x").is_none());
        assert!(Platform::parse("a/b/c/d").is_none());
    }
}

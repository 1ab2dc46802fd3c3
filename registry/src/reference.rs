//! Where a reference lives: the registry host, the repository in it, and the
//! tag or digest, as the distribution API names them.

use std::fmt;
use std::net::IpAddr;

use rbuild_oci::{Digest, Reference};

/// The name docker gives Docker Hub in references.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's API host.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A reference split for the distribution API.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RemoteRef {
    /// The registry as the reference names it (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The repository inside it (`library/busybox`, `team/app`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl RemoteRef {
    /// Splits a parsed reference (no tag and no digest means `latest`).
    pub fn new(r: &Reference) -> Self {
        let first = r.repo.split('/').next().unwrap_or("");
        let has_domain = r.repo.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        let (registry, repository) = if has_domain {
            let (d, rest) = r.repo.split_once('/').unwrap_or((first, ""));
            (d.to_owned(), rest.to_owned())
        } else if r.repo.contains('/') {
            (DOCKER_HUB.to_owned(), r.repo.clone())
        } else {
            (DOCKER_HUB.to_owned(), format!("library/{}", r.repo))
        };
        let tag = match (&r.tag, &r.digest) {
            (None, None) => Some("latest".to_owned()),
            (t, _) => t.clone(),
        };
        Self {
            registry,
            repository,
            tag,
            digest: r.digest.clone(),
        }
    }

    /// The host the API is reached at (`registry-1.docker.io` for Docker Hub).
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// The reference part of a manifest URL: the digest when given, else the tag.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The same repository at another tag or digest.
    #[must_use]
    pub fn with_digest(&self, d: Digest) -> Self {
        Self {
            digest: Some(d),
            ..self.clone()
        }
    }
}

impl fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The API host of a registry name.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB || registry == "index.docker.io" {
        DOCKER_HUB_API
    } else {
        registry
    }
}

/// Whether a registry host (with or without port) is on the loopback
/// interface: `localhost`, 127.0.0.0/8 or `::1`. Docker lets these speak plain
/// http without configuration.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> RemoteRef {
        RemoteRef::new(&Reference::parse(s).unwrap())
    }

    #[test]
    fn references_split_into_registry_and_repository() {
        let r = split("busybox");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.api_host()),
            ("docker.io", "library/busybox", "registry-1.docker.io")
        );
        assert_eq!(r.reference(), "latest");
        let r = split("me/app:1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "me/app")
        );
        let r = split("127.0.0.1:5000/a/b:v2");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.api_host()),
            ("127.0.0.1:5000", "a/b", "127.0.0.1:5000")
        );
        assert_eq!(r.to_string(), "127.0.0.1:5000/a/b:v2");
        let hex = "a".repeat(64);
        let r = split(&format!("localhost/x@sha256:{hex}"));
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.tag, None);
        assert_eq!(r.reference(), format!("sha256:{hex}"));
    }

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost:5000",
            "127.0.0.1:1",
            "127.3.4.5",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "example.com:5000",
            "10.0.0.1:5000",
            "docker.io",
            "[fe80::1]:5",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}

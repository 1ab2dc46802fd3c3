//! Image references as the docker CLI shows them: `busybox:latest`,
//! `registry:5000/team/app:1.0`, `app@sha256:...`. `docker.io/library/` is
//! normalised away (the "familiar" form), a missing tag means `latest`.

use std::fmt;

use crate::Digest;
use crate::error::{Error, Result};

/// A parsed reference in its familiar form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// The repository (`busybox`, `localhost:5000/x/y`).
    pub repo: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_lowercase() && !b[0].is_ascii_digit() {
        return false;
    }
    let last = b[b.len() - 1];
    if !last.is_ascii_lowercase() && !last.is_ascii_digit() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !(b[i].is_ascii_lowercase() || b[i].is_ascii_digit()) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

impl Reference {
    /// Parses and normalises a reference; `latest` is not added (see [`Self::with_default_tag`]).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::InvalidReference(s.to_owned());
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(Digest::parse(d).map_err(|_| bad())?)),
            None => (s, None),
        };
        let (repo, tag) = match name.rfind(':') {
            Some(i) if !name[i + 1..].contains('/') => (&name[..i], Some(name[i + 1..].to_owned())),
            _ => (name, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(bad());
            }
        }
        if repo.is_empty() || repo.len() > 255 {
            return Err(bad());
        }
        let mut parts: Vec<&str> = repo.split('/').collect();
        let first = parts[0];
        let has_domain =
            parts.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost");
        if has_domain {
            if !valid_domain(first) {
                return Err(bad());
            }
            if !parts[1..].iter().all(|c| valid_component(c)) {
                return Err(bad());
            }
        } else if !parts.iter().all(|c| valid_component(c)) {
            return Err(bad());
        }
        // Familiar form: drop docker.io and library/.
        if has_domain
            && (first == "docker.io"
                || first == "index.docker.io"
                || first == "registry-1.docker.io")
        {
            parts.remove(0);
        }
        if parts.len() == 2 && parts[0] == "library" {
            parts.remove(0);
        }
        Ok(Self {
            repo: parts.join("/"),
            tag,
            digest,
        })
    }

    /// Parses and adds `:latest` when there is neither a tag nor a digest.
    pub fn parse_tagged(s: &str) -> Result<Self> {
        Ok(Self::parse(s)?.with_default_tag())
    }

    /// Parses a name to tag an image with (`:latest` added when it has no tag): a
    /// reference with a digest is refused ([`Error::DigestTag`]), as docker refuses it.
    pub fn parse_tag(s: &str) -> Result<Self> {
        let r = Self::parse_tagged(s)?;
        r.check_tag()?;
        Ok(r)
    }

    /// Fails with [`Error::DigestTag`] when this reference has a digest: a tag names
    /// a repository and a tag only.
    pub fn check_tag(&self) -> Result<()> {
        if self.digest.is_some() {
            return Err(Error::DigestTag(self.to_string()));
        }
        Ok(())
    }

    #[must_use]
    pub fn with_default_tag(mut self) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some("latest".into());
        }
        self
    }

    /// The fully qualified name (`docker.io/library/busybox:latest`), as containerd annotates it.
    pub fn full_name(&self) -> String {
        let first = self.repo.split('/').next().unwrap_or("");
        let domain_given = self.repo.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        let repo = if domain_given {
            self.repo.clone()
        } else if self.repo.contains('/') {
            format!("docker.io/{}", self.repo)
        } else {
            format!("docker.io/library/{}", self.repo)
        };
        let mut s = repo;
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d.as_str());
        }
        s
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_forms() {
        assert_eq!(
            Reference::parse_tagged("busybox").unwrap().to_string(),
            "busybox:latest"
        );
        assert_eq!(
            Reference::parse_tagged("docker.io/library/busybox:1")
                .unwrap()
                .to_string(),
            "busybox:1"
        );
        assert_eq!(
            Reference::parse_tagged("docker.io/me/app")
                .unwrap()
                .to_string(),
            "me/app:latest"
        );
        assert_eq!(
            Reference::parse_tagged("localhost:5000/a/b:v2")
                .unwrap()
                .to_string(),
            "localhost:5000/a/b:v2"
        );
        assert_eq!(
            Reference::parse_tagged("busybox").unwrap().full_name(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            Reference::parse_tagged("me/app:x").unwrap().full_name(),
            "docker.io/me/app:x"
        );
    }

    #[test]
    fn normalisation_of_domains_ports_and_digests() {
        let hex = "0123456789abcdef".repeat(4);
        let r = Reference::parse(&format!("index.docker.io/library/alpine@sha256:{hex}")).unwrap();
        assert_eq!(r.repo, "alpine");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref().map(Digest::hex), Some(hex.as_str()));
        assert_eq!(
            r.full_name(),
            format!("docker.io/library/alpine@sha256:{hex}")
        );
        // A port makes the first component a registry; its tag is after the last `:`.
        let r = Reference::parse_tagged("myhost:5000/app").unwrap();
        assert_eq!(
            (r.repo.as_str(), r.tag.as_deref()),
            ("myhost:5000/app", Some("latest"))
        );
        assert_eq!(r.full_name(), "myhost:5000/app:latest");
        // `library/` is only dropped on docker.io, never on another registry.
        assert_eq!(
            Reference::parse("quay.io/library/x:1").unwrap().to_string(),
            "quay.io/library/x:1"
        );
        assert_eq!(
            Reference::parse("library/busybox").unwrap().to_string(),
            "busybox"
        );
        // A tag and a digest together keep both.
        assert_eq!(
            Reference::parse(&format!("docker.io/me/app:v1@sha256:{hex}"))
                .unwrap()
                .to_string(),
            format!("me/app:v1@sha256:{hex}")
        );
        // `localhost` without a port is a registry too.
        assert_eq!(
            Reference::parse("localhost/app").unwrap().full_name(),
            "localhost/app"
        );
    }

    #[test]
    fn tags_cannot_have_a_digest() {
        let hex = "a".repeat(64);
        for s in [format!("app@sha256:{hex}"), format!("app:1@sha256:{hex}")] {
            assert!(Reference::parse(&s).is_ok(), "{s} is a reference");
            let e = Reference::parse_tag(&s).unwrap_err();
            assert!(matches!(e, Error::DigestTag(_)), "{s}: {e}");
            assert!(
                e.to_string()
                    .starts_with("refusing to create a tag with a digest reference: app"),
                "{e}"
            );
        }
        assert_eq!(
            Reference::parse_tag("app").unwrap().to_string(),
            "app:latest"
        );
    }

    #[test]
    fn invalid_references_are_refused() {
        for bad in [
            "",
            "UPPER",
            "a:",
            "a:b:c",
            "-a",
            "a//b",
            "a@sha256:12",
            "a:-x",
            "a b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}

//! sha256 digests (`sha256:<hex>`).

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::error::Error;

/// A content digest, always `sha256:` followed by 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 hex>`; anything else is refused.
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s.strip_prefix("sha256:") {
            Some(hex) if is_hex64(hex) => Ok(Self(s.to_owned())),
            _ => Err(Error::InvalidDigest(s.to_owned())),
        }
    }

    /// Parses a bare 64-digit hex string as a sha256 digest.
    pub fn from_hex(hex: &str) -> Result<Self, Error> {
        if is_hex64(hex) {
            Ok(Self(format!("sha256:{hex}")))
        } else {
            Err(Error::InvalidDigest(hex.to_owned()))
        }
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_sha256(Sha256::digest(data).into())
    }

    /// The digest whose sha256 sum is `bytes` (what a streaming hasher finished with).
    pub fn from_sha256(bytes: [u8; 32]) -> Self {
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in bytes {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        Self(s)
    }

    /// The hex part, without `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// The full `sha256:<hex>` form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_hex64(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl std::str::FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_input_is_the_known_value() {
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parse_refuses_bad_digests() {
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(
            Digest::parse("md5:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
                .is_err()
        );
        assert!(
            Digest::parse(
                "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
            )
            .is_err()
        );
    }
}

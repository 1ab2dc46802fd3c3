//! Authentication: credentials given by the caller, `WWW-Authenticate`
//! challenges, and the scopes of bearer tokens.

use std::collections::BTreeMap;
use std::fmt;

/// A user name and password, or an identity token (an `OAuth2` refresh
/// token), for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub identity_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field(
                "identity_token",
                &self.identity_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// What the caller knows about credentials: asked once per registry host.
pub trait CredentialSource: Send + Sync {
    /// The credentials for `registry` (as the reference names it), if any.
    fn credentials(&self, registry: &str) -> Option<Credentials>;
}

/// No credentials for any registry.
pub struct Anonymous;

impl CredentialSource for Anonymous {
    fn credentials(&self, _: &str) -> Option<Credentials> {
        None
    }
}

/// The same credentials for every registry (`rbuild login` checking what it
/// was given).
pub struct Fixed(pub Credentials);

impl CredentialSource for Fixed {
    fn credentials(&self, _: &str) -> Option<Credentials> {
        Some(self.0.clone())
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        }),
        _ => None,
    }
}

fn parse_params(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i] == b' ') {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        let key = s[start..i].trim().to_ascii_lowercase();
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                val.push(char::from(b[i]));
                i += 1;
            }
            i += 1;
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            s[vs.min(s.len())..i.min(s.len())]
                .trim()
                .clone_into(&mut val);
        }
        if !key.is_empty() {
            out.insert(key, val);
        }
    }
    out
}

/// The scope of a repository action: `repository:NAME:pull` or `...:pull,push`.
pub fn repo_scope(repository: &str, push: bool) -> String {
    if push {
        format!("repository:{repository}:pull,push")
    } else {
        format!("repository:{repository}:pull")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
    }

    #[test]
    fn credentials_are_not_shown_in_debug_output() {
        let c = Credentials {
            username: "u".into(),
            password: "secret".into(),
            identity_token: Some("tok-secret".into()),
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}

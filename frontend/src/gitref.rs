//! Git references as the Dockerfile frontend takes them (`BuildKit`'s
//! `dfgitutil.ParseGitRef` over `gitutil.ParseURL`): a build context or an
//! `ADD` source such as `https://host/repo.git#ref:subdir`,
//! `git@host:repo.git#ref`, `git://host/repo`, `ssh://git@host/repo`, with the
//! query form `?ref=…&subdir=…&tag=…&branch=…&checksum=…&keep-git-dir=…`.
//!
//! Pure string work; the ref is resolved to a commit and fetched elsewhere
//! (the worker's git source).

/// A parsed git reference.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GitRef {
    /// What git is given as the remote: the URL without its `#fragment` and
    /// `?query`.
    pub remote: String,
    /// Branch, tag, full commit, or `refs/...`; empty for the default branch.
    pub reference: String,
    /// A directory inside the repository (cleaned, relative, no `..`
    /// above the root); empty for the root.
    pub subdir: String,
    /// `?keep-git-dir=`: `None` when not given.
    pub keep_git_dir: Option<bool>,
    /// `?checksum=` / `?commit=`: a hex prefix of the commit expected.
    pub checksum: Option<String>,
    /// `?submodules=false` skips submodules.
    pub submodules: Option<bool>,
}

/// `None` when `s` is no git reference (a local path, an `http(s)` URL whose
/// path does not end in `.git`, another scheme); `Some(Err)` when it is one
/// but malformed (a bad query), with a message naming what is wrong.
pub fn parse(s: &str) -> Option<Result<GitRef, String>> {
    if s.starts_with("./") || s.starts_with("../") {
        return None;
    }
    let (remote, query, fragment) = if let Some(scheme_len) = scheme_len(s) {
        let scheme = s[..scheme_len].to_ascii_lowercase();
        if !matches!(scheme.as_str(), "http" | "https" | "ssh" | "git") {
            return None;
        }
        let (rest, fragment) = match s.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (s, None),
        };
        let (remote, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        if matches!(scheme.as_str(), "http" | "https") {
            let after = &remote[scheme_len + 3..];
            let path = after.find('/').map_or("", |i| &after[i..]);
            // Case-sensitive, as BuildKit's `strings.HasSuffix`.
            #[allow(clippy::case_sensitive_file_extension_comparisons)]
            if !path.ends_with(".git") {
                return None;
            }
        }
        (remote, query, fragment)
    } else {
        // scp-style: `user@host:path[?query][#fragment]` (BuildKit's gitSSHRegex).
        let (user, rest) = s.split_once('@')?;
        if user.is_empty()
            || !user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return None;
        }
        let (host, _) = rest.split_once(':')?;
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return None;
        }
        let (rest, fragment) = match s.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (s, None),
        };
        let (remote, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        (remote, query, fragment)
    };
    Some(finish(remote, query, fragment))
}

/// `true` when `s` is a git reference (well formed or not).
pub fn is_git(s: &str) -> bool {
    parse(s).is_some()
}

/// The length of `scheme` in `scheme://` (`[a-zA-Z0-9]+`), if `s` starts so.
fn scheme_len(s: &str) -> Option<usize> {
    let i = s.find("://")?;
    (i > 0 && s[..i].bytes().all(|b| b.is_ascii_alphanumeric())).then_some(i)
}

fn finish(remote: &str, query: Option<&str>, fragment: Option<&str>) -> Result<GitRef, String> {
    let mut g = GitRef {
        remote: remote.to_owned(),
        ..GitRef::default()
    };
    if let Some(f) = fragment.filter(|f| !f.is_empty()) {
        let f = percent_decode(f);
        let (r, sub) = f.split_once(':').unwrap_or((&f, ""));
        r.clone_into(&mut g.reference);
        g.subdir = clean_subdir(sub);
    }
    let (mut tag, mut branch) = (None, None);
    for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let (k, v) = (percent_decode(k), percent_decode(v));
        let flag = |name: &str| -> Result<bool, String> {
            match v.as_str() {
                "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
                _ => Err(format!("invalid {name} value: {v:?}")),
            }
        };
        match k.as_str() {
            "keep-git-dir" => g.keep_git_dir = Some(flag("keep-git-dir")?),
            "submodules" => g.submodules = Some(flag("submodules")?),
            _ if v.is_empty() => return Err(format!("query {k:?} has no value")),
            "ref" => {
                if !g.reference.is_empty() && g.reference != v {
                    return Err(format!("ref conflicts: {:?} vs {v:?}", g.reference));
                }
                g.reference = v;
            }
            "tag" => tag = Some(v),
            "branch" => branch = Some(v),
            "subdir" => {
                let v = clean_subdir(&v);
                if !g.subdir.is_empty() && g.subdir != v {
                    return Err(format!("subdir conflicts: {:?} vs {v:?}", g.subdir));
                }
                g.subdir = v;
            }
            "checksum" | "commit" => g.checksum = Some(v),
            other => return Err(format!("unexpected query {other:?}")),
        }
    }
    let qualified = |prefix: &str, v: String| {
        if v.starts_with(prefix) {
            v
        } else {
            format!("{prefix}{v}")
        }
    };
    if let Some(t) = tag {
        let t = qualified("refs/tags/", t);
        if !g.reference.is_empty() && g.reference != t {
            return Err(format!("ref conflicts: {:?} vs {t:?}", g.reference));
        }
        g.reference = t;
    }
    if let Some(b) = branch {
        if g.reference.starts_with("refs/tags/") {
            return Err("branch conflicts with tag".to_owned());
        }
        let b = qualified("refs/heads/", b);
        if !g.reference.is_empty() && g.reference != b {
            return Err(format!("ref conflicts: {:?} vs {b:?}", g.reference));
        }
        g.reference = b;
    }
    if g.reference.starts_with('-') {
        return Err(format!("invalid ref {:?}", g.reference));
    }
    if let Some(c) = &g.checksum {
        if !c.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "invalid checksum {c} for Git URL, expected hex commit hash"
            ));
        }
    }
    Ok(g)
}

/// `path.Join("/", sub)` without the leading `/`: `..` cannot climb above
/// the repository.
fn clean_subdir(sub: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in sub.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A full commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub fn is_commit_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> GitRef {
        parse(s).expect("git").expect("valid")
    }

    #[test]
    fn fragments_and_schemes() {
        let g = ok("https://github.com/foo/bar.git#baz/qux:quux/quuz");
        assert_eq!(g.remote, "https://github.com/foo/bar.git");
        assert_eq!(g.reference, "baz/qux");
        assert_eq!(g.subdir, "quux/quuz");
        let g = ok("git@github.com:foo/bar.git#main");
        assert_eq!(g.remote, "git@github.com:foo/bar.git");
        assert_eq!(g.reference, "main");
        assert_eq!(
            ok("git://127.0.0.1:9418/r").remote,
            "git://127.0.0.1:9418/r"
        );
        assert_eq!(ok("ssh://git@h/r.git#:../../d").subdir, "d");
        assert_eq!(ok("https://h/r.git#:").subdir, "");
        assert!(parse("https://h/archive.tar.gz").is_none());
        assert!(parse("https://h/x.git.tar").is_none());
        assert!(parse("./repo.git").is_none());
        assert!(parse("ftp://h/r.git").is_none());
        assert!(parse("/abs/dir").is_none());
        assert!(parse("dir:with/colon").is_none());
    }

    #[test]
    fn queries() {
        let g = ok("https://h/r.git?tag=v1&subdir=a/b&keep-git-dir=1");
        assert_eq!(g.reference, "refs/tags/v1");
        assert_eq!(g.subdir, "a/b");
        assert_eq!(g.keep_git_dir, Some(true));
        assert_eq!(ok("https://h/r.git?branch=dev").reference, "refs/heads/dev");
        assert_eq!(ok("https://h/r.git?ref=main#main").reference, "main");
        assert!(parse("https://h/r.git?ref=a#b").unwrap().is_err());
        assert!(parse("https://h/r.git?bogus=1").unwrap().is_err());
        assert!(parse("https://h/r.git?checksum=xyz").unwrap().is_err());
        assert!(parse("https://h/r.git?tag=a&branch=b").unwrap().is_err());
        assert!(parse("https://h/r.git#--upload-pack=x").unwrap().is_err());
    }

    #[test]
    fn commit_shas() {
        assert!(is_commit_sha(&"a".repeat(40)));
        assert!(!is_commit_sha(&"a".repeat(12)));
        assert!(!is_commit_sha(&"A".repeat(40)));
    }
}

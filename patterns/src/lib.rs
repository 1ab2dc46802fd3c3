//! The pattern matcher of moby/patternmatcher, which `docker build` and `BuildKit` use
//! for `.dockerignore` files and for the include and exclude patterns of a copy
//! (`COPY --exclude`, the pattern after a `COPY --parents` pivot).
//!
//! Patterns are Go `filepath.Match` patterns (`*` and `?` stop at `/`, `[a-z]`, `[^x]`,
//! `\` escapes) plus `**` for any number of directories. A pattern matches the paths
//! it matches and everything below them; a pattern starting with `!` is an exception,
//! and the last pattern that matches a path decides.
//!
//! Path arguments are relative, `/`-separated paths (`dir/file`), without a leading
//! `/` or `./`.

mod gomatch;
mod goregex;

pub use gomatch::{BadPattern, go_match};

/// A pattern list that cannot be compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    /// A pattern that is only `!`.
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
    /// A pattern that Go's `filepath.Match` or moby's compiled regexp rejects.
    #[error("syntax error in pattern {pattern:?}: {reason}")]
    BadPattern {
        /// The pattern as cleaned (without its `!`).
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Go's `filepath.Clean` for `/`-separated paths (the one in `rbuild_oci`).
pub use rbuild_oci::path::clean;

/// Go's `filepath.Dir` for `/`-separated paths.
fn dir_of(path: &str) -> String {
    match path.rfind('/') {
        Some(i) => clean(&path[..=i]),
        None => ".".to_owned(),
    }
}

/// Each ancestor of `file` that moby checks for a parent match: the prefixes of
/// `Dir(file)` that end at a `/`, then `Dir(file)` itself; none when it is `.`.
fn parent_prefixes(file: &str) -> Vec<String> {
    let parent = dir_of(file);
    if parent == "." {
        return Vec::new();
    }
    let mut out: Vec<String> = parent
        .match_indices('/')
        .map(|(i, _)| parent[..i].to_owned())
        .collect();
    out.push(parent);
    out
}

/// Characters that make an exclusion pattern more than a plain path prefix (fsutil's
/// `patternChars` on Unix).
const PATTERN_CHARS: &[char] = &['*', '[', ']', '?', '^', '\\'];

#[derive(Debug, Clone)]
enum Kind {
    Exact,
    /// Everything that starts with this (the pattern without its trailing `**`).
    Prefix(String),
    /// Everything that ends with this (the pattern without its leading `**`).
    Suffix(String),
    Regex(regex::Regex),
}

/// One pattern, cleaned and compiled.
#[derive(Debug, Clone)]
pub struct Pattern {
    cleaned: String,
    exclusion: bool,
    kind: Kind,
}

impl Pattern {
    /// The cleaned pattern, without its `!`.
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether the pattern started with `!` (re-includes what it matches).
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// Whether the pattern matches `path` itself (no parent-directory matching).
    pub fn matches(&self, path: &str) -> bool {
        match &self.kind {
            Kind::Exact => path == self.cleaned,
            Kind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Kind::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|s| path == s)
            }
            Kind::Regex(re) => re.is_match(path),
        }
    }

    /// The pattern without a trailing `/**` or `/*` (fsutil's `patternWithoutTrailingGlob`).
    fn without_trailing_glob(&self) -> &str {
        let p = self.cleaned.as_str();
        let p = p.strip_suffix("/**").unwrap_or(p);
        p.strip_suffix("/*").unwrap_or(p)
    }

    fn compile(cleaned: String, exclusion: bool) -> Result<Pattern, PatternError> {
        let bad = |reason: String| PatternError::BadPattern {
            pattern: cleaned.clone(),
            reason,
        };
        validate_match_syntax(&cleaned).map_err(bad)?;

        // moby's `compile`: the kind of match, and the Go regexp when it needs one.
        let mut re = String::from("^");
        let mut kind = K::Exact;
        let mut it = cleaned.chars().peekable();
        let mut i = 0usize;
        while let Some(ch) = it.next() {
            match ch {
                '*' if it.peek() == Some(&'*') => {
                    it.next();
                    if it.peek() == Some(&'/') {
                        it.next();
                    }
                    if it.peek().is_none() {
                        if kind == K::Exact {
                            kind = K::Prefix;
                        } else {
                            re.push_str(".*");
                            kind = K::Regex;
                        }
                    } else {
                        re.push_str("(.*/)?");
                        kind = K::Regex;
                    }
                    if i == 0 {
                        kind = K::Suffix;
                    }
                }
                '*' => {
                    re.push_str("[^/]*");
                    kind = K::Regex;
                }
                '?' => {
                    re.push_str("[^/]");
                    kind = K::Regex;
                }
                '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                    re.push('\\');
                    re.push(ch);
                }
                '\\' => {
                    re.push('\\');
                    if let Some(n) = it.next() {
                        re.push(n);
                        kind = K::Regex;
                    }
                }
                '[' | ']' => {
                    re.push(ch);
                    kind = K::Regex;
                }
                c => re.push(c),
            }
            i += 1;
        }
        let kind = match kind {
            K::Exact => Kind::Exact,
            K::Prefix => Kind::Prefix(cleaned[..cleaned.len() - 2].to_owned()),
            K::Suffix => Kind::Suffix(cleaned[2..].to_owned()),
            K::Regex => {
                re.push('$');
                let rust = goregex::translate(&re).map_err(bad)?;
                Kind::Regex(regex::Regex::new(&rust).map_err(|e| bad(e.to_string()))?)
            }
        };
        Ok(Pattern {
            cleaned,
            exclusion,
            kind,
        })
    }
}

/// The kind of match while a pattern is compiled.
#[derive(PartialEq, Eq, Clone, Copy)]
enum K {
    Exact,
    Prefix,
    Suffix,
    Regex,
}

/// Go's `filepath.Match` syntax check (Unix): a `\` must escape something, and a
/// bracket expression must be closed, non-empty, and have no bare `-` or `]` where
/// a character is expected.
fn validate_match_syntax(p: &str) -> Result<(), String> {
    let mut it = p.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\\' if it.next().is_none() => return Err("trailing backslash".into()),
            '[' => {
                if it.peek() == Some(&'^') {
                    it.next();
                }
                let mut nrange = 0;
                loop {
                    if it.peek() == Some(&']') && nrange > 0 {
                        it.next();
                        break;
                    }
                    class_char(&mut it)?;
                    if it.peek() == Some(&'-') {
                        it.next();
                        class_char(&mut it)?;
                    }
                    nrange += 1;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// One character of a bracket expression (Go's `getEsc`).
fn class_char(it: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<char, String> {
    let c = match it.peek() {
        None => return Err("unterminated '['".into()),
        Some('-') => return Err("'-' where a character is expected in '[...]'".into()),
        Some(']') => return Err("empty '[]' or ']' where a character is expected".into()),
        Some(&c) => c,
    };
    it.next();
    let c = if c == '\\' {
        it.next().ok_or("unterminated '['")?
    } else {
        c
    };
    if it.peek().is_none() {
        return Err("unterminated '['".into());
    }
    Ok(c)
}

/// What [`PatternMatcher::matches_using_parent_results`] remembers about a directory
/// for its children: which patterns matched it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// A list of patterns, as from a `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl PatternMatcher {
    /// Compiles `patterns` (moby's `patternmatcher.New`): each is trimmed, empty ones
    /// are dropped, each is cleaned like `filepath.Clean`, a leading `!` makes an
    /// exclusion. A bad pattern is an error here (moby reports some of them only when
    /// the pattern is first used; the build fails either way).
    pub fn new<I, S>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = PatternMatcher::default();
        for p in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            let p = clean(p);
            let (exclusion, p) = match p.strip_prefix('!') {
                Some("") => return Err(PatternError::IllegalExclusion),
                Some(rest) => (true, rest.to_owned()),
                None => (false, p),
            };
            out.exclusions |= exclusion;
            out.patterns.push(Pattern::compile(p, exclusion)?);
        }
        Ok(out)
    }

    /// The compiled patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether there are no patterns (nothing is excluded).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern is an exclusion (`!`).
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether `path` is matched (excluded by a `.dockerignore`): the last pattern that
    /// matches the path or one of its parent directories decides (moby's
    /// `MatchesOrParentMatches`).
    pub fn matches(&self, path: &str) -> bool {
        let parents = parent_prefixes(path);
        let mut matched = false;
        for p in &self.patterns {
            // An inclusion cannot change a match, nor an exclusion a non-match.
            if p.exclusion != matched {
                continue;
            }
            if p.matches(path) || parents.iter().any(|d| p.matches(d)) {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// Whether `path` itself is matched, ignoring its parent directories (moby's
    /// `MatchesExact`).
    pub fn matches_exact(&self, path: &str) -> bool {
        let mut matched = false;
        for p in &self.patterns {
            if p.exclusion != matched {
                continue;
            }
            if p.matches(path) {
                matched = !p.exclusion;
            }
        }
        matched
    }

    /// [`PatternMatcher::matches`] for a walk from the top down (moby's
    /// `MatchesUsingParentResults`): pass the [`MatchInfo`] returned for the parent
    /// directory (or `MatchInfo::default()` when there is none or it is unknown), keep
    /// the returned one for the children of `path` if it is a directory.
    pub fn matches_using_parent_results(
        &self,
        path: &str,
        parent: &MatchInfo,
    ) -> (bool, MatchInfo) {
        let known = parent.parent_matched.len() == self.patterns.len() && !self.patterns.is_empty();
        let mut info = MatchInfo {
            parent_matched: vec![false; self.patterns.len()],
        };
        let mut parents: Option<Vec<String>> = None;
        let mut matched = false;
        for (i, p) in self.patterns.iter().enumerate() {
            let mut m = known && parent.parent_matched[i];
            if !m {
                if p.exclusion != matched {
                    continue;
                }
                m = p.matches(path);
                if !m && !known {
                    m = parents
                        .get_or_insert_with(|| parent_prefixes(path))
                        .iter()
                        .any(|d| p.matches(d));
                }
            }
            info.parent_matched[i] = m;
            if m {
                matched = !p.exclusion;
            }
        }
        (matched, info)
    }

    /// Whether every exclusion (`!`) pattern is a plain path once a trailing `/**` or
    /// `/*` is removed (fsutil's `onlyPrefixExcludeExceptions`). Only then can
    /// [`PatternMatcher::can_skip_excluded_dir`] say yes when there are exclusions.
    pub fn only_prefix_exclusions(&self) -> bool {
        self.patterns
            .iter()
            .filter(|p| p.exclusion)
            .all(|p| !p.without_trailing_glob().contains(PATTERN_CHARS))
    }

    /// For a directory that [`PatternMatcher::matches`] (it is excluded): whether a walk
    /// may skip everything below it, because no exclusion pattern could re-include
    /// anything there. Follows `BuildKit`'s context walker (fsutil): with no exclusions,
    /// yes; with an exclusion that has wildcards, no; otherwise yes unless an exclusion
    /// pattern lies inside `dir` (or is `dir`).
    pub fn can_skip_excluded_dir(&self, dir: &str) -> bool {
        if !self.exclusions {
            return true;
        }
        if !self.only_prefix_exclusions() {
            return false;
        }
        let dir_slash = format!("{dir}/");
        !self
            .patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| format!("{}/", p.without_trailing_glob()).starts_with(&dir_slash))
    }

    /// Whether every inclusion pattern is a plain path once a trailing `/**` or `/*`
    /// is removed (fsutil's `onlyPrefixIncludes`).
    pub fn only_prefix_inclusions(&self) -> bool {
        self.patterns
            .iter()
            .filter(|p| !p.exclusion)
            .all(|p| !p.without_trailing_glob().contains(PATTERN_CHARS))
    }

    /// For a matcher of paths to *include* (e.g. the sources a COPY selects) and a
    /// directory it does not match: whether a walk may skip everything below it,
    /// because no pattern could match anything there (fsutil's include filter).
    pub fn can_skip_unmatched_dir(&self, dir: &str) -> bool {
        if !self.only_prefix_inclusions() {
            return false;
        }
        let dir_slash = format!("{dir}/");
        !self
            .patterns
            .iter()
            .filter(|p| !p.exclusion)
            .any(|p| format!("{}/", p.without_trailing_glob()).starts_with(&dir_slash))
    }

    /// For a matcher of paths to *include* and a directory it does not match: whether
    /// some pattern could match a path below `dir`, comparing `dir`'s components with
    /// the pattern's leading ones (a `**` matches any number of them). `false` lets a
    /// walk skip the directory; wildcards are allowed anywhere, unlike
    /// [`PatternMatcher::can_skip_unmatched_dir`].
    pub fn may_match_below(&self, dir: &str) -> bool {
        let dir: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
        self.patterns.iter().filter(|p| !p.exclusion).any(|p| {
            let comps: Vec<&str> = p.cleaned.split('/').collect();
            for (i, d) in dir.iter().enumerate() {
                let Some(pc) = comps.get(i) else {
                    // The pattern is shorter: it matches (or not) an ancestor,
                    // which the matcher itself answers.
                    return true;
                };
                if pc.contains("**") {
                    return true;
                }
                // A malformed component could match anything: do not skip.
                if !go_match(pc, d).unwrap_or(true) {
                    return false;
                }
            }
            true
        })
    }
}

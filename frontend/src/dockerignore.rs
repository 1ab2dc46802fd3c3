//! `.dockerignore` files: moby's `ignorefile.ReadAll` and the choice of the file.
//! The pattern matcher behind them (a port of moby/patternmatcher, which `docker
//! build` and `BuildKit` use to decide which context paths exist for a build) lives in
//! [`rbuild_solver::patterns`], which the copy executor shares, and is re-exported here.
//!
//! A pattern excludes the paths it matches and everything below them; a pattern
//! starting with `!` re-includes, and the last pattern that matches a path decides.
//! Path arguments are relative, `/`-separated paths inside the context, as a walker
//! produces them (`dir/file`), without a leading `/` or `./`.

use std::path::{Path, PathBuf};

pub use rbuild_oci::path::clean;
pub use rbuild_solver::patterns::{MatchInfo, Pattern, PatternError, PatternMatcher};

/// What can go wrong with a `.dockerignore` (a bad pattern is a [`PatternError`],
/// when the patterns are compiled).
#[derive(Debug, thiserror::Error)]
pub enum DockerignoreError {
    /// Reading the file failed (the message names the path).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads the patterns of a `.dockerignore` file (moby's `ignorefile.ReadAll`): a UTF-8
/// byte-order mark at the start is dropped; lines starting with `#` are comments;
/// each other line is trimmed, empty ones are skipped, a leading `!` (and the space
/// after it) is kept apart, and the rest is cleaned like Go's `filepath.Clean` with
/// one leading `/` removed (`/a/../b/` becomes `b`).
pub fn read_all(content: &str) -> Vec<String> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    let mut out = Vec::new();
    for line in content.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        out.push(if invert {
            format!("!{cleaned}")
        } else {
            cleaned
        });
    }
    // A last line without a newline is a line; an empty remainder after the final
    // newline is not (it was skipped above as empty).
    out
}

/// [`read_all`] for bytes that may not be UTF-8 (invalid sequences become U+FFFD,
/// which is also what Go's regexp matching sees for them).
pub fn read_all_bytes(content: &[u8]) -> Vec<String> {
    read_all(&String::from_utf8_lossy(content))
}

/// The ignore file for a build, as `BuildKit` picks it: `<Dockerfile>.dockerignore` next to
/// the Dockerfile when that exists, else `.dockerignore` at the root of the context.
/// Returns the file used and its patterns, or `None` when there is neither.
pub fn load(
    context_dir: &Path,
    dockerfile: Option<&Path>,
) -> Result<Option<(PathBuf, Vec<String>)>, DockerignoreError> {
    let mut candidates = Vec::with_capacity(2);
    if let Some(df) = dockerfile {
        let mut name = df.as_os_str().to_owned();
        name.push(".dockerignore");
        candidates.push(PathBuf::from(name));
    }
    candidates.push(context_dir.join(".dockerignore"));
    for path in candidates {
        match fs_err::read(&path) {
            Ok(bytes) => {
                let patterns = read_all_bytes(&bytes);
                return Ok(Some((path, patterns)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

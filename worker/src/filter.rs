//! The path filter of a copy or a checksum: `.dockerignore` plus the copy's
//! include and exclude patterns.

use std::path::Path;

use rbuild_patterns::PatternMatcher;
use rbuild_solver::ExecError;

use crate::context::PathFilter;

/// `.dockerignore` plus a copy's include and exclude patterns. The ignore
/// filter sees paths from the root (the context's own paths); the copy's
/// patterns see the path below the copied source, as `BuildKit`'s copy
/// (fsutil) matches them: `COPY --exclude=*.mp3 dir/ /d/` leaves out
/// `dir/a.mp3`. The source itself is never matched by them.
pub(crate) struct SelectionFilter<'a> {
    ignore: Option<&'a (dyn PathFilter + Send + Sync)>,
    include: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
}

impl<'a> SelectionFilter<'a> {
    pub(crate) fn new(
        ignore: Option<&'a (dyn PathFilter + Send + Sync)>,
        include: &[String],
        exclude: &[String],
    ) -> Result<Self, ExecError> {
        let compile = |ps: &[String], what: &str| -> Result<Option<PatternMatcher>, ExecError> {
            if ps.is_empty() {
                return Ok(None);
            }
            PatternMatcher::new(ps)
                .map(|m| (!m.is_empty()).then_some(m))
                .map_err(|e| crate::error::context(format!("invalid {what} patterns"), e))
        };
        Ok(Self {
            ignore,
            include: compile(include, "include")?,
            exclude: compile(exclude, "exclude")?,
        })
    }

    /// `rel` below `source`, `/`-separated; `None` for the source itself.
    fn below(source: &Path, rel: &Path) -> Option<String> {
        let r = rel.strip_prefix(source).ok()?;
        (!r.as_os_str().is_empty()).then(|| r.to_string_lossy().into_owned())
    }
}

impl PathFilter for SelectionFilter<'_> {
    fn is_excluded(&self, rel: &Path, is_dir: bool) -> bool {
        self.is_excluded_below(Path::new(""), rel, is_dir)
    }

    fn descend_excluded_dir(&self, rel: &Path) -> bool {
        self.descend_excluded_dir_below(Path::new(""), rel)
    }

    fn is_excluded_below(&self, source: &Path, rel: &Path, is_dir: bool) -> bool {
        if self.ignore.is_some_and(|i| i.is_excluded(rel, is_dir)) {
            return true;
        }
        let Some(below) = Self::below(source, rel) else {
            return false;
        };
        self.include.as_ref().is_some_and(|m| !m.matches(&below))
            || self.exclude.as_ref().is_some_and(|m| m.matches(&below))
    }

    /// Whether something below the excluded directory `rel` may still be
    /// copied: every reason it is left out must allow one (a `!` exception
    /// of the `.dockerignore` or of `--exclude`, an include pattern that
    /// goes deeper).
    fn descend_excluded_dir_below(&self, source: &Path, rel: &Path) -> bool {
        if let Some(i) = self.ignore {
            if i.is_excluded(rel, true) && !i.descend_excluded_dir(rel) {
                return false;
            }
        }
        let Some(below) = Self::below(source, rel) else {
            return true;
        };
        if let Some(m) = &self.include {
            if !m.matches(&below) && !m.may_match_below(&below) {
                return false;
            }
        }
        if let Some(m) = &self.exclude {
            if m.matches(&below) && !m.has_exclusions() {
                return false;
            }
        }
        true
    }
}

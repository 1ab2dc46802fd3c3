//! The parser's error type and its human-readable rendering.

use std::fmt::Write as _;

use serde::Serialize;

use crate::span::Span;

/// A Dockerfile that cannot be parsed: where, what, and a hint how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    /// 1-based line of the offending text.
    pub line: usize,
    /// 1-based column (in characters) of the offending text.
    pub column: usize,
    /// The offending text.
    pub span: Span,
    /// What is wrong, in one line.
    pub message: String,
    /// What would be accepted instead, when we can tell.
    pub help: Option<String>,
}

impl ParseError {
    pub(crate) fn new(span: Span, message: impl Into<String>) -> Self {
        Self {
            line: span.start_line,
            column: span.start_column,
            span,
            message: message.into(),
            help: None,
        }
    }

    #[must_use]
    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Renders the error the way a compiler would:
    ///
    /// ```text
    /// Dockerfile:3:1: unknown instruction: FORM
    ///   |
    /// 3 | FORM alpine
    ///   | ^^^^
    ///   = help: did you mean FROM?
    /// ```
    ///
    /// `src` must be the text that was parsed; `file_name` is only printed.
    pub fn render(&self, file_name: &str, src: &str) -> String {
        render_at(
            file_name,
            src,
            &self.span,
            &self.message,
            self.help.as_deref(),
        )
    }
}

/// `file:line:col: message`, the source line, a caret line, and the help.
pub(crate) fn render_at(
    file_name: &str,
    src: &str,
    span: &Span,
    message: &str,
    help: Option<&str>,
) -> String {
    let (line, column) = (span.start_line, span.start_column);
    let mut out = format!("{file_name}:{line}:{column}: {message}\n");
    let text = src
        .split('\n')
        .nth(line.saturating_sub(1))
        .unwrap_or("")
        .trim_end_matches(['\r', '\n']);
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let number = line.to_string();
    let pad = " ".repeat(number.len());

    // Display tabs as 4 spaces so the caret lines up.
    let mut shown = String::new();
    let mut caret_at = None;
    let mut caret_end = None;
    let span_cols = if span.end_line == line {
        span.end_column.max(column + 1)
    } else {
        usize::MAX
    };
    for (i, c) in text.chars().enumerate() {
        let col = i + 1;
        if col == column {
            caret_at = Some(shown.chars().count());
        }
        if col == span_cols {
            caret_end = Some(shown.chars().count());
        }
        if c == '\t' {
            shown.push_str("    ");
        } else if c.is_control() {
            shown.push(' ');
        } else {
            shown.push(c);
        }
    }
    let width = shown.chars().count();
    let caret_at = caret_at.unwrap_or(width);
    let caret_end = caret_end.unwrap_or(width).max(caret_at + 1);

    let _ = writeln!(out, "{pad} |");
    let _ = writeln!(out, "{number} | {shown}");
    let _ = writeln!(
        out,
        "{pad} | {}{}",
        " ".repeat(caret_at),
        "^".repeat(caret_end - caret_at)
    );
    if let Some(help) = help {
        let _ = writeln!(out, "{pad} = help: {help}");
    }
    out
}

/// Levenshtein distance between `a` and `b`, counted in `char`s and case-sensitive
/// (lowercase both first for a case-insensitive distance, as [`suggest`] does).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `word` ignoring case, if it is close enough to be a
/// plausible typo.
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word_lower = word.to_lowercase();
    let best = candidates
        .iter()
        .map(|c| (edit_distance(&word_lower, &c.to_lowercase()), *c))
        .min_by_key(|(d, _)| *d)?;
    let limit = (word.chars().count().max(best.1.len()) / 3).max(2);
    (best.0 <= limit).then_some(best.1)
}

#[cfg(test)]
mod tests {
    use super::{edit_distance, suggest};

    #[test]
    fn edit_distance_counts_chars_and_is_case_sensitive() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("run", "RUN"), 3);
        assert_eq!(edit_distance("aé", "ae"), 1);
        assert_eq!(edit_distance("abc", ""), 3);
    }

    #[test]
    fn suggest_ignores_case() {
        assert_eq!(suggest("CPOY", &["COPY", "RUN"]), Some("COPY"));
        assert_eq!(suggest("run", &["COPY", "RUN"]), Some("RUN"));
        assert_eq!(suggest("xyzzy", &["COPY", "RUN"]), None);
    }
}

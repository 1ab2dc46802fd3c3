//! Source positions: byte ranges plus 1-based line and column numbers.

use serde::Serialize;

/// A region of the Dockerfile source.
///
/// `start..end` is a byte range into the original text (including a BOM, if
/// any). Lines and columns are 1-based; columns count characters, not bytes.
/// `end_line`/`end_column` name the position just past the last character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub start_line: usize,
    pub start_column: usize,
    pub end_line: usize,
    pub end_column: usize,
}

/// Maps byte offsets of one source text to line/column positions.
#[derive(Debug, Clone)]
pub(crate) struct LineIndex<'a> {
    src: &'a str,
    /// Byte offset of the start of every line.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Self { src, starts }
    }

    /// 1-based (line, column) of a byte offset (clamped to the text).
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.src.len());
        while !self.src.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let mut col = self.src[self.starts[line]..offset].chars().count() + 1;
        // A byte-order mark is not a column.
        if line == 0 && offset >= 3 && self.src.starts_with('\u{feff}') {
            col -= 1;
        }
        (line + 1, col)
    }

    pub(crate) fn span(&self, start: usize, end: usize) -> Span {
        let end = end.max(start);
        let (start_line, start_column) = self.position(start);
        let (end_line, end_column) = self.position(end);
        Span {
            start,
            end,
            start_line,
            start_column,
            end_line,
            end_column,
        }
    }
}

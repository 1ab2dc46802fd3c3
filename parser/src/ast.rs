//! BuildKit's parser level (`frontend/dockerfile/parser`): physical lines to
//! logical lines (directives, BOM, comments, continuations), each logical line
//! to a [`Node`] (keyword, flags, arguments as BuildKit's line parsers split
//! them), heredoc bodies attached. Nothing is validated per instruction here;
//! that is `instructions`' job. [`Ast::dump`] prints BuildKit's test format.

use std::ops::Range;

use serde::Serialize;

use crate::error::ParseError;
use crate::grammar::{self, JsonForm};
use crate::quote::go_quote;
use crate::span::{LineIndex, Span};

/// Parser directives from the top of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directives {
    /// `# syntax=...` (the frontend image reference), as written.
    pub syntax: Option<String>,
    /// `# escape=...`: `\` (default) or `` ` ``.
    pub escape: char,
    /// `# check=...` (lint configuration), as written.
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Self {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

/// A here-document attached to RUN, COPY or ADD (or an ONBUILD of those).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter with quotes removed (`EOF` for `<<'EOF'`).
    pub name: String,
    /// The file descriptor prefix (`3<<EOF`), if any.
    pub fd: Option<u32>,
    /// False when any part of the delimiter was quoted: no `$VAR` expansion.
    pub expand: bool,
    /// `<<-`: leading tabs are to be stripped from every line (see [`Heredoc::body`]).
    pub chomp: bool,
    /// The body as written, every line with its newline, without the
    /// terminator line (tabs not yet stripped, like BuildKit's parser).
    pub content: String,
    /// The body and terminator lines.
    pub span: Span,
}

impl Heredoc {
    /// The body as the build uses it: `content`, with leading tabs removed
    /// from every line when `chomp` (`<<-`).
    pub fn body(&self) -> String {
        if self.chomp {
            chomp_tabs(&self.content)
        } else {
            self.content.clone()
        }
    }
}

/// Something accepted but discouraged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub span: Span,
    pub message: String,
}

impl Warning {
    /// Renders like [`ParseError::render`], with `warning: ` before the message.
    pub fn render(&self, file_name: &str, src: &str) -> String {
        crate::error::render_at(
            file_name,
            src,
            &self.span,
            &format!("warning: {}", self.message),
            None,
        )
    }
}

/// One instruction as BuildKit's parser sees it: not yet validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The instruction name as written (`run`, `RUN`, `Run`).
    pub keyword: String,
    /// Builder flags, quotes and escapes processed (`--from=build`).
    pub flags: Vec<String>,
    /// Arguments as BuildKit's line parser for this instruction splits them.
    /// ENV and LABEL give `key, value, separator` triples (separator `=` or
    /// empty for the legacy `KEY value` form); HEALTHCHECK gives the type
    /// (`CMD`, `NONE`) first.
    pub args: Vec<String>,
    /// ONBUILD's trigger instruction.
    pub child: Option<Box<Node>>,
    /// The arguments were a JSON array.
    pub json: bool,
    /// Heredocs, in the order their markers appear on the line.
    pub heredocs: Vec<Heredoc>,
    /// The logical line (continuations joined, comments removed).
    pub original: String,
    /// The whole instruction, through its last heredoc terminator.
    pub span: Span,
    pub keyword_span: Span,
    pub flag_spans: Vec<Span>,
    /// The arguments after the flags (empty span after the keyword if none).
    pub args_span: Span,
    /// One span per entry of `args` (for ENV/LABEL the separator's span is
    /// the `=`, or empty for the legacy form; JSON strings include quotes).
    pub arg_spans: Vec<Span>,
}

/// A parsed Dockerfile at BuildKit's parser level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ast {
    pub directives: Directives,
    pub nodes: Vec<Node>,
    pub warnings: Vec<Warning>,
}

impl Node {
    /// This node in BuildKit's `Node.Dump` format, e.g. `copy ["--from=a"] "x" "/y"`.
    pub fn dump(&self) -> String {
        let mut s = self.keyword.to_lowercase();
        if !self.flags.is_empty() {
            let flags: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            s.push_str(" [");
            s.push_str(&flags.join(" "));
            s.push(']');
        }
        if let Some(child) = &self.child {
            s.push_str(" (");
            s.push_str(&child.dump());
            s.push(')');
        }
        for arg in &self.args {
            s.push(' ');
            s.push_str(&go_quote(arg));
        }
        s.trim().to_string()
    }
}

impl Ast {
    /// BuildKit's AST dump: one `(instruction ...)` line per instruction.
    pub fn dump(&self) -> String {
        dump_nodes(self.nodes.iter())
    }
}

pub(crate) fn dump_nodes<'a>(nodes: impl Iterator<Item = &'a Node>) -> String {
    let mut out = String::new();
    for n in nodes {
        out.push('(');
        out.push_str(&n.dump());
        out.push_str(")\n");
    }
    out
}

/// A logical line: physical lines joined, with a map back to the source.
struct Logical {
    text: String,
    /// (offset in `text`, offset in the source) where each piece starts.
    segments: Vec<(usize, usize)>,
}

impl Logical {
    fn map(&self, pos: usize) -> usize {
        let i = self.segments.partition_point(|(l, _)| *l <= pos);
        let (l, s) = self.segments[i.saturating_sub(1)];
        s + (pos - l)
    }

    fn map_end(&self, pos: usize) -> usize {
        if pos == 0 {
            self.map(0)
        } else {
            self.map(pos - 1) + 1
        }
    }
}

/// Strips every trailing `\r` and `\n` (Go's `bytes.TrimRight(s, "\r\n")`).
fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

/// Removes a line-continuation escape (and whitespace after it) from the end
/// of `line`. Returns the line and whether the instruction ends here.
fn trim_continuation(line: &str, esc: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    if let Some(before) = t.strip_suffix(esc)
        && (before.is_empty() || !before.ends_with(esc))
    {
        return (before, false);
    }
    (line, true)
}

#[derive(Default)]
struct DirectiveState {
    done: bool,
    directives: Directives,
    seen: Vec<String>,
}

impl DirectiveState {
    /// BuildKit's `possibleParserDirective` on a line with leading space removed.
    fn check(&mut self, line: &str, span: impl Fn() -> Span) -> Result<(), ParseError> {
        if self.done {
            return Ok(());
        }
        let Some((name, value)) = directive(line) else {
            self.done = true;
            return Ok(());
        };
        let name = name.to_ascii_lowercase();
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            self.done = true;
            return Ok(());
        }
        if self.seen.contains(&name) {
            return Err(ParseError::new(
                span(),
                format!("only one {name} parser directive can be used"),
            ));
        }
        self.seen.push(name.clone());
        match name.as_str() {
            "escape" => match value {
                "\\" => self.directives.escape = '\\',
                "`" => self.directives.escape = '`',
                other => {
                    return Err(ParseError::new(
                        span(),
                        format!("invalid escape token '{other}' does not match ` or \\"),
                    )
                    .with_help("the escape character is \\ (the default) or ` (backtick)"));
                }
            },
            "syntax" => self.directives.syntax = Some(value.to_string()),
            _ => self.directives.check = Some(value.to_string()),
        }
        Ok(())
    }
}

/// `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`
fn directive(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let name_len = rest
        .char_indices()
        .find(|(_, c)| !c.is_ascii_alphanumeric())
        .map_or(rest.len(), |(i, _)| i);
    let name = &rest[..name_len];
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[name_len..].trim_start().strip_prefix('=')?.trim();
    (!value.is_empty()).then_some((name, value))
}

struct Builder<'a> {
    src: &'a str,
    index: LineIndex<'a>,
    esc: char,
}

impl Builder<'_> {
    fn span(&self, start: usize, end: usize) -> Span {
        self.index.span(start, end)
    }

    fn logical_span(&self, logical: &Logical, start: usize, end: usize) -> Span {
        let s = logical.map(start);
        let e = if end > start { logical.map_end(end) } else { s };
        self.span(s, e.min(self.src.len()))
    }

    /// BuildKit's `newNodeFromLine` for `text`, which starts at `base` in `logical`.
    fn node(&self, logical: &Logical, base: usize, text: &str) -> Result<Node, ParseError> {
        let trimmed = text.trim();
        let off = base + (text.len() - text.trim_start().len());
        let Some(split) = grammar::split_command(trimmed) else {
            // Nothing but whitespace (e.g. a lone continuation): an empty node.
            let here = self.logical_span(logical, off, off);
            return Ok(Node {
                keyword: String::new(),
                flags: Vec::new(),
                args: Vec::new(),
                child: None,
                json: false,
                heredocs: Vec::new(),
                original: text.to_string(),
                span: here,
                keyword_span: here,
                flag_spans: Vec::new(),
                args_span: here,
                arg_spans: Vec::new(),
            });
        };
        let keyword_span = self.logical_span(
            logical,
            off + split.keyword_range.start,
            off + split.keyword_range.end,
        );
        let flag_spans = split
            .flags
            .iter()
            .map(|f| self.logical_span(logical, off + f.range.start, off + f.range.end))
            .collect();
        let rest = split.rest.trim_end();
        let rest_off = off + split.rest_start;
        let args_span = if rest.is_empty() {
            let end = off + split.keyword_range.end;
            self.logical_span(logical, end, end)
        } else {
            self.logical_span(logical, rest_off, rest_off + rest.len())
        };
        let mut node = Node {
            keyword: split.keyword.to_string(),
            flags: split.flags.into_iter().map(|f| f.text).collect(),
            args: Vec::new(),
            child: None,
            json: false,
            heredocs: Vec::new(),
            original: text.to_string(),
            span: self.logical_span(logical, off, off + trimmed.len()),
            keyword_span,
            flag_spans,
            args_span,
            arg_spans: Vec::new(),
        };
        let err = |msg: String| ParseError::new(args_span, msg);
        match node.keyword.to_lowercase().as_str() {
            "add" | "copy" | "volume" => match grammar::parse_json_array(rest) {
                JsonForm::Strings(v) => {
                    node.args = v;
                    node.json = true;
                }
                JsonForm::NotStringArray => return Err(err(not_string_array())),
                JsonForm::NotJson => node.args = whitespace_split(rest),
            },
            "cmd" | "entrypoint" | "run" | "shell" => {
                (node.args, node.json) = maybe_json(rest).map_err(err)?;
            }
            "arg" => node.args = grammar::parse_words(rest, self.esc),
            "env" | "label" => {
                let name = node.keyword.to_uppercase();
                node.args = self.name_val(rest, &name).map_err(|m| {
                    err(m).with_help(format!(
                        "give a value: {name} <key>=<value> ... (or the legacy {name} <key> <value>)"
                    ))
                })?;
            }
            "expose" | "from" => node.args = whitespace_split(rest),
            "healthcheck" => {
                let sep = rest.find(char::is_whitespace).unwrap_or(rest.len());
                if sep > 0 {
                    let (args, json) = maybe_json(rest[sep..].trim_start()).map_err(err)?;
                    node.args = std::iter::once(rest[..sep].to_string())
                        .chain(args)
                        .collect();
                    node.json = json;
                }
            }
            "maintainer" | "stopsignal" | "user" | "workdir" if !rest.is_empty() => {
                node.args = vec![rest.to_string()];
            }
            "onbuild" if !rest.is_empty() => {
                node.child = Some(Box::new(self.node(logical, rest_off, rest)?));
            }
            _ => {}
        }
        node.arg_spans = arg_ranges(rest, &node)
            .into_iter()
            .map(|r| self.logical_span(logical, rest_off + r.start, rest_off + r.end))
            .collect();
        Ok(node)
    }

    /// BuildKit's `parseNameVal` (ENV, LABEL).
    fn name_val(&self, rest: &str, key: &str) -> Result<Vec<String>, String> {
        let words = grammar::parse_words(rest, self.esc);
        let Some(first) = words.first() else {
            return Ok(Vec::new());
        };
        if !first.contains('=') {
            let mut parts = rest.splitn(2, is_ws_token);
            let name = parts.next().unwrap_or_default();
            let value = parts.next().map(|v| v.trim_start_matches(is_ws_token));
            return match value {
                Some(value) => Ok(vec![name.to_string(), value.to_string(), String::new()]),
                None => Err(format!("{key} must have two arguments")),
            };
        }
        let mut out = Vec::with_capacity(words.len() * 3);
        for word in words {
            let Some((k, v)) = word.split_once('=') else {
                return Err(format!(
                    "Syntax error - can't find = in {}. Must be of the form: name=value",
                    go_quote(&word)
                ));
            };
            out.extend([k.to_string(), v.to_string(), "=".to_string()]);
        }
        Ok(out)
    }
}

/// Byte ranges of the JSON string tokens in `s`, quotes included.
fn json_string_ranges(s: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match start {
            None if c == '"' => start = Some(i),
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(st) if c == '"' => {
                out.push(st..i + 1);
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// Where each of `node.args` is in `rest` (the text after the flags).
fn arg_ranges(rest: &str, node: &Node) -> Vec<Range<usize>> {
    let whole = || vec![0..rest.len(); node.args.len()];
    let lower = node.keyword.to_lowercase();
    // Finds each word in order, from a moving cursor.
    let sequential = |words: &[String], from: usize| {
        let mut cursor = from;
        let mut out = Vec::with_capacity(words.len());
        for w in words {
            let at = rest.get(cursor..).and_then(|r| r.find(w.as_str()))?;
            out.push(cursor + at..cursor + at + w.len());
            cursor += at + w.len();
        }
        Some(out)
    };
    let ranges = match lower.as_str() {
        _ if node.args.is_empty() => Some(Vec::new()),
        "healthcheck" => {
            let sep = node.args[0].len();
            let after = sep + (rest[sep..].len() - rest[sep..].trim_start().len());
            let mut out = Vec::with_capacity(node.args.len());
            out.push(0..sep);
            if node.json {
                out.extend(
                    json_string_ranges(&rest[after..])
                        .into_iter()
                        .map(|r| after + r.start..after + r.end),
                );
            } else if node.args.len() > 1 {
                out.push(after..rest.len());
            }
            Some(out)
        }
        _ if node.json => Some(json_string_ranges(rest)),
        "env" | "label" => {
            let mut out = Vec::new();
            let mut cursor = 0;
            for triple in node.args.chunks(3) {
                let [k, v, sep] = triple else { break };
                let Some(at) = rest.get(cursor..).and_then(|r| r.find(k.as_str())) else {
                    break;
                };
                let k_start = cursor + at;
                let k_end = k_start + k.len();
                if sep.is_empty() {
                    let v_start = rest.len() - v.len();
                    out.extend([k_start..k_end, v_start..rest.len(), k_end..k_end]);
                    cursor = rest.len();
                } else {
                    let v_start = k_end + 1;
                    out.extend([k_start..k_end, v_start..v_start + v.len(), k_end..v_start]);
                    cursor = v_start + v.len();
                }
            }
            Some(out)
        }
        "add" | "copy" | "volume" | "expose" | "from" | "arg" => sequential(&node.args, 0),
        _ => Some(std::iter::once(0..rest.len()).collect()),
    };
    match ranges {
        Some(r) if r.len() == node.args.len() && r.iter().all(|r| r.end <= rest.len()) => r,
        _ => whole(),
    }
}

fn is_ws_token(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// BuildKit's `parseStringsWhitespaceDelimited`: split on `[\t\v\f\r ]+`.
fn whitespace_split(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    rest.split(is_ws_token)
        .filter(|s| !s.is_empty())
        .map(ToString::to_string)
        .collect()
}

fn not_string_array() -> String {
    "when using JSON array syntax, arrays must be comprised of strings only".to_string()
}

/// BuildKit's `parseMaybeJSON`: a JSON array, or the whole text as one value.
fn maybe_json(rest: &str) -> Result<(Vec<String>, bool), String> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    match grammar::parse_json_array(rest) {
        JsonForm::Strings(v) => Ok((v, true)),
        JsonForm::NotStringArray => Err(not_string_array()),
        JsonForm::NotJson => Ok((vec![rest.to_string()], false)),
    }
}

fn can_contain_heredoc(node: &Node) -> bool {
    let target = match (&node.child, node.keyword.eq_ignore_ascii_case("onbuild")) {
        (Some(child), true) => child,
        _ => node,
    };
    matches!(
        target.keyword.to_lowercase().as_str(),
        "add" | "copy" | "run"
    ) && !target.json
}

/// Removes leading tabs from every line (`<<-`).
fn chomp_tabs(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

/// The longest physical line BuildKit's line scanner accepts.
const MAX_LINE: usize = 65535;

/// Parses `src` at BuildKit's parser level (see the module docs).
pub fn parse_ast(src: &str) -> Result<Ast, ParseError> {
    let body_start = if src.starts_with('\u{feff}') { 3 } else { 0 };
    let mut lines: Vec<(usize, &str)> = Vec::new();
    let mut pos = body_start;
    for piece in src[body_start..].split_inclusive('\n') {
        lines.push((pos, piece));
        pos += piece.len();
    }
    let mut b = Builder {
        src,
        index: LineIndex::new(src),
        esc: '\\',
    };
    // BuildKit reads lines with a bufio.Scanner and its 64 KiB token limit.
    if let Some((start, long)) = lines.iter().find(|(_, l)| l.len() > MAX_LINE + 1) {
        return Err(ParseError::new(
            b.span(*start, start + long.len()),
            format!("dockerfile line greater than max allowed size of {MAX_LINE}"),
        )
        .with_help("split the line with line continuations, or move data into a file"));
    }
    let mut directives = DirectiveState::default();
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let (start, raw) = lines[i];
        i += 1;
        let line = trim_newline(raw);
        let stripped = line.trim_start();
        let lead = line.len() - stripped.len();
        directives.check(stripped, || b.span(start + lead, start + line.len()))?;
        b.esc = directives.directives.escape;
        if stripped.starts_with('#') {
            continue;
        }
        let (first, mut end_of_instruction) = trim_continuation(stripped, b.esc);
        if end_of_instruction && first.is_empty() {
            continue;
        }
        let mut logical = Logical {
            text: first.to_string(),
            segments: vec![(0, start + lead)],
        };
        let mut last_end = start + line.len();
        let mut empty_continuation = false;
        while !end_of_instruction && i < lines.len() {
            let (cstart, craw) = lines[i];
            i += 1;
            let cline = trim_newline(craw);
            let cstripped = cline.trim_start();
            if cstripped.starts_with('#') {
                continue;
            }
            if cstripped.is_empty() {
                empty_continuation = true;
                continue;
            }
            let (piece, end) = trim_continuation(cline, b.esc);
            end_of_instruction = end;
            logical.segments.push((logical.text.len(), cstart));
            logical.text.push_str(piece);
            last_end = cstart + cline.len();
        }

        let mut node = b.node(&logical, 0, &logical.text)?;
        if empty_continuation {
            warnings.push(Warning {
                span: node.span,
                message: "empty continuation line found in this instruction; \
                          empty continuation lines will become errors in a future release"
                    .to_string(),
            });
        }

        if can_contain_heredoc(&node) {
            let words = grammar::raw_shell_words(&logical.text).unwrap_or_default();
            for word in &words {
                let Some(marker) = grammar::heredoc_marker(word) else {
                    continue;
                };
                let Some((name, expand)) = grammar::heredoc_name(marker.word) else {
                    continue;
                };
                let body_start = lines.get(i).map_or(src.len(), |(s, _)| *s);
                let mut content = String::new();
                let mut terminated = false;
                while i < lines.len() {
                    let (hstart, hraw) = lines[i];
                    i += 1;
                    let mut candidate = trim_newline(hraw);
                    if marker.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    last_end = hstart + trim_newline(hraw).len();
                    if candidate == name {
                        terminated = true;
                        break;
                    }
                    content.push_str(hraw);
                }
                if !terminated {
                    let at = logical.text.find(word.as_str()).unwrap_or(0);
                    let span = b.logical_span(&logical, at, at + word.len());
                    return Err(
                        ParseError::new(span, "unterminated heredoc").with_help(format!(
                            "end the heredoc with a line containing only `{name}`{}",
                            if marker.chomp {
                                " (leading tabs allowed)"
                            } else {
                                ""
                            }
                        )),
                    );
                }
                node.heredocs.push(Heredoc {
                    name,
                    fd: marker.fd,
                    expand,
                    chomp: marker.chomp,
                    content,
                    span: b.span(body_start.min(last_end), last_end),
                });
            }
        }
        let node_start = node.span.start;
        node.span = b.span(node_start, last_end.max(node.span.end));
        nodes.push(node);
    }
    if nodes.is_empty() {
        return Err(ParseError::new(b.span(0, 0), "file with no instructions")
            .with_help("a Dockerfile needs at least one instruction, usually `FROM <image>`"));
    }
    Ok(Ast {
        directives: directives.directives,
        nodes,
        warnings,
    })
}

//! The shell-word lexer: `$VAR` / `${VAR:-x}` expansion, quote removal and word
//! splitting, with the semantics of `BuildKit`'s `frontend/dockerfile/shell` lexer.
//!
//! This is not a shell. It does what `BuildKit` does to the arguments of Dockerfile
//! instructions before they are used:
//!
//! - `$name`, `${name}`; positional (`$1`, `${10}`) and special (`$@ $* $# $? $- $$ $! $0`)
//!   parameters are looked up like any other name (the frontend never sets them, so
//!   they expand to nothing);
//! - `${v:-w} ${v-w} ${v:+w} ${v+w} ${v:?msg} ${v?msg}`, where `w` is itself expanded;
//! - the pattern forms `${v#p} ${v##p} ${v%p} ${v%%p} ${v/p/r} ${v//p/r}` with shell
//!   glob patterns (`*`, `?`, and `\` escaping `*`, `?`, `\`, `}` and `/`);
//! - single quotes (everything literal), double quotes (`$` expands; the escape
//!   character escapes only `"`, `$` and itself), the escape character (`\` or the
//!   backtick, as chosen by the `escape` parser directive) outside quotes;
//! - word splitting on whitespace for [`Lexer::process_words`]: text from quotes and
//!   escapes never splits, text from expansions does.
//!
//! Every lookup is recorded in [`Expanded::matched`] or [`Expanded::unmatched`]; the
//! frontend needs the names a word used for build-arg cache semantics and lint.
//!
//! Where `BuildKit` has a plain bug, this lexer does the evident intent instead, and says
//! so where it happens (see [`Lexer::process_words`] and [`Lexer::skip_unset_env`]).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash};

use unicode_general_category::{GeneralCategory, get_general_category};

/// Where variable values come from.
///
/// A lookup distinguishes a name that is unset (`None`) from one that is set to the
/// empty string (`Some("")`): `${v-w}` and `${v:-w}` differ exactly there.
pub trait Env {
    /// The value of `name`, or `None` when it is not set.
    fn get(&self, name: &str) -> Option<&str>;
}

impl<T: Env + ?Sized> Env for &T {
    fn get(&self, name: &str) -> Option<&str> {
        (**self).get(name)
    }
}

impl<K, V, S> Env for HashMap<K, V, S>
where
    K: Borrow<str> + Hash + Eq,
    V: AsRef<str>,
    S: BuildHasher,
{
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(AsRef::as_ref)
    }
}

impl<K, V> Env for BTreeMap<K, V>
where
    K: Borrow<str> + Ord,
    V: AsRef<str>,
{
    fn get(&self, name: &str) -> Option<&str> {
        BTreeMap::get(self, name).map(AsRef::as_ref)
    }
}

/// A list of `(name, value)` pairs; when a name occurs more than once the last one wins
/// (as with a `KEY=VALUE` environment list, where later entries override earlier ones).
impl<K: AsRef<str>, V: AsRef<str>> Env for [(K, V)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| v.as_ref())
    }
}

impl<K: AsRef<str>, V: AsRef<str>> Env for Vec<(K, V)> {
    fn get(&self, name: &str) -> Option<&str> {
        Env::get(self.as_slice(), name)
    }
}

impl<K: AsRef<str>, V: AsRef<str>, const N: usize> Env for [(K, V); N] {
    fn get(&self, name: &str) -> Option<&str> {
        Env::get(self.as_slice(), name)
    }
}

/// An environment in which nothing is set.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnv;

impl Env for NoEnv {
    fn get(&self, _name: &str) -> Option<&str> {
        None
    }
}

/// An environment with some names hidden: they read as unset. With
/// [`Lexer::skip_unset_env`] on, references to exactly those names are left as written
/// (e.g. to leave them for the shell that later runs the text) while others expand.
#[derive(Debug, Clone, Copy)]
pub struct EnvWithout<'a, E: ?Sized> {
    /// Where the other names come from.
    pub env: &'a E,
    /// The names to hide.
    pub hidden: &'a [&'a str],
}

impl<E: Env + ?Sized> Env for EnvWithout<'_, E> {
    fn get(&self, name: &str) -> Option<&str> {
        if self.hidden.contains(&name) {
            None
        } else {
            self.env.get(name)
        }
    }
}

/// Builds a map from `KEY=VALUE` strings (`BuildKit`'s `BuildEnvs`/`EnvsFromSlice`): the
/// first `=` separates name and value, an entry without `=` is set to the empty string,
/// and a later entry for the same name overrides an earlier one.
pub fn env_from_list<I, S>(entries: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    entries
        .into_iter()
        .map(|e| {
            let e = e.as_ref();
            match e.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (e.to_owned(), String::new()),
            }
        })
        .collect()
}

/// The result of processing one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expanded {
    /// The word with quotes removed, escapes applied and variables expanded.
    pub result: String,
    /// The same, split into words on unquoted whitespace (see [`Lexer::process_words`]).
    pub words: Vec<String>,
    /// Names that were looked up and were set (including set to the empty string).
    pub matched: BTreeSet<String>,
    /// Names that were looked up and were not set.
    pub unmatched: BTreeSet<String>,
}

/// What went wrong in a word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellErrorKind {
    /// A `'` without its closing `'`.
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    /// A `"` without its closing `"`.
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    /// A `${` without its closing `}`.
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    /// A `${v/pattern` without the `/` that starts the replacement.
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    /// `${}`, `${{`, `${:` and the like.
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    /// An operator after the name that is not one of the supported ones, e.g. `${v:=w}`.
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    /// `${v?msg}` with `v` unset, or `${v:?msg}` with `v` unset or empty.
    #[error("{name}: {message}")]
    Required {
        /// The variable's name.
        name: String,
        /// The word after `?`, or a default text when it is empty.
        message: String,
    },
    /// `${` nested deeper than [`MAX_NESTING`] (`BuildKit` has no limit; this one keeps
    /// hostile input from exhausting the stack).
    #[error("substitutions nested more than {MAX_NESTING} deep")]
    TooDeep,
    /// A pattern in `${v#p}`, `${v%p}` or `${v/p/r}` that is not valid.
    #[error("invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern {
        /// The pattern after expansion.
        pattern: String,
        /// Why it is not valid.
        reason: String,
    },
    /// The expanded word (or a part of it) grew past the limit (see [`Lexer::max_len`]).
    /// `BuildKit` has no limit; this one keeps `ARG B=$A$A` repeated from exhausting
    /// memory.
    #[error("the expanded value is over {}", human_size_exact(*.limit))]
    TooLong {
        /// The limit that was crossed, in bytes.
        limit: usize,
    },
    /// The glob patterns of one word need more than [`MAX_MATCH_STEPS`] steps to match
    /// (e.g. `${v//*a*b*/x}` over a value of a megabyte).
    #[error("pattern matching in substitution needs more than {MAX_MATCH_STEPS} steps")]
    TooExpensive,
}

/// How deep `${...}` may nest inside `${...}`.
pub const MAX_NESTING: usize = 200;

/// The default limit of an expanded word in bytes (1 MiB). A word written longer
/// than this in the Dockerfile may still expand to its own length.
pub const MAX_WORD_LEN: usize = 1 << 20;

/// How many steps (a pattern position tried against a character) the glob patterns
/// of one word may take: enough for any pattern over a megabyte value in one pass,
/// not for a quadratic search across it.
pub const MAX_MATCH_STEPS: u64 = 1 << 26;

/// `1 MiB`, `64 KiB`, or `N bytes` when it is not a whole number of either.
pub fn human_size(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// [`human_size`] with the exact count after it: `1 MiB (1048576 bytes)`, `10 bytes`.
pub fn human_size_exact(n: usize) -> String {
    let h = human_size(n);
    if h.ends_with(" bytes") {
        h
    } else {
        format!("{h} ({n} bytes)")
    }
}

/// An error in a word, with the place in the word where the failing construct starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process {word:?}: {kind}")]
pub struct ShellError {
    /// The whole word that was being processed.
    pub word: String,
    /// Byte offset into `word` of the construct that failed (the `$` of `${`, the
    /// opening quote).
    pub offset: usize,
    /// What went wrong.
    pub kind: ShellErrorKind,
}

impl ShellError {
    /// The 1-based column (in characters) of [`ShellError::offset`] within the word.
    pub fn column(&self) -> usize {
        self.word
            .get(..self.offset)
            .map_or(1, |s| s.chars().count() + 1)
    }
}

/// The lexer, configured as one kind of instruction needs it.
///
/// A `Lexer` holds only options; it can be shared and used from several threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // the four switches of `BuildKit`'s `Lex`
pub struct Lexer {
    escape: char,
    /// Keep the quote characters in the output (they still group words and still stop
    /// expansion inside single quotes). `BuildKit`'s `RawQuotes`.
    pub raw_quotes: bool,
    /// Keep escape characters in the output (the escaped character is still taken
    /// literally). `BuildKit`'s `RawEscapes`.
    pub raw_escapes: bool,
    /// Treat `'` and `"` as ordinary characters (`BuildKit`'s `SkipProcessQuotes`, used for
    /// instructions whose text goes to a shell later, e.g. heredoc bodies).
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as they are written (`$v`, `${v}`,
    /// `${v:-w}` with `w` expanded) instead of expanding them to nothing.
    /// `BuildKit`'s `SkipUnsetEnv`. (`BuildKit` writes `${v//p/r}` back as `${v/p/r}`;
    /// this lexer keeps the `//`.)
    pub skip_unset_env: bool,
    /// The most bytes a word may expand to ([`MAX_WORD_LEN`] by default), or its own
    /// length when it is written longer; past it, [`ShellErrorKind::TooLong`]. Checked
    /// before each piece is appended, so a word that would cross it fails without
    /// allocating what it would have grown to.
    pub max_len: usize,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer::new('\\')
    }
}

impl Lexer {
    /// A lexer with `escape` as the escape character (`\` by default, or the
    /// backtick chosen by the `escape` parser directive) and every option off.
    pub fn new(escape: char) -> Self {
        Lexer {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
            max_len: MAX_WORD_LEN,
        }
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Sets [`Lexer::raw_quotes`].
    #[must_use]
    pub fn with_raw_quotes(mut self, on: bool) -> Self {
        self.raw_quotes = on;
        self
    }

    /// Sets [`Lexer::raw_escapes`].
    #[must_use]
    pub fn with_raw_escapes(mut self, on: bool) -> Self {
        self.raw_escapes = on;
        self
    }

    /// Sets [`Lexer::skip_process_quotes`].
    #[must_use]
    pub fn with_skip_process_quotes(mut self, on: bool) -> Self {
        self.skip_process_quotes = on;
        self
    }

    /// Sets [`Lexer::skip_unset_env`].
    #[must_use]
    pub fn with_skip_unset_env(mut self, on: bool) -> Self {
        self.skip_unset_env = on;
        self
    }

    /// Sets [`Lexer::max_len`].
    #[must_use]
    pub fn with_max_len(mut self, bytes: usize) -> Self {
        self.max_len = bytes;
        self
    }

    /// Processes `word`: removes quotes, applies escapes, expands variables from `env`.
    /// Returns the result, its split into words, and which names were looked up
    /// (`BuildKit`'s `ProcessWordWithMatches`).
    pub fn process_word<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<Expanded, ShellError> {
        let mut st = State {
            lex: self,
            env,
            sc: Scanner::new(word),
            raw_escapes: self.raw_escapes,
            depth: 0,
            limit: self.max_len.max(word.len()),
            steps: MAX_MATCH_STEPS,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        match st.process_stop_on(None, self.raw_escapes) {
            Ok((result, words)) => Ok(Expanded {
                result,
                words,
                matched: st.matched,
                unmatched: st.unmatched,
            }),
            Err(e) => Err(ShellError {
                word: word.to_owned(),
                offset: e.offset,
                kind: e.kind,
            }),
        }
    }

    /// Processes `word` and returns only the expanded string.
    pub fn expand<E: Env + ?Sized>(&self, word: &str, env: &E) -> Result<String, ShellError> {
        self.process_word(word, env).map(|e| e.result)
    }

    /// Processes `word` and splits the result into words (`BuildKit`'s `ProcessWords`):
    /// unquoted whitespace, including whitespace that comes out of a variable's value,
    /// separates words; whitespace inside quotes or after the escape character does
    /// not; empty words are dropped (`""` alone gives no word).
    ///
    /// (Recent `BuildKit` sources share one words buffer, `shellWord.wordsBuffer`,
    /// between a word and the `${v:-w}` word nested in it, which by reading the code
    /// splits `a${X:-b}c` as `["bc"]`; this lexer gives `["abc"]`, as older `BuildKit`
    /// did.)
    pub fn process_words<E: Env + ?Sized>(
        &self,
        word: &str,
        env: &E,
    ) -> Result<Vec<String>, ShellError> {
        self.process_word(word, env).map(|e| e.words)
    }
}

/// An error before the word is attached.
struct Fail {
    kind: ShellErrorKind,
    offset: usize,
}

fn fail<T>(kind: ShellErrorKind, offset: usize) -> Result<T, Fail> {
    Err(Fail { kind, offset })
}

/// Reads a word character by character, like Go's `text/scanner` with `Next`/`Peek`
/// (which skips a byte-order mark at the very start).
struct Scanner {
    chars: Vec<(usize, char)>,
    pos: usize,
}

impl Scanner {
    fn new(word: &str) -> Self {
        let mut chars: Vec<(usize, char)> = word.char_indices().collect();
        if chars.first().is_some_and(|&(_, c)| c == '\u{feff}') {
            chars.remove(0);
        }
        Scanner { chars, pos: 0 }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).map(|&(_, c)| c)
    }

    #[allow(clippy::should_implement_trait)]
    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Byte offset of the next character (the word's length at the end).
    fn offset(&self) -> usize {
        match self.chars.get(self.pos) {
            Some(&(o, _)) => o,
            None => self.chars.last().map_or(0, |&(o, c)| o + c.len_utf8()),
        }
    }
}

/// Words being split out of a word (`BuildKit`'s `wordsStruct`).
#[derive(Default)]
struct Words {
    buf: String,
    done: Vec<String>,
    in_word: bool,
}

impl Words {
    /// A character that may split: unquoted text and expansion results.
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.buf.is_empty() {
                self.done.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.buf.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.done.push(self.buf);
        }
        self.done
    }
}

struct State<'a, E: Env + ?Sized> {
    lex: &'a Lexer,
    env: &'a E,
    sc: Scanner,
    raw_escapes: bool,
    depth: usize,
    /// The most bytes a (partial) result may have.
    limit: usize,
    /// Pattern-matching steps left.
    steps: u64,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl<E: Env + ?Sized> State<'_, E> {
    /// Processes until `stop` (consumed) or the end of the word. With a `stop`
    /// character, reaching the end is an error ([`ShellErrorKind::MissingBrace`] at
    /// `${`'s offset is what the callers report).
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), Fail> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let r = self.process_stop_on_inner(stop);
        self.raw_escapes = saved;
        r
    }

    fn process_stop_on_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), Fail> {
        let mut result = String::new();
        let mut words = Words::default();
        let quotes = !self.lex.skip_process_quotes;
        while let Some(ch) = self.sc.peek() {
            if stop == Some(ch) {
                self.sc.next();
                return Ok((result, words.finish()));
            }
            let at = self.sc.offset();
            if ch == '$' {
                let tmp = self.process_dollar()?;
                self.check_len(result.len() + tmp.len(), at)?;
                result.push_str(&tmp);
                words.add_string(&tmp);
            } else if quotes && ch == '\'' {
                let tmp = self.process_single_quote()?;
                self.check_len(result.len() + tmp.len(), at)?;
                result.push_str(&tmp);
                words.add_raw_string(&tmp);
            } else if quotes && ch == '"' {
                let tmp = self.process_double_quote()?;
                self.check_len(result.len() + tmp.len(), at)?;
                result.push_str(&tmp);
                words.add_raw_string(&tmp);
            } else {
                let mut ch = self.sc.next().unwrap_or(ch);
                if ch == self.lex.escape {
                    if self.raw_escapes {
                        words.add_raw_char(ch);
                        result.push(ch);
                    }
                    // The escape character escapes the next one; at the end it vanishes.
                    let Some(next) = self.sc.next() else { break };
                    ch = next;
                    words.add_raw_char(ch);
                } else {
                    words.add_char(ch);
                }
                self.check_len(result.len() + ch.len_utf8(), at)?;
                result.push(ch);
            }
        }
        if stop.is_some() {
            // Callers replace this by their own message at their own offset.
            return fail(ShellErrorKind::MissingBrace, self.sc.offset());
        }
        Ok((result, words.finish()))
    }

    /// Fails with [`ShellErrorKind::TooLong`] at `at` when `len` is over the limit.
    fn check_len(&self, len: usize, at: usize) -> Result<(), Fail> {
        if len > self.limit {
            return fail(ShellErrorKind::TooLong { limit: self.limit }, at);
        }
        Ok(())
    }

    fn process_single_quote(&mut self) -> Result<String, Fail> {
        // Everything up to the next ' is literal; a ' cannot be escaped inside.
        let start = self.sc.offset();
        let mut result = String::new();
        let open = self.sc.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.sc.next() {
                None => return fail(ShellErrorKind::UnterminatedSingleQuote, start),
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, Fail> {
        // Everything up to the next unescaped " is literal except `$`; the escape
        // character escapes only `"`, `$` and itself and is kept before anything else.
        let start = self.sc.offset();
        let mut result = String::new();
        let open = self.sc.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.sc.peek() {
                None => return fail(ShellErrorKind::UnterminatedDoubleQuote, start),
                Some('"') => {
                    self.sc.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let at = self.sc.offset();
                    let v = self.process_dollar()?;
                    self.check_len(result.len() + v.len(), at)?;
                    result.push_str(&v);
                }
                Some(c) => {
                    self.sc.next();
                    let mut ch = c;
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.sc.peek() {
                            // An escape at the end of the word is dropped (and the
                            // missing quote reported on the next turn).
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lex.escape => {
                                self.sc.next();
                                ch = n;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        if let Some(v) = self.env.get(name) {
            self.matched.insert(name.to_owned());
            Some(v.to_owned())
        } else {
            self.unmatched.insert(name.to_owned());
            None
        }
    }

    /// Reads a name: a run of letters, digits and `_`; a run of digits when it starts
    /// with one (positional parameter); or one special-parameter character.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.sc.peek() {
            if name.is_empty() && is_digit(ch) {
                while let Some(d) = self.sc.peek().filter(|&d| is_digit(d)) {
                    self.sc.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.sc.next();
                name.push(ch);
                return name;
            }
            if !is_letter(ch) && !is_digit(ch) && ch != '_' {
                break;
            }
            self.sc.next();
            name.push(ch);
        }
        name
    }

    fn process_dollar(&mut self) -> Result<String, Fail> {
        let start = self.sc.offset();
        self.sc.next(); // the `$`

        if self.sc.peek() != Some('{') {
            // $name
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }

        self.sc.next(); // the `{`
        if self.depth >= MAX_NESTING {
            return fail(ShellErrorKind::TooDeep, start);
        }
        self.depth += 1;
        let r = self.process_braced(start);
        self.depth -= 1;
        r
    }

    /// `${...}` after the `{`; `start` is the offset of the `$`.
    fn process_braced(&mut self, start: usize) -> Result<String, Fail> {
        match self.sc.peek() {
            None => return fail(ShellErrorKind::MissingBrace, start),
            Some('{' | '}' | ':') => return fail(ShellErrorKind::BadSubstitution, start),
            Some(_) => {}
        }
        let name = self.process_name();
        match self.sc.next() {
            None => fail(ShellErrorKind::MissingBrace, start),
            Some('}') => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(c @ (':' | '+' | '-' | '?' | '#' | '%')) => self.process_modifier(start, name, c),
            Some('/') => self.process_replace(start, &name),
            Some(c) => fail(ShellErrorKind::UnsupportedModifier(c.to_string()), start),
        }
    }

    /// `${name:-w}` and friends, after the first modifier character `first`.
    fn process_modifier(
        &mut self,
        start: usize,
        name: String,
        first: char,
    ) -> Result<String, Fail> {
        let mut modifier = first.to_string();
        let mut op = Some(first);
        let null_is_unset = first == ':';
        if null_is_unset {
            op = self.sc.next();
            modifier.extend(op);
        }
        let pattern_op = matches!(op, Some('#' | '%'));
        if null_is_unset && pattern_op {
            return fail(ShellErrorKind::UnsupportedModifier(modifier), start);
        }
        let word = match self.process_stop_on(Some('}'), pattern_op) {
            Ok((w, _)) => w,
            Err(_) if self.sc.peek().is_none() => {
                return fail(ShellErrorKind::MissingBrace, start);
            }
            Err(e) => return Err(e),
        };

        let value = self.get_env(&name);
        if self.lex.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}{modifier}{word}}}"));
        }
        let unset_or_null = match &value {
            None => true,
            Some(v) => null_is_unset && v.is_empty(),
        };

        match op {
            Some('-') => Ok(if unset_or_null {
                word
            } else {
                value.unwrap_or_default()
            }),
            Some('+') => Ok(if unset_or_null { String::new() } else { word }),
            Some('?') => match value {
                Some(v) if !unset_or_null => Ok(v),
                _ => {
                    let message = if !word.is_empty() {
                        word
                    } else if value.is_none() {
                        "is not allowed to be unset".to_owned()
                    } else {
                        "is not allowed to be empty".to_owned()
                    };
                    fail(ShellErrorKind::Required { name, message }, start)
                }
            },
            Some(c @ ('#' | '%')) => {
                // `#`/`%` remove the shortest match, `##`/`%%` the longest.
                let (greedy, pattern) = match word.strip_prefix(c) {
                    Some(rest) => (true, rest),
                    None => (false, word.as_str()),
                };
                let toks = parse_pattern(pattern).map_err(|reason| Fail {
                    kind: ShellErrorKind::InvalidPattern {
                        pattern: pattern.to_owned(),
                        reason,
                    },
                    offset: start,
                })?;
                let value = value.unwrap_or_default();
                let trimmed = if c == '#' {
                    trim_prefix(&toks, &value, greedy, &mut self.steps)
                } else {
                    trim_suffix(&toks, &value, greedy, &mut self.steps)
                };
                trimmed.map_err(|_| Fail {
                    kind: ShellErrorKind::TooExpensive,
                    offset: start,
                })
            }
            _ => fail(ShellErrorKind::UnsupportedModifier(modifier), start),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`, after the first `/`.
    fn process_replace(&mut self, start: usize, name: &str) -> Result<String, Fail> {
        let replace_all = self.sc.peek() == Some('/');
        if replace_all {
            self.sc.next();
        }
        let pattern = match self.process_stop_on(Some('/'), true) {
            Ok((p, _)) => p,
            Err(_) if self.sc.peek().is_none() => {
                return fail(ShellErrorKind::MissingSlash, start);
            }
            Err(e) => return Err(e),
        };
        let replacement = match self.process_stop_on(Some('}'), true) {
            Ok((r, _)) => r,
            Err(_) if self.sc.peek().is_none() => {
                return fail(ShellErrorKind::MissingBrace, start);
            }
            Err(e) => return Err(e),
        };

        let value = self.get_env(name);
        let Some(value) = value.or_else(|| (!self.lex.skip_unset_env).then(String::new)) else {
            let slashes = if replace_all { "//" } else { "/" };
            return Ok(format!("${{{name}{slashes}{pattern}/{replacement}}}"));
        };

        let toks = parse_pattern(&pattern).map_err(|reason| Fail {
            kind: ShellErrorKind::InvalidPattern {
                pattern: pattern.clone(),
                reason,
            },
            offset: start,
        })?;
        let chars: Vec<char> = value.chars().collect();
        let expensive = || Fail {
            kind: ShellErrorKind::TooExpensive,
            offset: start,
        };
        if replace_all {
            match replace_all_matches(&toks, &chars, &replacement, self.limit, &mut self.steps) {
                Ok(out) => Ok(out),
                Err(Stop::Steps) => Err(expensive()),
                Err(Stop::Length) => fail(ShellErrorKind::TooLong { limit: self.limit }, start),
            }
        } else {
            let found = find_leftmost_longest(&toks, &chars, 0, &mut self.steps)
                .map_err(|_| expensive())?;
            Ok(match found {
                Some((s, e)) => {
                    let mut out: String = chars[..s].iter().collect();
                    out.push_str(&replacement);
                    out.extend(&chars[e..]);
                    out
                }
                None => value,
            })
        }
    }
}

/// Go's `unicode.IsLetter`: general category L.
fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    matches!(
        get_general_category(c),
        GeneralCategory::UppercaseLetter
            | GeneralCategory::LowercaseLetter
            | GeneralCategory::TitlecaseLetter
            | GeneralCategory::ModifierLetter
            | GeneralCategory::OtherLetter
    )
}

/// Go's `unicode.IsDigit`: general category Nd.
fn is_digit(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    get_general_category(c) == GeneralCategory::DecimalNumber
}

/// The POSIX special parameters (`0` is caught earlier as a digit).
fn is_special_param(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// One element of a shell pattern in `${v#p}`, `${v%p}`, `${v/p/r}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `?`: any one character but a newline.
    Any,
    /// `*`: any run of characters without a newline.
    Star,
}

/// Parses a pattern: `*` and `?` are wildcards; `\` makes `*`, `?` and `\` literal and
/// is dropped before `}` and `/`; any other escape is an error. Brackets are literal.
fn parse_pattern(pattern: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::with_capacity(pattern.len());
    let mut it = pattern
        .strip_prefix('\u{feff}')
        .unwrap_or(pattern)
        .chars()
        .peekable();
    while let Some(c) = it.next() {
        match c {
            '*' => out.push(Tok::Star),
            '?' => out.push(Tok::Any),
            '\\' => match it.peek().copied() {
                Some('}' | '/') => {}
                Some(n @ ('*' | '?' | '\\')) => {
                    it.next();
                    out.push(Tok::Lit(n));
                }
                Some(n) => return Err(format!("invalid escape '\\{n}'")),
                None => return Err("invalid escape '\\' at end of pattern".to_owned()),
            },
            c => out.push(Tok::Lit(c)),
        }
    }
    Ok(out)
}

/// Why a pattern search stopped early.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The step budget ran out.
    Steps,
    /// The result grew past the length limit.
    Length,
}

/// Takes the cost of one character against `m` pattern positions from `steps`;
/// [`Stop::Steps`] when the budget is spent.
fn spend(steps: &mut u64, m: usize) -> Result<(), Stop> {
    let cost = u64::try_from(m).unwrap_or(u64::MAX).max(1);
    *steps = steps.checked_sub(cost).ok_or(Stop::Steps)?;
    Ok(())
}

/// The length of the shortest (or, `greedy`, the longest) prefix of `text` that the
/// whole pattern matches (`None` if no prefix matches); [`Stop::Steps`] when `steps`
/// runs out first.
fn match_prefix(
    toks: &[Tok],
    text: &[char],
    greedy: bool,
    steps: &mut u64,
) -> Result<Option<usize>, Stop> {
    let m = toks.len();
    let mut set = vec![false; m + 1];
    let mut next = vec![false; m + 1];
    set[0] = true;
    close(toks, &mut set);
    let mut best = None;
    if set[m] {
        if !greedy {
            return Ok(Some(0));
        }
        best = Some(0);
    }
    for (k, &c) in text.iter().enumerate() {
        spend(steps, m)?;
        next.fill(false);
        let mut any = false;
        for i in 0..m {
            if !set[i] {
                continue;
            }
            let to = match toks[i] {
                Tok::Lit(x) if x == c => i + 1,
                Tok::Any if c != '\n' => i + 1,
                Tok::Star if c != '\n' => i,
                _ => continue,
            };
            next[to] = true;
            any = true;
        }
        if !any {
            break;
        }
        close(toks, &mut next);
        std::mem::swap(&mut set, &mut next);
        if set[m] {
            if !greedy {
                return Ok(Some(k + 1));
            }
            best = Some(k + 1);
        }
    }
    Ok(best)
}

/// Adds the states reachable by letting a `*` match nothing.
fn close(toks: &[Tok], set: &mut [bool]) {
    for i in 0..toks.len() {
        if set[i] && toks[i] == Tok::Star {
            set[i + 1] = true;
        }
    }
}

/// `value` without its shortest (`greedy`: longest) prefix matching the pattern.
fn trim_prefix(toks: &[Tok], value: &str, greedy: bool, steps: &mut u64) -> Result<String, Stop> {
    let chars: Vec<char> = value.chars().collect();
    Ok(match match_prefix(toks, &chars, greedy, steps)? {
        Some(n) => chars[n..].iter().collect(),
        None => value.to_owned(),
    })
}

/// `value` without its shortest (`greedy`: longest) suffix matching the pattern.
fn trim_suffix(toks: &[Tok], value: &str, greedy: bool, steps: &mut u64) -> Result<String, Stop> {
    let rtoks: Vec<Tok> = toks.iter().rev().copied().collect();
    let rchars: Vec<char> = value.chars().rev().collect();
    Ok(match match_prefix(&rtoks, &rchars, greedy, steps)? {
        Some(n) => {
            let chars: Vec<char> = value.chars().collect();
            chars[..chars.len() - n].iter().collect()
        }
        None => value.to_owned(),
    })
}

/// The leftmost match starting at or after `from`, as long as possible there
/// (what a Go regexp with greedy `.*` finds).
fn find_leftmost_longest(
    toks: &[Tok],
    text: &[char],
    from: usize,
    steps: &mut u64,
) -> Result<Option<(usize, usize)>, Stop> {
    for s in from..=text.len() {
        if let Some(n) = match_prefix(toks, &text[s..], true, steps)? {
            return Ok(Some((s, s + n)));
        }
    }
    Ok(None)
}

/// Replaces every match like Go's `Regexp.ReplaceAllString`: non-overlapping matches
/// left to right, an empty match right after a match is not replaced, and `$0`/`${0}`
/// in the replacement stand for the matched text (`$$` for `$`; other `$name`s for
/// nothing, as the pattern has no groups). Stops when the result passes `limit` bytes
/// or `steps` runs out.
fn replace_all_matches(
    toks: &[Tok],
    text: &[char],
    replacement: &str,
    limit: usize,
    steps: &mut u64,
) -> Result<String, Stop> {
    let mut out = String::new();
    let mut last_end = 0;
    let mut search = 0;
    while search <= text.len() {
        let Some((s, e)) = find_leftmost_longest(toks, text, search, steps)? else {
            break;
        };
        out.extend(&text[last_end..s]);
        if e > last_end || s == 0 {
            let matched: String = text[s..e].iter().collect();
            expand_template(&mut out, replacement, &matched);
        }
        if out.len() > limit {
            return Err(Stop::Length);
        }
        last_end = e;
        // Always advance, by one character after an empty match.
        search = if e <= search { search + 1 } else { e };
    }
    out.extend(&text[last_end..]);
    Ok(out)
}

/// Go's `Regexp.Expand` for a pattern without capture groups.
fn expand_template(out: &mut String, template: &str, matched: &str) {
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
            continue;
        }
        let (brace, body) = match rest.strip_prefix('{') {
            Some(b) => (true, b),
            None => (false, rest),
        };
        let len: usize = body
            .chars()
            .take_while(|&c| is_letter(c) || is_digit(c) || c == '_')
            .map(char::len_utf8)
            .sum();
        if len == 0 || (brace && !body[len..].starts_with('}')) {
            // Malformed: the `$` is literal.
            out.push('$');
            continue;
        }
        let name = &body[..len];
        rest = &body[len + usize::from(brace)..];
        if name == "0" {
            out.push_str(matched);
        }
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|&n| n.to_owned()).collect()
    }

    fn expand(word: &str, pairs: &[(&str, &str)]) -> String {
        Lexer::new('\\')
            .expand(word, &env(pairs))
            .unwrap_or_else(|e| panic!("{word:?}: {e}"))
    }

    fn error(word: &str, pairs: &[(&str, &str)]) -> ShellError {
        match Lexer::new('\\').process_word(word, &env(pairs)) {
            Ok(e) => panic!("{word:?} should fail, gave {:?}", e.result),
            Err(e) => e,
        }
    }

    #[test]
    fn plain_and_braced_names() {
        let e = [("FOO", "foo"), ("EMPTY", "")];
        assert_eq!(expand("a$FOO.b", &e), "afoo.b");
        assert_eq!(expand("a${FOO}b", &e), "afoob");
        assert_eq!(expand("a${FOO}${EMPTY}$NOPE-b", &e), "afoo-b");
        assert_eq!(expand("$", &e), "$");
        assert_eq!(expand("a$ b", &e), "a$ b");
        assert_eq!(expand("$1$9x", &e), "x");
        assert_eq!(expand("$FOO_BAR$FOO", &e), "foo");
    }

    #[test]
    fn default_operators_distinguish_unset_and_empty() {
        let e = [("SET", "v"), ("EMPTY", "")];
        assert_eq!(expand("${SET:-d}|${EMPTY:-d}|${UNSET:-d}", &e), "v|d|d");
        assert_eq!(expand("${SET-d}|${EMPTY-d}|${UNSET-d}", &e), "v||d");
        assert_eq!(expand("${SET:+a}|${EMPTY:+a}|${UNSET:+a}", &e), "a||");
        assert_eq!(expand("${SET+a}|${EMPTY+a}|${UNSET+a}", &e), "a|a|");
        // The word is expanded, and may be quoted.
        assert_eq!(expand("${UNSET:-$SET and \"${SET}\"}", &e), "v and v");
        assert_eq!(expand("${UNSET:-'}'}", &e), "}");
        assert_eq!(expand("${UNSET:-a\\}b}", &e), "a}b");
    }

    #[test]
    fn required_operators() {
        let e = [("VAR", "plain"), ("EMPTY", ""), ("ARG", "x")];
        assert_eq!(expand("${VAR:?msg}", &e), "plain");
        assert_eq!(expand("${VAR?msg}", &e), "plain");
        assert_eq!(expand("${EMPTY?msg}", &e), "");

        let err = error("ab${EMPTY:?message here$ARG}", &e);
        assert_eq!(
            err.kind,
            ShellErrorKind::Required {
                name: "EMPTY".into(),
                message: "message herex".into()
            }
        );
        assert_eq!(err.offset, 2);
        assert_eq!(
            err.to_string(),
            "failed to process \"ab${EMPTY:?message here$ARG}\": EMPTY: message herex"
        );
        assert!(
            error("${UNSET?}", &e)
                .to_string()
                .ends_with("UNSET: is not allowed to be unset")
        );
        assert!(
            error("${EMPTY:?}", &e)
                .to_string()
                .ends_with("EMPTY: is not allowed to be empty")
        );
        assert!(
            error("${UNSET:?}", &e)
                .to_string()
                .ends_with("UNSET: is not allowed to be unset")
        );
    }

    #[test]
    fn prefix_and_suffix_removal() {
        let e = [("P", "dir/sub/file.tar.gz"), ("X", "xxyy"), ("BAR", "x")];
        assert_eq!(expand("${P#*/}", &e), "sub/file.tar.gz");
        assert_eq!(expand("${P##*/}", &e), "file.tar.gz");
        assert_eq!(expand("${P%.*}", &e), "dir/sub/file.tar");
        assert_eq!(expand("${P%%.*}", &e), "dir/sub/file");
        assert_eq!(expand("${P#nomatch}", &e), "dir/sub/file.tar.gz");
        assert_eq!(expand("${X#*x*y}", &e), "y");
        assert_eq!(expand("${X#*}", &e), "xxyy");
        assert_eq!(expand("${X##*}", &e), "");
        assert_eq!(expand("${X#$BAR}", &e), "xyy");
        assert_eq!(
            expand("${X#}|${X##}|${X%}|${X%%}", &e),
            "xxyy|xxyy|xxyy|xxyy"
        );
        assert_eq!(expand("${X##*x}", &e), "yy");
        assert_eq!(expand("${X%y}|${X%%y*}|${X%y*}", &e), "xxy|xx|xxy");
        assert_eq!(expand("${UNSET#x}", &e), "");
        // `?` is one character; escapes make wildcards literal.
        assert_eq!(expand("${Q#?\\?}", &[("Q", "???y")]), "?y");
        assert_eq!(expand("${Q%%\\**}", &[("Q", "xx**")]), "xx");
        assert_eq!(expand("${Q%%\\**\\*}", &[("Q", "a***yy*")]), "a");
        // Regex-special characters are literal; `\}` does not close the `${`.
        assert_eq!(
            expand("${Q#()[]{\\}^$.\\*\\?|\\\\}", &[("Q", "()[]{}^$.*?|\\x")]),
            "x"
        );
        // Wildcards do not match a newline (Go's `.`).
        assert_eq!(expand("${Q#*b}", &[("Q", "a\nb")]), "a\nb");
        assert_eq!(expand("${Q##*}", &[("Q", "a\nb")]), "\nb");
        // Characters, not bytes.
        assert_eq!(expand("${Q#?}|${Q%?}", &[("Q", "한국어")]), "국어|한국");
    }

    #[test]
    fn replacement() {
        let e = [
            ("FOO", "/foo*/*/*.txt"),
            ("NEEDLE", "\\*/"),
            ("T", "/tmp/tmp/bar.txt"),
            ("U", "http://google.de"),
        ];
        assert_eq!(
            expand("${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}", &e),
            "/foo.*/*.txt - /foo..*.txt"
        );
        assert_eq!(
            expand("${T/\\/tmp/} - ${T//\\/tmp/}", &e),
            "/tmp/bar.txt - /bar.txt"
        );
        assert_eq!(
            expand("${U/http:\\/\\//https:\\/\\/}", &e),
            "https:\\/\\/google.de"
        );
        assert_eq!(expand("${U/http:\\/\\//https://}", &e), "https://google.de");
        assert_eq!(
            expand(
                "${P/\\/?\\//\\/} - ${P//\\/?\\//\\/}",
                &[("P", "/a/foo/b/c.txt")]
            ),
            "\\/foo/b/c.txt - \\/foo\\/c.txt"
        );
        // `*` is greedy: the longest match at the leftmost place.
        assert_eq!(expand("${P/o*o/0}", &[("P", "foo boo")]), "f0");
        assert_eq!(expand("${P//o/0}", &[("P", "foo boo")]), "f00 b00");
        assert_eq!(expand("${P/x/y}", &[("P", "foo")]), "foo");
        // An empty pattern matches everywhere, as Go's ReplaceAllString does it.
        assert_eq!(expand("${P/$E/-}", &[("P", "abc"), ("E", "")]), "-abc");
        assert_eq!(expand("${P//$E/-}", &[("P", "abc"), ("E", "")]), "-a-b-c-");
        // `*` can match empty: no second replacement right after a match.
        assert_eq!(expand("${P//b*/-}", &[("P", "abc")]), "a-");
        assert_eq!(expand("${P///}|${UNSET///}", &[("P", "xxyy")]), "xxyy|");
        // In a replace-all, `$0` written as `\$0` is the matched text and `$$` a `$`.
        assert_eq!(expand("${P//o/<\\$0>}", &[("P", "foo")]), "f<\\o><\\o>");
        assert_eq!(expand("${P//o/\\$\\$}", &[("P", "fo")]), "f\\$\\$");
        assert_eq!(
            expand("${P//o/<'$0'>}|${P/o/<'$0'>}", &[("P", "foo")]),
            "f<o><o>|f<$0>o"
        );
        assert_eq!(expand("${P//o/'$$'}", &[("P", "fo")]), "f$");
    }

    #[test]
    fn quotes_and_escapes() {
        let e = [("V", "v")];
        assert_eq!(expand(r#"'$V "x"' "$V 'y'" \$V"#, &e), r#"$V "x" v 'y' $V"#);
        assert_eq!(expand(r#""a\"b\$V\\c\d""#, &e), r#"a"b$V\c\d"#);
        assert_eq!(expand(r"a\ b\\", &e), r"a b\");
        assert_eq!(expand(r"trailing\", &e), "trailing");
        assert_eq!(expand("'it''s'", &e), "its");
    }

    #[test]
    fn backtick_escape() {
        let lex = Lexer::new('`');
        let e = env(&[("V", "v")]);
        assert_eq!(lex.escape(), '`');
        assert_eq!(lex.expand(r"C:\path\$V", &e).unwrap(), r"C:\path\v");
        assert_eq!(lex.expand("a`$V`` b", &e).unwrap(), "a$V` b");
        assert_eq!(lex.expand("\"x`\"y`$V\\\"", &e).unwrap(), "x\"y$V\\");
        assert_eq!(
            lex.process_words("a` b c", &e).unwrap(),
            vec!["a b".to_owned(), "c".to_owned()]
        );
    }

    #[test]
    fn word_splitting() {
        let lex = Lexer::new('\\');
        let e = env(&[("SP", " a  b "), ("ONE", "x")]);
        let words = |w: &str| lex.process_words(w, &e).unwrap();
        assert_eq!(words("  a   b  "), ["a", "b"]);
        assert_eq!(words("x${SP}y"), ["x", "a", "b", "y"]);
        assert_eq!(words("x\"${SP}\"y"), ["x a  b y"]);
        assert_eq!(words("'' \"\" a"), ["a"]);
        assert_eq!(words("a\\ b c"), ["a b", "c"]);
        assert_eq!(words("$ONE${UNSET:-d}z"), ["xdz"]);
        assert_eq!(words("pre${UNSET:-d e}post"), ["pred", "epost"]);
        assert!(words("").is_empty());
        // The unsplit result keeps every space.
        assert_eq!(lex.expand("x${SP}y", &e).unwrap(), "x a  b y");
    }

    #[test]
    fn matched_and_unmatched_names() {
        let lex = Lexer::new('\\');
        let e = env(&[("FOO", "xxx"), ("BAR", "")]);
        let r = lex
            .process_word("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", &e)
            .unwrap();
        assert_eq!(r.result, "xxx  ccc");
        assert_eq!(r.matched, set(&["BAR", "FOO"]));
        assert_eq!(r.unmatched, set(&["BAZ"]));

        let r = lex.process_word("x", &e).unwrap();
        assert!(r.matched.is_empty() && r.unmatched.is_empty());

        // Names in a default word are looked up only when the word is processed,
        // which is always (as in `BuildKit`).
        let r = lex.process_word("${FOO:-$OTHER}'$QUOTED'", &e).unwrap();
        assert_eq!(r.result, "xxx$QUOTED");
        assert_eq!(r.matched, set(&["FOO"]));
        assert_eq!(r.unmatched, set(&["OTHER"]));

        let r = lex
            .process_word(
                "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz",
                &env(&[("VERSION", "v1.2.3"), ("TARGETOS", "linux"), ("TARGETARCH", "arm")]),
            )
            .unwrap();
        assert_eq!(r.result, "something-v1.2.3.linux-arm.tar.gz");
        assert_eq!(r.matched, set(&["TARGETARCH", "TARGETOS", "VERSION"]));
        assert_eq!(r.unmatched, set(&["TARGETVARIANT"]));
    }

    #[test]
    fn errors_with_offsets() {
        let cases: &[(&str, ShellErrorKind, usize)] = &[
            ("ab'cd", ShellErrorKind::UnterminatedSingleQuote, 2),
            ("a\"bc\\\"", ShellErrorKind::UnterminatedDoubleQuote, 1),
            ("he${PWD", ShellErrorKind::MissingBrace, 2),
            ("he${", ShellErrorKind::MissingBrace, 2),
            ("x${A:-${B}", ShellErrorKind::MissingBrace, 1),
            ("${A:-\"}", ShellErrorKind::MissingBrace, 0),
            ("${}", ShellErrorKind::BadSubstitution, 0),
            ("${{a}", ShellErrorKind::BadSubstitution, 0),
            ("${:-a}", ShellErrorKind::BadSubstitution, 0),
            ("${A/x", ShellErrorKind::MissingSlash, 0),
            ("${A/x/y", ShellErrorKind::MissingBrace, 0),
            (
                "${A:=x}",
                ShellErrorKind::UnsupportedModifier(":=".into()),
                0,
            ),
            ("${A=x}", ShellErrorKind::UnsupportedModifier("=".into()), 0),
            (
                "${A:#x}",
                ShellErrorKind::UnsupportedModifier(":#".into()),
                0,
            ),
            (
                "${A:%x}",
                ShellErrorKind::UnsupportedModifier(":%".into()),
                0,
            ),
            ("${A.}", ShellErrorKind::UnsupportedModifier(".".into()), 0),
            (
                "${A#\\x}",
                ShellErrorKind::InvalidPattern {
                    pattern: "\\x".into(),
                    reason: "invalid escape '\\x'".into(),
                },
                0,
            ),
            (
                "z${A//a\\b/}",
                ShellErrorKind::InvalidPattern {
                    pattern: "a\\b".into(),
                    reason: "invalid escape '\\b'".into(),
                },
                1,
            ),
        ];
        for (word, kind, offset) in cases {
            let err = error(word, &[("A", "abc")]);
            assert_eq!(&err.kind, kind, "{word:?}");
            assert_eq!(err.offset, *offset, "{word:?}");
            assert_eq!(&err.word, word);
        }
        // A `?` error inside a `${` that is never closed reads as the missing `}`.
        assert_eq!(
            error("${A:-${B?no}", &[]).kind,
            ShellErrorKind::MissingBrace
        );
        assert_eq!(
            error("${A:-${B?no}}", &[]).kind,
            ShellErrorKind::Required {
                name: "B".into(),
                message: "no".into()
            }
        );
        let err = error("안녕${}", &[]);
        assert_eq!((err.offset, err.column()), (6, 3));
        assert_eq!(
            err.to_string(),
            "failed to process \"안녕${}\": syntax error: bad substitution"
        );
    }

    #[test]
    fn expansion_past_the_limit_fails_where_it_crosses() {
        let lex = Lexer::new('\\').with_max_len(12);
        let e = env(&[("A", "123456"), ("B", "1234567")]);
        let too_long = ShellErrorKind::TooLong { limit: 12 };
        // Exactly at the limit is fine, one byte over is not.
        assert_eq!(lex.expand("$A$A", &e).unwrap(), "123456123456");
        let err = lex.process_word("$A$B", &e).unwrap_err();
        assert_eq!(err.kind, too_long);
        assert_eq!((err.offset, err.column()), (2, 3), "at the second `$`");
        assert_eq!(
            err.to_string(),
            "failed to process \"$A$B\": the expanded value is over 12 bytes"
        );
        // Inside double quotes, in a default word, after literal text, in a replacement.
        for (word, offset) in [
            ("\"$A$B\"", 3),
            ("x${U:-$A$B}", 8),
            ("${B}123456", 9),
            ("${A//?/$B}", 0),
            ("${A/1/$B}x", 9),
        ] {
            let err = lex.process_word(word, &e).unwrap_err();
            assert_eq!(err.kind, too_long, "{word}");
            assert_eq!(err.offset, offset, "{word}");
        }
        // A word written longer than the limit may keep its own length, no more.
        assert_eq!(
            lex.expand("'0123456789abcd'", &e).unwrap(),
            "0123456789abcd"
        );
        let err = lex.process_word("0123456789ab$A", &e).unwrap_err();
        assert_eq!(
            (err.kind, err.offset),
            (ShellErrorKind::TooLong { limit: 14 }, 12)
        );
        assert_eq!(human_size(MAX_WORD_LEN), "1 MiB");
        assert_eq!(human_size(64 << 10), "64 KiB");
        assert_eq!(human_size_exact(MAX_WORD_LEN), "1 MiB (1048576 bytes)");
    }

    #[test]
    fn doubling_stops_at_one_mebibyte_without_growing_further() {
        let lex = Lexer::new('\\');
        let mut e = env(&[("A0", &"x".repeat(1024))]);
        let mut failed_at = None;
        for i in 1..=20 {
            let word = format!("${{A{}}}${{A{}}}", i - 1, i - 1);
            match lex.expand(&word, &e) {
                Ok(v) => {
                    e.insert(format!("A{i}"), v);
                }
                Err(err) => {
                    assert_eq!(
                        err.kind,
                        ShellErrorKind::TooLong {
                            limit: MAX_WORD_LEN
                        }
                    );
                    failed_at = Some(i);
                    break;
                }
            }
        }
        // 1 KiB doubled ten times is exactly 1 MiB; the eleventh doubling is over.
        assert_eq!(failed_at, Some(11));
        assert_eq!(e["A10"].len(), MAX_WORD_LEN);
    }

    #[test]
    fn quadratic_pattern_searches_are_cut_off() {
        let lex = Lexer::new('\\');
        let e = env(&[("A", &"a".repeat(200_000))]);
        let t = std::time::Instant::now();
        for word in ["${A//a*b/x}", "${A/*b/x}", "${A#$A}"] {
            let err = lex.process_word(word, &e).unwrap_err();
            assert_eq!(err.kind, ShellErrorKind::TooExpensive, "{word}");
            assert_eq!(err.offset, 0);
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(60),
            "hang guard"
        );
        // Linear searches over the same value are well within the budget.
        assert_eq!(lex.expand("${A//b/x}", &e).unwrap().len(), 200_000);
        assert_eq!(lex.expand("${A##*a}", &e).unwrap(), "");
        assert_eq!(lex.expand("${A%%a*}", &e).unwrap(), "");
        assert_eq!(lex.expand("${A//a/}", &e).unwrap(), "");
    }

    #[test]
    fn invalid_pattern_escapes() {
        assert!(parse_pattern("\\").is_err());
        assert!(parse_pattern("\\x").is_err());
        assert!(parse_pattern("\\\\\\").is_err());
        assert_eq!(
            parse_pattern("\\*\\?\\\\\\}\\/*?").unwrap(),
            [
                Tok::Lit('*'),
                Tok::Lit('?'),
                Tok::Lit('\\'),
                Tok::Lit('}'),
                Tok::Lit('/'),
                Tok::Star,
                Tok::Any
            ]
        );
    }

    #[test]
    fn nesting_limit() {
        let deep = "${A:-".repeat(MAX_NESTING) + "x" + &"}".repeat(MAX_NESTING);
        assert_eq!(expand(&deep, &[]), "x");
        let too_deep = "${A:-".repeat(MAX_NESTING + 1) + "x" + &"}".repeat(MAX_NESTING + 1);
        assert_eq!(error(&too_deep, &[]).kind, ShellErrorKind::TooDeep);
        let hostile = "${A:-".repeat(100_000);
        assert!(Lexer::new('\\').process_word(&hostile, &NoEnv).is_err());
    }

    #[test]
    fn skip_unset_env_keeps_references() {
        let lex = Lexer::new('\\').with_skip_unset_env(true);
        let e = env(&[("SET", "v"), ("EMPTY", "")]);
        let x = |w: &str| lex.expand(w, &e).unwrap();
        assert_eq!(x("$SET $UNSET ${UNSET}"), "v $UNSET ${UNSET}");
        assert_eq!(
            x("${UNSET:-$SET} ${UNSET+a} ${EMPTY:-d}"),
            "${UNSET:-v} ${UNSET+a} d"
        );
        assert_eq!(x("${UNSET?must} ${UNSET#p}"), "${UNSET?must} ${UNSET#p}");
        assert_eq!(
            x("${UNSET/a/b} ${UNSET//a/b}"),
            "${UNSET/a/b} ${UNSET//a/b}"
        );
        assert_eq!(x("$1"), "$1");
    }

    #[test]
    fn hidden_names_stay_unexpanded() {
        let e = env(&[("A", "a"), ("B", "b")]);
        let hidden = EnvWithout {
            env: &e,
            hidden: &["B"],
        };
        let lex = Lexer::new('\\').with_skip_unset_env(true);
        let r = lex.process_word("$A ${B} ${B:-x} $C", &hidden).unwrap();
        assert_eq!(r.result, "a ${B} ${B:-x} $C");
        assert_eq!(r.matched, set(&["A"]));
        assert_eq!(r.unmatched, set(&["B", "C"]));
    }

    #[test]
    fn raw_quotes_and_raw_escapes() {
        let e = env(&[("V", "v")]);
        let lex = Lexer::new('\\').with_raw_quotes(true);
        assert_eq!(
            lex.expand(r#"'$V' "$V" a\ b"#, &e).unwrap(),
            r#"'$V' "v" a b"#
        );
        assert_eq!(lex.process_words("'a b' c", &e).unwrap(), ["'a b'", "c"]);
        let lex = Lexer::new('\\').with_raw_escapes(true);
        assert_eq!(
            lex.expand(r#"a\ b \$V "\$V\x""#, &e).unwrap(),
            r"a\ b \$V \$V\\x"
        );
    }

    #[test]
    fn skip_process_quotes_treats_quotes_as_text() {
        let lex = Lexer::new('\\').with_skip_process_quotes(true);
        let e = env(&[("V", "v")]);
        assert_eq!(
            lex.expand(r#"'$V' "$V" it's"#, &e).unwrap(),
            r#"'v' "v" it's"#
        );
        assert_eq!(lex.process_words("'a b'", &e).unwrap(), ["'a", "b'"]);
    }

    #[test]
    fn special_and_positional_parameters_are_names() {
        let e = [("@", "at"), ("1", "one"), ("10", "ten")];
        assert_eq!(expand("$@@ $1 ${10} $10x $#", &e), "at@ one ten tenx ");
        let r = Lexer::new('\\').process_word("$# $0", &NoEnv).unwrap();
        assert_eq!(r.unmatched, set(&["#", "0"]));
    }

    #[test]
    fn unicode_names_follow_go_letter_and_digit_classes() {
        let e = [("한국어", "ko"), ("X", "x")];
        assert_eq!(expand("$한국어!", &e), "ko!");
        // Superscript two is a number but neither a letter nor a decimal digit.
        assert_eq!(expand("$X²", &e), "x²");
        // Arabic-Indic digits are decimal digits.
        assert_eq!(expand("${X٣}", &e), "");
    }

    #[test]
    fn env_implementations() {
        let pairs = vec![
            ("A".to_owned(), "1".to_owned()),
            ("A".to_owned(), "2".to_owned()),
        ];
        assert_eq!(Lexer::default().expand("$A", &pairs).unwrap(), "2");
        assert_eq!(Lexer::default().expand("$A", &[("A", "3")]).unwrap(), "3");
        let hm: HashMap<&str, &str> = [("A", "4")].into_iter().collect();
        assert_eq!(Lexer::default().expand("$A", &hm).unwrap(), "4");
        let list = env_from_list(["A=1=2", "B", "A=5"]);
        assert_eq!(list.get("A").map(String::as_str), Some("5"));
        assert_eq!(list.get("B").map(String::as_str), Some(""));
        assert_eq!(Lexer::default().expand("${B-unset}", &list).unwrap(), "");
    }

    #[test]
    fn leading_byte_order_mark_is_ignored() {
        assert_eq!(expand("\u{feff}$A", &[("A", "a")]), "a");
        assert_eq!(expand("x\u{feff}", &[]), "x\u{feff}");
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics(
            word in "[a-zA-Z0-9_${}:?#%/*+=\\-\\\\'\" `\t\n.@!é한]{0,48}",
            opts in 0u8..32,
        ) {
            let lex = Lexer::new(if opts & 16 == 0 { '\\' } else { '`' })
                .with_raw_quotes(opts & 1 != 0)
                .with_raw_escapes(opts & 2 != 0)
                .with_skip_process_quotes(opts & 4 != 0)
                .with_skip_unset_env(opts & 8 != 0);
            let e = env(&[("a", "x y"), ("A", ""), ("b", "*/?\\"), ("é", "한")]);
            if let Err(err) = lex.process_word(&word, &e) {
                proptest::prop_assert!(err.offset <= word.len());
                proptest::prop_assert!(word.is_char_boundary(err.offset));
                proptest::prop_assert!(!err.to_string().is_empty());
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(word in proptest::prelude::any::<String>()) {
            let _ = Lexer::new('\\').process_word(&word, &NoEnv);
        }

        #[test]
        fn suffix_trim_agrees_with_brute_force(
            value in "[ab*\n]{0,8}",
            pattern in "[ab*?]{0,5}",
            greedy: bool,
        ) {
            let toks = parse_pattern(&pattern).unwrap();
            let got = trim_suffix(&toks, &value, greedy, &mut u64::MAX.clone()).unwrap();
            let chars: Vec<char> = value.chars().collect();
            let n = chars.len();
            let full =
                |s: &[char]| match_prefix(&toks, s, true, &mut u64::MAX.clone()) == Ok(Some(s.len()));
            let mut cuts: Vec<usize> = (0..=n).filter(|&k| full(&chars[n - k..])).collect();
            if !greedy {
                cuts.reverse();
            }
            let want: String = match cuts.last() {
                Some(&k) => chars[..n - k].iter().collect(),
                None => value.clone(),
            };
            proptest::prop_assert_eq!(got, want);
        }
    }
}

//! Translation of the Go (RE2) regular expressions that moby/patternmatcher builds
//! into the syntax of the `regex` crate, so that a pattern matches exactly the paths
//! it matches in moby.
//!
//! moby turns a `.dockerignore` pattern into a Go regexp by replacing `*`, `?` and `**`
//! and escaping `.+()|{}$`, but passes `[`, `]`, `^` and `\x` through. Whatever the Go
//! parser makes of the result is what `docker build` does, so this module parses that
//! string with Go's rules (classes, escapes, POSIX and Perl classes) and writes every
//! literal and class member out explicitly for the `regex` crate. The differences it
//! removes: in Go `[` inside a class is a literal, `&&`/`--`/`~~` mean nothing, `\d`,
//! `\s`, `\w` and `\b` are ASCII-only, octal escapes exist, and `\Q…\E` quotes.

use std::fmt::Write as _;
use std::iter::Peekable;
use std::str::CharIndices;

/// Rewrites a Go regexp into an equivalent `regex`-crate regexp, or says why Go would
/// reject it.
pub(crate) fn translate(go: &str) -> Result<String, String> {
    let mut t = Translator {
        src: go,
        it: go.char_indices().peekable(),
        out: String::with_capacity(go.len() * 2),
    };
    t.top()?;
    Ok(t.out)
}

struct Translator<'a> {
    src: &'a str,
    it: Peekable<CharIndices<'a>>,
    out: String,
}

/// ASCII ranges of Go's Perl classes (`\d`, `\s`, `\w`).
fn perl_class(c: char) -> Option<(bool, &'static [(char, char)])> {
    const DIGIT: &[(char, char)] = &[('0', '9')];
    const SPACE: &[(char, char)] = &[('\t', '\n'), ('\x0c', '\r'), (' ', ' ')];
    const WORD: &[(char, char)] = &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];
    Some(match c {
        'd' => (false, DIGIT),
        'D' => (true, DIGIT),
        's' => (false, SPACE),
        'S' => (true, SPACE),
        'w' => (false, WORD),
        'W' => (true, WORD),
        _ => return None,
    })
}

/// ASCII ranges of Go's POSIX classes (`[:alpha:]`).
fn posix_class(name: &str) -> Option<&'static [(char, char)]> {
    Some(match name {
        "alnum" => &[('0', '9'), ('A', 'Z'), ('a', 'z')],
        "alpha" => &[('A', 'Z'), ('a', 'z')],
        "ascii" => &[('\0', '\x7f')],
        "blank" => &[('\t', '\t'), (' ', ' ')],
        "cntrl" => &[('\0', '\x1f'), ('\x7f', '\x7f')],
        "digit" => &[('0', '9')],
        "graph" => &[('!', '~')],
        "lower" => &[('a', 'z')],
        "print" => &[(' ', '~')],
        "punct" => &[('!', '/'), (':', '@'), ('[', '`'), ('{', '~')],
        "space" => &[('\t', '\r'), (' ', ' ')],
        "upper" => &[('A', 'Z')],
        "word" => &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')],
        "xdigit" => &[('0', '9'), ('A', 'F'), ('a', 'f')],
        _ => return None,
    })
}

fn write_ranges(out: &mut String, negated: bool, ranges: &[(char, char)]) {
    out.push('[');
    if negated {
        out.push('^');
    }
    for &(lo, hi) in ranges {
        write_range(out, lo, hi);
    }
    out.push(']');
}

fn write_range(out: &mut String, lo: char, hi: char) {
    let _ = write!(out, "\\x{{{:x}}}", u32::from(lo));
    if hi != lo {
        let _ = write!(out, "-\\x{{{:x}}}", u32::from(hi));
    }
}

fn write_literal(out: &mut String, c: char) {
    let _ = write!(out, "\\x{{{:x}}}", u32::from(c));
}

impl Translator<'_> {
    fn peek(&mut self) -> Option<char> {
        self.it.peek().map(|&(_, c)| c)
    }

    fn next(&mut self) -> Option<char> {
        self.it.next().map(|(_, c)| c)
    }

    fn rest(&mut self) -> &str {
        match self.it.peek() {
            Some(&(i, _)) => &self.src[i..],
            None => "",
        }
    }

    fn top(&mut self) -> Result<(), String> {
        while let Some(c) = self.next() {
            match c {
                '\\' => self.top_escape()?,
                '[' => self.class()?,
                '.' | '^' | '$' | ')' | '*' | '+' | '?' | '|' => self.out.push(c),
                '(' => {
                    if self.peek() == Some('?') {
                        return Err("flags and named groups are not supported".into());
                    }
                    self.out.push_str("(?:");
                }
                c => write_literal(&mut self.out, c),
            }
        }
        Ok(())
    }

    fn top_escape(&mut self) -> Result<(), String> {
        match self.peek() {
            None => Err("trailing backslash at end of expression".into()),
            Some('A') => {
                self.next();
                self.out.push_str("\\A");
                Ok(())
            }
            Some('z') => {
                self.next();
                self.out.push_str("\\z");
                Ok(())
            }
            Some('b') => {
                self.next();
                self.out.push_str("(?-u:\\b)");
                Ok(())
            }
            Some('B') => {
                self.next();
                self.out.push_str("(?-u:\\B)");
                Ok(())
            }
            Some('Q') => {
                self.next();
                // Literal text up to `\E` or the end.
                let rest = self.rest().to_owned();
                let (lit, consumed) = match rest.find("\\E") {
                    Some(i) => (&rest[..i], i + 2),
                    None => (rest.as_str(), rest.len()),
                };
                for c in lit.chars() {
                    write_literal(&mut self.out, c);
                }
                let mut n = 0;
                while n < consumed {
                    n += self.next().map_or(consumed, char::len_utf8);
                }
                Ok(())
            }
            Some('C') => Err("\\C is not supported".into()),
            Some(c) => {
                if let Some((neg, ranges)) = perl_class(c) {
                    self.next();
                    write_ranges(&mut self.out, neg, ranges);
                    return Ok(());
                }
                if c == 'p' || c == 'P' {
                    return self.unicode_class();
                }
                let lit = self.escape_char()?;
                write_literal(&mut self.out, lit);
                Ok(())
            }
        }
    }

    /// `\pL`, `\p{Greek}`, `\PL`, `\p{^Greek}` (after the backslash).
    fn unicode_class(&mut self) -> Result<(), String> {
        let mut negated = self.next() == Some('P');
        let name = match self.next() {
            None => return Err("invalid character class range: \\p".into()),
            Some('{') => {
                let mut name = String::new();
                loop {
                    match self.next() {
                        None => return Err("invalid character class range: \\p{".into()),
                        Some('}') => break,
                        Some(c) => name.push(c),
                    }
                }
                name
            }
            Some(c) => c.to_string(),
        };
        let name = match name.strip_prefix('^') {
            Some(n) => {
                negated = !negated;
                n.to_owned()
            }
            None => name,
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid character class range: \\p{{{name}}}"));
        }
        let _ = write!(self.out, "\\{}{{{name}}}", if negated { 'P' } else { 'p' });
        Ok(())
    }

    /// An escape that stands for one character (after the backslash), as Go's
    /// `parseEscape`: octal, hex, C escapes, and escaped punctuation.
    fn escape_char(&mut self) -> Result<char, String> {
        let Some(c) = self.next() else {
            return Err("trailing backslash at end of expression".into());
        };
        match c {
            '1'..='7' | '0' => {
                // `\1`..`\7` alone would be a backreference, which Go rejects.
                if c != '0' && !matches!(self.peek(), Some('0'..='7')) {
                    return Err(format!("invalid escape sequence: \\{c}"));
                }
                let mut v = c.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match self.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            self.next();
                            v = v * 8 + d;
                        }
                        None => break,
                    }
                }
                char::from_u32(v).ok_or_else(|| format!("invalid escape sequence: \\{c}"))
            }
            'x' => {
                let bad = || "invalid escape sequence: \\x".to_owned();
                if self.peek() == Some('{') {
                    self.next();
                    let mut v: u32 = 0;
                    let mut digits = 0;
                    loop {
                        match self.next() {
                            Some('}') if digits > 0 => break,
                            Some(d) if d.is_ascii_hexdigit() => {
                                v = v
                                    .checked_mul(16)
                                    .and_then(|v| v.checked_add(d.to_digit(16).unwrap_or(0)))
                                    .filter(|&v| v <= 0x10_ffff)
                                    .ok_or_else(bad)?;
                                digits += 1;
                            }
                            _ => return Err(bad()),
                        }
                    }
                    char::from_u32(v).ok_or_else(bad)
                } else {
                    let hi = self.next().and_then(|d| d.to_digit(16)).ok_or_else(bad)?;
                    let lo = self.next().and_then(|d| d.to_digit(16)).ok_or_else(bad)?;
                    char::from_u32(hi * 16 + lo).ok_or_else(bad)
                }
            }
            'a' => Ok('\x07'),
            'f' => Ok('\x0c'),
            'n' => Ok('\n'),
            'r' => Ok('\r'),
            't' => Ok('\t'),
            'v' => Ok('\x0b'),
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok(c),
            c => Err(format!("invalid escape sequence: \\{c}")),
        }
    }

    /// A bracket expression, after the `[`.
    fn class(&mut self) -> Result<(), String> {
        let missing = || "missing closing ]".to_owned();
        self.out.push('[');
        if self.peek() == Some('^') {
            self.next();
            self.out.push('^');
        }
        let mut first = true;
        loop {
            let c = self.peek().ok_or_else(missing)?;
            if c == ']' && !first {
                self.next();
                break;
            }
            first = false;

            // POSIX class `[:name:]` (searched for as Go does, up to the next `:]`).
            if self.rest().starts_with("[:") {
                let rest = self.rest().to_owned();
                if let Some(i) = rest[2..].find(":]") {
                    let whole = &rest[..i + 4];
                    let inner = &rest[2..i + 2];
                    let (neg, name) = match inner.strip_prefix('^') {
                        Some(n) => (true, n),
                        None => (false, inner),
                    };
                    let ranges = posix_class(name)
                        .ok_or_else(|| format!("invalid character class range: {whole}"))?;
                    write_ranges(&mut self.out, neg, ranges);
                    for _ in whole.chars() {
                        self.next();
                    }
                    continue;
                }
            }

            if c == '\\' {
                let mut ahead = self.it.clone();
                ahead.next();
                match ahead.peek().map(|&(_, c)| c) {
                    Some('p' | 'P') => {
                        self.next();
                        self.unicode_class()?;
                        continue;
                    }
                    Some(p) => {
                        if let Some((neg, ranges)) = perl_class(p) {
                            self.next();
                            self.next();
                            write_ranges(&mut self.out, neg, ranges);
                            continue;
                        }
                    }
                    None => {}
                }
            }

            let lo = self.class_char()?;
            let mut hi = lo;
            let mut ahead = self.it.clone();
            if ahead.next().map(|(_, c)| c) == Some('-') {
                if let Some((_, after)) = ahead.next() {
                    if after != ']' {
                        self.next(); // the '-'
                        hi = self.class_char()?;
                        if hi < lo {
                            return Err(format!("invalid character class range: {lo}-{hi}"));
                        }
                    }
                }
            }
            write_range(&mut self.out, lo, hi);
        }
        self.out.push(']');
        Ok(())
    }

    fn class_char(&mut self) -> Result<char, String> {
        match self.next() {
            None => Err("missing closing ]".into()),
            Some('\\') => self.escape_char(),
            Some(c) => Ok(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::translate;

    fn matches(go: &str, s: &str) -> bool {
        let rust = translate(go).unwrap_or_else(|e| panic!("{go}: {e}"));
        regex::Regex::new(&rust)
            .unwrap_or_else(|e| panic!("{go} -> {rust}: {e}"))
            .is_match(s)
    }

    #[test]
    fn go_class_rules() {
        // `[` is a literal inside a class; the class ends at the first `]`.
        assert!(matches("^[[^/]*]$", "[^]"));
        assert!(matches("^[[^/]*]$", "]"));
        assert!(!matches("^[[^/]*]$", "a]"));
        assert!(matches("^[a&&b]$", "&"));
        assert!(matches("^[a-c~~]$", "~"));
        assert!(matches("^[[:alpha:]]$", "q"));
        assert!(!matches("^[[:^alpha:]]$", "q"));
        assert!(matches("^[^b-d]$", "\n"));
        assert!(matches("^[\\]a]$", "]"));
        assert!(matches("^[\\-x]$", "-"));
        assert!(matches("^[a-]$", "-"));
        assert!(matches("^[\\d]$", "7"));
        assert!(!matches("^\\d$", "٣"));
        assert!(matches("^\\w+$", "a_1"));
        assert!(matches("^a\\Q.*\\Eb$", "a.*b"));
        assert!(matches("^\\101\\x42\\x{43}$", "ABC"));
        assert!(matches("^a.b$", "a/b"));
        assert!(!matches("^a.b$", "a\nb"));
    }

    #[test]
    fn go_rejections() {
        for bad in [
            "[Local-Only]",
            "[",
            "[a",
            "a\\",
            "\\1",
            "\\y",
            "\\é",
            "[[:foo:]]",
            "\\x4",
            "\\C",
            "[\\b]",
        ] {
            assert!(translate(bad).is_err(), "{bad} should be rejected");
        }
    }
}

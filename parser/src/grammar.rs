//! The chumsky grammars: the instruction line (keyword, builder flags, `--`,
//! arguments), JSON arrays, BuildKit's quote-preserving word splitter, heredoc
//! markers, the CSV of `--mount`, and Go durations.
//!
//! Every grammar works on one logical line (continuations already joined) and
//! reports byte offsets into that line; `ast` maps them back to the source.

use std::ops::Range;

use chumsky::prelude::*;

type Extra<'a> = extra::Err<Rich<'a, char>>;

/// `[\t\v\f\r ]`: the separator between the instruction keyword and the rest.
fn is_token_ws(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// One `--name[=value]` builder flag, with quotes and backslashes processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlagWord {
    pub text: String,
    pub range: Range<usize>,
}

/// An instruction line split into keyword, flags and the remaining arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Split<'a> {
    pub keyword: &'a str,
    pub keyword_range: Range<usize>,
    pub flags: Vec<FlagWord>,
    pub rest: &'a str,
    pub rest_start: usize,
}

/// A quoted section of a flag word: `\` escapes the next character in both
/// quote kinds, an unterminated quote runs to the end of the line.
fn flag_quoted<'a>(q: char) -> impl Parser<'a, &'a str, Vec<Option<char>>, Extra<'a>> + Clone {
    let escaped = just('\\').ignore_then(any().or_not());
    just(q)
        .ignore_then(
            choice((escaped, none_of([q, '\\']).map(Some)))
                .repeated()
                .collect::<Vec<_>>(),
        )
        .then_ignore(just(q).ignored().or(end()))
}

fn split_parser<'a>() -> impl Parser<'a, &'a str, Split<'a>, Extra<'a>> {
    let keyword = any()
        .filter(|c: &char| !is_token_ws(*c))
        .repeated()
        .at_least(1)
        .to_slice()
        .map_with(|s: &str, e| {
            let span: SimpleSpan = e.span();
            (s, span.into_range())
        });
    let uspace = any().filter(|c: &char| c.is_whitespace());
    let escaped = just('\\').ignore_then(any().or_not()).map(|c| vec![c]);
    let plain = any()
        .filter(|c: &char| !c.is_whitespace() && !matches!(c, '"' | '\'' | '\\'))
        .map(|c| vec![Some(c)]);
    let piece = choice((flag_quoted('"'), flag_quoted('\''), escaped, plain));
    let word = just("--")
        .rewind()
        .ignore_then(piece.repeated().at_least(1).collect::<Vec<_>>())
        .map_with(|pieces: Vec<Vec<Option<char>>>, e| {
            let span: SimpleSpan = e.span();
            FlagWord {
                text: pieces.into_iter().flatten().flatten().collect(),
                range: span.into_range(),
            }
        });
    let flag = uspace.repeated().ignore_then(word);
    let flags = flag
        .clone()
        .try_map(|w, span| {
            if w.text == "--" {
                Err(Rich::custom(span, "end of flags"))
            } else {
                Ok(w)
            }
        })
        .repeated()
        .collect::<Vec<_>>();
    let terminator = flag.filter(|w| w.text == "--").or_not();
    let rest = uspace
        .repeated()
        .ignore_then(any().repeated().to_slice().map_with(|s: &str, e| {
            let span: SimpleSpan = e.span();
            (s, span.start)
        }));
    keyword
        .then(
            any()
                .filter(|c: &char| is_token_ws(*c))
                .repeated()
                .at_least(1)
                .ignore_then(flags)
                .then_ignore(terminator)
                .then(rest)
                .or_not(),
        )
        .then_ignore(end())
        .map(|((keyword, keyword_range), after)| {
            let (flags, (rest, rest_start)) =
                after.unwrap_or_else(|| (Vec::new(), ("", keyword_range.end)));
            Split {
                keyword,
                keyword_range,
                flags,
                rest,
                rest_start,
            }
        })
}

/// Splits a (trimmed, non-empty) instruction line like BuildKit's `splitCommand`.
pub(crate) fn split_command(line: &str) -> Option<Split<'_>> {
    split_parser().parse(line).into_result().ok()
}

/// A JSON value, as far as the Dockerfile cares.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Str(String),
    Array(Vec<Json>),
    Other,
}

#[derive(Debug, Clone, Copy)]
enum JsonChar {
    Char(char),
    Unit(u32),
}

fn decode_json_string(parts: &[JsonChar]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < parts.len() {
        match parts[i] {
            JsonChar::Char(c) => out.push(c),
            JsonChar::Unit(u) => {
                if (0xD800..0xDC00).contains(&u) {
                    if let Some(JsonChar::Unit(lo)) = parts.get(i + 1).copied()
                        && (0xDC00..0xE000).contains(&lo)
                    {
                        let c = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                        out.push(char::from_u32(c).unwrap_or('\u{fffd}'));
                        i += 2;
                        continue;
                    }
                    out.push('\u{fffd}');
                } else {
                    out.push(char::from_u32(u).unwrap_or('\u{fffd}'));
                }
            }
        }
        i += 1;
    }
    out
}

fn json_parser<'a>() -> impl Parser<'a, &'a str, Json, Extra<'a>> {
    let ws = one_of(" \t\r\n").repeated();
    recursive(|value| {
        let hex4 = any()
            .filter(char::is_ascii_hexdigit)
            .repeated()
            .exactly(4)
            .to_slice()
            .map(|s: &str| u32::from_str_radix(s, 16).unwrap_or(0xfffd));
        let escape = just('\\').ignore_then(choice((
            just('"').to(JsonChar::Char('"')),
            just('\\').to(JsonChar::Char('\\')),
            just('/').to(JsonChar::Char('/')),
            just('b').to(JsonChar::Char('\u{8}')),
            just('f').to(JsonChar::Char('\u{c}')),
            just('n').to(JsonChar::Char('\n')),
            just('r').to(JsonChar::Char('\r')),
            just('t').to(JsonChar::Char('\t')),
            just('u').ignore_then(hex4).map(JsonChar::Unit),
        )));
        let plain = any()
            .filter(|c: &char| *c != '"' && *c != '\\' && u32::from(*c) >= 0x20)
            .map(JsonChar::Char);
        let string = just('"')
            .ignore_then(choice((escape, plain)).repeated().collect::<Vec<_>>())
            .then_ignore(just('"'))
            .map(|parts| decode_json_string(&parts));
        let digits = one_of("0123456789").repeated();
        let number = just('-')
            .or_not()
            .then(
                just('0')
                    .ignored()
                    .or(one_of("123456789").then(digits).ignored()),
            )
            .then(just('.').then(digits.at_least(1)).or_not())
            .then(
                one_of("eE")
                    .then(one_of("+-").or_not())
                    .then(digits.at_least(1))
                    .or_not(),
            )
            .ignored();
        let array = just('[')
            .ignore_then(ws)
            .ignore_then(value.clone().separated_by(just(',')).collect::<Vec<Json>>())
            .then_ignore(ws)
            .then_ignore(just(']'));
        let member = ws
            .ignore_then(string)
            .then_ignore(ws)
            .then_ignore(just(':'))
            .then_ignore(value.clone());
        let object = just('{')
            .ignore_then(ws)
            .ignore_then(member.separated_by(just(',')))
            .then_ignore(ws)
            .then_ignore(just('}'));
        choice((
            string.map(Json::Str),
            array.map(Json::Array),
            object.to(Json::Other),
            number.to(Json::Other),
            just("true").to(Json::Other),
            just("false").to(Json::Other),
            just("null").to(Json::Other),
        ))
        .padded_by(ws)
    })
    .then_ignore(end())
}

/// What BuildKit's `parseJSON` makes of an argument string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JsonForm {
    /// Not a JSON array: the caller falls back to the shell form.
    NotJson,
    /// A valid JSON array of strings.
    Strings(Vec<String>),
    /// Valid JSON, but not an array of strings: an error.
    NotStringArray,
}

/// Deepest `[`/`{` nesting outside strings; guards the recursive grammar.
fn nesting_depth(s: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for c in s.chars() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// BuildKit's `parseJSON`: `rest` must start with `[` and be one JSON array.
pub(crate) fn parse_json_array(rest: &str) -> JsonForm {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return JsonForm::NotJson;
    }
    if nesting_depth(rest) > 64 {
        // Only arrays of strings are wanted; deeper nesting is never one.
        return JsonForm::NotStringArray;
    }
    match json_parser().parse(rest).into_result() {
        Ok(Json::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Json::Str(s) => out.push(s),
                    _ => return JsonForm::NotStringArray,
                }
            }
            JsonForm::Strings(out)
        }
        Ok(_) => JsonForm::NotStringArray,
        Err(_) => JsonForm::NotJson,
    }
}

/// BuildKit's `parseWords`: split on whitespace, keep quotes and escapes as
/// written (they are processed later, when the words are expanded), drop an
/// escape character that ends the input.
fn words_parser<'a>(esc: char) -> impl Parser<'a, &'a str, Vec<String>, Extra<'a>> {
    let space = any().filter(|c: &char| c.is_whitespace());
    let esc_end = just(esc).then(end()).to(String::new());
    let esc_pair = just(esc).then(any()).map(|(a, b)| format!("{a}{b}"));
    let single = just('\'')
        .then(none_of('\'').repeated())
        .then(just('\'').or_not())
        .to_slice()
        .map(ToString::to_string);
    let double = just('"')
        .ignore_then(
            choice((esc_end.clone(), esc_pair, none_of('"').map(String::from)))
                .repeated()
                .collect::<Vec<String>>(),
        )
        .then(just('"').or_not())
        .map(|(inner, close)| {
            let mut s = String::from("\"");
            s.extend(inner);
            if close.is_some() {
                s.push('"');
            }
            s
        });
    let plain = any()
        .filter(move |c: &char| !c.is_whitespace() && *c != '"' && *c != '\'' && *c != esc)
        .map(String::from);
    let word = choice((esc_end, esc_pair, single, double, plain))
        .repeated()
        .at_least(1)
        .collect::<Vec<String>>()
        .map(|parts| parts.concat());
    space
        .repeated()
        .ignore_then(
            word.then_ignore(space.repeated())
                .repeated()
                .collect::<Vec<_>>(),
        )
        .then_ignore(end())
        .map(|words| words.into_iter().filter(|w| !w.is_empty()).collect())
}

pub(crate) fn parse_words(rest: &str, esc: char) -> Vec<String> {
    words_parser(esc)
        .parse(rest)
        .into_result()
        .unwrap_or_default()
}

/// A `[n]<<[-]WORD` heredoc marker (BuildKit's `^(\d*)<<(-?)\s*([^<]*)$`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeredocMarker<'a> {
    pub fd: Option<u32>,
    pub chomp: bool,
    pub word: &'a str,
}

pub(crate) fn heredoc_marker(word: &str) -> Option<HeredocMarker<'_>> {
    let parser = one_of::<_, &str, Extra<'_>>("0123456789")
        .repeated()
        .to_slice()
        .then_ignore(just("<<"))
        .then(just('-').or_not().map(|c| c.is_some()))
        .then_ignore(one_of(" \t\n\u{c}\r").repeated())
        .then(none_of('<').repeated().to_slice())
        .then_ignore(end())
        .map(
            |((digits, chomp), word): ((&str, bool), &str)| HeredocMarker {
                fd: digits.parse().ok(),
                chomp,
                word,
            },
        );
    let m = parser.parse(word).into_result().ok()?;
    (!m.word.is_empty()).then_some(m)
}

/// Splits a whole instruction line into shell words with quotes, escapes and
/// `$` expressions kept raw, the way BuildKit looks for heredoc markers.
/// `None` when the line cannot be lexed (unterminated quote or `${`).
pub(crate) fn raw_shell_words(line: &str) -> Option<Vec<String>> {
    let space = any::<&str, Extra<'_>>().filter(|c: &char| c.is_whitespace());
    let esc = just('\\').then(any().or_not()).to_slice();
    let single = just('\'')
        .then(none_of('\'').repeated())
        .then(just('\''))
        .to_slice();
    let double = just('"')
        .then(
            choice((
                just('\\').then(any()).to_slice(),
                none_of("\"\\").to_slice(),
            ))
            .repeated(),
        )
        .then(just('"'))
        .to_slice();
    let brace = just("${")
        .then(none_of('}').repeated())
        .then(just('}'))
        .to_slice();
    let plain = any()
        .filter(|c: &char| !c.is_whitespace() && !matches!(c, '\\' | '\'' | '"'))
        .to_slice();
    // BuildKit's lexer keeps whitespace after `<<` in the word (`<<  EOF`).
    let heredoc = just("<<")
        .then(one_of(" \t\n\r\u{b}\u{c}").repeated())
        .to_slice();
    let word = choice((heredoc, brace, esc, single, double, plain))
        .repeated()
        .at_least(1)
        .to_slice()
        .map(ToString::to_string);
    space
        .repeated()
        .ignore_then(
            word.then_ignore(space.repeated())
                .repeated()
                .collect::<Vec<_>>(),
        )
        .then_ignore(end())
        .parse(line)
        .into_result()
        .ok()
}

/// The heredoc delimiter word with its quotes removed, and whether the body
/// is expanded (no part of the word was quoted). `None` if it is not one word.
pub(crate) fn heredoc_name(word: &str) -> Option<(String, bool)> {
    let mut name = String::new();
    let mut quoted = false;
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    name.push(n);
                }
            }
            '\'' => {
                quoted = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => name.push(n),
                        None => return None,
                    }
                }
            }
            '"' => {
                quoted = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n @ ('"' | '\\' | '$')) => name.push(n),
                            Some(n) => {
                                name.push('\\');
                                name.push(n);
                            }
                            None => return None,
                        },
                        Some(n) => name.push(n),
                        None => return None,
                    }
                }
            }
            c if c.is_whitespace() => return None,
            c => name.push(c),
        }
    }
    (!name.is_empty()).then_some((name, !quoted))
}

/// One CSV record as Go's `encoding/csv` reads it (the `--mount` value).
pub(crate) fn csv_fields(value: &str) -> Option<Vec<String>> {
    let quoted = just::<_, &str, Extra<'_>>('"')
        .ignore_then(
            choice((just("\"\"").to('"'), none_of('"')))
                .repeated()
                .collect::<String>(),
        )
        .then_ignore(just('"'));
    let unquoted = none_of(",\"").repeated().collect::<String>();
    quoted
        .or(unquoted)
        .separated_by(just(','))
        .at_least(1)
        .collect::<Vec<String>>()
        .then_ignore(end())
        .parse(value)
        .into_result()
        .ok()
}

/// Parses a Go `time.ParseDuration` string into nanoseconds.
pub(crate) fn go_duration(s: &str) -> Option<i64> {
    let digits = one_of::<_, &str, Extra<'_>>("0123456789").repeated();
    let number = digits
        .to_slice()
        .then(just('.').ignore_then(digits.to_slice()).or_not())
        .try_map(|(int, frac): (&str, Option<&str>), span| {
            if int.is_empty() && frac.is_none_or(str::is_empty) {
                Err(Rich::custom(span, "expected a number"))
            } else {
                Ok((int, frac.unwrap_or("")))
            }
        });
    let unit = choice((
        just("ns").to(1u128),
        just("us").to(1_000),
        just("µs").to(1_000),
        just("μs").to(1_000),
        just("ms").to(1_000_000),
        just("s").to(1_000_000_000),
        just("m").to(60_000_000_000),
        just("h").to(3_600_000_000_000),
    ));
    let sign = one_of("+-").or_not().map(|c| c == Some('-'));
    let parser = sign
        .then(choice((
            number.then(unit).repeated().at_least(1).collect::<Vec<_>>(),
            just('0').to(Vec::new()),
        )))
        .then_ignore(end());
    let (negative, parts) = parser.parse(s).into_result().ok()?;
    let mut total: u128 = 0;
    for ((int, frac), unit) in parts {
        let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        let mut value = int.checked_mul(unit)?;
        if !frac.is_empty() {
            let mut scale = unit;
            for d in frac.chars() {
                scale /= 10;
                if scale == 0 {
                    break;
                }
                value += u128::from(d.to_digit(10)?) * scale;
            }
        }
        total = total.checked_add(value)?;
    }
    let total = i64::try_from(total).ok()?;
    Some(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_flags_and_rest() {
        let s = split_command("COPY --from=a --chown=\"x y\" -- foo /tmp/").unwrap();
        assert_eq!(s.keyword, "COPY");
        let flags: Vec<_> = s.flags.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(flags, ["--from=a", "--chown=x y"]);
        assert_eq!(s.rest, "foo /tmp/");
        assert_eq!(
            &"COPY --from=a --chown=\"x y\" -- foo /tmp/"[s.rest_start..],
            "foo /tmp/"
        );
    }

    #[test]
    fn keyword_only() {
        let s = split_command("HEALTHCHECK").unwrap();
        assert_eq!(s.rest, "");
        assert!(s.flags.is_empty());
    }

    #[test]
    fn json_forms() {
        assert_eq!(
            parse_json_array(r#"[ "a", "b" ]"#),
            JsonForm::Strings(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse_json_array("[]"), JsonForm::Strings(vec![]));
        assert_eq!(parse_json_array("['a']"), JsonForm::NotJson);
        assert_eq!(
            parse_json_array(r#"["a", ["b"]]"#),
            JsonForm::NotStringArray
        );
        assert_eq!(parse_json_array(r#"["a", 1]"#), JsonForm::NotStringArray);
        assert_eq!(parse_json_array(r#"["a",]"#), JsonForm::NotJson);
        assert_eq!(
            parse_json_array(r#"["\ud83d\ude00\u0000"]"#),
            JsonForm::Strings(vec!["😀\0".into()])
        );
    }

    #[test]
    fn words_keep_quotes() {
        assert_eq!(
            parse_words(r#"abc="123 456" def"#, '\\'),
            ["abc=\"123 456\"", "def"]
        );
        assert_eq!(parse_words(r"a\ b c\", '\\'), ["a\\ b", "c"]);
    }

    #[test]
    fn heredoc_markers() {
        let m = heredoc_marker("3<<-EOF").unwrap();
        assert_eq!((m.fd, m.chomp, m.word), (Some(3), true, "EOF"));
        assert!(heredoc_marker("<<").is_none());
        assert!(heredoc_marker("a<<EOF").is_none());
        assert_eq!(heredoc_name("'EOF'"), Some(("EOF".into(), false)));
        assert_eq!(heredoc_name("E\"O\"F"), Some(("EOF".into(), false)));
        assert_eq!(heredoc_name("EOF"), Some(("EOF".into(), true)));
        assert_eq!(heredoc_marker("<<  EOF").unwrap().word, "EOF");
        let m = heredoc_marker("<< -EOF").unwrap();
        assert_eq!((m.chomp, m.word), (false, "-EOF"));
        assert_eq!(
            raw_shell_words("RUN <<  EOF  > foo 3<<'a b'").unwrap(),
            ["RUN", "<<  EOF", ">", "foo", "3<<'a b'"]
        );
    }

    #[test]
    fn csv() {
        assert_eq!(
            csv_fields(r#"type=cache,"target=/a,b",id=x"#).unwrap(),
            ["type=cache", "target=/a,b", "id=x"]
        );
        assert!(csv_fields(r#"a"b"#).is_none());
    }

    #[test]
    fn durations() {
        assert_eq!(go_duration("5s"), Some(5_000_000_000));
        assert_eq!(go_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(go_duration("1.5ms"), Some(1_500_000));
        assert_eq!(go_duration("0"), Some(0));
        assert_eq!(go_duration("-2s"), Some(-2_000_000_000));
        assert_eq!(go_duration("5"), None);
        assert_eq!(go_duration(""), None);
    }
}

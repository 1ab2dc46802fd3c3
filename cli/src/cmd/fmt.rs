//! Output helpers shared by the image commands: docker's human sizes and durations,
//! Go's time layout, a tabwriter, and the Go-template subset people pass to
//! `--format` (`{{.Field.Sub}}`, `{{json .}}`, `{{index .X 0}}`, `{{join .X ","}}`,
//! `{{upper .X}}`, `{{lower .X}}`, a leading `table`, `\t`).

use std::fmt::Write as _;

use serde_json::Value;

/// go-units `HumanSizeWithPrecision(size, 3)`: decimal units, 3 significant digits.
pub fn human_size(bytes: u64) -> String {
    human_size_prec(bytes, 3)
}

/// go-units `HumanSizeWithPrecision(size, digits)`.
pub fn human_size_prec(bytes: u64, digits: i32) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    #[allow(clippy::cast_precision_loss)]
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{}{}", g(v, digits), UNITS[i])
}

/// `%.{digits}g` for 0 <= v < 1000.
fn g(v: f64, digits: i32) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let want = digits;
    #[allow(clippy::cast_possible_truncation)]
    let digits = (v.log10().floor() as i32 + 1).max(1);
    let decimals = usize::try_from((want - digits).max(0)).unwrap_or(0);
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// go-units `HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let minutes = secs / 60;
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    let hours = ((secs as f64) / 3600.0 + 0.5) as i64;
    if secs < 1 {
        "Less than a second".into()
    } else if secs == 1 {
        "1 second".into()
    } else if secs < 60 {
        format!("{secs} seconds")
    } else if minutes == 1 {
        "About a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", secs / 3600 / 24 / 365)
    }
}

/// "5 days ago" for a Unix time.
pub fn since(created: i64) -> String {
    let now = rbuild_image::time::now().0;
    format!("{} ago", human_duration(now - created))
}

/// Go's `time.Time.String()` layout in UTC: `2006-01-02 15:04:05 +0000 UTC`.
pub fn go_time(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = rbuild_image::time::utc_parts(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} +0000 UTC")
}

/// Go's tabwriter as docker sets it up (minwidth 10, padding 3): cells separated by
/// `\t`, the last cell of a line not padded.
pub fn tabwrite(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    let cols = lines.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for l in &lines {
        for (i, c) in l.iter().enumerate().take(l.len().saturating_sub(1)) {
            widths[i] = widths[i].max(c.chars().count() + 3).max(10);
        }
    }
    let mut out = String::new();
    for l in &lines {
        for (i, c) in l.iter().enumerate() {
            if i + 1 < l.len() {
                let _ = write!(out, "{c:<w$}", w = widths[i]);
            } else {
                out.push_str(c);
            }
        }
        out.push('\n');
    }
    out
}

/// Go's `json.Marshal` of a value: compact, with `<`, `>`, `&` escaped.
pub fn go_json(v: &Value) -> String {
    serde_json::to_string(v)
        .expect("a Value always serializes")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Go's `%v` of a value.
pub fn go_print(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(go_print).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            format!(
                "map[{}]",
                keys.iter()
                    .map(|k| format!("{k}:{}", go_print(&m[*k])))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        }
        other => other.to_string(),
    }
}

/// A parsed `--format` template.
#[derive(Debug, Clone)]
pub struct Template {
    /// Starts with `table`: print a header row and align columns.
    pub table: bool,
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Action(Vec<Arg>),
}

#[derive(Debug, Clone)]
enum Arg {
    Func(String),
    Path(Vec<String>),
    Str(String),
    Num(i64),
}

impl Template {
    /// Parses a format string; errors name what is wrong.
    pub fn parse(format: &str) -> Result<Self, String> {
        let mut f = format.replace("\\t", "\t").replace("\\n", "\n");
        let mut table = false;
        if let Some(rest) = f.strip_prefix("table") {
            table = true;
            f = rest.trim_start_matches(' ').to_owned();
        }
        let mut parts = Vec::new();
        let mut rest = f.as_str();
        while let Some(i) = rest.find("{{") {
            if i > 0 {
                parts.push(Part::Text(rest[..i].to_owned()));
            }
            let after = &rest[i + 2..];
            let j = after
                .find("}}")
                .ok_or_else(|| format!("template: unclosed action in {format:?}"))?;
            let action = after[..j]
                .trim()
                .trim_start_matches('-')
                .trim_end_matches('-')
                .trim();
            parts.push(Part::Action(
                parse_action(action).map_err(|e| format!("template: {e} in {{{{{action}}}}}"))?,
            ));
            rest = &after[j + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { table, parts })
    }

    /// Renders against `v`.
    pub fn render(&self, v: &Value) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Action(args) => out.push_str(&eval(args, v)?),
            }
        }
        Ok(out)
    }
}

fn parse_action(a: &str) -> Result<Vec<Arg>, String> {
    let mut args = Vec::new();
    let mut chars = a.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('t') => s.push('\t'),
                        Some('n') => s.push('\n'),
                        Some(o) => s.push(o),
                        None => return Err("unterminated string".into()),
                    },
                    Some(o) => s.push(o),
                    None => return Err("unterminated string".into()),
                }
            }
            args.push(Arg::Str(s));
            continue;
        }
        let mut word = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            word.push(c);
            chars.next();
        }
        if let Some(path) = word.strip_prefix('.') {
            args.push(Arg::Path(
                path.split('.')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ));
        } else if let Ok(n) = word.parse::<i64>() {
            args.push(Arg::Num(n));
        } else if matches!(
            word.as_str(),
            "json" | "index" | "join" | "upper" | "lower" | "println" | "len"
        ) {
            args.push(Arg::Func(word));
        } else {
            return Err(format!("function {word:?} not defined"));
        }
    }
    if args.is_empty() {
        return Err("empty action".into());
    }
    Ok(args)
}

fn lookup(path: &[String], v: &Value) -> Result<Value, String> {
    let mut cur = v;
    for k in path {
        match cur {
            Value::Object(m) => match m.get(k) {
                Some(x) => cur = x,
                None => return Err(format!("can't evaluate field {k}")),
            },
            Value::Null => return Ok(Value::Null),
            _ => return Err(format!("can't evaluate field {k}")),
        }
    }
    Ok(cur.clone())
}

fn value(a: &Arg, v: &Value) -> Result<Value, String> {
    match a {
        Arg::Path(p) => lookup(p, v),
        Arg::Str(s) => Ok(Value::String(s.clone())),
        Arg::Num(n) => Ok(Value::from(*n)),
        Arg::Func(f) => Err(format!("{f} needs arguments")),
    }
}

#[allow(clippy::many_single_char_names)]
fn eval(args: &[Arg], v: &Value) -> Result<String, String> {
    let Arg::Func(f) = &args[0] else {
        if args.len() != 1 {
            return Err("too many arguments".into());
        }
        return Ok(go_print(&value(&args[0], v)?));
    };
    let vals: Vec<Value> = args[1..]
        .iter()
        .map(|a| value(a, v))
        .collect::<Result<_, _>>()?;
    let one = || {
        vals.first()
            .cloned()
            .ok_or_else(|| format!("{f}: missing argument"))
    };
    Ok(match f.as_str() {
        "json" => go_json(&one()?),
        "println" => format!(
            "{}\n",
            vals.iter().map(go_print).collect::<Vec<_>>().join(" ")
        ),
        "upper" => go_print(&one()?).to_uppercase(),
        "lower" => go_print(&one()?).to_lowercase(),
        "len" => match one()? {
            Value::Array(a) => a.len().to_string(),
            Value::Object(m) => m.len().to_string(),
            Value::String(s) => s.len().to_string(),
            _ => return Err("len of a scalar".into()),
        },
        "join" => {
            let sep = vals.get(1).map(go_print).unwrap_or_default();
            match one()? {
                Value::Array(a) => a.iter().map(go_print).collect::<Vec<_>>().join(&sep),
                Value::Null => String::new(),
                other => go_print(&other),
            }
        }
        "index" => {
            let mut cur = one()?;
            for k in &vals[1..] {
                cur = match (&cur, k) {
                    (Value::Array(a), Value::Number(n)) => {
                        let i = n
                            .as_u64()
                            .and_then(|i| usize::try_from(i).ok())
                            .ok_or("index out of range")?;
                        a.get(i)
                            .cloned()
                            .ok_or_else(|| format!("index out of range: {i}"))?
                    }
                    (Value::Object(m), Value::String(s)) => {
                        m.get(s).cloned().unwrap_or(Value::Null)
                    }
                    _ => return Err("can't index".into()),
                };
            }
            go_print(&cur)
        }
        _ => unreachable!("parse_action accepts only known functions"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(100), "100B");
        assert_eq!(human_size(4_261_888), "4.26MB");
        assert_eq!(human_size(1_000_000), "1MB");
        assert_eq!(human_size(12_345), "12.3kB");
        assert_eq!(human_size_prec(1_984_123, 4), "1.984MB");
        assert_eq!(human_duration(5 * 86_400), "5 days");
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(90), "About a minute");
    }

    #[test]
    fn templates() {
        let v = serde_json::json!({"ID": "abc", "Repository": "busybox", "List": ["a", "b"], "M": {"k": "v"}});
        let t = Template::parse(
            "{{.ID}}: {{.Repository}}\\t{{join .List \",\"}} {{index .List 1}} {{json .M}} {{.M}}",
        )
        .unwrap();
        assert_eq!(
            t.render(&v).unwrap(),
            "abc: busybox\ta,b b {\"k\":\"v\"} map[k:v]"
        );
        assert!(Template::parse("{{.ID").is_err());
        assert!(Template::parse("{{nope .ID}}").is_err());
        assert!(Template::parse("{{.Nope}}").unwrap().render(&v).is_err());
        assert!(Template::parse("table {{.ID}}").unwrap().table);
    }

    #[test]
    fn tabwriter_pads_like_go() {
        assert_eq!(
            tabwrite("A\tBB\tC\nlonger-cell\tx\ty\n"),
            "A             BB        C\nlonger-cell   x         y\n"
        );
    }
}

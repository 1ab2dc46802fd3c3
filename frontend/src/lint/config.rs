//! `BuildKit`'s check options (`linter.ParseLintOptions`, `WithMergedConfig`,
//! `WithMergedConfigFromComments`) and its `ParseDirective("check", ...)`.

use std::collections::BTreeSet;

use rbuild_parser::go_quote;

use super::RuleInfo;

/// Which checks run and whether they fail the build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    pub skip_all: bool,
    pub skip: BTreeSet<String>,
    pub experimental_all: bool,
    pub experimental: BTreeSet<String>,
    /// `error=true`: any warning fails the build.
    pub error: bool,
}

impl CheckConfig {
    /// Parses `skip=A,B;error=true;experimental=all` (`ParseLintOptions`): at most
    /// three `;`-separated options; values trimmed.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let mut cfg = Self::default();
        if s.is_empty() {
            return Ok(cfg);
        }
        for part in s.splitn(3, ';') {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!("invalid check option {}", go_quote(part)));
            };
            let list = |v: &str| -> BTreeSet<String> {
                v.trim().split(',').map(|r| r.trim().to_owned()).collect()
            };
            match k.trim() {
                "skip" => {
                    if v.trim() == "all" {
                        cfg.skip_all = true;
                    } else {
                        cfg.skip = list(v);
                    }
                }
                "experimental" => {
                    if v.trim() == "all" {
                        cfg.experimental_all = true;
                    } else {
                        cfg.experimental = list(v);
                    }
                }
                "error" => {
                    let v = v.trim();
                    cfg.error = match v {
                        "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
                        "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
                        _ => {
                            return Err(format!(
                                "failed to parse check option {}: strconv.ParseBool: parsing {}: invalid syntax",
                                go_quote(part),
                                go_quote(v)
                            ));
                        }
                    };
                }
                other => return Err(format!("invalid check option {}", go_quote(other))),
            }
        }
        Ok(cfg)
    }

    /// `WithMergedConfig`: `other`'s skips and experimental rules added to these.
    #[must_use]
    pub fn merged(&self, other: &Self) -> Self {
        let mut c = self.clone();
        c.experimental_all |= other.experimental_all;
        c.experimental.extend(other.experimental.iter().cloned());
        c.skip_all |= other.skip_all;
        c.skip.extend(other.skip.iter().cloned());
        c
    }

    /// `WithMergedConfigFromComments`: the first `check=` among an instruction's
    /// comments (its value cut at the first space) merged in; a bad one ignored.
    #[must_use]
    pub fn with_comments(&self, comments: &[String]) -> Self {
        for c in comments {
            let Some((name, value)) = directive_kv(c) else {
                continue;
            };
            if name != "check" {
                continue;
            }
            let v = value.split(' ').next().unwrap_or_default();
            return match Self::parse(v) {
                Ok(other) => self.merged(&other),
                Err(_) => self.clone(),
            };
        }
        self.clone()
    }

    /// Whether `rule` reports under this configuration (`Linter.Run`).
    pub fn enabled(&self, rule: &RuleInfo) -> bool {
        if rule.experimental {
            self.experimental_all || self.experimental.contains(rule.name)
        } else {
            !(self.skip_all || self.skip.contains(rule.name))
        }
    }
}

/// `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` on a comment's text (after the `#`
/// and leading space): the lowercased name and the value.
pub(crate) fn directive_kv(line: &str) -> Option<(String, &str)> {
    let name_len = line
        .char_indices()
        .find(|(_, c)| !c.is_ascii_alphanumeric())
        .map_or(line.len(), |(i, _)| i);
    let name = &line[..name_len];
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = line[name_len..].trim_start().strip_prefix('=')?.trim();
    (!value.is_empty()).then(|| (name.to_ascii_lowercase(), value))
}

/// Whether a line (leading whitespace removed) is a parser directive
/// (`# syntax|escape|check = value`).
pub(crate) fn is_directive_line(line: &str) -> bool {
    line.strip_prefix('#')
        .and_then(|rest| directive_kv(rest.trim_start()))
        .is_some_and(|(n, _)| matches!(n.as_str(), "syntax" | "escape" | "check"))
}

/// `BuildKit`'s `ParseDirective("check", dt)`: after a BOM and a `#!` line, the
/// leading lines that start with `#` and hold a known directive; the value of `check`.
pub fn check_directive(src: &str) -> Option<String> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let mut lines = src.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut first = lines.next();
    if first.is_some_and(|l| l.starts_with("#!")) {
        first = lines.next();
    }
    let mut seen = BTreeSet::new();
    for line in first.into_iter().chain(lines) {
        let rest = line.strip_prefix('#')?;
        let (name, value) = directive_kv(rest.trim_start())?;
        if !matches!(name.as_str(), "syntax" | "escape" | "check") {
            return None;
        }
        if !seen.insert(name.clone()) {
            return None;
        }
        if name == "check" {
            return Some(value.to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let c = CheckConfig::parse("skip=A, B;error=true").unwrap();
        assert!(c.error && c.skip.contains("A") && c.skip.contains("B"));
        assert!(CheckConfig::parse("skip=all").unwrap().skip_all);
        assert_eq!(
            CheckConfig::parse("bogus=1").unwrap_err(),
            "invalid check option \"bogus\""
        );
        assert_eq!(
            CheckConfig::parse("skip").unwrap_err(),
            "invalid check option \"skip\""
        );
        assert!(CheckConfig::parse("error=maybe").is_err());
    }

    #[test]
    fn directive() {
        assert_eq!(
            check_directive("#!/bin/x\n# syntax=a\n#check=skip=all\nFROM x").as_deref(),
            Some("skip=all")
        );
        assert_eq!(check_directive("FROM x\n# check=skip=all"), None);
        assert_eq!(check_directive("\n# check=skip=all"), None);
        assert_eq!(check_directive(" # check=skip=all"), None);
    }
}

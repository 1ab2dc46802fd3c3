//! `import -c`: one Dockerfile instruction applied to an image config.
//!
//! A small local parser for the instructions `docker import --change` accepts. It is
//! kept behind the one function [`apply_change`] so it can be switched to
//! rbuild-parser later.

use rbuild_image::ContainerConfig;
use rbuild_oci::Empty;

/// Applies one instruction (`CMD ["sh"]`, `ENV A=b`, `EXPOSE 80/tcp`, ...) to `config`.
pub fn apply_change(config: &mut ContainerConfig, instruction: &str) -> Result<(), String> {
    let text = instruction.trim();
    let (kw, rest) = match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], text[i..].trim()),
        None => (text, ""),
    };
    let kw_up = kw.to_ascii_uppercase();
    let need = |what: &str| -> Result<(), String> {
        if rest.is_empty() {
            Err(format!("{kw_up} requires {what}"))
        } else {
            Ok(())
        }
    };
    match kw_up.as_str() {
        "CMD" => {
            need("at least one argument")?;
            config.cmd = Some(command(rest));
        }
        "ENTRYPOINT" => {
            need("at least one argument")?;
            config.entrypoint = Some(command(rest));
        }
        "ENV" => {
            need("at least one argument")?;
            let pairs = key_values(rest, "ENV")?;
            let env = &mut config.env;
            for (k, v) in pairs {
                let entry = format!("{k}={v}");
                match env
                    .iter_mut()
                    .find(|e| e.split_once('=').map_or(e.as_str(), |(a, _)| a) == k)
                {
                    Some(e) => *e = entry,
                    None => env.push(entry),
                }
            }
        }
        "LABEL" => {
            need("at least one argument")?;
            let pairs = key_values(rest, "LABEL")?;
            let labels = &mut config.labels;
            for (k, v) in pairs {
                labels.insert(k, v);
            }
        }
        "EXPOSE" => {
            need("at least one argument")?;
            let ports = &mut config.exposed_ports;
            for p in words(rest)? {
                let (port, proto) = p.split_once('/').unwrap_or((&p, "tcp"));
                let proto = proto.to_ascii_lowercase();
                if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                    return Err(format!("invalid proto: {proto}"));
                }
                let (lo, hi) = port.split_once('-').unwrap_or((port, port));
                let (lo, hi): (u16, u16) = match (lo.parse(), hi.parse()) {
                    (Ok(a), Ok(b)) if a <= b => (a, b),
                    _ => return Err(format!("invalid containerPort: {port}")),
                };
                for n in lo..=hi {
                    ports.insert(format!("{n}/{proto}"), Empty {});
                }
            }
        }
        "USER" => {
            need("exactly one argument")?;
            rest.clone_into(&mut config.user);
        }
        "VOLUME" => {
            need("at least one argument")?;
            let list = if rest.starts_with('[') {
                json_array(rest).ok_or("VOLUME: invalid JSON array")?
            } else {
                words(rest)?
            };
            let vols = &mut config.volumes;
            for v in list {
                if v.is_empty() {
                    return Err("VOLUME specified can not be an empty string".into());
                }
                vols.insert(v, Empty {});
            }
        }
        "WORKDIR" => {
            need("exactly one argument")?;
            let cur = config.working_dir.clone();
            config.working_dir = if rest.starts_with('/') || cur.is_empty() {
                if rest.starts_with('/') {
                    rest.to_owned()
                } else {
                    format!("/{rest}")
                }
            } else {
                format!("{}/{rest}", cur.trim_end_matches('/'))
            };
        }
        "STOPSIGNAL" => {
            need("exactly one argument")?;
            rest.clone_into(&mut config.stop_signal);
        }
        "ONBUILD" => {
            need("an instruction")?;
            config.on_build.push(rest.to_owned());
        }
        "" => return Err("empty change instruction".into()),
        _ => {
            return Err(format!(
                "{kw} is not a valid change command (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR)"
            ));
        }
    }
    Ok(())
}

fn json_array(s: &str) -> Option<Vec<String>> {
    serde_json::from_str::<Vec<String>>(s).ok()
}

/// Exec form when it is a JSON array of strings, else `/bin/sh -c TEXT`.
fn command(rest: &str) -> Vec<String> {
    if rest.starts_with('[') {
        if let Some(v) = json_array(rest) {
            return v;
        }
    }
    vec!["/bin/sh".into(), "-c".into(), rest.into()]
}

/// Splits on unquoted whitespace, removing quotes and backslash escapes.
fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (_, c) => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unmatched quote in {s:?}"));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `K=V K2="v 2"` or the legacy `K V with spaces`.
fn key_values(rest: &str, what: &str) -> Result<Vec<(String, String)>, String> {
    let first = rest.split_whitespace().next().unwrap_or("");
    if !first.contains('=') {
        let (k, v) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("{what} must have two arguments"))?;
        let v = words(v.trim())?.join(" ");
        return Ok(vec![(k.to_owned(), v)]);
    }
    words(rest)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err(format!("{what} names can not be blank")),
            Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
            None => Err(format!(
                "{what}: syntax error - can't find = in {w:?}. Must be of the form: name=value"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instruction() {
        let mut c = ContainerConfig::default();
        apply_change(&mut c, r#"CMD ["sh", "-c", "echo hi"]"#).unwrap();
        apply_change(&mut c, "ENTRYPOINT /entry.sh --flag").unwrap();
        apply_change(&mut c, r#"ENV A=1 B="two words""#).unwrap();
        apply_change(&mut c, "ENV A 3").unwrap();
        apply_change(&mut c, "EXPOSE 80 53/udp 8000-8001").unwrap();
        apply_change(&mut c, r#"LABEL version="1.0" maintainer=me"#).unwrap();
        apply_change(&mut c, "USER nobody").unwrap();
        apply_change(&mut c, r#"VOLUME ["/data", "/logs"]"#).unwrap();
        apply_change(&mut c, "WORKDIR /a").unwrap();
        apply_change(&mut c, "workdir b").unwrap();
        apply_change(&mut c, "STOPSIGNAL SIGTERM").unwrap();
        assert_eq!(c.cmd.unwrap(), vec!["sh", "-c", "echo hi"]);
        assert_eq!(
            c.entrypoint.unwrap(),
            vec!["/bin/sh", "-c", "/entry.sh --flag"]
        );
        assert_eq!(c.env, vec!["A=3", "B=two words"]);
        assert_eq!(
            c.exposed_ports.keys().cloned().collect::<Vec<_>>(),
            vec!["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]
        );
        assert_eq!(c.labels["version"], "1.0");
        assert_eq!(c.user, "nobody");
        assert_eq!(c.volumes.len(), 2);
        assert_eq!(c.working_dir, "/a/b");
        assert_eq!(c.stop_signal, "SIGTERM");
    }

    #[test]
    fn bad_changes_are_refused() {
        let mut c = ContainerConfig::default();
        assert!(apply_change(&mut c, "RUN echo").is_err());
        assert!(apply_change(&mut c, "EXPOSE abc").is_err());
        assert!(apply_change(&mut c, "CMD").is_err());
        assert!(apply_change(&mut c, "ENV =x").is_err());
    }
}

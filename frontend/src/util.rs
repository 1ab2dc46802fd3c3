//! Small pure helpers: Go-compatible formatting (for history texts), path
//! cleaning, and the value parsers of EXPOSE, STOPSIGNAL, `--chmod`, `--chown`
//! and tmpfs sizes.

use std::fmt::Write as _;

pub(crate) use rbuild_oci::path::clean;
use rbuild_ops::{Chmod, Chown, UserRef};
use rbuild_parser::go_quote;

/// Go's `fmt.Sprintf("%q", []string{...})`: `["a" "b"]`.
pub(crate) fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's `time.Duration.String()`.
pub(crate) fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_owned();
    }
    let neg = nanos < 0;
    let u = nanos.unsigned_abs();
    let sign = if neg { "-" } else { "" };
    if u < 1_000_000_000 {
        // Sub-second: ns, µs or ms with a fraction.
        let (unit, div) = if u < 1_000 {
            ("ns", 1)
        } else if u < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", fraction(u, div));
    }
    let mut out = String::from(sign);
    let secs_total = u / 1_000_000_000;
    let h = secs_total / 3600;
    let m = (secs_total % 3600) / 60;
    let s_nanos = u % 60_000_000_000;
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    let _ = write!(out, "{}s", fraction(s_nanos, 1_000_000_000));
    out
}

/// `v / div` with the fraction's trailing zeros removed (`1.5`, `2`).
fn fraction(v: u64, div: u64) -> String {
    let whole = v / div;
    let rest = v % div;
    if rest == 0 {
        return whole.to_string();
    }
    let digits = div.to_string().len() - 1;
    let frac = format!("{rest:0digits$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// Go's `path.Join(a, b)`.
pub(crate) fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        return clean(b);
    }
    if b.is_empty() {
        return clean(a);
    }
    clean(&format!("{a}/{b}"))
}

/// `BuildKit`'s `pathRelativeToWorkingDir` on Linux: absolute or joined to the
/// working directory, cleaned, a trailing `/` (or `/.`) kept as a trailing `/`.
pub(crate) fn dest_path(workdir: &str, p: &str) -> String {
    let p = if p.is_empty() || p == "." { "./" } else { p };
    let joined = if p.starts_with('/') {
        clean(p)
    } else {
        join(if workdir.is_empty() { "/" } else { workdir }, p)
    };
    let keep = p.ends_with('/') || p.ends_with("/.") || p == ".";
    if keep && !joined.ends_with('/') {
        format!("{joined}/")
    } else {
        joined
    }
}

/// `EXPOSE` port specs (`BuildKit`'s `parsePortSpec`: `[ip:[hostPort]:]port[-end][/proto]`)
/// to `port/proto` keys.
pub(crate) fn parse_port_spec(raw: &str) -> Result<Vec<String>, String> {
    let parts: Vec<&str> = raw.split(':').collect();
    let n = parts.len();
    let (ip, host_port, container) = match n {
        1 => (String::new(), "", parts[0]),
        2 => (String::new(), parts[0], parts[1]),
        _ => (parts[..n - 2].join(":"), parts[n - 2], parts[n - 1]),
    };
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    if port.is_empty() {
        return Err(format!("no port specified: {container}<empty>"));
    }
    let proto = match proto.to_ascii_lowercase().as_str() {
        "" => "tcp".to_owned(),
        p @ ("tcp" | "udp" | "sctp") => p.to_owned(),
        p => return Err(format!("invalid proto: {p}")),
    };
    if !ip.is_empty() {
        let bare = ip.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("invalid IP address: {ip}"));
        }
    }
    let (start, end) = port_range(port).ok_or_else(|| format!("invalid containerPort: {port}"))?;
    if !host_port.is_empty() {
        let (hs, he) =
            port_range(host_port).ok_or_else(|| format!("invalid hostPort: {host_port}"))?;
        if end - start != he - hs && end != start {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {port} and {host_port}"
            ));
        }
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

fn port_range(s: &str) -> Option<(u16, u16)> {
    match s.split_once('-') {
        None => s.parse().ok().map(|p| (p, p)),
        Some((a, b)) => {
            let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then_some((a, b))
        }
    }
}

const SIGNALS: &[&str] = &[
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL",
    "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP",
    "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN", "RTMAX",
];

/// moby's `signal.ParseSignal`: a number, or a name with or without `SIG`.
pub(crate) fn valid_signal(s: &str) -> bool {
    if let Ok(n) = s.parse::<u32>() {
        return n > 0 && n <= 64;
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.contains(&name) {
        return true;
    }
    for base in ["RTMIN+", "RTMAX-"] {
        if let Some(n) = name.strip_prefix(base) {
            return n.parse::<u32>().is_ok_and(|n| (1..=15).contains(&n));
        }
    }
    false
}

/// `--chmod`: octal up to `07777`, or a symbolic mode (`u+x,g-w`).
pub(crate) fn parse_chmod(s: &str) -> Result<Chmod, String> {
    let non_octal = || {
        format!("invalid chmod parameter: '{s}'. it should be octal string and between 0 and 07777")
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return match u32::from_str_radix(s, 8) {
            Ok(v) if v <= 0o7777 => Ok(Chmod::Octal(v)),
            _ => Err(non_octal()),
        };
    }
    let clause_ok = |c: &str| {
        let who_end = c.find(|ch: char| !"ugoa".contains(ch)).unwrap_or(c.len());
        let rest = &c[who_end..];
        !rest.is_empty()
            && rest.starts_with(['+', '-', '='])
            && rest.chars().all(|ch| "+-=rwxXstugo".contains(ch))
    };
    if !s.is_empty() && s.split(',').all(clause_ok) {
        Ok(Chmod::Symbolic(s.to_owned()))
    } else {
        Err(non_octal())
    }
}

fn user_ref(s: &str) -> UserRef {
    s.parse::<u32>()
        .map_or_else(|_| UserRef::Name(s.to_owned()), UserRef::Id)
}

/// `user[:group]` (`--chown`, `USER` for WORKDIR's mkdir): numbers are ids,
/// anything else a name the worker looks up in the destination's passwd/group.
pub(crate) fn parse_chown(s: &str) -> Option<Chown> {
    if s.is_empty() {
        return None;
    }
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    Some(Chown {
        user: user_ref(u),
        group: g.filter(|g| !g.is_empty()).map(user_ref),
    })
}

/// docker's `units.RAMInBytes`: `64m`, `1g`, `1024`, `512kb` (binary units).
pub(crate) fn ram_in_bytes(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0_f64.powi(4),
        "p" => 1024.0_f64.powi(5),
        _ => return None,
    };
    let v = n * mult;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some(v as u64)
}

/// The stages `target` needs: itself and, transitively, every stage `edges`
/// names (its `FROM` stage, `COPY --from`, `RUN --mount=from`).
pub(crate) fn reachable(
    target: usize,
    edges: impl Fn(usize) -> Vec<usize>,
) -> std::collections::BTreeSet<usize> {
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = vec![target];
    while let Some(s) = stack.pop() {
        if seen.insert(s) {
            stack.extend(edges(s));
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(5_000_000_000), "5s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(0), "0s");
    }

    #[test]
    fn paths() {
        assert_eq!(clean("/a/../../b/./c/"), "/b/c");
        assert_eq!(clean("../x"), "../x");
        assert_eq!(dest_path("/w", "rel.txt"), "/w/rel.txt");
        assert_eq!(dest_path("/w", "./reldir/"), "/w/reldir/");
        assert_eq!(dest_path("/w", "."), "/w/");
        assert_eq!(dest_path("/", "/newdir/"), "/newdir/");
        assert_eq!(dest_path("", "x"), "/x");
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port_spec("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(parse_port_spec("53/UDP").unwrap(), vec!["53/udp"]);
        assert_eq!(
            parse_port_spec("8000-8001").unwrap(),
            vec!["8000/tcp", "8001/tcp"]
        );
        assert!(parse_port_spec("http").is_err());
        assert_eq!(
            parse_port_spec("127.0.0.1:8080:80").unwrap(),
            vec!["80/tcp"]
        );
        assert_eq!(parse_port_spec("8080:80/udp").unwrap(), vec!["80/udp"]);
        assert!(
            parse_port_spec("nohost:1:2")
                .unwrap_err()
                .contains("invalid IP")
        );
        assert!(parse_port_spec("9-8").is_err());
        assert!(parse_port_spec("80/xyz").is_err());
    }

    #[test]
    fn chmods() {
        assert_eq!(parse_chmod("755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(parse_chmod("0600").unwrap(), Chmod::Octal(0o600));
        assert!(parse_chmod("9").is_err());
        assert!(parse_chmod("17777").is_err());
        assert_eq!(
            parse_chmod("u+x,g-w").unwrap(),
            Chmod::Symbolic("u+x,g-w".into())
        );
        assert!(parse_chmod("bogus").is_err());
    }

    #[test]
    fn misc() {
        assert!(valid_signal("SIGTERM") && valid_signal("kill") && valid_signal("9"));
        assert!(!valid_signal("SIGBOGUS"));
        assert_eq!(ram_in_bytes("64m"), Some(64 << 20));
        assert_eq!(ram_in_bytes("1024"), Some(1024));
        assert_eq!(go_quote("a\"b\n"), "\"a\\\"b\\n\"");
        assert_eq!(
            go_quote_list(&["/bin/sh".into(), "-c".into()]),
            r#"["/bin/sh" "-c"]"#
        );
    }
}

//! The resource-limit options `rbuild build` and `rbuild run` share (docker's
//! names and units), `--step-timeout`, and their parsers.

use std::time::Duration;

use anyhow::{anyhow, bail};
use rbuild_sandbox::Limits;

/// `--memory`, `--memory-swap`, `--cpu-quota`, `--cpu-period`,
/// `--cpuset-cpus`, `--pids-limit`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct LimitArgs {
    /// Memory limit (`64m`, `1g`, bytes); needs root or a delegated cgroup
    #[arg(short = 'm', long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Memory plus swap limit (`-1`: unlimited swap; default: twice --memory)
    #[arg(
        long = "memory-swap",
        value_name = "SIZE",
        allow_hyphen_values = true,
        value_parser = parse_swap
    )]
    pub memory_swap: Option<i64>,
    /// CPU time per period, in microseconds (CFS quota)
    #[arg(long = "cpu-quota", value_name = "MICROSECONDS")]
    pub cpu_quota: Option<u64>,
    /// The CFS period, in microseconds (default 100000)
    #[arg(long = "cpu-period", value_name = "MICROSECONDS")]
    pub cpu_period: Option<u64>,
    /// CPUs allowed (`0-3`, `0,1`)
    #[arg(long = "cpuset-cpus", value_name = "CPUS")]
    pub cpuset_cpus: Option<String>,
    /// At most N processes at once (`-1` or `0`: unlimited, the default; for
    /// builds, the config file's `[build] pids-limit` when set)
    #[arg(long = "pids-limit", value_name = "N", allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
}

impl LimitArgs {
    /// The sandbox's limits, `pids_default` (the config file's) applying when
    /// `--pids-limit` is not given. Values that are wrong on their own are
    /// refused here, naming the option.
    pub fn limits(&self, pids_default: Option<u64>) -> anyhow::Result<Limits> {
        let pids = match self.pids_limit {
            Some(n) if n <= 0 => None,
            Some(n) => Some(n.unsigned_abs()),
            None => pids_default.filter(|n| *n > 0),
        };
        let limits = Limits {
            memory: self.memory,
            memory_swap: self.memory_swap,
            cpu_quota: self.cpu_quota,
            cpu_period: self.cpu_period,
            cpuset_cpus: self.cpuset_cpus.clone(),
            pids,
        };
        if self.memory_swap.is_some() && self.memory.is_none() {
            bail!("--memory-swap needs --memory too");
        }
        limits.validate().map_err(|e| {
            let flag = if e.starts_with("memory-swap") {
                "--memory-swap"
            } else if e.starts_with("memory") {
                "--memory"
            } else if e.starts_with("cpu period") {
                "--cpu-period"
            } else if e.starts_with("cpu quota") {
                "--cpu-quota"
            } else if e.starts_with("cpuset") {
                "--cpuset-cpus"
            } else {
                "--pids-limit"
            };
            anyhow!("{flag}: {e}")
        })?;
        Ok(limits)
    }
}

/// A size as docker takes it (`RAMInBytes`): a number with an optional
/// binary unit `k`, `m`, `g`, `t`, `p` (`kb`, `KiB`, ... too); `b` or none
/// for bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(end);
    let bad = || format!("{s:?} is not a size (like 64m, 1g or a number of bytes)");
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(bad());
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        _ => return Err(bad()),
    };
    let scale = 1u64 << shift;
    if let Some((whole, frac)) = num.split_once('.') {
        // `1.5g`: whole part exactly, the fraction to the byte (truncated).
        let whole: u64 = whole.parse().map_err(|_| bad())?;
        let frac = &frac[..frac.len().min(9)];
        let frac_n: u64 = frac.parse().map_err(|_| bad())?;
        let frac_bytes = u128::from(frac_n) * u128::from(scale)
            / 10u128.pow(u32::try_from(frac.len()).map_err(|_| bad())?);
        return whole
            .checked_mul(scale)
            .and_then(|w| w.checked_add(u64::try_from(frac_bytes).ok()?))
            .ok_or_else(|| format!("{s:?} is too large"));
    }
    num.parse::<u64>()
        .map_err(|_| bad())?
        .checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `--memory-swap`: a size, or `-1` for unlimited swap.
fn parse_swap(s: &str) -> Result<i64, String> {
    if s.trim() == "-1" {
        return Ok(-1);
    }
    let n = parse_size(s)?;
    i64::try_from(n).map_err(|_| format!("{s:?} is too large"))
}

/// A duration as Go's `time.ParseDuration` takes it (`2s`, `1m30s`, `500ms`,
/// `1.5h`); a plain number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("{s:?} is not a duration (like 30s, 1m30s, 500ms or 2h)");
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(n);
        let u = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(u);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(value * unit_secs).map_err(|_| bad())?;
        rest = next;
    }
    if total.is_zero() {
        return Err(format!("{s:?}: a timeout must be longer than zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_docker() {
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("100kb"), Ok(100 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("1.5g"), Ok(1536 << 20));
        for bad in ["", "m", "64x", "-1", "1.g", "1..5m", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_swap("-1"), Ok(-1));
        assert_eq!(parse_swap("128m"), Ok(128 << 20));
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        for bad in ["", "s", "2x", "2s3", "0s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pids_limit_flag_overrides_the_config_default() {
        let a = LimitArgs::default();
        assert_eq!(a.limits(Some(200)).unwrap().pids, Some(200));
        assert_eq!(a.limits(Some(0)).unwrap().pids, None);
        let a = LimitArgs {
            pids_limit: Some(-1),
            ..LimitArgs::default()
        };
        assert_eq!(a.limits(Some(200)).unwrap().pids, None);
        let a = LimitArgs {
            pids_limit: Some(50),
            ..LimitArgs::default()
        };
        assert_eq!(a.limits(Some(200)).unwrap().pids, Some(50));
        let a = LimitArgs {
            memory_swap: Some(1 << 30),
            ..LimitArgs::default()
        };
        assert!(a.limits(None).unwrap_err().to_string().contains("--memory"));
        let a = LimitArgs {
            memory: Some(1 << 20),
            ..LimitArgs::default()
        };
        let e = a.limits(None).unwrap_err().to_string();
        assert!(e.starts_with("--memory: "), "{e}");
    }
}

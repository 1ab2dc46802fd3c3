//! Runs a command in the sandbox over a root directory, or `true` N times.
//!
//!   sandbox-run ROOTFS CMD [ARGS...]        run once, exit with its status
//!   sandbox-run --bench N ROOTFS            run `true` N times, print the median
//!
//! Environment: `SANDBOX_NET=none`, `SANDBOX_USER=name`.

use std::time::Instant;

use rbuild_sandbox::{NetworkMode, Output, ProcessSpec, Rootfs, run};

fn spec(args: Vec<String>) -> ProcessSpec {
    let mut spec = ProcessSpec::new(args);
    if std::env::var("SANDBOX_NET").as_deref() == Ok("none") {
        spec.network = NetworkMode::None;
    }
    spec.user = std::env::var("SANDBOX_USER").unwrap_or_default();
    spec
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--bench") {
        let (Some(n), Some(root)) = (
            args.get(1).and_then(|n| n.parse::<usize>().ok()),
            args.get(2),
        ) else {
            eprintln!("usage: sandbox-run --bench N ROOTFS");
            std::process::exit(2);
        };
        let rootfs = Rootfs::Dir(root.into());
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let st = run(&rootfs, spec(vec!["true".into()])).unwrap_or_else(|e| {
                eprintln!("sandbox-run: {e}");
                std::process::exit(1)
            });
            times.push(t.elapsed());
            assert!(st.success(), "true failed: {st}");
        }
        times.sort();
        let total: std::time::Duration = times.iter().sum();
        println!(
            "runs={n} median_ms={:.3} min_ms={:.3} max_ms={:.3} mean_ms={:.3}",
            times[n / 2].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[n - 1].as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3 / f64::from(u32::try_from(n).unwrap_or(u32::MAX))
        );
        return;
    }
    if args.len() < 2 {
        eprintln!("usage: sandbox-run ROOTFS CMD [ARGS...] | --bench N ROOTFS");
        std::process::exit(2);
    }
    let mut s = spec(args[1..].to_vec());
    s.stdout = Output::Inherit;
    s.stderr = Output::Inherit;
    match run(&Rootfs::Dir(args[0].clone().into()), s) {
        Ok(st) => std::process::exit(st.code),
        Err(e) => {
            eprintln!("sandbox-run: {e}");
            std::process::exit(e.exit_code());
        }
    }
}

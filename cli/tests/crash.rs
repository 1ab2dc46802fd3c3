//! Crash safety: `rbuild load` of a large archive killed (SIGKILL) at random points
//! leaves a store that lists, and a new load succeeds.

mod common;

use std::io::Write;

use common::Env;

/// A rootfs of ~48 MiB: many small files and a few large incompressible ones.
fn big_rootfs(path: &std::path::Path) {
    let f = std::io::BufWriter::new(fs_err::File::create(path).unwrap());
    let mut b = tar::Builder::new(f);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[3]
            })
            .collect()
    };
    for i in 0..2000 {
        let data = format!("file {i}\n").repeat(50);
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("small/{:02}/f{i}", i % 20), data.as_bytes())
            .unwrap();
    }
    for i in 0..4 {
        let data = rnd(11 << 20);
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("big/blob{i}"), &data[..])
            .unwrap();
    }
    b.into_inner().unwrap().flush().unwrap();
}

#[test]
fn killed_loads_leave_a_working_store() {
    let src = Env::new();
    let rootfs = src.path("big-rootfs.tar");
    big_rootfs(&rootfs);
    let id = src
        .ok(&["import", rootfs.to_str().unwrap(), "big:1"])
        .trim()
        .to_owned();
    let archive = src.path("big.tar");
    src.ok(&["save", "-o", archive.to_str().unwrap(), "big:1"]);
    drop(fs_err::remove_file(&rootfs));

    // How long one load takes here, so the kills land across the whole load.
    let timing = Env::new();
    let t0 = std::time::Instant::now();
    timing.ok(&["load", "-i", archive.to_str().unwrap()]);
    let full = u32::try_from(t0.elapsed().as_millis())
        .unwrap_or(u32::MAX)
        .max(20);
    drop(timing);

    let env = Env::new();
    env.import_rootfs("small:1", "s");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        | 1;
    let mut killed_midway = 0;
    for round in 0..8 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let delay = u64::from(seed % full);
        let mut child = env
            .cmd(&["load", "-i", archive.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        println!("round {round}: killed after {delay} ms (finished before: {finished})");
        // The store still lists, whatever the kill interrupted.
        let list = env.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        assert!(list.contains("small:1\n"), "round {round}: {list}");
        if list.contains("big:1") {
            env.ok(&["rmi", "big:1"]);
        } else {
            killed_midway += 1;
        }
    }
    println!("{killed_midway} of 8 loads were interrupted before they committed");
    let out = env.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert_eq!(out, "Loaded image: big:1\n");
    assert_eq!(
        env.ok(&["images", "-q", "--no-trunc", "big"]),
        format!("{id}\n")
    );
    // The loaded image is intact: saving it again gives the same archive.
    let again = env.path("again.tar");
    env.ok(&["save", "-o", again.to_str().unwrap(), "big:1"]);
    assert!(
        fs_err::read(&again).unwrap() == fs_err::read(&archive).unwrap(),
        "re-saved archive differs"
    );
    // Staging left by the killed processes is gone after the next write.
    let leftovers: Vec<_> = std::fs::read_dir(env.root().join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "stale staging left behind: {leftovers:?}"
    );
}

//! `rbuild build` through the binary: the command's own checks (context,
//! Dockerfile, flags) and Dockerfile errors rendered with file, line and caret.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::Env;

fn write(env: &Env, rel: &str, text: &str) -> std::path::PathBuf {
    let p = env.path(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs `rbuild build ARGS` with `stdin` fed in; returns (exit code, stderr).
fn build(env: &Env, args: &[&str], stdin: &[u8]) -> (Option<i32>, String) {
    let mut child = env
        .cmd(&["build"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let o = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_dockerfile_syntax_error_names_file_and_line_and_exits_1() {
    let env = Env::new();
    write(
        &env,
        "ctx/Dockerfile",
        "FROM busybox\nRUN echo hi\nCOPY --bogus=1 a b\n",
    );
    let ctx = env.path("ctx");
    let (code, err) = build(&env, &[ctx.to_str().unwrap()], b"");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Dockerfile:3"), "{err}");
    assert!(err.contains("COPY --bogus=1 a b"), "{err}");
    assert!(err.contains('^'), "{err}");
}

#[test]
fn dockerfile_from_stdin_and_outside_the_context() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("ctx")).unwrap();
    let ctx = env.path("ctx");
    // -f - : the name shown is "-".
    let (code, err) = build(
        &env,
        &["-f", "-", ctx.to_str().unwrap()],
        b"FROM busybox\nFROBNICATE x\n",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("FROBNICATE"), "{err}");
    // -f outside the context: its own name is shown.
    let df = write(
        &env,
        "elsewhere/My.Dockerfile",
        "FROM busybox\nFROBNICATE y\n",
    );
    let (code, err) = build(
        &env,
        &["-f", df.to_str().unwrap(), ctx.to_str().unwrap()],
        b"",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("My.Dockerfile:2"), "{err}");
}

#[test]
fn context_tar_on_stdin_is_read() {
    let env = Env::new();
    // A gzipped tar holding a Dockerfile with an error on line 2.
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let body = b"FROM busybox\nFROBNICATE z\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "Dockerfile", &body[..]).unwrap();
    let gz = tar.into_inner().unwrap().finish().unwrap();
    let (code, err) = build(&env, &["-"], &gz);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("Dockerfile:2") && err.contains("FROBNICATE z"),
        "{err}"
    );
    // A plain Dockerfile on stdin (no tar): an empty context, like docker.
    let (code, err) = build(&env, &["-"], b"FROM busybox\nFROBNICATE w\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("FROBNICATE w"), "{err}");
}

#[test]
fn bad_input_is_a_one_line_error() {
    let env = Env::new();
    write(&env, "ctx/Dockerfile", "FROM busybox\n");
    let ctx = env.path("ctx");
    let ctx = ctx.to_str().unwrap();
    let missing = env.path("nope");
    for (args, needle) in [
        (vec![missing.to_str().unwrap()], "nope"),
        (vec!["-f", "/nonexistent/Dockerfile", ctx], "Dockerfile"),
        (vec!["-f", "-", "-"], "stdin"),
        (vec!["--output", "type=zip,dest=x", ctx], "zip"),
        (vec!["--output", "type=tar", ctx], "dest"),
        (vec!["--secret", "src=/x", ctx], "id="),
        (
            vec!["--secret", "id=s,src=/nonexistent/secret", ctx],
            "secret",
        ),
        (vec!["-t", "Bad Name", ctx], "Bad Name"),
        (vec!["--jobs", "0", ctx], "jobs"),
    ] {
        let (code, err) = build(&env, &args, b"");
        assert_ne!(code, Some(0), "{args:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

//! `rbuild build` end to end on the busybox base image (imported with `rbuild
//! import`): build, run the result, the cache, a failing step and its last good
//! state, exports and progress modes. Needs root (steps run in the sandbox over
//! overlay mounts); fails saying what is missing otherwise.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Output;

use common::Env;

struct B {
    env: Env,
}

impl B {
    fn new() -> Self {
        Self {
            env: common::build_env(),
        }
    }

    fn p(&self, rel: &str) -> String {
        self.env.path(rel).to_string_lossy().into_owned()
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.env.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn build(&self, args: &[&str]) -> Output {
        let mut a = vec!["build", "--progress", "plain"];
        a.extend_from_slice(args);
        self.env.run(&a)
    }

    fn build_ok(&self, args: &[&str]) -> (String, String) {
        let o = self.build(args);
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        );
        assert!(o.status.success(), "build {args:?} failed:\n{out}\n{err}");
        (out, err)
    }
}

/// Whether the plain progress shows the RUN's output line `step-ran` (not just
/// the instruction, which contains the words too).
fn step_ran(err: &str) -> bool {
    err.lines().any(|l| {
        l.starts_with('#')
            && l.split_once(' ')
                .is_some_and(|(_, rest)| rest == "step-ran")
    })
}

const HELLO: &str = "FROM busybox\nENV WHO=world\nCOPY name.txt /name.txt\nRUN echo \"hello $WHO from $(cat /name.txt)\" > /greeting && echo step-ran\nCMD [\"cat\", \"/greeting\"]\n";

#[test]
fn build_tag_and_run_the_image() {
    let b = B::new();
    b.write("ctx/Dockerfile", HELLO);
    b.write("ctx/name.txt", "ctx\n");
    let (out, err) = b.build_ok(&["-t", "hello", &b.p("ctx")]);
    assert!(out.starts_with("Successfully built "), "{out}");
    assert!(
        out.contains("Successfully tagged docker.io/library/hello:latest")
            || out.contains("Successfully tagged hello:latest"),
        "{out}"
    );
    assert!(err.contains("RUN echo"), "{err}");
    assert!(step_ran(&err), "{err}");
    assert!(err.contains(" DONE "), "{err}");
    let o = b.env.run(&["run", "--rm", "hello"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello world from ctx\n");
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn a_rebuild_is_cached_and_gives_the_same_id() {
    let b = B::new();
    b.write("ctx/Dockerfile", HELLO);
    b.write("ctx/name.txt", "ctx\n");
    let iid = b.p("iid");
    let (first, _) = b.build_ok(&["-q", "--iidfile", &iid, &b.p("ctx")]);
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), first.trim());
    assert!(first.trim().starts_with("sha256:"), "{first}");
    let (out, err) = b.build_ok(&[&b.p("ctx")]);
    assert!(err.contains("CACHED"), "{err}");
    assert!(!step_ran(&err), "the RUN ran again:\n{err}");
    let short: String = first.trim()["sha256:".len()..].chars().take(12).collect();
    assert!(out.contains(&short), "{out} vs {first}");
    // The image carries the time its last step was made, not the epoch.
    let o = b
        .env
        .run(&["inspect", "--format", "{{.Created}}", first.trim()]);
    let created = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && created.starts_with("20"), "{created}");
    // --no-cache runs it again.
    let (_, err) = b.build_ok(&["--no-cache", &b.p("ctx")]);
    assert!(step_ran(&err), "{err}");
}

#[test]
fn a_failing_step_reports_and_leaves_a_runnable_last_good_state() {
    let b = B::new();
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\nRUN echo good > /state\nRUN echo before-fail && \\\n    exit 3\n",
    );
    let o = b.build(&[&b.p("ctx")]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Dockerfile:3"), "{err}");
    assert!(err.contains("exit code: 3"), "{err}");
    assert!(err.contains("before-fail"), "{err}");
    let id = err
        .split("rbuild run -it ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no last good state in:\n{err}"));
    let o = b.env.run(&["run", "--rm", id, "cat", "/state"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "good\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn outputs_docker_archive_and_local_dir() {
    let b = B::new();
    b.write("ctx/Dockerfile", HELLO);
    b.write("ctx/name.txt", "ctx\n");
    let tar = b.p("out.tar");
    b.build_ok(&[
        "-t",
        "arch:1",
        "--output",
        &format!("type=docker,dest={tar}"),
        &b.p("ctx"),
    ]);
    let names = std::process::Command::new("tar")
        .args(["-tf", &tar])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&names.stdout);
    assert!(names.contains("manifest.json"), "{names}");
    let dir = b.p("outdir");
    b.build_ok(&["--output", &format!("type=local,dest={dir}"), &b.p("ctx")]);
    assert_eq!(
        std::fs::read_to_string(b.env.path("outdir/greeting")).unwrap(),
        "hello world from ctx\n"
    );
}

#[test]
fn json_progress_is_one_event_per_line() {
    let b = B::new();
    b.write("ctx/Dockerfile", "FROM busybox\nRUN echo json-line\n");
    let o = b.env.run(&["build", "--progress", "json", &b.p("ctx")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    let mut saw_log = false;
    for line in err.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v.get("event").is_some(), "{line}");
        saw_log |= v["event"] == "vertex_log" && v["line"] == "json-line";
    }
    assert!(saw_log, "{err}");
}

#[test]
fn add_of_an_http_url_checks_its_checksum() {
    use sha2::Digest as _;
    let b = B::new();
    let body = "remote content\n";
    let port = common::http::serve(body);
    let sum = format!("{:x}", sha2::Sha256::digest(body.as_bytes()));
    let url = format!("http://127.0.0.1:{port}/file.txt");
    b.write(
        "ctx/Dockerfile",
        &format!(
            "FROM busybox\nADD --checksum=sha256:{sum} {url} /r/\nADD {url} /plain.txt\n\
             RUN cat /r/file.txt /plain.txt > /both && stat -c %a /plain.txt >> /both\n\
             CMD [\"cat\", \"/both\"]\n"
        ),
    );
    b.build_ok(&["-t", "added", &b.p("ctx")]);
    let o = b.env.run(&["run", "--rm", "added"]);
    // BuildKit gives downloaded files mode 0600.
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "remote content\nremote content\n600\n"
    );
    // A wrong checksum fails the build and names the URL's digest mismatch.
    let bad = "0".repeat(64);
    b.write(
        "bad/Dockerfile",
        &format!("FROM busybox\nADD --checksum=sha256:{bad} {url} /r/\n"),
    );
    let o = b.build(&[&b.p("bad")]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("checksum") || err.contains("digest"), "{err}");
}

/// A python3 `http.server` over TLS in a child process; killed on drop.
struct TlsServer {
    child: std::process::Child,
    port: u16,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const TLS_SERVER: &str = "import http.server, ssl, sys, os\n\
os.chdir(sys.argv[1])\n\
srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n\
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
ctx.load_cert_chain(sys.argv[2], sys.argv[3])\n\
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)\n\
print(srv.server_address[1], flush=True)\n\
srv.serve_forever()\n";

/// A self-signed certificate for 127.0.0.1 in `dir` (c.pem, k.pem) and a TLS
/// server for the files in `dir/www`; fails without openssl/python3.
fn tls_server(dir: &std::path::Path) -> TlsServer {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            // webpki refuses a CA certificate as the server's own
            // (CaUsedAsEndEntity), which `req -x509` makes by default.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-days",
            "1",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot run: openssl could not make a certificate");
    let Ok(mut child) = Command::new("python3")
        .args(["-c", TLS_SERVER])
        .arg(dir.join("www"))
        .arg(dir.join("c.pem"))
        .arg(dir.join("k.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        panic!("cannot run: python3 is absent");
    };
    let mut line = String::new();
    let out = child.stdout.take().unwrap();
    let _ = std::io::BufReader::new(out).read_line(&mut line);
    let mut server = TlsServer { port: 0, child };
    let Ok(port) = line.trim().parse() else {
        panic!("cannot run: the python3 TLS server did not start");
    };
    server.port = port;
    server
}

#[test]
fn add_of_an_https_url_verifies_the_certificate() {
    use sha2::Digest as _;
    let b = B::new();
    let dir = b.env.path("tls");
    std::fs::create_dir_all(dir.join("www")).unwrap();
    let body = "secure content\n";
    std::fs::write(dir.join("www/file.txt"), body).unwrap();
    std::fs::write(dir.join("www/other.txt"), "other\n").unwrap();
    let server = tls_server(&dir);
    let sum = format!("{:x}", sha2::Sha256::digest(body.as_bytes()));
    let url = format!("https://127.0.0.1:{}/file.txt", server.port);
    let cert = dir.join("c.pem");

    // Without the certificate among the roots the build fails with one line
    // naming the URL and the certificate problem.
    b.write(
        "untrusted/Dockerfile",
        &format!(
            "FROM busybox\nADD https://127.0.0.1:{}/other.txt /o\n",
            server.port
        ),
    );
    let o = b
        .env
        .cmd(&["build", "--progress", "plain", &b.p("untrusted")])
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("{err}");
    assert!(
        err.lines().any(|l| l.contains("https://127.0.0.1:")
            && l.contains("/other.txt")
            && l.contains("certificate")),
        "{err}"
    );

    // Trusted through SSL_CERT_FILE: downloaded, checksum checked, also after a
    // redirect from plain http to https.
    let via = common::http::redirect(&url);
    b.write(
        "ctx/Dockerfile",
        &format!(
            "FROM busybox\nADD --checksum=sha256:{sum} {url} /r/\n\
             ADD http://127.0.0.1:{via}/moved /moved.txt\n\
             RUN cat /r/file.txt /moved.txt > /both && stat -c %a /r/file.txt >> /both\n\
             CMD [\"cat\", \"/both\"]\n"
        ),
    );
    let o = b
        .env
        .cmd(&["build", "--progress", "plain", "-t", "tls", &b.p("ctx")])
        .env("SSL_CERT_FILE", &cert)
        .env_remove("SSL_CERT_DIR")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = b.env.run(&["run", "--rm", "tls"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "secure content\nsecure content\n600\n"
    );

    // A wrong checksum over https still fails.
    let bad = "0".repeat(64);
    b.write(
        "bad/Dockerfile",
        &format!("FROM busybox\nADD --checksum=sha256:{bad} {url} /r/\n"),
    );
    let o = b
        .env
        .cmd(&["build", "--progress", "plain", &b.p("bad")])
        .env("SSL_CERT_FILE", &cert)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("digest mismatch"), "{err}");
}

#[test]
fn add_chown_owns_what_an_archive_extracts() {
    // BuildKit (v0.23 on) applies `ADD --chown` to the entries it extracts from
    // a local archive, not only to the destination directory.
    let b = B::new();
    let ctx = b.env.path("ctx");
    b.write("ctx/tree/sub/f.txt", "f\n");
    b.write("ctx/tree/g.txt", "g\n");
    let st = std::process::Command::new("tar")
        .args(["--owner=42", "--group=43", "-czf"])
        .arg(ctx.join("t.tar.gz"))
        .arg("-C")
        .arg(ctx.join("tree"))
        .args(["sub", "g.txt"])
        .status()
        .unwrap();
    assert!(st.success());
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\n\
         ADD --chown=1234:5678 t.tar.gz /owned/\n\
         ADD t.tar.gz /kept/\n\
         RUN stat -c '%u:%g %n' /owned /owned/sub /owned/sub/f.txt /owned/g.txt \
         /kept/sub/f.txt > /owners\n\
         CMD [\"cat\", \"/owners\"]\n",
    );
    b.build_ok(&["-t", "owned", &b.p("ctx")]);
    let out = b.env.ok(&["run", "--rm", "owned"]);
    assert_eq!(
        out,
        "1234:5678 /owned\n1234:5678 /owned/sub\n1234:5678 /owned/sub/f.txt\n\
         1234:5678 /owned/g.txt\n42:43 /kept/sub/f.txt\n"
    );
}

#[test]
fn copy_link_reads_nothing_of_the_stage_it_lands_on() {
    // `COPY --link` copies onto an empty tree merged onto the stage (BuildKit's
    // MergeOp): it follows no symlink of the stage, and the directories it
    // creates on the way keep their default metadata over the stage's.
    let b = B::new();
    b.write("ctx/f.txt", "f\n");
    b.write("ctx/g.txt", "g\n");
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\n\
         RUN mkdir -m 700 /app && chown 1000:1000 /app && mkdir /real && ln -s /real /via\n\
         COPY --link f.txt /app/\n\
         COPY --link g.txt /via/g.txt\n\
         COPY f.txt /plain/\n\
         RUN stat -c '%a %u %n' /app /app/f.txt > /out && \
         (test -d /via && test ! -L /via && echo via-is-a-dir) >> /out && \
         (test -e /real/g.txt || echo real-untouched) >> /out && cat /via/g.txt >> /out\n\
         CMD [\"cat\", \"/out\"]\n",
    );
    let (_, err) = b.build_ok(&["-t", "linked", &b.p("ctx")]);
    assert!(err.contains("COPY --link f.txt /app/"), "{err}");
    let out = b.env.ok(&["run", "--rm", "linked"]);
    assert_eq!(
        out,
        "755 0 /app\n644 0 /app/f.txt\nvia-is-a-dir\nreal-untouched\ng\n"
    );
    // One layer per COPY --link, as for any COPY.
    let v: serde_json::Value = serde_json::from_str(&b.env.ok(&["inspect", "linked"])).unwrap();
    let base: serde_json::Value = serde_json::from_str(&b.env.ok(&["inspect", "busybox"])).unwrap();
    let n = |v: &serde_json::Value| v[0]["RootFS"]["Layers"].as_array().unwrap().len();
    assert_eq!(n(&v), n(&base) + 5, "{v}");
}

#[test]
fn copy_refuses_to_put_a_directory_on_a_file_or_a_file_on_a_directory() {
    // As BuildKit's copy (fsutil): no silent replacement either way.
    let b = B::new();
    b.write("ctx/asdir/y", "y\n");
    b.write("ctx/tree/x", "file\n");
    for (df, want) in [
        (
            "FROM busybox\nRUN echo f > /asdir\nCOPY asdir /asdir\n",
            "cannot copy to non-directory: /asdir",
        ),
        (
            "FROM busybox\nRUN mkdir -p /t/x/inner\nCOPY tree /t\n",
            "cannot replace to directory /t/x with file",
        ),
    ] {
        b.write("ctx/Dockerfile", df);
        let o = b.build(&[&b.p("ctx")]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{df}\n{err}");
        assert!(err.contains(want), "{df}: want {want:?} in\n{err}");
    }
    // A file onto a file, or a directory into a directory, is fine.
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\nRUN mkdir -p /t && echo old > /t/x\nCOPY tree /t\nRUN cat /t/x\n",
    );
    b.build_ok(&[&b.p("ctx")]);
}

#[test]
fn workdir_leaves_an_existing_directory_as_it_is() {
    // WORKDIR is BuildKit's `mkdir -p`: a directory the image already has keeps
    // its owner and mode.
    let b = B::new();
    b.write(
        "ctx/Dockerfile",
        "FROM busybox\n\
         RUN mkdir -p /data/keep && chown 1000:1000 /data/keep && chmod 700 /data/keep\n\
         WORKDIR /data/keep\n\
         WORKDIR /data/new\n\
         RUN stat -c '%a %u:%g %n' /data/keep /data/new > /out\n\
         CMD [\"cat\", \"/out\"]\n",
    );
    b.build_ok(&["-t", "wd", &b.p("ctx")]);
    let out = b.env.ok(&["run", "--rm", "wd"]);
    assert_eq!(out, "700 1000:1000 /data/keep\n755 0:0 /data/new\n");
}

#[test]
fn run_leaves_no_mount_stubs_in_the_snapshot() {
    // BuildKit's mount-stub cleaner: the empty files made as mount points
    // (/etc/hosts, /etc/hostname, /etc/resolv.conf, file targets of bind and
    // secret mounts) go when they did not exist before the step; every directory
    // made for a mount stays as an empty 0755 0:0 directory, whatever USER is.
    let b = B::new();
    b.write("ctx/a.txt", "bound\n");
    b.write("ctx/secret.txt", "s3cr3t\n");
    b.write(
        "ctx/Dockerfile",
        "FROM busybox AS s\n\
         RUN mkdir /keep && touch /keep/existing && chmod 600 /keep/existing && mkdir -m 700 /keepdir\n\
         USER 1000:1000\n\
         RUN --mount=type=cache,target=/cache/deep,uid=1000 \
             --mount=type=bind,source=a.txt,target=/mnt/sub/a.txt \
             --mount=type=bind,source=a.txt,target=/keep/existing \
             --mount=type=tmpfs,target=/keepdir \
             --mount=type=secret,id=s,uid=1000 \
             cat /mnt/sub/a.txt /run/secrets/s /keep/existing /etc/hosts > /dev/null\n\
         USER root\n\
         RUN echo done > /done\n\
         FROM scratch\n\
         COPY --from=s / /all/\n",
    );
    let out = b.p("out");
    b.build_ok(&[
        "--secret",
        &format!("id=s,src={}", b.p("ctx/secret.txt")),
        "--output",
        &format!("type=local,dest={out}"),
        &b.p("ctx"),
    ]);
    let all = b.env.path("out/all");
    assert_eq!(std::fs::read_to_string(all.join("done")).unwrap(), "done\n");
    for stub in [
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "mnt/sub/a.txt",
        "run/secrets/s",
    ] {
        assert!(
            std::fs::symlink_metadata(all.join(stub)).is_err(),
            "mount stub /{stub} is in the image"
        );
    }
    let meta = |rel: &str| {
        let m = std::fs::symlink_metadata(all.join(rel))
            .unwrap_or_else(|e| panic!("/{rel} missing: {e}"));
        (m.is_dir(), m.mode() & 0o7777, m.uid(), m.gid())
    };
    for dir in [
        "proc",
        "sys",
        "dev",
        "cache",
        "cache/deep",
        "mnt",
        "mnt/sub",
        "run",
        "run/secrets",
    ] {
        assert_eq!(meta(dir), (true, 0o755, 0, 0), "/{dir}");
    }
    for leaf in ["proc", "sys", "dev", "cache/deep", "mnt/sub", "run/secrets"] {
        assert_eq!(
            std::fs::read_dir(all.join(leaf)).unwrap().count(),
            0,
            "/{leaf} should be empty"
        );
    }
    // Existing mount points keep their own metadata.
    assert_eq!(meta("keep/existing"), (false, 0o600, 0, 0));
    assert_eq!(meta("keepdir"), (true, 0o700, 0, 0));
    assert_eq!(
        std::fs::metadata(all.join("keep/existing")).unwrap().len(),
        0
    );
}

/// The files of `dir` (one level), each with its content.
fn files_in(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

/// The cache mount directories of the state root whose name starts with
/// `prefix`: (owner uid, gid, mode) of each.
fn cache_dirs(b: &B, prefix: &str) -> Vec<(u32, u32, u32)> {
    let mut out: Vec<(u32, u32, u32)> = std::fs::read_dir(b.env.root().join("cache-mounts"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(prefix) && e.path().is_dir()
        })
        .map(|e| {
            let m = e.metadata().unwrap();
            (m.uid(), m.gid(), m.mode() & 0o7777)
        })
        .collect();
    out.sort_unstable();
    out
}

#[test]
fn a_cache_mount_with_another_uid_gid_or_mode_is_another_cache() {
    // BuildKit keys a cache mount by its id and, when uid/gid/mode are given,
    // by the directory made with them (the mount's base): uid=1000 and
    // uid=2000 of one id are two caches, and neither is the id's plain one.
    let b = B::new();
    let run = |opts: &str, n: &str| {
        format!(
            "RUN --mount=type=cache,id=x,target=/c{opts} touch /c/by-{n} && ls /c > /l-{n} \
             && stat -c %u:%g:%a /c > /s-{n}\n"
        )
    };
    let dockerfile = |runs: &[(&str, &str)]| {
        let mut d = String::from("FROM busybox\nARG B\nRUN echo $B > /b\n");
        for (opts, n) in runs {
            d.push_str(&run(opts, n));
        }
        d.push_str("FROM scratch\nCOPY --from=0 /l-* /s-* /\n");
        d
    };
    b.write(
        "one/Dockerfile",
        &dockerfile(&[
            (",uid=1000", "1000"),
            (",uid=2000", "2000"),
            (",mode=0700", "0700"),
            ("", "plain"),
            (",uid=0", "uid0"),
            (",gid=0,uid=1000,mode=0755,sharing=locked", "1000-again"),
        ]),
    );
    b.build_ok(&[
        "--output",
        &format!("type=local,dest={}", b.p("out1")),
        &b.p("one"),
    ]);
    let f = files_in(&b.env.path("out1"));
    let want = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        f,
        want(&[
            ("l-1000", "by-1000\n"),
            ("s-1000", "1000:0:755\n"),
            // What the uid=1000 one wrote is not in the uid=2000 one.
            ("l-2000", "by-2000\n"),
            ("s-2000", "2000:0:755\n"),
            ("l-0700", "by-0700\n"),
            ("s-0700", "0:0:700\n"),
            ("l-plain", "by-plain\n"),
            ("s-plain", "0:0:755\n"),
            // uid=0 given is a base too: not the plain cache.
            ("l-uid0", "by-uid0\n"),
            ("s-uid0", "0:0:755\n"),
            // The same owner and mode spelled otherwise, another sharing: one cache.
            ("l-1000-again", "by-1000\nby-1000-again\n"),
            ("s-1000-again", "1000:0:755\n"),
        ])
    );
    // Five caches of id x on disk, each with its owner and mode.
    assert_eq!(
        cache_dirs(&b, "x-"),
        [
            (0, 0, 0o700),
            (0, 0, 0o755),
            (0, 0, 0o755),
            (1000, 0, 0o755),
            (2000, 0, 0o755)
        ]
    );

    // Another build (its steps run again): the same options find the same
    // caches.
    b.write(
        "two/Dockerfile",
        &dockerfile(&[
            (",uid=2000", "2000-b"),
            (",mode=700", "0700-b"),
            (",uid=1000", "1000-b"),
        ]),
    );
    b.build_ok(&[
        "--build-arg",
        "B=2",
        "--output",
        &format!("type=local,dest={}", b.p("out2")),
        &b.p("two"),
    ]);
    let f = files_in(&b.env.path("out2"));
    assert_eq!(f["l-2000-b"], "by-2000\nby-2000-b\n");
    assert_eq!(f["l-0700-b"], "by-0700\nby-0700-b\n");
    assert_eq!(f["l-1000-b"], "by-1000\nby-1000-again\nby-1000-b\n");
    assert_eq!(cache_dirs(&b, "x-").len(), 5, "no new cache of x");
    // Pruning everything removes every one of them.
    b.env.ok(&["builder", "prune", "-a", "-f"]);
    assert_eq!(cache_dirs(&b, ""), [], "cache mounts left after prune -a");
}

#[test]
fn cache_mount_from_source_and_default_id_follow_buildkit() {
    let b = B::new();
    b.write(
        "ctx/Dockerfile",
        "FROM busybox AS st\n\
         RUN mkdir -p /x/y && echo seed > /x/y/f && chown 7:8 /x/y && chmod 711 /x/y\n\
         FROM busybox\n\
         RUN --mount=type=cache,id=b,from=st,source=/x/y,target=/m,uid=1000,mode=0777 \
             stat -c %u:%g:%a /m > /s1 && touch /m/new && ls /m > /l1\n\
         RUN --mount=type=cache,id=b,from=st,source=/x/y,target=/m ls /m > /l2\n\
         RUN --mount=type=cache,id=b,target=/m ls /m > /l3\n\
         RUN --mount=type=cache,id=b,from=st,target=/m,gid=5,mode=0700 \
             stat -c %u:%g:%a /m > /s4 && ls /m > /l4\n\
         WORKDIR /w1\n\
         RUN --mount=type=cache,target=rel touch rel/r\n\
         WORKDIR /w2\n\
         RUN --mount=type=cache,target=rel/ ls rel > /l5\n\
         RUN --mount=type=cache,target=/w1/rel ls /w1/rel > /l6\n\
         RUN --mount=type=cache,id=s,target=/c mkdir -p /c/sub && touch /c/sub/in\n\
         RUN --mount=type=cache,id=s,source=sub,target=/m,uid=9 ls /m > /l7 && touch /m/more\n\
         RUN --mount=type=cache,id=s,target=/c ls /c/sub > /l8\n\
         FROM scratch\n\
         COPY --from=1 /l* /s* /\n",
    );
    b.build_ok(&[
        "--output",
        &format!("type=local,dest={}", b.p("out")),
        &b.p("ctx"),
    ]);
    let f = files_in(&b.env.path("out"));
    let get = |k: &str| f.get(k).map_or("<missing>", String::as_str);
    // With source=, uid/gid/mode do nothing: the source's own owner and mode.
    assert_eq!(get("s1"), "7:8:711\n");
    assert_eq!(get("l1"), "f\nnew\n");
    // The same stage and source: the same cache.
    assert_eq!(get("l2"), "f\nnew\n");
    // The id without from= is another cache.
    assert_eq!(get("l3"), "");
    // from= with perms: the stage's /cache, made with them (it has none).
    assert_eq!(get("s4"), "0:5:700\n");
    assert_eq!(get("l4"), "");
    // The default id is the target as written: `rel` in /w1 and in /w2 is one
    // cache, /w1/rel another.
    assert_eq!(get("l5"), "r\n");
    assert_eq!(get("l6"), "");
    // Without from=, source= mounts a directory of the id's cache.
    assert_eq!(get("l7"), "in\n");
    assert_eq!(get("l8"), "in\nmore\n");

    // A source that is not there: a one-line error naming it.
    b.write(
        "bad/Dockerfile",
        "FROM busybox AS st\nFROM busybox\n\
         RUN --mount=type=cache,id=b,from=st,source=/nope,target=/m true\n",
    );
    let o = b.build(&[&b.p("bad")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("cache mount source \"/nope\": not found"),
        "{err}"
    );
    b.write(
        "bad2/Dockerfile",
        "FROM busybox\nRUN --mount=type=cache,id=fresh,source=sub,target=/m true\n",
    );
    let o = b.build(&[&b.p("bad2")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("cache mount source \"/sub\": not found in cache fresh"),
        "{err}"
    );
}

/// The image config blob of a build, with every `created` time and every digest
/// replaced (they depend on the clock and on the host's busybox).
fn normalised_config(archive: &str) -> String {
    let mut ar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    let mut files = std::collections::BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        files.insert(name, data);
    }
    let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let config = manifest[0]["Config"].as_str().unwrap();
    let text = String::from_utf8(files[config].clone()).unwrap();
    let key = "\"created\":\"";
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        rest = &rest[i + key.len()..];
        out.push('T');
        rest = &rest[rest.find('"').unwrap()..];
    }
    out.push_str(rest);
    let text = out;
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("sha256:") {
        out.push_str(&rest[..i + 7]);
        out.push('D');
        rest = &rest[i + 7 + 64..];
    }
    out.push_str(rest);
    out.replace(
        &format!("\"architecture\":\"{}\"", rbuild_oci::host_architecture()),
        "\"architecture\":\"HOST\"",
    )
}

/// The config blob is written once, canonically, from the one config model: sorted
/// keys, Docker's fields (Healthcheck, `OnBuild`, Shell, `ArgsEscaped`, `StopSignal`,
/// ...) under their names, empty values left out, `config` always present, an empty
/// `history` left out. The expected texts are what rbuild wrote before the model
/// moved to `rbuild_oci` (image IDs must not change).
#[test]
fn the_config_blob_keeps_key_order_and_omission_rules() {
    let b = B::new();
    b.write(
        "cfg/Dockerfile",
        r#"FROM busybox:latest AS full
MAINTAINER someone <a@b>
SHELL ["/bin/sh", "-c"]
USER 0:0
EXPOSE 80/tcp 53/udp
VOLUME ["/data", "/x"]
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD ["true"]
ONBUILD RUN echo hi
STOPSIGNAL SIGTERM
ENTRYPOINT ["/bin/sh", "-c"]
CMD echo "a\tb" 'q"x'
RUN true
FROM busybox:latest AS none
HEALTHCHECK NONE
WORKDIR rel/dir
ENTRYPOINT []
FROM scratch AS empty
"#,
    );
    let mut got = Vec::new();
    for target in ["full", "none", "empty"] {
        let tar = b.p(&format!("{target}.tar"));
        let o = b
            .env
            .cmd(&[
                "build",
                "--progress",
                "plain",
                "--target",
                target,
                "--output",
                &format!("type=docker,dest={tar}"),
                &b.p("cfg"),
            ])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "build --target {target}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        got.push(normalised_config(&tar));
    }
    let base = r#"{"comment":"Imported from -","created":"T"}"#;
    let step = |by: &str, empty: bool| {
        format!(
            r#"{{"comment":"buildkit.dockerfile.v0","created":"T","created_by":{by}{}}}"#,
            if empty { r#","empty_layer":true"# } else { "" }
        )
    };
    let full = format!(
        r#"{{"architecture":"HOST","author":"someone <a@b>","config":{{"ArgsEscaped":true,"Cmd":["/bin/sh","-c","echo \"a\\tb\" 'q\"x'"],"Entrypoint":["/bin/sh","-c"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"ExposedPorts":{{"53/udp":{{}},"80/tcp":{{}}}},"Healthcheck":{{"Interval":30000000000,"Retries":3,"Test":["CMD","true"],"Timeout":5000000000}},"OnBuild":["RUN echo hi"],"Shell":["/bin/sh","-c"],"StopSignal":"SIGTERM","User":"0:0","Volumes":{{"/data":{{}},"/x":{{}}}}}},"created":"T","history":[{base},{},{},{},{},{},{},{},{},{},{}],"os":"linux","rootfs":{{"diff_ids":["sha256:D","sha256:D"],"type":"layers"}}}}"#,
        step(r#""MAINTAINER someone <a@b>""#, true),
        step(r#""SHELL [/bin/sh -c]""#, true),
        step(r#""USER 0:0""#, true),
        step(r#""EXPOSE [80/tcp 53/udp]""#, true),
        step(r#""VOLUME [/data /x]""#, true),
        step(
            r#""HEALTHCHECK {Test:[CMD true] Interval:30s Timeout:5s StartPeriod:0s StartInterval:0s Retries:3}""#,
            true
        ),
        step(r#""STOPSIGNAL SIGTERM""#, true),
        step(r#""ENTRYPOINT [\"/bin/sh\" \"-c\"]""#, true),
        step(
            r#""CMD [\"/bin/sh\" \"-c\" \"echo \\\"a\\\\tb\\\" 'q\\\"x'\"]""#,
            true
        ),
        step(r#""RUN /bin/sh -c true # buildkit""#, false),
    );
    let none = format!(
        r#"{{"architecture":"HOST","config":{{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Healthcheck":{{"Test":["NONE"]}},"WorkingDir":"/rel/dir"}},"created":"T","history":[{base},{},{},{}],"os":"linux","rootfs":{{"diff_ids":["sha256:D","sha256:D"],"type":"layers"}}}}"#,
        step(
            r#""HEALTHCHECK {Test:[NONE] Interval:0s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}""#,
            true
        ),
        step(r#""WORKDIR /rel/dir""#, false),
        step(r#""ENTRYPOINT []""#, true),
    );
    let empty = r#"{"architecture":"HOST","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"},"created":"T","os":"linux","rootfs":{"diff_ids":[],"type":"layers"}}"#;
    assert_eq!(got[0], full);
    assert_eq!(got[1], none);
    assert_eq!(got[2], empty);
}

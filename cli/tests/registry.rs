//! `rbuild pull`, `rbuild push` and `FROM` of a registry image, against a real
//! `docker-registry` (Debian's `docker-registry` package) on 127.0.0.1 with
//! temporary storage, and against small test doubles (a schema 1 registry, a
//! bearer-token registry) written here. What the registry served is asserted
//! from its own access log. No test contacts anything but 127.0.0.1.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::registry::{Registry, free_port};
use common::{Env, build_env, have};
use sha2::Digest as _;

fn skopeo() {
    assert!(
        have("skopeo"),
        "skopeo is missing: install the skopeo package"
    );
}

/// `skopeo inspect`'s manifest digest of `image` (on a plain-http registry).
fn skopeo_digest(image: &str) -> String {
    skopeo();
    let o = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "skopeo inspect {image}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["Digest"].as_str().unwrap().to_owned()
}

/// Pushes the local image `tag` of `env` to `dest` with `rbuild save` + `skopeo copy`.
fn skopeo_push(env: &Env, tag: &str, dest: &str) {
    skopeo();
    let tar = env.path("skopeo-push.tar");
    env.ok(&["save", "-o", tar.to_str().unwrap(), tag]);
    let o = Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            &format!("docker-archive:{}", tar.display()),
            &format!("docker://{dest}"),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The `TAG: digest: sha256:... size: N` of a push's output.
fn pushed_digest(out: &str) -> String {
    out.lines()
        .find_map(|l| l.split_once(": digest: "))
        .map_or_else(
            || panic!("no digest line in {out}"),
            |(_, rest)| rest.split_whitespace().next().unwrap().to_owned(),
        )
}

fn image_id(env: &Env, name: &str) -> String {
    env.ok(&["inspect", "--format", "{{.Id}}", name])
        .trim()
        .to_owned()
}

/// Builds `FROM busybox` + one RUN layer as `tag` in `env`.
fn build_app(env: &Env, tag: &str, text: &str) {
    let ctx = env.path(&format!("ctx-{text}"));
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(
        ctx.join("Dockerfile"),
        format!("FROM busybox\nRUN echo {text} > /app.txt\n"),
    )
    .unwrap();
    env.ok(&["build", "-q", "-t", tag, ctx.to_str().unwrap()]);
}

#[test]
fn pull_of_an_image_pushed_by_skopeo_runs_and_records_its_repo_digest() {
    let reg = Registry::start();
    let src = build_env();
    let image = format!("{}/base:1", reg.host());
    skopeo_push(&src, "busybox:latest", &image);
    let digest = skopeo_digest(&image);

    let env = Env::new();
    let out = env.ok(&["pull", &image]);
    assert!(out.contains("1: Pulling from base"), "{out}");
    assert!(out.contains(": Pull complete"), "{out}");
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {image}")),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some(image.as_str()), "{out}");
    assert_eq!(image_id(&env, &image), image_id(&src, "busybox:latest"));
    let digests = env.ok(&["images", "--digests"]);
    assert!(digests.contains(&digest), "{digests}");
    let repo_digests = env.ok(&["inspect", "--format", "{{json .RepoDigests}}", &image]);
    assert!(
        repo_digests.contains(&format!("{}/base@{digest}", reg.host())),
        "{repo_digests}"
    );
    // By digest too.
    let by_digest = format!("{}/base@{digest}", reg.host());
    assert_eq!(image_id(&env, &by_digest), image_id(&env, &image));
    let o = env.ok(&["run", "--rm", &image, "echo", "pulled and running"]);
    assert_eq!(o.trim(), "pulled and running");

    // Again: nothing downloaded (no blob GET in the registry's log).
    let before = reg.requests().len();
    let out = env.ok(&["pull", &image]);
    assert!(out.contains("Already exists"), "{out}");
    assert!(out.contains("Status: Image is up to date"), "{out}");
    let again = reg.requests()[before..].to_vec();
    assert!(
        !again
            .iter()
            .any(|r| r.starts_with("GET") && r.contains("/blobs/")),
        "a second pull fetched blobs: {again:?}"
    );

    // -a: every tag of the repository.
    env.ok(&["tag", &image, &format!("{}/base:2", reg.host())]);
    env.ok(&["push", &format!("{}/base:2", reg.host())]);
    let all = Env::new();
    let out = all.ok(&["pull", "-a", &format!("{}/base", reg.host())]);
    assert!(out.contains(&format!("{}/base:1", reg.host())), "{out}");
    let tags = all.ok(&["images", "--format", "{{.Tag}}"]);
    let mut tags: Vec<&str> = tags.lines().collect();
    tags.sort_unstable();
    assert_eq!(tags, ["1", "2"]);
}

#[test]
fn push_gives_skopeo_the_printed_digest_repushes_nothing_and_mounts_across_repositories() {
    let reg = Registry::start();
    let env = build_env();
    build_app(&env, "app", "one");
    let image = format!("{}/app:1", reg.host());
    env.ok(&["tag", "app", &image]);
    let out = env.ok(&["push", &image]);
    assert!(
        out.contains(&format!(
            "The push refers to repository [{}/app]",
            reg.host()
        )),
        "{out}"
    );
    assert_eq!(out.matches(": Pushed").count(), 2, "{out}");
    let digest = pushed_digest(&out);
    assert_eq!(skopeo_digest(&image), digest, "{out}");
    let repo_digests = env.ok(&["inspect", "--format", "{{json .RepoDigests}}", "app"]);
    assert!(
        repo_digests.contains(&format!("{}/app@{digest}", reg.host())),
        "{repo_digests}"
    );
    let uploads = |reqs: &[String]| -> Vec<String> {
        reqs.iter()
            .filter(|r| r.contains("/blobs/uploads/"))
            .cloned()
            .collect()
    };
    assert!(!uploads(&reg.requests()).is_empty());

    // The same image again: no upload at all, the same manifest.
    let before = reg.requests().len();
    let t = Instant::now();
    let out = env.ok(&["push", &image]);
    let took = t.elapsed();
    assert_eq!(pushed_digest(&out), digest, "{out}");
    assert_eq!(out.matches("Layer already exists").count(), 2, "{out}");
    let again = reg.requests()[before..].to_vec();
    assert!(
        uploads(&again).is_empty(),
        "a re-push uploaded blobs: {again:?}"
    );
    eprintln!("re-push of an unchanged image: {took:?}");

    // Another repository of the same registry: mounted, not uploaded.
    let other = format!("{}/other:1", reg.host());
    env.ok(&["tag", "app", &other]);
    let before = reg.requests().len();
    let out = env.ok(&["push", &other]);
    assert_eq!(pushed_digest(&out), digest, "{out}");
    assert!(
        out.contains(&format!("Mounted from {}/app", reg.host())),
        "{out}"
    );
    let reqs = reg.requests()[before..].to_vec();
    let mounts: Vec<&String> = reqs
        .iter()
        .filter(|r| r.starts_with("POST") && r.contains("mount=") && r.contains("from=app"))
        .collect();
    assert_eq!(mounts.len(), 3, "two layers and the config: {reqs:?}");
    assert!(
        !reqs.iter().any(|r| r.starts_with("PATCH")),
        "layers uploaded instead of mounted: {reqs:?}"
    );

    // A pull of the app into a store that has the base fetches only the app's
    // layer (and the config).
    let base = format!("{}/base:1", reg.host());
    env.ok(&["tag", "busybox", &base]);
    env.ok(&["push", &base]);
    let fresh = Env::new();
    assert_eq!(fresh.ok(&["pull", "-q", &base]), format!("{base}\n"));
    let before = reg.requests().len();
    let out = fresh.ok(&["pull", &image]);
    assert!(out.contains("Already exists"), "{out}");
    let reqs = reg.requests()[before..].to_vec();
    let blob_gets: Vec<&String> = reqs
        .iter()
        .filter(|r| r.starts_with("GET") && r.contains("/blobs/"))
        .collect();
    assert_eq!(
        blob_gets.len(),
        2,
        "config and the app layer only: {reqs:?}"
    );
    assert_eq!(image_id(&fresh, &image), image_id(&env, "app"));
    let o = fresh.ok(&["run", "--rm", &image, "cat", "/app.txt"]);
    assert_eq!(o.trim(), "one");
}

/// Sends one HTTP/1.1 request to 127.0.0.1:`port`; returns (status, body).
fn http(port: u16, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, resp)
}

#[test]
fn a_multi_platform_index_resolves_to_the_host_and_to_the_asked_platform() {
    let reg = Registry::start();
    let env = build_env();
    build_app(&env, "amd", "for-amd64");
    build_app(&env, "arm", "for-arm64");
    let mut digests = Vec::new();
    for (local, remote) in [("amd", "multi:amd64"), ("arm", "multi:arm64")] {
        let dest = format!("{}/{remote}", reg.host());
        env.ok(&["tag", local, &dest]);
        let out = env.ok(&["push", &dest]);
        let size: usize = out
            .lines()
            .find_map(|l| l.split_once(" size: "))
            .map(|(_, n)| n.trim().parse().unwrap())
            .unwrap();
        digests.push((pushed_digest(&out), size));
    }
    let entry = |(d, n): &(String, usize), arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "digest": d, "size": n,
            "platform": {"architecture": arch, "os": "linux"},
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [entry(&digests[0], "amd64"), entry(&digests[1], "arm64")],
    });
    let bytes = serde_json::to_vec_pretty(&index).unwrap();
    let (status, resp) = http(
        reg.port,
        "PUT",
        "/v2/multi/manifests/1",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        &bytes,
    );
    assert_eq!(status, 201, "{resp}");
    let index_digest = format!("sha256:{:x}", sha2::Sha256::digest(&bytes));
    let multi = format!("{}/multi:1", reg.host());

    let host_image = match std::env::consts::ARCH {
        "x86_64" => "amd",
        "aarch64" => "arm",
        other => panic!("cannot run: the index has no {other} entry"),
    };
    let host = Env::new();
    let out = host.ok(&["pull", &multi]);
    assert!(out.contains(&format!("Digest: {index_digest}")), "{out}");
    assert_eq!(image_id(&host, &multi), image_id(&env, host_image));

    let arm = Env::new();
    arm.ok(&["pull", "--platform", "linux/arm64", &multi]);
    assert_eq!(image_id(&arm, &multi), image_id(&env, "arm"));

    let err = Env::new().fails(&["pull", "--platform", "linux/s390x", &multi]);
    assert!(
        err.contains("no image for platform linux/s390x")
            && err.contains("linux/amd64, linux/arm64"),
        "{err}"
    );
}

#[test]
fn from_a_registry_image_pulls_it_and_a_stored_base_needs_no_network() {
    let reg = Registry::start();
    let src = build_env();
    let base = format!("{}/base:1", reg.host());
    src.ok(&["tag", "busybox", &base]);
    src.ok(&["push", &base]);

    assert!(
        nix::unistd::geteuid().is_root(),
        "cannot run: building needs root"
    );
    let env = Env::new();
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nRUN echo from-registry > /f\n"),
    )
    .unwrap();
    let o = env.run(&[
        "build",
        "--progress=plain",
        "-t",
        "built",
        ctx.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("Pull complete"), "{err}");
    assert_eq!(
        env.ok(&["run", "--rm", "built", "cat", "/f"]).trim(),
        "from-registry"
    );

    // The base is in the store now: a rebuild asks the registry nothing.
    let before = reg.requests().len();
    env.ok(&[
        "build",
        "--no-cache",
        "-q",
        "-t",
        "built",
        ctx.to_str().unwrap(),
    ]);
    assert_eq!(reg.requests().len(), before, "{:?}", reg.requests());
    // With --pull it checks the registry (and finds the same image).
    let o = env.run(&[
        "build",
        "--pull",
        "--progress=plain",
        "-t",
        "built",
        ctx.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reqs = reg.requests()[before..].to_vec();
    assert!(
        reqs.iter().any(|r| r.contains("/v2/base/manifests/1")),
        "{reqs:?}"
    );

    // With --progress json the pull is reported as JSON too.
    let fresh = Env::new();
    let o = fresh.run(&["build", "--progress=json", "-q", ctx.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = fresh.run(&[
        "build",
        "--no-cache",
        "--pull",
        "--progress=json",
        ctx.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let mut pulls = 0;
    for l in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        if v["pull"].as_str() == Some(base.as_str()) {
            pulls += 1;
        }
    }
    assert!(pulls > 0, "{err}");
}

#[test]
fn a_registry_that_cannot_be_reached_fails_fast_naming_it_and_the_reference() {
    let env = Env::new();
    let port = free_port(); // closed once the listener is dropped
    let image = format!("127.0.0.1:{port}/gone:1");
    let t = Instant::now();
    let err = env.fails(&["pull", &image]);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(err.contains(&image), "{err}");
    assert!(
        err.contains(&format!("cannot reach registry 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");

    // A FROM of it says the image is not in the store either.
    let ctx = env.path("ctx");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(ctx.join("Dockerfile"), format!("FROM {image}\n")).unwrap();
    let t = Instant::now();
    let o = env.run(&["build", ctx.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no such image in the local store, and pulling it failed")
            && err.contains(&format!("cannot reach registry 127.0.0.1:{port}")),
        "{err}"
    );
}

/// A tiny registry double: answers each request with what `route` returns
/// (status, headers, body); records the requests (`METHOD PATH` plus the
/// Authorization header). Runs until the test process ends.
struct Double {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

type Route =
    dyn Fn(&str, &str, Option<&str>, &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + Sync;

impl Double {
    fn start(route: Arc<Route>) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let (route, seen) = (Arc::clone(&route), Arc::clone(&seen2));
                std::thread::spawn(move || serve(s, &*route, &seen));
            }
        });
        Self { port, seen }
    }
}

thread_local! {
    /// The `Range` header of the request a double's route is answering.
    static REQUEST_RANGE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// The start of the request's `Range: bytes=N-`, in a double's route.
fn request_range_start() -> Option<usize> {
    REQUEST_RANGE.with(|r| {
        r.borrow()
            .as_deref()?
            .strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse()
            .ok()
    })
}

fn serve(s: TcpStream, route: &Route, seen: &Mutex<Vec<String>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut auth = None;
        let mut range = None;
        let mut len = 0usize;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "authorization" => auth = Some(v.trim().to_owned()),
                    "range" => range = Some(v.trim().to_owned()),
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
                    _ => {}
                }
            }
        }
        let body = if chunked {
            let Some(b) = read_chunked(&mut r) else {
                return;
            };
            b
        } else {
            let mut b = vec![0; len];
            if r.read_exact(&mut b).is_err() {
                return;
            }
            b
        };
        seen.lock().unwrap().push(match &range {
            Some(r) => format!(
                "{method} {path} {} range={r}",
                auth.as_deref().unwrap_or("-")
            ),
            None => format!("{method} {path} {}", auth.as_deref().unwrap_or("-")),
        });
        REQUEST_RANGE.with(|r| r.replace(range));
        let (status, headers, body) = route(&method, &path, auth.as_deref(), &body);
        if status == 0 {
            // The registry dies: the connection closes without an answer.
            return;
        }
        if status == 1 {
            // It dies while sending: half the body of a full-length answer
            // (or as many bytes as an `x-cut` header says).
            let cut = headers
                .iter()
                .find(|(k, _)| k == "x-cut")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(body.len() / 2);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let _ = w.write_all(head.as_bytes());
            let _ = w.write_all(&body[..cut]);
            let _ = w.flush();
            let _ = w.shutdown(std::net::Shutdown::Both);
            return;
        }
        let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            out.push_str(&k);
            out.push_str(": ");
            out.push_str(&v);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        if w.write_all(out.as_bytes()).is_err() {
            return;
        }
        if method != "HEAD" && w.write_all(&body).is_err() {
            return;
        }
    }
}

/// A chunked request body (`Transfer-Encoding: chunked`).
fn read_chunked(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let n = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
        let mut chunk = vec![0; n + 2];
        r.read_exact(&mut chunk).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn a_schema1_manifest_is_refused_with_a_clear_message() {
    let d = Double::start(Arc::new(
        |_m: &str, path: &str, _a: Option<&str>, _b: &[u8]| {
            if path == "/v2/" {
                return (200, vec![], b"{}".to_vec());
            }
            if path.starts_with("/v2/old/manifests/") {
                let body = br#"{"schemaVersion":1,"name":"old","tag":"1","architecture":"amd64","fsLayers":[],"history":[]}"#;
                return (
                    200,
                    vec![(
                        "Content-Type".into(),
                        "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
                    )],
                    body.to_vec(),
                );
            }
            (404, vec![], b"{}".to_vec())
        },
    ));
    let env = Env::new();
    let err = env.fails(&["pull", &format!("127.0.0.1:{}/old:1", d.port)]);
    assert!(err.contains("schema 1"), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{}/old:1", d.port)),
        "{err}"
    );
    assert_eq!(env.ok(&["images", "-q"]).trim(), "", "nothing stored");
}

/// A gzipped one-file layer tar and its (digest, diff ID).
fn small_layer() -> (Vec<u8>, String, String) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(6);
    h.set_mtime(1_600_000_000);
    b.append_data(&mut h, "hello", &b"hello\n"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let diff_id = format!("sha256:{:x}", sha2::Sha256::digest(&tar));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(&gz));
    (gz, digest, diff_id)
}

#[test]
fn bearer_tokens_are_fetched_per_scope_and_a_401_says_to_log_in() {
    let (layer, layer_digest, diff_id) = small_layer();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let config_digest = format!("sha256:{:x}", sha2::Sha256::digest(&config));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    let port = Arc::new(Mutex::new(0u16));
    let p2 = Arc::clone(&port);
    let d = Double::start(Arc::new(
        move |_m: &str, path: &str, auth: Option<&str>, _b: &[u8]| {
            let port = *p2.lock().unwrap();
            if let Some(q) = path.strip_prefix("/token?") {
                // The token names the scopes it was asked for.
                let scopes: Vec<&str> = q
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("scope="))
                    .collect();
                let token = format!("tok-{}", scopes.join("+"));
                return (
                    200,
                    vec![],
                    serde_json::to_vec(&serde_json::json!({ "token": token })).unwrap(),
                );
            }
            let challenge = || {
                (
                    401,
                    vec![(
                        "WWW-Authenticate".into(),
                        format!(
                            "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"double\""
                        ),
                    )],
                    b"{}".to_vec(),
                )
            };
            if path == "/v2/" {
                return challenge();
            }
            if path.starts_with("/v2/locked/") {
                return (
                    401,
                    vec![("WWW-Authenticate".into(), "Basic realm=\"x\"".into())],
                    b"{}".to_vec(),
                );
            }
            let want = "Bearer tok-repository%3Aprivate%2Fapp%3Apull";
            if auth != Some(want) {
                return challenge();
            }
            if path == "/v2/private/app/manifests/1" {
                return (
                    200,
                    vec![(
                        "Content-Type".into(),
                        "application/vnd.docker.distribution.manifest.v2+json".into(),
                    )],
                    manifest.clone(),
                );
            }
            if path.ends_with(&config_digest) {
                return (200, vec![], config.clone());
            }
            if path.ends_with(&layer_digest) {
                return (200, vec![], layer.clone());
            }
            (404, vec![], b"{}".to_vec())
        },
    ));
    *port.lock().unwrap() = d.port;
    let env = Env::new();
    let image = format!("127.0.0.1:{}/private/app:1", d.port);
    let out = env.ok(&["pull", &image]);
    assert!(out.contains("Pull complete"), "{out}");
    let seen = d.seen.lock().unwrap().clone();
    let token_asks: Vec<&String> = seen.iter().filter(|r| r.contains("/token?")).collect();
    assert_eq!(token_asks.len(), 1, "one token for the one scope: {seen:?}");
    assert!(
        token_asks[0].contains("service=double")
            && token_asks[0].contains("scope=repository%3Aprivate%2Fapp%3Apull"),
        "{seen:?}"
    );
    let blobs = seen.iter().filter(|r| r.contains("/blobs/")).count();
    assert_eq!(blobs, 2, "{seen:?}");

    // Basic auth asked and no credentials: the message says to log in.
    let err = env.fails(&["pull", &format!("127.0.0.1:{}/locked/x:1", d.port)]);
    assert!(
        err.contains(&format!("run `rbuild login 127.0.0.1:{}`", d.port)),
        "{err}"
    );
}

/// A one-layer image: (manifest, config, config digest, layer, layer digest).
fn small_image() -> (Vec<u8>, Vec<u8>, String, Vec<u8>, String) {
    let (layer, layer_digest, diff_id) = small_layer();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let config_digest = format!("sha256:{:x}", sha2::Sha256::digest(&config));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": layer_digest, "size": layer.len()}],
    }))
    .unwrap();
    (manifest, config, config_digest, layer, layer_digest)
}

#[test]
fn transient_failures_are_retried_and_a_corrupt_blob_leaves_the_store_unchanged() {
    let (manifest, config, config_digest, layer, layer_digest) = small_image();
    let calls = Arc::new(Mutex::new(std::collections::HashMap::<String, usize>::new()));
    let c2 = Arc::clone(&calls);
    let d = Double::start(Arc::new(
        move |_m: &str, path: &str, _a: Option<&str>, _b: &[u8]| {
            let n = {
                let mut c = c2.lock().unwrap();
                let n = c.entry(path.to_owned()).or_insert(0);
                *n += 1;
                *n
            };
            if path == "/v2/" {
                return (200, vec![], b"{}".to_vec());
            }
            let (repo, rest) = path
                .strip_prefix("/v2/")
                .and_then(|p| p.split_once('/'))
                .unwrap_or(("", ""));
            if rest == "manifests/1" {
                // The flaky repository answers 503 first.
                if repo == "flaky" && n == 1 {
                    return (503, vec![], b"{}".to_vec());
                }
                return (
                    200,
                    vec![(
                        "Content-Type".into(),
                        "application/vnd.docker.distribution.manifest.v2+json".into(),
                    )],
                    manifest.clone(),
                );
            }
            if path.ends_with(&config_digest) {
                if repo == "flaky" && n == 1 {
                    return (
                        429,
                        vec![("Retry-After".into(), "1".into())],
                        b"{}".to_vec(),
                    );
                }
                return (200, vec![], config.clone());
            }
            if path.ends_with(&layer_digest) {
                if repo == "corrupt" {
                    let mut bad = layer.clone();
                    let last = bad.len() - 1;
                    bad[last] ^= 0xff;
                    return (200, vec![], bad);
                }
                return (200, vec![], layer.clone());
            }
            (404, vec![], b"{}".to_vec())
        },
    ));
    let env = Env::new();
    let t = Instant::now();
    let out = env.ok(&["pull", &format!("127.0.0.1:{}/flaky:1", d.port)]);
    assert!(out.contains("Pull complete"), "{out}");
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not waited for"
    );
    let calls_now = calls.lock().unwrap().clone();
    assert_eq!(
        calls_now.get("/v2/flaky/manifests/1"),
        Some(&2),
        "{calls_now:?}"
    );

    // A fresh store (the flaky pull stored those layers already).
    let env = Env::new();
    let images = env.ok(&["images", "-q"]);
    let before = common::snapshot(&env.root().join("blobs"));
    let err = env.fails(&["pull", &format!("127.0.0.1:{}/corrupt:1", d.port)]);
    assert!(err.contains("digest mismatch"), "{err}");
    assert_eq!(env.ok(&["images", "-q"]), images, "the store changed");
    assert_eq!(common::snapshot(&env.root().join("blobs")), before);
}

#[test]
fn docker_pulls_and_runs_what_rbuild_pushed_with_the_same_digest() {
    common::docker::require();
    let reg = Registry::start();
    let env = build_env();
    build_app(&env, "app", "for-docker");
    let image = format!("{}/dockerpeer:1", reg.host());
    env.ok(&["tag", "app", &image]);
    let digest = pushed_digest(&env.ok(&["push", &image]));
    let _rmi = common::docker::RemoveOnDrop::one(&image);
    let o = Command::new("docker")
        .args(["pull", &image])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "docker pull: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    let o = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            &image,
            "cat",
            "/app.txt",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "for-docker");
    let o = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", &image])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        image_id(&env, "app"),
        "docker sees the same image ID"
    );
}

/// What the push double holds: blobs per repository, manifests, uploads.
#[derive(Default)]
struct PushState {
    blobs: std::collections::HashSet<(String, String)>,
    manifests: std::collections::HashMap<String, Vec<u8>>,
    uploads: usize,
}

#[test]
fn push_falls_back_to_a_monolithic_put_and_to_an_upload_when_a_mount_is_refused() {
    let state = Arc::new(Mutex::new(PushState::default()));
    let st = Arc::clone(&state);
    let port = Arc::new(Mutex::new(0u16));
    let p2 = Arc::clone(&port);
    let d = Double::start(Arc::new(
        move |m: &str, path: &str, auth: Option<&str>, body: &[u8]| {
            let port = *p2.lock().unwrap();
            if let Some(q) = path.strip_prefix("/token?") {
                let scopes: Vec<&str> = q
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("scope="))
                    .collect();
                let token = format!("tok-{}", scopes.join("+"));
                return (
                    200,
                    vec![],
                    serde_json::to_vec(&serde_json::json!({ "token": token })).unwrap(),
                );
            }
            let challenge = (
                401,
                vec![(
                    "WWW-Authenticate".into(),
                    format!("Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"double\""),
                )],
                b"{}".to_vec(),
            );
            let Some(auth) = auth.filter(|a| a.starts_with("Bearer tok-")) else {
                return challenge;
            };
            let mut s = st.lock().unwrap();
            let (path_only, query) = path.split_once('?').unwrap_or((path, ""));
            if let Some(n) = path_only.strip_prefix("/upload/") {
                // No chunked uploads here: PATCH is refused, PUT takes it all.
                return match m {
                    "PATCH" => (405, vec![], b"{}".to_vec()),
                    "PUT" => {
                        let digest = query
                            .split('&')
                            .find_map(|kv| kv.strip_prefix("digest="))
                            .unwrap_or("")
                            .replace("%3A", ":");
                        let actual = format!("sha256:{:x}", sha2::Sha256::digest(body));
                        if digest != actual {
                            return (
                                400,
                                vec![],
                                b"{\"errors\":[{\"code\":\"DIGEST_INVALID\"}]}".to_vec(),
                            );
                        }
                        let repo = n.split_once('/').map_or("", |(r, _)| r).replace('~', "/");
                        s.blobs.insert((repo, digest));
                        (201, vec![], Vec::new())
                    }
                    _ => (405, vec![], Vec::new()),
                };
            }
            let Some(rest) = path_only.strip_prefix("/v2/") else {
                return (404, vec![], b"{}".to_vec());
            };
            if rest.is_empty() {
                return (200, vec![], b"{}".to_vec());
            }
            if let Some((repo, d)) = rest.split_once("/blobs/sha256:") {
                let has = s.blobs.contains(&(repo.to_owned(), format!("sha256:{d}")));
                return (if has { 200 } else { 404 }, vec![], Vec::new());
            }
            if let Some(repo) = rest.strip_suffix("/blobs/uploads/") {
                assert!(
                    auth.contains(&format!(
                        "repository%3A{}%3Apull%2Cpush",
                        repo.replace('/', "%2F")
                    )),
                    "{auth}"
                );
                // Mounts are refused (202): the client uploads instead.
                s.uploads += 1;
                let loc = format!("/upload/{}/{}", repo.replace('/', "~"), s.uploads);
                return (202, vec![("Location".into(), loc)], Vec::new());
            }
            if let Some((repo, tag)) = rest.split_once("/manifests/") {
                if m == "PUT" {
                    s.manifests.insert(format!("{repo}:{tag}"), body.to_vec());
                    return (201, vec![], Vec::new());
                }
            }
            (404, vec![], b"{}".to_vec())
        },
    ));
    *port.lock().unwrap() = d.port;
    let env = build_env();
    build_app(&env, "app", "monolithic");
    let image = format!("127.0.0.1:{}/team/app:1", d.port);
    env.ok(&["tag", "app", &image]);
    let out = env.ok(&["push", &image]);
    let digest = pushed_digest(&out);
    let stored = state
        .lock()
        .unwrap()
        .manifests
        .get("team/app:1")
        .cloned()
        .unwrap();
    assert_eq!(
        format!("sha256:{:x}", sha2::Sha256::digest(&stored)),
        digest
    );
    let m: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    for l in m["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap().to_owned();
        assert!(
            state
                .lock()
                .unwrap()
                .blobs
                .contains(&("team/app".to_owned(), d))
        );
    }
    assert!(
        d.seen
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.starts_with("PATCH /upload/")),
        "the chunked upload was tried first"
    );

    // Another repository: the mount is asked with pull on the source in the
    // token, refused, and the blobs are uploaded.
    let copy = format!("127.0.0.1:{}/team/copy:1", d.port);
    env.ok(&["tag", "app", &copy]);
    let out = env.ok(&["push", &copy]);
    assert_eq!(pushed_digest(&out), digest, "{out}");
    let seen = d.seen.lock().unwrap().clone();
    let mounts: Vec<&String> = seen
        .iter()
        .filter(|r| r.contains("mount=") && r.contains("from=team/app"))
        .collect();
    assert!(!mounts.is_empty(), "{seen:?}");
    for r in &mounts {
        assert!(
            r.contains("repository%3Ateam%2Fcopy%3Apull%2Cpush")
                && r.contains("repository%3Ateam%2Fapp%3Apull"),
            "the mount's token covers both repositories: {r}"
        );
    }
    let s = state.lock().unwrap();
    for l in m["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap().to_owned();
        assert!(s.blobs.contains(&("team/copy".to_owned(), d)));
    }
}

/// A registry double that can "die": while `broken`, a layer GET sends half
/// its bytes and an upload's PATCH or PUT is cut without an answer.
#[derive(Default)]
struct Flaky {
    broken: bool,
    /// The next layer GET without a range sends this many bytes and dies.
    cut_once_after: Option<usize>,
    /// Answers 200 with the whole blob to a GET with a `Range`.
    ignore_range: bool,
    blobs: std::collections::HashMap<String, Vec<u8>>,
    uploads: std::collections::HashMap<String, Vec<u8>>,
    manifests: std::collections::HashMap<String, Vec<u8>>,
    n: usize,
}

fn flaky_route(
    st: &Mutex<Flaky>,
    m: &str,
    path: &str,
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut s = st.lock().unwrap();
    let (p, query) = path.split_once('?').unwrap_or((path, ""));
    if p == "/v2/" {
        return (200, vec![], b"{}".to_vec());
    }
    if let Some(id) = p.strip_prefix("/upload/") {
        if s.broken {
            return (0, vec![], Vec::new());
        }
        s.uploads
            .entry(id.to_owned())
            .or_default()
            .extend_from_slice(body);
        if m == "PUT" {
            let digest = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("digest="))
                .unwrap_or("")
                .to_owned();
            let data = s.uploads.remove(id).unwrap_or_default();
            if format!("sha256:{:x}", sha2::Sha256::digest(&data)) != digest {
                return (400, vec![], b"{}".to_vec());
            }
            s.blobs.insert(digest, data);
            return (201, vec![], Vec::new());
        }
        return (202, vec![("Location".into(), p.to_owned())], Vec::new());
    }
    if p.ends_with("/blobs/uploads/") {
        s.n += 1;
        let loc = format!("/upload/{}", s.n);
        return (202, vec![("Location".into(), loc)], Vec::new());
    }
    if let Some((_, d)) = p.split_once("/blobs/") {
        let Some(b) = s.blobs.get(d).cloned() else {
            return (404, vec![], b"{}".to_vec());
        };
        if m == "HEAD" {
            return (200, vec![], Vec::new());
        }
        if b.len() > 1000 && !s.broken {
            if let Some(from) = request_range_start().filter(|_| !s.ignore_range) {
                let range = format!("bytes {from}-{}/{}", b.len() - 1, b.len());
                return (
                    206,
                    vec![("Content-Range".into(), range)],
                    b[from..].to_vec(),
                );
            }
            if request_range_start().is_none() {
                if let Some(n) = s.cut_once_after.take() {
                    return (1, vec![("x-cut".into(), n.to_string())], b);
                }
            }
        }
        // Layers (not the small config) are cut while broken.
        return (if s.broken && b.len() > 1000 { 1 } else { 200 }, vec![], b);
    }
    if let Some((repo, tag)) = p
        .strip_prefix("/v2/")
        .and_then(|r| r.split_once("/manifests/"))
    {
        let key = format!("{repo}:{tag}");
        if m == "PUT" {
            s.manifests.insert(key, body.to_vec());
            return (201, vec![], Vec::new());
        }
        if let Some(b) = s.manifests.get(&key) {
            return (
                200,
                vec![(
                    "Content-Type".into(),
                    "application/vnd.docker.distribution.manifest.v2+json".into(),
                )],
                b.clone(),
            );
        }
    }
    (404, vec![], b"{}".to_vec())
}

/// The store's lasting state: blobs, index, layer records (not scratch).
fn store_state(env: &Env) -> Vec<String> {
    let root = env.root();
    let mut out = Vec::new();
    for d in ["blobs", "snaplayers", "layer-sources"] {
        out.extend(
            common::snapshot(&root.join(d))
                .into_iter()
                .map(|l| format!("{d}/{l}")),
        );
    }
    out.push(fs_err::read_to_string(root.join("index.json")).unwrap_or_default());
    out
}

#[test]
fn a_registry_dying_during_a_push_or_a_pull_leaves_the_store_unchanged_and_a_retry_succeeds() {
    let state = Arc::new(Mutex::new(Flaky::default()));
    let st = Arc::clone(&state);
    let d = Double::start(Arc::new(
        move |m: &str, path: &str, _a: Option<&str>, body: &[u8]| flaky_route(&st, m, path, body),
    ));
    let env = build_env();
    // A layer large enough to be cut in the middle.
    let ctx = env.path("ctx-big");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN dd if=/dev/urandom of=/big bs=1M count=8 2>/dev/null\n",
    )
    .unwrap();
    env.ok(&["build", "-q", "-t", "big", ctx.to_str().unwrap()]);
    let image = format!("127.0.0.1:{}/big:1", d.port);
    env.ok(&["tag", "big", &image]);

    state.lock().unwrap().broken = true;
    let before = store_state(&env);
    let err = env.fails(&["push", &image]);
    eprintln!("push to a dying registry: {err}");
    assert!(err.contains(&format!("127.0.0.1:{}", d.port)), "{err}");
    assert!(
        state.lock().unwrap().manifests.is_empty(),
        "no manifest written"
    );
    assert_eq!(store_state(&env), before, "a failed push changed the store");
    state.lock().unwrap().broken = false;
    let digest = pushed_digest(&env.ok(&["push", &image]));

    let fresh = Env::new();
    fresh.ok(&["images"]);
    let before = store_state(&fresh);
    state.lock().unwrap().broken = true;
    let err = fresh.fails(&["pull", &image]);
    eprintln!("pull from a dying registry: {err}");
    assert!(err.contains(&image), "{err}");
    assert_eq!(
        store_state(&fresh),
        before,
        "a failed pull changed the store"
    );
    let tmp: Vec<_> = fs_err::read_dir(fresh.root().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "scratch left behind: {tmp:?}");
    state.lock().unwrap().broken = false;
    let out = fresh.ok(&["pull", &image]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert_eq!(image_id(&fresh, &image), image_id(&env, "big"));
}

#[test]
fn a_download_cut_midway_goes_on_with_a_range_or_starts_again_when_ranges_are_ignored() {
    let state = Arc::new(Mutex::new(Flaky::default()));
    let st = Arc::clone(&state);
    let d = Double::start(Arc::new(
        move |m: &str, path: &str, _a: Option<&str>, body: &[u8]| flaky_route(&st, m, path, body),
    ));
    let env = Env::new();
    let tar = env.path("rootfs.tar");
    mixed_rootfs(&tar);
    env.ok(&["import", tar.to_str().unwrap(), "mixed:1"]);
    let image = format!("127.0.0.1:{}/cut/mixed:1", d.port);
    env.ok(&["tag", "mixed:1", &image]);
    env.ok(&["push", &image]);
    let layer = {
        let s = state.lock().unwrap();
        let (_, b) = s
            .blobs
            .iter()
            .max_by_key(|(_, b)| b.len())
            .expect("a layer was pushed");
        assert!(b.len() > 2 << 20, "{}", b.len());
        s.blobs
            .iter()
            .find(|(_, v)| v.len() == b.len())
            .map(|(k, _)| k.clone())
            .unwrap()
    };
    let layer_gets = |d: &Double| -> Vec<String> {
        d.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("GET ") && l.contains(&layer))
            .cloned()
            .collect()
    };
    let cut = 1 << 20;
    for ignore_range in [false, true] {
        d.seen.lock().unwrap().clear();
        {
            let mut s = state.lock().unwrap();
            s.cut_once_after = Some(cut);
            s.ignore_range = ignore_range;
        }
        let fresh = Env::new();
        let out = fresh.ok(&["pull", &image]);
        assert!(out.contains("Pull complete"), "{out}");
        assert_eq!(image_id(&fresh, &image), image_id(&env, "mixed:1"));
        let gets = layer_gets(&d);
        assert_eq!(gets.len(), if ignore_range { 3 } else { 2 }, "{gets:?}");
        assert!(!gets[0].contains("range="), "{gets:?}");
        assert!(
            gets[1].ends_with(&format!("range=bytes={cut}-")),
            "the second GET asks for the rest: {gets:?}"
        );
        if ignore_range {
            // A 200 to the range: the download starts again, whole.
            assert!(!gets[2].contains("range="), "{gets:?}");
        }
        // The store is whole: its layer reads back (save checks it against
        // its diff ID) and a pull again finds everything there.
        let saved = fresh.path("saved.tar");
        fresh.ok(&["save", "-o", saved.to_str().unwrap(), &image]);
        let again = fresh.ok(&["pull", &image]);
        assert!(again.contains("Image is up to date"), "{again}");
    }
}

/// A registry double that wants Basic `user:secret` and serves the small image.
fn basic_auth_double() -> Double {
    let (manifest, config, config_digest, layer, layer_digest) = small_image();
    let good = format!("Basic {}", base64_encode(b"user:secret"));
    Double::start(Arc::new(
        move |_m: &str, path: &str, auth: Option<&str>, _b: &[u8]| {
            if auth != Some(good.as_str()) {
                return (
                    401,
                    vec![("WWW-Authenticate".into(), "Basic realm=\"double\"".into())],
                    b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}".to_vec(),
                );
            }
            if path == "/v2/" {
                return (200, vec![], b"{}".to_vec());
            }
            if path == "/v2/priv/app/manifests/1" {
                return (
                    200,
                    vec![(
                        "Content-Type".into(),
                        "application/vnd.docker.distribution.manifest.v2+json".into(),
                    )],
                    manifest.clone(),
                );
            }
            if path.ends_with(&config_digest) {
                return (200, vec![], config.clone());
            }
            if path.ends_with(&layer_digest) {
                return (200, vec![], layer.clone());
            }
            (404, vec![], b"{}".to_vec())
        },
    ))
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn login_stores_what_works_logout_removes_it_and_a_wrong_password_is_refused() {
    let d = basic_auth_double();
    let host = format!("127.0.0.1:{}", d.port);
    let image = format!("{host}/priv/app:1");
    let env = Env::new();
    let config = env.path("docker-config/config.json");

    let err = env.fails(&["pull", &image]);
    assert!(err.contains(&format!("run `rbuild login {host}`")), "{err}");

    let o = env.with_stdin(
        &["login", "-u", "user", "--password-stdin", &host],
        b"wrong\n",
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "login to {host} failed: unauthorized: incorrect username or password"
        )),
        "{err}"
    );
    assert!(
        !fs_err::read_to_string(&config)
            .unwrap_or_default()
            .contains(&host),
        "a refused login was stored"
    );

    let o = env.with_stdin(
        &["login", "-u", "user", "--password-stdin", &host],
        b"secret\n",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Login Succeeded\n");
    let stored: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(
        stored["auths"][&host]["auth"].as_str(),
        Some(base64_encode(b"user:secret").as_str()),
        "{stored}"
    );
    let out = env.ok(&["pull", &image]);
    assert!(out.contains("Pull complete"), "{out}");

    assert_eq!(
        env.ok(&["logout", &host]),
        format!("Removing login credentials for {host}\n")
    );
    assert!(!fs_err::read_to_string(&config).unwrap().contains(&host));
    assert_eq!(
        env.ok(&["logout", &host]),
        format!("Not logged in to {host}\n")
    );
    env.ok(&["rmi", &image]);
    let err = env.fails(&["pull", &image]);
    assert!(err.contains("rbuild login"), "{err}");
}

#[test]
fn login_without_a_terminal_or_credentials_says_so() {
    let d = basic_auth_double();
    let host = format!("127.0.0.1:{}", d.port);
    let env = Env::new();
    for args in [
        vec!["login", host.as_str()],
        vec!["login", "-u", "user", host.as_str()],
    ] {
        let err = env.fails(&args);
        assert!(
            err.contains("cannot perform an interactive login from a non TTY device")
                && err.contains("--password-stdin")
                && err.contains(&host),
            "{args:?}: {err}"
        );
    }
    assert!(
        !env.path("docker-config/config.json").exists(),
        "a failed login wrote the config"
    );
    assert!(d.seen.lock().unwrap().is_empty(), "the registry was asked");
}

/// The diff IDs with a `layer-sources/` record in `env`'s store.
fn layer_source_records(env: &Env) -> Vec<String> {
    let mut v: Vec<String> = fs_err::read_dir(env.root().join("layer-sources"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn layer_source_records_go_with_their_layers_on_rmi_and_prune() {
    let reg = Registry::start();
    let env = Env::new();
    env.import_rootfs("one:1", "records-one");
    env.import_rootfs("two:1", "records-two");
    let (a, b) = (
        format!("{}/rec/one:1", reg.host()),
        format!("{}/rec/two:1", reg.host()),
    );
    env.ok(&["tag", "one:1", &a]);
    env.ok(&["tag", "two:1", &b]);
    env.ok(&["push", &a]);
    env.ok(&["push", &b]);
    let diff_of = |name: &str| -> String {
        let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", name])).unwrap();
        v[0]["RootFS"]["Layers"][0]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_owned()
    };
    let (da, db) = (diff_of(&a), diff_of(&b));
    let mut both = vec![da.clone(), db.clone()];
    both.sort();
    assert_eq!(layer_source_records(&env), both);
    // rmi of one image: its layer goes, and so does its record; the other stays.
    env.ok(&["rmi", "one:1", &a]);
    assert_eq!(layer_source_records(&env), vec![db.clone()]);
    // A pull records where the layer came from; prune removes it with the layer.
    env.ok(&["pull", &a]);
    let mut both = vec![da, db];
    both.sort();
    assert_eq!(layer_source_records(&env), both);
    env.ok(&["image", "prune", "-a", "-f"]);
    assert_eq!(layer_source_records(&env), Vec::<String>::new());
    let blobs: Vec<String> = common::snapshot(&env.root().join("blobs"))
        .into_iter()
        .filter(|l| !l.ends_with('/'))
        .collect();
    assert_eq!(blobs, Vec::<String>::new());
}

/// Runs `rbuild ARGS` on a pseudo-terminal (python3's pty), answering each
/// prompt in `answers` (prompt, reply) as it appears; returns what the
/// terminal showed and the exit status.
fn on_a_pty(env: &Env, args: &[&str], answers: &[(&str, &str)]) -> (String, i32) {
    assert!(have("python3"), "python3 is missing: install python3");
    let script = r#"
import os, pty, sys, json, select, time
args, answers = json.loads(sys.argv[1]), json.loads(sys.argv[2])
pid, fd = pty.fork()
if pid == 0:
    os.execv(args[0], args)
seen, i, deadline = b"", 0, time.time() + 30
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.2)
    if r:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        seen += data
    if i < len(answers) and seen.decode("utf-8", "replace").endswith(answers[i][0]):
        time.sleep(0.2)
        os.write(fd, answers[i][1].encode() + b"\r")
        i += 1
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode("utf-8", "replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let mut argv = vec![common::BIN.to_owned()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let answers: Vec<[&str; 2]> = answers.iter().map(|(p, r)| [*p, *r]).collect();
    let o = Command::new("python3")
        .args([
            "-c",
            script,
            &serde_json::to_string(&argv).unwrap(),
            &serde_json::to_string(&answers).unwrap(),
        ])
        .env("RBUILD_ROOT", env.root())
        .env("DOCKER_CONFIG", env.path("docker-config"))
        .env("REGISTRY_AUTH_FILE", env.path("podman-auth.json"))
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        o.status.code().unwrap_or(-1),
    )
}

#[test]
fn login_on_a_terminal_asks_for_the_username_and_the_password_without_echo() {
    let d = basic_auth_double();
    let host = format!("127.0.0.1:{}", d.port);
    let env = Env::new();
    let config = env.path("docker-config/config.json");
    let (shown, code) = on_a_pty(
        &env,
        &["login", &host],
        &[("Username: ", "user"), ("Password: ", "secret")],
    );
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains("Username: user"),
        "the username is echoed: {shown:?}"
    );
    assert!(
        !shown.contains("secret"),
        "the password was echoed: {shown:?}"
    );
    assert!(shown.contains("Login Succeeded"), "{shown:?}");
    let stored: serde_json::Value =
        serde_json::from_str(&fs_err::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(
        stored["auths"][&host]["auth"].as_str(),
        Some(base64_encode(b"user:secret").as_str()),
        "{stored}"
    );
    env.ok(&["logout", &host]);
    // With -u, only the password is asked; a wrong one is refused and not stored.
    let (shown, code) = on_a_pty(
        &env,
        &["login", "-u", "user", &host],
        &[("Password: ", "nope")],
    );
    assert_ne!(code, 0, "{shown}");
    assert!(!shown.contains("Username:"), "{shown:?}");
    assert!(
        !shown.contains("nope"),
        "the password was echoed: {shown:?}"
    );
    assert!(
        shown.contains("incorrect username or password"),
        "{shown:?}"
    );
    assert!(!fs_err::read_to_string(&config).unwrap().contains(&host));
}

#[test]
fn a_credential_helper_on_the_path_gives_the_credentials_and_stores_a_login() {
    let d = basic_auth_double();
    let host = format!("127.0.0.1:{}", d.port);
    let image = format!("{host}/priv/app:1");
    let env = Env::new();
    let bin = env.path("bin");
    fs_err::create_dir_all(&bin).unwrap();
    let calls = env.path("helper-calls");
    let helper = bin.join("docker-credential-rbtest");
    fs_err::write(
        &helper,
        format!(
            "#!/bin/sh\nin=$(cat)\necho \"$1 $in\" >> {calls}\ncase $1 in\n\
             get) echo '{{\"ServerURL\":\"'$in'\",\"Username\":\"user\",\"Secret\":\"secret\"}}';;\n\
             store|erase) ;;\nesac\n",
            calls = calls.display()
        ),
    )
    .unwrap();
    fs_err::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config_dir = env.path("docker-config");
    fs_err::create_dir_all(&config_dir).unwrap();
    fs_err::write(
        config_dir.join("config.json"),
        format!("{{\"credHelpers\": {{\"{host}\": \"rbtest\"}}}}"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = env
        .cmd(&["pull", &image])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = fs_err::read_to_string(&calls).unwrap();
    assert!(log.contains(&format!("get {host}")), "{log}");

    // A login goes to the helper, not into the file.
    let mut c = env.cmd(&["login", "-u", "user", "--password-stdin", &host]);
    c.env("PATH", &path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = fs_err::read_to_string(&calls).unwrap();
    assert!(
        log.contains(&format!(
            "store {{\"ServerURL\":\"{host}\",\"Username\":\"user\",\"Secret\":\"secret\"}}"
        )),
        "{log}"
    );
    let file = fs_err::read_to_string(config_dir.join("config.json")).unwrap();
    assert!(
        !file.contains("secret") && !file.contains("c2VjcmV0"),
        "{file}"
    );
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    assert!(
        have("openssl"),
        "openssl is missing: install the openssl package"
    );
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn make_certs(dir: &std::path::Path) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=rbuild test CA",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        dir,
    );
    fs_err::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
        dir,
    );
}

#[test]
fn a_tls_registry_needs_its_ca_in_certs_d_or_the_insecure_setting() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let reg = Registry::start_with(&format!(
        "  tls:\n    certificate: {}\n    key: {}\n",
        certs.path().join("server.crt").display(),
        certs.path().join("server.key").display()
    ));
    let env = build_env();
    let image = format!("{}/tls:1", reg.host());
    env.ok(&["tag", "busybox", &image]);
    let err = env.fails(&["push", &image]);
    eprintln!("push to an unknown authority: {err}");
    let ca_path = env.root().join("certs.d").join(reg.host()).join("ca.crt");
    assert!(
        err.contains("certificate signed by unknown authority")
            && err.contains(&ca_path.display().to_string()),
        "{err}"
    );
    fs_err::create_dir_all(ca_path.parent().unwrap()).unwrap();
    fs_err::copy(certs.path().join("ca.crt"), &ca_path).unwrap();
    let digest = pushed_digest(&env.ok(&["push", &image]));
    assert!(
        reg.requests()
            .iter()
            .any(|r| r.starts_with("PUT /v2/tls/manifests/1")),
        "{:?}",
        reg.requests()
    );

    // Another root without the CA: refused, until the registry is insecure.
    let other = Env::new();
    other.ok(&["images"]);
    let err = other.fails(&["pull", &image]);
    assert!(err.contains("unknown authority"), "{err}");
    fs_err::write(
        other.root().join("config.toml"),
        format!("[registry.\"{}\"]\ninsecure = true\n", reg.host()),
    )
    .unwrap();
    let out = other.ok(&["pull", &image]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
}

#[test]
fn docker_hub_pulls_go_to_the_configured_mirror() {
    let reg = Registry::start();
    let src = build_env();
    let on_mirror = format!("{}/library/busybox:latest", reg.host());
    src.ok(&["tag", "busybox", &on_mirror]);
    src.ok(&["push", &on_mirror]);

    let env = Env::new();
    env.ok(&["images"]);
    fs_err::write(
        env.root().join("config.toml"),
        format!("[registry.\"docker.io\"]\nmirrors = [\"{}\"]\n", reg.host()),
    )
    .unwrap();
    let before = reg.requests().len();
    let out = env.ok(&["pull", "busybox"]);
    assert!(
        out.contains("latest: Pulling from library/busybox"),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("docker.io/library/busybox:latest"));
    assert!(
        reg.requests()[before..]
            .iter()
            .any(|r| r == "GET /v2/library/busybox/manifests/latest"),
        "{:?}",
        reg.requests()
    );
    assert_eq!(image_id(&env, "busybox"), image_id(&src, "busybox"));
}

#[test]
fn build_push_and_registry_outputs_push_what_was_built() {
    let reg = Registry::start();
    let env = build_env();
    let ctx = env.path("ctx-push");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo pushed > /p\n",
    )
    .unwrap();
    let ctx = ctx.to_str().unwrap();
    let tagged = format!("{}/built:1", reg.host());
    let o = env.run(&["build", "--push", "--progress=plain", "-t", &tagged, ctx]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("pushing manifest for {tagged}@sha256:")),
        "{err}"
    );
    let id = image_id(&env, &tagged);
    let digest = skopeo_digest(&tagged);
    assert!(err.contains(&digest), "{err}");

    for (spec, name) in [
        (
            "type=image,name={},push=true",
            format!("{}/named:2", reg.host()),
        ),
        ("type=registry,name={}", format!("{}/reg:3", reg.host())),
    ] {
        let spec = spec.replace("{}", &name);
        env.ok(&["build", "-q", "--output", &spec, ctx]);
        assert_eq!(skopeo_digest(&name), digest, "{spec}");
        assert_eq!(image_id(&env, &name), id);
    }
    let err = env.fails(&["build", "--push", ctx]);
    assert!(err.contains("pushing needs a name"), "{err}");
}

#[test]
fn a_built_layer_whose_snapshot_changed_since_is_not_pushed() {
    let reg = Registry::start();
    let env = build_env();
    let ctx = env.path("ctx-changed");
    fs_err::create_dir_all(&ctx).unwrap();
    fs_err::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nRUN echo one > /one\n",
    )
    .unwrap();
    let tagged = format!("{}/changed:1", reg.host());
    env.ok(&["build", "-q", "-t", &tagged, ctx.to_str().unwrap()]);
    // The step's layer is kept as its snapshot; a file added there makes
    // the tar written out for the push differ from the diff ID the image
    // names. The push is compressed while it is written out and uploaded
    // at once: the check at the end must fail it, with no blob committed
    // under that layer and no manifest.
    let mut changed = 0;
    for e in fs_err::read_dir(env.root().join("snapshots")).unwrap() {
        let dir = e.unwrap().path();
        let Ok(meta) = fs_err::read_to_string(dir.join("meta.json")) else {
            continue;
        };
        if dir.join("fs").is_dir() && !meta.contains(r#""kind":"layer""#) {
            fs_err::write(dir.join("fs/changed.txt"), "x").unwrap();
            changed += 1;
        }
    }
    assert!(changed >= 1, "no step snapshot found");
    let err = env.fails(&["push", &tagged]);
    let diff_ids = env.ok(&["inspect", "--format", "{{json .RootFS.Layers}}", &tagged]);
    let step: Vec<String> = serde_json::from_str(diff_ids.trim()).unwrap();
    let step = step.last().unwrap();
    assert!(
        err.contains(step.as_str()),
        "the error names the layer {step}: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let reqs = reg.requests();
    assert!(
        !reqs
            .iter()
            .any(|r| r.starts_with("PUT /v2/changed/manifests/")),
        "{reqs:?}"
    );
    // Each upload of the step's layer was started and never committed: the
    // layers committed (PUT with a digest) are the base's only.
    let committed = reqs
        .iter()
        .filter(|r| r.starts_with("PUT /v2/changed/blobs/uploads/"))
        .count();
    assert!(committed <= 1, "{reqs:?}");
}

/// The layers (digest, size) in `image`'s manifest (`skopeo inspect --raw`).
fn manifest_layers(image: &str) -> Vec<(String, u64)> {
    skopeo();
    let o = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_owned(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A rootfs tar of a few MiB: random files (which the push stores) and
/// text (which it compresses), the same bytes every time.
fn mixed_rootfs(path: &std::path::Path) {
    let mut x: u64 = 0x853c_49e6_748f_ea9b;
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..3 {
        let random: Vec<u8> = (0..(1 << 20) + 777 * i)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        let text: Vec<u8> = format!("line {i} of a text file in a layer\n")
            .bytes()
            .cycle()
            .take((1 << 20) + 333 * i)
            .collect();
        for (name, data) in [
            (format!("bin/r{i}"), random),
            (format!("doc/t{i}.txt"), text),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_600_000_000);
            h.set_cksum();
            b.append_data(&mut h, &name, &data[..]).unwrap();
        }
    }
    fs_err::write(path, b.into_inner().unwrap()).unwrap();
}

#[test]
fn pushed_layers_are_the_same_bytes_on_one_core_or_all_and_compression_level_applies() {
    assert!(have("taskset"), "taskset is missing: install util-linux");
    let reg = Registry::start();
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    assert!(
        cores > 1,
        "this test needs more than one CPU to compare with one"
    );
    // The same layer in two stores, pushed on one core and on all of them.
    let mut digests = Vec::new();
    for (name, one_core) in [("one-core", true), ("all-cores", false)] {
        let env = Env::new();
        let tar = env.path("rootfs.tar");
        mixed_rootfs(&tar);
        env.ok(&["import", tar.to_str().unwrap(), "mixed:1"]);
        let image = format!("{}/{name}/mixed:1", reg.host());
        env.ok(&["tag", "mixed:1", &image]);
        let mut c = if one_core {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", common::BIN]);
            c
        } else {
            Command::new(common::BIN)
        };
        let o = c
            .args(["push", &image])
            .env("RBUILD_ROOT", env.root())
            .env("DOCKER_CONFIG", env.path("docker-config"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        digests.push(manifest_layers(&image));
    }
    // (The images differ: each import has its own creation time.)
    assert_eq!(digests[0], digests[1], "the thread count changed the bytes");
    let default_size = digests[0][0].1;
    // The random half is stored: the layer is more than 3 MiB.
    assert!(default_size > 3 << 20, "{default_size}");

    // compression-level= of a build's push: each level is its own bytes
    // (fresh registries, so nothing is reused), and both pull back.
    let env = build_env();
    let ctx = env.path("ctx-level");
    fs_err::create_dir_all(&ctx).unwrap();
    mixed_rootfs(&ctx.join("rootfs.tar"));
    fs_err::write(
        ctx.join("Dockerfile"),
        "FROM busybox\nADD rootfs.tar /data/\n",
    )
    .unwrap();
    let ctx = ctx.to_str().unwrap();
    let mut sizes = Vec::new();
    for level in ["0", "9"] {
        let reg = Registry::start();
        let name = format!("{}/lvl:{level}", reg.host());
        env.ok(&[
            "build",
            "-q",
            "--output",
            &format!("type=registry,name={name},compression-level={level}"),
            ctx,
        ]);
        let size = manifest_layers(&name).last().unwrap().1;
        let fresh = Env::new();
        fresh.ok(&["pull", &name]);
        assert_eq!(image_id(&fresh, &name), image_id(&env, &name));
        sizes.push(size);
        drop(reg);
    }
    // Level 0 stores everything (more than the 6 MiB of data); level 9
    // compresses the text.
    assert!(sizes[0] > 6 << 20, "{sizes:?}");
    assert!(sizes[1] < 4 << 20, "{sizes:?}");
    let err = env.fails(&[
        "build",
        "--output",
        "type=registry,name=x/y:1,compression-level=12",
        ctx,
    ]);
    assert!(
        err.contains("compression-level=12 is out of range for gzip (0-9)"),
        "{err}"
    );
}

#[test]
fn on_a_terminal_pull_and_push_show_a_bar_per_layer() {
    assert!(have("script"), "script is missing: install util-linux");
    let reg = Registry::start();
    let env = build_env();
    let image = format!("{}/tty:1", reg.host());
    env.ok(&["tag", "busybox", &image]);
    let in_tty = |env: &Env, args: &str| -> String {
        let o = Command::new("script")
            .args(["-qec", &format!("{} {args}", common::BIN), "/dev/null"])
            .env("RBUILD_ROOT", env.root())
            .env("DOCKER_CONFIG", env.path("docker-config"))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{out}");
        out
    };
    let out = in_tty(&env, &format!("push {image}"));
    assert!(out.contains('\u{1b}'), "no terminal rendering: {out:?}");
    assert!(out.contains("B/s"), "no byte counts and rate: {out:?}");
    assert!(out.contains(": Pushed"), "{out:?}");
    let digest = pushed_digest(&out);
    let fresh = Env::new();
    let out = in_tty(&fresh, &format!("pull {image}"));
    assert!(out.contains("B/s"), "no byte counts and rate: {out:?}");
    assert!(out.contains(": Pull complete"), "{out:?}");
    assert!(out.contains(&format!("Digest: {digest}")), "{out:?}");
    assert!(out.trim_end().ends_with(&image), "{out:?}");
}

#[test]
fn a_zstd_push_makes_an_oci_manifest_that_pulls_back() {
    let reg = Registry::start();
    let env = build_env();
    build_app(&env, "app", "zstd");
    let ctx = env.path("ctx-zstd");
    let name = format!("{}/zst:1", reg.host());
    env.ok(&[
        "build",
        "-q",
        "--output",
        &format!("type=registry,name={name},compression=zstd"),
        ctx.to_str().unwrap(),
    ]);
    skopeo();
    let o = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{name}"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        m["mediaType"].as_str(),
        Some("application/vnd.oci.image.manifest.v1+json"),
        "{m}"
    );
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"].as_str(),
            Some("application/vnd.oci.image.layer.v1.tar+zstd"),
            "{m}"
        );
    }
    let fresh = Env::new();
    fresh.ok(&["pull", &name]);
    assert_eq!(image_id(&fresh, &name), image_id(&env, "app"));
    assert_eq!(
        fresh.ok(&["run", "--rm", &name, "cat", "/app.txt"]).trim(),
        "zstd"
    );
}

#[test]
fn without_a_network_a_docker_hub_pull_fails_fast_naming_docker_io() {
    // A network namespace with only `lo`: nothing leaves this machine.
    assert!(have("unshare"), "unshare is missing: install util-linux");
    let env = Env::new();
    let t = Instant::now();
    let o = Command::new("unshare")
        .args(["-n", common::BIN, "pull", "busybox:1.36"])
        .env("RBUILD_ROOT", env.root())
        .env("DOCKER_CONFIG", env.path("docker-config"))
        .output()
        .unwrap();
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        err.contains("busybox:1.36") && err.contains("cannot reach registry docker.io"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn podman_auth_files_and_identity_tokens_are_used_for_bearer_tokens() {
    let (manifest, config, config_digest, layer, layer_digest) = small_image();
    let forms = Arc::new(Mutex::new(Vec::<String>::new()));
    let f2 = Arc::clone(&forms);
    let port = Arc::new(Mutex::new(0u16));
    let p2 = Arc::clone(&port);
    let basic = format!("Basic {}", base64_encode(b"user:secret"));
    let d = Double::start(Arc::new(
        move |m: &str, path: &str, auth: Option<&str>, body: &[u8]| {
            let port = *p2.lock().unwrap();
            if path.starts_with("/token") {
                let body = String::from_utf8_lossy(body).into_owned();
                f2.lock().unwrap().push(format!("{m} {body}"));
                let token = if m == "POST"
                    && body.contains("grant_type=refresh_token")
                    && body.contains("refresh_token=idtok")
                {
                    "tok-oauth"
                } else if m == "GET" && auth == Some(basic.as_str()) {
                    "tok-basic"
                } else {
                    return (401, vec![], b"{}".to_vec());
                };
                let key = if m == "POST" { "access_token" } else { "token" };
                return (
                    200,
                    vec![],
                    serde_json::to_vec(&serde_json::json!({ key: token })).unwrap(),
                );
            }
            if !matches!(auth, Some("Bearer tok-basic" | "Bearer tok-oauth")) {
                return (
                    401,
                    vec![(
                        "WWW-Authenticate".into(),
                        format!(
                            "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"double\""
                        ),
                    )],
                    b"{}".to_vec(),
                );
            }
            if path == "/v2/app/manifests/1" {
                return (
                    200,
                    vec![(
                        "Content-Type".into(),
                        "application/vnd.docker.distribution.manifest.v2+json".into(),
                    )],
                    manifest.clone(),
                );
            }
            if path.ends_with(&config_digest) {
                return (200, vec![], config.clone());
            }
            if path.ends_with(&layer_digest) {
                return (200, vec![], layer.clone());
            }
            (404, vec![], b"{}".to_vec())
        },
    ));
    *port.lock().unwrap() = d.port;
    let host = format!("127.0.0.1:{}", d.port);
    let image = format!("{host}/app:1");

    // podman's auth file (docker's has nothing for this registry).
    let env = Env::new();
    fs_err::write(
        env.path("podman-auth.json"),
        format!(
            "{{\"auths\": {{\"{host}\": {{\"auth\": \"{}\"}}}}}}",
            base64_encode(b"user:secret")
        ),
    )
    .unwrap();
    env.ok(&["pull", &image]);
    assert!(
        forms.lock().unwrap().iter().any(|f| f.starts_with("GET")),
        "{:?}",
        forms.lock().unwrap()
    );

    // docker's identity token: an OAuth2 refresh token, POSTed to the realm.
    let env = Env::new();
    fs_err::create_dir_all(env.path("docker-config")).unwrap();
    fs_err::write(
        env.path("docker-config/config.json"),
        format!("{{\"auths\": {{\"{host}\": {{\"identitytoken\": \"idtok\"}}}}}}"),
    )
    .unwrap();
    forms.lock().unwrap().clear();
    env.ok(&["pull", &image]);
    let seen = forms.lock().unwrap().clone();
    assert!(
        seen.iter().any(|f| f.starts_with("POST")
            && f.contains("grant_type=refresh_token")
            && f.contains("service=double")
            && f.contains("scope=repository%3Aapp%3Apull")),
        "{seen:?}"
    );
}

#[test]
fn a_registry_that_wants_a_client_certificate_gets_the_one_in_certs_d() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=rbuild test client",
        ],
        certs.path(),
    );
    fs_err::write(
        certs.path().join("client.cnf"),
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.cert",
            "-days",
            "2",
            "-extfile",
            "client.cnf",
        ],
        certs.path(),
    );
    let reg = Registry::start_with(&format!(
        "  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}\n",
        certs.path().join("server.crt").display(),
        certs.path().join("server.key").display(),
        certs.path().join("ca.crt").display()
    ));
    let env = build_env();
    let image = format!("{}/mtls:1", reg.host());
    env.ok(&["tag", "busybox", &image]);
    let dir = env.root().join("certs.d").join(reg.host());
    fs_err::create_dir_all(&dir).unwrap();
    fs_err::copy(certs.path().join("ca.crt"), dir.join("ca.crt")).unwrap();
    // The CA alone: the registry refuses the connection.
    let err = env.fails(&["push", &image]);
    assert!(
        err.contains(&reg.host()) && err.contains("client certificate"),
        "{err}"
    );
    for f in ["client.cert", "client.key"] {
        fs_err::copy(certs.path().join(f), dir.join(f)).unwrap();
    }
    let digest = pushed_digest(&env.ok(&["push", &image]));
    let fresh = Env::new();
    fresh.ok(&["images"]);
    let fdir = fresh.root().join("certs.d").join(reg.host());
    fs_err::create_dir_all(&fdir).unwrap();
    for f in ["ca.crt", "client.cert", "client.key"] {
        fs_err::copy(dir.join(f), fdir.join(f)).unwrap();
    }
    let out = fresh.ok(&["pull", &image]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
}

#[test]
fn login_to_a_tls_registry_with_htpasswd_then_push_pull_and_logout() {
    assert!(
        have("htpasswd"),
        "htpasswd is missing: install the apache2-utils package"
    );
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let o = Command::new("htpasswd")
        .args(["-nbB", "tester", "s3cret"])
        .output()
        .unwrap();
    assert!(o.status.success());
    fs_err::write(certs.path().join("htpasswd"), &o.stdout).unwrap();
    let reg = Registry::start_with(&format!(
        "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: rbuild-test\n    path: {}\n",
        certs.path().join("server.crt").display(),
        certs.path().join("server.key").display(),
        certs.path().join("htpasswd").display()
    ));
    let host = reg.host();
    let env = build_env();
    let dir = env.root().join("certs.d").join(&host);
    fs_err::create_dir_all(&dir).unwrap();
    fs_err::copy(certs.path().join("ca.crt"), dir.join("ca.crt")).unwrap();
    let image = format!("{host}/private:1");
    env.ok(&["tag", "busybox", &image]);

    let err = env.fails(&["push", &image]);
    assert!(err.contains(&format!("run `rbuild login {host}`")), "{err}");
    let o = env.with_stdin(
        &["login", "-u", "tester", "--password-stdin", &host],
        b"nope\n",
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("incorrect username or password"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = env.with_stdin(
        &["login", "-u", "tester", "--password-stdin", &host],
        b"s3cret\n",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let digest = pushed_digest(&env.ok(&["push", &image]));
    env.ok(&["rmi", &image]);
    let out = env.ok(&["pull", &image]);
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    env.ok(&["logout", &host]);
    let err = env.fails(&["pull", &image]);
    assert!(err.contains("rbuild login"), "{err}");
}

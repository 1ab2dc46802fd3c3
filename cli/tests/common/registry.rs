//! A real `docker-registry` (Debian's `docker-registry` package) on
//! 127.0.0.1 with temporary storage, for tests that push and pull; what it
//! served is read from its access log.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::have;

/// A `docker-registry serve` on a free loopback port, killed on drop.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// With `http_extra` YAML under `http:` (e.g. `tls:`).
    pub fn start_with(http_extra: &str) -> Self {
        assert!(
            have("docker-registry"),
            "docker-registry is missing: install the docker-registry package"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        fs_err::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n{http_extra}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = fs_err::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap().into_file())
            .stderr(log.into_file())
            .spawn()
            .unwrap();
        let r = Self { dir, port, child };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "docker-registry did not listen on {port}: {}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        fs_err::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The requests served so far (`METHOD PATH`), in order.
    pub fn requests(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                let start = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
                    .iter()
                    .filter_map(|m| l.find(&format!("\"{m} ")))
                    .min()?;
                let rest = &l[start + 1..];
                let end = rest.find(" HTTP/")?;
                Some(rest[..end].to_owned())
            })
            .collect()
    }

    /// The digests of the blobs downloaded (`GET .../blobs/DIGEST`) among
    /// `requests`.
    pub fn blob_gets(requests: &[String]) -> Vec<String> {
        requests
            .iter()
            .filter(|r| r.starts_with("GET ") && r.contains("/blobs/sha256:"))
            .filter_map(|r| r.rsplit('/').next())
            .map(|d| d.split('?').next().unwrap_or(d).to_owned())
            .collect()
    }

    /// Where the registry keeps the bytes of blob `digest` (`sha256:...`).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 request to `reg` (no client library needed):
/// (status, `Location` header, body).
pub fn http(
    reg: &Registry,
    method: &str,
    path: &str,
    ctype: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    use std::io::{Read as _, Write as _};
    let mut s = TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reg.host(),
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, location, resp[split + 4..].to_vec())
}

/// Uploads `data` as a blob of `repo` (monolithic); returns its digest.
pub fn put_blob(reg: &Registry, repo: &str, data: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(data));
    let (st, loc, _) = http(
        reg,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        "application/octet-stream",
        b"",
    );
    assert_eq!(st, 202, "starting an upload");
    let path = loc
        .strip_prefix(&format!("http://{}", reg.host()))
        .unwrap_or(&loc)
        .to_owned();
    let sep = if path.contains('?') { '&' } else { '?' };
    let (st, _, body) = http(
        reg,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        "application/octet-stream",
        data,
    );
    assert_eq!(st, 201, "blob upload: {}", String::from_utf8_lossy(&body));
    digest
}

/// Puts `manifest` under `repo:tag`.
pub fn put_manifest(reg: &Registry, repo: &str, tag: &str, media_type: &str, manifest: &[u8]) {
    let (st, _, body) = http(
        reg,
        "PUT",
        &format!("/v2/{repo}/manifests/{tag}"),
        media_type,
        manifest,
    );
    assert_eq!(st, 201, "manifest PUT: {}", String::from_utf8_lossy(&body));
}

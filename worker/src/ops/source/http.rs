//! `SourceOp::Http`: a small HTTP/1.1 client (`http://` and `https://`, TLS by
//! rustls with the system roots, which honour `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`), the download stored as a one-file snapshot.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;

use rbuild_snapshotter::{Digest, HashingWriter};

use rbuild_solver::progress::VertexLogger;
use rbuild_solver::{ExecError, ResultRef};

use crate::state::{Inner, err, snap_ref};

struct Url {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl Url {
    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// `host` or `host:port` when the port is not the scheme's default.
    fn authority(&self) -> String {
        if self.port == if self.tls { 443 } else { 80 } {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The absolute URL a `Location` header points to.
    fn join(&self, loc: &str) -> String {
        if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_owned()
        } else if let Some(rest) = loc.strip_prefix("//") {
            format!("{}://{rest}", self.scheme())
        } else if loc.starts_with('/') {
            format!("{}://{}{loc}", self.scheme(), self.authority())
        } else {
            let path = self.path.split('?').next().unwrap_or("/");
            let dir = &path[..=path.rfind('/').unwrap_or(0)];
            format!("{}://{}{dir}{loc}", self.scheme(), self.authority())
        }
    }
}

fn parse_url(url: &str) -> Result<Url, ExecError> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(ExecError::msg(format!("{url}: not an http(s) URL")));
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.to_owned(),
            p.parse()
                .map_err(|_| ExecError::msg(format!("{url}: bad port")))?,
        ),
        _ => (hostport.to_owned(), if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(ExecError::msg(format!("{url}: no host")));
    }
    Ok(Url {
        tls,
        host,
        port,
        path: path.split('#').next().unwrap_or("/").to_owned(),
    })
}

/// A connection, plain or TLS.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            // Many servers close without a TLS close_notify; treat that as the
            // end of the stream like curl does (a declared Content-Length or
            // chunked framing still catches truncation).
            Conn::Tls(s) => match s.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// The client TLS config: the ring provider and the system roots
/// (`SSL_CERT_FILE` / `SSL_CERT_DIR` override them).
fn tls_config(url: &str) -> Result<Arc<rustls::ClientConfig>, ExecError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let why = loaded
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(ExecError::msg(format!(
            "{url}: no usable root certificates to verify the server ({why}); set SSL_CERT_FILE"
        )));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| crate::error::context(format!("{url}: TLS setup"), e))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A readable reason for a failed handshake.
fn tls_reason(e: &std::io::Error) -> String {
    use rustls::{CertificateError as C, Error};
    let Some(Error::InvalidCertificate(c)) = e.get_ref().and_then(|i| i.downcast_ref::<Error>())
    else {
        return e.to_string();
    };
    match c {
        C::UnknownIssuer => "certificate signed by an unknown authority".to_owned(),
        C::Expired | C::ExpiredContext { .. } => "certificate has expired".to_owned(),
        C::NotValidYet | C::NotValidYetContext { .. } => "certificate is not valid yet".to_owned(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "certificate is not valid for this host name".to_owned()
        }
        C::Revoked => "certificate has been revoked".to_owned(),
        C::BadSignature => "certificate has a bad signature".to_owned(),
        other => format!("invalid certificate: {other:?}"),
    }
}

/// Connects to the URL's host, with a finished TLS handshake for https.
fn connect(
    url: &str,
    u: &Url,
    tls: &mut Option<Arc<rustls::ClientConfig>>,
) -> Result<Conn, ExecError> {
    let net = |e: std::io::Error| crate::error::context(url.to_string(), e);
    let host = u.host.trim_start_matches('[').trim_end_matches(']');
    let mut sock = TcpStream::connect((host, u.port)).map_err(net)?;
    sock.set_read_timeout(Some(Duration::from_secs(300)))
        .map_err(net)?;
    if !u.tls {
        return Ok(Conn::Plain(sock));
    }
    let config = match tls {
        Some(c) => Arc::clone(c),
        None => Arc::clone(tls.insert(tls_config(url)?)),
    };
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| crate::error::context(format!("{url}: bad TLS server name {host:?}"), e))?;
    let mut conn = rustls::ClientConnection::new(config, name)
        .map_err(|e| crate::error::context(format!("{url}: TLS setup"), e))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| {
            ExecError::msg(format!("{url}: TLS handshake failed: {}", tls_reason(&e)))
        })?;
    }
    Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(conn, sock))))
}

/// The body of a response, de-chunked.
pub(crate) enum Body<R> {
    Length(std::io::Take<R>),
    Eof(R),
    Chunked { r: R, left: u64, done: bool },
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Body::Length(t) => t.read(buf),
            Body::Eof(r) => r.read(buf),
            Body::Chunked { r, left, done } => {
                if *done {
                    return Ok(0);
                }
                if *left == 0 {
                    let mut line = String::new();
                    r.read_line(&mut line)?;
                    if line.trim().is_empty() {
                        line.clear();
                        r.read_line(&mut line)?;
                    }
                    let size = line.trim().split(';').next().unwrap_or("");
                    *left = u64::from_str_radix(size, 16)
                        .map_err(|_| std::io::Error::other("bad chunk size"))?;
                    if *left == 0 {
                        *done = true;
                        return Ok(0);
                    }
                }
                let max = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                let n = r.read(&mut buf[..max])?;
                if n == 0 {
                    return Err(std::io::Error::other("truncated chunked body"));
                }
                *left -= n as u64;
                Ok(n)
            }
        }
    }
}

/// `Wed, 21 Oct 2015 07:28:00 GMT` (RFC 7231 IMF-fixdate) → Unix seconds.
fn parse_http_date(s: &str) -> Option<i64> {
    let mut it = s.split_whitespace().skip(1);
    let day: i64 = it.next()?.parse().ok()?;
    let month = it.next()?;
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(str::parse::<i64>);
    let (h, m, sec) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mon = u32::try_from(months.iter().position(|&x| x == month)?).ok()? + 1;
    let days = rbuild_oci::time::days_from_civil(year, mon, u32::try_from(day).ok()?);
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

pub(crate) struct Response {
    pub(crate) body: Body<BufReader<Conn>>,
    name: String,
    mtime: i64,
    pub(crate) length: Option<u64>,
}

pub(crate) fn get(url: &str) -> Result<Response, ExecError> {
    let mut url = url.to_owned();
    let mut tls = None;
    for _ in 0..10 {
        let u = parse_url(&url)?;
        let net = |e: std::io::Error| crate::error::context(url.clone(), e);
        let mut stream = connect(&url, &u, &mut tls)?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: rbuild\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            u.path,
            u.authority()
        );
        stream.write_all(request.as_bytes()).map_err(net)?;
        stream.flush().map_err(net)?;
        let mut r = BufReader::new(stream);
        let mut status = String::new();
        r.read_line(&mut status).map_err(net)?;
        let code: u16 = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| ExecError::msg(format!("{url}: bad HTTP response {status:?}")))?;
        let mut length = None;
        let mut chunked = false;
        let mut location = None;
        let mut disposition = None;
        let mut mtime = 0;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).map_err(net)? == 0 {
                break;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let v = v.trim();
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.parse::<u64>().ok(),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "location" => location = Some(v.to_owned()),
                    "content-disposition" => disposition = Some(v.to_owned()),
                    "last-modified" => mtime = parse_http_date(v).unwrap_or(0),
                    _ => {}
                }
            }
        }
        if (300..400).contains(&code) {
            let loc = location
                .ok_or_else(|| ExecError::msg(format!("{url}: redirect without Location")))?;
            url = u.join(&loc);
            continue;
        }
        if !(200..300).contains(&code) {
            return Err(ExecError::msg(format!(
                "{url}: invalid response status {}",
                status.trim()
            )));
        }
        let name = disposition
            .and_then(|d| {
                d.split(';')
                    .find_map(|p| p.trim().strip_prefix("filename=").map(str::to_owned))
            })
            .map(|n| n.trim_matches('"').to_owned())
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .unwrap_or_else(|| {
                let path = u.path.split('?').next().unwrap_or("");
                let base = path.rsplit('/').next().unwrap_or("");
                if base.is_empty() {
                    "index".to_owned()
                } else {
                    base.to_owned()
                }
            });
        let body = if chunked {
            Body::Chunked {
                r,
                left: 0,
                done: false,
            }
        } else if let Some(n) = length {
            Body::Length(r.take(n))
        } else {
            Body::Eof(r)
        };
        return Ok(Response {
            body,
            name,
            mtime,
            length: if chunked { None } else { length },
        });
    }
    Err(ExecError::msg(format!("{url}: too many redirects")))
}

pub(crate) fn download(
    inner: &Inner,
    url: &str,
    checksum: Option<&str>,
    filename: Option<&str>,
    chmod: Option<u32>,
    logger: &VertexLogger,
) -> Result<ResultRef, ExecError> {
    let expected = checksum
        .map(|c| {
            Digest::parse(c).map_err(|_| {
                ExecError::msg(format!(
                    "invalid checksum {c:?}: expected sha256:<64 hex digits>"
                ))
            })
        })
        .transpose()?;
    let Response {
        mut body,
        name,
        mtime,
        length,
    } = get(url)?;
    let name = filename.map_or(name, str::to_owned);
    let active = inner.snapshots.prepare(None, "http").map_err(err)?;
    let path = active.upper.join(&name);
    let result = (|| {
        let f = fs_err::File::create(&path).map_err(err)?;
        let mut w = HashingWriter::new(f);
        let mut buf = vec![0u8; 256 * 1024];
        let mut done = 0u64;
        loop {
            let n = body
                .read(&mut buf)
                .map_err(|e| crate::error::context(url.to_string(), e))?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n]).map_err(err)?;
            done += n as u64;
            logger.progress(done, length);
        }
        if length.is_some_and(|l| l != done) {
            return Err(ExecError::msg(format!("{url}: connection closed early")));
        }
        let (mut f, digest, _) = w.finish();
        f.flush().map_err(err)?;
        if let Some(e) = &expected {
            if *e != digest {
                return Err(ExecError::msg(format!(
                    "{url}: digest mismatch: expected {e}, got {digest}"
                )));
            }
        }
        fs_err::set_permissions(
            &path,
            std::fs::Permissions::from_mode(chmod.unwrap_or(0o600) & 0o7777),
        )
        .map_err(err)?;
        // BuildKit: the Last-Modified time, else the epoch.
        let t = filetime::FileTime::from_unix_time(mtime, 0);
        filetime::set_file_mtime(&path, t).map_err(err)?;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(snap_ref(&inner.snapshots.commit(active).map_err(err)?)),
        Err(e) => {
            let _ = inner.snapshots.abort(active);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_dates() {
        assert_eq!(
            super::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(1_445_412_480)
        );
        assert_eq!(
            super::parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(0)
        );
        assert_eq!(super::parse_http_date("yesterday"), None);
    }

    #[test]
    fn urls_and_redirect_targets() {
        let u = super::parse_url("https://example.com/a/b.tar?x=1#frag").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("example.com", 443));
        assert_eq!(u.path, "/a/b.tar?x=1");
        assert_eq!(u.authority(), "example.com");
        assert_eq!(u.join("/c"), "https://example.com/c");
        assert_eq!(u.join("c.tar"), "https://example.com/a/c.tar");
        assert_eq!(u.join("//other.org/x"), "https://other.org/x");
        assert_eq!(u.join("http://h:8/y"), "http://h:8/y");
        let u = super::parse_url("http://127.0.0.1:8080").unwrap();
        assert!(!u.tls);
        assert_eq!(u.authority(), "127.0.0.1:8080");
        assert_eq!(u.join("/z"), "http://127.0.0.1:8080/z");
        assert!(super::parse_url("ftp://x/y").is_err());
    }
}

//! The HTTP side: one reqwest client per registry host, the scheme chosen by a
//! ping of `/v2/`, authentication (Basic, Bearer tokens cached per scope), and
//! retries with backoff on connection errors, 5xx and 429.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::Mutex;

use crate::auth::{Challenge, CredentialSource, Credentials, parse_challenge};
use crate::error::{Error, Result};
use crate::reference::{api_host, is_loopback};

/// Per-registry settings and limits.
#[derive(Clone, Debug)]
pub struct Options {
    /// Registries (`host[:port]` as references name them) that may use plain
    /// http and https without verification. Loopback registries may use plain
    /// http anyway.
    pub insecure: Vec<String>,
    /// Extra CA certificates per registry (`host[:port]`), trusted beside the
    /// system's.
    pub extra_roots: HashMap<String, Vec<CertificateDer<'static>>>,
    /// `certs.d` directories, searched in order: the first holding a
    /// `HOST[:PORT]/` directory gives that registry's CAs (`*.crt`) and client
    /// certificate (`client.cert` + `client.key`), as podman and docker read them.
    pub certs_dirs: Vec<PathBuf>,
    /// How long a TCP/TLS connect may take.
    pub connect_timeout: Duration,
    /// How long the connection may stay silent while a response is read.
    pub read_timeout: Duration,
    /// Attempts after the first for transient failures.
    pub retries: u32,
    /// The first backoff delay (doubled after each attempt).
    pub backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            extra_roots: HashMap::new(),
            certs_dirs: Vec::new(),
            connect_timeout: Duration::from_secs(4),
            read_timeout: Duration::from_secs(60),
            retries: 4,
            backoff: Duration::from_millis(200),
        }
    }
}

/// A body that can be made again for a retry.
pub(crate) enum BodySource {
    Empty,
    Bytes(bytes::Bytes),
    /// `len` bytes of a file from `offset`, streamed.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
    /// A stream that can be sent once (no retry).
    Once(std::sync::Mutex<Option<reqwest::Body>>),
}

impl BodySource {
    async fn make(&self) -> Result<Option<reqwest::Body>> {
        Ok(match self {
            Self::Empty => None,
            Self::Bytes(b) => Some(reqwest::Body::from(b.clone())),
            Self::File { path, offset, len } => {
                let mut f = fs_err::tokio::File::open(path).await?;
                f.seek(std::io::SeekFrom::Start(*offset)).await?;
                let stream = tokio_util::io::ReaderStream::with_capacity(
                    f.into_parts().0.take(*len),
                    256 * 1024,
                );
                Some(reqwest::Body::wrap_stream(stream))
            }
            Self::Once(b) => Some(
                b.lock()
                    .map_err(|_| std::io::Error::other("body lock poisoned"))?
                    .take()
                    .ok_or_else(|| std::io::Error::other("a streamed body cannot be sent twice"))?,
            ),
        })
    }
}

/// One registry host: its client, scheme, challenge and tokens.
pub(crate) struct Host {
    /// The registry as references name it.
    pub(crate) registry: String,
    http: reqwest::Client,
    /// `https://host` or `http://host`.
    pub(crate) base: String,
    challenge: Mutex<Option<Challenge>>,
    creds: Option<Credentials>,
    /// Bearer tokens by scope set.
    tokens: Mutex<HashMap<String, String>>,
}

/// A distribution API client. Cheap to share (`Arc`); hosts are set up on
/// first use.
pub struct Client {
    pub(crate) opts: Options,
    creds: Arc<dyn CredentialSource>,
    hosts: Mutex<HashMap<String, Arc<Host>>>,
}

/// The text of an error and its causes.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

enum Failure {
    /// The certificate could not be verified.
    Certificate(String),
    /// Any other TLS failure (a plain-http server answering, a bad handshake).
    Tls(String),
    /// Connection refused, a name that does not resolve, a connect timeout.
    Connect(String),
    /// The connection broke after it was made.
    Broken(String),
}

fn classify(e: &reqwest::Error) -> Failure {
    let text = chain(e);
    let mut root: &(dyn std::error::Error + 'static) = e;
    while let Some(c) = root.source() {
        root = c;
    }
    let url = e.url().map(|u| format!(" ({u})")).unwrap_or_default();
    let short = format!("{root}{url}");
    if text.contains("UnknownIssuer")
        || text.contains("unknown issuer")
        || text.contains("invalid peer certificate")
    {
        Failure::Certificate(short)
    } else if text.contains("corrupt message")
        || text.contains("InvalidContentType")
        || text.contains("tls")
        || text.contains("TLS")
        || text.contains("handshake")
        || text.contains("fatal alert")
    {
        Failure::Tls(short)
    } else {
        // The innermost cause says it best (`Connection refused (os error
        // 111)`, a DNS failure); the URL says where.
        if e.is_timeout() {
            Failure::Connect(format!("timed out: {short}"))
        } else if e.is_connect() {
            Failure::Connect(short)
        } else {
            Failure::Broken(short)
        }
    }
}

fn failure_error(registry: &str, f: Failure, opts: &Options) -> Error {
    match f {
        Failure::Certificate(reason)
            if reason.contains("UnknownIssuer") || reason.contains("unknown issuer") =>
        {
            let dir = opts
                .certs_dirs
                .first()
                .map_or_else(|| PathBuf::from("certs.d"), Clone::clone);
            Error::UnknownAuthority {
                registry: registry.to_owned(),
                reason,
                ca_path: dir.join(registry).join("ca.crt").display().to_string(),
            }
        }
        Failure::Tls(reason)
            if reason.contains("CertificateRequired")
                || reason.contains("BadCertificate")
                || reason.contains("HandshakeFailure") =>
        {
            let dir = opts
                .certs_dirs
                .first()
                .map_or_else(|| PathBuf::from("certs.d"), Clone::clone);
            Error::Tls {
                registry: registry.to_owned(),
                reason: format!(
                    "{reason}: the registry may want a client certificate: put client.cert \
                     and client.key in {}",
                    dir.join(registry).display()
                ),
            }
        }
        Failure::Certificate(reason) | Failure::Tls(reason) => Error::Tls {
            registry: registry.to_owned(),
            reason,
        },
        Failure::Connect(reason) => Error::Connect {
            registry: registry.to_owned(),
            reason,
        },
        Failure::Broken(reason) => Error::Broken {
            registry: registry.to_owned(),
            reason,
        },
    }
}

/// The delay a 429 or 503 asks for (`Retry-After` in seconds), capped.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let s = h
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(s.min(30)))
}

/// A short text of an error response's body (the distribution error's message).
pub(crate) async fn error_detail(resp: Response) -> String {
    let body = resp.text().await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let msgs: Vec<String> = v["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let code = e["code"].as_str().unwrap_or("");
                    let msg = e["message"].as_str().unwrap_or("");
                    format!("{code}: {msg}").trim_matches([':', ' ']).to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    if !msgs.is_empty() {
        return format!(" ({})", msgs.join("; "));
    }
    let t: String = body.trim().chars().take(200).collect();
    if t.is_empty() {
        String::new()
    } else {
        format!(" ({t})")
    }
}

impl Client {
    pub fn new(opts: Options, creds: Arc<dyn CredentialSource>) -> Self {
        Self {
            opts,
            creds,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// The settings the client was made with.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn insecure(&self, registry: &str) -> bool {
        self.opts.insecure.iter().any(|r| r == registry)
    }

    fn http(&self, registry: &str, verify: bool) -> Result<reqwest::Client> {
        let files = crate::tls::certs_d(&self.opts.certs_dirs, registry)?;
        let mut extra = self
            .opts
            .extra_roots
            .get(registry)
            .cloned()
            .unwrap_or_default();
        extra.extend(files.roots);
        let tls = if verify {
            crate::tls::verified(&extra, files.client)
        } else {
            crate::tls::unverified(files.client)
        }
        .map_err(|e| Error::Tls {
            registry: registry.to_owned(),
            reason: e.to_string(),
        })?;
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(self.opts.connect_timeout)
            .read_timeout(self.opts.read_timeout)
            .user_agent(concat!("rbuild/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .build()
            .map_err(|e| Error::Protocol {
                registry: registry.to_owned(),
                reason: chain(&e),
            })
    }

    /// The host state of `registry`, made by a ping of `/v2/` on first use.
    pub(crate) async fn host(&self, registry: &str) -> Result<Arc<Host>> {
        let mut hosts = self.hosts.lock().await;
        if let Some(h) = hosts.get(registry) {
            return Ok(Arc::clone(h));
        }
        let h = Arc::new(self.ping(registry).await?);
        hosts.insert(registry.to_owned(), Arc::clone(&h));
        Ok(h)
    }

    /// Finds the scheme (https; plain http for loopback and insecure
    /// registries when https does not answer) and the challenge.
    async fn ping(&self, registry: &str) -> Result<Host> {
        let api = api_host(registry);
        let insecure = self.insecure(registry);
        let may_http = insecure || is_loopback(registry);
        let https = self.http(registry, !insecure)?;
        let mut attempt = 0;
        let (http, base, resp) = loop {
            let url = format!("https://{api}/v2/");
            match https.get(&url).send().await {
                Ok(r) => break (https, format!("https://{api}"), r),
                Err(e) => {
                    let f = classify(&e);
                    // Plain http only when nothing answered TLS: a server
                    // that sent a TLS alert (or a certificate) speaks https.
                    let speaks_tls = match &f {
                        Failure::Certificate(_) => true,
                        Failure::Tls(t) => t.contains("alert") || t.contains("Alert"),
                        _ => false,
                    };
                    let plain_ok = may_http && !speaks_tls;
                    if plain_ok {
                        let plain = self.http(registry, false)?;
                        match plain.get(format!("http://{api}/v2/")).send().await {
                            Ok(r) => break (plain, format!("http://{api}"), r),
                            Err(e2) => {
                                let f2 = classify(&e2);
                                if matches!(f2, Failure::Connect(_))
                                    && !e2.is_timeout()
                                    && attempt < self.opts.retries.min(2)
                                {
                                    attempt += 1;
                                    tokio::time::sleep(self.opts.backoff * attempt).await;
                                    continue;
                                }
                                return Err(failure_error(registry, f2, &self.opts));
                            }
                        }
                    }
                    if matches!(f, Failure::Connect(_))
                        && !e.is_timeout()
                        && attempt < self.opts.retries.min(2)
                    {
                        attempt += 1;
                        tokio::time::sleep(self.opts.backoff * attempt).await;
                        continue;
                    }
                    return Err(failure_error(registry, f, &self.opts));
                }
            }
        };
        let challenge = if resp.status() == StatusCode::UNAUTHORIZED {
            resp.headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge)
        } else {
            None
        };
        Ok(Host {
            registry: registry.to_owned(),
            http,
            base,
            challenge: Mutex::new(challenge),
            creds: self.creds.credentials(registry),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The `Authorization` header for a request needing `scopes`: a cached
    /// token, a new token when the registry asked for bearer tokens, or Basic
    /// credentials.
    async fn auth_header(&self, host: &Host, scopes: &[String]) -> Result<Option<String>> {
        let challenge = host.challenge.lock().await.clone();
        match &challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(host
                .creds
                .as_ref()
                .filter(|c| c.identity_token.is_none())
                .map(|c| {
                    let raw = format!("{}:{}", c.username, c.password);
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(raw)
                    )
                })),
            Some(Challenge::Bearer { .. }) => {
                let key = scopes.join(" ");
                if let Some(t) = host.tokens.lock().await.get(&key) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let t = self.fetch_token(host, challenge.as_ref(), scopes).await?;
                host.tokens.lock().await.insert(key, t.clone());
                Ok(Some(format!("Bearer {t}")))
            }
        }
    }

    /// Asks the token server of a bearer challenge for a token with `scopes`.
    async fn fetch_token(
        &self,
        host: &Host,
        challenge: Option<&Challenge>,
        scopes: &[String],
    ) -> Result<String> {
        let Some(Challenge::Bearer {
            realm,
            service,
            scope,
        }) = challenge
        else {
            return Err(Error::Unauthorized {
                registry: host.registry.clone(),
            });
        };
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in scopes {
            query.push(("scope", s));
        }
        if let Some(s) = scope {
            if !scopes.contains(s) {
                query.push(("scope", s));
            }
        }
        let token_err = |reason: String| Error::Token {
            registry: host.registry.clone(),
            realm: realm.clone(),
            reason,
        };
        let rb = match &host.creds {
            // `OAuth2`: the identity token is a refresh token.
            Some(Credentials {
                identity_token: Some(t),
                ..
            }) => {
                let mut form: Vec<(&str, &str)> = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", t),
                    ("client_id", "rbuild"),
                ];
                form.extend(query.iter().copied());
                host.http.post(realm).form(&form)
            }
            Some(c) => host
                .http
                .get(realm)
                .query(&query)
                .basic_auth(&c.username, Some(&c.password)),
            None => host.http.get(realm).query(&query),
        };
        let resp = rb.send().await.map_err(|e| token_err(chain(&e)))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(Error::Unauthorized {
                registry: host.registry.clone(),
            });
        }
        if !resp.status().is_success() {
            let st = resp.status();
            return Err(token_err(format!("{st}{}", error_detail(resp).await)));
        }
        let body = resp.bytes().await.map_err(|e| token_err(chain(&e)))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| token_err(format!("not JSON: {e}")))?;
        v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| token_err("the answer has no token".into()))
    }

    /// Checks the credentials the client was made with against `registry`
    /// (`rbuild login`): a token for no scope, or `/v2/` with Basic.
    pub async fn login(&self, registry: &str) -> Result<()> {
        let host = self.host(registry).await?;
        let challenge = host.challenge.lock().await.clone();
        let refused = |e: Error| match e {
            Error::Unauthorized { registry } => Error::LoginRefused { registry },
            other => other,
        };
        match challenge {
            // The registry asks for nothing: any credentials do.
            None => Ok(()),
            Some(c @ Challenge::Bearer { .. }) => self
                .fetch_token(&host, Some(&c), &[])
                .await
                .map(drop)
                .map_err(refused),
            Some(Challenge::Basic) => {
                let resp = self
                    .send(
                        &host,
                        &[],
                        &Method::GET,
                        "/v2/",
                        &HeaderMap::new(),
                        &BodySource::Empty,
                        self.opts.retries,
                    )
                    .await
                    .map_err(refused)?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(Error::Status {
                        registry: registry.to_owned(),
                        method: "GET".into(),
                        url: format!("{}/v2/", host.base),
                        status: resp.status().as_u16(),
                        detail: error_detail(resp).await,
                    })
                }
            }
        }
    }

    /// Sends a request to `host` (path relative to its base, or an absolute
    /// URL), authenticating for `scopes`; retries transient failures up to
    /// `retries` times. Statuses other than 401 are the caller's to judge.
    #[allow(clippy::too_many_arguments)] // one request's parts, all needed for a retry
    pub(crate) async fn send(
        &self,
        host: &Host,
        scopes: &[String],
        method: &Method,
        path_or_url: &str,
        headers: &HeaderMap,
        body: &BodySource,
        retries: u32,
    ) -> Result<Response> {
        let url = if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", host.base)
        };
        let mut attempt = 0;
        let mut reauthed = false;
        loop {
            let mut rb = host
                .http
                .request(method.clone(), &url)
                .headers(headers.clone());
            if let Some(a) = self.auth_header(host, scopes).await? {
                rb = rb.header(
                    AUTHORIZATION,
                    HeaderValue::from_str(&a).map_err(|e| Error::Protocol {
                        registry: host.registry.clone(),
                        reason: e.to_string(),
                    })?,
                );
            }
            if let Some(b) = body.make().await? {
                rb = rb.body(b);
            }
            let delay = self.opts.backoff * 2u32.saturating_pow(attempt.min(8));
            match rb.send().await {
                Err(e) => {
                    let f = classify(&e);
                    if matches!(f, Failure::Connect(_) | Failure::Broken(_)) && attempt < retries {
                        attempt += 1;
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Err(failure_error(&host.registry, f, &self.opts));
                }
                Ok(resp) => {
                    let st = resp.status();
                    if st == StatusCode::UNAUTHORIZED {
                        let challenge = resp
                            .headers()
                            .get(WWW_AUTHENTICATE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(parse_challenge);
                        // A token that expired, or a registry whose `/v2/`
                        // did not ask for what this repository asks: one more
                        // try with what the challenge says, then give up.
                        if !reauthed {
                            reauthed = true;
                            match &challenge {
                                Some(Challenge::Bearer { .. }) => {
                                    let t =
                                        self.fetch_token(host, challenge.as_ref(), scopes).await?;
                                    host.tokens.lock().await.insert(scopes.join(" "), t);
                                    *host.challenge.lock().await = challenge;
                                    continue;
                                }
                                Some(Challenge::Basic) if host.creds.is_some() => {
                                    let mut c = host.challenge.lock().await;
                                    if c.is_none() {
                                        *c = challenge;
                                        continue;
                                    }
                                }
                                _ => {}
                            }
                        }
                        return Err(Error::Unauthorized {
                            registry: host.registry.clone(),
                        });
                    }
                    if (st == StatusCode::TOO_MANY_REQUESTS || st.is_server_error())
                        && attempt < retries
                    {
                        attempt += 1;
                        let wait = retry_after(resp.headers()).unwrap_or(delay);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    return Ok(resp);
                }
            }
        }
    }
}

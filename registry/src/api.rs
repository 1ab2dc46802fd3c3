//! The distribution API calls: manifests (raw bytes, their digest the digest
//! of those bytes), platform resolution of indexes, blobs (GET streamed and
//! verified, HEAD, cross-repository mount, upload), manifest PUT.

use std::path::Path;

use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use rbuild_oci::Digest;
use rbuild_oci::Platform;
use rbuild_oci::manifest::{self, Descriptor, Index, Manifest};

use crate::auth::repo_scope;
use crate::client::{BodySource, Client, error_detail};
use crate::error::{Error, Result};
use crate::reference::RemoteRef;

/// Docker's schema 1 media types (refused).
const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// The largest manifest read (as containerd's limit).
const MANIFEST_LIMIT: usize = 4 << 20;

/// A manifest or index as the registry served it.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub media_type: String,
    /// The exact bytes.
    pub bytes: Vec<u8>,
    /// The digest of `bytes`.
    pub digest: Digest,
}

impl Fetched {
    pub fn is_index(&self) -> bool {
        self.media_type == manifest::OCI_INDEX || self.media_type == manifest::DOCKER_MANIFEST_LIST
    }
}

/// A reference resolved to one image manifest.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The digest the reference resolved to (the index's for a multi-platform
    /// image): the repo digest docker records.
    pub digest: Digest,
    /// The platform's manifest.
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub manifest_digest: Digest,
    pub media_type: String,
}

/// How a blob got into a repository by [`Client::mount_blob`].
#[derive(Debug)]
pub enum Mount {
    /// The registry mounted it (201).
    Mounted,
    /// The registry started an upload instead (202): its location.
    Upload(String),
}

fn accept_manifests() -> HeaderMap {
    let mut h = HeaderMap::new();
    let v = [
        manifest::OCI_INDEX,
        manifest::DOCKER_MANIFEST_LIST,
        manifest::OCI_MANIFEST,
        manifest::DOCKER_MANIFEST,
    ]
    .join(", ");
    h.insert(ACCEPT, HeaderValue::from_str(&v).expect("static header"));
    h
}

fn manifest_url(r: &RemoteRef, reference: &str) -> String {
    format!("/v2/{}/manifests/{reference}", r.repository)
}

/// The media type of a manifest: the header's when it names one, else the
/// document's `mediaType`, else what its fields say.
fn media_type_of(header: Option<&str>, bytes: &[u8], reference: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| Error::BadManifest {
        reference: reference.to_owned(),
        reason: format!("not JSON: {e}"),
    })?;
    let header = header
        .map(|h| h.split(';').next().unwrap_or(h).trim().to_owned())
        .filter(|h| !h.is_empty() && h != "application/json" && h != "text/plain");
    if v["schemaVersion"].as_u64() == Some(1)
        || header
            .as_deref()
            .is_some_and(|h| DOCKER_SCHEMA1.contains(&h))
    {
        return Err(Error::Schema1 {
            reference: reference.to_owned(),
        });
    }
    if let Some(h) = header {
        return Ok(h);
    }
    if let Some(m) = v["mediaType"].as_str() {
        return Ok(m.to_owned());
    }
    if v.get("manifests").is_some() {
        Ok(manifest::OCI_INDEX.to_owned())
    } else if v.get("config").is_some() {
        Ok(manifest::OCI_MANIFEST.to_owned())
    } else {
        Err(Error::BadManifest {
            reference: reference.to_owned(),
            reason: "neither a manifest nor an index".into(),
        })
    }
}

fn platform_matches(want: &Platform, p: &manifest::Platform) -> bool {
    let norm = |arch: &str, v: Option<&str>| -> Option<String> {
        match (arch, v) {
            ("arm64", Some("v8")) => None,
            (_, v) => v.map(str::to_owned),
        }
    };
    p.os == want.os
        && p.architecture == want.architecture
        && (want.variant.is_none()
            || norm(&p.architecture, p.variant.as_deref())
                == norm(&want.architecture, want.variant.as_deref()))
}

fn platform_name(p: &manifest::Platform) -> String {
    let mut s = format!("{}/{}", p.os, p.architecture);
    if let Some(v) = &p.variant {
        s.push('/');
        s.push_str(v);
    }
    s
}

/// Picks the manifest for `want` in an index: an exact variant first, then
/// (when none is asked for) the first of that os/architecture.
pub fn select_platform<'i>(index: &'i Index, want: &Platform) -> Option<&'i Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| platform_matches(want, p))
        })
        .collect();
    candidates
        .iter()
        .find(|d| {
            d.platform.as_ref().is_some_and(|p| {
                p.variant == want.variant
                    || (p.architecture == "arm64" && p.variant.as_deref() == Some("v8"))
            })
        })
        .or_else(|| candidates.first())
        .copied()
}

impl Client {
    /// GET of a manifest or index by tag or digest, exactly as served. A
    /// digest reference is checked against the bytes.
    pub async fn get_manifest(&self, r: &RemoteRef) -> Result<Fetched> {
        let reference = r.reference();
        let host = self.host(&r.registry).await?;
        let scopes = [repo_scope(&r.repository, false)];
        let url = manifest_url(r, &reference);
        let resp = self
            .send(
                &host,
                &scopes,
                &Method::GET,
                &url,
                &accept_manifests(),
                &BodySource::Empty,
                self.opts.retries,
            )
            .await?;
        let st = resp.status();
        if st == StatusCode::NOT_FOUND {
            return Err(Error::ManifestUnknown {
                reference: r.to_string(),
            });
        }
        if !st.is_success() {
            return Err(self
                .status_error(&host.registry, &r.repository, "GET", &url, resp)
                .await);
        }
        let header = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if resp
            .content_length()
            .is_some_and(|n| n > MANIFEST_LIMIT as u64)
        {
            return Err(Error::BadManifest {
                reference: r.to_string(),
                reason: format!("larger than {MANIFEST_LIMIT} bytes"),
            });
        }
        let bytes = resp.bytes().await.map_err(|e| Error::Broken {
            registry: host.registry.clone(),
            reason: format!(
                "reading the manifest of {r}: {}",
                crate::error::root_cause(&e)
            ),
        })?;
        if bytes.len() > MANIFEST_LIMIT {
            return Err(Error::BadManifest {
                reference: r.to_string(),
                reason: format!("larger than {MANIFEST_LIMIT} bytes"),
            });
        }
        let bytes = bytes.to_vec();
        let media_type = media_type_of(header.as_deref(), &bytes, &r.to_string())?;
        let digest = Digest::of(&bytes);
        if let Some(want) = &r.digest {
            if *want != digest {
                return Err(Error::DigestMismatch {
                    what: format!("manifest {r}"),
                    expected: want.clone(),
                    actual: digest,
                });
            }
        }
        Ok(Fetched {
            media_type,
            bytes,
            digest,
        })
    }

    /// HEAD of a manifest: its digest (`Docker-Content-Digest`) if it exists.
    pub async fn head_manifest(&self, r: &RemoteRef) -> Result<Option<Digest>> {
        let host = self.host(&r.registry).await?;
        let scopes = [repo_scope(&r.repository, false)];
        let url = manifest_url(r, &r.reference());
        let resp = self
            .send(
                &host,
                &scopes,
                &Method::HEAD,
                &url,
                &accept_manifests(),
                &BodySource::Empty,
                self.opts.retries,
            )
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Digest::parse(v).ok())),
            _ => Err(self
                .status_error(&host.registry, &r.repository, "HEAD", &url, resp)
                .await),
        }
    }

    /// Resolves a reference to the manifest of `platform` (an index is
    /// followed to the platform's entry; an error lists the platforms it has).
    pub async fn resolve(&self, r: &RemoteRef, platform: &Platform) -> Result<Resolved> {
        let top = self.get_manifest(r).await?;
        if !top.is_index() {
            let manifest = parse_manifest(&top.bytes, r)?;
            return Ok(Resolved {
                digest: top.digest.clone(),
                manifest,
                manifest_bytes: top.bytes,
                manifest_digest: top.digest,
                media_type: top.media_type,
            });
        }
        let index: Index = serde_json::from_slice(&top.bytes).map_err(|e| Error::BadManifest {
            reference: r.to_string(),
            reason: e.to_string(),
        })?;
        let Some(desc) = select_platform(&index, platform) else {
            let mut available: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(platform_name)
                .collect();
            available.dedup();
            return Err(Error::NoPlatform {
                reference: r.to_string(),
                wanted: platform.to_string(),
                available: if available.is_empty() {
                    "no platform".into()
                } else {
                    available.join(", ")
                },
            });
        };
        let sub = self
            .get_manifest(&r.with_digest(desc.digest.clone()))
            .await?;
        if sub.is_index() {
            return Err(Error::BadManifest {
                reference: r.to_string(),
                reason: "an index inside an index".into(),
            });
        }
        let manifest = parse_manifest(&sub.bytes, r)?;
        Ok(Resolved {
            digest: top.digest,
            manifest,
            manifest_bytes: sub.bytes,
            manifest_digest: sub.digest,
            media_type: sub.media_type,
        })
    }

    /// GET of a small blob (a config) into memory, verified.
    pub async fn get_blob_bytes(&self, r: &RemoteRef, desc: &Descriptor) -> Result<Vec<u8>> {
        let resp = self.blob_response(r, &desc.digest).await?;
        let bytes = resp.bytes().await.map_err(|e| Error::Broken {
            registry: r.registry.clone(),
            reason: format!(
                "reading blob {}: {}",
                desc.digest,
                crate::error::root_cause(&e)
            ),
        })?;
        let actual = Digest::of(&bytes);
        if actual != desc.digest {
            return Err(Error::DigestMismatch {
                what: format!("blob of {r}"),
                expected: desc.digest.clone(),
                actual,
            });
        }
        Ok(bytes.to_vec())
    }

    async fn blob_response(&self, r: &RemoteRef, digest: &Digest) -> Result<reqwest::Response> {
        self.blob_response_from(r, digest, 0).await
    }

    /// GET of a blob, from byte `from` on (`Range: bytes=FROM-`) when not 0.
    async fn blob_response_from(
        &self,
        r: &RemoteRef,
        digest: &Digest,
        from: u64,
    ) -> Result<reqwest::Response> {
        let host = self.host(&r.registry).await?;
        let scopes = [repo_scope(&r.repository, false)];
        let url = format!("/v2/{}/blobs/{digest}", r.repository);
        let mut h = HeaderMap::new();
        if from > 0 {
            h.insert(
                reqwest::header::RANGE,
                HeaderValue::from_str(&format!("bytes={from}-")).map_err(|e| Error::Protocol {
                    registry: r.registry.clone(),
                    reason: e.to_string(),
                })?,
            );
        }
        let resp = self
            .send(
                &host,
                &scopes,
                &Method::GET,
                &url,
                &h,
                &BodySource::Empty,
                self.opts.retries,
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(Error::BlobUnknown {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                digest: digest.clone(),
            }),
            _ => Err(self
                .status_error(&host.registry, &r.repository, "GET", &url, resp)
                .await),
        }
    }

    /// A blob's bytes as they arrive (see [`BlobStream`]): for a caller that
    /// unpacks while downloading. Not retried: a caller that retries opens
    /// the stream again.
    pub async fn blob_stream(&self, r: &RemoteRef, desc: &Descriptor) -> Result<BlobStream> {
        let resp = self.blob_response(r, &desc.digest).await?;
        Ok(BlobStream {
            resp,
            hasher: Sha256::new(),
            n: 0,
            desc: desc.clone(),
            what: format!("blob {} of {r}", desc.digest),
            registry: r.registry.clone(),
        })
    }

    /// Continues `stream`, which broke, where it stopped: a GET with
    /// `Range: bytes=N-` for the N bytes received (and hashed) so far. True
    /// when the registry sent the rest (206 from byte N: the stream goes on,
    /// its digest still over the whole blob); false when it ignored the range
    /// (200: the caller starts again from the beginning) or the stream had
    /// no bytes yet.
    pub async fn resume_blob_stream(&self, r: &RemoteRef, stream: &mut BlobStream) -> Result<bool> {
        let from = stream.n;
        if from == 0 || from >= stream.desc.size {
            return Ok(false);
        }
        let resp = self
            .blob_response_from(r, &stream.desc.digest, from)
            .await?;
        let continues = resp.status() == StatusCode::PARTIAL_CONTENT
            && resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split_once('-'))
                .is_some_and(|(start, _)| start.trim().parse::<u64>().ok() == Some(from));
        if continues {
            stream.resp = resp;
        }
        Ok(continues)
    }

    /// Downloads a blob to `path` (created or truncated), streaming, checking
    /// its size and digest; `progress` gets the bytes written so far. A
    /// transfer that breaks is started again (up to the retry count); on
    /// failure the file is removed.
    pub async fn download_blob(
        &self,
        r: &RemoteRef,
        desc: &Descriptor,
        path: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        let mut attempt = 0;
        loop {
            match self.download_once(r, desc, path, progress).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let _ = fs_err::tokio::remove_file(path).await;
                    if e.is_transient() && attempt < self.opts.retries {
                        attempt += 1;
                        tokio::time::sleep(self.opts.backoff * attempt).await;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn download_once(
        &self,
        r: &RemoteRef,
        desc: &Descriptor,
        path: &Path,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<()> {
        let mut resp = self.blob_response(r, &desc.digest).await?;
        let mut f = tokio::io::BufWriter::with_capacity(
            256 * 1024,
            fs_err::tokio::File::create(path).await?,
        );
        let mut hasher = Sha256::new();
        let mut n: u64 = 0;
        loop {
            let chunk = resp.chunk().await.map_err(|e| Error::Broken {
                registry: r.registry.clone(),
                reason: format!(
                    "downloading {}: {}",
                    desc.digest,
                    crate::error::root_cause(&e)
                ),
            })?;
            let Some(chunk) = chunk else { break };
            n += chunk.len() as u64;
            if n > desc.size {
                return Err(Error::SizeMismatch {
                    what: format!("blob {} of {r}", desc.digest),
                    expected: desc.size,
                    actual: n,
                });
            }
            hasher.update(&chunk);
            f.write_all(&chunk).await?;
            progress(n);
        }
        f.flush().await?;
        f.into_inner().sync_all().await?;
        if n != desc.size {
            return Err(Error::SizeMismatch {
                what: format!("blob {} of {r}", desc.digest),
                expected: desc.size,
                actual: n,
            });
        }
        let actual = Digest::from_sha256(hasher.finalize().into());
        if actual != desc.digest {
            return Err(Error::DigestMismatch {
                what: format!("blob of {r}"),
                expected: desc.digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// HEAD of a blob in `r`'s repository: its size when the registry has it.
    pub async fn blob_exists(&self, r: &RemoteRef, digest: &Digest) -> Result<Option<u64>> {
        let host = self.host(&r.registry).await?;
        let scopes = [repo_scope(&r.repository, true)];
        let url = format!("/v2/{}/blobs/{digest}", r.repository);
        let resp = self
            .send(
                &host,
                &scopes,
                &Method::HEAD,
                &url,
                &HeaderMap::new(),
                &BodySource::Empty,
                self.opts.retries,
            )
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(Some(resp.content_length().unwrap_or(0))),
            _ => Err(self
                .status_error(&host.registry, &r.repository, "HEAD", &url, resp)
                .await),
        }
    }

    /// Mounts a blob from repository `from` of the same registry into `r`'s
    /// (the token asks for pull on `from` too). A registry that cannot mount
    /// answers 202 with an upload to use instead.
    pub async fn mount_blob(&self, r: &RemoteRef, from: &str, digest: &Digest) -> Result<Mount> {
        let host = self.host(&r.registry).await?;
        let scopes = [repo_scope(&r.repository, true), repo_scope(from, false)];
        let url = format!(
            "/v2/{}/blobs/uploads/?mount={digest}&from={from}",
            r.repository
        );
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self
            .send(
                &host,
                &scopes,
                &Method::POST,
                &url,
                &h,
                &BodySource::Empty,
                self.opts.retries,
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(Mount::Mounted),
            StatusCode::ACCEPTED => Ok(Mount::Upload(location(&host.base, &resp, &host.registry)?)),
            _ => Err(self
                .status_error(&host.registry, &r.repository, "POST", &url, resp)
                .await),
        }
    }

    /// Uploads the blob in `path` (`digest`, `size` bytes) to `r`'s repository:
    /// POST (or the upload `started` by a mount), one streamed PATCH, PUT
    /// `?digest=`; a registry that refuses the PATCH gets the blob in the PUT
    /// (monolithic). A failed upload is started again from the beginning.
    pub async fn upload_blob(
        &self,
        r: &RemoteRef,
        digest: &Digest,
        size: u64,
        path: &Path,
        started: Option<String>,
    ) -> Result<()> {
        let mut started = started;
        let mut attempt = 0;
        loop {
            match self
                .upload_once(r, digest, size, path, started.take())
                .await
            {
                Ok(()) => return Ok(()),
                Err(e @ (Error::Connect { .. } | Error::Broken { .. } | Error::Status { .. }))
                    if attempt < self.opts.retries =>
                {
                    let transient = match &e {
                        Error::Status { status, .. } => *status >= 500 || *status == 429,
                        _ => true,
                    };
                    if !transient {
                        return Err(e);
                    }
                    attempt += 1;
                    tokio::time::sleep(self.opts.backoff * attempt).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Uploads a blob produced while it is sent: POST (or the upload
    /// `started` by a mount), one PATCH streaming `body`, then PUT with the
    /// digest `done` gives once the stream has ended (the producer hashes what
    /// it sends). Nothing is retried: the caller produces the stream again.
    pub async fn upload_stream<S, F>(
        &self,
        r: &RemoteRef,
        started: Option<String>,
        body: S,
        done: F,
    ) -> Result<Digest>
    where
        S: futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
        F: std::future::Future<Output = std::io::Result<Digest>>,
    {
        let host = self.host(&r.registry).await?;
        let scopes = [repo_scope(&r.repository, true)];
        let loc = match started {
            Some(l) => l,
            None => self.start_upload(&host, r, &scopes).await?,
        };
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let body = BodySource::Once(std::sync::Mutex::new(Some(reqwest::Body::wrap_stream(
            body,
        ))));
        let resp = self
            .send(&host, &scopes, &Method::PATCH, &loc, &h, &body, 0)
            .await;
        let digest = done.await?;
        let resp = resp?;
        let st = resp.status();
        if st != StatusCode::ACCEPTED && st != StatusCode::NO_CONTENT {
            return Err(self
                .status_error(&host.registry, &r.repository, "PATCH", &loc, resp)
                .await);
        }
        let put_loc = location(&host.base, &resp, &host.registry)?;
        let sep = if put_loc.contains('?') { '&' } else { '?' };
        let put_url = format!("{put_loc}{sep}digest={digest}");
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self
            .send(
                &host,
                &scopes,
                &Method::PUT,
                &put_url,
                &h,
                &BodySource::Empty,
                0,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self
                .status_error(&host.registry, &r.repository, "PUT", &put_url, resp)
                .await);
        }
        Ok(digest)
    }

    async fn start_upload(
        &self,
        host: &crate::client::Host,
        r: &RemoteRef,
        scopes: &[String],
    ) -> Result<String> {
        let url = format!("/v2/{}/blobs/uploads/", r.repository);
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let resp = self
            .send(host, scopes, &Method::POST, &url, &h, &BodySource::Empty, 0)
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self
                .status_error(&host.registry, &r.repository, "POST", &url, resp)
                .await);
        }
        location(&host.base, &resp, &host.registry)
    }

    async fn upload_once(
        &self,
        r: &RemoteRef,
        digest: &Digest,
        size: u64,
        path: &Path,
        started: Option<String>,
    ) -> Result<()> {
        let host = self.host(&r.registry).await?;
        let scopes = [repo_scope(&r.repository, true)];
        let loc = match started {
            Some(l) => l,
            None => self.start_upload(&host, r, &scopes).await?,
        };
        let file = BodySource::File {
            path: path.to_owned(),
            offset: 0,
            len: size,
        };
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let resp = self
            .send(&host, &scopes, &Method::PATCH, &loc, &h, &file, 0)
            .await?;
        let st = resp.status();
        let (put_loc, put_body) = if st == StatusCode::ACCEPTED || st == StatusCode::NO_CONTENT {
            (
                location(&host.base, &resp, &host.registry)?,
                BodySource::Empty,
            )
        } else if matches!(
            st,
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED | StatusCode::NOT_FOUND
        ) {
            // No chunked uploads here: the whole blob in the PUT.
            (loc, file)
        } else {
            return Err(self
                .status_error(&host.registry, &r.repository, "PATCH", &loc, resp)
                .await);
        };
        let sep = if put_loc.contains('?') { '&' } else { '?' };
        let put_url = format!("{put_loc}{sep}digest={digest}");
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if matches!(put_body, BodySource::Empty) {
            h.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        } else {
            h.insert(CONTENT_LENGTH, HeaderValue::from(size));
        }
        let resp = self
            .send(&host, &scopes, &Method::PUT, &put_url, &h, &put_body, 0)
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self
                .status_error(&host.registry, &r.repository, "PUT", &put_url, resp)
                .await);
        }
        Ok(())
    }

    /// The tags of `r`'s repository (`/tags/list`, following `Link` pages).
    pub async fn list_tags(&self, r: &RemoteRef) -> Result<Vec<String>> {
        let host = self.host(&r.registry).await?;
        let scopes = [repo_scope(&r.repository, false)];
        let mut url = format!("/v2/{}/tags/list", r.repository);
        let mut tags = Vec::new();
        for _ in 0..1000 {
            let resp = self
                .send(
                    &host,
                    &scopes,
                    &Method::GET,
                    &url,
                    &HeaderMap::new(),
                    &BodySource::Empty,
                    self.opts.retries,
                )
                .await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(Error::ManifestUnknown {
                    reference: format!("{}/{}", r.registry, r.repository),
                });
            }
            if !resp.status().is_success() {
                return Err(self
                    .status_error(&host.registry, &r.repository, "GET", &url, resp)
                    .await);
            }
            let next = resp
                .headers()
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| l.split(';').next())
                .map(|l| {
                    l.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_owned()
                });
            let body = resp.bytes().await.map_err(|e| Error::Broken {
                registry: host.registry.clone(),
                reason: format!("reading the tags of {r}: {}", crate::error::root_cause(&e)),
            })?;
            let v: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| Error::Protocol {
                    registry: host.registry.clone(),
                    reason: format!("tags list of {}: {e}", r.repository),
                })?;
            tags.extend(
                v["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned)),
            );
            match next {
                Some(n) if !n.is_empty() => url = n,
                _ => break,
            }
        }
        Ok(tags)
    }

    /// PUT of a manifest's exact bytes under `r`'s tag (or digest); returns
    /// the digest of those bytes.
    pub async fn put_manifest(
        &self,
        r: &RemoteRef,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest> {
        let host = self.host(&r.registry).await?;
        let scopes = [repo_scope(&r.repository, true)];
        let url = manifest_url(r, &r.reference());
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|e| Error::Protocol {
                registry: r.registry.clone(),
                reason: e.to_string(),
            })?,
        );
        let body = BodySource::Bytes(bytes::Bytes::copy_from_slice(bytes));
        let resp = self
            .send(
                &host,
                &scopes,
                &Method::PUT,
                &url,
                &h,
                &body,
                self.opts.retries,
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self
                .status_error(&host.registry, &r.repository, "PUT", &url, resp)
                .await);
        }
        Ok(Digest::of(bytes))
    }

    async fn status_error(
        &self,
        registry: &str,
        repository: &str,
        method: &str,
        url: &str,
        resp: reqwest::Response,
    ) -> Error {
        let status = resp.status().as_u16();
        let detail = error_detail(resp).await;
        if status == 403 {
            return Error::Denied {
                registry: registry.to_owned(),
                repository: repository.to_owned(),
                detail,
            };
        }
        Error::Status {
            registry: registry.to_owned(),
            method: method.to_owned(),
            url: url.to_owned(),
            status,
            detail,
        }
    }
}

/// A blob being downloaded: [`BlobStream::next`] gives its bytes as they
/// arrive and, at the end, fails if their size or digest is not the
/// descriptor's (so nothing unverified is taken as complete).
pub struct BlobStream {
    resp: reqwest::Response,
    hasher: Sha256,
    n: u64,
    desc: Descriptor,
    what: String,
    registry: String,
}

impl BlobStream {
    /// The next bytes; `None` once all came and were verified.
    pub async fn next(&mut self) -> Result<Option<bytes::Bytes>> {
        let chunk = self.resp.chunk().await.map_err(|e| Error::Broken {
            registry: self.registry.clone(),
            reason: format!(
                "downloading {}: {}",
                self.desc.digest,
                crate::error::root_cause(&e)
            ),
        })?;
        let Some(chunk) = chunk else {
            if self.n != self.desc.size {
                return Err(Error::SizeMismatch {
                    what: self.what.clone(),
                    expected: self.desc.size,
                    actual: self.n,
                });
            }
            let actual = Digest::from_sha256(std::mem::take(&mut self.hasher).finalize().into());
            if actual != self.desc.digest {
                return Err(Error::DigestMismatch {
                    what: self.what.clone(),
                    expected: self.desc.digest.clone(),
                    actual,
                });
            }
            return Ok(None);
        };
        self.n += chunk.len() as u64;
        if self.n > self.desc.size {
            return Err(Error::SizeMismatch {
                what: self.what.clone(),
                expected: self.desc.size,
                actual: self.n,
            });
        }
        self.hasher.update(&chunk);
        Ok(Some(chunk))
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.n
    }
}

/// The `Location` of an upload, made absolute.
fn location(base: &str, resp: &reqwest::Response, registry: &str) -> Result<String> {
    let l = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::Protocol {
            registry: registry.to_owned(),
            reason: format!("{} without a Location header", resp.status()),
        })?;
    Ok(if l.starts_with("http://") || l.starts_with("https://") {
        l.to_owned()
    } else if l.starts_with('/') {
        format!("{base}{l}")
    } else {
        format!("{base}/{l}")
    })
}

/// Parses an image manifest (after the schema 1 check of [`Client::get_manifest`]).
pub fn parse_manifest(bytes: &[u8], r: &RemoteRef) -> Result<Manifest> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadManifest {
        reference: r.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[(&str, &str, Option<&str>)]) -> Index {
        let manifests = platforms
            .iter()
            .enumerate()
            .map(|(i, (os, arch, v))| {
                let mut d = Descriptor::new(
                    manifest::OCI_MANIFEST,
                    Digest::of(&[u8::try_from(i).unwrap()]),
                    1,
                );
                d.platform = Some(manifest::Platform {
                    architecture: (*arch).into(),
                    os: (*os).into(),
                    variant: v.map(Into::into),
                    extra: std::collections::BTreeMap::new(),
                });
                d
            })
            .collect();
        Index {
            schema_version: 2,
            media_type: Some(manifest::OCI_INDEX.into()),
            manifests,
            annotations: None,
            extra: std::collections::BTreeMap::new(),
        }
    }

    #[test]
    fn index_entries_are_picked_by_platform() {
        let idx = index(&[
            ("linux", "amd64", None),
            ("linux", "arm", Some("v6")),
            ("linux", "arm", Some("v7")),
            ("linux", "arm64", Some("v8")),
        ]);
        let pick = |s: &str| {
            select_platform(&idx, &Platform::parse(s).unwrap())
                .map(|d| d.platform.as_ref().unwrap().clone())
                .map(|p| platform_name(&p))
        };
        assert_eq!(pick("linux/amd64").as_deref(), Some("linux/amd64"));
        assert_eq!(pick("linux/arm64").as_deref(), Some("linux/arm64/v8"));
        assert_eq!(pick("linux/arm/v7").as_deref(), Some("linux/arm/v7"));
        assert_eq!(pick("linux/arm/v6").as_deref(), Some("linux/arm/v6"));
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(pick("windows/amd64"), None);
    }

    #[test]
    fn schema1_is_refused_and_media_types_are_found() {
        let e = media_type_of(None, br#"{"schemaVersion":1,"fsLayers":[]}"#, "x").unwrap_err();
        assert!(matches!(e, Error::Schema1 { .. }), "{e}");
        let e = media_type_of(Some(DOCKER_SCHEMA1[1]), b"{}", "x").unwrap_err();
        assert!(e.to_string().contains("schema 1"), "{e}");
        assert_eq!(
            media_type_of(
                Some("application/json"),
                br#"{"schemaVersion":2,"manifests":[]}"#,
                "x"
            )
            .unwrap(),
            manifest::OCI_INDEX
        );
        assert_eq!(
            media_type_of(
                Some(manifest::DOCKER_MANIFEST),
                br#"{"schemaVersion":2,"config":{}}"#,
                "x"
            )
            .unwrap(),
            manifest::DOCKER_MANIFEST
        );
    }
}

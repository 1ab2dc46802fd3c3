//! rustls configurations: the system's roots plus a registry's extra CAs, or
//! no verification at all for a registry marked insecure.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::error::{Error, Result};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's roots, loaded once (they honour `SSL_CERT_FILE`/`SSL_CERT_DIR`).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// A client certificate chain and its key.
pub type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// What a registry's `certs.d` directory holds.
#[derive(Default)]
pub struct CertsD {
    /// CAs (`*.crt`).
    pub roots: Vec<CertificateDer<'static>>,
    /// `client.cert` + `client.key` (or any `NAME.cert` + `NAME.key`).
    pub client: Option<ClientCert>,
}

/// Reads the first `DIR/REGISTRY/` of `dirs` that exists.
pub fn certs_d(dirs: &[PathBuf], registry: &str) -> Result<CertsD> {
    let Some(dir) = dirs.iter().map(|d| d.join(registry)).find(|d| d.is_dir()) else {
        return Ok(CertsD::default());
    };
    let bad = |reason: String| Error::CertsDir {
        registry: registry.to_owned(),
        dir: dir.display().to_string(),
        reason,
    };
    let mut out = CertsD::default();
    let mut names: Vec<PathBuf> = fs_err::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    for p in &names {
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "crt" {
            let pem = fs_err::read(p)?;
            for c in CertificateDer::pem_slice_iter(&pem) {
                out.roots
                    .push(c.map_err(|e| bad(format!("{}: {e}", p.display())))?);
            }
        } else if ext == "cert" && out.client.is_none() {
            let key = p.with_extension("key");
            if !key.is_file() {
                return Err(bad(format!(
                    "{} has no key {}",
                    p.display(),
                    file_name(&key)
                )));
            }
            let pem = fs_err::read(p)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("{}: {e}", p.display())))?;
            let k = PrivateKeyDer::from_pem_slice(&fs_err::read(&key)?)
                .map_err(|e| bad(format!("{}: {e}", key.display())))?;
            out.client = Some((chain, k));
        }
    }
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A verifying configuration trusting the system's roots and `extra`.
pub fn verified(
    extra: &[CertificateDer<'static>],
    client: Option<ClientCert>,
) -> Result<ClientConfig, rustls::Error> {
    let mut roots = RootCertStore::empty();
    let _ = roots.add_parsable_certificates(system_roots().iter().cloned());
    for c in extra {
        roots.add(c.clone())?;
    }
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    match client {
        Some((chain, key)) => b.with_client_auth_cert(chain, key),
        None => Ok(b.with_no_client_auth()),
    }
}

/// A configuration that accepts any certificate (`insecure` registries).
pub fn unverified(client: Option<ClientCert>) -> Result<ClientConfig, rustls::Error> {
    let p = provider();
    let b = ClientConfig::builder_with_provider(Arc::clone(&p))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(p)));
    match client {
        Some((chain, key)) => b.with_client_auth_cert(chain, key),
        None => Ok(b.with_no_client_auth()),
    }
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

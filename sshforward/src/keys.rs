//! The in-process agent of `--ssh ID=KEYFILE[,KEYFILE...]`: `BuildKit`
//! serves such keys from a keyring in its client, and so does rbuild.

use std::io::Read;
use std::path::Path;

use ssh_key::private::KeypairData;
use ssh_key::{Algorithm, EcdsaCurve, PrivateKey};

use crate::proto::{
    FAILURE, Fields, IDENTITIES_ANSWER, REQUEST_IDENTITIES, SIGN_REQUEST, SIGN_RESPONSE, put_string,
};

/// `SSH_AGENT_RSA_SHA2_256` and `SSH_AGENT_RSA_SHA2_512` sign-request flags.
const RSA_SHA2_256: u32 = 2;
const RSA_SHA2_512: u32 = 4;

/// Key files larger than this are not keys (`BuildKit` reads 100 KiB).
const MAX_KEY_FILE: u64 = 100 * 1024;

struct Key {
    private: PrivateKey,
    /// The public key in wire form, as identities list it and sign requests
    /// name it.
    blob: Vec<u8>,
    comment: String,
}

/// Private keys, held for the build.
#[derive(Default)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Adds the `OpenSSH` private key in `path` (Ed25519, ECDSA P-256/P-384
    /// or RSA, unencrypted). The error says what is wrong with the file.
    pub fn add_file(&mut self, path: &Path) -> Result<(), String> {
        let shown = path.display();
        let mut data = Vec::new();
        fs_err::File::open(path)
            .and_then(|f| f.take(MAX_KEY_FILE).read_to_end(&mut data))
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&data);
        let key = PrivateKey::from_openssh(&data).map_err(|e| {
            if text.contains("-----BEGIN") && text.contains(" PRIVATE KEY-----") {
                format!(
                    "{shown}: a PEM private key; rbuild reads keys in OpenSSH's format \
                     (convert a copy with ssh-keygen -p -f FILE)"
                )
            } else {
                format!("{shown}: not an OpenSSH private key ({e})")
            }
        })?;
        if key.is_encrypted() {
            return Err(format!(
                "{shown}: the key is encrypted with a passphrase; add it to an agent \
                 (ssh-add) and pass --ssh ID=$SSH_AUTH_SOCK"
            ));
        }
        match key.algorithm() {
            Algorithm::Ed25519
            | Algorithm::Rsa { .. }
            | Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256 | EcdsaCurve::NistP384,
            } => {}
            other => {
                return Err(format!("{shown}: {other} keys are not supported"));
            }
        }
        let blob = key
            .public_key()
            .to_bytes()
            .map_err(|e| format!("{shown}: {e}"))?;
        // As ssh-add, the file's name stands for a key without a comment.
        let comment = if key.comment().is_empty() {
            shown.to_string()
        } else {
            key.comment().to_owned()
        };
        if !self.keys.iter().any(|k| k.blob == blob) {
            self.keys.push(Key {
                private: key,
                blob,
                comment,
            });
        }
        Ok(())
    }

    /// The answer to one request (`REQUEST_IDENTITIES` or `SIGN_REQUEST`).
    pub(crate) fn answer(&self, req: &[u8]) -> Vec<u8> {
        match req.first() {
            Some(&REQUEST_IDENTITIES) => {
                let mut out = vec![IDENTITIES_ANSWER];
                let n = u32::try_from(self.keys.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&n.to_be_bytes());
                for k in &self.keys {
                    put_string(&mut out, &k.blob);
                    put_string(&mut out, k.comment.as_bytes());
                }
                out
            }
            Some(&SIGN_REQUEST) => self.sign(&req[1..]).unwrap_or_else(|| vec![FAILURE]),
            _ => vec![FAILURE],
        }
    }

    fn sign(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut f = Fields(body);
        let blob = f.string()?;
        let data = f.string()?;
        let flags = f.u32().unwrap_or(0);
        let k = self.keys.iter().find(|k| k.blob == blob)?;
        let (alg, sig) = sign_with(&k.private, data, flags)?;
        let mut sig_blob = Vec::new();
        put_string(&mut sig_blob, alg.as_bytes());
        put_string(&mut sig_blob, &sig);
        let mut out = vec![SIGN_RESPONSE];
        put_string(&mut out, &sig_blob);
        Some(out)
    }
}

/// The signature algorithm's name and the signature of `data`. RSA signs
/// with SHA-2 as the flags ask (`ssh-rsa`'s SHA-1 is refused, as `OpenSSH`
/// clients no longer ask for it), blinded.
fn sign_with(key: &PrivateKey, data: &[u8], flags: u32) -> Option<(String, Vec<u8>)> {
    use signature::{RandomizedSigner, SignatureEncoding as _, Signer as _};
    let KeypairData::Rsa(k) = key.key_data() else {
        let sig: ssh_key::Signature = key.try_sign(data).ok()?;
        return Some((sig.algorithm().as_str().to_owned(), sig.as_bytes().to_vec()));
    };
    let key = rsa_key(k)?;
    let mut rng = rand_core::OsRng;
    if flags & RSA_SHA2_512 != 0 {
        let sk = rsa::pkcs1v15::SigningKey::<ssh_key::sha2::Sha512>::new(key);
        let sig = sk.try_sign_with_rng(&mut rng, data).ok()?;
        Some(("rsa-sha2-512".to_owned(), sig.to_vec()))
    } else if flags & RSA_SHA2_256 != 0 {
        let sk = rsa::pkcs1v15::SigningKey::<ssh_key::sha2::Sha256>::new(key);
        let sig = sk.try_sign_with_rng(&mut rng, data).ok()?;
        Some(("rsa-sha2-256".to_owned(), sig.to_vec()))
    } else {
        None
    }
}

/// The `rsa` crate's key of an `OpenSSH` RSA key (`ssh-key` 0.6's own
/// conversion passes `p` twice and fails), checked by the crate.
fn rsa_key(k: &ssh_key::private::RsaKeypair) -> Option<rsa::RsaPrivateKey> {
    let n = |m: &ssh_key::Mpint| m.as_positive_bytes().map(rsa::BigUint::from_bytes_be);
    rsa::RsaPrivateKey::from_components(
        n(&k.public.n)?,
        n(&k.public.e)?,
        n(&k.private.d)?,
        vec![n(&k.private.p)?, n(&k.private.q)?],
    )
    .ok()
}

//! The forwarded socket against an in-process keyring and, through a second
//! forwarder, against an agent socket: what a step's client sees.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;

use rbuild_sshforward::{AgentSource, Forwarder, SshSpec};
use signature::Verifier;
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

fn key_file(
    dir: &Path,
    name: &str,
    alg: Algorithm,
    comment: &str,
) -> (PublicKey, std::path::PathBuf) {
    let mut k = PrivateKey::random(&mut rand_core::OsRng, alg).unwrap();
    k.set_comment(comment);
    let p = dir.join(name);
    std::fs::write(&p, k.to_openssh(LineEnding::LF).unwrap().as_bytes()).unwrap();
    (k.public_key().clone(), p)
}

fn call(s: &mut UnixStream, body: &[u8]) -> Vec<u8> {
    let mut msg = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    msg.extend_from_slice(body);
    s.write_all(&msg).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut out = vec![0; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut out).unwrap();
    out
}

fn string(b: &mut &[u8]) -> Vec<u8> {
    let n = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
    let s = b[4..4 + n].to_vec();
    *b = &b[4 + n..];
    s
}

fn put(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap().to_be_bytes());
    out.extend_from_slice(s);
}

/// (blob, comment) of each identity.
fn identities(s: &mut UnixStream) -> Vec<(Vec<u8>, String)> {
    let r = call(s, &[11]);
    assert_eq!(r[0], 12, "identities answer");
    let n = u32::from_be_bytes(r[1..5].try_into().unwrap());
    let mut rest = &r[5..];
    (0..n)
        .map(|_| {
            let blob = string(&mut rest);
            let c = String::from_utf8(string(&mut rest)).unwrap();
            (blob, c)
        })
        .collect()
}

fn sign(s: &mut UnixStream, blob: &[u8], data: &[u8], flags: u32) -> Option<ssh_key::Signature> {
    let mut req = vec![13];
    put(&mut req, blob);
    put(&mut req, data);
    req.extend_from_slice(&flags.to_be_bytes());
    let r = call(s, &req);
    if r == [5] {
        return None;
    }
    assert_eq!(r[0], 14);
    let mut rest = &r[1..];
    let blob = string(&mut rest);
    let mut sig = blob.as_slice();
    let alg = String::from_utf8(string(&mut sig)).unwrap();
    let bytes = string(&mut sig);
    Some(ssh_key::Signature::new(Algorithm::new(&alg).unwrap(), bytes).unwrap())
}

#[test]
fn key_files_are_listed_and_sign_and_everything_else_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ed, ed_path) = key_file(dir.path(), "ed", Algorithm::Ed25519, "ed@test");
    let (ec, ec_path) = key_file(
        dir.path(),
        "ec",
        Algorithm::Ecdsa {
            curve: ssh_key::EcdsaCurve::NistP256,
        },
        "",
    );
    let spec = SshSpec::parse(&format!("k={},{}", ed_path.display(), ec_path.display())).unwrap();
    let src = Arc::new(AgentSource::open(&spec, None).unwrap());
    let fw = Forwarder::start(dir.path(), "t", src, None, 0o640).unwrap();
    let meta = std::fs::metadata(fw.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert!(!fw.socket().starts_with(dir.path().join("ed")));
    let mut c = UnixStream::connect(fw.socket()).unwrap();
    let ids = identities(&mut c);
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0].0, ed.to_bytes().unwrap());
    assert_eq!(ids[0].1, "ed@test");
    assert_eq!(ids[1].0, ec.to_bytes().unwrap());
    // No comment in the file: its name, as ssh-add shows.
    assert_eq!(ids[1].1, ec_path.display().to_string());
    for (k, blob) in [(&ed, &ids[0].0), (&ec, &ids[1].0)] {
        let sig = sign(&mut c, blob, b"data to sign", 0).expect("signed");
        k.key_data().verify(b"data to sign", &sig).unwrap();
        assert!(k.key_data().verify(b"other data", &sig).is_err());
    }
    // An unknown key, adding a key, removing all, locking: refused.
    assert!(sign(&mut c, b"not a key", b"x", 0).is_none());
    for req in [
        &[17u8][..],
        &[19],
        &[22, 0, 0, 0, 1, b'p'],
        &[27, 0, 0, 0, 1, b'x'],
    ] {
        assert_eq!(call(&mut c, req), [5], "request {}", req[0]);
    }
    // The keys are still there.
    assert_eq!(identities(&mut c).len(), 2);
    let sock = fw.socket().to_path_buf();
    drop(fw);
    assert!(!sock.exists(), "socket left after the forwarder");
}

#[test]
fn rsa_keys_sign_with_sha2_as_asked() {
    let dir = tempfile::tempdir().unwrap();
    // Made by OpenSSH itself (and fast, unlike generating one here).
    let p = dir.path().join("rsa");
    let made = std::process::Command::new("ssh-keygen")
        .args([
            "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C", "rsa@test", "-f",
        ])
        .arg(&p)
        .status()
        .unwrap_or_else(|e| panic!("ssh-keygen is missing ({e}): install openssh-client"));
    assert!(made.success());
    let rsa = PublicKey::read_openssh_file(&p.with_extension("pub")).unwrap();
    let src = Arc::new(
        AgentSource::open(
            &SshSpec::parse(&format!("default={}", p.display())).unwrap(),
            None,
        )
        .unwrap(),
    );
    let fw = Forwarder::start(dir.path(), "t", src, None, 0o600).unwrap();
    let mut c = UnixStream::connect(fw.socket()).unwrap();
    let blob = rsa.to_bytes().unwrap();
    for (flags, name) in [(2, "rsa-sha2-256"), (4, "rsa-sha2-512")] {
        let sig = sign(&mut c, &blob, b"hello", flags).unwrap();
        assert_eq!(sig.algorithm().as_str(), name);
        rsa.key_data().verify(b"hello", &sig).unwrap();
    }
    // ssh-rsa (SHA-1) is not offered.
    assert!(sign(&mut c, &blob, b"hello", 0).is_none());
}

#[test]
fn a_socket_source_is_forwarded_read_only_and_raw_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let (ed, p) = key_file(dir.path(), "ed", Algorithm::Ed25519, "up@test");
    let up = Forwarder::start(
        dir.path(),
        "up",
        Arc::new(
            AgentSource::open(
                &SshSpec::parse(&format!("x={}", p.display())).unwrap(),
                None,
            )
            .unwrap(),
        ),
        None,
        0o600,
    )
    .unwrap();
    // `--ssh default` with $SSH_AUTH_SOCK naming the upstream agent.
    let spec = SshSpec::parse("default").unwrap();
    assert!(
        AgentSource::open(&spec, None)
            .unwrap_err()
            .to_string()
            .contains("SSH_AUTH_SOCK")
    );
    let src = Arc::new(AgentSource::open(&spec, Some(up.socket())).unwrap());
    assert!(matches!(&*src, AgentSource::Socket { raw: false, .. }));
    let fw = Forwarder::start(dir.path(), "t", src, None, 0o600).unwrap();
    let mut c = UnixStream::connect(fw.socket()).unwrap();
    let ids = identities(&mut c);
    assert_eq!(ids, vec![(ed.to_bytes().unwrap(), "up@test".to_owned())]);
    let sig = sign(&mut c, &ids[0].0, b"m", 0).unwrap();
    ed.key_data().verify(b"m", &sig).unwrap();
    assert_eq!(call(&mut c, &[19]), [5]);
    // raw=true: the bytes go through (the upstream answers what it answers).
    let spec = SshSpec::parse(&format!("r={},raw=true", up.socket().display())).unwrap();
    let fw = Forwarder::start(
        dir.path(),
        "t",
        Arc::new(AgentSource::open(&spec, None).unwrap()),
        None,
        0o600,
    )
    .unwrap();
    let mut c = UnixStream::connect(fw.socket()).unwrap();
    assert_eq!(identities(&mut c).len(), 1);
}

#[test]
fn bad_sources_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let err = |v: &str| match SshSpec::parse(v) {
        Ok(s) => AgentSource::open(&s, None).unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    let missing = dir.path().join("nope");
    assert!(
        err(&format!("a={}", missing.display())).starts_with("--ssh a: "),
        "{}",
        err(&format!("a={}", missing.display()))
    );
    let junk = dir.path().join("junk");
    std::fs::write(&junk, "not a key").unwrap();
    let e = err(&format!("a={}", junk.display()));
    assert!(e.contains("not an OpenSSH private key"), "{e}");
    let pem = dir.path().join("pem");
    std::fs::write(
        &pem,
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = err(&format!("a={}", pem.display()));
    assert!(e.contains("ssh-keygen -p"), "{e}");
    let (_, k) = key_file(dir.path(), "k", Algorithm::Ed25519, "c");
    let enc = dir.path().join("enc");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "secret", "-f"])
        .arg(&enc)
        .status()
        .unwrap_or_else(|e| panic!("ssh-keygen is missing ({e}): install openssh-client"));
    assert!(made.success());
    let e = err(&format!("a={}", enc.display()));
    assert!(e.contains("encrypted with a passphrase"), "{e}");
    assert!(err("a=1,raw=maybe").contains("invalid value for 'raw'"));
    assert!(
        err(&format!("a={},{},raw=true", k.display(), k.display())).contains("exactly one socket")
    );
    assert!(
        err(&format!("a={},raw=true", k.display()))
            .contains("raw mode only supported with socket paths")
    );
    let specs = [
        SshSpec::parse(&format!("a={}", k.display())).unwrap(),
        SshSpec::parse(&format!("a={}", k.display())).unwrap(),
    ];
    assert_eq!(
        AgentSource::open_all(&specs, None).unwrap_err().to_string(),
        "--ssh a: duplicate agent id"
    );
    assert_eq!(SshSpec::parse("=").unwrap().id, "default");
}

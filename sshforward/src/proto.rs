//! The ssh-agent protocol (draft-miller-ssh-agent): length-prefixed
//! messages, the few a read-only agent answers.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

pub(crate) const FAILURE: u8 = 5;
pub(crate) const REQUEST_IDENTITIES: u8 = 11;
pub(crate) const IDENTITIES_ANSWER: u8 = 12;
pub(crate) const SIGN_REQUEST: u8 = 13;
pub(crate) const SIGN_RESPONSE: u8 = 14;

/// `OpenSSH`'s limit on one message (`AGENT_MAX_LEN`).
const MAX_LEN: usize = 256 * 1024;

/// One message, or `None` at a clean end of stream.
pub(crate) fn read_frame(mut r: &UnixStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("agent message of {len} bytes"),
        ));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

pub(crate) fn write_frame(mut w: &UnixStream, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "agent message too long"))?;
    let mut msg = Vec::with_capacity(body.len() + 4);
    msg.extend_from_slice(&len.to_be_bytes());
    msg.extend_from_slice(body);
    w.write_all(&msg)
}

/// Answers `client`'s requests until it closes: identities and signatures
/// through `answer`, anything else (add, remove, lock, extensions) with
/// `SSH_AGENT_FAILURE`.
pub(crate) fn serve_read_only(
    client: &UnixStream,
    mut answer: impl FnMut(&[u8]) -> io::Result<Vec<u8>>,
) -> io::Result<()> {
    while let Some(req) = read_frame(client)? {
        let reply = match req[0] {
            REQUEST_IDENTITIES | SIGN_REQUEST => answer(&req)?,
            _ => vec![FAILURE],
        };
        write_frame(client, &reply)?;
    }
    Ok(())
}

/// Passes one request to the agent at `up` and returns its answer.
pub(crate) fn relay(up: &UnixStream, req: &[u8]) -> io::Result<Vec<u8>> {
    write_frame(up, req)?;
    read_frame(up)?.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
}

/// Reads the fields of a message body.
pub(crate) struct Fields<'a>(pub(crate) &'a [u8]);

impl<'a> Fields<'a> {
    pub(crate) fn u32(&mut self) -> Option<u32> {
        let (n, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_be_bytes(*n))
    }

    pub(crate) fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > self.0.len() {
            return None;
        }
        let (s, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(s)
    }
}

/// Appends an SSH `string` (u32 length, bytes).
pub(crate) fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    let len = u32::try_from(s.len()).expect("agent fields are far below 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s);
}

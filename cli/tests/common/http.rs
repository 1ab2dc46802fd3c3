//! A tiny HTTP/1.1 server on 127.0.0.1 for tests that fetch a URL.

use std::io::{Read, Write};

/// Serves `body` with `200 OK` to every connection on 127.0.0.1, in a thread;
/// returns the port.
pub fn serve(body: impl Into<Vec<u8>>) -> u16 {
    let body = body.into();
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    respond(response)
}

/// Redirects every request on 127.0.0.1 to `to` (`302 Found`), in a thread;
/// returns the port.
pub fn redirect(to: &str) -> u16 {
    respond(
        format!(
            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .into_bytes(),
    )
}

/// Answers every connection on 127.0.0.1 with the whole HTTP/1.1 `response`, in
/// a thread; returns the port. The request is read (up to 4 KiB) and ignored.
fn respond(response: Vec<u8>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(&response);
        }
    });
    port
}

//! A tiny HTTP/1.1 server on 127.0.0.1 for tests that fetch a URL.

use std::io::{Read, Write};

/// Serves `body` with `200 OK` to every connection on 127.0.0.1, in a thread;
/// returns the port. The request is read (up to 4 KiB) and ignored.
pub fn serve(body: impl Into<Vec<u8>>) -> u16 {
    let body = body.into();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    port
}

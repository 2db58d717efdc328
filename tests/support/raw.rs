//! Raw HTTP/1.1 over TCP: bytes written as given, the answer read until the peer closes, so a
//! test sees exactly what a client would (a bare hyper status line, a truncated body).

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::bounded;

/// A response read off the wire.
#[derive(Debug)]
pub struct Raw {
    /// Status code from the status line.
    pub status: u16,
    /// The response head (status line and headers), without the blank line.
    pub head: String,
    /// Every byte after the head, as sent (chunk framing included).
    pub body: Vec<u8>,
}

impl Raw {
    /// A header's value (case-insensitive name), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Writes `request` on a fresh connection and reads until the peer closes it. The write and the
/// read run concurrently, so a peer that answers (and closes) before reading everything
/// cannot leave the test blocked on a full socket buffer.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Raw {
    parse(&exchange_bytes(addr, request).await)
}

/// As [`exchange`], the answer unparsed (it may not be HTTP at all).
pub async fn exchange_bytes(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let stream = bounded(TcpStream::connect(addr)).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let request = request.to_vec();
    let write = async move {
        // The peer may close (or reset) before taking every byte of an abusive request.
        let _ = writer.write_all(&request).await;
        writer
    };
    let (_writer, out) = bounded(async { tokio::join!(write, read_to_close(&mut reader)) }).await;
    out
}

/// Reads everything until the peer closes the connection (or resets it).
pub async fn read_to_close(reader: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Splits a response into status, head and body (panics when there is no head).
pub fn parse(out: &[u8]) -> Raw {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(out)));
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Raw {
        status,
        head,
        body: out[split + 4..].to_vec(),
    }
}

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

/// One HTTP/1.1 keep-alive connection driven by hand, as a client that writes a request's head
/// and body in separate writes (Python's `http.client`, many SDKs) does. Responses are parsed
/// by their framing (`Content-Length` or chunked), so a connection closed or reset before a
/// whole response is an error, never a short answer.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed by a response.
    buf: Vec<u8>,
}

/// A response read off a [`Conn`].
#[derive(Debug)]
pub struct Message {
    /// Status code.
    pub status: u16,
    /// Header fields, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Message {
    /// A header's value, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the server said it closes the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// A request head: `method target`, `Host`, `headers`, and a `Content-Length` when `body_len`
/// is not zero.
pub fn head(method: &str, target: &str, headers: &[(&str, &str)], body_len: usize) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nhost: ifmatch.test\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if body_len > 0 {
        head.push_str(&format!("content-length: {body_len}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn eof(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_owned())
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

impl Conn {
    /// Connects to `addr`, with Nagle off so that each write is its own segment.
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = bounded(TcpStream::connect(addr)).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `head`, then, after `pause` (none if zero), `body`.
    pub async fn send(
        &mut self,
        head: &[u8],
        body: &[u8],
        pause: std::time::Duration,
    ) -> std::io::Result<()> {
        self.stream.write_all(head).await?;
        if !body.is_empty() {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            self.stream.write_all(body).await?;
        }
        Ok(())
    }

    /// Sends a request and reads its response (see [`send`](Self::send)).
    pub async fn exchange(
        &mut self,
        head: &[u8],
        body: &[u8],
        pause: std::time::Duration,
    ) -> std::io::Result<Message> {
        self.send(head, body, pause).await?;
        self.response().await
    }

    /// Reads more bytes into the buffer; an error at EOF.
    async fn fill(&mut self, what: &str) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await? {
            0 => Err(eof(what)),
            n => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    /// Reads the next whole response.
    pub async fn response(&mut self) -> std::io::Result<Message> {
        let (status, headers, used) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut fields);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(used)) => {
                    let status = parsed.code.ok_or_else(|| invalid("no status".into()))?;
                    let headers = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value).into_owned();
                            (h.name.to_ascii_lowercase(), value)
                        })
                        .collect::<Vec<_>>();
                    break (status, headers, used);
                }
                Ok(httparse::Status::Partial) => self.fill("closed before a response head").await?,
                Err(e) => return Err(invalid(format!("bad response head: {e}"))),
            }
        };
        self.buf.drain(..used);
        let mut message = Message {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(length) = message.header("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| invalid(format!("bad content-length {length:?}")))?;
            while self.buf.len() < length {
                self.fill("closed inside a response body").await?;
            }
            message.body = self.buf.drain(..length).collect();
        } else if message
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            message.body = self.chunked().await?;
        } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
            return Err(invalid(format!("unframed response {status}")));
        }
        Ok(message)
    }

    /// Reads a chunked body (trailers skipped).
    async fn chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let (start, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((start, size))) => break (start, size),
                    Ok(httparse::Status::Partial) => self.fill("closed inside a chunk").await?,
                    Err(_) => return Err(invalid("bad chunk size".into())),
                }
            };
            let size = usize::try_from(size).map_err(|_| invalid("huge chunk".into()))?;
            if size == 0 {
                self.buf.drain(..start);
                // Trailers (none expected), then the final CRLF.
                loop {
                    if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        let line = self.buf.drain(..end + 2).count() == 2;
                        if line {
                            return Ok(body);
                        }
                    } else {
                        self.fill("closed inside trailers").await?;
                    }
                }
            }
            while self.buf.len() < start + size + 2 {
                self.fill("closed inside a chunk").await?;
            }
            body.extend_from_slice(&self.buf[start..start + size]);
            self.buf.drain(..start + size + 2);
        }
    }

    /// Whether the server has closed the connection: the next read is the end of the stream
    /// (a reset counts as not closed cleanly). Bytes sent before that are an error.
    pub async fn closed_cleanly(&mut self) -> std::io::Result<bool> {
        if !self.buf.is_empty() {
            return Err(invalid("bytes after the last response".into()));
        }
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) => Ok(true),
            Ok(_) => Err(invalid("bytes after the last response".into())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(false),
            Err(e) => Err(e),
        }
    }
}

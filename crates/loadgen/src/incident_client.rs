//! A blocking HTTP/1.1 client for the incident benchmark: one keep-alive connection per
//! thread, prebuilt request bytes, responses read just far enough to time them exactly.
//!
//! Blocking on purpose: each request is timed from its first byte written to the last byte of
//! its response on a thread that does nothing else, with no async scheduler in between.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::stats::Histogram;

/// Largest response body read (the error JSON is a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;
/// Longest response line, and most header lines.
const MAX_LINE: u64 = 8 * 1024;
const MAX_HEADERS: usize = 100;

/// One keep-alive connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The last response's body (bounded by `MAX_BODY`), reused between requests.
    body: Vec<u8>,
}

/// What one response said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The server will close the connection after this response.
    pub close: bool,
}

impl Conn {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            body: Vec::new(),
        })
    }

    /// Sends one whole request and reads its response.
    pub fn send(&mut self, request: &[u8]) -> anyhow::Result<Response> {
        self.writer.write_all(request)?;
        let status_line = self
            .line()?
            .context("connection closed before a response")?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let (mut length, mut close) = (0usize, false);
        for _ in 0..=MAX_HEADERS {
            let line = self
                .line()?
                .context("connection closed inside a response")?;
            if line.is_empty() {
                self.body.resize(length, 0);
                self.reader.read_exact(&mut self.body)?;
                return Ok(Response { status, close });
            }
            let Some((name, value)) = line.split_once(':') else {
                bail!("bad header line {line:?}");
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().context("bad content-length")?;
                if length > MAX_BODY {
                    bail!("response body of {length} bytes");
                }
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("chunked responses are not expected here");
            }
        }
        bail!("more than {MAX_HEADERS} response headers")
    }

    /// The body of the last response.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    fn line(&mut self) -> anyhow::Result<Option<String>> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        Ok(Some(String::from_utf8(line)?))
    }
}

/// `PATCH path` with the given headers and an empty body, as bytes.
pub fn patch_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut request = format!("PATCH {path} HTTP/1.1\r\nhost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("content-type: application/offset+octet-stream\r\ncontent-length: 0\r\n\r\n");
    request.into_bytes()
}

/// What one connection's worker measured.
#[derive(Debug, Default)]
pub struct WorkerOutcome {
    pub latency: Histogram,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no response (reset, timeout, garbage); the worker reconnects.
    pub transport_errors: u64,
    /// New connections after the first (server closed, or after an error).
    pub reconnects: u64,
}

/// Sends `counts[0]` requests over one connection, waits twice on `pause` (the caller
/// measures in between; it must always be waited on, also after an error), then sends
/// `counts[1]` more: cycling through `requests` from `first`, reconnecting when the server
/// closes or fails the connection.
pub fn run_worker(
    addr: SocketAddr,
    requests: &[Vec<u8>],
    first: usize,
    counts: [usize; 2],
    pause: &Barrier,
    timeout: Duration,
) -> anyhow::Result<WorkerOutcome> {
    let mut outcome = WorkerOutcome::default();
    let mut conn = None;
    let mut result = Conn::connect(addr, timeout)
        .context("connecting")
        .map(|c| conn = Some(c));
    let mut sent = 0;
    for (phase, &count) in counts.iter().enumerate() {
        if phase > 0 {
            pause.wait();
            pause.wait();
        }
        if result.is_ok() {
            result = send_many(
                addr,
                requests,
                first + sent,
                count,
                timeout,
                &mut conn,
                &mut outcome,
            );
        }
        sent += count;
    }
    result.map(|()| outcome)
}

fn send_many(
    addr: SocketAddr,
    requests: &[Vec<u8>],
    first: usize,
    count: usize,
    timeout: Duration,
    conn: &mut Option<Conn>,
    outcome: &mut WorkerOutcome,
) -> anyhow::Result<()> {
    for i in 0..count {
        let request = &requests[(first + i) % requests.len()];
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                outcome.reconnects += 1;
                conn.insert(Conn::connect(addr, timeout).context("reconnecting")?)
            }
        };
        let started = Instant::now();
        match c.send(request) {
            Ok(response) => {
                outcome.latency.record(started.elapsed());
                *outcome.statuses.entry(response.status).or_default() += 1;
                if response.close {
                    *conn = None;
                }
            }
            Err(_) => {
                outcome.transport_errors += 1;
                *conn = None;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    use super::*;

    /// A server on a real socket: answers each request with the next canned response, and
    /// closes the connection after a `connection: close` one.
    fn serve(responses: Vec<&'static str>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        std::thread::spawn(move || {
            let mut next = responses.into_iter().cycle();
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap_or_else(|e| panic!("{e}")));
                let mut writer = conn;
                loop {
                    // Request head up to the blank line (bodies are empty here).
                    let mut line = String::new();
                    let mut got = false;
                    while reader.read_line(&mut line).unwrap_or(0) > 0 {
                        got = true;
                        if line == "\r\n" {
                            break;
                        }
                        line.clear();
                    }
                    if !got {
                        break;
                    }
                    let response = next.next().unwrap_or_default();
                    let _ = writer.write_all(response.as_bytes());
                    if response.contains("connection: close") {
                        break;
                    }
                }
            }
        });
        addr
    }

    #[test]
    fn worker_counts_statuses_and_reconnects_after_close() {
        let addr = serve(vec![
            "HTTP/1.1 409 Conflict\r\ncontent-length: 5\r\n\r\nnope!",
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}",
        ]);
        let request = patch_request(addr, "/v1/streams/a/b/c", &[("stream-offset", "1")]);
        assert!(String::from_utf8_lossy(&request).ends_with("content-length: 0\r\n\r\n"));
        let pause = Barrier::new(2);
        let outcome = std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                run_worker(
                    addr,
                    std::slice::from_ref(&request),
                    0,
                    [3, 6],
                    &pause,
                    Duration::from_secs(5),
                )
            });
            pause.wait();
            pause.wait();
            worker.join().unwrap_or_else(|_| panic!("worker panicked"))
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(outcome.latency.count(), 9);
        let statuses: Vec<(u16, u64)> = outcome.statuses.into_iter().collect();
        assert_eq!(statuses, vec![(400, 3), (401, 3), (409, 3)]);
        assert_eq!(outcome.reconnects, 3);
        assert_eq!(outcome.transport_errors, 0);
    }
}

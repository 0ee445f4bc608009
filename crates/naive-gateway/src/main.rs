//! `naive-gateway`: the benchmark's reference for the incident in DESIGN.md §1 — the same
//! stream PATCHes answered the way many services are written: errors are `anyhow::Error`s
//! with context (capturing a backtrace when `RUST_BACKTRACE=1`), and every failed request is
//! logged with `{:?}`, which prints that backtrace and so makes std symbolize it from the
//! binary's DWARF.
//!
//! Deliberately not how engine-gateway is written; it exists only so `gateway-bench incident`
//! can compare both under the same environment. HTTP/1.1 by hand over `std::net`, one thread
//! per connection, keep-alive, `Content-Length` bodies only.
//!
//! ```text
//! naive-gateway --listen 127.0.0.1:8081 --token SECRET
//! RUST_BACKTRACE=1 naive-gateway --measure-symbolization
//! ```
//!
//! `--measure-symbolization` prints what one `{:?}` of an error with a backtrace costs this
//! binary (heap in use and RSS, before and after) and exits: the figure memwatch's
//! symbolization estimate is checked against.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use anyhow::{Context, anyhow, bail};

/// Largest request body read; larger ones are refused.
const MAX_BODY: usize = 1 << 20;
/// Largest request head line, and most header lines per request.
const MAX_LINE: usize = 8 * 1024;
const MAX_HEADERS: usize = 100;

/// Stream name → committed length, in memory: enough to answer 204 and 409 like the gateway.
type Streams = Arc<Mutex<HashMap<String, u64>>>;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut token) = (String::from("127.0.0.1:8081"), None);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--measure-symbolization" => return measure_symbolization(),
            "--listen" => listen = args.next().context("--listen needs an address")?,
            "--token" => token = Some(args.next().context("--token needs a value")?),
            other => bail!("unknown argument {other}"),
        }
    }
    let token = Arc::new(token.context("--token is required")?);
    let listener = TcpListener::bind(&listen).with_context(|| format!("binding {listen}"))?;
    let streams: Streams = Arc::default();
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(conn) => conn,
            Err(err) => {
                eprintln!("accept failed: {err}");
                continue;
            }
        };
        let (streams, token) = (streams.clone(), token.clone());
        std::thread::spawn(move || {
            if let Err(err) = serve(conn, &streams, &token) {
                eprintln!("connection failed: {err:#}");
            }
        });
    }
    Ok(())
}

/// Formats one failed request's error with `{:?}` (symbolizing its backtrace when
/// `RUST_BACKTRACE=1`) and prints heap and RSS before and after, in bytes.
fn measure_symbolization() -> anyhow::Result<()> {
    let before = (heap_in_use(), rss_bytes());
    let request = Request {
        method: "PATCH".into(),
        path: "/streams/s".into(),
        headers: HashMap::new(),
        body: Vec::new(),
    };
    let err = authorize(&request, "secret").expect_err("no token is refused");
    let printed = format!("{err:?}");
    let after = (heap_in_use(), rss_bytes());
    println!(
        "symbolization heap_before={} heap_after={} rss_before={} rss_after={} printed_bytes={}",
        before.0,
        after.0,
        before.1,
        after.1,
        printed.len()
    );
    Ok(())
}

/// glibc's heap bytes in use (`mallinfo2().uordblks` plus mmapped blocks).
fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as u64
}

/// `VmRSS` of this process in bytes, 0 when unreadable.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// An HTTP status carried as an error's context, so the handler knows what to answer.
#[derive(Debug)]
struct Status(u16, &'static str);

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

impl std::error::Error for Status {}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    /// Lowercase names.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

fn serve(conn: TcpStream, streams: &Streams, token: &str) -> anyhow::Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    while let Some(request) = read_request(&mut reader).context("reading a request")? {
        let (status, extra, body) = match handle(&request, streams, token) {
            Ok((status, extra)) => (status, extra, String::new()),
            Err(err) => {
                // The line that made the incident: Debug of an error with a backtrace.
                eprintln!(
                    "request {} {} failed: {err:?}",
                    request.method, request.path
                );
                let status = err.downcast_ref::<Status>().map_or(500, |s| s.0);
                let body = format!("{{\"error\":\"{}\",\"message\":\"{err}\"}}", status);
                (status, String::new(), body)
            }
        };
        write!(
            writer,
            "HTTP/1.1 {status} {}\r\ncontent-length: {}\r\ncontent-type: application/json\r\n{extra}\r\n{body}",
            reason(status),
            body.len()
        )?;
        writer.flush()?;
    }
    Ok(())
}

/// Answers one request: status and extra header lines.
fn handle(request: &Request, streams: &Streams, token: &str) -> anyhow::Result<(u16, String)> {
    if request.path == "/healthz" {
        return Ok((200, String::new()));
    }
    let name = request
        .path
        .strip_prefix("/v1/streams/")
        .ok_or_else(|| anyhow!("no route for {}", request.path))
        .context(Status(404, "not_found"))?;
    authorize(request, token).context(Status(401, "invalid_token"))?;
    if request.method != "PATCH" {
        bail!(Status(405, "method_not_allowed"));
    }
    let offset = parse_offset(request).context(Status(400, "invalid_offset"))?;
    let mut streams = streams
        .lock()
        .map_err(|_| anyhow!("stream table poisoned"))?;
    let length = streams.entry(name.to_string()).or_insert(0);
    if offset != *length {
        return Err(anyhow!(
            "offset mismatch on {name}: client sent {offset}, committed is {length}"
        ))
        .context(Status(409, "offset_mismatch"));
    }
    *length += request.body.len() as u64;
    Ok((204, format!("stream-offset: {length}\r\n")))
}

fn authorize(request: &Request, token: &str) -> anyhow::Result<()> {
    let header = request
        .header("authorization")
        .context("missing Authorization header")?;
    let presented = header
        .strip_prefix("Bearer ")
        .context("Authorization is not a bearer token")?;
    if presented != token {
        bail!(
            "unknown token {}…",
            presented.chars().take(8).collect::<String>()
        );
    }
    Ok(())
}

fn parse_offset(request: &Request) -> anyhow::Result<u64> {
    let text = request
        .header("stream-offset")
        .context("missing Stream-Offset header")?;
    text.trim()
        .parse::<u64>()
        .with_context(|| format!("Stream-Offset {text:?} is not a number"))
}

/// Reads one request; `None` when the client closed the connection between requests.
fn read_request(reader: &mut impl BufRead) -> anyhow::Result<Option<Request>> {
    let Some(line) = read_line(reader)? else {
        return Ok(None);
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        bail!("bad request line {line:?}");
    };
    let mut headers = HashMap::new();
    loop {
        let line = read_line(reader)?.context("connection closed inside a request head")?;
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            bail!("more than {MAX_HEADERS} headers");
        }
        let (name, value) = line.split_once(':').context("header without a colon")?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = match headers.get("content-length") {
        Some(v) => v.parse().context("bad Content-Length")?,
        None => 0,
    };
    if length > MAX_BODY {
        bail!("body of {length} bytes is too large");
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).context("reading the body")?;
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        headers,
        body,
    }))
}

/// One CRLF-terminated line without its terminator; `None` at a clean end of stream.
fn read_line(reader: &mut impl BufRead) -> anyhow::Result<Option<String>> {
    let mut line = Vec::new();
    let n = reader.take(MAX_LINE as u64).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        bail!("line longer than {MAX_LINE} bytes or cut short");
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(Some(
        String::from_utf8(line).context("header is not UTF-8")?,
    ))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        _ => "Internal Server Error",
    }
}

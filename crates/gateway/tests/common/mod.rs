//! Test harness: the real `engine-gateway` binary in a temp dir, and a raw HTTP/1.1 client.
#![allow(dead_code)] // each test binary uses a different part of this module
#![allow(clippy::unwrap_used)] // test support: a failure here is a test failure

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_engine-gateway");

/// A gateway process serving a data directory on a fixed loopback port.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub child: Option<Child>,
    /// Extra `serve` arguments, kept for restarts.
    args: Vec<String>,
    /// Path of the config file, if any.
    pub config: Option<PathBuf>,
}

/// A port free right now (the listener is dropped; the gateway binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Gateway {
    pub fn start() -> Gateway {
        Self::start_with(&[], None)
    }

    /// Starts with extra flags and, optionally, a TOML config file's text.
    pub fn start_with(args: &[&str], config: Option<&str>) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let config_path = config.map(|text| {
            let path = dir.path().join("gateway.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut gw = Gateway {
            dir,
            addr,
            child: None,
            args: args.iter().map(|s| s.to_string()).collect(),
            config: config_path,
        };
        gw.spawn();
        gw
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts the process (again) and waits until it answers /healthz (it listens only once the
    /// store and tokens are open).
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(self.data_dir());
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(&self.args)
            .env("ENGINE_GATEWAY_LOG", "info")
            // Tests stop gateways often; the readiness delay is tested on its own (lifecycle.rs).
            .env("ENGINE_GATEWAY_SHUTDOWN_DELAY", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.path().join("gateway.log")).unwrap(),
            ));
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let probe = b"GET /healthz HTTP/1.1
host: x
connection: close

";
            if request_raw(self.addr, probe).is_ok_and(|r| r.status == 200) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gateway exited with {status} at start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Sends SIGTERM and returns at once; [`Gateway::wait_exit`] collects the status.
    pub fn signal_term(&self) {
        let child = self.child.as_ref().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal_term();
        self.wait_exit()
    }

    /// Waits (at most 20 s) for the process to exit; returns its exit status code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// `engine-gateway token create ...`, returning the secret.
    pub fn create_token(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(["token", "create", "--data-dir"])
            .arg(self.data_dir())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        request(self.addr, method, path, token, headers, body)
    }

    /// HEAD a stream: (status, committed offset).
    pub fn offset(&self, token: &str, stream: &str) -> (u16, Option<u64>) {
        let r = self.request(
            "HEAD",
            &format!("/v1/streams/{stream}"),
            Some(token),
            &[],
            b"",
        );
        (
            r.status,
            r.header("stream-offset").map(|v| v.parse().unwrap()),
        )
    }

    pub fn append(&self, token: &str, stream: &str, offset: u64, body: &[u8]) -> Response {
        let offset = offset.to_string();
        self.request(
            "PATCH",
            &format!("/v1/streams/{stream}"),
            Some(token),
            &[
                ("stream-offset", &offset),
                ("content-type", "application/offset+octet-stream"),
            ],
            body,
        )
    }

    pub fn read_all(&self, token: &str, stream: &str) -> Vec<u8> {
        let r = self.request(
            "GET",
            &format!("/v1/streams/{stream}?offset=0"),
            Some(token),
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.body
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The stable `error` code of a JSON error body.
    pub fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!("status {} body is not JSON: {:?}", self.status, self.text())
        });
        v["error"].as_str().unwrap().to_string()
    }
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(&raw).unwrap();
    read_response_to(stream, method != "HEAD").unwrap()
}

/// Sends raw bytes, reads until the server closes, parses status line, headers and body
/// (content-length or chunked).
pub fn request_raw(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(raw)?;
    read_response(stream)
}

pub fn read_response(stream: TcpStream) -> std::io::Result<Response> {
    read_response_to(stream, true)
}

/// Reads a response; `with_body` is false for answers to HEAD.
pub fn read_response_to(stream: TcpStream, with_body: bool) -> std::io::Result<Response> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v): &(String, String)| v.clone())
    };
    let mut body = Vec::new();
    if !with_body {
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim(), 16).map_err(std::io::Error::other)?;
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            line.clear();
            reader.read_line(&mut line)?;
        }
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else {
        let _ = reader.read_to_end(&mut body);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Deterministic pseudo-random bytes (xorshift), for content checks.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn sha256_file(path: &Path) -> String {
    sha256(&std::fs::read(path).unwrap())
}

/// Whether slow tests (large pushes, kill -9 cycles) run: CI sets ENGINE_GATEWAY_SLOW_TESTS=1.
pub fn slow_tests() -> bool {
    std::env::var_os("ENGINE_GATEWAY_SLOW_TESTS").is_some_and(|v| v == "1")
}

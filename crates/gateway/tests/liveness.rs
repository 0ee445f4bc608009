//! Bytes are live and rights are current: a PATCH's bytes are committed within the flush
//! interval of arriving (not only per full chunk), a follower sees them as soon, a writer
//! below the minimum data rate is cut with its committed offset, and a revoked or expired
//! token ends the PATCHes and followers it authorized within seconds.

#![allow(clippy::unwrap_used)] // tests may panic on what they set up

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Gateway, read_response};

/// Opens a chunked PATCH at `offset` and returns the socket, ready for `chunk()` calls.
fn open_patch(gw: &Gateway, token: &str, stream: &str, offset: u64) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let head = format!(
        "PATCH /v1/streams/{stream} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         stream-offset: {offset}\r\ncontent-type: application/offset+octet-stream\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn chunk(s: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    s.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
    s.write_all(data)?;
    s.write_all(b"\r\n")
}

/// Opens `GET ?follow=true` and reads past the response head.
fn open_follower(gw: &Gateway, token: &str, stream: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let req = format!(
        "GET /v1/streams/{stream}?follow=true HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Reads from a chunked follower until `needle` has been seen.
fn read_until(s: &mut TcpStream, needle: &[u8]) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "follower ended early");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn a_slow_patch_is_committed_and_followed_within_the_flush_interval() {
    let gw = Gateway::start();
    let token = gw.admin_token();
    assert_eq!(gw.append(&token, "acme/prod/live", 0, b"").status, 204);
    let mut follower = open_follower(&gw, &token, "acme/prod/live");
    let mut patch = open_patch(&gw, &token, "acme/prod/live", 0);
    let mut worst = Duration::ZERO;
    for i in 0..5 {
        let line = format!("line {i} of a deployment log\n");
        let sent = Instant::now();
        chunk(&mut patch, line.as_bytes()).unwrap();
        read_until(&mut follower, line.as_bytes());
        worst = worst.max(sent.elapsed());
    }
    // flush_interval is 100 ms; a debug build on a shared machine gets generous slack.
    assert!(
        worst < Duration::from_millis(1500),
        "worst line latency {worst:?}"
    );
    let (status, offset) = gw.offset(&token, "acme/prod/live");
    assert_eq!((status, offset), (200, Some(5 * 27)));
    patch.write_all(b"0\r\n\r\n").unwrap();
    let r = read_response(patch).unwrap();
    assert_eq!((r.status, r.header("stream-offset")), (204, Some("135")));
}

#[test]
fn a_writer_below_the_minimum_rate_is_cut_with_its_committed_offset() {
    let config = "[limits]\nmin_body_rate = 1000\nbody_rate_grace_secs = 1\n";
    let gw = Gateway::start_with(&[], Some(config));
    let token = gw.admin_token();
    let mut patch = open_patch(&gw, &token, "acme/prod/trickle", 0);
    let started = Instant::now();
    let mut sent = 0u64;
    // One byte every 50 ms (20 B/s) until the gateway answers.
    patch.set_nonblocking(true).unwrap();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        if chunk(&mut patch, b"x").is_ok() {
            sent += 1;
        }
        let mut buf = [0u8; 1024];
        if let Ok(n) = patch.read(&mut buf)
            && n > 0
        {
            answer.extend_from_slice(&buf[..n]);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    patch.set_nonblocking(false).unwrap();
    let mut rest = Vec::new();
    let _ = patch.read_to_end(&mut rest);
    answer.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(text.starts_with("http/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    let (_, committed) = gw.offset(&token, "acme/prod/trickle");
    let committed = committed.unwrap();
    assert!(
        text.contains(&format!("stream-offset: {committed}")),
        "{text}"
    );
    assert!(committed > 0 && committed <= sent, "{committed} of {sent}");
    assert!(started.elapsed() < Duration::from_secs(6));
}

#[test]
fn revocation_ends_running_patches_and_followers() {
    let gw = Gateway::start();
    let token = gw.create_token(&["--org", "acme", "--cluster", "prod", "--role", "deployer"]);
    let id = token.split('_').nth(1).unwrap().to_owned();
    assert_eq!(gw.append(&token, "acme/prod/r", 0, b"start\n").status, 204);
    let mut follower = open_follower(&gw, &token, "acme/prod/r");
    let mut patch = open_patch(&gw, &token, "acme/prod/r", 6);
    chunk(&mut patch, b"before revocation\n").unwrap();
    read_until(&mut follower, b"before revocation\n");

    let out = Command::new(BIN)
        .args(["token", "revoke", &id, "--data-dir"])
        .arg(gw.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked = Instant::now();

    // The writer keeps sending; the gateway answers 401 with what it committed.
    patch.set_nonblocking(true).unwrap();
    let mut answer = Vec::new();
    while revoked.elapsed() < Duration::from_secs(10) && answer.is_empty() {
        let _ = chunk(&mut patch, b"after\n");
        let mut buf = [0u8; 2048];
        if let Ok(n) = patch.read(&mut buf) {
            answer.extend_from_slice(&buf[..n]);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cut_after = revoked.elapsed();
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(text.starts_with("http/1.1 401"), "{text}");
    assert!(text.contains("token_revoked"), "{text}");
    assert!(
        cut_after < Duration::from_secs(5),
        "PATCH cut after {cut_after:?}"
    );
    let (_, committed) = gw.offset(&gw.admin_token(), "acme/prod/r");
    assert!(
        text.contains(&format!("stream-offset: {}", committed.unwrap())),
        "{text}"
    );

    // The follower's body ends too (the connection is closed mid-body).
    let mut buf = [0u8; 4096];
    loop {
        match follower.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => assert!(
                revoked.elapsed() < Duration::from_secs(5),
                "follower not cut"
            ),
        }
    }
    assert!(revoked.elapsed() < Duration::from_secs(5));
}

#[test]
fn expiry_ends_a_follower() {
    let gw = Gateway::start();
    let token = gw.create_token(&["--org", "acme", "--role", "reader", "--ttl", "2s"]);
    assert_eq!(
        gw.append(&gw.admin_token(), "acme/prod/x", 0, b"x").status,
        204
    );
    let mut follower = open_follower(&gw, &token, "acme/prod/x");
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while let Ok(n) = follower.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    // Expires 2 s after creation; re-checked every second.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(gw.offset(&token, "acme/prod/x").0, 401);
}

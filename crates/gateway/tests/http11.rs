//! HTTP/1.1 with ordinary clients: early error answers keep keep-alive connections usable (or
//! say `Connection: close`), `Expect: 100-continue` gets its answer before the body is sent,
//! and every error status carries the JSON body. Real clients: Python's http.client and
//! `requests` (python3 must be installed; CI installs `requests`), curl, raw sockets.

#![allow(clippy::unwrap_used)] // tests may panic on what they set up

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{Gateway, read_response};

fn python(script: &str, args: &[&str]) -> String {
    let path = format!("{}/tests/http11/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("python3 must be installed for these tests");
    assert!(
        out.status.success(),
        "{script} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn python_http_client_keeps_one_connection_through_early_errors() {
    let gw = Gateway::start();
    let token = gw.create_token(&["--org", "acme", "--cluster", "prod", "--role", "deployer"]);
    let port = gw.addr.port().to_string();
    let out = python(
        "keep_alive.py",
        &["127.0.0.1", &port, &token, "acme/prod/py"],
    );
    let expected = "\
401 missing_token reused
415 unsupported_media_type reused
204 - reused
409 offset_mismatch reused
403 forbidden reused
405 method_not_allowed reused
404 not_found reused
400 invalid_stream_id reused
200 - reused
";
    assert_eq!(out, expected);
}

#[test]
fn requests_session_survives_early_errors() {
    let gw = Gateway::start();
    let token = gw.create_token(&["--org", "acme", "--cluster", "prod", "--role", "deployer"]);
    let out = python("session.py", &[&gw.url(), &token, "acme/prod/rq"]);
    let expected = "\
401 missing_token
204 -
409 offset_mismatch
415 unsupported_media_type
401 missing_token
200 20000
";
    assert_eq!(out, expected);
}

/// The status line and headers of the next answer on `stream`, lowercased.
fn head_of_answer(stream: &mut TcpStream) -> Vec<String> {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            return lines;
        }
        lines.push(line);
    }
}

#[test]
fn expect_continue_gets_every_refusal_before_the_body() {
    let gw = Gateway::start();
    let token = gw.create_token(&["--org", "acme", "--cluster", "prod", "--role", "deployer"]);
    assert_eq!(gw.append(&token, "acme/prod/e", 0, b"abc").status, 204);
    let patch = |offset: u64, auth: &str, ctype: &str| {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = format!(
            "PATCH /v1/streams/acme/prod/e HTTP/1.1\r\nhost: x\r\n{auth}content-type: {ctype}\r\n\
             stream-offset: {offset}\r\ncontent-length: 1048576\r\nexpect: 100-continue\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        s
    };
    let auth = format!("authorization: Bearer {token}\r\n");
    let octets = "application/offset+octet-stream";
    for (offset, auth, ctype, status) in [
        (7, auth.as_str(), octets, "409"),
        (3, "", octets, "401"),
        (3, auth.as_str(), "text/plain", "415"),
    ] {
        let mut s = patch(offset, auth, ctype);
        let head = head_of_answer(&mut s);
        assert!(
            head[0].starts_with(&format!("http/1.1 {status}")),
            "{offset} {auth:?}: {head:?}"
        );
        assert!(head.contains(&"connection: close".to_owned()), "{head:?}");
    }
    // The right offset: 100 Continue, then the body is taken.
    let mut s = patch(3, &auth, octets);
    let head = head_of_answer(&mut s);
    assert!(head[0].starts_with("http/1.1 100"), "{head:?}");
    s.write_all(&vec![b'z'; 1 << 20]).unwrap();
    let r = read_response(s).unwrap();
    assert_eq!(
        (r.status, r.header("stream-offset")),
        (204, Some("1048579"))
    );

    // curl, which waits for the 100 before sending: the 409 comes without it.
    let file = gw.dir.path().join("big");
    std::fs::write(&file, vec![b'q'; 2 << 20]).unwrap();
    let out = Command::new("curl")
        .args([
            "-sv",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PATCH",
        ])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Content-Type: application/offset+octet-stream"])
        .args(["-H", "Stream-Offset: 5", "-H", "Expect: 100-continue"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{}/v1/streams/acme/prod/e", gw.url()))
        .output()
        .unwrap();
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "409", "{verbose}");
    assert!(!verbose.contains("< HTTP/1.1 100"), "{verbose}");
}

#[test]
fn an_error_before_a_large_body_says_connection_close() {
    let gw = Gateway::start();
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = "PATCH /v1/streams/acme/prod/x HTTP/1.1\r\nhost: x\r\n\
                content-type: application/offset+octet-stream\r\nstream-offset: 0\r\n\
                content-length: 4194304\r\n\r\n";
    s.write_all(head.as_bytes()).unwrap();
    // Some of the body, more than the gateway drains.
    let _ = s.write_all(&vec![b'a'; 256 * 1024]);
    let head = head_of_answer(&mut s);
    assert!(head[0].starts_with("http/1.1 401"), "{head:?}");
    assert!(head.contains(&"connection: close".to_owned()), "{head:?}");
    assert!(
        head.contains(&"content-type: application/json".to_owned()),
        "{head:?}"
    );
}

#[test]
fn an_invalid_utf8_path_gets_the_json_error() {
    let gw = Gateway::start();
    let token = gw.admin_token();
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let req = format!(
        "GET /v1/streams/acme/%C3%28/x HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let r = read_response(s).unwrap();
    assert_eq!((r.status, r.code().as_str()), (400, "invalid_stream_id"));
    let mut body = String::new();
    let _ = (&r.body[..]).read_to_string(&mut body);
    assert!(body.contains("message"), "{body}");
}

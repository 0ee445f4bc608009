//! Protocol v1 against the real binary: every status code and error code a client can meet.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Gateway, request, request_raw};

const OCTETS: (&str, &str) = ("content-type", "application/offset+octet-stream");

#[test]
fn append_head_read_seal_list_delete() {
    let gw = Gateway::start();
    let admin = gw.admin_token();
    let deployer = gw.create_token(&["--org", "acme", "--cluster", "prod", "--role", "deployer"]);
    let s = "acme/prod/deploy.log";

    assert_eq!(gw.offset(&deployer, s).0, 404);
    let r = gw.append(&deployer, s, 0, b"hello ");
    assert_eq!(
        (r.status, r.header("stream-offset")),
        (204, Some("6")),
        "{}",
        r.text()
    );
    let r = gw.append(&deployer, s, 6, b"world");
    assert_eq!(r.header("stream-offset"), Some("11"));
    let r = gw.request(
        "HEAD",
        &format!("/v1/streams/{s}"),
        Some(&deployer),
        &[],
        b"",
    );
    assert_eq!(
        (
            r.status,
            r.header("stream-offset"),
            r.header("stream-sealed")
        ),
        (200, Some("11"), Some("false"))
    );
    assert_eq!(gw.read_all(&deployer, s), b"hello world");
    let r = gw.request(
        "GET",
        &format!("/v1/streams/{s}?offset=6"),
        Some(&deployer),
        &[],
        b"",
    );
    assert_eq!(
        (r.status, r.body.as_slice(), r.header("stream-offset")),
        (200, &b"world"[..], Some("6"))
    );

    // Seal with the last bytes; then appends are refused with the committed offset.
    let r = gw.request(
        "PATCH",
        &format!("/v1/streams/{s}"),
        Some(&deployer),
        &[("stream-offset", "11"), OCTETS, ("stream-seal", "true")],
        b"!",
    );
    assert_eq!(
        (
            r.status,
            r.header("stream-offset"),
            r.header("stream-sealed")
        ),
        (204, Some("12"), Some("true"))
    );
    let r = gw.append(&deployer, s, 12, b"more");
    assert_eq!(
        (
            r.status,
            r.code().as_str(),
            r.header("stream-offset"),
            r.header("stream-sealed")
        ),
        (409, "stream_sealed", Some("12"), Some("true"))
    );

    // An empty PATCH at 0 creates a stream.
    assert_eq!(gw.append(&deployer, "acme/prod/empty", 0, b"").status, 204);
    assert_eq!(gw.offset(&deployer, "acme/prod/empty"), (200, Some(0)));

    let r = gw.request(
        "GET",
        "/v1/streams?prefix=acme/prod/",
        Some(&deployer),
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme/prod/deploy.log", "acme/prod/empty"]);
    assert_eq!(list[0]["length"], 12);
    assert_eq!(list[0]["sealed"], true);
    assert!(list[0]["created"].as_u64().unwrap() > 0 && list[0]["updated"].as_u64().is_some());

    // Delete is for admins.
    assert_eq!(
        gw.request(
            "DELETE",
            &format!("/v1/streams/{s}"),
            Some(&deployer),
            &[],
            b""
        )
        .status,
        403
    );
    assert_eq!(
        gw.request(
            "DELETE",
            &format!("/v1/streams/{s}"),
            Some(&admin),
            &[],
            b""
        )
        .status,
        204
    );
    assert_eq!(gw.offset(&admin, s).0, 404);
    assert_eq!(
        gw.request(
            "DELETE",
            &format!("/v1/streams/{s}"),
            Some(&admin),
            &[],
            b""
        )
        .code(),
        "not_found"
    );
}

/// `check(request, expected status, expected code)` for every malformed request of the issue.
#[test]
fn bad_input_gets_a_4xx_with_a_stable_code_and_loses_nothing() {
    let gw = Gateway::start();
    let t = gw.create_token(&["--org", "acme", "--role", "deployer"]);
    let s = "acme/prod/log";
    assert_eq!(gw.append(&t, s, 0, b"0123456789").status, 204);

    let check = |method: &str,
                 path: &str,
                 token: Option<&str>,
                 headers: &[(&str, &str)],
                 status: u16,
                 code: &str| {
        let r = gw.request(method, path, token, headers, b"xyz");
        assert_eq!(
            r.status,
            status,
            "{method} {path} {headers:?}: {}",
            r.text()
        );
        assert_eq!(
            (r.status, r.code()),
            (status, code.to_string()),
            "{method} {path} {headers:?}: {}",
            r.text()
        );
        r
    };
    let path = format!("/v1/streams/{s}");
    let r = check(
        "PATCH",
        &path,
        Some(&t),
        &[("stream-offset", "3"), OCTETS],
        409,
        "offset_mismatch",
    );
    assert_eq!(r.header("stream-offset"), Some("10"));
    check(
        "PATCH",
        &path,
        Some(&t),
        &[("stream-offset", "11"), OCTETS],
        409,
        "offset_mismatch",
    );
    check("PATCH", &path, Some(&t), &[OCTETS], 400, "missing_offset");
    for bad in [
        "ten",
        "-1",
        "1.5",
        "0x10",
        "18446744073709551616",
        "1 0",
        "",
    ] {
        check(
            "PATCH",
            &path,
            Some(&t),
            &[("stream-offset", bad), OCTETS],
            400,
            "invalid_offset",
        );
    }
    // Offset + length past 2^64.
    check(
        "PATCH",
        &path,
        Some(&t),
        &[("stream-offset", "18446744073709551615"), OCTETS],
        400,
        "invalid_offset",
    );
    check(
        "PATCH",
        &path,
        Some(&t),
        &[("stream-offset", "10"), ("content-type", "text/plain")],
        415,
        "unsupported_media_type",
    );
    check(
        "PATCH",
        &path,
        Some(&t),
        &[("stream-offset", "10")],
        415,
        "unsupported_media_type",
    );
    check(
        "PATCH",
        &path,
        Some(&t),
        &[("stream-offset", "10"), OCTETS, ("stream-seal", "maybe")],
        400,
        "invalid_header",
    );
    check(
        "PATCH",
        "/v1/streams/acme/prod",
        Some(&t),
        &[("stream-offset", "0"), OCTETS],
        400,
        "invalid_stream_id",
    );
    check(
        "PATCH",
        "/v1/streams/acme/prod/a%20b",
        Some(&t),
        &[("stream-offset", "0"), OCTETS],
        400,
        "invalid_stream_id",
    );
    check(
        "PATCH",
        &format!("/v1/streams/acme/prod/{}", "x".repeat(129)),
        Some(&t),
        &[("stream-offset", "0"), OCTETS],
        400,
        "invalid_stream_id",
    );
    check(
        "GET",
        &format!("{path}?offset=11"),
        Some(&t),
        &[],
        416,
        "offset_out_of_range",
    );
    check(
        "GET",
        &format!("{path}?offset=abc"),
        Some(&t),
        &[],
        400,
        "invalid_offset",
    );
    check(
        "GET",
        &format!("{path}?follow=perhaps"),
        Some(&t),
        &[],
        400,
        "invalid_query",
    );
    check(
        "GET",
        "/v1/streams/acme/prod/nothing",
        Some(&t),
        &[],
        404,
        "not_found",
    );
    check("GET", "/nowhere", Some(&t), &[], 404, "not_found");
    check("POST", &path, Some(&t), &[], 405, "method_not_allowed");

    // Authentication and authorization.
    check(
        "PATCH",
        &path,
        None,
        &[("stream-offset", "10"), OCTETS],
        401,
        "missing_token",
    );
    let unknown = format!("egw_0123456789abcdef_{}", "A".repeat(43));
    check(
        "PATCH",
        &path,
        Some(&unknown),
        &[("stream-offset", "10"), OCTETS],
        401,
        "invalid_token",
    );
    check("GET", &path, Some("egw_short"), &[], 401, "malformed_token");
    check("GET", &path, Some("a.b.c"), &[], 401, "invalid_jwt");
    let r = gw.request(
        "GET",
        &path,
        None,
        &[("authorization", "Basic dXNlcjpwYXNz")],
        b"",
    );
    assert_eq!((r.status, r.code().as_str()), (401, "malformed_token"));
    check(
        "PATCH",
        "/v1/streams/evil/prod/log",
        Some(&t),
        &[("stream-offset", "0"), OCTETS],
        403,
        "forbidden",
    );
    check(
        "GET",
        "/v1/streams/evil/prod/log",
        Some(&t),
        &[],
        403,
        "forbidden",
    );
    check(
        "GET",
        "/v1/streams?prefix=evil/",
        Some(&t),
        &[],
        403,
        "forbidden",
    );

    // A huge header: 431 from the HTTP layer.
    let huge = "a".repeat(100 * 1024);
    let raw =
        format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-huge: {huge}\r\nconnection: close\r\n\r\n");
    assert_eq!(request_raw(gw.addr, raw.as_bytes()).unwrap().status, 431);

    // Nothing acknowledged was lost, nothing refused was stored.
    assert_eq!(gw.read_all(&t, s), b"0123456789");
    let r = gw.request("GET", "/metrics", None, &[], b"");
    assert!(
        r.text()
            .contains("engine_gateway_errors_total{code=\"offset_mismatch\"} 2"),
        "{}",
        r.text()
    );
}

#[test]
fn tokens_scopes_revocation_and_expiry() {
    let gw = Gateway::start();
    let admin = gw.admin_token();
    let prod = gw.create_token(&["--org", "acme", "--cluster", "prod", "--role", "deployer"]);
    let reader = gw.create_token(&["--org", "acme", "--role", "reader"]);
    let other = gw.create_token(&["--org", "globex", "--role", "deployer"]);
    assert_eq!(gw.append(&prod, "acme/prod/a", 0, b"x").status, 204);
    assert_eq!(
        gw.append(&prod, "acme/dev/a", 0, b"x").status,
        403,
        "cluster-bound deployer"
    );
    assert_eq!(
        gw.append(&reader, "acme/prod/a", 1, b"x").status,
        403,
        "readers do not write"
    );
    assert_eq!(gw.read_all(&reader, "acme/prod/a"), b"x");
    assert_eq!(
        gw.request("GET", "/v1/streams/acme/prod/a", Some(&other), &[], b"")
            .status,
        403
    );
    assert_eq!(gw.append(&admin, "globex/x/y", 0, b"admin").status, 204);

    // token list shows ids and scopes, never secrets; revoke takes effect at once.
    let out = std::process::Command::new(common::BIN)
        .args(["token", "list", "--data-dir"])
        .arg(gw.data_dir())
        .output()
        .unwrap();
    let listing = String::from_utf8(out.stdout).unwrap();
    let id = prod.split('_').nth(1).unwrap();
    assert!(
        listing.contains(id) && !listing.contains(&prod),
        "{listing}"
    );
    let out = std::process::Command::new(common::BIN)
        .args(["token", "revoke", "--data-dir"])
        .arg(gw.data_dir())
        .arg(id)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = gw.append(&prod, "acme/prod/a", 1, b"y");
    assert_eq!((r.status, r.code().as_str()), (401, "token_revoked"));

    let short = gw.create_token(&["--org", "acme", "--role", "reader", "--ttl", "1s"]);
    assert_eq!(gw.offset(&short, "acme/prod/a").0, 200);
    std::thread::sleep(Duration::from_millis(2100));
    let r = gw.request("GET", "/v1/streams/acme/prod/a", Some(&short), &[], b"");
    assert_eq!((r.status, r.code().as_str()), (401, "token_expired"));

    // Secrets never reach the log.
    let log = gw.log();
    for secret in [&admin, &prod, &reader, &other, &short] {
        assert!(!log.contains(secret.as_str()), "a secret is in the log");
    }
}

#[test]
fn follow_streams_new_bytes_until_sealed() {
    let gw = Gateway::start();
    let t = gw.admin_token();
    let s = "acme/prod/follow";
    assert_eq!(gw.append(&t, s, 0, b"first;").status, 204);
    let addr = gw.addr;
    let t2 = t.clone();
    let reader = std::thread::spawn(move || {
        request(
            addr,
            "GET",
            &format!("/v1/streams/{s}?offset=0&follow=true"),
            Some(&t2),
            &[],
            b"",
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gw.append(&t, s, 6, b"second;").status, 204);
    std::thread::sleep(Duration::from_millis(100));
    let r = gw.request(
        "PATCH",
        &format!("/v1/streams/{s}"),
        Some(&t),
        &[("stream-offset", "13"), OCTETS, ("stream-seal", "true")],
        b"last",
    );
    assert_eq!(r.status, 204);
    let r = reader.join().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "first;second;last"));
}

#[test]
fn slow_clients_are_cut_and_partial_bodies_are_committed() {
    let config = "[limits]\nheader_timeout_secs = 1\nbody_timeout_secs = 1\n";
    let gw = Gateway::start_with(&[], Some(config));
    let t = gw.admin_token();

    // Slowloris: half a request head, then nothing. The server closes the connection.
    let mut slow = TcpStream::connect(gw.addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow header not cut"
    );
    assert!(
        n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // A body that stalls: what arrived is committed, the client gets 408 with the offset.
    let mut stalled = TcpStream::connect(gw.addr).unwrap();
    let head = format!(
        "PATCH /v1/streams/acme/prod/slow HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {t}\r\n\
         stream-offset: 0\r\ncontent-type: application/offset+octet-stream\r\ncontent-length: 100\r\n\r\n"
    );
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(b"0123456789").unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = common::read_response(stalled).unwrap();
    assert_eq!(
        (r.status, r.code().as_str(), r.header("stream-offset")),
        (408, "body_timeout", Some("10"))
    );
    assert_eq!(gw.read_all(&t, "acme/prod/slow"), b"0123456789");
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let mut gw = Gateway::start();
    let t = gw.admin_token();
    assert_eq!(gw.append(&t, "a/b/c", 0, b"durable").status, 204);
    assert_eq!(gw.terminate(), Some(0), "{}", gw.log());
    assert!(gw.log().contains("stopped"), "{}", gw.log());
    gw.spawn();
    assert_eq!(gw.read_all(&t, "a/b/c"), b"durable");
}

#[test]
fn health_readiness_and_metrics() {
    let gw = Gateway::start();
    let t = gw.admin_token();
    assert_eq!(gw.request("GET", "/healthz", None, &[], b"").status, 200);
    assert_eq!(gw.request("GET", "/readyz", None, &[], b"").status, 200);
    assert_eq!(gw.append(&t, "a/b/c", 0, &[7u8; 5000]).status, 204);
    let m = gw.request("GET", "/metrics", None, &[], b"").text();
    for needle in [
        "engine_gateway_requests_total{route=\"append\",status=\"204\"} 1",
        "engine_gateway_appended_bytes_total 5000",
        "engine_gateway_append_seconds_count 1",
        "engine_gateway_budget_bytes",
        "engine_gateway_store_",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
}

#[test]
fn over_the_memory_soft_limit_new_work_gets_503_and_a_capture_is_kept() {
    // A limit far below what the process already uses: the soft limit is on from the start.
    let mut gw = Gateway::start_with(&["--memory-limit", "300000"], None);
    let t = gw.admin_token();
    let r = gw.append(&t, "a/b/c", 0, b"abc");
    assert_eq!(
        (r.status, r.code().as_str(), r.header("retry-after")),
        (503, "overloaded", Some("1"))
    );
    assert_eq!(gw.request("GET", "/readyz", None, &[], b"").status, 503);
    assert_eq!(gw.request("GET", "/healthz", None, &[], b"").status, 200);
    let metrics = gw.request("GET", "/metrics", None, &[], b"").text();
    assert!(metrics.contains("memwatch_recorder_"), "{metrics}");
    let r = gw.request("GET", "/debug/memory", Some(&t), &[], b"");
    let memory: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(memory["recorder"]["over_soft_limit"], true, "{memory}");
    assert_eq!(memory["recorder"]["limit_bytes"], 300000);
    let deadline = Instant::now() + Duration::from_secs(10);
    let captures = loop {
        let names: Vec<String> = std::fs::read_dir(gw.data_dir().join("memwatch"))
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if names.iter().any(|n| n.starts_with("capture-")) || Instant::now() > deadline {
            break names;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        captures.iter().any(|n| n.starts_with("capture-")),
        "{captures:?}"
    );
    // Each capture is a WARN line with its trigger, share of the limit and path.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("memory capture written") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("memory capture written"))
        .unwrap_or_else(|| panic!("no capture line in\n{log}"));
    for field in ["WARN", "trigger=", "share=", "path="] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    // The next start reports what the previous run left.
    gw.kill9();
    gw.spawn();
    assert!(gw.log().contains("capture-"), "{}", gw.log());
    // The black box in the capture directory knows, whatever the cgroup's OOM counter says.
    assert!(gw.log().contains("was killed at"), "{}", gw.log());
    // A graceful stop is recorded as such.
    assert_eq!(gw.terminate(), Some(0), "{}", gw.log());
    gw.spawn();
    assert!(gw.log().contains("ended cleanly at"), "{}", gw.log());
}

#[test]
fn debug_endpoints_are_for_admins() {
    let gw = Gateway::start();
    let reader = gw.create_token(&["--org", "acme", "--role", "reader"]);
    assert_eq!(
        gw.request("GET", "/debug/memory", Some(&reader), &[], b"")
            .status,
        403
    );
    assert_eq!(
        gw.request("GET", "/debug/memory", None, &[], b"").status,
        401
    );
    let admin = gw.admin_token();
    let r = gw.request("GET", "/debug/memory", Some(&admin), &[], b"");
    let memory: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        memory["jemalloc"]["allocated_bytes"].as_u64().unwrap() > 0,
        "{memory}"
    );
    assert!(memory["process"]["resident_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        gw.request("GET", "/debug/pprof/heap", Some(&reader), &[], b"")
            .status,
        403
    );
    let r = gw.request("GET", "/debug/pprof/heap", Some(&admin), &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..2], &[0x1f, 0x8b], "gzip");
    let r = gw.request(
        "GET",
        "/debug/pprof/heap?format=svg",
        Some(&admin),
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(
        r.text().starts_with("<?xml") || r.text().starts_with("<svg"),
        "{}",
        &r.text()[..100.min(r.body.len())]
    );
    assert_eq!(
        gw.request(
            "GET",
            "/debug/pprof/heap?format=png",
            Some(&admin),
            &[],
            b""
        )
        .status,
        400
    );
}

#[test]
fn over_the_connection_cap_idle_connections_are_evicted_and_busy_ones_get_503() {
    let gw = Gateway::start_with(&["--max-connections", "4"], None);
    let token = gw.admin_token();
    assert_eq!(gw.append(&token, "acme/prod/f", 0, b"x").status, 204);
    // The start-up probe's and the append's connections must be gone first.
    std::thread::sleep(Duration::from_millis(300));
    // Four idle connections (no request head): a new one evicts the oldest and is served.
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(gw.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let r = request_raw(gw.addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    drop(idle);
    // Four connections in a request (followers): nothing to evict, a new one gets 503.
    let head = format!(
        "GET /v1/streams/acme/prod/f?follow=true HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n"
    );
    let mut followers = Vec::new();
    while followers.len() < 4 {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut first = [0u8; 12];
        match s.read_exact(&mut first) {
            Ok(()) if first.starts_with(b"HTTP/1.1 200") => followers.push(s),
            // Raced with the idle connections still being closed: try again.
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let r = request_raw(gw.addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    assert_eq!(
        (r.status, r.code().as_str(), r.header("retry-after")),
        (503, "too_many_connections", Some("1"))
    );
    drop(followers);
    std::thread::sleep(Duration::from_millis(300));
    let metrics = gw.request("GET", "/metrics", None, &[], b"").text();
    assert!(
        metrics.contains("engine_gateway_rejected_connections_total 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("engine_gateway_evicted_connections_total 0"),
        "{metrics}"
    );
}

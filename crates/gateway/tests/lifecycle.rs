//! The gateway as a supervisor sees it: a Kubernetes-shaped stop (readiness fails first, the
//! port closes after the delay), exit codes, and JSON log lines a log shipper parses.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BIN, Gateway, request};

#[test]
fn sigterm_fails_readiness_before_the_port_closes() {
    let mut gw = Gateway::start_with(&["--shutdown-delay", "1500ms"], None);
    let token = gw.admin_token();
    assert_eq!(gw.request("GET", "/readyz", None, &[], b"").status, 200);
    let signalled = Instant::now();
    gw.signal_term();
    // A probe loop, as a kubelet or load balancer runs it: readiness must fail while the
    // gateway still answers everything else.
    let mut saw_not_ready = None;
    let mut served_while_draining = false;
    let mut closed_at = None;
    while signalled.elapsed() < Duration::from_secs(15) {
        let ready = std::panic::catch_unwind(|| request(gw.addr, "GET", "/readyz", None, &[], b""));
        match ready {
            Ok(response) if response.status == 503 => {
                assert_eq!(response.code(), "unavailable", "{}", response.text());
                saw_not_ready.get_or_insert(signalled.elapsed());
                if !served_while_draining {
                    let append = gw.append(&token, "acme/prod/drain", 0, b"still taken\n");
                    assert_eq!(append.status, 204, "{}", append.text());
                    served_while_draining = true;
                }
            }
            Ok(response) => assert_eq!(response.status, 200, "{}", response.text()),
            Err(_) => {
                closed_at = Some(signalled.elapsed());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let not_ready = saw_not_ready.expect("/readyz never answered 503 before the port closed");
    let closed = closed_at.expect("the port did not close");
    assert!(served_while_draining);
    assert!(
        closed >= Duration::from_millis(1400) && closed > not_ready,
        "readiness failed at {not_ready:?}, the port closed at {closed:?}"
    );
    assert_eq!(gw.wait_exit(), Some(0), "{}", gw.log());
    let log = gw.log();
    assert!(log.contains("/readyz answers 503"), "{log}");
}

#[test]
fn exit_codes_tell_config_and_store_failures_apart() {
    // Invalid configuration: exit 2, one fatal line.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--inflight-bytes",
            "12 parsecs",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(&config, "[limits]\nchunk_bytes = 1\n").unwrap();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--config",
        ])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let fatal = stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no ERROR line in {stderr}"));
    assert!(
        fatal["error"].as_str().unwrap().contains("chunk_bytes"),
        "{fatal}"
    );

    // The store cannot open (another gateway holds its directory): exit 3.
    let gw = Gateway::start();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(gw.data_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut gw = Gateway::start_with(&["--log-format", "json"], None);
    let token = gw.admin_token();
    assert_eq!(gw.append(&token, "acme/prod/json", 0, b"x").status, 204);
    assert_eq!(gw.terminate(), Some(0));
    let log = gw.log();
    let mut messages = Vec::new();
    for line in log.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(value[key].is_string(), "{key} missing in {line}");
        }
        messages.push(value["message"].as_str().unwrap().to_owned());
    }
    assert!(
        messages.iter().any(|m| m.contains("listening")),
        "{messages:?}"
    );
    let listening = log
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|v| v["message"].as_str().unwrap().contains("listening"))
        .unwrap();
    // Fields sit beside the message, not nested.
    assert_eq!(listening["address"], gw.addr.to_string(), "{listening}");
}

#[test]
fn metrics_have_process_series_and_pass_promtool() {
    let gw = Gateway::start();
    let token = gw.admin_token();
    assert_eq!(gw.append(&token, "acme/prod/m", 0, b"x").status, 204);
    assert_eq!(
        gw.request("GET", "/v1/streams/acme/prod/nope", Some(&token), &[], b"")
            .status,
        404
    );
    let text = gw.request("GET", "/metrics", None, &[], b"").text();
    for series in [
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
        "engine_gateway_build_info{version=\"",
    ] {
        assert!(text.contains(series), "{series} missing from /metrics");
    }
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match promtool {
        Ok(child) => child,
        Err(err) => {
            assert!(
                std::env::var_os("REQUIRE_PROMTOOL").is_none(),
                "promtool is required (REQUIRE_PROMTOOL is set) but cannot run: {err}"
            );
            eprintln!("promtool not found: the exposition is not linted here");
            return;
        }
    };
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool check metrics: {complaints}"
    );
}

#[test]
fn access_log_explains_refusals_without_secrets() {
    let mut gw = Gateway::start_with(&["--access-log", "--log-format", "json"], None);
    let token = gw.admin_token();
    assert_eq!(
        gw.append(&token, "acme/prod/a", 0, b"0123456789").status,
        204
    );
    let wrong = gw.append(&token, "acme/prod/a", 3, b"xyz");
    assert_eq!(wrong.status, 409);
    let anonymous = gw.request("GET", "/v1/streams/acme/prod/a", None, &[], b"");
    assert_eq!(anonymous.status, 401);
    let read = gw.request(
        "GET",
        "/v1/streams/acme/prod/a?offset=0",
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(read.body, b"0123456789");
    assert_eq!(gw.terminate(), Some(0));
    let log = gw.log();
    // `egw_<16 hex id>_<secret>`.
    let secret = &token["egw_0123456789abcdef_".len()..];
    assert!(!log.contains(secret), "a token secret reached the log");
    let access: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|v| v["target"] == "engine_gateway::access")
        .collect();
    let find = |status: u64| {
        access
            .iter()
            .find(|v| v["status"] == status && v["route"] == "stream")
            .unwrap_or_else(|| panic!("no access line with status {status}: {access:?}"))
    };
    let created = find(204);
    assert_eq!(created["method"], "PATCH");
    assert_eq!(created["route"], "stream");
    assert_eq!(created["bytes_in"], 10);
    assert_eq!(created["org"], "acme");
    let token_id = token.split('_').nth(1).unwrap();
    assert_eq!(created["token"], token_id);
    assert!(created["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(find(409)["code"], "offset_mismatch");
    let refused = find(401);
    assert_eq!(refused["code"], "missing_token");
    assert_eq!(refused["token"], "none");
    assert_eq!(find(200)["bytes_out"], 10, "{access:?}");
}

#[test]
fn a_patch_running_at_the_drain_deadline_gets_its_committed_offset() {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut gw = Gateway::start_with(&["--set", "limits.shutdown_timeout_secs=1"], None);
    let token = gw.admin_token();
    let stream = "acme/prod/deadline";
    let mut socket = std::net::TcpStream::connect(gw.addr).unwrap();
    write!(
        socket,
        "PATCH /v1/streams/{stream} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         stream-offset: 0\r\ncontent-type: application/offset+octet-stream\r\n\
         transfer-encoding: chunked\r\n\r\n"
    )
    .unwrap();
    // A writer that keeps sending 1 KiB every 50 ms, well above the minimum rate, until the
    // gateway answers.
    let done = Arc::new(AtomicBool::new(false));
    let mut writer = socket.try_clone().unwrap();
    let stop = Arc::clone(&done);
    let sender = std::thread::spawn(move || {
        let chunk = vec![b'd'; 1024];
        while !stop.load(Ordering::Relaxed) {
            if writer.write_all(b"400\r\n").is_err()
                || writer.write_all(&chunk).is_err()
                || writer.write_all(b"\r\n").is_err()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.offset(&token, stream).1.unwrap_or(0) < 4096 {
        assert!(
            Instant::now() < deadline,
            "the PATCH's bytes were not committed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    gw.signal_term();
    let answer = common::read_response(socket).unwrap();
    done.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(answer.code(), "unavailable");
    let committed: u64 = answer
        .header("stream-offset")
        .expect("the answer carries the committed offset")
        .parse()
        .unwrap();
    assert!(
        committed >= 4096 && committed.is_multiple_of(1024),
        "{committed}"
    );
    assert_eq!(
        gw.wait_exit(),
        Some(4),
        "a drain cut exits 4:\n{}",
        gw.log()
    );
    gw.spawn();
    assert_eq!(gw.offset(&token, stream), (200, Some(committed)));
}

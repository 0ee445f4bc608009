//! End to end with real processes: `kill -9` of the gateway in the middle of a push (with the
//! bundled `push` and with curl), resumption, and byte-exact read back; many streams at once.
//!
//! With ENGINE_GATEWAY_SLOW_TESTS=1 (CI) the pushes are 64 MiB; otherwise 8 MiB.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Gateway, pattern, sha256, slow_tests};

fn push_size() -> usize {
    if slow_tests() { 64 << 20 } else { 8 << 20 }
}

/// Waits until the stream's committed offset reaches `at_least`, returning it.
fn wait_for_offset(
    gw: &Gateway,
    token: &str,
    stream: &str,
    at_least: u64,
    deadline: Duration,
) -> u64 {
    let started = Instant::now();
    loop {
        if let (200, Some(offset)) = gw.offset(token, stream)
            && offset >= at_least
        {
            return offset;
        }
        assert!(
            started.elapsed() < deadline,
            "stream {stream} never reached {at_least}:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn push_survives_kill9_of_the_gateway_and_resumes_byte_exact() {
    let mut gw = Gateway::start();
    let token = gw.create_token(&["--org", "acme", "--cluster", "prod", "--role", "deployer"]);
    let data = pattern(1, push_size());
    let file = gw.dir.path().join("big.bin");
    std::fs::write(&file, &data).unwrap();
    let stream = "acme/prod/big";

    let push = Command::new(BIN)
        .args([
            "push",
            "--url",
            &gw.url(),
            "--token",
            &token,
            "--stream",
            stream,
            "--seal",
            "--request-bytes",
            "4194304",
        ])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let killed_at = wait_for_offset(&gw, &token, stream, 1 << 20, Duration::from_secs(60));
    gw.kill9();
    assert!(
        killed_at < data.len() as u64,
        "push finished before the kill; make it bigger"
    );
    std::thread::sleep(Duration::from_millis(300));
    gw.spawn();
    let after_restart = gw.offset(&token, stream).1.unwrap();
    assert!(
        after_restart >= killed_at,
        "acknowledged bytes lost: {after_restart} < {killed_at}"
    );

    let out = push.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "push failed: {stderr}");
    assert!(
        !stderr.contains(" 0 retries"),
        "push never had to retry: {stderr}"
    );
    let r = gw.request(
        "HEAD",
        &format!("/v1/streams/{stream}"),
        Some(&token),
        &[],
        b"",
    );
    assert_eq!(r.header("stream-sealed"), Some("true"));
    let stored = gw.read_all(&token, stream);
    assert_eq!(stored.len(), data.len());
    assert_eq!(sha256(&stored), sha256(&data));
}

#[test]
fn curl_upload_survives_kill9_and_resumes_from_head() {
    if Command::new("curl").arg("--version").output().is_err() {
        panic!("curl is not installed (.ci/run installs it)");
    }
    let mut gw = Gateway::start();
    let token = gw.admin_token();
    let data = pattern(2, push_size());
    let file = gw.dir.path().join("big.bin");
    std::fs::write(&file, &data).unwrap();
    let stream = "acme/prod/curl";
    let url = format!("{}/v1/streams/{stream}", gw.url());
    let auth = format!("Authorization: Bearer {token}");
    let rate = (data.len() / 4).to_string(); // about 4 s for the whole file

    let curl = Command::new("curl")
        .args([
            "-sS",
            "-X",
            "PATCH",
            "--limit-rate",
            &rate,
            "-H",
            &auth,
            "-H",
            "Stream-Offset: 0",
        ])
        .args(["-H", "Content-Type: application/offset+octet-stream", "-T"])
        .arg(&file)
        .arg(&url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let killed_at = wait_for_offset(
        &gw,
        &token,
        stream,
        (data.len() / 8) as u64,
        Duration::from_secs(60),
    );
    gw.kill9();
    let status = curl.wait_with_output().unwrap().status;
    assert!(!status.success(), "curl should see the connection break");
    gw.spawn();
    let offset = gw.offset(&token, stream).1.unwrap();
    assert!(
        offset >= killed_at && offset < data.len() as u64,
        "offset {offset}, killed at {killed_at}"
    );

    // Resume as the protocol says: from HEAD's offset, the rest of the file, chunked, sealing.
    let script = format!(
        "tail -c +{} \"$1\" | curl -sS -f -o /dev/null -w '%{{http_code}}' -X PATCH -T - \
         -H \"$2\" -H 'Stream-Offset: {offset}' -H 'Stream-Seal: true' \
         -H 'Content-Type: application/offset+octet-stream' \"$3\"",
        offset + 1
    );
    let out = Command::new("sh")
        .args(["-c", &script, "sh"])
        .arg(&file)
        .arg(&auth)
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "204",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = gw.read_all(&token, stream);
    assert_eq!(sha256(&stored), sha256(&data));
}

#[test]
fn sixty_four_concurrent_streams_read_back_intact() {
    let gw = Gateway::start();
    let token = gw.admin_token();
    let chunks = if slow_tests() { 32 } else { 8 };
    std::thread::scope(|scope| {
        for i in 0..64u64 {
            let (gw, token) = (&gw, &token);
            scope.spawn(move || {
                let stream = format!("acme/c{}/s{i}", i % 4);
                let data = pattern(100 + i, chunks * 16 * 1024);
                for (n, chunk) in data.chunks(16 * 1024).enumerate() {
                    let r = gw.append(token, &stream, (n * 16 * 1024) as u64, chunk);
                    assert_eq!(r.status, 204, "{stream}: {}", r.text());
                }
            });
        }
    });
    for i in 0..64u64 {
        let stream = format!("acme/c{}/s{i}", i % 4);
        assert_eq!(
            gw.read_all(&token, &stream),
            pattern(100 + i, chunks * 16 * 1024),
            "{stream}"
        );
    }
    let r = gw.request("GET", "/v1/streams?prefix=acme/", Some(&token), &[], b"");
    let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 64);
}

#[test]
fn cat_follows_a_push_from_stdin_until_seal() {
    let gw = Gateway::start();
    let token = gw.admin_token();
    let stream = "acme/prod/piped";
    // Created empty first: `cat` refuses a stream that does not exist.
    assert_eq!(gw.append(&token, stream, 0, b"").status, 204);
    let cat = Command::new(BIN)
        .args([
            "cat",
            "--url",
            &gw.url(),
            "--token",
            &token,
            "--stream",
            stream,
            "--follow",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut push = Command::new(BIN)
        .args([
            "push",
            "--url",
            &gw.url(),
            "--token",
            &token,
            "--stream",
            stream,
            "--seal",
            "-",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let data = pattern(7, 3 << 20);
    {
        use std::io::Write;
        let mut stdin = push.stdin.take().unwrap();
        for piece in data.chunks(100_000) {
            stdin.write_all(piece).unwrap();
        }
    }
    let out = push.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cat.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&out.stdout), sha256(&data));
}

#[test]
fn client_errors_are_clear_and_exit_non_zero() {
    let gw = Gateway::start();
    let reader = gw.create_token(&["--org", "acme", "--role", "reader"]);
    let out = Command::new(BIN)
        .args([
            "push",
            "--url",
            &gw.url(),
            "--token",
            &reader,
            "--stream",
            "acme/prod/x",
            "-",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("forbidden") || stderr.contains("may not"),
        "{stderr}"
    );
    let out = Command::new(BIN)
        .args([
            "push", "--url", "ftp://x", "--token", "t", "--stream", "a/b/c", "-",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("http[s]://"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["token", "create", "--data-dir"])
        .arg(gw.data_dir())
        .args(["--role", "deployer"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("org"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

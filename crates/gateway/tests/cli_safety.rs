//! The clients are safe and talkative, run as the real binary: `push` refuses to splice a
//! different input onto a stream (unless `--append`), `push` and `cat` say on stderr what
//! failed and give up after `--retry-for`, `cat --follow` waits for a stream that does not
//! exist yet, and the `token` commands refuse a data directory without gateway data and never
//! echo a secret.

#![allow(clippy::unwrap_used)] // tests may panic on what they set up

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Gateway, free_port};

fn push(url: &str, token: &str, stream: &str, file: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .args(["push", "--url", url, "--token", token, "--stream", stream])
        .args(extra)
        .arg(file)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn push_of_another_input_is_refused_unless_appending() {
    let gw = Gateway::start();
    let token = gw.create_token(&["--org", "acme", "--cluster", "prod", "--role", "deployer"]);
    let (a, b) = (gw.dir.path().join("a"), gw.dir.path().join("b"));
    std::fs::write(&a, b"first deploy log\n").unwrap();
    std::fs::write(&b, b"second deploy log, longer\n").unwrap();
    let out = push(&gw.url(), &token, "acme/prod/s", &a, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The same input again: nothing to do. A longer input with the same start: resumes.
    assert!(
        push(&gw.url(), &token, "acme/prod/s", &a, &[])
            .status
            .success()
    );
    let out = push(&gw.url(), &token, "acme/prod/s", &b, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refusing to splice"),
        "{}",
        stderr(&out)
    );
    assert_eq!(gw.read_all(&token, "acme/prod/s"), b"first deploy log\n");
    let out = push(&gw.url(), &token, "acme/prod/s", &b, &["--append"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        gw.read_all(&token, "acme/prod/s"),
        b"first deploy log\nsecond deploy log, longer\n"
    );
}

#[test]
fn against_a_stopped_gateway_the_clients_say_why_and_give_up_in_time() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let started = Instant::now();
    let out = push(&url, "egw_t", "acme/prod/s", &file, &["--retry-for", "2s"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(15));
    let text = stderr(&out);
    assert!(text.contains("retrying in"), "{text}");
    assert!(text.contains("gave up"), "{text}");
    let out = Command::new(BIN)
        .args([
            "cat",
            "--url",
            &url,
            "--token",
            "t",
            "--stream",
            "acme/prod/s",
        ])
        .args(["--retry-for", "1s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("retrying in"), "{}", stderr(&out));
}

#[test]
fn cat_follow_waits_for_a_stream_that_does_not_exist_yet() {
    let gw = Gateway::start();
    let token = gw.create_token(&["--org", "acme", "--cluster", "prod", "--role", "deployer"]);
    let mut cat = Command::new(BIN)
        .args(["cat", "--url", &gw.url(), "--token", &token])
        .args(["--stream", "acme/prod/later", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(cat.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("does not exist yet; waiting"), "{line}");
    assert!(
        cat.try_wait().unwrap().is_none(),
        "cat exited while waiting"
    );
    let file = gw.dir.path().join("f");
    std::fs::write(&file, b"hello\n").unwrap();
    let out = push(&gw.url(), &token, "acme/prod/later", &file, &["--seal"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cat.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"hello\n");
}

#[test]
fn token_commands_refuse_a_directory_without_gateway_data_and_hide_secrets() {
    let empty = tempfile::tempdir().unwrap();
    for args in [
        &["create", "--org", "acme", "--role", "deployer"][..],
        &["list"][..],
        &["revoke", "0123456789abcdef"][..],
    ] {
        let out = Command::new(BIN)
            .arg("token")
            .args(args)
            .arg("--data-dir")
            .arg(empty.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("holds no gateway data"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);

    let gw = Gateway::start();
    let token = gw.create_token(&["--org", "acme", "--role", "deployer"]);
    // egw_<id>_<secret>: the secret's own alphabet has '_' too, so split off the first two only
    let secret = token.splitn(3, '_').nth(2).unwrap().to_owned();
    // Something that is not a token id, holding secret characters: not echoed.
    let garbage = format!("x{secret}");
    let out = Command::new(BIN)
        .args(["token", "revoke", &garbage, "--data-dir"])
        .arg(gw.data_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!stderr(&out).contains(&secret[..8]), "{}", stderr(&out));
    // The whole token pasted by mistake: its id is revoked, its secret is not printed.
    let out = Command::new(BIN)
        .args(["token", "revoke", &token, "--data-dir"])
        .arg(gw.data_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(!all.contains(&secret[..8]), "{all}");
    assert_eq!(gw.offset(&token, "acme/prod/x").0, 401);
}

#[test]
fn push_from_stdin_forwards_each_line_at_once() {
    let gw = Gateway::start();
    let token = gw.create_token(&["--org", "acme", "--cluster", "prod", "--role", "deployer"]);
    let client = [
        "--url",
        &gw.url(),
        "--token",
        &token,
        "--stream",
        "acme/prod/tail",
    ];
    let mut cat = Command::new(BIN)
        .arg("cat")
        .args(client)
        .arg("--follow")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut push = Command::new(BIN)
        .arg("push")
        .args(client)
        .args(["--seal", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(cat.stdout.take().unwrap());
    let mut stdin = push.stdin.take().unwrap();
    for i in 0..3 {
        let sent = Instant::now();
        std::io::Write::write_all(&mut stdin, format!("step {i} done\n").as_bytes()).unwrap();
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        assert_eq!(line, format!("step {i} done\n"));
        // The first line also waits for the stream to be created and cat to find it.
        let bound = if i == 0 { 5000 } else { 1500 };
        assert!(
            sent.elapsed() < Duration::from_millis(bound),
            "line {i} took {:?}",
            sent.elapsed()
        );
    }
    drop(stdin);
    assert!(push.wait().unwrap().success());
    assert!(cat.wait().unwrap().success());
}

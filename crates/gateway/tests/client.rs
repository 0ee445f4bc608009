//! The `push` and `cat` client against an in-memory fake server on a real socket, with faults
//! injected: dropped connections mid-body, 503/429 with Retry-After, 409s, auth failures.

#![allow(clippy::unwrap_used)] // tests may panic on what they set up

#[path = "client/fake_server.rs"]
mod fake_server;

use std::time::Duration;

use engine_gateway::client::{
    self, CatOptions, ClientError, Input, PushOptions, PushReport, RetryPolicy,
};
use engine_gateway::stream_id::StreamId;
use fake_server::{FakeServer, Fault, TOKEN};
use hyper::Method;
use tokio::io::AsyncWriteExt;

const ID: &str = "acme/prod/deploy.log";

/// Deterministic pseudo-random bytes, so a misplaced byte cannot go unnoticed.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        max_without_progress: Duration::from_secs(5),
    }
}

fn push_opts(server: &FakeServer, input: Input, request_bytes: usize) -> PushOptions {
    let mut opts = PushOptions::new(
        server.url.parse().unwrap(),
        TOKEN,
        ID.parse::<StreamId>().unwrap(),
        input,
    );
    opts.request_bytes = request_bytes;
    opts.frame_bytes = 4096;
    opts.retry = fast_retry();
    opts
}

fn cat_opts(server: &FakeServer, offset: u64, follow: bool) -> CatOptions {
    let mut opts = CatOptions::new(server.url.parse().unwrap(), TOKEN, ID.parse().unwrap());
    opts.offset = offset;
    opts.follow = follow;
    opts.retry = fast_retry();
    opts
}

fn temp_file(bytes: &[u8]) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    file
}

/// An unseekable input: a real OS pipe, written by a task.
fn pipe_input(bytes: Vec<u8>) -> Input {
    let (mut tx, rx) = tokio::net::unix::pipe::pipe().unwrap();
    tokio::spawn(async move {
        for chunk in bytes.chunks(3000) {
            tx.write_all(chunk).await.unwrap();
        }
    });
    Input::Reader(Box::new(rx))
}

fn assert_stored(server: &FakeServer, want: &[u8], sealed: bool) {
    let (got, got_sealed) = server.get(ID).unwrap();
    assert_eq!(got.len(), want.len(), "stored length");
    assert!(got == want, "stored bytes differ from the input");
    assert_eq!(got_sealed, sealed, "sealed");
}

fn assert_bounded(server: &FakeServer, request_bytes: usize) {
    let patches = server.patches();
    let largest = patches.iter().map(|p| p.body_len).max().unwrap_or(0);
    assert!(largest <= request_bytes, "a PATCH body had {largest} bytes");
}

#[tokio::test]
async fn file_push_survives_every_kind_of_fault() {
    let server = FakeServer::start().await;
    let input = data(200_000, 1);
    let file = temp_file(&input);
    for fault in [
        Fault::CloseMidBody(10_000),
        Fault::Status(503),
        Fault::Status(429),
        Fault::ConflictAfter(5_000),
        Fault::CloseMidBody(0),
        Fault::Status(500),
        // the whole body arrives but the answer is lost
        Fault::CloseMidBody(usize::MAX),
    ] {
        server.fault(Method::PATCH, fault);
    }
    server.fault(Method::HEAD, Fault::Status(503));
    let report = client::push(push_opts(
        &server,
        Input::File(file.path().into()),
        32 * 1024,
    ))
    .await
    .unwrap();
    assert_stored(&server, &input, false);
    assert_bounded(&server, 32 * 1024);
    assert_eq!((report.start_offset, report.final_offset), (0, 200_000));
    assert!(report.retries >= 8, "{report:?}");
    assert!(report.bytes_sent >= 200_000, "{report:?}");
    assert!(!report.sealed);
    // requests rotate: 200 KB in bodies of at most 32 KiB
    let patches = server.patches();
    assert!(patches.len() >= 7, "{} PATCHes", patches.len());
    // every PATCH started where the server stood: no offset mismatch was ever refused
    // (the injected 409 consumed part of its body, a mismatch none)
    assert!(
        !patches.iter().any(|p| p.status == 409 && p.body_len == 0),
        "{patches:?}"
    );
    assert_eq!(patches[0].offset, 0);
}

#[tokio::test]
async fn pipe_push_skips_what_the_server_has_then_resumes_and_seals() {
    let server = FakeServer::start().await;
    let input = data(120_000, 2);
    // a previous, interrupted push left the first 50 000 bytes
    server.put(ID, &input[..50_000], false);
    server.fault(Method::PATCH, Fault::CloseMidBody(7_000));
    server.fault(Method::PATCH, Fault::ConflictAfter(1_000));
    let mut opts = push_opts(&server, pipe_input(input.clone()), 16 * 1024);
    opts.seal = true;
    let report = client::push(opts).await.unwrap();
    assert_stored(&server, &input, true);
    assert_bounded(&server, 16 * 1024);
    assert_eq!(
        (report.start_offset, report.final_offset),
        (50_000, 120_000)
    );
    assert!(report.sealed && report.retries >= 2, "{report:?}");
    // the skipped bytes were not sent again; re-sends stay within one request each
    assert!(report.bytes_sent < 70_000 + 2 * 16 * 1024, "{report:?}");
    let patches = server.patches();
    assert_eq!(
        patches[0].offset, 50_000,
        "the first PATCH resumes where the server stood"
    );
    let last = patches.last().unwrap();
    assert!(last.seal && last.status == 204, "{last:?}");
}

#[tokio::test]
async fn a_quiet_input_does_not_spend_the_retry_budget() {
    let server = FakeServer::start().await;
    let input = data(4_000, 11);
    let (mut tx, rx) = tokio::net::unix::pipe::pipe().unwrap();
    let first = input[..1_000].to_vec();
    let rest = input[1_000..].to_vec();
    tokio::spawn(async move {
        tx.write_all(&first).await.unwrap();
        // a log that stays quiet longer than the no-progress budget
        tokio::time::sleep(Duration::from_millis(300)).await;
        tx.write_all(&rest).await.unwrap();
    });
    server.fault(Method::PATCH, Fault::CloseMidBody(2_000));
    let mut opts = push_opts(&server, Input::Reader(Box::new(rx)), 64 * 1024);
    opts.retry.max_without_progress = Duration::from_millis(200);
    let report = client::push(opts).await.unwrap();
    assert_stored(&server, &input, false);
    assert_eq!(report.retries, 1);
}

#[tokio::test]
async fn seal_of_empty_input_creates_a_sealed_empty_stream() {
    let server = FakeServer::start().await;
    let mut opts = push_opts(&server, Input::Reader(Box::new(&b""[..])), 1024);
    opts.seal = true;
    let report = client::push(opts).await.unwrap();
    assert_stored(&server, b"", true);
    assert_eq!(report.final_offset, 0);
    assert!(report.sealed);
}

#[tokio::test]
async fn lost_answer_to_the_seal_is_recovered() {
    let server = FakeServer::start().await;
    let input = data(10_000, 3);
    // the data PATCH succeeds; the sealing PATCH is applied but its answer lost
    server.fault(Method::PATCH, Fault::Pass);
    server.fault(Method::PATCH, Fault::DropAnswer);
    let mut opts = push_opts(&server, pipe_input(input.clone()), 64 * 1024);
    opts.seal = true;
    let report = client::push(opts).await.unwrap();
    assert_stored(&server, &input, true);
    assert!(report.sealed && report.retries == 1, "{report:?}");
    let seals: Vec<_> = server.patches().into_iter().filter(|p| p.seal).collect();
    assert_eq!(seals.len(), 1, "the seal was not sent twice: {seals:?}");
}

#[tokio::test]
async fn sealed_stream_accepts_only_the_same_input() {
    let server = FakeServer::start().await;
    let input = data(5_000, 4);
    server.put(ID, &input, true);
    let file = temp_file(&input);
    let report: PushReport =
        client::push(push_opts(&server, Input::File(file.path().into()), 1024))
            .await
            .unwrap();
    assert!(report.sealed && report.bytes_sent == 0, "{report:?}");

    let longer = temp_file(&data(6_000, 4));
    let err = client::push(push_opts(&server, Input::File(longer.path().into()), 1024))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Sealed { offset: 5_000, .. }),
        "{err}"
    );
    assert_eq!(err.exit_code(), 1);
}

#[tokio::test]
async fn input_shorter_than_the_stream_is_refused() {
    let server = FakeServer::start().await;
    server.put(ID, &data(1_000, 5), false);
    let file = temp_file(&data(500, 5));
    let err = client::push(push_opts(&server, Input::File(file.path().into()), 1024))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already has 1000 bytes"), "{err}");
    let err = client::push(push_opts(&server, pipe_input(data(500, 5)), 1024))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::InputShorter { input_len: 500, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn auth_failure_is_fatal_with_the_servers_message() {
    let server = FakeServer::start().await;
    let mut opts = push_opts(&server, pipe_input(data(100, 6)), 1024);
    opts.token = "wrong".into();
    let err = client::push(opts).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "not authorized (HTTP 401): token is not valid"
    );
    assert_eq!(err.exit_code(), 2);
    assert!(server.patches().is_empty());

    let mut opts = cat_opts(&server, 0, false);
    opts.token = "wrong".into();
    let err = client::cat(opts, Vec::new()).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Auth { status: 401, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn persistent_failure_gives_up_with_the_last_reason() {
    let server = FakeServer::start().await;
    for _ in 0..10_000 {
        server.fault(Method::HEAD, Fault::Status(500));
    }
    let mut opts = push_opts(&server, pipe_input(data(100, 7)), 1024);
    opts.retry.max_without_progress = Duration::from_millis(200);
    let err = client::push(opts).await.unwrap_err();
    assert!(matches!(err, ClientError::GaveUp { .. }), "{err}");
    assert!(err.to_string().contains("HTTP 500"), "{err}");
}

#[tokio::test]
async fn connection_refused_is_retried_then_given_up() {
    // a port nobody listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opts = CatOptions::new(
        format!("http://127.0.0.1:{port}").parse().unwrap(),
        TOKEN,
        ID.parse().unwrap(),
    );
    opts.retry = fast_retry();
    opts.retry.max_without_progress = Duration::from_millis(100);
    let err = client::cat(opts, Vec::new()).await.unwrap_err();
    assert!(err.to_string().contains("connect to 127.0.0.1"), "{err}");
}

#[tokio::test]
async fn cat_reads_from_an_offset() {
    let server = FakeServer::start().await;
    let stored = data(50_000, 8);
    server.put(ID, &stored, false);
    let mut out = Vec::new();
    let report = client::cat(cat_opts(&server, 1_234, false), &mut out)
        .await
        .unwrap();
    assert!(out == stored[1_234..], "output differs");
    assert_eq!(
        (report.end_offset, report.reconnects, report.sealed),
        (50_000, 0, false)
    );
}

#[tokio::test]
async fn cat_follow_reconnects_and_stops_at_the_seal() {
    let server = FakeServer::start().await;
    let stored = data(90_000, 9);
    server.put(ID, &stored[..30_000], false);
    server.fault(Method::GET, Fault::GetCloseAfter(10_000));
    server.fault(Method::GET, Fault::Status(503));
    let writer = {
        let (head, tail) = (stored[30_000..60_000].to_vec(), stored[60_000..].to_vec());
        let server = server.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            server.put(ID, &head, false);
            tokio::time::sleep(Duration::from_millis(50)).await;
            server.put(ID, &tail, true);
        })
    };
    let mut out = Vec::new();
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        client::cat(cat_opts(&server, 0, true), &mut out),
    )
    .await
    .unwrap()
    .unwrap();
    writer.await.unwrap();
    assert!(
        out == stored,
        "output differs ({} of {} bytes)",
        out.len(),
        stored.len()
    );
    assert!(report.sealed && report.reconnects >= 2, "{report:?}");
}

#[tokio::test]
async fn cat_stops_cleanly_when_the_output_is_closed() {
    let server = FakeServer::start().await;
    server.put(ID, &data(100_000, 10), false);
    let (tx, rx) = tokio::net::unix::pipe::pipe().unwrap();
    drop(rx);
    let report = client::cat(cat_opts(&server, 0, true), tx).await.unwrap();
    assert!(report.output_closed, "{report:?}");
}

//! The load client against an in-process fake gateway on a real loopback socket.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::{FakeState, TOKEN};
use hyper::{Method, StatusCode};
use loadgen::client::{ErrorCounts, LoadSpec, Target, probe, run_load};

const CHUNK: usize = 16 * 1024;

fn spec(streams: usize, millis: u64, prefix: &str) -> LoadSpec {
    LoadSpec {
        streams,
        chunk: Bytes::from(vec![7u8; CHUNK]),
        duration: Duration::from_millis(millis),
        request_timeout: Duration::from_secs(2),
        path_prefix: format!("/v1/streams/bench/{prefix}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_append_in_order() {
    let state = Arc::new(FakeState::default());
    let target = Target::new(common::start(state.clone()).await, TOKEN).unwrap();
    let outcome = run_load(&target, &spec(4, 300, "ok")).await.unwrap();

    assert_eq!(outcome.errors, ErrorCounts::default());
    assert!(outcome.requests > 4, "only {} requests", outcome.requests);
    assert_eq!(outcome.acked_bytes, outcome.requests * CHUNK as u64);
    assert_eq!(outcome.latency.count(), outcome.requests);
    assert_eq!(state.committed.load(Ordering::Relaxed), outcome.acked_bytes);
    let per_stream: u64 = (0..4)
        .map(|i| state.offset(&format!("/v1/streams/bench/ok/s{i}")).unwrap())
        .sum();
    assert_eq!(per_stream, outcome.acked_bytes);
    assert!(
        outcome.elapsed >= Duration::from_millis(300) && outcome.elapsed < Duration::from_secs(3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_resumes_at_the_committed_offset() {
    let state = Arc::new(FakeState::default());
    state.set_offset("/v1/streams/bench/resume/s0", 100);
    let target = Target::new(common::start(state.clone()).await, TOKEN).unwrap();
    let outcome = run_load(&target, &spec(1, 200, "resume")).await.unwrap();

    assert_eq!(
        outcome.errors,
        ErrorCounts {
            conflict: 1,
            ..ErrorCounts::default()
        }
    );
    assert!(outcome.requests > 0);
    let end = state.offset("/v1/streams/bench/resume/s0").unwrap();
    assert_eq!(end, 100 + outcome.acked_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_reconnect_and_resume_via_head() {
    let state = Arc::new(FakeState {
        drop_every: 5,
        ..FakeState::default()
    });
    let target = Target::new(common::start(state.clone()).await, TOKEN).unwrap();
    let outcome = run_load(&target, &spec(2, 300, "drops")).await.unwrap();

    assert!(outcome.errors.transport > 0, "{}", outcome.errors);
    assert_eq!(
        outcome.errors.conflict + outcome.errors.protocol,
        0,
        "{}",
        outcome.errors
    );
    assert!(outcome.requests > 0);
    assert_eq!(state.committed.load(Ordering::Relaxed), outcome.acked_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_stops_every_stream_at_once() {
    let state = Arc::new(FakeState::default());
    let target = Target::new(common::start(state.clone()).await, "wrong").unwrap();
    let outcome = run_load(&target, &spec(3, 5_000, "denied")).await.unwrap();

    assert_eq!(
        outcome.errors,
        ErrorCounts {
            rejected: 3,
            ..ErrorCounts::default()
        }
    );
    assert_eq!(outcome.requests, 0);
    assert!(
        outcome.elapsed < Duration::from_secs(1),
        "streams kept going: {:?}",
        outcome.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reads_status_and_only_loopback_is_allowed() {
    let state = Arc::new(FakeState::default());
    let target = Target::new(common::start(state).await, TOKEN).unwrap();
    let (status, _) = probe(&target, Method::GET, "/readyz", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, _) = probe(
        &target,
        Method::HEAD,
        "/v1/streams/a/b/none",
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    let err = Target::new("10.1.2.3:80".parse().unwrap(), TOKEN).unwrap_err();
    assert!(err.to_string().contains("only loopback"), "{err}");
}

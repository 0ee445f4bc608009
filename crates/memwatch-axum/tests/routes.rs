//! The routes and the soft-limit layer in a real axum router, driven with `oneshot`, in a
//! process with memwatch's counting allocator and heap profiling on.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use memwatch_axum::{Routes, SoftLimitLayer, bearer_token};
use tower::ServiceExt;

#[global_allocator]
static GLOBAL: memwatch::Allocator = memwatch::Allocator::new();
memwatch::malloc_conf!();

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn call(app: &Router, method: &str, uri: &str, token: Option<&str>) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        retry_after,
        body,
    }
}

fn service(mw: &memwatch::Memwatch) -> Router {
    Router::new()
        .route("/work", get(|| async { "done" }))
        .merge(Routes::new(mw.clone(), bearer_token("t0ken")).router())
        .layer(SoftLimitLayer::new(mw.clone()).exempt(|r| r.uri().path().starts_with("/debug/")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_behind_the_services_authorization_and_the_soft_limit_sheds_work() {
    let dir = tempfile::tempdir().unwrap();
    let mw = memwatch::Memwatch::builder()
        .capture_dir(dir.path())
        .limit_bytes(1 << 40)
        .start()
        .unwrap();
    let app = service(&mw);

    assert_eq!(call(&app, "GET", "/debug/memory", None).await.status, 401);
    assert_eq!(
        call(&app, "GET", "/debug/memory", Some("nope"))
            .await
            .status,
        401
    );
    let memory = call(&app, "GET", "/debug/memory", Some("t0ken")).await;
    assert_eq!(memory.status, 200);
    let json = memory.json();
    assert!(
        json["jemalloc"]["allocated_bytes"].as_u64().unwrap() > 0,
        "{json}"
    );
    assert!(
        json["process"]["resident_bytes"].as_u64().unwrap() > 0,
        "{json}"
    );
    assert_eq!(json["recorder"]["limit_bytes"], 1u64 << 40, "{json}");
    assert_eq!(json["recorder"]["limit_source"], "config", "{json}");
    assert_eq!(json["postmortem"]["captures"], 0, "{json}");

    let heap = call(&app, "GET", "/debug/pprof/heap", Some("t0ken")).await;
    assert_eq!(
        (heap.status, &heap.body[..2]),
        (StatusCode::OK, &[0x1f, 0x8b][..])
    );
    let svg = call(&app, "GET", "/debug/pprof/heap?format=svg", Some("t0ken")).await;
    assert!(String::from_utf8_lossy(&svg.body).contains("<svg"));
    let bad = call(&app, "GET", "/debug/pprof/heap?format=png", Some("t0ken")).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "invalid_query");

    let capture = call(&app, "POST", "/debug/memory/capture", Some("t0ken")).await;
    assert_eq!(capture.status, 202);
    // The capture lands in the directory, then in the recorder's counters.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = call(&app, "GET", "/metrics", None).await;
        let text = String::from_utf8(metrics.body).unwrap();
        if text.contains("memwatch_recorder_captures_total 1") {
            break;
        }
        assert!(Instant::now() < deadline, "no capture counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(memwatch::captures(dir.path()).unwrap().len(), 1);
    assert_eq!(call(&app, "GET", "/work", None).await.status, 200);
    drop(app);
    drop(mw);

    // A limit far below what the process uses: over the soft limit at the first sample.
    let mw = memwatch::Memwatch::builder()
        .capture_dir(dir.path())
        .limit_bytes(300_000)
        .start()
        .unwrap();
    let app = service(&mw);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mw.over_soft_limit() {
        assert!(Instant::now() < deadline, "never over the soft limit");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let refused = call(&app, "GET", "/work", None).await;
    assert_eq!(
        (refused.status, refused.retry_after.as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("1"))
    );
    assert_eq!(refused.json()["error"], "overloaded");
    let exempt = call(&app, "GET", "/debug/memory", Some("t0ken")).await;
    assert_eq!(exempt.status, 200);
    assert_eq!(exempt.json()["recorder"]["over_soft_limit"], true);
}

//! Readiness and failover on a 3-node JetStream cluster (R3), measured: the time writes stop
//! when the stream's leader is killed, `/readyz` without quorum, the answer time of a write
//! while no write can succeed, and the time writes take to resume when the nodes return.
//! Slow (a cluster, elections): runs with ENGINE_GATEWAY_SLOW_TESTS=1, as CI does.
#![allow(clippy::unwrap_used)]

mod common;
mod common_nats;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Gateway, slow_tests};
use common_nats::cluster::NatsCluster;

const STREAM: &str = "acme/prod/failover";

/// Appends 4 KiB at a time for as long as `run` is set, resyncing the offset with HEAD after a
/// failure; records when each append succeeded.
struct Writer {
    successes: Arc<Mutex<Vec<Instant>>>,
    run: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    fn start(gw: &Gateway, token: &str) -> Writer {
        let successes = Arc::new(Mutex::new(Vec::new()));
        let run = Arc::new(AtomicBool::new(true));
        let (addr, token) = (gw.addr, token.to_owned());
        let (ok, go) = (Arc::clone(&successes), Arc::clone(&run));
        let thread = std::thread::spawn(move || {
            let chunk = vec![b'x'; 4096];
            let mut offset = 0u64;
            while go.load(Ordering::Relaxed) {
                let at = offset.to_string();
                let response = std::panic::catch_unwind(|| {
                    common::request(
                        addr,
                        "PATCH",
                        &format!("/v1/streams/{STREAM}"),
                        Some(&token),
                        &[
                            ("stream-offset", &at),
                            ("content-type", "application/offset+octet-stream"),
                        ],
                        &chunk,
                    )
                });
                match response {
                    Ok(r) if r.status == 204 => {
                        offset += chunk.len() as u64;
                        ok.lock().unwrap().push(Instant::now());
                    }
                    other => {
                        if other.is_ok_and(|r| r.status == 409) {
                            // A publish that timed out but was stored: go on from the truth.
                            let head = common::request(
                                addr,
                                "HEAD",
                                &format!("/v1/streams/{STREAM}"),
                                Some(&token),
                                &[],
                                b"",
                            );
                            if let Some(n) = head.header("stream-offset") {
                                offset = n.parse().unwrap();
                            }
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
            offset
        });
        Writer {
            successes,
            run,
            thread: Some(thread),
        }
    }

    fn wait_for_successes(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.successes.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "writes did not get going");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Time from `from` to the first success after it.
    fn resumed_after(&self, from: Instant, within: Duration) -> Duration {
        let deadline = from + within;
        loop {
            if let Some(t) = self.successes.lock().unwrap().iter().find(|&&t| t > from) {
                return *t - from;
            }
            assert!(
                Instant::now() < deadline,
                "writes did not resume within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The longest stretch without a successful write between `from` and now.
    fn longest_gap_since(&self, from: Instant) -> Duration {
        let successes = self.successes.lock().unwrap();
        let mut last = from;
        let mut gap = Duration::ZERO;
        for &t in successes.iter().filter(|&&t| t > from) {
            gap = gap.max(t - last);
            last = t;
        }
        gap.max(Instant::now() - last)
    }

    fn stop(mut self) -> u64 {
        self.run.store(false, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// Asks the cluster itself (not through the gateway) who leads the gateway's stream.
struct Observer {
    runtime: tokio::runtime::Runtime,
    js: async_nats::jetstream::Context,
}

impl Observer {
    fn connect(urls: &str) -> Observer {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let js = runtime.block_on(async {
            let addrs: Vec<async_nats::ServerAddr> =
                urls.split(',').map(|url| url.parse().unwrap()).collect();
            let client = async_nats::connect(addrs).await.unwrap();
            async_nats::jetstream::ContextBuilder::new()
                .timeout(Duration::from_millis(500))
                .build(client)
        });
        Observer { runtime, js }
    }

    /// The stream's cluster info now, if the cluster answers within 500 ms.
    fn cluster(&self) -> Option<async_nats::jetstream::stream::ClusterInfo> {
        self.runtime.block_on(async {
            let stream = self.js.get_stream("ENGINE_GATEWAY").await.ok()?;
            stream.cached_info().cluster.clone()
        })
    }

    /// Waits for a leader other than `not` (`None`: any leader); returns its name.
    fn wait_for_leader(&self, not: Option<&str>, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(leader) = self.cluster().and_then(|c| c.leader)
                && Some(leader.as_str()) != not
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no new stream leader in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn readyz(gw: &Gateway) -> (u16, String) {
    let r = gw.request("GET", "/readyz", None, &[], b"");
    (r.status, r.text())
}

#[test]
fn leader_loss_and_quorum_loss_on_a_3_node_cluster() {
    if !slow_tests() {
        eprintln!("skipping the failover test: set ENGINE_GATEWAY_SLOW_TESTS=1");
        return;
    }
    let Some(mut cluster) = NatsCluster::start() else {
        return;
    };
    let urls = cluster.urls();
    let gw = Gateway::start_with(&["--store", &urls, "--nats-replicas", "3"], None);
    let token = gw.admin_token();
    let writer = Writer::start(&gw, &token);
    writer.wait_for_successes(50, Duration::from_secs(30));

    // 1. The stream's leader dies: a follower is elected; writes stop only for that long.
    let observer = Observer::connect(&urls);
    let old_leader = observer.wait_for_leader(None, Duration::from_secs(20));
    let first = NatsCluster::index_of(&old_leader).unwrap();
    let killed = Instant::now();
    cluster.kill(first);
    observer.wait_for_leader(Some(&old_leader), Duration::from_secs(30));
    let elected = killed.elapsed();
    let resumed = writer.resumed_after(killed, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let gap = writer.longest_gap_since(killed);
    eprintln!(
        "leader killed: new leader after {elected:?}, writes resumed after {resumed:?}, longest gap {gap:?}"
    );
    // nats-server elects a new stream leader 4–9 s after the old one is gone (its raft
    // election timeout); the gateway's part is what comes after.
    assert!(
        resumed.saturating_sub(elected) < Duration::from_millis(2500),
        "writes resumed {resumed:?} after the kill, the new leader came after {elected:?}"
    );
    assert!(gap < Duration::from_secs(15), "writes stopped for {gap:?}");
    // One node down: still a quorum. Readiness comes back once no check has failed for 3 s
    // (a leader counts a follower that just died for that long).
    let ready_deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = readyz(&gw);
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < ready_deadline,
            "one node down, /readyz still {status}: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "one node down: ready again {:?} after the kill",
        killed.elapsed()
    );

    // 2. A second node dies: no quorum. Readiness must say so, and writes must fail fast.
    let second = (0..3).find(|&i| i != first).unwrap();
    let lost = Instant::now();
    cluster.kill(second);
    let deadline = lost + Duration::from_secs(20);
    let reason = loop {
        let (status, body) = readyz(&gw);
        if status == 503 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed 200 without quorum"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let not_ready_after = lost.elapsed();
    assert!(reason.contains("\"error\":\"unavailable\""), "{reason}");
    let mut samples = Vec::new();
    for _ in 0..10 {
        samples.push(readyz(&gw).0);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        samples.iter().all(|&s| s == 503),
        "/readyz without quorum: {samples:?}"
    );
    // Known down: once readiness has a verdict (no leader, no quorum, or the leader no longer
    // answering), a write is refused at once, not after a request timeout. Before that, for up
    // to 3 s, a leader that lost its followers still counts them and a write waits for an ack.
    let verdict_deadline = Instant::now() + Duration::from_secs(20);
    let mut unanswered = 0;
    loop {
        let (status, body) = readyz(&gw);
        assert_eq!(status, 503, "/readyz without quorum: {body}");
        if body.contains("quorum") || body.contains("leader") {
            break;
        }
        unanswered = if body.contains("stream info") {
            unanswered + 1
        } else {
            0
        };
        if unanswered >= 2 {
            break;
        }
        assert!(
            Instant::now() < verdict_deadline,
            "no verdict without quorum: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("quorum lost: a verdict {:?} after the kill", lost.elapsed());
    let mut slowest_refusal = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let refused = gw.append(&token, "acme/prod/no-quorum", 0, b"x");
        assert_eq!(refused.status, 503, "{}", refused.text());
        assert!(refused.header("retry-after").is_some());
        slowest_refusal = slowest_refusal.max(started.elapsed());
    }
    eprintln!(
        "quorum lost: /readyz 503 after {not_ready_after:?} ({reason}); slowest refused write {slowest_refusal:?}"
    );
    assert!(
        slowest_refusal <= Duration::from_millis(500),
        "a write without quorum took {slowest_refusal:?} to be refused"
    );

    // 3. Both nodes return: writes resume, readiness comes back.
    let back = Instant::now();
    cluster.restart(first);
    cluster.restart(second);
    let resumed = writer.resumed_after(back, Duration::from_secs(30));
    eprintln!("nodes back: writes resumed after {resumed:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while readyz(&gw).0 != 200 {
        assert!(Instant::now() < deadline, "/readyz did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
    let written = writer.stop();
    let stored = read_back(&gw, &token);
    assert_eq!(stored.len() as u64, written, "bytes lost or duplicated");
    assert!(stored.iter().all(|&b| b == b'x'));
}

/// The whole stream, read again when a read is refused or its body is cut short: the cluster
/// may still be settling (a new election after the nodes rejoin), and a read that fails ends
/// the body early, which a client answers by reading again.
fn read_back(gw: &Gateway, token: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let raw = format!(
            "GET /v1/streams/{STREAM}?offset=0 HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\
             authorization: Bearer {token}\r\n\r\n"
        );
        match common::request_raw(gw.addr, raw.as_bytes()) {
            Ok(r) if r.status == 200 => return r.body,
            Ok(r) if r.status == 503 => eprintln!("read back refused: {}", r.text()),
            Ok(r) => panic!("read back: {} {}", r.status, r.text()),
            Err(err) => eprintln!("read back cut short: {err}"),
        }
        assert!(
            Instant::now() < deadline,
            "the stream could not be read back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

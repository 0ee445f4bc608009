//! Stateless gateway replicas on one NATS JetStream, with the real binary and real
//! nats-server processes: tokens made by the CLI work everywhere, clients alternate and race
//! between replicas, a replica is SIGKILLed mid-push, NATS itself is killed under load, and
//! (with ENGINE_GATEWAY_SLOW_TESTS=1) a node of a 3-node R3 cluster dies mid-stream.
#![allow(clippy::unwrap_used)]

mod common;
mod common_nats;

use std::io::Write as _;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{BIN, Gateway, pattern, sha256, slow_tests};
use common_nats::NatsServer;
use common_nats::cluster::NatsCluster;

/// Short NATS timeouts so an outage shows as 503 within a second.
const QUICK_NATS: &str = "[nats]\nrequest_timeout_secs = 1\nconnect_timeout_secs = 2\n";

fn gateway(store: &str, config: Option<&str>) -> Gateway {
    Gateway::start_with(&["--store", store], config)
}

/// `engine-gateway token ... --store URL`, with no data directory at all.
fn token_cli(store: &str, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .arg("token")
        .args(args)
        .args(["--store", store])
        .env_remove("ENGINE_GATEWAY_DATA_DIR")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "token {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn deployer_token(store: &str) -> String {
    let out = token_cli(
        store,
        &[
            "create",
            "--org",
            "acme",
            "--cluster",
            "prod",
            "--role",
            "deployer",
        ],
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// An `engine-gateway push --seal` from stdin, fed by the test piece by piece, so the test
/// decides what is in flight when something dies. A writer thread feeds stdin, so the test
/// never blocks on a push that is not reading while its gateway is down.
struct Push {
    child: Child,
    /// Pieces for the writer thread; dropping it closes stdin.
    feed: Option<SyncSender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
}

impl Push {
    fn start(url: &str, token: &str, stream: &str) -> Push {
        let mut child = Command::new(BIN)
            .args(["push", "--url", url, "--token", token, "--stream", stream])
            .args(["--seal", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let (feed, pieces) = sync_channel::<Vec<u8>>(16);
        let writer = std::thread::spawn(move || {
            for piece in pieces {
                if stdin.write_all(&piece).is_err() {
                    return;
                }
            }
        });
        Push {
            child,
            feed: Some(feed),
            writer: Some(writer),
        }
    }

    fn send(&mut self, data: &[u8]) {
        self.feed.as_ref().unwrap().send(data.to_vec()).unwrap();
    }

    /// Closes stdin and waits for the push to finish; panics with its stderr on failure.
    fn finish(mut self) -> String {
        drop(self.feed.take());
        let out = self.child.wait_with_output().unwrap();
        self.writer.take().unwrap().join().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "push failed: {stderr}");
        stderr
    }
}

/// Waits until the committed offset reaches `at_least` (any status but 200 counts as not yet).
fn wait_for_offset(gw: &Gateway, token: &str, stream: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let (200, Some(offset)) = gw.offset(token, stream)
            && offset >= at_least
        {
            return offset;
        }
        assert!(
            Instant::now() < deadline,
            "{stream} never reached {at_least}:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status(gw: &Gateway, path: &str) -> u16 {
    gw.request("GET", path, None, &[], b"").status
}

fn head_sealed(gw: &Gateway, token: &str, stream: &str) -> Option<String> {
    let r = gw.request(
        "HEAD",
        &format!("/v1/streams/{stream}"),
        Some(token),
        &[],
        b"",
    );
    r.header("stream-sealed").map(str::to_owned)
}

#[test]
fn replicas_share_tokens_streams_and_conflicts() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let a = gateway(&url, None);
    let b = gateway(&url, None);
    // The first replica found the bucket empty and wrote the admin token; the second did not.
    let admin = a.admin_token();
    assert!(!b.data_dir().join("admin.token").exists());
    assert!(!a.data_dir().join("store").exists() && !a.data_dir().join("tokens").exists());

    let token = deployer_token(&url);
    let s = "acme/prod/alternate";
    // A client alternating between the replicas: each resumes where the other left off.
    let mut want = Vec::new();
    for (i, gw) in [&a, &b, &a, &b, &b, &a].into_iter().enumerate() {
        let (_, offset) = [&a, &b][i % 2].offset(&token, s);
        assert_eq!(offset.unwrap_or(0), want.len() as u64);
        let piece = pattern(i as u64, 1000 + i * 300_000);
        let r = gw.append(&token, s, want.len() as u64, &piece);
        assert_eq!(r.status, 204, "{}", r.text());
        want.extend_from_slice(&piece);
        assert_eq!(r.header("stream-offset").unwrap(), want.len().to_string());
    }
    assert_eq!(sha256(&a.read_all(&token, s)), sha256(&want));
    assert_eq!(sha256(&b.read_all(&admin, s)), sha256(&want));

    // Two clients racing on one offset through different replicas: one wins, the other is
    // told the committed offset, which includes the winner's bytes.
    let race = "acme/prod/race";
    assert_eq!(a.append(&token, race, 0, b"start").status, 204);
    let mut offset = 5u64;
    for round in 0..6 {
        let barrier = Arc::new(Barrier::new(2));
        let answers: Vec<_> = [(&a, 100 + round), (&b, 200 + round)]
            .map(|(gw, len)| {
                let (barrier, addr, token) = (barrier.clone(), gw.addr, token.clone());
                std::thread::spawn(move || {
                    let body = vec![b'x'; len];
                    let at = offset.to_string();
                    let headers = [
                        ("stream-offset", at.as_str()),
                        ("content-type", "application/offset+octet-stream"),
                    ];
                    let path = format!("/v1/streams/{race}");
                    barrier.wait();
                    (
                        len as u64,
                        common::request(addr, "PATCH", &path, Some(&token), &headers, &body),
                    )
                })
            })
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        let won: Vec<_> = answers.iter().filter(|(_, r)| r.status == 204).collect();
        assert_eq!(won.len(), 1, "round {round}: {answers:?}");
        let (len, _) = won[0];
        let lost = answers.iter().find(|(_, r)| r.status != 204).unwrap();
        assert_eq!(lost.1.status, 409, "{}", lost.1.text());
        assert_eq!(lost.1.code(), "offset_mismatch");
        offset += len;
        assert_eq!(lost.1.header("stream-offset").unwrap(), offset.to_string());
    }
    assert_eq!(b.offset(&token, race), (200, Some(offset)));

    // `cat` through a NATS-backed replica reads what was written through both.
    let out = Command::new(BIN)
        .args(["cat", "--url", &b.url(), "--token", &token, "--stream", s])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sha256(&out.stdout), sha256(&want));

    // Revocation through the CLI takes effect on both replicas at once.
    let list = String::from_utf8(token_cli(&url, &["list"]).stdout).unwrap();
    let id = &token[4..20];
    assert!(
        list.lines()
            .any(|l| l.starts_with(id) && l.ends_with("active")),
        "{list}"
    );
    token_cli(&url, &["revoke", id]);
    // Each replica learns of it through its bucket watch: within a message's latency, and at
    // most FRESH (2 s) later if the watch stalled; a HEAD is refused from then on.
    let revoked = Instant::now();
    for gw in [&a, &b] {
        loop {
            let r = gw.request("HEAD", &format!("/v1/streams/{s}"), Some(&token), &[], b"");
            if r.status == 401 {
                break;
            }
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(
                revoked.elapsed() < Duration::from_secs(3),
                "a revoked token still worked after {:?}",
                revoked.elapsed()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    eprintln!(
        "revocation seen by both replicas within {:?}",
        revoked.elapsed()
    );
}

#[test]
fn push_resumes_after_kill9_of_its_replica_and_reads_back_through_the_other() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let mut a = gateway(&url, None);
    let b = gateway(&url, None);
    let token = deployer_token(&url);
    let stream = "acme/prod/kill-a";
    let data = pattern(7, if slow_tests() { 24 << 20 } else { 6 << 20 });
    let third = data.len() / 3;

    let mut push = Push::start(&a.url(), &token, stream);
    push.send(&data[..third]);
    let killed_at = wait_for_offset(&a, &token, stream, third as u64);
    // The push holds an open PATCH, waiting for more input, when its replica dies.
    a.kill9();
    push.send(&data[third..2 * third]);
    std::thread::sleep(Duration::from_millis(300));
    a.spawn();
    push.send(&data[2 * third..]);
    let stderr = push.finish();
    assert!(
        !stderr.contains(" 0 retries"),
        "push never retried: {stderr}"
    );

    let (_, after) = b.offset(&token, stream);
    assert!(after.unwrap() >= killed_at);
    assert_eq!(head_sealed(&b, &token, stream).as_deref(), Some("true"));
    let stored = b.read_all(&token, stream);
    assert_eq!(stored.len(), data.len());
    assert_eq!(sha256(&stored), sha256(&data));
}

#[test]
fn nats_outage_answers_503_then_everything_resumes() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let gw = gateway(&url, Some(QUICK_NATS));
    let token = deployer_token(&url);
    let stream = "acme/prod/outage";
    let data = pattern(9, if slow_tests() { 16 << 20 } else { 4 << 20 });
    let half = data.len() / 2;

    let mut push = Push::start(&gw.url(), &token, stream);
    push.send(&data[..half]);
    let acknowledged = wait_for_offset(&gw, &token, stream, half as u64);
    nats.kill();

    // Readiness fails, appends and token checks answer 503 with Retry-After.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&gw, "/readyz") != 503 {
        assert!(Instant::now() < deadline, "readyz stayed up:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = gw.append(&token, "acme/prod/other", 0, b"during the outage");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    push.send(&data[half..half + half / 2]);
    std::thread::sleep(Duration::from_millis(500));

    nats.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&gw, "/readyz") != 200 {
        assert!(
            Instant::now() < deadline,
            "never ready again:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    push.send(&data[half + half / 2..]);
    push.finish();
    let stored = gw.read_all(&token, stream);
    assert!(stored.len() as u64 >= acknowledged);
    assert_eq!(stored.len(), data.len());
    assert_eq!(sha256(&stored), sha256(&data));
    assert_eq!(head_sealed(&gw, &token, stream).as_deref(), Some("true"));
}

#[test]
fn r3_cluster_survives_a_node_killed_mid_stream() {
    if !slow_tests() {
        eprintln!("skipping the 3-node cluster test: set ENGINE_GATEWAY_SLOW_TESTS=1");
        return;
    }
    let Some(mut cluster) = NatsCluster::start() else {
        return;
    };
    let urls = cluster.urls();
    // The gateway waits for the meta leader itself: creating the R3 stream is retried until
    // the cluster answers.
    let gw = Gateway::start_with(
        &["--store", &urls, "--nats-replicas", "3"],
        Some(QUICK_NATS),
    );
    let token = gw.admin_token();
    let stream = "acme/prod/r3";
    let data = pattern(11, 12 << 20);
    let third = data.len() / 3;

    let mut push = Push::start(&gw.url(), &token, stream);
    push.send(&data[..third]);
    let acknowledged = wait_for_offset(&gw, &token, stream, third as u64);
    cluster.kill(0);
    push.send(&data[third..2 * third]);
    std::thread::sleep(Duration::from_millis(500));
    push.send(&data[2 * third..]);
    push.finish();

    let stored = gw.read_all(&token, stream);
    assert!(stored.len() as u64 >= acknowledged);
    assert_eq!(stored.len(), data.len(), "bytes lost or duplicated");
    assert_eq!(sha256(&stored), sha256(&data));
    assert_eq!(head_sealed(&gw, &token, stream).as_deref(), Some("true"));
}

/// The recipe of docs/nats.md: an ordered consumer filtered on one stream's subject reads its
/// bytes in order, large appends split over several messages, the seal on the last one.
#[test]
fn processors_read_a_stream_in_order_with_an_ordered_consumer() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let gw = gateway(&nats.url(), None);
    let token = gw.admin_token();
    let stream = "acme/prod.eu/deploy.log";
    let mut want = Vec::new();
    for (i, len) in [1000usize, 1_300_000, 70_000].into_iter().enumerate() {
        let piece = pattern(20 + i as u64, len);
        assert_eq!(
            gw.append(&token, stream, want.len() as u64, &piece).status,
            204
        );
        want.extend_from_slice(&piece);
    }
    let at = want.len().to_string();
    let seal = [
        ("stream-offset", at.as_str()),
        ("content-type", "application/offset+octet-stream"),
        ("stream-seal", "true"),
    ];
    let path = format!("/v1/streams/{stream}");
    assert_eq!(
        gw.request("PATCH", &path, Some(&token), &seal, b"").status,
        204
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (got, sealed, messages) = runtime.block_on(async {
        use async_nats::jetstream::consumer::pull::OrderedConfig;
        use futures_util::StreamExt as _;
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let source = js.get_stream("ENGINE_GATEWAY").await.unwrap();
        let consumer = source
            .create_consumer(OrderedConfig {
                filter_subject: "egw.data.acme.prod=eu.deploy=log".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let (mut bytes, mut count) = (Vec::new(), 0);
        while let Some(msg) = messages.next().await {
            let msg = msg.unwrap();
            count += 1;
            let headers = msg.headers.clone().unwrap_or_default();
            let offset: u64 = headers.get("Egw-Offset").unwrap().as_str().parse().unwrap();
            assert_eq!(offset, bytes.len() as u64, "a gap or an overlap");
            bytes.extend_from_slice(&msg.payload);
            if headers
                .get("Egw-Seal")
                .is_some_and(|v| v.as_str() == "true")
            {
                return (bytes, true, count);
            }
        }
        (bytes, false, count)
    });
    assert!(sealed);
    assert_eq!(sha256(&got), sha256(&want));
    // The 1.3 MB PATCH alone becomes several messages (the gateway appends as bytes arrive,
    // and one message holds at most 512 KiB); the seal is an empty marker message.
    assert!(messages >= 6, "{messages} messages");
}

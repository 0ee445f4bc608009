//! Ingest into JetStream through the gateway versus a direct async-nats publisher, against one
//! fresh nats-server: same payload size, same concurrency, same headers, every message
//! acknowledged before the next one on its stream. The two paths alternate for `--rounds`
//! rounds (each into fresh streams) and the ratios are medians over rounds. Prints a markdown
//! table with nats-server's (and the gateway's) CPU per GiB.
//!
//! `cargo run --release --example nats_bench -- [--gateway PATH] [--nats-server PATH]
//! [--streams N] [--payload BYTES] [--total-mib N] [--rounds N] [--baseline-gateway PATH]`
//! (bench/nats.sh runs it and keeps results). With `--baseline-gateway`, every round also runs
//! that build (the two gateways' order alternating by round), for a before/after in one run.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

/// What to run.
struct Options {
    gateway: String,
    /// A second gateway build run in every round too, for before/after ratios.
    baseline: Option<String>,
    nats_server: String,
    /// Concurrent streams (one client task each, one request in flight per stream).
    streams: usize,
    /// Bytes per PATCH and per direct publish.
    payload: usize,
    /// Bytes sent in each run, all streams together.
    total: usize,
    /// Rounds of (direct, gateway), alternated on the one server; figures are medians.
    rounds: usize,
}

/// One measured run.
struct Run {
    name: &'static str,
    seconds: f64,
    bytes: usize,
    /// CPU seconds nats-server used during the run.
    nats_cpu_s: f64,
    /// CPU seconds the gateway used during the run (gateway run only).
    gateway_cpu_s: Option<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_args()?;
    let dir = tempfile::tempdir()?;
    let nats_port = free_port()?;
    let mut nats = Command::new(&options.nats_server)
        .args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &nats_port.to_string(),
            "-sd",
        ])
        .arg(dir.path().join("js"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", options.nats_server))?;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    wait_until(|| std::net::TcpStream::connect(("127.0.0.1", nats_port)).is_ok()).await?;

    let nats_pid = nats.id();
    // Alternated on one server, so neither path always meets a fuller store or a busier minute.
    let mut rounds = Vec::new();
    let mut last = (0, String::new());
    for round in 0..options.rounds {
        let result = async {
            let direct = direct_run(&nats_url, &options, nats_pid, round).await?;
            let candidate = (options.gateway.as_str(), GATEWAY, "g");
            let Some(baseline) = &options.baseline else {
                let gateway =
                    gateway_run(&nats_url, &options, candidate, dir.path(), nats_pid, round)
                        .await?;
                return anyhow::Ok((direct, gateway, None));
            };
            let baseline = (baseline.as_str(), BASELINE, "b");
            // ABBA: the second run of a round often meets a warmer machine
            let flip = round % 2 == 1;
            let (first, second) = if flip {
                (baseline, candidate)
            } else {
                (candidate, baseline)
            };
            let first =
                gateway_run(&nats_url, &options, first, dir.path(), nats_pid, round).await?;
            let second =
                gateway_run(&nats_url, &options, second, dir.path(), nats_pid, round).await?;
            let (gateway, base) = if flip {
                (second, first)
            } else {
                (first, second)
            };
            anyhow::Ok((direct, gateway, Some(base.0)))
        }
        .await;
        let (direct, (gateway, peak_rss_kib, metrics), base) = match result {
            Ok(runs) => runs,
            Err(err) => {
                let _ = nats.kill();
                let _ = nats.wait();
                return Err(err);
            }
        };
        last = (last.0.max(peak_rss_kib), metrics);
        rounds.push((direct, gateway, base));
    }
    let _ = nats.kill();
    let _ = nats.wait();

    let mib_s = |r: &Run| r.bytes as f64 / (1 << 20) as f64 / r.seconds;
    let gib = |r: &Run| r.bytes as f64 / (1u64 << 30) as f64;
    println!(
        "| round | path | streams | payload | MiB | seconds | MiB/s | msgs/s | nats-server CPU-s/GiB | gateway CPU-s/GiB |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for (round, (direct, gateway, base)) in rounds.iter().enumerate() {
        for run in [Some(direct), Some(gateway), base.as_ref()]
            .into_iter()
            .flatten()
        {
            println!(
                "| {} | {} | {} | {} KiB | {} | {:.2} | {:.1} | {:.0} | {:.2} | {} |",
                round + 1,
                run.name,
                options.streams,
                options.payload / 1024,
                run.bytes >> 20,
                run.seconds,
                mib_s(run),
                (run.bytes / options.payload) as f64 / run.seconds,
                run.nats_cpu_s / gib(run),
                run.gateway_cpu_s
                    .map_or_else(|| "-".into(), |c| format!("{:.2}", c / gib(run))),
            );
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    // a run's figure per GiB divided by another's
    let server_per_gib = |r: &Run| r.nats_cpu_s / gib(r);
    let gateway_per_gib = |r: &Run| r.gateway_cpu_s.unwrap_or(f64::NAN) / gib(r);
    let throughput = median(rounds.iter().map(|(d, g, _)| mib_s(g) / mib_s(d)).collect());
    let server_cpu = median(
        rounds
            .iter()
            .map(|(d, g, _)| server_per_gib(g) / server_per_gib(d))
            .collect(),
    );
    println!(
        "\ngateway / direct, median of {} rounds' ratios: **{throughput:.2}×** throughput, \
         **{server_cpu:.2}×** nats-server CPU per GiB; gateway peak RSS (VmHWM): **{:.1} MiB**",
        rounds.len(),
        last.0 as f64 / 1024.0
    );
    let pairs: Vec<(&Run, &Run, &Run)> = rounds
        .iter()
        .filter_map(|(d, g, b)| b.as_ref().map(|b| (d, g, b)))
        .collect();
    if !pairs.is_empty() {
        let base_throughput = median(pairs.iter().map(|(d, _, b)| mib_s(b) / mib_s(d)).collect());
        let base_server = median(
            pairs
                .iter()
                .map(|(d, _, b)| server_per_gib(b) / server_per_gib(d))
                .collect(),
        );
        let vs_throughput = median(pairs.iter().map(|(_, g, b)| mib_s(g) / mib_s(b)).collect());
        let vs_cpu = median(
            pairs
                .iter()
                .map(|(_, g, b)| gateway_per_gib(g) / gateway_per_gib(b))
                .collect(),
        );
        println!(
            "\nbaseline gateway / direct, median of the rounds' ratios: **{base_throughput:.2}×** \
             throughput, **{base_server:.2}×** nats-server CPU per GiB\n\ngateway / baseline \
             gateway, median of the rounds' ratios: **{vs_throughput:.2}×** throughput, \
             **{vs_cpu:.2}×** gateway CPU per GiB"
        );
    }
    println!("\ngateway's nats counters after its last run: {}", last.1);
    Ok(())
}

/// User + system CPU seconds of a process so far, from `/proc/PID/stat` (fields 14 and 15).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("no ) in /proc/PID/stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .context("short /proc/PID/stat")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<u64, _>>()?;
    Ok(ticks as f64 / 100.0)
}

/// Publishes straight to JetStream the way the gateway does: gateway headers, a message id,
/// the expected last subject sequence, and an acknowledgement awaited per message, into a
/// stream of its own per round.
async fn direct_run(
    url: &str,
    options: &Options,
    nats_pid: u32,
    round: usize,
) -> anyhow::Result<Run> {
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client);
    let (name, root) = (format!("BENCH_DIRECT_{round}"), format!("bench{round}"));
    js.create_stream(stream::Config {
        name,
        subjects: vec![format!("{root}.>")],
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        max_message_size: 1 << 20,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        ..Default::default()
    })
    .await?;
    let payload = Bytes::from(vec![b'd'; options.payload]);
    let per_stream = options.total / options.streams / options.payload;
    let cpu_before = cpu_seconds(nats_pid)?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..options.streams {
        let (js, payload, root) = (js.clone(), payload.clone(), root.clone());
        tasks.push(tokio::spawn(async move {
            let subject = format!("{root}.data.acme.prod.s{s}");
            let mut prev = 0u64;
            for i in 0..per_stream {
                let offset = (i * payload.len()) as u64;
                let mut headers = HeaderMap::new();
                headers.insert("Egw-Offset", offset.to_string().as_str());
                headers.insert("Egw-Created", "1700000000");
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    format!("acme/prod/s{s}:{offset}:{prev}").as_str(),
                );
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    prev.to_string().as_str(),
                );
                let ack = js
                    .publish_with_headers(subject.clone(), headers, payload.clone())
                    .await?
                    .await?;
                prev = ack.sequence;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(Run {
        name: "direct async-nats publish",
        seconds: started.elapsed().as_secs_f64(),
        bytes: per_stream * options.streams * options.payload,
        nats_cpu_s: cpu_seconds(nats_pid)? - cpu_before,
        gateway_cpu_s: None,
    })
}

/// The two gateway builds' names in the table.
const GATEWAY: &str = "through engine-gateway (HTTP PATCH)";
const BASELINE: &str = "through the baseline gateway (HTTP PATCH)";

/// Starts the gateway `(binary, name in the table, tag in the stream names)` on the same server
/// and PATCHes the same payloads through it over HTTP/1.1 keep-alive connections; returns the
/// run, the gateway's peak RSS in KiB and its nats counters.
async fn gateway_run(
    nats_url: &str,
    options: &Options,
    (bin, name, tag): (&str, &'static str, &str),
    dir: &std::path::Path,
    nats_pid: u32,
    round: usize,
) -> anyhow::Result<(Run, u64, String)> {
    let port = free_port()?;
    let data_dir = dir.join("gateway");
    let mut gateway = ChildGuard(
        Command::new(bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--store", nats_url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {bin}"))?,
    );
    let token_file = data_dir.join("admin.token");
    wait_until(|| token_file.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        .await?;
    let token = std::fs::read_to_string(&token_file)?.trim().to_owned();
    let payload = Bytes::from(vec![b'g'; options.payload]);
    let per_stream = options.total / options.streams / options.payload;
    let gateway_pid = gateway.0.id();
    let (nats_before, gateway_before) = (cpu_seconds(nats_pid)?, cpu_seconds(gateway_pid)?);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..options.streams {
        let (payload, token, tag) = (payload.clone(), token.clone(), tag.to_owned());
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            tcp.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            for i in 0..per_stream {
                let request =
                    http::Request::patch(format!("/v1/streams/acme/prod/{tag}{round}-s{s}"))
                        .header("host", "bench")
                        .header("authorization", format!("Bearer {token}"))
                        .header("content-type", "application/offset+octet-stream")
                        .header("stream-offset", (i * payload.len()).to_string())
                        .body(Full::new(payload.clone()))?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                if status != http::StatusCode::NO_CONTENT {
                    bail!(
                        "PATCH answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (nats_cpu_s, gateway_cpu_s) = (
        cpu_seconds(nats_pid)? - nats_before,
        cpu_seconds(gateway_pid)? - gateway_before,
    );
    let peak = peak_rss_kib(gateway_pid)?;
    let metrics = nats_counters(port, &token)
        .await
        .unwrap_or_else(|err| format!("unavailable: {err:#}"));
    let _ = gateway.0.kill();
    let _ = gateway.0.wait();
    Ok((
        Run {
            name,
            seconds,
            bytes: per_stream * options.streams * options.payload,
            nats_cpu_s,
            gateway_cpu_s: Some(gateway_cpu_s),
        },
        peak,
        metrics,
    ))
}

/// The gateway's `engine_gateway_store_nats_*_total` counters, one line.
async fn nats_counters(port: u16, token: &str) -> anyhow::Result<String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let request = http::Request::get("/metrics")
        .header("host", "bench")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))?;
    let body = sender
        .send_request(request)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .filter(|l| l.starts_with("engine_gateway_store_nats_") && l.contains("_total"))
        .map(|l| l.trim_start_matches("engine_gateway_store_nats_"))
        .collect::<Vec<_>>()
        .join(", "))
}

/// Kills the child when dropped, so a failed run leaves no gateway behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `VmHWM` of a process: its peak resident set size in KiB.
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_until(ready: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out waiting for a process to start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn parse_args() -> anyhow::Result<Options> {
    let mut options = Options {
        gateway: "target/release/engine-gateway".into(),
        baseline: None,
        nats_server: "nats-server".into(),
        streams: 8,
        payload: 64 * 1024,
        total: 512 << 20,
        rounds: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!(
                "nats_bench [--gateway PATH] [--baseline-gateway PATH] [--nats-server PATH] \
                 [--streams N] [--payload BYTES] [--total-mib N] [--rounds N]"
            );
            std::process::exit(0);
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--gateway" => options.gateway = value,
            "--baseline-gateway" => options.baseline = Some(value),
            "--nats-server" => options.nats_server = value,
            "--streams" => options.streams = value.parse()?,
            "--payload" => options.payload = value.parse()?,
            "--total-mib" => options.total = value.parse::<usize>()? << 20,
            "--rounds" => options.rounds = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if options.streams == 0 || options.payload == 0 || options.payload > 256 * 1024 {
        bail!("--streams must be positive and --payload between 1 and 262144");
    }
    if options.rounds == 0 {
        bail!("--rounds must be positive");
    }
    Ok(options)
}

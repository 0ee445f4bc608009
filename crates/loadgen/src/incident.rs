//! The incident benchmark (DESIGN.md §1), side by side: the naive reference server
//! (`crates/naive-gateway`: anyhow errors logged with `{:?}`) and engine-gateway, each started
//! with `RUST_BACKTRACE=1` (and debug logging for the gateway), each answering the same
//! failing PATCHes — wrong offset (409), unknown token (401), malformed offset (400) — over a
//! few keep-alive connections. Measured per server: RSS before, after and at its peak, and the
//! latency of every request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::child::{GatewayChild, GatewaySpec, KillOnDrop, free_loopback_port};
use crate::incident_client::{Conn, WorkerOutcome, patch_request, run_worker};
use crate::procmem::{RssSampler, read_status, reset_peak};
use crate::stats::{Histogram, ms};

/// A validated incident run.
#[derive(Debug, Clone)]
pub struct IncidentConfig {
    pub gateway_bin: PathBuf,
    pub naive_bin: PathBuf,
    /// Failing requests per server and round.
    pub requests: usize,
    pub connections: usize,
    /// Rounds; each starts both servers afresh, naive first.
    pub rounds: usize,
    /// Parent of the gateway's fresh data directories.
    pub data_dir: PathBuf,
    pub startup_timeout: Duration,
    pub rss_interval: Duration,
}

/// One server in one round.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub server: &'static str,
    pub round: usize,
    pub elapsed: Duration,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub reconnects: u64,
    /// `VmRSS` after setup (one successful PATCH), before the first failing request.
    pub rss_before: u64,
    /// `VmRSS` after the first `warmup` failing requests: what grows after it grows per
    /// request, what grew before it is a one-time cost.
    pub rss_warm: u64,
    pub warmup: usize,
    /// `VmRSS` 300 ms after the last failing request.
    pub rss_after: u64,
    /// Bytes allocated in the gateway (`/debug/memory`: jemalloc's `stats.allocated`, else the
    /// counting allocator's figure) before the first and after the last failing request; `None` for the naive
    /// server.
    pub allocated: Option<(u64, u64)>,
    /// OS threads of the server before the first and after the last failing request: new
    /// threads (a blocking pool growing) cost stacks and allocator caches, not heap.
    pub threads: (u64, u64),
    /// `VmHWM` over the run (reset before it).
    pub rss_peak: u64,
    pub latency: Histogram,
}

impl Measurement {
    pub fn growth(&self) -> i64 {
        self.rss_after as i64 - self.rss_before as i64
    }

    pub fn growth_after_warmup(&self) -> i64 {
        self.rss_after as i64 - self.rss_warm as i64
    }

    pub fn peak_growth(&self) -> i64 {
        self.rss_peak as i64 - self.rss_before as i64
    }

    pub fn requests_per_sec(&self) -> f64 {
        self.latency.count() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs every round, naive then gateway, and returns the measurements in order.
pub async fn run(config: &IncidentConfig) -> anyhow::Result<Vec<Measurement>> {
    ensure!(
        config.naive_bin.is_file(),
        "{} not found: build it with `cargo build --profile bench-naive -p naive-gateway`",
        config.naive_bin.display()
    );
    let mut out = Vec::new();
    for round in 1..=config.rounds {
        let naive = NaiveChild::start(config)?;
        let m = measure(
            config,
            "naive",
            round,
            naive.pid(),
            naive.addr,
            &naive.token,
        )
        .await;
        drop(naive);
        out.push(m?);

        let dir = tempdir_in(&config.data_dir, round)?;
        let spec = GatewaySpec {
            bin: config.gateway_bin.clone(),
            data_dir: dir.clone(),
            extra_args: Vec::new(),
            env: vec![
                ("RUST_BACKTRACE".into(), "1".into()),
                ("ENGINE_GATEWAY_LOG".into(), "debug".into()),
            ],
            startup_timeout: config.startup_timeout,
        };
        let gateway = GatewayChild::start(&spec).await?;
        let token = std::fs::read_to_string(dir.join("admin.token"))
            .context("reading the gateway's admin.token")?;
        let addr = gateway.target().addr();
        let m = measure(
            config,
            "engine-gateway",
            round,
            gateway.pid(),
            addr,
            token.trim(),
        )
        .await;
        gateway.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
        out.push(m?);
    }
    Ok(out)
}

async fn measure(
    config: &IncidentConfig,
    server: &'static str,
    round: usize,
    pid: u32,
    addr: SocketAddr,
    token: &str,
) -> anyhow::Result<Measurement> {
    let path = "/v1/streams/bench/incident/s1";
    let bearer = format!("Bearer {token}");
    let timeout = Duration::from_secs(30);
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        // Setup: the stream exists, so a wrong offset is a conflict, not a creation.
        let mut create = patch_request(addr, path, &[("authorization", &bearer), ("stream-offset", "0")]);
        let len = create.len();
        create.truncate(len - "content-length: 0\r\n\r\n".len());
        create.extend_from_slice(b"content-length: 5\r\n\r\nhello");
        let status = Conn::connect(addr, timeout)?.send(&create)?.status;
        ensure!(status == 204, "{server}: creating the stream answered {status}");
        let requests = [
            patch_request(addr, path, &[("authorization", &bearer), ("stream-offset", "999999")]),
            patch_request(
                addr,
                path,
                &[
                    ("authorization", "Bearer egw_0000000000000000_unknownunknownunknownunknownunknown"),
                    ("stream-offset", "5"),
                ],
            ),
            patch_request(addr, path, &[("authorization", &bearer), ("stream-offset", "12x")]),
        ];
        std::thread::sleep(Duration::from_millis(500));
        let allocated_before = allocated(addr, &bearer, server);
        let rss_before = read_status(pid)?.rss_bytes;
        let threads_before = threads(pid);
        reset_peak(pid)?;
        let sampler = RssSampler::start(pid, config.rss_interval)?;
        let started = Instant::now();
        // The first 1 % (at most 1 000) of the requests, then a pause for reading RSS, then
        // the rest, on the same connections: tells a one-time cost from growth per request.
        let warmup = (config.requests / 100).clamp(config.connections, 1000);
        let share = |total: usize, c: usize| {
            let per = total.div_ceil(config.connections);
            per.min(total.saturating_sub(c * per))
        };
        let pause = Barrier::new(config.connections + 1);
        let mut rss_warm = 0;
        let outcomes: Vec<anyhow::Result<WorkerOutcome>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..config.connections)
                .map(|c| {
                    let counts = [share(warmup, c), share(config.requests - warmup, c)];
                    let (requests, pause) = (&requests, &pause);
                    scope.spawn(move || run_worker(addr, requests, c, counts, pause, timeout))
                })
                .collect();
            pause.wait();
            rss_warm = read_status(pid).map_or(0, |s| s.rss_bytes);
            pause.wait();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked"))))
                .collect()
        });
        let elapsed = started.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        let sampled = sampler.finish();
        let after = read_status(pid)?;
        let allocated_after = allocated(addr, &bearer, server);
        let threads_after = threads(pid);
        let mut m = Measurement {
            server,
            round,
            elapsed,
            statuses: BTreeMap::new(),
            transport_errors: 0,
            reconnects: 0,
            rss_before,
            rss_warm,
            warmup,
            rss_after: after.rss_bytes,
            allocated: allocated_before.zip(allocated_after),
            threads: (threads_before, threads_after),
            rss_peak: after.hwm_bytes.max(sampled.max_rss_bytes),
            latency: Histogram::new(),
        };
        for outcome in outcomes {
            let o = outcome.with_context(|| format!("{server}: a connection failed"))?;
            m.latency.merge(&o.latency);
            for (status, n) in o.statuses {
                *m.statuses.entry(status).or_default() += n;
            }
            m.transport_errors += o.transport_errors;
            m.reconnects += o.reconnects;
        }
        eprintln!(
            "round {round} {server}: {} requests in {:.1} s, RSS {:.1} -> {:.1} MiB (peak {:.1}), p99 {:.3} ms, max {:.1} ms",
            m.latency.count(),
            elapsed.as_secs_f64(),
            mib(m.rss_before as i64),
            mib(m.rss_after as i64),
            mib(m.rss_peak as i64),
            ms(m.latency.quantile(0.99)),
            ms(m.latency.max()),
        );
        Ok(m)
    })
    .await?
}

/// The gateway's allocated bytes from `GET /debug/memory` (admin); `None` for the naive
/// server or when the endpoint does not answer.
fn allocated(addr: SocketAddr, bearer: &str, server: &str) -> Option<u64> {
    if server == "naive" {
        return None;
    }
    let request =
        format!("GET /debug/memory HTTP/1.1\r\nhost: {addr}\r\nauthorization: {bearer}\r\n\r\n");
    let mut conn = Conn::connect(addr, Duration::from_secs(5)).ok()?;
    let response = conn.send(request.as_bytes()).ok()?;
    if response.status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(conn.body()).ok()?;
    // jemalloc's own statistics: exact at a scrape, unlike the counting allocator's figure,
    // which leaves each thread's last few KiB unfolded.
    json.pointer("/jemalloc/allocated_bytes")
        .and_then(serde_json::Value::as_u64)
        .or_else(|| json.pointer("/allocator/allocated_bytes")?.as_u64())
}

/// `Threads:` of `/proc/PID/status`, 0 when unreadable.
fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Threads:"))?;
            line["Threads:".len()..].trim().parse().ok()
        })
        .unwrap_or(0)
}

/// The naive server as a child: `RUST_BACKTRACE=1`, stderr (its error log) to /dev/null.
struct NaiveChild {
    child: KillOnDrop,
    addr: SocketAddr,
    token: String,
}

impl NaiveChild {
    fn start(config: &IncidentConfig) -> anyhow::Result<Self> {
        let addr = free_loopback_port()?;
        let token = String::from("naive-secret-token");
        let child = Command::new(&config.naive_bin)
            .args(["--listen", &addr.to_string(), "--token", &token])
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", config.naive_bin.display()))?;
        let mut naive = Self {
            child: KillOnDrop(child),
            addr,
            token,
        };
        let deadline = Instant::now() + config.startup_timeout;
        let healthz = format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\n\r\n").into_bytes();
        loop {
            if let Some(status) = naive.child.try_wait()? {
                bail!("the naive server exited ({status}) before becoming ready");
            }
            let ready = Conn::connect(addr, Duration::from_secs(1))
                .map_err(anyhow::Error::from)
                .and_then(|mut c| c.send(&healthz));
            if ready.is_ok_and(|r| r.status == 200) {
                return Ok(naive);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the naive server was not ready within {:?}",
                    config.startup_timeout
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn tempdir_in(parent: &Path, round: usize) -> anyhow::Result<PathBuf> {
    let dir = parent.join(format!("incident-{}-{round}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

pub fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The run as markdown: every measurement, then medians per server.
pub fn to_markdown(
    config: &IncidentConfig,
    runs: &[Measurement],
    machine: &crate::machine::MachineInfo,
) -> String {
    use std::fmt::Write as _;
    let mut md = String::from("# The incident, side by side\n\n");
    let size = |path: &Path| {
        std::fs::metadata(path).map_or_else(
            |_| String::from("?"),
            |m| format!("{:.1} MiB", mib(m.len() as i64)),
        )
    };
    let _ = writeln!(
        md,
        "Binaries: naive `{}` ({}, release + full DWARF), gateway `{}` ({}, release, line tables).\n",
        config.naive_bin.display(),
        size(&config.naive_bin),
        config.gateway_bin.display(),
        size(&config.gateway_bin),
    );
    let _ = writeln!(
        md,
        "Measured by `bench/incident.sh` on {}, {} cores ({}), kernel {}, commit {}; shared with other builds.\n",
        machine.date,
        machine.nproc,
        machine.cpu_model.as_deref().unwrap_or("unknown CPU"),
        machine.kernel.as_deref().unwrap_or("?"),
        machine.git_commit.as_deref().unwrap_or("?"),
    );
    let _ = writeln!(
        md,
        "{} failing PATCHes per server and round over {} keep-alive connections (409 wrong offset, 401 unknown token, 400 malformed offset, in turn), {} round(s), naive first. Both with `RUST_BACKTRACE=1`; the gateway with `ENGINE_GATEWAY_LOG=debug`.\n",
        config.requests, config.connections, config.rounds
    );
    md.push_str("| server | RSS growth (median) | of which after the first 1 % | peak RSS growth | heap (allocated) growth | p50 ms | p99 ms | max ms | req/s |\n|---|---|---|---|---|---|---|---|---|\n");
    for server in ["naive", "engine-gateway"] {
        let of: Vec<&Measurement> = runs.iter().filter(|m| m.server == server).collect();
        if of.is_empty() {
            continue;
        }
        let med = |f: &dyn Fn(&Measurement) -> f64| median(of.iter().map(|m| f(m)).collect());
        let heap = if of.iter().all(|m| m.allocated.is_some()) {
            format!(
                "{:+.3} MiB",
                med(&|m| m.allocated.map_or(0.0, |(a, b)| mib(b as i64 - a as i64)))
            )
        } else {
            String::from("-")
        };
        let _ = writeln!(
            md,
            "| {server} | {:+.2} MiB | {:+.2} MiB | {:+.2} MiB | {heap} | {:.3} | {:.3} | {:.1} | {:.0} |",
            med(&|m| mib(m.growth())),
            med(&|m| mib(m.growth_after_warmup())),
            med(&|m| mib(m.peak_growth())),
            med(&|m| ms(m.latency.quantile(0.5))),
            med(&|m| ms(m.latency.quantile(0.99))),
            med(&|m| ms(m.latency.max())),
            med(&|m| m.requests_per_sec()),
        );
    }
    md.push_str("\nMedians over the rounds. RSS growth: `VmRSS` 300 ms after the last failing request minus `VmRSS` before the first; \"after the first 1 %\": minus `VmRSS` after the first 1 % (at most 1 000) of the requests, i.e. what grows per request rather than once; peak: `VmHWM` (reset before the run) minus `VmRSS` before; heap: jemalloc's allocated bytes from the gateway's `/debug/memory`, gateway only; threads: OS threads of the process before and after.\n");
    md.push_str("\nEvery run:\n\n| round | server | responses | transport errors | RSS before → after first 1 % → after MiB | peak MiB | heap before → after MiB | threads | p50 ms | p99 ms | p99.9 ms | max ms | req/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for m in runs {
        let statuses: Vec<String> = m.statuses.iter().map(|(s, n)| format!("{s}×{n}")).collect();
        let heap = m.allocated.map_or_else(
            || String::from("-"),
            |(a, b)| format!("{:.2} → {:.2}", mib(a as i64), mib(b as i64)),
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} → {:.1} → {:.1} | {:.1} | {heap} | {} → {} | {:.3} | {:.3} | {:.3} | {:.1} | {:.0} |",
            m.round,
            m.server,
            statuses.join(" "),
            m.transport_errors,
            mib(m.rss_before as i64),
            mib(m.rss_warm as i64),
            mib(m.rss_after as i64),
            mib(m.rss_peak as i64),
            m.threads.0,
            m.threads.1,
            ms(m.latency.quantile(0.5)),
            ms(m.latency.quantile(0.99)),
            ms(m.latency.quantile(0.999)),
            ms(m.latency.max()),
            m.requests_per_sec(),
        );
    }
    md
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

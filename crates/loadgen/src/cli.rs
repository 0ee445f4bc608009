//! Command line: raw clap flags, then one validated `IngestConfig` (defaults depend on `--smoke`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail, ensure};
use clap::{Args, Parser, Subcommand};

use crate::client::Protocol;
use crate::machine::utc_timestamp;

#[derive(Debug, Parser)]
#[command(
    name = "gateway-bench",
    version,
    about = "benchmarks for engine-gateway, over HTTP on loopback"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the gateway (or drive a running server), append chunks from N concurrent streams,
    /// compare with the disk's durable sequential write rate measured in the same run.
    Ingest(Box<IngestArgs>),
    /// The backtrace incident side by side: a naive anyhow server and the gateway answering the
    /// same failing requests with RUST_BACKTRACE=1; RSS growth and latency of both.
    Incident(IncidentArgs),
    /// A minimal HTTP/1.1 server that answers protocol v1 PATCHes with 204 and keeps nothing
    /// (or fdatasyncs each body into a file per stream): the floor `ingest` reads the gateway
    /// against. Prints `sink listening on ADDR` and serves until killed.
    Sink(SinkArgs),
}

#[derive(Debug, Args)]
pub struct SinkArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Append each PATCH body to a file per stream here and fdatasync it before answering.
    #[arg(long)]
    pub fsync_dir: Option<PathBuf>,
}

/// A reference server `ingest` also loads, after the gateway, with the same client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sink {
    /// `gateway-bench sink`: loopback HTTP and nothing else, the network floor.
    NoDisk,
    /// `gateway-bench sink --fsync-dir`: a file per stream, one fdatasync per PATCH.
    FsyncEach,
}

impl Sink {
    pub fn label(self) -> &'static str {
        match self {
            Sink::NoDisk => "http sink, no disk",
            Sink::FsyncEach => "http sink, fdatasync per PATCH",
        }
    }
}

#[derive(Debug, Args)]
pub struct IncidentArgs {
    /// The engine-gateway binary (`serve --listen … --data-dir …`).
    #[arg(long, default_value = "target/release/engine-gateway")]
    pub gateway_bin: PathBuf,
    /// The naive reference server (`cargo build --profile bench-naive -p naive-gateway`).
    #[arg(long, default_value = "target/bench-naive/naive-gateway")]
    pub naive_bin: PathBuf,
    /// Failing requests per server and round.
    #[arg(long, default_value_t = 100_000)]
    pub requests: usize,
    /// Keep-alive connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Rounds (each starts both servers afresh, naive first).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Parent directory for the gateway's data [default: ./target if it exists, else temp].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Markdown result file [default: bench/results/incident.md].
    #[arg(long, default_value = "bench/results/incident.md")]
    pub out: PathBuf,
    /// How often the servers' VmRSS is sampled.
    #[arg(long, value_parser = parse_duration, default_value = "10ms")]
    pub rss_interval: Duration,
}

impl IncidentArgs {
    pub fn into_config(self) -> anyhow::Result<(crate::incident::IncidentConfig, PathBuf)> {
        ensure!(self.requests >= 1, "--requests must be at least 1");
        ensure!(
            (1..=256).contains(&self.connections),
            "--connections must be 1..=256"
        );
        ensure!((1..=20).contains(&self.rounds), "--rounds must be 1..=20");
        ensure!(
            !self.rss_interval.is_zero(),
            "--rss-interval must be positive"
        );
        let data_dir = match self.data_dir {
            Some(dir) => dir,
            None if std::path::Path::new("target").is_dir() => PathBuf::from("target"),
            None => std::env::temp_dir(),
        };
        let config = crate::incident::IncidentConfig {
            gateway_bin: self.gateway_bin,
            naive_bin: self.naive_bin,
            requests: self.requests,
            connections: self.connections,
            rounds: self.rounds,
            data_dir,
            startup_timeout: Duration::from_secs(30),
            rss_interval: self.rss_interval,
        };
        Ok((config, self.out))
    }
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The engine-gateway binary to start (`serve --listen … --data-dir …`).
    #[arg(long, default_value = "target/release/engine-gateway")]
    pub gateway_bin: PathBuf,
    /// Drive this running server instead of starting the gateway: `http://127.0.0.1:PORT/PREFIX`
    /// on loopback; stream i of the n-stream scenario is `PREFIX/n<n>-<run>/s<i>`
    /// [PREFIX default: /v1/streams/bench].
    #[arg(long, requires = "token")]
    pub target_url: Option<String>,
    /// Bearer token for --target-url.
    #[arg(long, requires = "target_url")]
    pub token: Option<String>,
    /// Process id of the --target-url server, for its CPU, page faults and RSS (its own user's
    /// processes only).
    #[arg(long, requires = "target_url")]
    pub target_pid: Option<u32>,
    /// Offset headers of --target-url: protocol v1 (`Stream-Offset`) or tus (`Upload-Offset`).
    #[arg(long, value_enum, default_value = "v1")]
    pub protocol: Protocol,
    /// Concurrent streams per scenario, comma separated [default: 1,64,256,1024; smoke: 1,4].
    #[arg(long, value_delimiter = ',')]
    pub streams: Option<Vec<usize>>,
    /// Body size of every PATCH, e.g. 64KiB, 1MiB, 4096 [default: 64KiB].
    #[arg(long, value_parser = parse_size)]
    pub chunk: Option<u64>,
    /// Length of each scenario and of the raw baseline, e.g. 10s, 500ms [default: 10s; smoke: 1s].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Length of each disk baseline (limit and per-chunk sync) [default: --duration].
    #[arg(long, value_parser = parse_duration)]
    pub baseline_duration: Option<Duration>,
    /// Directory on the disk to measure; a fresh subdirectory is created and removed in it
    /// [default: ./target if it exists, else the system temp dir].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Result file (JSON); the markdown goes beside it as .md
    /// [default: bench/results/ingest-<date>.json].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Pause after the gateway is ready before idle RSS is read [default: 1s; smoke: 200ms].
    #[arg(long, value_parser = parse_duration)]
    pub settle: Option<Duration>,
    /// Bound on waiting for the gateway's admin.token and /readyz.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub startup_timeout: Duration,
    /// Bound on one request; a stuck request counts as a transport error.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub request_timeout: Duration,
    /// Bytes per fdatasync of the disk-limit baseline (64 KiB writes): the durable sequential
    /// write rate every scenario is a share of.
    #[arg(long, value_parser = parse_size, default_value = "8MiB")]
    pub limit_batch: u64,
    /// How often the gateway's VmRSS is sampled during a scenario.
    #[arg(long, value_parser = parse_duration, default_value = "20ms")]
    pub rss_interval: Duration,
    /// Extra argument for `engine-gateway serve`, repeatable (e.g. --gateway-arg=--flag).
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,
    /// Environment variable for the gateway, repeatable (e.g. --gateway-env MALLOC_CONF=prof:false).
    #[arg(long = "gateway-env", value_parser = parse_env)]
    pub gateway_env: Vec<(String, String)>,
    /// Reference servers loaded after the gateway with the same scenarios, comma separated:
    /// no-disk, fsync-each [default: no-disk; smoke and --target-url: none]. `--sinks none`
    /// runs none.
    #[arg(long, value_parser = parse_sinks)]
    pub sinks: Option<Sinks>,
    /// Keep the run's data directory instead of removing it.
    #[arg(long)]
    pub keep_data: bool,
    /// Quick check that the benchmark works: short scenarios, 1 and 4 streams; fails on any
    /// error.
    #[arg(long)]
    pub smoke: bool,
}

/// The value of `--sinks`: the reference servers named, none for `none`.
#[derive(Debug, Clone)]
pub struct Sinks(pub Vec<Sink>);

fn parse_sinks(value: &str) -> Result<Sinks, String> {
    if value == "none" {
        return Ok(Sinks(Vec::new()));
    }
    value
        .split(',')
        .map(|name| clap::ValueEnum::from_str(name.trim(), false))
        .collect::<Result<_, _>>()
        .map(Sinks)
        .map_err(|_| format!("{value}: expected none, or no-disk and/or fsync-each"))
}

/// The server a run loads.
#[derive(Debug, Clone)]
pub enum ServerChoice {
    /// Start this engine-gateway binary as a child, one process for all scenarios.
    Spawn(PathBuf),
    /// A server already running.
    External(External),
}

/// A running server given by --target-url.
#[derive(Debug, Clone)]
pub struct External {
    pub url: String,
    pub addr: SocketAddr,
    /// Path every stream's path starts with, without a trailing slash.
    pub prefix: String,
    pub token: String,
    pub pid: Option<u32>,
    pub protocol: Protocol,
}

/// A validated ingest run.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub server: ServerChoice,
    pub streams: Vec<usize>,
    pub chunk_bytes: usize,
    pub duration: Duration,
    pub baseline_duration: Duration,
    /// The parent directory; the run works in a fresh subdirectory of it.
    pub data_dir: PathBuf,
    pub out: PathBuf,
    pub settle: Duration,
    pub startup_timeout: Duration,
    pub request_timeout: Duration,
    /// Chunks of 64 KiB per fdatasync in the disk-limit baseline.
    pub limit_chunks: u32,
    pub rss_interval: Duration,
    pub gateway_args: Vec<String>,
    pub gateway_env: Vec<(String, String)>,
    /// Reference servers loaded after the gateway.
    pub sinks: Vec<Sink>,
    pub keep_data: bool,
    pub smoke: bool,
    /// `YYYYMMDD-HHMMSS` of the start, for file and stream names.
    pub run_id: String,
}

/// Most streams in one scenario: each is a connection and a task, and 4096 is already far
/// past what one gateway on loopback is meant to hold.
const MAX_STREAMS: usize = 4096;
/// Largest chunk: one request body held in memory, shared by all streams.
const MAX_CHUNK: u64 = 64 * 1024 * 1024;

impl IngestArgs {
    pub fn into_config(self) -> anyhow::Result<IngestConfig> {
        let smoke = self.smoke;
        let streams = self.streams.unwrap_or_else(|| {
            if smoke {
                vec![1, 4]
            } else {
                vec![1, 64, 256, 1024]
            }
        });
        ensure!(!streams.is_empty(), "--streams needs at least one value");
        for &n in &streams {
            ensure!(
                (1..=MAX_STREAMS).contains(&n),
                "--streams {n}: must be 1..={MAX_STREAMS}"
            );
        }
        let chunk = self.chunk.unwrap_or(64 * 1024);
        ensure!(
            (1..=MAX_CHUNK).contains(&chunk),
            "--chunk {chunk}: must be 1 B..=64 MiB"
        );
        let default_duration = Duration::from_secs(if smoke { 1 } else { 10 });
        let duration = self.duration.unwrap_or(default_duration);
        ensure!(
            (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&duration),
            "--duration must be between 100ms and 1h"
        );
        ensure!(
            !self.rss_interval.is_zero(),
            "--rss-interval must be positive"
        );
        let run_id = utc_timestamp(SystemTime::now()).1;
        let data_dir = match self.data_dir {
            Some(dir) => dir,
            None if std::path::Path::new("target").is_dir() => PathBuf::from("target"),
            None => std::env::temp_dir(),
        };
        let out = self.out.unwrap_or_else(|| {
            let kind = if smoke { "ingest-smoke" } else { "ingest" };
            PathBuf::from(format!("bench/results/{kind}-{run_id}.json"))
        });
        ensure!(
            (LIMIT_WRITE..=1 << 30).contains(&self.limit_batch),
            "--limit-batch must be 64 KiB..=1 GiB"
        );
        let limit_chunks = u32::try_from(self.limit_batch / LIMIT_WRITE)?;
        let server = match (self.target_url, self.token) {
            (Some(url), Some(token)) => {
                let (addr, prefix) = parse_target_url(&url)?;
                ServerChoice::External(External {
                    url,
                    addr,
                    prefix,
                    token,
                    pid: self.target_pid,
                    protocol: self.protocol,
                })
            }
            _ => ServerChoice::Spawn(self.gateway_bin),
        };
        let sinks = match self.sinks {
            Some(Sinks(sinks)) => sinks,
            None if smoke || matches!(server, ServerChoice::External(_)) => Vec::new(),
            None => vec![Sink::NoDisk],
        };
        Ok(IngestConfig {
            server,
            streams,
            chunk_bytes: usize::try_from(chunk).context("--chunk too large for this machine")?,
            duration,
            baseline_duration: self.baseline_duration.unwrap_or(duration),
            data_dir,
            out,
            settle: self
                .settle
                .unwrap_or(Duration::from_millis(if smoke { 200 } else { 1000 })),
            startup_timeout: self.startup_timeout,
            request_timeout: self.request_timeout,
            limit_chunks,
            rss_interval: self.rss_interval,
            gateway_args: self.gateway_args,
            gateway_env: self.gateway_env,
            sinks,
            keep_data: self.keep_data,
            smoke,
            run_id,
        })
    }
}

/// Write size of the disk-limit baseline.
pub const LIMIT_WRITE: u64 = 64 * 1024;

/// `http://HOST:PORT[/PREFIX]` on loopback: the address and the path prefix of streams.
pub fn parse_target_url(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--target-url {url:?}: only http:// URLs are supported"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("--target-url {url:?}: {authority:?} is not HOST:PORT"))?
        .find(|a| a.ip().is_loopback())
        .with_context(|| format!("--target-url {url:?}: not a loopback address"))?;
    let path = path.trim_end_matches('/');
    let prefix = if path.is_empty() {
        String::from("/v1/streams/bench")
    } else {
        path.to_owned()
    };
    Ok((addr, prefix))
}

/// Parses `KEY=VALUE` for the child's environment.
pub fn parse_env(text: &str) -> anyhow::Result<(String, String)> {
    let (key, value) = text
        .split_once('=')
        .with_context(|| format!("{text:?} is not KEY=VALUE"))?;
    ensure!(
        !key.is_empty() && !key.contains('\0') && !value.contains('\0'),
        "{text:?} is not KEY=VALUE"
    );
    Ok((key.to_owned(), value.to_owned()))
}

/// Parses a byte size: `65536`, `64K`, `64KiB`, `64kb`, `1M`, `1MiB` (all binary units).
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .with_context(|| format!("{text:?} is not a size"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => bail!("unknown size unit {other:?} (use B, KiB, MiB or GiB)"),
    };
    number
        .checked_mul(factor)
        .with_context(|| format!("{text:?} is too large"))
}

/// Parses a duration: `10s`, `1.5s`, `500ms`, `2m`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration"))?;
    let secs = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        other => bail!("unknown duration unit {other:?} (use ms, s or m)"),
    };
    Duration::try_from_secs_f64(secs).with_context(|| format!("{text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (text, want) in [
            ("65536", 65536),
            ("64KiB", 65536),
            ("64k", 65536),
            ("1MiB", 1 << 20),
            ("2 MB", 2 << 20),
        ] {
            assert_eq!(parse_size(text).ok(), Some(want), "{text}");
        }
        for bad in ["", "KiB", "12 parsecs", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        for (text, ms) in [
            ("10s", 10_000),
            ("1.5s", 1_500),
            ("500ms", 500),
            ("2m", 120_000),
            ("3", 3_000),
        ] {
            assert_eq!(
                parse_duration(text).ok(),
                Some(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for bad in ["", "s", "10h", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gateway_env_and_incident_flags_parse() {
        assert_eq!(
            parse_env("MALLOC_CONF=prof:false,lg_prof_sample:19").unwrap_or_else(|e| panic!("{e}")),
            ("MALLOC_CONF".into(), "prof:false,lg_prof_sample:19".into())
        );
        assert!(parse_env("NOVALUE").is_err());
        assert!(parse_env("=x").is_err());
        let cli = Cli::try_parse_from([
            "gateway-bench",
            "ingest",
            "--gateway-env",
            "A=1",
            "--gateway-env=B=2",
        ])
        .unwrap_or_else(|err| panic!("{err}"));
        let Command::Ingest(args) = cli.command else {
            panic!("not ingest")
        };
        assert_eq!(
            args.gateway_env,
            vec![("A".into(), "1".into()), ("B".into(), "2".into())]
        );
        let cli = Cli::try_parse_from(["gateway-bench", "incident", "--connections", "0"])
            .unwrap_or_else(|err| panic!("{err}"));
        let Command::Incident(args) = cli.command else {
            panic!("not incident")
        };
        assert!(args.into_config().is_err());
    }

    /// `gateway-bench ingest ARGS` as a validated config.
    fn parse(args: &[&str]) -> anyhow::Result<IngestConfig> {
        let cli = Cli::try_parse_from([&["gateway-bench", "ingest"], args].concat())
            .unwrap_or_else(|err| panic!("{err}"));
        let Command::Ingest(args) = cli.command else {
            panic!("not ingest")
        };
        args.into_config()
    }

    #[test]
    fn sinks_are_named_or_none() {
        let sinks = |args: &[&str]| parse(args).unwrap_or_else(|err| panic!("{err:#}")).sinks;
        assert_eq!(sinks(&[]), vec![Sink::NoDisk]);
        assert_eq!(sinks(&["--smoke"]), vec![]);
        assert_eq!(sinks(&["--sinks", "none"]), vec![]);
        assert_eq!(
            sinks(&["--sinks", "no-disk,fsync-each"]),
            vec![Sink::NoDisk, Sink::FsyncEach]
        );
        assert!(Cli::try_parse_from(["gateway-bench", "ingest", "--sinks", "disk"]).is_err());
    }

    #[test]
    fn smoke_changes_defaults_but_not_explicit_flags() {
        let normal = parse(&[]).unwrap_or_else(|err| panic!("{err:#}"));
        assert_eq!(normal.streams, vec![1, 64, 256, 1024]);
        assert_eq!(normal.limit_chunks, 128);
        assert!(matches!(normal.server, ServerChoice::Spawn(_)));
        let external = parse(&["--target-url", "http://127.0.0.1:9/up", "--token", "t"])
            .unwrap_or_else(|err| panic!("{err:#}"));
        let ServerChoice::External(external) = external.server else {
            panic!("not external")
        };
        assert_eq!((external.addr.port(), external.prefix.as_str()), (9, "/up"));
        assert!(
            Cli::try_parse_from([
                "gateway-bench",
                "ingest",
                "--target-url",
                "http://127.0.0.1:9"
            ])
            .is_err(),
            "a URL without a token"
        );
        assert!(parse(&["--target-url", "https://127.0.0.1:9", "--token", "t"]).is_err());
        assert!(parse(&["--target-url", "http://10.1.2.3:9", "--token", "t"]).is_err());
        assert_eq!(normal.duration, Duration::from_secs(10));
        assert_eq!(normal.chunk_bytes, 65536);
        assert!(
            normal
                .out
                .to_string_lossy()
                .starts_with("bench/results/ingest-")
        );
        let smoke = parse(&["--smoke"]).unwrap_or_else(|err| panic!("{err:#}"));
        assert_eq!(
            (smoke.streams, smoke.duration),
            (vec![1, 4], Duration::from_secs(1))
        );
        let explicit = parse(&["--smoke", "--streams", "2,3", "--duration", "300ms"])
            .unwrap_or_else(|err| panic!("{err:#}"));
        assert_eq!(
            (explicit.streams, explicit.duration),
            (vec![2, 3], Duration::from_millis(300))
        );
        assert!(parse(&["--streams", "0"]).is_err());
        assert!(parse(&["--duration", "10ms"]).is_err());
    }
}

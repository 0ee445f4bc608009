//! What each subcommand does, from raw flags to an exit code.

use std::process::ExitCode;

use std::sync::Arc;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{
    FileTokenStore, NewToken, Role, TokenRecord, TokenStore, is_token_id, parse_ttl, split_token,
};
use crate::cli::{
    CatArgs, ClientArgs, PushArgs, ServeArgs, StoreCommand, TokenCommand, TokenStoreArgs,
};
use crate::client::{self, BaseUrl, CatOptions, ClientError, Input, PushOptions};
use crate::config::units::ByteSize;
use crate::config::{Config, Overrides, StoreConfig, load_store};
use crate::gateway::{Shutdown, Stopped, StoreFailed};
use crate::stream_id::StreamId;

/// Exit codes of `serve` (README, "Exit codes").
pub mod exit {
    /// Stopped cleanly: every request finished, everything acknowledged is durable.
    pub const CLEAN: u8 = 0;
    /// Any other failure (for example the listening address is taken).
    pub const FAILURE: u8 = 1;
    /// The configuration is invalid (flags, environment, file); also clap's usage errors.
    pub const CONFIG: u8 = 2;
    /// The store failed: it could not be opened (damage, a lock, NATS unreachable) or closed.
    pub const STORE: u8 = 3;
    /// Stopped, but the drain deadline cut requests still running (acknowledged bytes are
    /// durable; the clients resume).
    pub const DRAIN_CUT: u8 = 4;
    /// A second SIGTERM/SIGINT: exited at once, without draining.
    pub const SECOND_SIGNAL: u8 = 130;
}

/// `engine-gateway serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = match Config::load(Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        config: args.config,
        max_connections: args.max_connections,
        inflight_bytes: args
            .inflight_bytes
            .map(|size| usize::try_from(size.bytes()).unwrap_or(usize::MAX)),
        memory_limit: args.memory_limit.map(ByteSize::bytes),
        shutdown_delay: args.shutdown_delay,
        access_log: args.access_log,
        settings: {
            let mut settings = crate::config::overlay::from_env(std::env::vars());
            settings.extend(args.set);
            settings
        },
        store: args.store.overrides(),
    }) {
        Ok(config) => config,
        Err(err) => {
            crate::logging::fatal(&format_args!("invalid configuration: {err:#}"));
            return Ok(ExitCode::from(exit::CONFIG));
        }
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let (draining_tx, draining) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let delay = config.shutdown_delay;
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        let _ = draining_tx.send(true);
        if signal == Signal::Term && !delay.is_zero() {
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "shutdown requested: /readyz answers 503, serving on until the delay has passed"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = wait_for_signal() => second_signal(),
            }
        }
        tracing::info!("no new connections, finishing requests in flight");
        let _ = stop_tx.send(true);
        wait_for_signal().await;
        second_signal();
    });
    match crate::gateway::run(config, listener, Shutdown { draining, stop }).await {
        Ok(Stopped::Clean) => Ok(ExitCode::from(exit::CLEAN)),
        Ok(Stopped::DrainCut(_)) => Ok(ExitCode::from(exit::DRAIN_CUT)),
        Err(err) if err.downcast_ref::<StoreFailed>().is_some() => {
            crate::logging::fatal(&format_args!("{err:#}"));
            Ok(ExitCode::from(exit::STORE))
        }
        Err(err) => Err(err),
    }
}

fn second_signal() -> ! {
    tracing::warn!("second signal: exiting now");
    std::process::exit(i32::from(exit::SECOND_SIGNAL));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    Term,
    Interrupt,
}

/// SIGTERM (a supervisor: Kubernetes, systemd) or SIGINT (Ctrl-C), whichever comes first.
async fn wait_for_signal() -> Signal {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => Signal::Term,
                _ = tokio::signal::ctrl_c() => Signal::Interrupt,
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch SIGTERM, only SIGINT stops the gateway");
            let _ = tokio::signal::ctrl_c().await;
            Signal::Interrupt
        }
    }
}

/// `engine-gateway token create|list|revoke`: works on the data directory or the NATS bucket
/// directly, also while gateways run (they see changes on the next request).
pub async fn token(command: TokenCommand) -> anyhow::Result<ExitCode> {
    match command {
        TokenCommand::Create(args) => {
            let role: Role = args.role.parse().map_err(anyhow::Error::msg)?;
            let ttl = args
                .ttl
                .as_deref()
                .map(parse_ttl)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let store = open_tokens(args.target).await?;
            let new = NewToken {
                org: args.org,
                cluster: args.cluster,
                role,
                ttl,
            };
            let (record, secret) = store.create(new).await.context("creating the token")?;
            eprintln!("created token {} ({})", record.id, describe(&record));
            println!("{}", secret.expose());
        }
        TokenCommand::List(args) => {
            let store = open_tokens(args).await?;
            let records = store.list().await.context("listing tokens")?;
            println!(
                "{:<16}  {:<8}  {:<24}  {:<24}  {:<10}  {:<10}  STATE",
                "ID", "ROLE", "ORG", "CLUSTER", "CREATED", "EXPIRES"
            );
            let now = crate::store::unix_now();
            for r in records {
                let state = match (r.revoked, r.is_expired_at(now)) {
                    (Some(_), _) => "revoked",
                    (None, true) => "expired",
                    (None, false) => "active",
                };
                println!(
                    "{:<16}  {:<8}  {:<24}  {:<24}  {:<10}  {:<10}  {state}",
                    r.id,
                    r.role.to_string(),
                    r.org.as_deref().unwrap_or("*"),
                    r.cluster.as_deref().unwrap_or("*"),
                    r.created,
                    r.expires
                        .map_or_else(|| "never".to_string(), |e| e.to_string()),
                );
            }
        }
        TokenCommand::Revoke(args) => {
            let id = revoke_id(&args.id)?;
            let store = open_tokens(args.target).await?;
            let record = store
                .revoke(&id)
                .await
                .with_context(|| format!("revoking token {id}"))?;
            eprintln!("revoked token {} ({})", record.id, describe(&record));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The id to revoke: a token id, or the id part of a whole token pasted by mistake. Nothing
/// of the argument is echoed in an error, since it may hold a secret.
fn revoke_id(arg: &str) -> anyhow::Result<String> {
    if is_token_id(arg) {
        return Ok(arg.to_owned());
    }
    if let Some((id, _secret)) = split_token(arg) {
        return Ok(id.to_owned());
    }
    anyhow::bail!(
        "the argument is not a token id (16 lowercase hex characters, as `token list` shows \
         them); it is not repeated here in case it holds a secret"
    )
}

/// The token store the arguments name: files in the data directory, or the NATS bucket (one
/// connection attempt, no waiting: an operator at a terminal wants the error at once).
async fn open_tokens(args: TokenStoreArgs) -> anyhow::Result<Arc<dyn TokenStore>> {
    match load_store(args.config.as_deref(), args.store.overrides())? {
        StoreConfig::Embedded => {
            let dir = args.dir.data_dir;
            // A typo in --data-dir must not quietly create an empty token store elsewhere.
            if !dir.join("tokens").is_dir() && !dir.join("store").is_dir() {
                anyhow::bail!(
                    "{} holds no gateway data (no tokens/ or store/ in it): give the --data-dir \
                     the gateway serves from (it creates them at its first start)",
                    dir.display()
                );
            }
            let store = FileTokenStore::open(&dir)
                .await
                .with_context(|| format!("opening tokens in {}", dir.display()))?;
            Ok(Arc::new(store))
        }
        StoreConfig::Nats { nats, .. } => crate::gateway::open_nats_tokens(*nats).await,
    }
}

fn describe(r: &TokenRecord) -> String {
    let mut text = r.role.to_string();
    if let Some(org) = &r.org {
        text.push_str(&format!(", org {org}"));
    }
    if let Some(cluster) = &r.cluster {
        text.push_str(&format!(", cluster {cluster}"));
    }
    if let Some(expires) = r.expires {
        text.push_str(&format!(", expires at {expires} (unix)"));
    }
    text
}

/// `engine-gateway store check|repair`: the operator's explicit step for a damaged log. The
/// gateway refuses to open a damaged store and names this command; nothing automatic ever
/// removes acknowledged bytes.
pub async fn store(command: StoreCommand) -> anyhow::Result<ExitCode> {
    use crate::store::embedded::{self, EmbeddedConfig};
    let (repair, args) = match command {
        StoreCommand::Check(args) => (false, args),
        StoreCommand::Repair(args) => (true, args),
    };
    let config = EmbeddedConfig::new(args.data_dir.join("store"));
    let shown = config.dir.display().to_string();
    if !config.dir.join("segments").is_dir() {
        anyhow::bail!("{shown} holds no embedded store (no segments directory)");
    }
    let report = tokio::task::spawn_blocking(move || {
        if repair {
            tracing::warn!(dir = %config.dir.display(), "store repair started by the operator");
            embedded::repair(&config).map(|r| {
                (
                    r.check,
                    Some((r.quarantine, r.quarantined_bytes, r.rewritten_segments)),
                )
            })
        } else {
            embedded::check(&config).map(|c| (c, None))
        }
    })
    .await
    .context("store task failed")?
    .with_context(|| format!("{} {shown}", if repair { "repairing" } else { "checking" }))?;
    let (check, repaired) = report;
    println!(
        "store {shown}: {} segments, {} records, {} bytes read",
        check.segments, check.records, check.bytes
    );
    if check.pad_bytes > 0 {
        println!(
            "of them {} bytes of pad records (they place chunks on 4 KiB blocks; not data)",
            check.pad_bytes
        );
    }
    if check.prepared_bytes > 0 {
        println!(
            "log end: followed by {} zero bytes written ahead of it (not data; the store was not closed cleanly)",
            check.prepared_bytes
        );
    }
    if check.torn_tail_bytes > 0 {
        println!(
            "torn last write: {} bytes at the end of the log, never acknowledged; the next open cuts them (to quarantine)",
            check.torn_tail_bytes
        );
    }
    if check.damage.is_empty() && check.records_to_quarantine == 0 {
        println!("no damage");
        return Ok(ExitCode::SUCCESS);
    }
    println!("damage: {}", check.damage);
    for (stream, offset) in check.damage.streams() {
        println!("  stream {stream}: bytes from offset {offset} are damaged or depend on damage");
    }
    match repaired {
        None => {
            println!(
                "{} unreadable bytes, {} intact records after a gap in their stream;\n\
                 `engine-gateway store repair --data-dir {}` moves them to quarantine and keeps \
                 every other record",
                check.damage.bytes(),
                check.records_to_quarantine,
                args_dir(&shown)
            );
            Ok(ExitCode::from(1))
        }
        Some((quarantine, bytes, segments)) => {
            println!(
                "repaired: {} segments rewritten ({}), {bytes} bytes moved to {}; every intact record kept, index rebuilt",
                segments.len(),
                segments.join(", "),
                quarantine.map_or_else(|| "-".into(), |q| q.display().to_string())
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The data directory of a store directory shown to the operator.
fn args_dir(store_dir: &str) -> &str {
    store_dir.strip_suffix("/store").unwrap_or(store_dir)
}

/// `engine-gateway push`: resumable upload of a file or stdin.
pub async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let (url, stream) = match target(&args.client) {
        Ok(target) => target,
        Err(code) => return Ok(code),
    };
    let input = if args.input.as_os_str() == "-" {
        Input::Stdin
    } else {
        Input::File(args.input)
    };
    let retry_for = match retry_for(&args.client) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let mut options = PushOptions::new(url, args.client.token, stream, input);
    options.ca_cert = args.client.ca_cert;
    options.retry.max_without_progress = retry_for;
    options.notices = true;
    options.append = args.append;
    options.seal = args.seal;
    options.request_bytes = usize::try_from(args.request_bytes.bytes()).unwrap_or(usize::MAX);
    options.progress = true;
    Ok(match client::push(options).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => client_failure(&err),
    })
}

/// `engine-gateway cat`: a stream to stdout, following it when asked.
pub async fn cat(args: CatArgs) -> anyhow::Result<ExitCode> {
    let (url, stream) = match target(&args.client) {
        Ok(target) => target,
        Err(code) => return Ok(code),
    };
    let retry_for = match retry_for(&args.client) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let mut options = CatOptions::new(url, args.client.token, stream);
    options.ca_cert = args.client.ca_cert;
    options.retry.max_without_progress = retry_for;
    options.notices = true;
    options.offset = args.offset;
    options.follow = args.follow;
    let mut stdout = tokio::io::stdout();
    let result = client::cat(options, &mut stdout).await;
    let _ = stdout.flush().await;
    Ok(match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => client_failure(&err),
    })
}

/// The URL and stream of a client command; a bad one is a usage error (printed, exit 2).
fn target(args: &ClientArgs) -> Result<(BaseUrl, StreamId), ExitCode> {
    let url: BaseUrl = args.url.parse().map_err(|err| client_failure(&err))?;
    let stream: StreamId = args.stream.parse().map_err(|err| {
        eprintln!("error: --stream {:?}: {err}", args.stream);
        ExitCode::from(2)
    })?;
    Ok((url, stream))
}

/// `--retry-for`; a bad value is a usage error (printed, exit 2).
fn retry_for(args: &ClientArgs) -> Result<std::time::Duration, ExitCode> {
    parse_ttl(&args.retry_for).map_err(|err| {
        eprintln!("error: --retry-for '{}': {err}", args.retry_for);
        ExitCode::from(2)
    })
}

fn client_failure(err: &ClientError) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(1))
}

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
use crate::cli::{CatArgs, ClientArgs, PushArgs, ServeArgs, TokenCommand, TokenStoreArgs};
use crate::client::{self, BaseUrl, CatOptions, ClientError, Input, PushOptions};
use crate::config::{Config, Overrides, StoreConfig, load_store};
use crate::stream_id::StreamId;

/// `engine-gateway serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        config: args.config,
        max_connections: args.max_connections,
        inflight_bytes: args.inflight_bytes,
        memory_limit: args.memory_limit,
        store: args.store.overrides(),
    })?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: no new connections, finishing requests in flight");
        let _ = stop.send(true);
        wait_for_signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    crate::gateway::run(config, listener, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or SIGINT, whichever comes first.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch SIGTERM, only SIGINT stops the gateway");
            let _ = tokio::signal::ctrl_c().await;
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
            let dir = args.data_dir;
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
    options.request_bytes = args.request_bytes;
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
        eprintln!("error: --retry-for {:?}: {err}", args.retry_for);
        ExitCode::from(2)
    })
}

fn client_failure(err: &ClientError) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(1))
}

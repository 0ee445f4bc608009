//! Logs go to stderr, filtered by `ENGINE_GATEWAY_LOG` (or `RUST_LOG`), else by the command's
//! default level, as text for people or as one JSON object per line for log shippers.
//!
//! The JSON shape is the one Vector, Fluent Bit and Loki read without a custom parser:
//! `{"timestamp":"2026-12-01T19:33:40.123456Z","level":"INFO","target":"engine_gateway::gateway",
//! "message":"listening","address":"0.0.0.0:8080"}` — the event's fields sit beside `message`.

use std::fmt::{self, Write as _};

use tracing::field::Field;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::{FieldFn, Writer, debug_fn};

/// How log lines are written (`--log-format`, `ENGINE_GATEWAY_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines: timestamp, level, message, `key=value` fields (values quoted when
    /// they hold spaces).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message and fields.
    Json,
}

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(default: &str, format: LogFormat) {
    let filter = std::env::var("ENGINE_GATEWAY_LOG")
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .fmt_fields(logfmt_fields().delimited(" "))
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(true)
            .init(),
    }
}

/// Text fields as logfmt: `key=value`, the value quoted (with escapes) when it holds a space, a
/// quote, an `=` or a control character, so `summary="the store is full"` stays one value for a
/// logfmt parser. The message comes first, bare.
fn logfmt_fields()
-> FieldFn<impl Fn(&mut Writer<'_>, &Field, &dyn fmt::Debug) -> fmt::Result + Clone> {
    debug_fn(
        |writer: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug| {
            if field.name() == "message" {
                return write!(writer, "{value:?}");
            }
            // `%x` fields reach here as Display wrapped in Debug, `?x` ones as Debug.
            let mut text = String::new();
            write!(text, "{value:?}")?;
            let quoted_already = text.len() >= 2 && text.starts_with('"') && text.ends_with('"');
            if !quoted_already && needs_quotes(&text) {
                write!(writer, "{}={:?}", field.name(), text)
            } else {
                write!(writer, "{}={}", field.name(), text)
            }
        },
    )
}

fn needs_quotes(value: &str) -> bool {
    value.is_empty()
        || value
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c.is_control())
}

/// The last line of a process that cannot go on: one ERROR event (one line in either format,
/// with a timestamp), the error's chain of causes in `error`.
pub fn fatal(error: &dyn fmt::Display) {
    tracing::error!(error = %error, "fatal error, exiting");
}

//! `cat`: copies a stream (from an offset) to an output; with follow, keeps reading until the
//! stream is sealed, reconnecting at the next offset when the connection drops.

use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::error::{ClientError, Failure, Transient};
use super::http::{ReqBody, Session, built, error_response, header_u64};
use super::retry::Retrier;
use super::tls::Connector;
use super::{CatOptions, CatReport};

/// Reads `opts.stream` from `opts.offset` into `out`. A reader closing `out` (BrokenPipe) is a
/// clean stop, reported by [`CatReport::output_closed`].
pub async fn cat(
    opts: CatOptions,
    mut out: impl AsyncWrite + Unpin,
) -> Result<CatReport, ClientError> {
    let follow = opts.follow;
    let connector = Connector::new(&opts.url, opts.ca_cert.as_deref())?;
    let mut session = Session::new(opts.url, connector, opts.token, opts.stream, opts.timeouts);
    let mut retry = Retrier::new(opts.retry, opts.notices);
    let notices = opts.notices;
    let mut waiting = false;
    let mut report = CatReport {
        start_offset: opts.offset,
        end_offset: opts.offset,
        bytes_received: 0,
        reconnects: 0,
        sealed: false,
        output_closed: false,
    };
    let mut first = true;
    loop {
        if !first {
            report.reconnects += 1;
        }
        first = false;
        let failure = match read_once(&mut session, &mut out, follow, &mut report, &mut retry).await
        {
            Ok(End::OutputClosed) => {
                report.output_closed = true;
                return Ok(report);
            }
            Ok(End::Body) if !follow => return Ok(report),
            Ok(End::Body) => match session.head().await {
                Ok(state) if !state.exists => {
                    return Err(ClientError::NotFound {
                        stream: session.stream.to_string(),
                    });
                }
                Ok(state) if state.sealed && report.end_offset >= state.offset => {
                    report.sealed = true;
                    return Ok(report);
                }
                Ok(state) => Failure::Retry(Transient::new(format!(
                    "the server ended the body at {} before the stream was sealed (committed {})",
                    report.end_offset, state.offset
                ))),
                Err(failure) => failure,
            },
            Err(failure) => failure,
        };
        session.conn = None;
        match failure {
            // Following a stream that does not exist yet: wait for it, like `tail -F`.
            Failure::Fatal(ClientError::NotFound { .. })
                if follow && report.bytes_received == 0 =>
            {
                if !waiting && notices {
                    eprintln!(
                        "engine-gateway: stream {} does not exist yet; waiting for it",
                        session.stream
                    );
                }
                waiting = true;
                retry.progress();
                tokio::time::sleep(MISSING_STREAM_POLL).await;
            }
            Failure::Fatal(err) => return Err(err),
            Failure::Retry(why) => {
                tracing::debug!(stream = %session.stream, reason = %why.reason, "cat reconnects");
                retry.backoff(why).await?;
            }
        }
    }
}

/// How often a follower looks again for a stream that does not exist yet.
const MISSING_STREAM_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// How one GET ended (other than by a failure).
enum End {
    /// The server ended the body.
    Body,
    /// The output's reader went away.
    OutputClosed,
}

/// One GET from `report.end_offset`, copying the body to `out` and advancing the offsets.
async fn read_once(
    session: &mut Session,
    out: &mut (impl AsyncWrite + Unpin),
    follow: bool,
    report: &mut CatReport,
    retry: &mut Retrier,
) -> Result<End, Failure> {
    let io = session.timeouts.io;
    let mut conn = session.take_conn().await?;
    let offset = report.end_offset;
    let query = if follow {
        format!("?offset={offset}&follow=true")
    } else {
        format!("?offset={offset}")
    };
    let req = built(session.request(Method::GET, &query).body(ReqBody::Empty))?;
    let resp = conn.send_empty(req, io).await?;
    if resp.status() != StatusCode::OK {
        return Err(error_response(resp, &session.stream, io).await);
    }
    if let Some(answered) = header_u64(resp.headers(), "stream-offset")?
        && answered != offset
    {
        return Err(ClientError::Protocol(format!(
            "asked to read from offset {offset}, the server answered from {answered}"
        ))
        .into());
    }
    let mut body = resp.into_body();
    loop {
        // following waits for new bytes as long as it takes; a plain read must keep moving
        let frame = if follow {
            body.frame().await
        } else {
            match tokio::time::timeout(io, body.frame()).await {
                Ok(frame) => frame,
                Err(_) => {
                    return Err(Transient::new(format!(
                        "no bytes from the server for {}s",
                        io.as_secs()
                    ))
                    .into());
                }
            }
        };
        let data = match frame {
            None => {
                session.conn = Some(conn);
                return Ok(End::Body);
            }
            Some(Err(err)) => {
                return Err(Transient::caused("reading the stream failed", &err).into());
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // trailers carry nothing for us
                Err(_) => continue,
            },
        };
        if data.is_empty() {
            continue;
        }
        let written = match out.write_all(&data).await {
            Ok(()) => out.flush().await,
            Err(err) => Err(err),
        };
        match written {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                return Ok(End::OutputClosed);
            }
            Err(err) => return Err(ClientError::Output(err).into()),
        }
        report.end_offset += data.len() as u64;
        report.bytes_received += data.len() as u64;
        retry.progress();
    }
}

//! `push`: appends an input to a stream, resuming after any failure from the server's committed
//! offset, with at most one request's worth of unacknowledged bytes in memory.
//!
//! The loop: `HEAD` (where does the server stand?), align the input with that offset, then
//! `PATCH` requests of at most `request_bytes` each, streaming frames as they are read. After a
//! transient failure: back off, `HEAD` again, re-send from the committed offset. A 409 carries
//! the offset, so the loop re-aligns at once.
//!
//! No splicing: when the stream already holds bytes at the start of a push, the last
//! [`VERIFY_WINDOW`] bytes before its committed offset are read back and compared with the
//! input at the same place; a difference ends the push (exit 1) unless `--append` asked for the
//! input to go after what the stream holds. A request whose input stays quiet for
//! [`QUIET_END`] is ended, so an idle log holds no request open (and no server timeout hits it).

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode, header};
use tokio::sync::mpsc;

use super::error::{ClientError, Failure, Transient};
use super::http::{
    ReqBody, Session, StreamState, built, error_response, header_sealed, header_u64,
};
use super::progress::Progress;
use super::retry::Retrier;
use super::source::Source;
use super::tls::Connector;
use super::{PushOptions, PushReport};

/// Body frames queued between the reader and hyper; with frames of at most `frame_bytes`, the
/// queue holds handles on pending bytes, never extra copies.
const BODY_QUEUE_FRAMES: usize = 4;
/// Bytes compared between the stream and the input before resuming a push at a non-zero offset.
pub const VERIFY_WINDOW: u64 = 64 * 1024;
/// A PATCH whose input has been quiet this long is ended; the next opens with new input.
pub const QUIET_END: Duration = Duration::from_secs(2);

/// Appends `opts.input` to `opts.stream`, from the input's byte 0, skipping what the server has.
pub async fn push(opts: PushOptions) -> Result<PushReport, ClientError> {
    if opts.request_bytes == 0 || opts.frame_bytes == 0 {
        return Err(ClientError::Usage(
            "request size and frame size must be at least 1 byte".into(),
        ));
    }
    let connector = Connector::new(&opts.url, opts.ca_cert.as_deref())?;
    let mut src = Source::open(opts.input, opts.frame_bytes).await?;
    let mut pusher = Pusher {
        session: Session::new(opts.url, connector, opts.token, opts.stream, opts.timeouts),
        retry: Retrier::new(opts.retry, opts.notices),
        progress: Progress::new(opts.progress),
        request_bytes: opts.request_bytes,
        sent: 0,
        committed: 0,
        append: opts.append,
        base: None,
    };
    let result = pusher.run(&mut src, opts.seal).await;
    let summary = match &result {
        Ok(r) => pusher.progress.summary(
            pusher.session.stream.as_str(),
            r.bytes_sent,
            r.start_offset,
            r.final_offset,
            r.retries,
            r.sealed,
        ),
        Err(_) => format!(
            "push of {} stopped at offset {}",
            pusher.session.stream, pusher.committed
        ),
    };
    pusher.progress.finish(&summary);
    result
}

/// What the server said to one PATCH.
enum Answer {
    /// 204: committed up to this offset.
    Committed(u64),
    /// 409: the offset was wrong (the server's is given) or the stream is sealed.
    Conflict { offset: Option<u64>, sealed: bool },
}

struct Pusher {
    session: Session,
    retry: Retrier,
    progress: Progress,
    request_bytes: usize,
    /// Body bytes handed to the network so far, re-sends included.
    sent: u64,
    /// The server's committed offset as last learnt, in input bytes (see `base`).
    committed: u64,
    /// `--append`: put the input after what the stream holds.
    append: bool,
    /// Stream offset of the input's byte 0, known after the first HEAD: the stream's length
    /// then with `append`, else 0. Offsets inside the loop are input offsets.
    base: Option<u64>,
}

impl Pusher {
    async fn run(&mut self, src: &mut Source, seal: bool) -> Result<PushReport, ClientError> {
        let stream = self.session.stream.to_string();
        let mut start_offset = None;
        // a new stream is created by a PATCH at 0, even an empty one
        let mut exists = true;
        let mut need_head = true;
        loop {
            if need_head {
                let state = match self.session.head().await {
                    Ok(state) => state,
                    Err(failure) => {
                        self.failed(failure).await?;
                        continue;
                    }
                };
                need_head = false;
                let state = match self.base {
                    Some(_) => self.input_state(state)?,
                    None => {
                        self.base = Some(if self.append { state.offset } else { 0 });
                        let state = self.input_state(state)?;
                        if state.offset > 0 {
                            self.verify_prefix(src, state.offset).await?;
                        }
                        state
                    }
                };
                let start = *start_offset.get_or_insert(state.offset);
                exists = state.exists;
                if state.sealed {
                    src.check_ends_at(state.offset, &stream).await?;
                    self.committed = state.offset;
                    return Ok(self.report(start, true));
                }
                self.align(src, state.offset).await?;
            }
            let start = start_offset.unwrap_or(0);
            // wait for input before opening a request, so an idle input holds none open
            if src.pending.is_empty()
                && !src.eof
                && src.read_frame(self.request_bytes).await?.is_some()
            {
                // time spent waiting for input is not time without progress
                self.retry.progress();
            }
            let seal_now = seal && src.eof;
            if src.eof && src.pending.is_empty() && !seal_now && exists {
                return Ok(self.report(start, false));
            }
            let request_start = src.pending.start;
            match self.patch(src, seal_now).await {
                Ok(Answer::Committed(offset)) => {
                    let offset = self.to_input(offset)?;
                    exists = true;
                    if offset < request_start || offset > src.pos() {
                        return Err(ClientError::Protocol(format!(
                            "PATCH at {request_start} with {} bytes was acknowledged at offset {offset}",
                            src.pos() - request_start
                        )));
                    }
                    self.align(src, offset).await?;
                    if seal_now {
                        if !src.pending.is_empty() {
                            return Err(ClientError::Protocol(format!(
                                "the stream was sealed at {offset} before the input's end at {}",
                                src.pos()
                            )));
                        }
                        return Ok(self.report(start, true));
                    }
                }
                Ok(Answer::Conflict {
                    offset: Some(offset),
                    sealed: false,
                }) if self.to_input(offset).is_ok_and(|o| o != request_start) => {
                    let offset = self.to_input(offset)?;
                    self.retry.immediate(Transient::new(format!(
                        "HTTP 409: the server is at offset {offset}, not {request_start}"
                    )))?;
                    self.align(src, offset).await?;
                }
                Ok(Answer::Conflict { offset, sealed }) => {
                    // sealed (perhaps by our own seal whose answer was lost) or a 409 that makes
                    // no sense: ask HEAD, which settles both
                    let reason = match (sealed, offset) {
                        (true, _) => "HTTP 409: the stream is sealed".to_owned(),
                        (false, Some(o)) => {
                            format!("HTTP 409 at the offset the server reports ({o})")
                        }
                        (false, None) => "HTTP 409 without Stream-Offset".to_owned(),
                    };
                    if sealed {
                        self.retry.immediate(Transient::new(reason))?;
                    } else {
                        self.retry.backoff(Transient::new(reason)).await?;
                    }
                    need_head = true;
                }
                Err(failure) => {
                    self.failed(failure).await?;
                    need_head = true;
                }
            }
        }
    }

    /// A stream offset as an input offset; a stream shorter than where the input started is a
    /// stream changed behind this push's back.
    fn to_input(&self, offset: u64) -> Result<u64, ClientError> {
        let base = self.base.unwrap_or(0);
        offset.checked_sub(base).ok_or(ClientError::OffsetBehind {
            committed: offset,
            acknowledged: base,
        })
    }

    fn input_state(&self, mut state: StreamState) -> Result<StreamState, ClientError> {
        state.offset = self.to_input(state.offset)?;
        Ok(state)
    }

    /// Checks that the stream's bytes before `offset` are the input's: the last
    /// [`VERIFY_WINDOW`] of them are read back and compared. Leaves the input aligned at
    /// `offset`.
    async fn verify_prefix(&mut self, src: &mut Source, offset: u64) -> Result<(), ClientError> {
        let window = offset.min(VERIFY_WINDOW);
        let start = offset - window;
        let stream = self.session.stream.to_string();
        src.sync_to(start, &stream).await?;
        while src.pos() < offset {
            let want = usize::try_from(offset - src.pos()).unwrap_or(usize::MAX);
            if src.read_frame(want).await?.is_none() {
                return Err(ClientError::InputShorter {
                    stream,
                    committed: offset,
                    input_len: src.pos(),
                });
            }
        }
        let mine = src.pending_bytes();
        let theirs = loop {
            match self.session.read_range(start, window as usize).await {
                Ok(bytes) => break bytes,
                Err(failure) => self.failed(failure).await?,
            }
        };
        if theirs != mine {
            return Err(ClientError::Diverged {
                stream,
                committed: offset,
                window,
            });
        }
        src.sync_to(offset, &stream).await
    }

    /// A fatal failure ends the push; a transient one waits (backoff) before the next try.
    async fn failed(&mut self, failure: Failure) -> Result<(), ClientError> {
        self.session.conn = None;
        match failure {
            Failure::Fatal(err) => Err(err),
            Failure::Retry(why) => {
                tracing::debug!(stream = %self.session.stream, reason = %why.reason, "push attempt failed");
                self.retry.backoff(why).await
            }
        }
    }

    /// Re-aligns the input with the server's committed offset, noting progress.
    async fn align(&mut self, src: &mut Source, offset: u64) -> Result<(), ClientError> {
        src.sync_to(offset, self.session.stream.as_str()).await?;
        if offset > self.committed {
            self.retry.progress();
        }
        self.committed = offset;
        self.progress.update(self.sent, offset);
        Ok(())
    }

    fn report(&self, start_offset: u64, sealed: bool) -> PushReport {
        let base = self.base.unwrap_or(0);
        PushReport {
            start_offset: start_offset + base,
            final_offset: self.committed + base,
            bytes_sent: self.sent,
            retries: self.retry.retries(),
            sealed,
        }
    }

    /// One PATCH at `src.pending.start`: the pending bytes, then new input until the request
    /// holds `request_bytes` or the input ends.
    async fn patch(&mut self, src: &mut Source, seal: bool) -> Result<Answer, Failure> {
        let io = self.session.timeouts.io;
        let mut conn = self.session.take_conn().await?;
        let mut builder = self
            .session
            .request(Method::PATCH, "")
            .header("stream-offset", src.pending.start + self.base.unwrap_or(0))
            .header(header::CONTENT_TYPE, "application/offset+octet-stream");
        if seal {
            builder = builder.header("stream-seal", "true");
        }
        let (tx, body) = if src.eof && src.pending.is_empty() {
            builder = builder.header(header::CONTENT_LENGTH, "0");
            (None, ReqBody::Empty)
        } else {
            let (tx, rx) = mpsc::channel(BODY_QUEUE_FRAMES);
            (Some(tx), ReqBody::Channel(rx))
        };
        let req = built(builder.body(body))?;

        let mut fed = tx.is_none();
        let resp = {
            let response = conn.sender.send_request(req);
            let mut feeder = Feeder {
                tx,
                limit: self.request_bytes,
                io,
                sent: &mut self.sent,
                progress: &mut self.progress,
                retry: &mut self.retry,
                committed: self.committed,
            };
            let feed = feeder.run(src);
            let answer_deadline = tokio::time::sleep(io);
            tokio::pin!(response, feed, answer_deadline);
            loop {
                tokio::select! {
                    resp = &mut response => break resp,
                    result = &mut feed, if !fed => {
                        result?;
                        fed = true;
                        answer_deadline.as_mut().reset(tokio::time::Instant::now() + io);
                    }
                    () = &mut answer_deadline, if fed => {
                        return Err(Transient::new("timed out waiting for the answer to PATCH").into());
                    }
                }
            }
        };
        let resp = resp.map_err(|err| Transient::caused("PATCH failed", &err))?;
        match resp.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => {
                let offset = header_u64(resp.headers(), "stream-offset")?.ok_or_else(|| {
                    ClientError::Protocol("PATCH answered without Stream-Offset".into())
                })?;
                if fed {
                    // the whole request went out and was answered: the connection can be reused
                    self.session.conn = Some(conn);
                }
                Ok(Answer::Committed(offset))
            }
            StatusCode::CONFLICT => Ok(Answer::Conflict {
                offset: header_u64(resp.headers(), "stream-offset")?,
                sealed: header_sealed(resp.headers()),
            }),
            _ => Err(error_response(resp, &self.session.stream, io).await),
        }
    }
}

/// Feeds one request body: first the pending (unacknowledged) frames, then new input.
struct Feeder<'a> {
    /// `None` for an empty body.
    tx: Option<mpsc::Sender<Bytes>>,
    /// Largest body of this request.
    limit: usize,
    /// How long the server may leave a frame unaccepted.
    io: Duration,
    sent: &'a mut u64,
    progress: &'a mut Progress,
    /// New input counts as progress: a slow input (a quiet log) must not spend the budget of
    /// time without progress while the request waits for it.
    retry: &'a mut Retrier,
    /// For the progress line.
    committed: u64,
}

impl Feeder<'_> {
    /// Ends when the body is complete (the sender is dropped, which ends the body) or when the
    /// HTTP layer gave up on it (the response then says why).
    async fn run(&mut self, src: &mut Source) -> Result<(), Failure> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        for i in 0..src.pending.frame_count() {
            if let Some(frame) = src.pending.frame(i)
                && !self.send(&tx, frame).await?
            {
                return Ok(());
            }
        }
        while !src.eof && src.pending.len() < self.limit {
            let read = src.read_frame(self.limit - src.pending.len());
            // A quiet input ends the request (what was sent gets committed and answered).
            let Ok(frame) = tokio::time::timeout(QUIET_END, read).await else {
                break;
            };
            let Some(frame) = frame? else {
                break;
            };
            self.retry.progress();
            if !self.send(&tx, frame).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Hands one frame to hyper; false when hyper dropped the body (connection failed).
    async fn send(&mut self, tx: &mpsc::Sender<Bytes>, frame: Bytes) -> Result<bool, Failure> {
        let len = frame.len() as u64;
        match tokio::time::timeout(self.io, tx.send(frame)).await {
            Ok(Ok(())) => {
                *self.sent += len;
                self.progress.update(*self.sent, self.committed);
                Ok(true)
            }
            Ok(Err(_)) => Ok(false),
            Err(_) => Err(Transient::new(format!(
                "the server accepted no body bytes for {}s",
                self.io.as_secs()
            ))
            .into()),
        }
    }
}

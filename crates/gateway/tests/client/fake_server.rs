//! An in-memory fake of the gateway's stream API (HEAD, PATCH, GET) on a real TCP socket, with
//! injectable faults, so the client is tested against protocol v1 without the real server.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

pub const TOKEN: &str = "secret-token";

/// A fault to inject into the next request of some method.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// PATCH: commit this many body bytes, then drop the connection without answering.
    CloseMidBody(usize),
    /// Answer this status without touching the stream (`Retry-After: 0` for 429 and 503).
    Status(u16),
    /// PATCH: commit this many body bytes, then answer 409 with the new committed offset.
    ConflictAfter(usize),
    /// GET: send this many bytes, then drop the connection.
    GetCloseAfter(usize),
    /// PATCH: apply the whole request (seal included), then drop the connection unanswered.
    DropAnswer,
    /// No fault: lets a later queued fault hit a later request.
    Pass,
}

/// One PATCH as the server saw it.
#[derive(Clone, Debug)]
pub struct PatchLog {
    pub offset: u64,
    pub body_len: usize,
    pub seal: bool,
    pub status: u16,
}

#[derive(Default)]
struct Stored {
    data: Vec<u8>,
    sealed: bool,
}

#[derive(Default)]
struct State {
    streams: Mutex<HashMap<String, Stored>>,
    faults: Mutex<VecDeque<(Method, Fault)>>,
    patches: Mutex<Vec<PatchLog>>,
    /// Woken on every change, for following readers.
    changed: Notify,
}

#[derive(Clone)]
pub struct FakeServer {
    pub url: String,
    state: Arc<State>,
}

impl FakeServer {
    pub async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let server_state = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let state = server_state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        FakeServer {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// Queues a fault for a later request with `method` (faults of one method apply in order).
    pub fn fault(&self, method: Method, fault: Fault) {
        self.state.faults.lock().unwrap().push_back((method, fault));
    }

    pub fn put(&self, id: &str, data: &[u8], sealed: bool) {
        let mut streams = self.state.streams.lock().unwrap();
        let s = streams.entry(id.to_owned()).or_default();
        s.data.extend_from_slice(data);
        s.sealed |= sealed;
        drop(streams);
        self.state.changed.notify_waiters();
    }

    /// The stored bytes and sealed flag of a stream.
    pub fn get(&self, id: &str) -> Option<(Vec<u8>, bool)> {
        let streams = self.state.streams.lock().unwrap();
        streams.get(id).map(|s| (s.data.clone(), s.sealed))
    }

    pub fn patches(&self) -> Vec<PatchLog> {
        self.state.patches.lock().unwrap().clone()
    }
}

type ResBody = BoxBody<Bytes, io::Error>;

fn reply(status: u16, headers: &[(&str, String)], body: &str) -> Response<ResBody> {
    let mut resp = Response::builder().status(status);
    for (k, v) in headers {
        resp = resp.header(*k, v);
    }
    let body = Full::new(Bytes::from(body.to_owned()))
        .map_err(|never: Infallible| match never {})
        .boxed();
    resp.body(body).unwrap()
}

fn json_error(status: u16, code: &str, message: &str) -> Response<ResBody> {
    let body = serde_json::json!({"error": code, "message": message}).to_string();
    reply(
        status,
        &[("content-type", "application/json".into())],
        &body,
    )
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<ResBody>, io::Error> {
    if header(&req, "authorization") != Some(&format!("Bearer {TOKEN}")) {
        return Ok(json_error(401, "unauthorized", "token is not valid"));
    }
    let Some(id) = req
        .uri()
        .path()
        .strip_prefix("/v1/streams/")
        .map(str::to_owned)
    else {
        return Ok(json_error(404, "not_found", "no such route"));
    };
    let fault = {
        let mut faults = state.faults.lock().unwrap();
        match faults.iter().position(|(m, _)| m == req.method()) {
            Some(i) => faults.remove(i).map(|(_, f)| f),
            None => None,
        }
    };
    if let Some(Fault::Status(code)) = fault {
        let retry_after: &[(&str, String)] = if code == 429 || code == 503 {
            &[("retry-after", "0".into())]
        } else {
            &[]
        };
        let mut resp = json_error(code, "injected", "injected fault");
        for (k, v) in retry_after {
            resp.headers_mut().insert(*k, v.parse().unwrap());
        }
        return Ok(resp);
    }
    let method = req.method().clone();
    match method {
        Method::HEAD => {
            let streams = state.streams.lock().unwrap();
            Ok(match streams.get(&id) {
                None => reply(404, &[], ""),
                Some(s) => reply(
                    200,
                    &[
                        ("stream-offset", s.data.len().to_string()),
                        ("stream-sealed", s.sealed.to_string()),
                    ],
                    "",
                ),
            })
        }
        Method::PATCH => patch(&state, id, req, fault).await,
        Method::GET => Ok(get(&state, id, &req, fault)),
        _ => Ok(json_error(405, "method", "method not allowed")),
    }
}

async fn patch(
    state: &Arc<State>,
    id: String,
    req: Request<Incoming>,
    fault: Option<Fault>,
) -> Result<Response<ResBody>, io::Error> {
    if header(&req, "content-type") != Some("application/offset+octet-stream") {
        return Ok(json_error(415, "content_type", "wrong content type"));
    }
    let Some(offset) = header(&req, "stream-offset").and_then(|v| v.parse::<u64>().ok()) else {
        return Ok(json_error(400, "offset", "missing Stream-Offset"));
    };
    let seal = header(&req, "stream-seal") == Some("true");
    let log = |body_len, status| {
        let entry = PatchLog {
            offset,
            body_len,
            seal,
            status,
        };
        state.patches.lock().unwrap().push(entry);
    };
    {
        let mut streams = state.streams.lock().unwrap();
        if offset == 0 && !streams.contains_key(&id) {
            streams.insert(id.clone(), Stored::default());
        }
        let Some(s) = streams.get(&id) else {
            log(0, 404);
            return Ok(json_error(404, "not_found", "no such stream"));
        };
        let len = s.data.len().to_string();
        if s.sealed {
            log(0, 409);
            return Ok(reply(
                409,
                &[("stream-offset", len), ("stream-sealed", "true".into())],
                "",
            ));
        }
        if s.data.len() as u64 != offset {
            log(0, 409);
            return Ok(reply(409, &[("stream-offset", len)], ""));
        }
    }
    let limit = match fault {
        Some(Fault::CloseMidBody(n) | Fault::ConflictAfter(n)) => n,
        _ => usize::MAX,
    };
    let mut body = req.into_body();
    let mut body_len = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(io::Error::other)?.into_data() else {
            continue;
        };
        // commit as the bytes arrive (up to the fault's limit)
        let take = data.len().min(limit - body_len);
        body_len += data.len();
        state
            .streams
            .lock()
            .unwrap()
            .get_mut(&id)
            .unwrap()
            .data
            .extend_from_slice(&data[..take]);
        state.changed.notify_waiters();
        if body_len >= limit {
            break;
        }
    }
    let len = state.streams.lock().unwrap()[&id].data.len().to_string();
    match fault {
        Some(Fault::CloseMidBody(_)) => {
            log(body_len, 0);
            Err(io::Error::other("injected connection drop"))
        }
        Some(Fault::ConflictAfter(_)) => {
            log(body_len, 409);
            Ok(reply(409, &[("stream-offset", len)], ""))
        }
        _ => {
            if seal {
                state.streams.lock().unwrap().get_mut(&id).unwrap().sealed = true;
                state.changed.notify_waiters();
            }
            if let Some(Fault::DropAnswer) = fault {
                log(body_len, 0);
                return Err(io::Error::other("injected lost answer"));
            }
            log(body_len, 204);
            Ok(reply(204, &[("stream-offset", len)], ""))
        }
    }
}

fn get(
    state: &Arc<State>,
    id: String,
    req: &Request<Incoming>,
    fault: Option<Fault>,
) -> Response<ResBody> {
    let query = req.uri().query().unwrap_or("");
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
    };
    let mut pos: usize = param("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let follow = param("follow") == Some("true");
    if !state.streams.lock().unwrap().contains_key(&id) {
        return json_error(404, "not_found", "no such stream");
    }
    let close_after = match fault {
        Some(Fault::GetCloseAfter(n)) => n,
        _ => usize::MAX,
    };
    let (tx, rx) = mpsc::channel(4);
    let state = state.clone();
    let start = pos;
    tokio::spawn(async move {
        loop {
            let changed = state.changed.notified();
            let (chunk, sealed) = {
                let streams = state.streams.lock().unwrap();
                let s = &streams[&id];
                let end = s
                    .data
                    .len()
                    .min(pos + 4096)
                    .min(start.saturating_add(close_after));
                (s.data[pos.min(end)..end].to_vec(), s.sealed)
            };
            if pos - start >= close_after {
                let _ = tx.send(Err(io::Error::other("injected drop"))).await;
                return;
            }
            if chunk.is_empty() {
                if sealed || !follow {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
                continue;
            }
            pos += chunk.len();
            if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("stream-offset", start.to_string())
        .body(ChanBody(rx).boxed())
        .unwrap()
}

/// A response body fed through a channel; an `Err` item aborts the connection.
struct ChanBody(mpsc::Receiver<Result<Bytes, io::Error>>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

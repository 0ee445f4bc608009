//! How gateway streams map onto JetStream: subjects, message headers and their parsing.
//!
//! **Subject encoding** (documented for downstream consumers): stream `org/cluster/name` is
//! published on `<prefix>.data.<org>.<cluster>.<name>`, where every `.` inside a segment is
//! written as `=`. Segments match `[A-Za-z0-9._-]`, so `=` never occurs in them and the mapping
//! is a bijection: `acme/prod-eu/deploy.log` ↔ `egw.data.acme.prod-eu.deploy=log`. The encoded
//! segments are also valid JetStream key-value keys.
//!
//! **Headers** on every message of a stream's subject:
//! - `Egw-Offset`: the stream offset of the message's first payload byte;
//! - `Egw-Created`: the stream's creation time (Unix seconds), copied onto every message so one
//!   read of the last message answers `head`;
//! - `Egw-Seal: true` on the message that seals the stream (its last one);
//! - `Egw-Tombstone: true` on the message that deletes the stream (no payload);
//! - `Nats-Msg-Id: <org>/<cluster>/<name>:<offset>:<previous subject sequence>` for the
//!   server's de-duplication window.
//!
//! A message with an empty payload is a marker (creation, seal or tombstone).

use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;

use crate::store::StoreError;
use crate::stream_id::StreamId;

/// Header: offset of the message's first payload byte in the gateway stream.
pub const HDR_OFFSET: &str = "Egw-Offset";
/// Header: creation time of the stream, Unix seconds.
pub const HDR_CREATED: &str = "Egw-Created";
/// Header: present (`true`) on the sealing message.
pub const HDR_SEAL: &str = "Egw-Seal";
/// Header: present (`true`) on a deletion marker.
pub const HDR_TOMBSTONE: &str = "Egw-Tombstone";

/// Subject names of one deployment (one JetStream stream).
#[derive(Clone, Debug)]
pub struct Subjects {
    /// `<prefix>.data`, the common root of every gateway stream's subject.
    root: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Subjects {
            root: format!("{prefix}.data"),
        }
    }

    /// The JetStream stream's subject pattern, `<prefix>.data.>`.
    pub fn wildcard(&self) -> String {
        format!("{}.>", self.root)
    }

    /// The subject of one gateway stream.
    pub fn of(&self, id: &StreamId) -> String {
        format!(
            "{}.{}.{}.{}",
            self.root,
            encode_segment(id.org()),
            encode_segment(id.cluster()),
            encode_segment(id.name())
        )
    }

    /// The narrowest subject filter covering every id that starts with `prefix`: complete
    /// segments of the prefix become literal tokens, the rest a `>` wildcard.
    pub fn filter_for_prefix(&self, prefix: &str) -> String {
        let mut filter = self.root.clone();
        let parts: Vec<&str> = prefix.split('/').collect();
        // Every part but the last is complete (it was followed by a slash).
        let complete = parts.len().saturating_sub(1).min(2);
        for part in &parts[..complete] {
            if crate::stream_id::validate_segment(part).is_err() {
                break;
            }
            filter.push('.');
            filter.push_str(&encode_segment(part));
        }
        filter.push_str(".>");
        filter
    }

    /// The stream id published on `subject`, if it is a gateway stream subject.
    pub fn decode(&self, subject: &str) -> Option<StreamId> {
        let rest = subject.strip_prefix(&self.root)?.strip_prefix('.')?;
        let mut parts = rest.split('.');
        let (Some(org), Some(cluster), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        StreamId::new(
            &decode_segment(org),
            &decode_segment(cluster),
            &decode_segment(name),
        )
        .ok()
    }
}

/// One segment as a subject token: `.` becomes `=`.
pub fn encode_segment(segment: &str) -> String {
    segment.replace('.', "=")
}

fn decode_segment(token: &str) -> String {
    token.replace('=', ".")
}

/// `Nats-Msg-Id` of the message at `offset` that follows subject sequence `prev`.
///
/// The previous sequence makes the id unique per incarnation of a stream: after a delete (a
/// tombstone with a new sequence) a re-created stream never collides with its old messages
/// inside the de-duplication window.
pub fn msg_id(id: &StreamId, offset: u64, prev: u64) -> String {
    format!("{id}:{offset}:{prev}")
}

/// What one stored message says about its stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    /// JetStream sequence of the message.
    pub seq: u64,
    /// Offset of the first payload byte; 0 for a tombstone.
    pub offset: u64,
    /// Payload length.
    pub len: u64,
    pub sealed: bool,
    pub tombstone: bool,
    /// Creation time of the stream (Unix seconds).
    pub created: u64,
    /// Time the message was stored (Unix seconds).
    pub stored: u64,
}

impl Meta {
    /// Parses the gateway headers of a stored message.
    pub fn parse(msg: &StreamMessage) -> Result<Meta, StoreError> {
        let headers = &msg.headers;
        let tombstone = flag(headers, HDR_TOMBSTONE);
        let number = |name: &str| -> Result<u64, StoreError> {
            match headers.get(name) {
                Some(v) => v.as_str().parse().map_err(|_| {
                    StoreError::internal(format!(
                        "message {} on {} has a malformed {name} header",
                        msg.sequence, msg.subject
                    ))
                }),
                None if tombstone => Ok(0),
                None => Err(StoreError::internal(format!(
                    "message {} on {} has no {name} header",
                    msg.sequence, msg.subject
                ))),
            }
        };
        Ok(Meta {
            seq: msg.sequence,
            offset: number(HDR_OFFSET)?,
            len: msg.payload.len() as u64,
            sealed: flag(headers, HDR_SEAL),
            tombstone,
            created: number(HDR_CREATED)?,
            stored: u64::try_from(msg.time.unix_timestamp()).unwrap_or(0),
        })
    }

    /// Offset just past this message's payload.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

fn flag(headers: &HeaderMap, name: &str) -> bool {
    headers.get(name).is_some_and(|v| v.as_str() == "true")
}

/// Headers of a data or marker message.
pub fn data_headers(id: &StreamId, offset: u64, prev: u64, created: u64, seal: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HDR_OFFSET, offset.to_string().as_str());
    headers.insert(HDR_CREATED, created.to_string().as_str());
    if seal {
        headers.insert(HDR_SEAL, "true");
    }
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        msg_id(id, offset, prev).as_str(),
    );
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        prev.to_string().as_str(),
    );
    headers
}

/// Headers of a deletion marker following subject sequence `prev`.
pub fn tombstone_headers(id: &StreamId, prev: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HDR_TOMBSTONE, "true");
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{id}:delete:{prev}").as_str(),
    );
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        prev.to_string().as_str(),
    );
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(id: &str, subject: &str) {
        let subjects = Subjects::new("egw");
        let id: StreamId = id.parse().unwrap();
        assert_eq!(subjects.of(&id), subject);
        assert_eq!(subjects.decode(subject), Some(id));
    }

    #[test]
    fn subjects_round_trip() {
        check(
            "acme/prod-eu/deploy.log",
            "egw.data.acme.prod-eu.deploy=log",
        );
        check("a_b/c.d.e/..", "egw.data.a_b.c=d=e.==");
        check("A-1/_/x", "egw.data.A-1._.x");
        let subjects = Subjects::new("egw");
        assert_eq!(subjects.decode("egw.data.a.b"), None);
        assert_eq!(subjects.decode("egw.data.a.b.c.d"), None);
        assert_eq!(subjects.decode("other.data.a.b.c"), None);
        assert_eq!(subjects.decode("egw.data.a.b.c*"), None);
    }

    #[test]
    fn prefix_filters() {
        let subjects = Subjects::new("egw");
        for (prefix, filter) in [
            ("", "egw.data.>"),
            ("ac", "egw.data.>"),
            ("acme/", "egw.data.acme.>"),
            ("acme/pr", "egw.data.acme.>"),
            ("acme/prod.eu/", "egw.data.acme.prod=eu.>"),
            ("acme/prod/log", "egw.data.acme.prod.>"),
            ("a b/", "egw.data.>"),
        ] {
            assert_eq!(subjects.filter_for_prefix(prefix), filter, "{prefix}");
        }
    }
}

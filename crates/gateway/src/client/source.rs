//! The input of a push and the bytes not yet acknowledged by the server.
//!
//! Invariant: `pending` holds exactly the input bytes `[pending.start, pos)`, i.e. everything
//! read from the input that the server has not yet committed. Its size is bounded by the caller
//! (one request's worth), so memory stays bounded even for an endless stdin.

use std::collections::VecDeque;
use std::io::SeekFrom;
use std::path::PathBuf;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

use super::Input;
use super::error::ClientError;

/// Read bytes the server has not acknowledged yet, as the frames they were read in.
#[derive(Default)]
pub(crate) struct Pending {
    /// Input offset of the first pending byte (= the server's committed offset once synced).
    pub start: u64,
    frames: VecDeque<Bytes>,
    len: usize,
}

impl Pending {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// A cheap handle (reference-counted) on the `i`-th frame, for (re-)sending it.
    pub(crate) fn frame(&self, i: usize) -> Option<Bytes> {
        self.frames.get(i).cloned()
    }

    fn push(&mut self, frame: Bytes) {
        self.len += frame.len();
        self.frames.push_back(frame);
    }

    /// Forgets the first `n` bytes (now committed by the server).
    fn consume(&mut self, mut n: usize) {
        self.start += n as u64;
        self.len -= n;
        while n > 0 {
            let Some(front) = self.frames.front_mut() else {
                break;
            };
            if front.len() <= n {
                n -= front.len();
                self.frames.pop_front();
            } else {
                let _ = front.split_to(n);
                n = 0;
            }
        }
    }

    fn clear_to(&mut self, offset: u64) {
        self.frames.clear();
        self.len = 0;
        self.start = offset;
    }
}

enum Reader {
    /// A regular file: seekable, so skipping is a seek.
    File(tokio::fs::File),
    /// Anything else: skipping reads and discards.
    Stream(Box<dyn AsyncRead + Send + Unpin>),
}

/// The push input plus its unacknowledged bytes.
pub(crate) struct Source {
    reader: Reader,
    /// Path of a file input, for messages (`None` = stdin or a reader).
    path: Option<PathBuf>,
    /// Input offset of the next byte to read.
    pos: u64,
    /// The input has ended.
    pub eof: bool,
    pub pending: Pending,
    /// Read buffer; frames are split off it so many small reads share one allocation.
    buf: BytesMut,
    frame_bytes: usize,
}

impl Source {
    pub(crate) async fn open(input: Input, frame_bytes: usize) -> Result<Self, ClientError> {
        let (reader, path) = match input {
            Input::File(path) => match tokio::fs::File::open(&path).await {
                Ok(file) => (Reader::File(file), Some(path)),
                Err(err) => return Err(ClientError::input(Some(&path), err)),
            },
            Input::Stdin => (Reader::Stream(Box::new(tokio::io::stdin())), None),
            Input::Reader(reader) => (Reader::Stream(reader), None),
        };
        Ok(Source {
            reader,
            path,
            pos: 0,
            eof: false,
            pending: Pending::default(),
            buf: BytesMut::new(),
            frame_bytes,
        })
    }

    /// The pending bytes, copied in one piece (for comparing them with the stream's).
    pub(crate) fn pending_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pending.len());
        for i in 0..self.pending.frame_count() {
            if let Some(frame) = self.pending.frame(i) {
                out.extend_from_slice(&frame);
            }
        }
        out
    }

    /// Input offset of the next byte to read (= end of `pending`).
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Reads at most `max` bytes into a new pending frame; returns it, or `None` at EOF.
    pub(crate) async fn read_frame(&mut self, max: usize) -> Result<Option<Bytes>, ClientError> {
        let want = max.min(self.frame_bytes).max(1);
        if self.buf.capacity() < want {
            self.buf.reserve(self.frame_bytes.max(want));
        }
        let n = {
            let mut limited = (&mut self.buf).limit(want);
            let res = match &mut self.reader {
                Reader::File(f) => f.read_buf(&mut limited).await,
                Reader::Stream(r) => r.read_buf(&mut limited).await,
            };
            res.map_err(|err| ClientError::input(self.path.as_ref(), err))?
        };
        if n == 0 {
            self.eof = true;
            return Ok(None);
        }
        let frame = self.buf.split().freeze();
        self.pos += n as u64;
        self.pending.push(frame.clone());
        Ok(Some(frame))
    }

    /// Aligns the input with the server's committed offset: forgets pending bytes the server
    /// has, or skips input bytes it already has (a seek for a file, read-and-discard otherwise).
    pub(crate) async fn sync_to(
        &mut self,
        committed: u64,
        stream: &str,
    ) -> Result<(), ClientError> {
        if committed < self.pending.start {
            return Err(ClientError::OffsetBehind {
                committed,
                acknowledged: self.pending.start,
            });
        }
        if committed <= self.pos {
            let n = usize::try_from(committed - self.pending.start)
                .map_err(|_| ClientError::Protocol("offset out of range".into()))?;
            self.pending.consume(n);
            return Ok(());
        }
        self.pending.clear_to(self.pos);
        let shorter = |input_len| ClientError::InputShorter {
            stream: stream.to_owned(),
            committed,
            input_len,
        };
        match &mut self.reader {
            Reader::File(file) => {
                let len = file
                    .metadata()
                    .await
                    .map_err(|err| ClientError::input(self.path.as_ref(), err))?
                    .len();
                if len < committed {
                    return Err(shorter(len));
                }
                file.seek(SeekFrom::Start(committed))
                    .await
                    .map_err(|err| ClientError::input(self.path.as_ref(), err))?;
                self.pos = committed;
            }
            Reader::Stream(_) => {
                while self.pos < committed {
                    let want = usize::try_from(committed - self.pos).unwrap_or(usize::MAX);
                    if self.read_frame(want).await?.is_none() {
                        return Err(shorter(self.pos));
                    }
                    // discarded: the server has these bytes
                    self.pending.clear_to(self.pos);
                }
            }
        }
        self.pending.clear_to(committed);
        Ok(())
    }

    /// For a sealed stream at `committed`: Ok when the input ends exactly there.
    pub(crate) async fn check_ends_at(
        &mut self,
        committed: u64,
        stream: &str,
    ) -> Result<(), ClientError> {
        let sealed = || ClientError::Sealed {
            stream: stream.to_owned(),
            offset: committed,
        };
        if self.pos > committed {
            return Err(sealed());
        }
        self.sync_to(committed, stream).await?;
        match self.read_frame(1).await? {
            None => Ok(()),
            Some(_) => Err(sealed()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic on what they set up
mod tests {
    use super::*;

    fn source(data: &'static [u8], frame: usize) -> Source {
        Source {
            reader: Reader::Stream(Box::new(data)),
            path: None,
            pos: 0,
            eof: false,
            pending: Pending::default(),
            buf: BytesMut::new(),
            frame_bytes: frame,
        }
    }

    fn pending_bytes(s: &Source) -> Vec<u8> {
        (0..s.pending.frame_count())
            .flat_map(|i| s.pending.frame(i).unwrap().to_vec())
            .collect()
    }

    #[tokio::test]
    async fn pending_tracks_unacknowledged_bytes() {
        let mut s = source(b"0123456789abcdef", 4);
        while s.pending.len() < 10 {
            s.read_frame(10 - s.pending.len()).await.unwrap();
        }
        assert_eq!(pending_bytes(&s), b"0123456789");
        s.sync_to(6, "a/b/c").await.unwrap();
        assert_eq!((s.pending.start, s.pos()), (6, 10));
        assert_eq!(pending_bytes(&s), b"6789");
        // behind what was acknowledged: refused
        assert!(matches!(
            s.sync_to(5, "a/b/c").await,
            Err(ClientError::OffsetBehind { .. })
        ));
        // ahead of what was read: skipped in the input
        s.sync_to(13, "a/b/c").await.unwrap();
        assert_eq!((s.pending.start, s.pos(), s.pending.len()), (13, 13, 0));
        s.read_frame(100).await.unwrap();
        assert_eq!(pending_bytes(&s), b"def");
        assert!(s.read_frame(100).await.unwrap().is_none() && s.eof);
    }

    #[tokio::test]
    async fn skipping_past_the_end_is_an_error() {
        let mut s = source(b"abc", 2);
        let err = s.sync_to(10, "a/b/c").await.unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::InputShorter {
                    committed: 10,
                    input_len: 3,
                    ..
                }
            ),
            "{err}"
        );
        let mut s = source(b"abc", 2);
        s.check_ends_at(3, "a/b/c").await.unwrap();
        let mut s = source(b"abcd", 2);
        assert!(matches!(
            s.check_ends_at(3, "a/b/c").await,
            Err(ClientError::Sealed { .. })
        ));
    }
}

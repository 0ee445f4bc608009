//! `gateway-bench sink`: the floor an ingest server on this machine is read against. A minimal
//! HTTP/1.1 server (one thread per connection, blocking reads straight into a reused buffer)
//! that answers every protocol v1 PATCH with 204 and the new `Stream-Offset`:
//!
//! - without `--fsync-dir` it keeps nothing: its CPU per GiB is what loopback TCP and the least
//!   HTTP cost, the part of the gateway's cost no store can remove;
//! - with `--fsync-dir` it appends each body to a file per stream and fdatasyncs it before the
//!   204: the durable server a user would write by hand, with no group commit.
//!
//! It trusts its client (the load generator): offsets are the ones the client sends, heads are
//! parsed only as far as the load needs. Not a server to expose.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Largest request head the sink reads.
const MAX_HEAD: usize = 16 * 1024;
/// Largest body; the load's chunks are far smaller.
const MAX_BODY: usize = 64 << 20;

/// Serves `listener` until the process is killed.
pub fn serve(listener: TcpListener, fsync_dir: Option<PathBuf>) -> anyhow::Result<()> {
    if let Some(dir) = &fsync_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for stream in listener.incoming() {
        let stream = stream.context("accept")?;
        let dir = fsync_dir.clone();
        std::thread::spawn(move || {
            // A client that goes away ends its connection; nothing to report.
            let _ = connection(stream, dir.as_deref());
        });
    }
    Ok(())
}

/// One keep-alive connection: requests one after the other until the client closes.
fn connection(stream: TcpStream, dir: Option<&Path>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    // Large body reads bypass the buffer (BufReader reads straight into `body` when empty).
    let mut reader = BufReader::with_capacity(MAX_HEAD, stream);
    let mut body = Vec::new();
    let mut files: HashMap<String, File> = HashMap::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut words = line.split_ascii_whitespace();
        let method = words.next().unwrap_or("").to_owned();
        let path = words.next().unwrap_or("").to_owned();
        let (mut length, mut offset, mut head) = (0usize, 0u64, line.len());
        loop {
            line.clear();
            head += reader.read_line(&mut line)?;
            if head > MAX_HEAD {
                return Err(io::Error::other("request head too large"));
            }
            let Some((name, value)) = line.trim_end().split_once(':') else {
                break;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().map_err(io::Error::other)?;
            } else if name.eq_ignore_ascii_case("stream-offset") {
                offset = value.parse().map_err(io::Error::other)?;
            }
        }
        if length > MAX_BODY {
            return Err(io::Error::other("body too large"));
        }
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
        let answer = match (method.as_str(), dir) {
            ("PATCH", Some(dir)) => {
                let file = match files.get_mut(&path) {
                    Some(file) => file,
                    None => {
                        let name = path.trim_start_matches('/').replace('/', "_");
                        let file = OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(dir.join(name))?;
                        files.entry(path.clone()).or_insert(file)
                    }
                };
                file.write_all(&body)?;
                file.sync_data()?;
                offset + length as u64
            }
            ("PATCH", None) => offset + length as u64,
            _ => offset,
        };
        write!(
            writer,
            "HTTP/1.1 204 No Content\r\nStream-Offset: {answer}\r\n\r\n"
        )?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `bodies` as PATCHes on one connection; returns each answer's head.
    fn patch_all(addr: std::net::SocketAddr, bodies: &[&[u8]]) -> Vec<String> {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
        let mut writer = stream.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let mut reader = BufReader::new(stream);
        let mut offset = 0;
        let mut answers = Vec::new();
        for body in bodies {
            write!(
                writer,
                "PATCH /v1/streams/o/c/s HTTP/1.1\r\nHost: x\r\nStream-Offset: {offset}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .unwrap_or_else(|e| panic!("{e}"));
            writer.write_all(body).unwrap_or_else(|e| panic!("{e}"));
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader
                    .read_line(&mut line)
                    .unwrap_or_else(|e| panic!("{e}"));
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            offset += body.len() as u64;
            answers.push(head);
        }
        answers
    }

    fn start(dir: Option<PathBuf>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        std::thread::spawn(move || serve(listener, dir));
        addr
    }

    #[test]
    fn answers_each_patch_with_the_new_offset() {
        let answers = patch_all(start(None), &[b"hello", &[7u8; 100_000]]);
        assert!(answers[0].starts_with("HTTP/1.1 204"), "{answers:?}");
        assert!(answers[0].contains("Stream-Offset: 5\r\n"), "{answers:?}");
        assert!(
            answers[1].contains("Stream-Offset: 100005\r\n"),
            "{answers:?}"
        );
    }

    #[test]
    fn with_a_directory_every_body_is_in_the_stream_file_before_its_answer() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let addr = start(Some(dir.path().to_path_buf()));
        let answers = patch_all(addr, &[b"abc", b"defg"]);
        assert!(answers[1].contains("Stream-Offset: 7\r\n"), "{answers:?}");
        let file = dir.path().join("v1_streams_o_c_s");
        assert_eq!(std::fs::read(file).unwrap_or_default(), b"abcdefg");
    }
}

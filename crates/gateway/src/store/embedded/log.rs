//! The write-ahead log: record framing, checks, and segment files.
//!
//! A record is a 16-byte header (magic, type, 3 zero bytes, payload length, crc32 over the first
//! 12 header bytes and the payload) followed by the payload. Every integer is little endian.
//! The log is the truth; the redb index only says where things are.
//!
//! A pad record (type 5, a payload of zeros) fills the gap before an append record whose data
//! a direct write takes from the request's buffer, so that data starts on a 4 KiB block of the
//! log (see [`Batch::push_append`]); readers skip it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::warn;

/// Largest single `write` of a batch. One 4 MiB `pwrite` into the page cache cost 3-5x the CPU
/// per GiB of the same bytes in 256 KiB pieces on the reference VM (and ran at a third of the
/// speed); the pieces still go under one `fdatasync` (bench/README.md, "Where the CPU goes").
const WRITE_PIECE: usize = 256 << 10;

/// Size of a record header.
pub(super) const HEADER_LEN: usize = 16;
/// Bytes of an append record before its data (header, key, offset, time).
pub(super) const APPEND_DATA_OFFSET: u64 = HEADER_LEN as u64 + 24;
/// Largest payload a valid record can have; anything bigger is treated as corruption.
pub(super) const MAX_PAYLOAD: u32 = 8 << 20;

pub(super) const MAGIC: u32 = 0x5347_5745; // "EWGS" read as little endian bytes
const CREATE: u8 = 1;
pub(super) const APPEND: u8 = 2;
const SEAL: u8 = 3;
const DELETE: u8 = 4;
const PAD: u8 = 5;

/// One log record, borrowing its variable part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Record<'a> {
    /// A stream comes into existence with a fresh numeric key.
    Create {
        key: u64,
        time: u64,
        name: &'a str,
    },
    /// `data` is the stream's bytes at `offset`.
    Append {
        key: u64,
        offset: u64,
        time: u64,
        data: &'a [u8],
    },
    Seal {
        key: u64,
        time: u64,
    },
    Delete {
        key: u64,
        time: u64,
    },
}

impl Record<'_> {
    /// Bytes this record takes in the log, header included.
    pub(super) fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    fn payload_len(&self) -> usize {
        match self {
            Record::Create { name, .. } => 16 + name.len(),
            Record::Append { data, .. } => 24 + data.len(),
            Record::Seal { .. } | Record::Delete { .. } => 16,
        }
    }

    /// Appends the framed record to `buf`.
    pub(super) fn encode(&self, buf: &mut Vec<u8>) {
        let data = self.data();
        self.encode_head(buf, crc32fast::hash(data));
        buf.extend_from_slice(data);
    }

    /// An append record's data; empty for the others (their payload is all fixed fields).
    fn data(&self) -> &[u8] {
        match self {
            Record::Append { data, .. } => data,
            _ => &[],
        }
    }

    /// Appends the record's header and payload to `buf`, except an append record's data: that
    /// is written from where it is (see [`Batch`]), and `data_crc`, its crc32 computed where
    /// it arrived, is combined into the record's checksum.
    fn encode_head(&self, buf: &mut Vec<u8>, data_crc: u32) {
        let start = buf.len();
        let (kind, a, b) = match *self {
            Record::Create { key, time, .. } => (CREATE, key, time),
            Record::Append { key, offset, .. } => (APPEND, key, offset),
            Record::Seal { key, time } => (SEAL, key, time),
            Record::Delete { key, time } => (DELETE, key, time),
        };
        buf.extend_from_slice(&MAGIC.to_le_bytes());
        buf.extend_from_slice(&[kind, 0, 0, 0]);
        // payload_len is bounded by the store's append limit, far below u32::MAX
        buf.extend_from_slice(&(self.payload_len() as u32).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&a.to_le_bytes());
        buf.extend_from_slice(&b.to_le_bytes());
        match *self {
            Record::Create { name, .. } => buf.extend_from_slice(name.as_bytes()),
            Record::Append { time, .. } => buf.extend_from_slice(&time.to_le_bytes()),
            Record::Seal { .. } | Record::Delete { .. } => {}
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&buf[start..start + 12]);
        hasher.update(&buf[start + HEADER_LEN..]);
        let data_len = self.data().len() as u64;
        if data_len > 0 {
            hasher.combine(&crc32fast::Hasher::new_with_initial_len(data_crc, data_len));
        }
        let crc = hasher.finalize();
        buf[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The records of one batch, as `write_durably` writes them: their heads (header and fixed
/// fields) encoded back to back, and the data of append records as the `Bytes` the requests
/// brought. Written buffered, nothing is copied in user space (the kernel copies into the
/// page cache); direct, everything but the whole blocks of [`Part::Aligned`] data is copied
/// into the staging buffer (see [`Direct::write`]).
#[derive(Default)]
pub(super) struct Batch {
    heads: Vec<u8>,
    /// The batch in log order.
    parts: Vec<Part>,
    len: usize,
    /// Where the batch starts in its segment, and whether its writes are direct (see
    /// [`Batch::begin`]).
    start: u64,
    direct: bool,
}

enum Part {
    /// `heads[start..end]`.
    Head {
        start: usize,
        end: usize,
    },
    Data(Bytes),
    /// Data that starts on a [`DIRECT_ALIGN`] block of the log and of memory: a direct write
    /// takes its whole blocks from where they are.
    Aligned(Bytes),
}

/// Append data at least this long is written from the request's buffer when it can be (see
/// [`Batch::push_append`]); shorter data is copied. The pad that places it is then at most
/// ~6 % of it (1.6 % for the 256 KiB chunks the gateway commits of a long body), and each such
/// buffer gives a direct write at least `ALIGNED_MIN - DIRECT_ALIGN` bytes, so one write of
/// [`DIRECT_PIECE`] bytes has under 140 buffers, within [`MAX_IOV`].
const ALIGNED_MIN: usize = 64 << 10;

impl Batch {
    /// Bytes the batch takes in the log.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn clear(&mut self) {
        self.heads.clear();
        self.parts.clear();
        self.len = 0;
    }

    /// Empties the batch for records that go at `start` of the segment, written with direct
    /// writes or buffered.
    pub(super) fn begin(&mut self, start: u64, direct: bool) {
        self.clear();
        self.start = start;
        self.direct = direct;
    }

    /// Adds a record, copying it whole (records without data, and tests); returns where in the
    /// batch it starts.
    pub(super) fn push(&mut self, record: &Record<'_>) -> usize {
        let at = self.len;
        let start = self.heads.len();
        record.encode(&mut self.heads);
        self.extend_head(start);
        at
    }

    /// Adds an append record whose data is `data` (the record borrows the same bytes), without
    /// copying them; `data_crc` is their crc32. Returns where in the batch the record starts.
    ///
    /// When the batch's writes are direct and `data` is at least [`ALIGNED_MIN`] bytes in a
    /// page-aligned buffer, a pad record first moves the record so that its data starts on a
    /// [`DIRECT_ALIGN`] block of the log: the direct write then takes the data's whole blocks
    /// from the request's buffer instead of copying them into its staging buffer (at 64
    /// streams that copy was a quarter of the writer thread's time). The pad is up to 4 KiB
    /// of the log per such record (and compaction drops it).
    ///
    /// Why 4 KiB and not the device's 512-byte logical block: placed on 512-byte boundaries,
    /// the guest's pages of data straddle the host's 4 KiB blocks (`physical_block_size` 4096
    /// on the reference VM), and 64 streams ingested at 0.46x the speed.
    pub(super) fn push_append(&mut self, record: &Record<'_>, data: Bytes, data_crc: u32) -> usize {
        debug_assert!(matches!(record, Record::Append { data: d, .. } if *d == &data[..]));
        let aligned = self.direct
            && data.len() >= ALIGNED_MIN
            && (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN);
        if aligned {
            let end = self.start + self.len as u64;
            let gap = pad_before(end, DIRECT_ALIGN as u64);
            if gap > 0 {
                let start = self.heads.len();
                encode_pad(&mut self.heads, gap as usize);
                self.extend_head(start);
            }
        }
        let at = self.len;
        let start = self.heads.len();
        record.encode_head(&mut self.heads, data_crc);
        self.extend_head(start);
        if !data.is_empty() {
            self.len += data.len();
            self.parts.push(if aligned {
                Part::Aligned(data)
            } else {
                Part::Data(data)
            });
        }
        at
    }

    /// Counts `heads[start..]` as the next part, merged into the previous head if adjacent.
    fn extend_head(&mut self, start: usize) {
        let end = self.heads.len();
        self.len += end - start;
        if let Some(Part::Head { end: last, .. }) = self.parts.last_mut()
            && *last == start
        {
            *last = end;
            return;
        }
        self.parts.push(Part::Head { start, end });
    }

    /// The batch's bytes in log order, as the slices they are in.
    fn slices(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iter().map(|part| self.slice(part))
    }

    fn slice<'a>(&'a self, part: &'a Part) -> &'a [u8] {
        match part {
            Part::Head { start, end } => &self.heads[*start..*end],
            Part::Data(data) | Part::Aligned(data) => &data[..],
        }
    }

    /// Writes the batch at `at` of `file` in `pwritev`s of at most [`WRITE_PIECE`] bytes.
    fn write_at(&self, file: &File, mut at: u64) -> io::Result<()> {
        let mut piece: Vec<IoSlice<'_>> = Vec::with_capacity(16);
        let mut piece_len = 0;
        for mut bytes in self.slices() {
            while !bytes.is_empty() {
                let (now, rest) = bytes.split_at(bytes.len().min(WRITE_PIECE - piece_len));
                piece.push(IoSlice::new(now));
                piece_len += now.len();
                bytes = rest;
                if piece_len == WRITE_PIECE || piece.len() == MAX_IOV {
                    write_all_vectored_at(file, &mut piece, at)?;
                    at += piece_len as u64;
                    piece.clear();
                    piece_len = 0;
                }
            }
        }
        write_all_vectored_at(file, &mut piece, at)
    }

    /// The batch as one buffer (tests).
    #[cfg(test)]
    fn to_vec(&self) -> Vec<u8> {
        self.slices().flatten().copied().collect()
    }
}

/// [`SegmentWriter::release_behind`] gives pages back this many bytes at a time at least.
const RELEASE_STEP: u64 = 4 << 20;

/// `posix_fadvise(POSIX_FADV_DONTNEED)` of synced bytes: advice, so a failure changes nothing
/// but the page cache's size and is ignored. `len` 0 means to the end of the file.
fn advise_dontneed(file: &File, from: u64, len: u64) {
    let (Ok(from), Ok(len)) = (libc::off_t::try_from(from), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), from, len, libc::POSIX_FADV_DONTNEED) };
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts writing back `len` bytes at `from`, without
/// waiting. Advice as far as durability goes (an fdatasync still follows), so an error is
/// ignored.
fn start_write_back(file: &File, from: u64, len: u64) {
    let (Ok(from), Ok(len)) = (libc::off64_t::try_from(from), libc::off64_t::try_from(len)) else {
        return;
    };
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    let _ =
        unsafe { libc::sync_file_range(file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Most buffers one `pwritev` takes (Linux's `IOV_MAX`).
const MAX_IOV: usize = 1024;

/// Writes all of `bufs` at `at` of `file` with `pwritev`, looping on short writes.
fn write_all_vectored_at(file: &File, mut bufs: &mut [IoSlice<'_>], mut at: u64) -> io::Result<()> {
    while !bufs.is_empty() {
        let count = bufs.len().min(MAX_IOV);
        let offset = libc::off_t::try_from(at)
            .map_err(|_| io::Error::other("segment offset out of range"))?;
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix (documented by std); the
        // slices borrow live buffers for the duration of the call; the descriptor is open.
        // `count` fits an i32 (at most MAX_IOV).
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                bufs.as_ptr().cast::<libc::iovec>(),
                count as libc::c_int,
                offset,
            )
        };
        let n = match usize::try_from(n) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => n,
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
        };
        at += n as u64;
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Decodes a payload whose header and checksum were already checked.
fn decode(kind: u8, payload: &[u8]) -> Option<Record<'_>> {
    let word = |i: usize| -> Option<u64> {
        let bytes = payload.get(i * 8..i * 8 + 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    let (a, b) = (word(0)?, word(1)?);
    match kind {
        CREATE => Some(Record::Create {
            key: a,
            time: b,
            name: std::str::from_utf8(&payload[16..]).ok()?,
        }),
        APPEND => Some(Record::Append {
            key: a,
            offset: b,
            time: word(2)?,
            data: &payload[24..],
        }),
        SEAL if payload.len() == 16 => Some(Record::Seal { key: a, time: b }),
        DELETE if payload.len() == 16 => Some(Record::Delete { key: a, time: b }),
        _ => None,
    }
}

/// The largest pad record [`pad_before`] makes.
pub(super) const PAD_MAX: u64 = (DIRECT_ALIGN + HEADER_LEN) as u64;

/// Bytes of pad record to put at log position `end` so that the next append record's data
/// starts on a multiple of `align`: 0 when it already does, else at least a header.
fn pad_before(end: u64, align: u64) -> u64 {
    let mut gap = (end + APPEND_DATA_OFFSET).next_multiple_of(align) - (end + APPEND_DATA_OFFSET);
    if gap > 0 && gap < HEADER_LEN as u64 {
        gap += align;
    }
    gap
}

/// Appends a pad record of `len` bytes in all (at least [`HEADER_LEN`]) to `buf`.
fn encode_pad(buf: &mut Vec<u8>, len: usize) {
    debug_assert!(len >= HEADER_LEN);
    let start = buf.len();
    let payload = len - HEADER_LEN;
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&[PAD, 0, 0, 0]);
    // at most two blocks, far below u32::MAX
    buf.extend_from_slice(&(payload as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.resize(start + len, 0);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&buf[start..start + 12]);
    hasher.update(&buf[start + HEADER_LEN..]);
    let crc = hasher.finalize();
    buf[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
}

/// Whether a record whose frame and checksum are good has a valid shape: one of the
/// [`Record`]s, or a pad (zeros), which readers skip.
fn well_formed(kind: u8, payload: &[u8]) -> bool {
    if kind == PAD {
        payload.iter().all(|&b| b == 0)
    } else {
        decode(kind, payload).is_some()
    }
}

/// Bits of a segment id that hold the segment's number; the generation is above them.
const NUMBER_BITS: u32 = 48;

/// A segment file: its place in the log (`number`) and how often compaction or repair rewrote
/// it (`generation`). The index names a segment by [`SegmentId::packed`], so a rewritten segment gets
/// new positions under a new id while the old file still exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct SegmentId {
    pub(super) number: u64,
    pub(super) generation: u64,
}

impl SegmentId {
    pub(super) fn new(number: u64, generation: u64) -> Self {
        SegmentId { number, generation }
    }

    pub(super) fn packed(self) -> u64 {
        (self.generation << NUMBER_BITS) | self.number
    }

    pub(super) fn unpack(packed: u64) -> Self {
        SegmentId {
            number: packed & ((1 << NUMBER_BITS) - 1),
            generation: packed >> NUMBER_BITS,
        }
    }

    /// The file name: `{number:020}.seg`, or `{number:020}.{generation}.seg` once rewritten.
    pub(super) fn file_name(self) -> String {
        if self.generation == 0 {
            format!("{:020}.seg", self.number)
        } else {
            format!("{:020}.{}.seg", self.number, self.generation)
        }
    }

    pub(super) fn path(self, dir: &Path) -> PathBuf {
        dir.join("segments").join(self.file_name())
    }
}

impl std::fmt::Display for SegmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// Segment files present (every generation), ascending by number then generation.
pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<SegmentId>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir.join("segments"))? {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        let (number, generation) = match stem.split_once('.') {
            Some((n, g)) => (n.parse::<u64>(), g.parse::<u64>()),
            None => (stem.parse::<u64>(), Ok(0)),
        };
        if let (Ok(number), Ok(generation)) = (number, generation)
            && number < (1 << NUMBER_BITS)
            && generation < (1 << (64 - NUMBER_BITS))
        {
            ids.push(SegmentId { number, generation });
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Makes a directory entry change (a created or removed file) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether an I/O error means "no space left" (full disk or quota).
pub(super) fn is_no_space(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Most zero bytes the writer keeps written ahead of the log's end ([`SegmentWriter::prepare`]):
/// a zero run at most this long ending the last segment is that prepared end, not damage.
pub(super) const PREPARED_MAX: u64 = 2 * PREPARE_STEP;

/// [`SegmentWriter::prepare`] writes zeros this many bytes at a time.
pub(super) const PREPARE_STEP: u64 = 512 << 10;

/// Direct writes (`O_DIRECT`) cover whole blocks of this size: their file offset, their length
/// and their buffer's address are multiples of it, which suits every logical block size in use.
const DIRECT_ALIGN: usize = 4096;

/// Bytes one direct write carries at most: the size of the buffer it is made from, a whole
/// batch (`max_batch_bytes`) but for one request past it. Each direct write waits for the
/// device: a 2 MiB batch in one write ran 1.1-1.3x as fast as in 1 MiB writes on the reference
/// VM, 1.5x as fast as in 256 KiB ones (bench/README.md, "Direct writes"). The buffer's pages
/// go back to the kernel when the store is idle (`writer::STAGING_IDLE`).
const DIRECT_PIECE: usize = 4 << 20;

/// Zeros to write the prepared end from, aligned for a direct write; a static, so reading it
/// maps no memory of ours.
#[repr(C, align(4096))]
struct Zeros([u8; WRITE_PIECE]);
static ZEROS: Zeros = Zeros([0; WRITE_PIECE]);

/// How a segment's bytes reach the disk, past the page cache: an `O_DIRECT` descriptor of the
/// file, the aligned buffer the writes are made from, and the log's last partial block.
///
/// Why: on the reference VM a buffered write costs its copy into the page cache, the pages'
/// allocation and their write-back at the sync; a direct write is one copy into a buffer that
/// is reused, and the device reads it from there. A 2 MiB batch and its fdatasync cost 0.10
/// CPU-s/GiB direct against 0.44 buffered, at 1.6x the speed; a lone 68 KiB one 1.46 against
/// 1.88 (bench/README.md, "Direct writes"). Readers still read through the page cache; Linux
/// keeps the two coherent (a direct write drops the cached pages it covers).
struct Direct {
    file: File,
    /// [`DIRECT_PIECE`] bytes aligned to [`DIRECT_ALIGN`], made at the first write and kept
    /// across segments: the bytes of the next write.
    staging: Option<Staging>,
    /// The log's bytes from its last block boundary to its end (`pos % DIRECT_ALIGN` of them):
    /// a direct write starts at that boundary, so it writes them again, unchanged, before the
    /// batch. A write torn by a crash leaves them as they were either way.
    tail: Vec<u8>,
    /// Bytes of the last write's staging buffer that are log (its last block's padding not).
    filled: usize,
    /// Bytes at the start of the staging buffer written since its pages were last given back.
    touched: usize,
}

/// A zeroed buffer of [`DIRECT_PIECE`] bytes aligned to [`DIRECT_ALIGN`]: an anonymous
/// mapping of its own, not the allocator's, so its pages are the kernel's zero page until first
/// written: a store that only ever writes small batches holds few of them.
struct Staging(std::ptr::NonNull<u8>);

impl Staging {
    fn new() -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is named.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                DIRECT_PIECE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // page-aligned, and mmap never returns null for a mapping it made
        std::ptr::NonNull::new(ptr.cast::<u8>())
            .map(Staging)
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is DIRECT_PIECE readable and writable bytes (zero-filled when
        // made), owned by `self` and borrowed mutably for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), DIRECT_PIECE) }
    }

    /// Gives the pages from `from` to `to` back to the kernel (they read as zeros again).
    fn release(&mut self, from: usize, to: usize) {
        let (from, to) = (from.min(DIRECT_PIECE), to.min(DIRECT_PIECE));
        if from < to {
            // SAFETY: a page-aligned range inside our own anonymous mapping, of which no slice
            // is borrowed; advice that only drops the range's contents.
            let _ = unsafe {
                libc::madvise(
                    self.0.as_ptr().add(from).cast(),
                    to - from,
                    libc::MADV_DONTNEED,
                )
            };
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length, unmapped once.
        unsafe { libc::munmap(self.0.as_ptr().cast(), DIRECT_PIECE) };
    }
}

// SAFETY: `Staging` owns its allocation exclusively, like a `Box<[u8]>`.
unsafe impl Send for Staging {}

impl Direct {
    /// Opens `path` for direct writes at `pos`, reading its tail from `file`; `None` where the
    /// filesystem refuses `O_DIRECT`.
    fn open(path: &Path, file: &File, pos: u64) -> io::Result<Option<Self>> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let direct = match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(direct) => direct,
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(err) => return Err(err),
        };
        let len = pos % DIRECT_ALIGN as u64;
        let mut tail = vec![0; len as usize];
        file.read_exact_at(&mut tail, pos - len)?;
        tail.reserve_exact(DIRECT_ALIGN - tail.len());
        Ok(Some(Direct {
            file: direct,
            staging: None,
            tail,
            filled: 0,
            touched: 0,
        }))
    }

    /// Writes the log's last partial block and then `batch` at `pos`, in direct writes of
    /// whole blocks (the last one padded with zeros); returns where the written blocks end.
    /// The new tail stays in the staging buffer until [`Direct::keep_tail`].
    ///
    /// A write covers at most [`DIRECT_PIECE`] bytes of the log, and byte `i` of it is byte `i`
    /// of the staging buffer, so block boundaries of the log are block boundaries of the
    /// buffer. Its bytes are copied into the staging buffer except the [`Part::Aligned`]
    /// data's blocks up to its last [`DIRECT_ALIGN`] boundary: those the write takes from the
    /// request's buffer (one `pwritev` of the staging runs and those buffers, in log order).
    /// So the log's last partial block, the next tail, is always in the staging buffer.
    fn write(&mut self, batch: &Batch, pos: u64) -> io::Result<u64> {
        let staging = match &mut self.staging {
            Some(staging) => staging,
            None => self.staging.insert(Staging::new()?),
        };
        let buf = staging.bytes();
        buf[..self.tail.len()].copy_from_slice(&self.tail);
        let mut out = DirectWrite {
            file: &self.file,
            buf,
            fill: self.tail.len(),
            run: 0,
            taken: Vec::new(),
            at: pos - self.tail.len() as u64,
            touched: &mut self.touched,
        };
        for part in &batch.parts {
            let mut bytes = batch.slice(part);
            if let Part::Aligned(_) = part {
                debug_assert!(out.fill.is_multiple_of(DIRECT_ALIGN));
                // the data's whole blocks
                let end = (out.fill + bytes.len()) / DIRECT_ALIGN * DIRECT_ALIGN;
                if end > out.fill && out.fill.is_multiple_of(DIRECT_ALIGN) {
                    let (whole, rest) = bytes.split_at(end - out.fill);
                    out.take(whole)?;
                    bytes = rest;
                }
            }
            out.copy(bytes)?;
        }
        let (at, fill) = out.finish()?;
        self.filled = fill;
        Ok(at)
    }

    /// After the last write and its sync succeeded: its last partial block is the new tail.
    fn keep_tail(&mut self) {
        self.tail.clear();
        if let Some(staging) = &mut self.staging {
            let filled = self.filled;
            let whole = filled - filled % DIRECT_ALIGN;
            self.tail.extend_from_slice(&staging.bytes()[whole..filled]);
        }
    }
}

/// One [`Direct::write`] under way: the staging buffer filled so far and the request buffers
/// taken as they are.
struct DirectWrite<'a, 'b> {
    file: &'a File,
    buf: &'a mut [u8],
    /// Bytes of the write so far (staging runs and taken buffers): where the next goes.
    fill: usize,
    /// Where the staging run not yet in `taken` starts.
    run: usize,
    /// The write's buffers before `run`, in log order: staging runs and taken buffers, as
    /// (staging start, staging end) or the buffer.
    taken: Vec<Piece<'b>>,
    /// The write's offset in the file.
    at: u64,
    touched: &'a mut usize,
}

enum Piece<'b> {
    Staging(usize, usize),
    Taken(&'b [u8]),
}

impl<'b> DirectWrite<'_, 'b> {
    /// Copies `bytes` into the staging buffer, writing each time it is full.
    fn copy(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(DIRECT_PIECE - self.fill);
            let (now, rest) = bytes.split_at(n);
            self.buf[self.fill..self.fill + n].copy_from_slice(now);
            self.fill += n;
            bytes = rest;
            if self.fill == DIRECT_PIECE {
                self.write()?;
            }
        }
        Ok(())
    }

    /// Adds `bytes` (whole blocks, aligned in memory) to the write as they are, writing each
    /// time the write is [`DIRECT_PIECE`] long.
    fn take(&mut self, mut bytes: &'b [u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(DIRECT_PIECE - self.fill);
            let (now, rest) = bytes.split_at(n);
            if self.run < self.fill {
                self.taken.push(Piece::Staging(self.run, self.fill));
            }
            self.taken.push(Piece::Taken(now));
            self.fill += n;
            self.run = self.fill;
            bytes = rest;
            if self.fill == DIRECT_PIECE {
                self.write()?;
            }
        }
        Ok(())
    }

    /// Writes the `fill` bytes at `at` (a multiple of [`DIRECT_ALIGN`] long) and starts the
    /// next write after them.
    fn write(&mut self) -> io::Result<()> {
        *self.touched = (*self.touched).max(self.fill);
        if self.taken.is_empty() {
            self.file.write_all_at(&self.buf[..self.fill], self.at)?;
        } else {
            if self.run < self.fill {
                self.taken.push(Piece::Staging(self.run, self.fill));
            }
            let buf = &*self.buf;
            let mut slices: Vec<IoSlice<'_>> = self
                .taken
                .iter()
                .map(|piece| {
                    IoSlice::new(match *piece {
                        Piece::Staging(from, to) => &buf[from..to],
                        Piece::Taken(bytes) => bytes,
                    })
                })
                .collect();
            write_all_vectored_at(self.file, &mut slices, self.at)?;
            self.taken.clear();
        }
        self.at += self.fill as u64;
        self.fill = 0;
        self.run = 0;
        Ok(())
    }

    /// Writes what is left, its last block padded with zeros; returns where the written blocks
    /// end and how many bytes of the staging buffer are log.
    fn finish(mut self) -> io::Result<(u64, usize)> {
        let fill = self.fill;
        let padded = fill.next_multiple_of(DIRECT_ALIGN);
        self.buf[fill..padded].fill(0);
        if padded > 0 {
            self.fill = padded;
            self.write()?;
        }
        Ok((self.at, fill))
    }
}

/// The segment being appended to.
pub(super) struct SegmentWriter {
    dir: PathBuf,
    id: SegmentId,
    file: File,
    /// Direct writes of the file, or `None`: buffered writes (the filesystem refused
    /// `O_DIRECT`, or the store was configured so).
    direct: Option<Direct>,
    /// Where the next record goes: the segment's valid length. Advances only after a write
    /// and its fdatasync both succeeded.
    pos: u64,
    /// The file's length when it is more than `pos`: `pos..prepared` are zeros written ahead
    /// of the log's end (see [`SegmentWriter::prepare`]), or a direct write's padding of its
    /// last block, durable once the next batch syncs.
    prepared: u64,
    /// The kernel was told it may drop the page cache of the segment before this position.
    released_to: u64,
}

impl SegmentWriter {
    /// Opens segment `id` for writing at `pos` (its valid length, after recovery), with direct
    /// writes if `direct` and the filesystem takes them. Bytes past `pos` are the prepared end
    /// recovery found (zeros, see [`scan::walk`]), kept as such.
    ///
    /// [`scan::walk`]: super::scan::walk
    pub(super) fn open(dir: &Path, id: SegmentId, pos: u64, direct: bool) -> io::Result<Self> {
        let path = id.path(dir);
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        if !existed {
            sync_dir(&dir.join("segments"))?;
        }
        let len = file.metadata()?.len();
        let direct = if direct {
            Direct::open(&path, &file, pos)?
        } else {
            None
        };
        Ok(SegmentWriter {
            dir: dir.to_owned(),
            id,
            file,
            direct,
            pos,
            prepared: len.max(pos),
            released_to: 0,
        })
    }

    pub(super) fn id(&self) -> SegmentId {
        self.id
    }

    pub(super) fn pos(&self) -> u64 {
        self.pos
    }

    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// Bytes of the direct-write staging buffer in use (written since last given back).
    pub(super) fn staging_touched(&self) -> usize {
        self.direct.as_ref().map_or(0, |d| d.touched)
    }

    /// Gives the staging buffer's pages back to the kernel (they read as zeros again), so an
    /// idle store holds none of them.
    pub(super) fn release_staging(&mut self) {
        if let Some(direct) = &mut self.direct
            && let Some(staging) = &mut direct.staging
            && direct.touched > 0
        {
            staging.release(0, direct.touched);
            direct.touched = 0;
        }
    }

    /// Whether writes go past the page cache (see [`Direct`]).
    pub(super) fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Writes the next batches direct or through the page cache (between batches; see
    /// `modes`). Both write the same log: to buffered, the direct descriptor and its staging
    /// buffer go (the log's last partial block is on disk, a buffered write at `pos` reads it
    /// back); to direct, the last partial block is read from the file as at open. Linux keeps
    /// the page cache coherent with direct writes (it writes back and drops the pages a
    /// direct write covers). Stays buffered where the filesystem refuses `O_DIRECT`.
    pub(super) fn set_direct(&mut self, direct: bool) -> io::Result<()> {
        if direct == self.direct.is_some() {
            return Ok(());
        }
        self.direct = if direct {
            Direct::open(&self.id.path(&self.dir), &self.file, self.pos)?
        } else {
            None
        };
        Ok(())
    }

    /// Writes `batch` at the end of the segment and fdatasyncs it once: in direct writes of
    /// whole blocks (see [`Direct`]), or buffered in pieces of at most [`WRITE_PIECE`]. On
    /// failure the segment is cut back to where it was (the bytes were never acknowledged), so
    /// the next write starts at a clean end; an error of that cut is returned as the second
    /// element: the tail is then unknown and the store must stop writing.
    pub(super) fn write_durably(
        &mut self,
        batch: &Batch,
    ) -> Result<(), (io::Error, Option<io::Error>)> {
        let end = self.pos + batch.len() as u64;
        let mut written = self.direct.as_mut().map(|d| d.write(batch, self.pos));
        if let Some(Err(err)) = &written
            && err.raw_os_error() == Some(libc::EINVAL)
        {
            // the filesystem took O_DIRECT at open but not these writes: buffered from now on
            warn!(error = %err, segment = %self.id, "store log: direct writes refused; writing through the page cache");
            self.direct = None;
            written = None;
        }
        let result = written
            .unwrap_or_else(|| batch.write_at(&self.file, self.pos).map(|()| end))
            .and_then(|written| self.file.sync_data().map(|()| written));
        match result {
            Ok(written) => {
                if let Some(direct) = &mut self.direct {
                    direct.keep_tail();
                }
                self.pos = end;
                self.prepared = self.prepared.max(written);
                Ok(())
            }
            Err(err) => {
                // the prepared zeros go too: the end is then plain again
                self.prepared = self.pos;
                let cut = self
                    .file
                    .set_len(self.pos)
                    .and_then(|()| self.file.sync_data())
                    .err();
                Err((err, cut))
            }
        }
    }

    /// Bytes written ahead of the log's end (zeros).
    pub(super) fn ahead(&self) -> u64 {
        self.prepared - self.pos
    }

    /// Writes [`PREPARE_STEP`] zero bytes past the file's end (from its next block boundary
    /// when writes are direct), without waiting for their sync: the next batch's fdatasync
    /// makes them durable with its own data, in the same wait. Buffered, their write-back is
    /// started now (`sync_file_range`); a direct write is on the device when it returns.
    ///
    /// Why: an fdatasync of a file that grew also writes the new size and block allocation, a
    /// separate I/O waited for; over blocks written before, it writes only the data. Then only
    /// one sync in [`PREPARE_STEP`] / batch size pays for the size. The device has no
    /// write-zeroes and unwritten extents (`fallocate`) still change metadata on their first
    /// write, so zeros are written for real, which doubles the bytes written: the writer
    /// prepares only while commits are small and slow (`Writer::wants_prepare`). Buffered, the
    /// pages stay cached, so a write ending inside one does not read it back first. After a
    /// crash the zeros (or, before that next sync, the old bytes of blocks allocated but not
    /// yet written) read as a tail the walker knows. On failure the file is cut back to where
    /// it was.
    pub(super) fn prepare(&mut self) -> io::Result<()> {
        let from = self.prepared;
        let (file, start) = match &self.direct {
            Some(direct) => (&direct.file, from.next_multiple_of(DIRECT_ALIGN as u64)),
            None => (&self.file, from),
        };
        let result = (|| {
            let mut at = start;
            while at < start + PREPARE_STEP {
                let n = (start + PREPARE_STEP - at).min(WRITE_PIECE as u64) as usize;
                file.write_all_at(&ZEROS.0[..n], at)?;
                at += n as u64;
            }
            if self.direct.is_none() {
                start_write_back(&self.file, start, PREPARE_STEP);
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.prepared = start + PREPARE_STEP;
                Ok(())
            }
            Err(err) => {
                let _ = self.file.set_len(from).and_then(|()| self.file.sync_data());
                Err(err)
            }
        }
    }

    /// Cuts the prepared zeros off, so the file ends where the log does.
    pub(super) fn trim(&mut self) -> io::Result<()> {
        if self.prepared > self.pos {
            self.file.set_len(self.pos)?;
            self.file.sync_data()?;
            self.prepared = self.pos;
        }
        Ok(())
    }

    /// Lets the kernel drop the cached pages of the synced log except its last `keep` bytes
    /// (in steps of [`RELEASE_STEP`]). Direct writes leave no pages behind: nothing to do.
    ///
    /// Why: pages given back are the pages the next writes get, warm and mapped. A log that only
    /// grows the page cache makes every write land in memory fresh to the kernel, whose copy
    /// then cost 2.4x the CPU per GiB (and 0.55x the speed) on the reference VM, where a new
    /// guest page faults in the hypervisor; it also fills a container's memory with file pages
    /// its limit then has to reclaim. Followers read the tail, which stays cached; older bytes
    /// come from the disk.
    pub(super) fn release_behind(&mut self, keep: u64) {
        if self.direct.is_some() {
            return;
        }
        let end = self.pos.saturating_sub(keep);
        if end >= self.released_to + RELEASE_STEP {
            advise_dontneed(&self.file, self.released_to, end - self.released_to);
            self.released_to = end;
        }
    }

    /// Starts the next segment. The caller has synced this one. Only the last segment may
    /// end in prepared zeros, so this one is trimmed first.
    pub(super) fn roll(&mut self) -> io::Result<()> {
        self.trim()?;
        let next = SegmentId::new(self.id.number + 1, 0);
        let next = SegmentWriter::open(&self.dir, next, 0, self.direct.is_some())?;
        let mut old = std::mem::replace(self, next);
        if let (Some(old), Some(new)) = (&mut old.direct, &mut self.direct) {
            new.staging = old.staging.take();
        }
        // the whole closed segment is synced: its pages may go (0 = to the end)
        advise_dontneed(&old.file, old.released_to, 0);
        Ok(())
    }
}

/// The type of the valid record at `pos` of `file` (`file_len` bytes), read into `payload`
/// with its frame, checksum and shape checked; `None` when none is there.
fn record_kind_at(
    file: &File,
    pos: u64,
    file_len: u64,
    payload: &mut Vec<u8>,
) -> io::Result<Option<u8>> {
    if pos + HEADER_LEN as u64 > file_len {
        return Ok(None);
    }
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, pos)?;
    let Some((len, crc)) = check_header(&header) else {
        return Ok(None);
    };
    if pos + HEADER_LEN as u64 + u64::from(len) > file_len {
        return Ok(None);
    }
    payload.resize(len as usize, 0);
    file.read_exact_at(payload, pos + HEADER_LEN as u64)?;
    let valid = checksum(&header, payload) == crc && well_formed(header[4], payload);
    Ok(valid.then_some(header[4]))
}

/// The first position after `from` where a valid record other than a pad starts, searching
/// the magic number and checking each candidate. For telling damage (valid records follow)
/// from a torn tail. A pad is no evidence of either: a torn write can leave one intact
/// between its torn blocks, and it holds nothing that was acknowledged.
pub(super) fn find_next_record(file: &File, from: u64, file_len: u64) -> io::Result<Option<u64>> {
    const BLOCK: usize = 1 << 20;
    let magic = MAGIC.to_le_bytes();
    let mut block = vec![0u8; BLOCK];
    let mut payload = Vec::new();
    let mut at = from + 1;
    while at + HEADER_LEN as u64 <= file_len {
        let n = (file_len - at).min(BLOCK as u64) as usize;
        file.read_exact_at(&mut block[..n], at)?;
        for i in 0..n.saturating_sub(3) {
            if block[i..i + 4] == magic {
                let candidate = at + i as u64;
                let kind = record_kind_at(file, candidate, file_len, &mut payload)?;
                if kind.is_some_and(|kind| kind != PAD) {
                    return Ok(Some(candidate));
                }
            }
        }
        // candidates starting in the last 3 bytes are checked with the next block
        at += n.saturating_sub(3).max(1) as u64;
    }
    Ok(None)
}

/// Where the run of zero bytes ending `file` at `file_len` starts, if it is at most `max`
/// bytes, looking no further back than `from`; `file_len` when the run is longer (or empty).
pub(super) fn zero_tail_start(file: &File, from: u64, file_len: u64, max: u64) -> io::Result<u64> {
    const BLOCK: u64 = 64 << 10;
    let floor = from.max(file_len.saturating_sub(max));
    let mut block = vec![0u8; BLOCK as usize];
    let mut end = file_len;
    while end > floor {
        let start = end.saturating_sub(BLOCK).max(floor);
        let buf = &mut block[..(end - start) as usize];
        file.read_exact_at(buf, start)?;
        if let Some(i) = buf.iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    // zeros all the way back to `floor`: a prepared end only if that is where the bytes start
    Ok(if floor == from { from } else { file_len })
}

/// Decodes a record whose frame was checked by [`read_record`]; `None`
/// for a pad.
pub(super) fn decode_checked(kind: u8, payload: &[u8]) -> Option<Record<'_>> {
    decode(kind, payload)
}

/// Checks an append record read in two parts: `head` (header, key, offset, time) and its
/// `data`. The read path calls it before serving any byte of the record.
pub(super) fn verify_append_parts(head: &[u8; APPEND_DATA_OFFSET as usize], data: &[u8]) -> bool {
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&head[..HEADER_LEN]);
    let Some((len, crc)) = check_header(&header) else {
        return false;
    };
    if header[4] != APPEND || len as usize != data.len() + 24 {
        return false;
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head[..12]);
    hasher.update(&head[HEADER_LEN..]);
    hasher.update(data);
    hasher.finalize() == crc
}

/// Magic, zero bytes and a plausible length; returns (payload length, crc).
fn check_header(header: &[u8; HEADER_LEN]) -> Option<(u32, u32)> {
    let field =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (magic, len, crc) = (field(0), field(8), field(12));
    if magic != MAGIC || header[5..8] != [0, 0, 0] || len > MAX_PAYLOAD {
        return None;
    }
    Some((len, crc))
}

fn checksum(header: &[u8; HEADER_LEN], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[..12]);
    hasher.update(payload);
    hasher.finalize()
}

/// Reads one record into `payload`. `Ok(None)` for a torn or corrupt record (or the end).
pub(super) fn read_record(reader: &mut impl Read, payload: &mut Vec<u8>) -> io::Result<Option<u8>> {
    let mut header = [0u8; HEADER_LEN];
    if !read_full(reader, &mut header)? {
        return Ok(None);
    }
    let Some((len, crc)) = check_header(&header) else {
        return Ok(None);
    };
    payload.resize(len as usize, 0);
    if !read_full(reader, payload)? {
        return Ok(None);
    }
    if checksum(&header, payload) != crc || !well_formed(header[4], payload) {
        return Ok(None);
    }
    Ok(Some(header[4]))
}

/// Fills `buf`; `Ok(false)` when the input ends first.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let records = [
            Record::Create {
                key: 7,
                time: 9,
                name: "a/b/c",
            },
            Record::Append {
                key: 7,
                offset: 3,
                time: 9,
                data: b"hello",
            },
            Record::Seal { key: 7, time: 10 },
            Record::Delete { key: 7, time: 11 },
        ];
        let mut buf = Vec::new();
        for record in &records {
            let before = buf.len();
            record.encode(&mut buf);
            assert_eq!(buf.len() - before, record.encoded_len());
        }
        let mut reader = &buf[..];
        let mut payload = Vec::new();
        for record in &records {
            let kind = read_record(&mut reader, &mut payload).unwrap_or(None);
            assert_eq!(kind.and_then(|k| decode(k, &payload)), Some(*record));
        }
        // a flipped bit anywhere is detected
        buf[HEADER_LEN + 3] ^= 1;
        assert_eq!(read_record(&mut &buf[..], &mut payload).ok(), Some(None));
    }

    #[test]
    fn segment_ids_and_names() {
        let id = SegmentId::new(42, 3);
        assert_eq!(SegmentId::unpack(id.packed()), id);
        assert_eq!(
            SegmentId::new(7, 0).packed(),
            7,
            "generation 0 is the plain number"
        );
        assert_eq!(id.file_name(), "00000000000000000042.3.seg");
        assert_eq!(
            SegmentId::new(42, 0).file_name(),
            "00000000000000000042.seg"
        );
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("segments")).unwrap();
        for name in [
            id.file_name(),
            "00000000000000000042.seg".into(),
            "x.seg.tmp".into(),
        ] {
            File::create(dir.path().join("segments").join(name)).unwrap();
        }
        let listed = list_segments(dir.path()).unwrap();
        assert_eq!(listed, [SegmentId::new(42, 0), id]);
    }

    #[test]
    fn the_next_valid_record_is_found_past_garbage() {
        let mut buf = Vec::new();
        Record::Seal { key: 1, time: 2 }.encode(&mut buf);
        let garbage_at = buf.len() as u64;
        buf.extend_from_slice(&MAGIC.to_le_bytes()); // a false start
        buf.extend_from_slice(&[0x5A; 300]);
        let next_at = buf.len() as u64;
        Record::Delete { key: 1, time: 3 }.encode(&mut buf);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        fs::write(&path, &buf).unwrap();
        let file = File::open(&path).unwrap();
        let len = buf.len() as u64;
        let mut payload = Vec::new();
        assert!(
            record_kind_at(&file, 0, len, &mut payload)
                .unwrap()
                .is_some()
        );
        assert!(
            record_kind_at(&file, garbage_at, len, &mut payload)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            find_next_record(&file, garbage_at, len).unwrap(),
            Some(next_at)
        );
        assert_eq!(find_next_record(&file, next_at, len).unwrap(), None);
    }

    #[test]
    fn a_batch_is_written_whole_in_order_and_its_records_check() {
        batch_written_whole(true);
        batch_written_whole(false);
    }

    /// The file's bytes, and whether the rest after `len` are zeros (a direct write's padding).
    fn log_bytes(path: &Path, len: usize, direct: bool) -> Vec<u8> {
        let mut bytes = std::fs::read(path).unwrap_or_else(|err| panic!("{err}"));
        let expect_len = if direct {
            len.next_multiple_of(DIRECT_ALIGN)
        } else {
            len
        };
        assert_eq!(bytes.len(), expect_len, "file length (direct: {direct})");
        assert!(bytes[len..].iter().all(|&b| b == 0), "padding is zeros");
        bytes.truncate(len);
        bytes
    }

    fn batch_written_whole(direct: bool) {
        let (dir, id, mut writer) = new_segment(direct);
        // data larger than a write piece, small data, an empty append: pieces split data and
        // heads at every boundary
        let sizes = [2 * WRITE_PIECE + 777, 100, 0, WRITE_PIECE - 40, 3];
        let datas: Vec<Bytes> = sizes
            .iter()
            .enumerate()
            .map(|(n, &len)| (0..len).map(|i| ((i * 7 + n) % 251) as u8).collect())
            .collect();
        let mut batch = Batch::default();
        let mut expected = Vec::new();
        let create = Record::Create {
            key: 1,
            time: 5,
            name: "a/b/c",
        };
        batch.push(&create);
        create.encode(&mut expected);
        let mut offset = 0;
        for data in &datas {
            let record = Record::Append {
                key: 1,
                offset,
                time: 6,
                data,
            };
            batch.push_append(&record, data.clone(), crc32fast::hash(data));
            record.encode(&mut expected);
            offset += data.len() as u64;
        }
        batch.push(&Record::Seal { key: 1, time: 7 });
        Record::Seal { key: 1, time: 7 }.encode(&mut expected);
        assert_eq!(batch.len(), expected.len());
        assert_eq!(batch.to_vec(), expected);
        for _ in 0..2 {
            if writer.write_durably(&batch).is_err() {
                panic!("write failed");
            }
        }
        assert_eq!(writer.pos(), 2 * expected.len() as u64);
        assert_eq!(writer.is_direct(), direct);
        // reopened where the log ends (mid-block): the next write keeps the bytes before it
        drop(writer);
        let mut writer = SegmentWriter::open(dir.path(), id, 2 * expected.len() as u64, direct)
            .unwrap_or_else(|err| panic!("{err}"));
        if writer.write_durably(&batch).is_err() {
            panic!("write failed");
        }
        let written = log_bytes(&id.path(dir.path()), 3 * expected.len(), direct);
        assert_eq!(written, expected.repeat(3));
        // every record's checksum holds (the combined crc equals the one-pass crc)
        let mut reader = &written[..];
        let mut payload = Vec::new();
        let mut records = 0;
        while let Some(_kind) =
            read_record(&mut reader, &mut payload).unwrap_or_else(|err| panic!("{err}"))
        {
            records += 1;
        }
        assert_eq!(records, 3 * (sizes.len() + 2));
        assert!(reader.is_empty());
    }

    #[test]
    fn zeros_written_ahead_are_overwritten_found_and_trimmed() {
        zeros_ahead(true);
        zeros_ahead(false);
    }

    fn zeros_ahead(direct: bool) {
        let (dir, id, mut writer) = new_segment(direct);
        let len = |w: &SegmentWriter| w.file().metadata().map(|m| m.len()).unwrap_or(0);
        writer.prepare().unwrap_or_else(|err| panic!("{err}"));
        writer.prepare().unwrap_or_else(|err| panic!("{err}"));
        assert_eq!((writer.ahead(), len(&writer)), (PREPARED_MAX, PREPARED_MAX));
        let mut batch = Batch::default();
        let data = Bytes::from(vec![0xA5u8; 5000]);
        let record = Record::Append {
            key: 1,
            offset: 0,
            time: 2,
            data: &data,
        };
        batch.push_append(&record, data.clone(), crc32fast::hash(&data));
        if writer.write_durably(&batch).is_err() {
            panic!("write failed");
        }
        let pos = writer.pos();
        assert_eq!(pos, batch.len() as u64);
        assert_eq!(
            (writer.ahead(), len(&writer)),
            (PREPARED_MAX - pos, PREPARED_MAX)
        );
        let file = File::open(id.path(dir.path())).unwrap_or_else(|err| panic!("{err}"));
        let found = |from, max| zero_tail_start(&file, from, PREPARED_MAX, max).ok();
        assert_eq!(
            found(0, PREPARED_MAX),
            Some(pos),
            "the log ends where the zeros start"
        );
        assert_eq!(found(pos, PREPARED_MAX), Some(pos));
        // a zero run longer than allowed is not a prepared end
        assert_eq!(found(0, PREPARED_MAX - pos - 1), Some(PREPARED_MAX));
        let mut payload = Vec::new();
        assert!(record_kind_at(&file, 0, pos, &mut payload).is_ok_and(|kind| kind.is_some()));
        writer.trim().unwrap_or_else(|err| panic!("{err}"));
        assert_eq!((writer.ahead(), len(&writer)), (0, pos));
        // a file ending in a non-zero byte has no zero tail
        let file = File::open(id.path(dir.path())).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(zero_tail_start(&file, 0, pos, PREPARED_MAX).ok(), Some(pos));
        // reopened with zeros past its end, the writer counts them as prepared
        drop(writer);
        let file = OpenOptions::new().write(true).open(id.path(dir.path()));
        file.and_then(|f| f.set_len(pos + 4096))
            .unwrap_or_else(|err| panic!("{err}"));
        let writer =
            SegmentWriter::open(dir.path(), id, pos, direct).unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(writer.ahead(), 4096);
    }

    #[test]
    fn direct_writes_ending_on_a_staging_boundary_and_rolling_keep_every_byte() {
        let (dir, id, mut writer) = new_segment(true);
        let mut expected = Vec::new();
        let write = |writer: &mut SegmentWriter, expected: &mut Vec<u8>, len: usize, byte: u8| {
            let data = Bytes::from(vec![byte; len]);
            let record = Record::Append {
                key: 1,
                offset: 0,
                time: 2,
                data: &data,
            };
            let mut batch = Batch::default();
            batch.push_append(&record, data.clone(), crc32fast::hash(&data));
            record.encode(expected);
            if writer.write_durably(&batch).is_err() {
                panic!("write failed");
            }
        };
        // one record of exactly the staging buffer, one ending 1 byte past it, one ending on
        // a block boundary, then a small one
        write(
            &mut writer,
            &mut expected,
            DIRECT_PIECE - APPEND_DATA_OFFSET as usize,
            1,
        );
        write(
            &mut writer,
            &mut expected,
            DIRECT_PIECE - APPEND_DATA_OFFSET as usize + 1,
            2,
        );
        let to_block = DIRECT_ALIGN - expected.len() % DIRECT_ALIGN;
        write(
            &mut writer,
            &mut expected,
            to_block + 3 * DIRECT_ALIGN - APPEND_DATA_OFFSET as usize,
            3,
        );
        assert_eq!(expected.len() % DIRECT_ALIGN, 0);
        write(&mut writer, &mut expected, 10, 4);
        let path = id.path(dir.path());
        assert_eq!(log_bytes(&path, expected.len(), true), expected);
        // rolled: the segment is cut to the log's end, the next starts empty and direct
        writer.roll().unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(std::fs::read(&path).ok(), Some(expected.clone()));
        assert!(writer.is_direct());
        expected.clear();
        write(&mut writer, &mut expected, 5000, 5);
        let next = SegmentId::new(2, 0).path(dir.path());
        assert_eq!(log_bytes(&next, expected.len(), true), expected);
    }
    /// Segment 1 of a fresh store directory (kept while the `TempDir` lives), open for
    /// writing at 0, with direct writes if `direct` and the filesystem takes them.
    pub(in crate::store::embedded) fn new_segment(
        direct: bool,
    ) -> (tempfile::TempDir, SegmentId, SegmentWriter) {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
        fs::create_dir_all(dir.path().join("segments")).unwrap_or_else(|err| panic!("{err}"));
        let id = SegmentId::new(1, 0);
        let writer =
            SegmentWriter::open(dir.path(), id, 0, direct).unwrap_or_else(|err| panic!("{err}"));
        (dir, id, writer)
    }

    /// `len` bytes of `byte` in a buffer whose address is a multiple of 4096.
    pub(in crate::store::embedded) fn aligned_bytes(len: usize, byte: u8) -> Bytes {
        let mut vec = vec![byte; len + 4096];
        let off = vec.as_ptr().align_offset(4096);
        vec[..off].fill(0xee);
        Bytes::from(vec).slice(off..off + len)
    }

    #[test]
    fn direct_writes_take_aligned_data_from_its_buffer_placed_by_pads() {
        let (dir, id, mut writer) = new_segment(true);
        assert!(writer.is_direct(), "this filesystem refuses O_DIRECT");
        // aligned chunks of several sizes (one spanning the staging buffer's end, one ending
        // on a block), unaligned and short data between them, a record without data
        let datas = [
            aligned_bytes(64 << 10, 1),
            Bytes::from(vec![2u8; 100]),
            aligned_bytes(20_000, 3),
            aligned_bytes(DIRECT_PIECE + 5000, 4),
            aligned_bytes(ALIGNED_MIN, 5),
            aligned_bytes(ALIGNED_MIN - 1, 6),
            aligned_bytes(3 * DIRECT_ALIGN - APPEND_DATA_OFFSET as usize, 7),
            aligned_bytes(100_003, 9),
            Bytes::from(vec![8u8; 3]),
        ];
        let mut expected = Vec::new();
        let mut starts = Vec::new();
        let mut offset = 0;
        for round in 0..3 {
            if round == 2 {
                // reopened where the log ends: the next write keeps the tail before it
                let pos = writer.pos();
                drop(writer);
                writer = SegmentWriter::open(dir.path(), id, pos, true)
                    .unwrap_or_else(|err| panic!("{err}"));
            }
            let mut batch = Batch::default();
            batch.begin(writer.pos(), true);
            batch.push(&Record::Seal { key: 9, time: 1 });
            for data in &datas {
                let record = Record::Append {
                    key: 1,
                    offset,
                    time: 6,
                    data,
                };
                let at = batch.push_append(&record, data.clone(), crc32fast::hash(data));
                starts.push(writer.pos() + at as u64 + APPEND_DATA_OFFSET);
                offset += data.len() as u64;
            }
            expected.extend_from_slice(&batch.to_vec());
            if writer.write_durably(&batch).is_err() {
                panic!("write failed");
            }
            assert_eq!(writer.pos(), expected.len() as u64);
        }
        let written = log_bytes(&id.path(dir.path()), expected.len(), true);
        assert!(
            written == expected,
            "the log holds other bytes than the batches"
        );
        // the long data that sat in aligned buffers starts on a block; pads are skipped
        for (i, start) in starts.iter().enumerate() {
            let data = &datas[i % datas.len()];
            let placed = start.is_multiple_of(DIRECT_ALIGN as u64);
            assert!(placed || data.len() < ALIGNED_MIN, "data {i} at {start}");
            assert_eq!(
                &written[*start as usize..*start as usize + data.len()],
                &data[..]
            );
        }
        let (mut reader, mut payload) = (&written[..], Vec::new());
        let (mut records, mut pads) = (Vec::new(), 0);
        while let Some(kind) =
            read_record(&mut reader, &mut payload).unwrap_or_else(|err| panic!("{err}"))
        {
            match decode_checked(kind, &payload) {
                Some(Record::Append { data, .. }) => records.push(data.to_vec()),
                Some(_) => {}
                None => pads += 1,
            }
        }
        assert!(reader.is_empty());
        assert!(pads >= 3, "{pads} pads");
        let sent: Vec<Vec<u8>> = (0..3)
            .flat_map(|_| datas.iter().map(|d| d.to_vec()))
            .collect();
        assert!(records == sent, "records read back differ");
        // a search for the next valid record passes the pad after the first seal: a pad is
        // no evidence of acknowledged bytes after damage
        let file = File::open(id.path(dir.path())).unwrap_or_else(|err| panic!("{err}"));
        let next =
            find_next_record(&file, 0, expected.len() as u64).unwrap_or_else(|err| panic!("{err}"));
        let first_append = starts[0] - APPEND_DATA_OFFSET;
        assert!(first_append > HEADER_LEN as u64 + 16, "a pad is there");
        assert_eq!(next, Some(first_append), "the first append");
    }
}

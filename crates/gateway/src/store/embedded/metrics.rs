//! Counters of the embedded store, rendered in the Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::metrics::{Histogram, write_counter, write_gauge};

/// What recovery did when the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Log records replayed into the index (those after the durable checkpoint).
    pub records: u64,
    /// Log bytes replayed.
    pub bytes: u64,
    /// Bytes of a torn last write cut from the log's end (copied to `quarantine/` first).
    pub truncated_bytes: u64,
    /// Milliseconds the recovery took.
    pub millis: u64,
}

/// Live counters, updated by the writer thread.
pub(super) struct Metrics {
    pub(super) batches: AtomicU64,
    /// Batches of one committed by the request's own task (the only append in flight).
    pub(super) inline_batches: AtomicU64,
    pub(super) fsyncs: AtomicU64,
    /// Trials of the other way of writing the log (`modes`).
    pub(super) write_trials: AtomicU64,
    /// Zero bytes written ahead of the log's end (`SegmentWriter::prepare`).
    pub(super) prepared_bytes: AtomicU64,
    pub(super) appended_bytes: AtomicU64,
    /// Pad records placing appends' data on a block (`log::Batch::push_append`).
    pub(super) padded_bytes: AtomicU64,
    pub(super) checkpoints: AtomicU64,
    /// Reads refused because a record failed its checksum.
    pub(super) corrupt_reads: AtomicU64,
    /// Appends refused because the disk is full.
    pub(super) no_space: AtomicU64,
    pub(super) compacted_segments: AtomicU64,
    pub(super) reclaimed_bytes: AtomicU64,
    pub(super) expired_streams: AtomicU64,
    /// Bytes of the direct-write staging buffer in use (its pages resident); a gauge.
    pub(super) staging_bytes: AtomicU64,
    /// 1 while the log is written with `O_DIRECT`, 0 through the page cache; a gauge.
    pub(super) direct_writes: AtomicU64,
    pub(super) batch_records: Histogram,
    pub(super) fsync_seconds: Histogram,
    /// Filled once at open.
    pub(super) recovery: RecoveryReport,
}

impl Metrics {
    pub(super) fn new(recovery: RecoveryReport) -> Self {
        Metrics {
            batches: AtomicU64::new(0),
            inline_batches: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            write_trials: AtomicU64::new(0),
            prepared_bytes: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
            padded_bytes: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            corrupt_reads: AtomicU64::new(0),
            no_space: AtomicU64::new(0),
            compacted_segments: AtomicU64::new(0),
            reclaimed_bytes: AtomicU64::new(0),
            expired_streams: AtomicU64::new(0),
            staging_bytes: AtomicU64::new(0),
            direct_writes: AtomicU64::new(0),
            batch_records: Histogram::new(&[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            fsync_seconds: Histogram::new(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            recovery,
        }
    }

    pub(super) fn write(&self, out: &mut String) {
        let counters = [
            (
                "batches_total",
                "group commits of the write-ahead log",
                &self.batches,
            ),
            (
                "inline_batches_total",
                "group commits of one append made by its own request, the only append in flight",
                &self.inline_batches,
            ),
            (
                "fsyncs_total",
                "fdatasync calls on log segments",
                &self.fsyncs,
            ),
            (
                "write_trials_total",
                "trials of the other way of writing the log (direct or through the page cache), \
                 kept when it wrote faster",
                &self.write_trials,
            ),
            (
                "prepared_bytes_total",
                "zero bytes written ahead of the log's end while batches are small, so a sync \
                 writes only data",
                &self.prepared_bytes,
            ),
            (
                "appended_bytes_total",
                "stream bytes appended",
                &self.appended_bytes,
            ),
            (
                "padded_bytes_total",
                "log bytes of pad records that place an append's data on a 4 KiB block, so a \
                 direct write takes it from the request's buffer",
                &self.padded_bytes,
            ),
            (
                "checkpoints_total",
                "durable index commits",
                &self.checkpoints,
            ),
            (
                "corrupt_reads_total",
                "reads refused because a stored record failed its checksum",
                &self.corrupt_reads,
            ),
            (
                "no_space_total",
                "appends refused because the disk is full",
                &self.no_space,
            ),
            (
                "compacted_segments_total",
                "segments rewritten or removed by compaction",
                &self.compacted_segments,
            ),
            (
                "reclaimed_bytes_total",
                "disk bytes given back by compaction",
                &self.reclaimed_bytes,
            ),
            (
                "expired_streams_total",
                "streams deleted by retention",
                &self.expired_streams,
            ),
        ];
        for (name, help, value) in counters {
            write_counter(
                out,
                &format!("engine_gateway_store_{name}"),
                help,
                value.load(Relaxed),
            );
        }
        self.batch_records.write(
            out,
            "engine_gateway_store_batch_records",
            "records per group commit",
        );
        self.fsync_seconds.write(
            out,
            "engine_gateway_store_fsync_seconds",
            "duration of one log fdatasync",
        );
        let recovery = [
            (
                "recovery_records",
                "log records replayed at open",
                self.recovery.records,
            ),
            (
                "recovery_bytes",
                "log bytes replayed at open",
                self.recovery.bytes,
            ),
            (
                "recovery_truncated_bytes",
                "bytes cut from a torn log tail at open",
                self.recovery.truncated_bytes,
            ),
        ];
        let gauges = [
            (
                "staging_bytes",
                "bytes of the log's direct-write buffer in use (given back after 500 ms unused)",
                self.staging_bytes.load(Relaxed),
            ),
            (
                "direct_writes",
                "1 while the log is written past the page cache (O_DIRECT), 0 through it",
                self.direct_writes.load(Relaxed),
            ),
        ];
        for (name, help, value) in recovery.into_iter().chain(gauges) {
            write_gauge(out, &format!("engine_gateway_store_{name}"), help, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let metrics = Metrics::new(RecoveryReport::default());
        metrics.fsync_seconds.observe(0.0007);
        metrics.fsync_seconds.observe(0.003);
        metrics.fsync_seconds.observe(5.0);
        let mut out = String::new();
        metrics.write(&mut out);
        for line in [
            "engine_gateway_store_fsync_seconds_bucket{le=\"0.001\"} 1",
            "engine_gateway_store_fsync_seconds_bucket{le=\"0.005\"} 2",
            "engine_gateway_store_fsync_seconds_bucket{le=\"+Inf\"} 3",
            "engine_gateway_store_fsync_seconds_count 3",
            "# TYPE engine_gateway_store_batches_total counter",
            "engine_gateway_store_recovery_truncated_bytes 0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
    }
}

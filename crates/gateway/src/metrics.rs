//! The gateway's own Prometheus metrics: request, byte and error counters, latency histograms.
//!
//! Hand-written on atomics: a fixed set of series known at compile time, no registry, no
//! allocation on the request path, no dependency.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::http::ErrorCode;

/// Routes, as a metric label. A fixed set so the series count is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Head,
    Append,
    Read,
    /// A GET with `follow=true`: a long poll, kept apart from plain reads.
    Follow,
    List,
    Delete,
    Ops,
    Debug,
    Other,
}

const ROUTES: [(Route, &str); 9] = [
    (Route::Head, "head"),
    (Route::Append, "append"),
    (Route::Read, "read"),
    (Route::Follow, "follow"),
    (Route::List, "list"),
    (Route::Delete, "delete"),
    (Route::Ops, "ops"),
    (Route::Debug, "debug"),
    (Route::Other, "other"),
];

/// Status codes counted separately; anything else is counted as its class (`2xx` ...).
const STATUSES: [u16; 17] = [
    200, 204, 400, 401, 403, 404, 405, 408, 409, 413, 415, 416, 429, 431, 500, 503, 0,
];
const OTHER_STATUS: usize = STATUSES.len() - 1;

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// A Prometheus histogram with fixed upper bounds (the gateway's and the stores' alike).
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, not cumulative; the last is +Inf.
    counts: Vec<AtomicU64>,
    /// Sum of observations in millionths, to keep it an integer that does not overflow.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Relaxed);
    }

    pub fn observe_duration(&self, elapsed: Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    pub fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.write_series(out, name, "");
    }

    /// The bucket, sum and count lines, with `labels` (`route="read",`, or empty) before `le`.
    pub fn write_series(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Relaxed);
            match self.bounds.get(i) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let labels = labels.trim_end_matches(',');
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {sum}\n{name}_count{braces} {cumulative}"
        );
    }
}

impl Default for Histogram {
    /// A latency histogram, in seconds.
    fn default() -> Self {
        Histogram::new(&LATENCY_BUCKETS)
    }
}

/// All of the gateway's own counters.
pub struct Metrics {
    requests: [[AtomicU64; STATUSES.len()]; ROUTES.len()],
    /// One counter per [`ErrorCode`], in the order of [`ErrorCode::ALL`].
    errors: [AtomicU64; ErrorCode::ALL.len()],
    pub appended_bytes: AtomicU64,
    pub read_bytes: AtomicU64,
    /// Connections refused at the cap (answered 503 without being served).
    pub rejected_connections: AtomicU64,
    pub open_connections: AtomicU64,
    /// Idle connections closed to make room for a new one at the cap.
    pub evicted_connections: AtomicU64,
    /// Connections cut because their peer stopped reading what it asked for.
    pub stalled_readers_cut: AtomicU64,
    /// Time for one `Store::append` call, i.e. from handing a chunk over to its commit.
    pub append_latency: Histogram,
    /// Request durations (to the answer's head), one histogram per route.
    request_latency: [Histogram; ROUTES.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Default::default(),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            appended_bytes: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            evicted_connections: AtomicU64::new(0),
            stalled_readers_cut: AtomicU64::new(0),
            append_latency: Histogram::default(),
            request_latency: Default::default(),
        }
    }
}

impl Metrics {
    pub fn request(&self, route: Route, status: u16, elapsed: Duration) {
        let r = ROUTES
            .iter()
            .position(|(x, _)| *x == route)
            .unwrap_or(ROUTES.len() - 1);
        let s = STATUSES
            .iter()
            .position(|&x| x == status)
            .unwrap_or(OTHER_STATUS);
        self.requests[r][s].fetch_add(1, Relaxed);
        self.request_latency[r].observe_duration(elapsed);
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition of everything above.
    pub fn write(&self, out: &mut String) {
        let name = "engine_gateway_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP requests answered\n# TYPE {name} counter"
        );
        for ((_, route), row) in ROUTES.iter().zip(&self.requests) {
            for (&status, n) in STATUSES.iter().zip(row) {
                let n = n.load(Relaxed);
                if n > 0 {
                    let status = if status == 0 {
                        "other".into()
                    } else {
                        status.to_string()
                    };
                    let _ = writeln!(out, "{name}{{route=\"{route}\",status=\"{status}\"}} {n}");
                }
            }
        }
        let name = "engine_gateway_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} error answers by code\n# TYPE {name} counter"
        );
        for (code, n) in ErrorCode::ALL.iter().zip(&self.errors) {
            let code = code.as_str();
            let _ = writeln!(out, "{name}{{code=\"{code}\"}} {}", n.load(Relaxed));
        }
        for (name, help, value) in [
            (
                "appended_bytes_total",
                "bytes committed by appends",
                &self.appended_bytes,
            ),
            (
                "read_bytes_total",
                "bytes sent to readers",
                &self.read_bytes,
            ),
            (
                "rejected_connections_total",
                "connections refused at the cap",
                &self.rejected_connections,
            ),
            (
                "evicted_connections_total",
                "idle connections closed to make room at the cap",
                &self.evicted_connections,
            ),
            (
                "stalled_readers_cut_total",
                "connections cut because the peer stopped reading",
                &self.stalled_readers_cut,
            ),
        ] {
            write_counter(
                out,
                &format!("engine_gateway_{name}"),
                help,
                value.load(Relaxed),
            );
        }
        write_gauge(
            out,
            "engine_gateway_open_connections",
            "client connections open",
            self.open_connections.load(Relaxed),
        );
        self.append_latency.write(
            out,
            "engine_gateway_append_seconds",
            "time from handing a chunk to the store to its durable commit",
        );
        let name = "engine_gateway_request_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} time to the answer's head, by route\n# TYPE {name} histogram"
        );
        for ((_, route), histogram) in ROUTES.iter().zip(&self.request_latency) {
            histogram.write_series(out, name, &format!("route=\"{route}\","));
        }
    }
}

/// Writes one counter with its HELP and TYPE lines.
pub fn write_counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

/// Writes one gauge with its HELP and TYPE lines.
pub fn write_gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition() {
        let m = Metrics::default();
        m.request(Route::Append, 204, Duration::from_millis(3));
        m.request(Route::Append, 418, Duration::from_millis(3));
        m.error(ErrorCode::OffsetMismatch);
        m.error(ErrorCode::Busy);
        m.append_latency
            .observe_duration(Duration::from_micros(700));
        let mut out = String::new();
        m.write(&mut out);
        assert!(out.contains("engine_gateway_requests_total{route=\"append\",status=\"204\"} 1"));
        assert!(out.contains("engine_gateway_requests_total{route=\"append\",status=\"other\"} 1"));
        assert!(out.contains("engine_gateway_errors_total{code=\"offset_mismatch\"} 1"));
        assert!(out.contains("engine_gateway_errors_total{code=\"busy\"} 1"));
        assert!(out.contains("engine_gateway_append_seconds_bucket{le=\"0.001\"} 1"));
        assert!(out.contains("engine_gateway_append_seconds_count 1"));
    }
}

//! A capture's timeline as a chart a person can read: allocated bytes and cgroup usage over
//! time, with the limit, the ladder's rungs and the capture moment marked. Plain hand-written
//! SVG (no script, no external font or style), so any browser or image viewer shows it.
//!
//! Earlier captures whose moment falls inside the timeline (the lower rungs of the same spike,
//! typically) are marked too, so the chart shows the ladder firing in order.
//!
//! The timeline holds up to minutes of 1 ms samples; the chart keeps, per pixel column, the
//! lowest and the highest sample, so a spike of one sample still reaches its height.

mod format;

use std::fmt::Write as _;

use crate::recorder::{CaptureInfo, Timeline, TimelineSample};

pub use format::utc_timestamp;
use format::{byte_unit, bytes_label, duration_label, escape, nice_step, number};

/// Renders `timeline` (read from `capture`'s `timeline.bin`) as a standalone SVG document.
/// `others` may list the other captures of the same directory: those taken within the
/// timeline's span are marked.
pub fn timeline_svg(timeline: &Timeline, capture: &CaptureInfo, others: &[CaptureInfo]) -> String {
    let chart = Chart::new(timeline, capture);
    let mut svg = String::with_capacity(64 * 1024);
    chart.write(&mut svg, timeline, capture);
    chart.other_captures(&mut svg, timeline, capture, others);
    svg.push_str("</svg>\n");
    svg
}

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 175.0;
const TOP: f64 = 92.0;
const BOTTOM: f64 = 62.0;
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;
const PLOT_H: f64 = HEIGHT - TOP - BOTTOM;

const ALLOCATED: &str = "#1f6fd1";
const CGROUP: &str = "#e07b00";
const LIMIT: &str = "#c62828";
const RUNG: &str = "#757575";
const FIRED: &str = "#8e24aa";
/// A white outline under a label drawn over lines, so it stays legible.
const HALO: &str = r#" stroke="white" stroke-width="4" paint-order="stroke""#;

/// Scales and units of one chart.
struct Chart {
    /// Seconds relative to the capture moment at the left and right edges.
    x_min: f64,
    x_max: f64,
    /// Bytes at the top edge (the bottom is 0).
    y_max: f64,
    /// Bytes per axis unit and its name.
    y_unit: (f64, &'static str),
    /// Axis unit of time: seconds or milliseconds.
    x_unit: (f64, &'static str),
    /// Lowest and highest cgroup usage when it is far above everything else (a cgroup shared
    /// with other processes): the axis then fits the process, and the cgroup line is clipped.
    cgroup_off_chart: Option<(u64, u64)>,
}

impl Chart {
    fn new(timeline: &Timeline, capture: &CaptureInfo) -> Self {
        let rel = |s: &TimelineSample| relative_secs(timeline, s);
        let first = timeline.samples.first().map_or(-1.0, rel);
        let last = timeline.samples.last().map_or(0.0, rel);
        let x_min = first.min(-timeline.resolution.as_secs_f64());
        let x_max = last.max(0.0) + (last.max(0.0) - x_min) * 0.02;
        let levels = [
            timeline.peak_allocated_bytes(),
            capture.limit_bytes.unwrap_or(0),
            capture.cgroup_limit_bytes.unwrap_or(0),
            capture.ladder_bytes.last().copied().unwrap_or(0),
        ];
        let mut top_level = levels.into_iter().max().unwrap_or(0).max(1024);
        let cgroup = timeline.samples.iter().filter_map(|s| s.cgroup_usage_bytes);
        let (low, high) = cgroup.fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let mut cgroup_off_chart = None;
        if high <= top_level / 2 * 3 {
            top_level = top_level.max(high);
        } else {
            cgroup_off_chart = Some((low, high));
        }
        let top_level = top_level as f64;
        let y_unit = byte_unit(top_level);
        let x_unit = if x_max - x_min < 2.0 {
            (1e-3, "ms")
        } else {
            (1.0, "s")
        };
        Self {
            x_min,
            x_max,
            y_max: top_level * 1.08,
            y_unit,
            x_unit,
            cgroup_off_chart,
        }
    }

    fn x(&self, secs: f64) -> f64 {
        LEFT + (secs - self.x_min) / (self.x_max - self.x_min) * PLOT_W
    }

    fn y(&self, bytes: f64) -> f64 {
        TOP + PLOT_H - bytes / self.y_max * PLOT_H
    }

    fn write(&self, svg: &mut String, timeline: &Timeline, capture: &CaptureInfo) {
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Verdana, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<clipPath id="plot"><rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}"/></clipPath>
"#
        );
        self.header(svg, timeline, capture);
        self.axes(svg, timeline);
        self.levels(svg, capture);
        self.series(svg, timeline);
        self.capture_mark(svg, capture);
    }

    /// Thin dashed lines at earlier captures inside the chart, with their triggers written
    /// upwards along the line; captures a few pixels apart share one label.
    fn other_captures(
        &self,
        svg: &mut String,
        timeline: &Timeline,
        capture: &CaptureInfo,
        others: &[CaptureInfo],
    ) {
        let mut marks: Vec<(f64, &str)> = others
            .iter()
            .filter(|o| o.name != capture.name)
            .filter_map(|o| {
                let secs = (o.unix_ms? as f64 - timeline.captured_unix_ms as f64) / 1000.0;
                let inside = secs >= self.x_min && secs < 0.0;
                inside.then(|| (self.x(secs), o.trigger.as_deref().unwrap_or("unknown")))
            })
            .collect();
        marks.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut groups: Vec<(f64, f64, Vec<&str>)> = Vec::new();
        for (x, trigger) in marks {
            match groups.last_mut() {
                Some((_, last, names)) if x - *last < 12.0 => {
                    *last = x;
                    names.push(trigger);
                }
                _ => groups.push((x, x, vec![trigger])),
            }
        }
        let bottom = TOP + PLOT_H;
        for (first, last, names) in groups {
            for x in [first, last] {
                let _ = writeln!(
                    svg,
                    r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom}" stroke="{RUNG}" stroke-width="1" stroke-dasharray="3 3"/>"#
                );
            }
            let what = if names.len() == 1 {
                "capture"
            } else {
                "captures"
            };
            let (x, y) = (first - 4.0, bottom - 6.0);
            let _ = writeln!(
                svg,
                r#"<text transform="translate({x:.1} {y:.1}) rotate(-90)" fill="{RUNG}" font-size="11"{HALO}>earlier {what}: {}</text>"#,
                escape(&names.join(", "))
            );
        }
    }

    fn header(&self, svg: &mut String, timeline: &Timeline, capture: &CaptureInfo) {
        let trigger = capture.trigger.as_deref().unwrap_or("unknown");
        let when = utc_timestamp(timeline.captured_unix_ms);
        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{} — trigger {} at {when} UTC</text>"#,
            escape(&capture.name),
            escape(trigger)
        );
        let span = timeline
            .samples
            .first()
            .map_or(0.0, |s| -relative_secs(timeline, s));
        let _ = writeln!(
            svg,
            r##"<text x="{LEFT}" y="44" fill="#444">memory of the process over the last {span:.1} s before the capture ({} samples, {})</text>"##,
            timeline.samples.len(),
            escape(&timeline.spacing()),
        );
        let mut x = LEFT;
        let mut item = |svg: &mut String, color: &str, dash: &str, label: &str| {
            let _ = writeln!(
                svg,
                r#"<line x1="{x}" y1="66" x2="{}" y2="66" stroke="{color}" stroke-width="2.5"{dash}/><text x="{}" y="70">{label}</text>"#,
                x + 24.0,
                x + 30.0
            );
            x += 44.0 + 6.4 * label.chars().count() as f64;
        };
        item(svg, ALLOCATED, "", "allocated (counting allocator)");
        if timeline
            .samples
            .iter()
            .any(|s| s.cgroup_usage_bytes.is_some())
        {
            let label = match self.cgroup_off_chart {
                Some((low, high)) if bytes_label(low) == bytes_label(high) => {
                    format!("cgroup usage (above the chart: {})", bytes_label(high))
                }
                Some((low, high)) => format!(
                    "cgroup usage (above the chart: {} to {})",
                    bytes_label(low),
                    bytes_label(high)
                ),
                None => "cgroup usage".to_string(),
            };
            item(svg, CGROUP, "", &label);
        }
        item(svg, LIMIT, "", "limit");
        item(svg, RUNG, r#" stroke-dasharray="6 4""#, "ladder rung");
        item(svg, FIRED, r#" stroke-dasharray="4 3""#, "capture");
    }

    fn axes(&self, svg: &mut String, timeline: &Timeline) {
        let (bottom, right) = (TOP + PLOT_H, LEFT + PLOT_W);
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}" fill="#fafafa" stroke="#999"/>"##
        );
        let (unit_bytes, unit) = self.y_unit;
        let step = nice_step(self.y_max / unit_bytes / 6.0);
        let mut v = 0.0;
        while v * unit_bytes <= self.y_max {
            let y = self.y(v * unit_bytes);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT - 6.0,
                y + 4.0,
                number(v, step)
            );
            v += step;
        }
        let _ = writeln!(
            svg,
            r#"<text transform="translate(22 {}) rotate(-90)" text-anchor="middle">memory ({unit})</text>"#,
            TOP + PLOT_H / 2.0
        );
        let (unit_secs, unit) = self.x_unit;
        let step = nice_step((self.x_max - self.x_min) / unit_secs / 8.0);
        // Ticks at multiples of the step, counted from the capture moment (0).
        let mut v = (self.x_min / unit_secs / step).ceil() * step;
        while v * unit_secs <= self.x_max {
            let x = self.x(v * unit_secs);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom}" stroke="#eeeeee"/><line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{}" stroke="#999"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                bottom + 5.0,
                bottom + 19.0,
                number(v, step)
            );
            v += step;
        }
        let start = timeline
            .samples
            .first()
            .map_or(timeline.captured_unix_ms, |s| timeline.unix_ms(s));
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">time relative to the capture ({unit}); the chart starts at {} UTC</text>"#,
            LEFT + PLOT_W / 2.0,
            bottom + 44.0,
            utc_timestamp(start)
        );
    }

    /// The limit and the rungs: horizontal lines labelled at the right.
    fn levels(&self, svg: &mut String, capture: &CaptureInfo) {
        let right = LEFT + PLOT_W;
        let mut labels: Vec<(f64, String, &'static str)> = Vec::new();
        let mut line = |svg: &mut String,
                        bytes: u64,
                        color: &'static str,
                        dash: &str,
                        label: String| {
            let y = self.y(bytes as f64);
            let _ = writeln!(
                svg,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="{color}" stroke-width="1.5"{dash}/>"#
            );
            labels.push((y, label, color));
        };
        let limit = capture.limit_bytes.or(capture.cgroup_limit_bytes);
        if let Some(limit) = limit {
            let source = capture.limit_source.as_deref().unwrap_or("limit");
            line(
                svg,
                limit,
                LIMIT,
                "",
                format!("limit {} ({source})", bytes_label(limit)),
            );
        }
        if let Some(cgroup) = capture.cgroup_limit_bytes.filter(|&c| Some(c) != limit) {
            line(
                svg,
                cgroup,
                LIMIT,
                r#" stroke-dasharray="2 3""#,
                format!("cgroup limit {}", bytes_label(cgroup)),
            );
        }
        for &rung in &capture.ladder_bytes {
            let fired = capture.trigger_bytes == Some(rung)
                && capture
                    .trigger
                    .as_deref()
                    .is_some_and(|t| t.starts_with("share"));
            let share = limit.map_or(String::new(), |l| {
                format!("{:.0} % = ", rung as f64 * 100.0 / l.max(1) as f64)
            });
            let (color, what) = if fired {
                (FIRED, "fired")
            } else {
                (RUNG, "rung")
            };
            line(
                svg,
                rung,
                color,
                r#" stroke-dasharray="6 4""#,
                format!("{what} {share}{}", bytes_label(rung)),
            );
        }
        // Labels at least 14 px apart, moved down from the top one when they would overlap.
        labels.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut last = f64::NEG_INFINITY;
        for (y, label, color) in labels {
            let y = (y + 4.0).max(last + 14.0);
            last = y;
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{y:.1}" fill="{color}">{}</text>"#,
                right + 6.0,
                escape(&label)
            );
        }
    }

    fn series(&self, svg: &mut String, timeline: &Timeline) {
        let points = self.downsample(timeline, |s| Some(s.allocated_bytes));
        self.polylines(svg, &points, ALLOCATED);
        let points = self.downsample(timeline, |s| s.cgroup_usage_bytes);
        self.polylines(svg, &points, CGROUP);
        if let Some(peak) = timeline
            .samples
            .iter()
            .max_by_key(|s| s.allocated_bytes)
            .filter(|s| s.allocated_bytes > 0)
        {
            let (x, y) = (
                self.x(relative_secs(timeline, peak)),
                self.y(peak.allocated_bytes as f64),
            );
            let anchor = if x > LEFT + PLOT_W * 0.75 {
                "end"
            } else {
                "start"
            };
            let dx = if anchor == "end" { -8.0 } else { 8.0 };
            let _ = writeln!(
                svg,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{ALLOCATED}"/><text x="{:.1}" y="{:.1}" text-anchor="{anchor}" fill="{ALLOCATED}" font-weight="bold"{HALO}>peak {}</text>"#,
                x + dx,
                (y - 6.0).max(TOP + 12.0),
                bytes_label(peak.allocated_bytes)
            );
        }
    }

    /// Per pixel column, the lowest and highest value in time order; `None` for a gap.
    fn downsample(
        &self,
        timeline: &Timeline,
        value: impl Fn(&TimelineSample) -> Option<u64>,
    ) -> Vec<Option<(f64, f64)>> {
        let mut out = Vec::new();
        // (column, (x, min), (x, max)) of the column being filled.
        let mut column: Option<Column> = None;
        let flush = |out: &mut Vec<Option<(f64, f64)>>, c: Column| {
            let (_, lo, hi) = c;
            let (a, b) = if lo.0 <= hi.0 { (lo, hi) } else { (hi, lo) };
            out.push(Some((a.0, self.y(a.1 as f64))));
            if b != a {
                out.push(Some((b.0, self.y(b.1 as f64))));
            }
        };
        for sample in &timeline.samples {
            let x = self.x(relative_secs(timeline, sample));
            let Some(v) = value(sample) else {
                if let Some(c) = column.take() {
                    flush(&mut out, c);
                }
                out.push(None);
                continue;
            };
            #[allow(clippy::cast_possible_truncation)] // pixel columns
            let col = x.floor() as i64;
            match &mut column {
                Some((c, lo, hi)) if *c == col => {
                    if v < lo.1 {
                        *lo = (x, v);
                    }
                    if v > hi.1 {
                        *hi = (x, v);
                    }
                }
                _ => {
                    if let Some(c) = column.take() {
                        flush(&mut out, c);
                    }
                    column = Some((col, (x, v), (x, v)));
                }
            }
        }
        if let Some(c) = column {
            flush(&mut out, c);
        }
        out
    }

    fn polylines(&self, svg: &mut String, points: &[Option<(f64, f64)>], color: &str) {
        for run in points.split(Option::is_none) {
            if run.is_empty() {
                continue;
            }
            let _ = write!(
                svg,
                r#"<polyline clip-path="url(#plot)" fill="none" stroke="{color}" stroke-width="1.8" stroke-linejoin="round" points=""#
            );
            for &(x, y) in run.iter().flatten() {
                let _ = write!(svg, "{x:.1},{y:.1} ");
            }
            svg.push_str("\"/>\n");
        }
    }

    fn capture_mark(&self, svg: &mut String, capture: &CaptureInfo) {
        let x = self.x(0.0);
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{}" stroke="{FIRED}" stroke-width="1.5" stroke-dasharray="4 3"/>"#,
            TOP + PLOT_H
        );
        let mut label = format!(
            "capture: {}",
            capture.trigger.as_deref().unwrap_or("unknown")
        );
        if let Some(latency) = capture.detection_latency {
            let _ = write!(
                label,
                ", seen {} after the crossing",
                duration_label(latency.as_secs_f64())
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="end" fill="{FIRED}"{HALO}>{}</text>"#,
            x - 5.0,
            TOP + 16.0,
            escape(&label)
        );
    }
}

/// A pixel column being filled: its index, and the (x, value) of its lowest and highest
/// samples.
type Column = (i64, (f64, u64), (f64, u64));

/// Seconds from the capture moment to `sample` (negative: before it).
fn relative_secs(timeline: &Timeline, sample: &TimelineSample) -> f64 {
    sample.at.as_secs_f64() - timeline.captured_at.as_secs_f64()
}

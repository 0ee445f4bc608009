//! Text for the timeline chart: axis units and ticks, byte and duration labels, UTC
//! timestamps, XML escaping.

/// The unit for an axis up to `bytes`: bytes per unit and its name.
pub(super) fn byte_unit(bytes: f64) -> (f64, &'static str) {
    if bytes >= 2.0 * 1024.0 * 1024.0 * 1024.0 {
        (1024.0 * 1024.0 * 1024.0, "GiB")
    } else if bytes >= 2.0 * 1024.0 * 1024.0 {
        (1024.0 * 1024.0, "MiB")
    } else {
        (1024.0, "KiB")
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
pub(super) fn nice_step(raw: f64) -> f64 {
    if raw.is_nan() || raw <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// A tick value with as many decimals as its step needs.
pub(super) fn number(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // small
        let d = (-step.log10()).ceil() as usize;
        d
    };
    let v = if v.abs() < step / 1e6 { 0.0 } else { v };
    format!("{v:.decimals$}")
}

pub(super) fn bytes_label(bytes: u64) -> String {
    crate::profile::human_bytes(i64::try_from(bytes).unwrap_or(i64::MAX)).to_string()
}

pub(super) fn duration_label(secs: f64) -> String {
    if secs >= 1.0 {
        format!("{secs:.1} s")
    } else if secs >= 1e-3 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{:.0} µs", secs * 1e6)
    }
}

pub use crate::utc::utc_timestamp;

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_and_ticks() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc_timestamp(1_709_210_096_789), "2024-02-29 12:34:56.789");
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(13.0), 20.0);
        assert_eq!(nice_step(40.0), 50.0);
        assert_eq!(number(2.5, 0.5), "2.5");
        assert_eq!(number(-10.0, 5.0), "-10");
        assert_eq!(escape("a<b&\"c\""), "a&lt;b&amp;&quot;c&quot;");
    }
}

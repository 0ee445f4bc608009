//! `Serialize` for memwatch's figures and status, `Deserialize` for [`Measure`] (feature
//! `serde`). The JSON shape is the one a memory endpoint serves (`memwatch-axum`'s
//! `/debug/memory`): byte figures end in `_bytes`, durations are whole µs or ms in the key's
//! unit, unknown figures are `null`, triggers and sources are their text forms.

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    CgroupMemory, CgroupVersion, CounterStats, JemallocStats, LastCapture, LimitSource, Measure,
    MemoryReport, MemorySnapshot, Postmortem, PreviousRun, ProcessMemory, RecorderState,
    RecorderStatus, Trigger,
};

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

macro_rules! as_display {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
as_display!(Trigger, LimitSource, Measure);

impl<'de> Deserialize<'de> for Measure {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Measure::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "measure {text:?} is not one of allocated, cgroup-usage, max"
            ))
        })
    }
}

impl Serialize for MemorySnapshot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(4))?;
        self.write_fields(&mut m)?;
        m.end()
    }
}

impl MemorySnapshot {
    fn write_fields<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        m.serialize_entry("jemalloc", &self.jemalloc)?;
        m.serialize_entry("allocator", &self.counter)?;
        m.serialize_entry("process", &self.process)?;
        m.serialize_entry("cgroup", &self.cgroup)
    }
}

impl Serialize for JemallocStats {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("JemallocStats", 6)?;
        st.serialize_field("allocated_bytes", &self.allocated)?;
        st.serialize_field("active_bytes", &self.active)?;
        st.serialize_field("resident_bytes", &self.resident)?;
        st.serialize_field("retained_bytes", &self.retained)?;
        st.serialize_field("mapped_bytes", &self.mapped)?;
        st.serialize_field("metadata_bytes", &self.metadata)?;
        st.end()
    }
}

impl Serialize for CounterStats {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("CounterStats", 2)?;
        st.serialize_field("allocated_bytes", &self.allocated_bytes)?;
        st.serialize_field("peak_bytes", &self.peak_bytes)?;
        st.end()
    }
}

impl Serialize for ProcessMemory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ProcessMemory", 3)?;
        st.serialize_field("resident_bytes", &self.resident_bytes)?;
        st.serialize_field("peak_resident_bytes", &self.peak_resident_bytes)?;
        st.serialize_field("threads", &self.threads)?;
        st.end()
    }
}

impl Serialize for CgroupMemory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("CgroupMemory", 7)?;
        let version: u8 = match self.version {
            CgroupVersion::V1 => 1,
            CgroupVersion::V2 => 2,
        };
        st.serialize_field("version", &version)?;
        st.serialize_field("path", &self.path.display().to_string())?;
        st.serialize_field("usage_bytes", &self.usage_bytes)?;
        st.serialize_field("working_set_bytes", &self.working_set_bytes())?;
        st.serialize_field("limit_bytes", &self.limit_bytes)?;
        st.serialize_field("peak_bytes", &self.peak_bytes)?;
        st.serialize_field("oom_kills", &self.oom_kills)?;
        st.end()
    }
}

impl Serialize for RecorderStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("RecorderStatus", 13)?;
        st.serialize_field("capture_dir", &self.capture_dir.display().to_string())?;
        st.serialize_field("limit_bytes", &self.limit_bytes)?;
        st.serialize_field("limit_source", &self.limit_source)?;
        st.serialize_field("armed_bytes", &self.armed_bytes)?;
        st.serialize_field("triggers_total", &self.triggers_total)?;
        st.serialize_field("captures_total", &self.captures_total)?;
        st.serialize_field("capture_failures_total", &self.capture_failures_total)?;
        st.serialize_field("last_failure", &self.last_failure)?;
        st.serialize_field("over_soft_limit", &self.over_soft_limit)?;
        st.serialize_field("soft_limit_entries_total", &self.soft_limit_entries_total)?;
        st.serialize_field("purges_total", &self.purges_total)?;
        st.serialize_field("samples_total", &self.samples_total)?;
        st.serialize_field("last_capture", &self.last_capture)?;
        st.end()
    }
}

impl Serialize for LastCapture {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("LastCapture", 8)?;
        st.serialize_field("path", &self.path.display().to_string())?;
        st.serialize_field("trigger", &self.trigger)?;
        st.serialize_field("measured_bytes", &self.measured_bytes)?;
        st.serialize_field("share", &self.share)?;
        st.serialize_field("unix_ms", &self.unix_ms)?;
        st.serialize_field("detection_latency_us", &self.detection_latency.map(micros))?;
        st.serialize_field("capture_ms", &millis(self.capture_duration))?;
        st.serialize_field("complete_ms", &millis(self.complete_duration))?;
        st.end()
    }
}

impl Serialize for Postmortem {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Postmortem", 9)?;
        st.serialize_field("summary", &self.to_string())?;
        st.serialize_field("incident", &self.has_incident())?;
        st.serialize_field("oom_kills", &self.oom_kills)?;
        st.serialize_field("captures", &self.captures)?;
        st.serialize_field("incomplete_captures", &self.incomplete)?;
        st.serialize_field("capture_dir", &self.capture_dir.display().to_string())?;
        let latest = self.latest.as_ref().map(|c| c.path.display().to_string());
        st.serialize_field("latest", &latest)?;
        st.serialize_field("previous_run", &self.previous_run)?;
        st.serialize_field("previous_run_captures", &self.previous_run_captures)?;
        st.end()
    }
}

impl Serialize for PreviousRun {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("PreviousRun", 9)?;
        st.serialize_field("pid", &self.pid)?;
        st.serialize_field("killed", &!self.clean)?;
        st.serialize_field("started_unix_ms", &self.started_unix_ms)?;
        st.serialize_field("ended_unix_ms", &self.ended_unix_ms)?;
        st.serialize_field("limit_bytes", &self.limit_bytes)?;
        st.serialize_field("limit_source", &self.limit_source)?;
        st.serialize_field("allocated_bytes", &self.allocated_bytes)?;
        st.serialize_field("cgroup_usage_bytes", &self.cgroup_usage_bytes)?;
        st.serialize_field("share", &self.share)?;
        st.end()
    }
}

impl Serialize for RecorderState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Running(status) => status.serialize(s),
            Self::Off(reason) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("off", reason)?;
                m.end()
            }
        }
    }
}

/// The snapshot's keys at the top level, then `recorder` and `postmortem`.
impl Serialize for MemoryReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(6))?;
        self.snapshot.write_fields(&mut m)?;
        m.serialize_entry("recorder", &self.recorder)?;
        m.serialize_entry("postmortem", &self.postmortem)?;
        m.end()
    }
}

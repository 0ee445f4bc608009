//! A flame graph of live bytes as a self-contained, interactive SVG: one box per function
//! in a stack, as wide as the bytes allocated under it, callers below callees. In a browser:
//! click a box to zoom into it, "Reset zoom" (or the title) to zoom out, "Search" (Ctrl-F or
//! `/`) highlights the frames matching a regular expression and shows the share of live bytes
//! they hold; hovering shows the full name, file:line and bytes. The title carries the time,
//! the executable's build id and the sampling rate.
//!
//! By default runs of async-runtime and std plumbing frames (tokio, hyper, axum, tower,
//! futures, `catch_unwind`, thread start, …) are collapsed into one `[runtime]` box each, so
//! the service's own frames are not lost among a hundred of them; [`FlameOptions::all_frames`]
//! shows every frame. The leaf (allocating) frame is always shown.
//!
//! Written here rather than taken from `inferno` (the same picture, with its own crates and
//! without file:line per frame); the script is ~150 lines of plain JavaScript. The cost is
//! bounded: one tree node per distinct stack prefix, and boxes narrower than `MIN_WIDTH`
//! pixels are not drawn.

use std::collections::HashMap;
use std::fmt::Write;

use super::Profile;
use super::advice::{OwnCode, crate_of};
use super::report::{human_bytes, stack_names};

const WIDTH: f64 = 1200.0;
const FRAME_HEIGHT: f64 = 17.0;
const MARGIN: f64 = 10.0;
const HEADER_HEIGHT: f64 = 62.0;
const FOOTER_HEIGHT: f64 = 24.0;
const FONT_WIDTH: f64 = 0.59 * 12.0;
/// A generic font stack: every platform has one of these.
const FONTS: &str = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', \
                     'DejaVu Sans', Arial, sans-serif";
/// Boxes narrower than this (pixels) are dropped with their children: they cannot be read,
/// and they would make a profile with many tiny stacks produce a huge SVG.
const MIN_WIDTH: f64 = 0.3;
/// The name of a box standing for a run of collapsed plumbing frames.
pub const COLLAPSED: &str = "[runtime]";

/// How to draw a flame graph.
#[derive(Debug, Clone, Default)]
pub struct FlameOptions {
    /// The first title line, e.g. `heap at capture-… (share-90)`.
    pub title: String,
    /// Show every frame instead of collapsing runtime plumbing.
    pub all_frames: bool,
}

/// The profile's live bytes as a flame graph SVG titled `title`, plumbing collapsed.
pub fn flamegraph_svg(profile: &Profile, title: &str) -> String {
    flamegraph_svg_with(
        profile,
        &FlameOptions {
            title: title.to_owned(),
            all_frames: false,
        },
    )
}

/// The profile's live bytes as a flame graph SVG.
pub fn flamegraph_svg_with(profile: &Profile, options: &FlameOptions) -> String {
    let own = OwnCode::default();
    let mut tree = Tree::default();
    for sample in &profile.samples {
        if sample.bytes <= 0 {
            continue;
        }
        let mut node = 0;
        tree.nodes[0].bytes += sample.bytes;
        let names = stack_names(profile, sample);
        let leaf = names.len().saturating_sub(1);
        let mut run: Vec<&str> = Vec::new();
        for (depth, (name, source)) in names.iter().rev().enumerate() {
            if !options.all_frames && depth != leaf && is_plumbing(name) {
                run.push(name);
                continue;
            }
            if !run.is_empty() {
                node = tree.child(node, COLLAPSED.to_owned(), None, sample.bytes);
                tree.nodes[node]
                    .collapsed
                    .extend(run.drain(..).map(plumbing_group));
            }
            node = tree.child(node, name.clone(), source.clone(), sample.bytes);
            tree.nodes[node].own = own.is_own_frame(name, source.as_deref());
        }
    }
    let total = tree.nodes[0].bytes.max(1);
    let depth = tree.depth(0);
    let height = HEADER_HEIGHT + (depth as f64 + 1.0) * FRAME_HEIGHT + FOOTER_HEIGHT + MARGIN;
    let mut svg = String::with_capacity(64 * 1024);
    let subtitle = subtitle(profile, total);
    let _ = write!(
        svg,
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg" data-width="{WIDTH}" data-pad="{MARGIN}" data-total="{total}">
<style>
text {{ font-family: {FONTS}; font-size: 12px; fill: #1a1a1a; }}
#title {{ font-size: 17px; font-weight: 600; cursor: pointer; }}
#subtitle {{ font-size: 12px; fill: #555; }}
.button {{ font-size: 13px; fill: #1a56b0; cursor: pointer; text-decoration: underline; }}
g.f {{ cursor: pointer; }}
g.f text {{ pointer-events: none; }}
g.f:hover rect {{ stroke: #000; stroke-width: 0.8; }}
g.f.parent rect {{ opacity: 0.55; }}
g.f.match rect {{ fill: #e040fb !important; }}
</style>
<rect x="0" y="0" width="100%" height="100%" fill="#fbfbf8"/>
<text id="title" x="{x}" y="22" text-anchor="middle">{t}</text>
<text id="subtitle" x="{x}" y="40" text-anchor="middle">{sub}</text>
<text id="reset-zoom" class="button" x="{MARGIN}" y="22" style="display:none">Reset zoom</text>
<text id="search" class="button" x="{sx}" y="22" text-anchor="end">Search</text>
<text id="reset-search" class="button" x="{sx}" y="40" text-anchor="end" style="display:none">Reset search</text>
<text id="matched" x="{sx}" y="{fy}" text-anchor="end"></text>
<text id="details" x="{MARGIN}" y="{fy}"></text>
<g id="frames">
"##,
        x = WIDTH / 2.0,
        sx = WIDTH - MARGIN,
        fy = height - 10.0,
        t = escape(&format!("{}: {} live", options.title, human_bytes(total))),
        sub = escape(&subtitle),
    );
    let scale = (WIDTH - 2.0 * MARGIN) / total as f64;
    let bottom = height - FOOTER_HEIGHT - MARGIN;
    // Iterative walk: (node, offset in bytes, level); the root is drawn as "all".
    let mut stack = vec![(0usize, 0i64, 0usize)];
    while let Some((node, offset, level)) = stack.pop() {
        let n = &tree.nodes[node];
        let w = n.bytes as f64 * scale;
        if w < MIN_WIDTH {
            continue;
        }
        let x = MARGIN + offset as f64 * scale;
        let y = bottom - (level as f64 + 1.0) * FRAME_HEIGHT;
        let name = if node == 0 { "all" } else { &n.name };
        let pct = n.bytes as f64 * 100.0 / total as f64;
        let source = n.source.as_deref().unwrap_or("");
        let mut tooltip = name.to_owned();
        if !source.is_empty() {
            let _ = write!(tooltip, "\n{source}");
        }
        let _ = write!(tooltip, "\n{} ({pct:.2} %)", human_bytes(n.bytes));
        if !n.collapsed.is_empty() {
            let mut groups: Vec<&str> = n.collapsed.clone();
            groups.sort_unstable();
            groups.dedup();
            let _ = write!(
                tooltip,
                "\n{} collapsed frames of {} (memwatch flamegraph --all-frames shows them)",
                n.collapsed.len(),
                groups.join(", ")
            );
        }
        let _ = writeln!(
            svg,
            r#"<g class="f" data-x="{offset}" data-w="{b}" data-l="{level}" data-n="{n_attr}" data-s="{s_attr}" data-b="{hb} ({pct:.2} %)"><title>{tip}</title><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h}" fill="{c}" rx="2"/><text x="{tx:.1}" y="{ty:.1}">{l}</text></g>"#,
            b = n.bytes,
            n_attr = escape(name),
            s_attr = escape(source),
            hb = human_bytes(n.bytes),
            tip = escape(&tooltip),
            h = FRAME_HEIGHT - 1.0,
            c = color(name, n.own),
            tx = x + 3.0,
            ty = y + FRAME_HEIGHT - 5.0,
            l = escape(&fit(name, w)),
        );
        let mut child_offset = offset;
        let mut children = n.children.clone();
        children.sort_by(|a, b| tree.nodes[*a].name.cmp(&tree.nodes[*b].name));
        for child in children {
            stack.push((child, child_offset, level + 1));
            child_offset += tree.nodes[child].bytes;
        }
    }
    svg.push_str("</g>\n<script type=\"text/ecmascript\"><![CDATA[\n");
    svg.push_str(SCRIPT);
    svg.push_str("]]></script>\n</svg>\n");
    svg
}

const SCRIPT: &str = include_str!("flamegraph.js");

/// The second title line: when, which build, how sampled, how much.
fn subtitle(profile: &Profile, total: i64) -> String {
    let mut parts = Vec::new();
    if profile.time_nanos > 0 {
        let ms = u64::try_from(profile.time_nanos / 1_000_000).unwrap_or(0);
        parts.push(format!("{} UTC", crate::utc_timestamp(ms)));
    }
    // The executable is the first mapping with a build id (the profile lists it first).
    match profile.mappings.iter().find(|m| m.build_id.is_some()) {
        Some(m) => {
            let file = m.path.rsplit('/').next().unwrap_or(&m.path);
            let id = m.build_id.as_deref().unwrap_or_default();
            parts.push(format!("{file} build id {}", &id[..id.len().min(16)]));
        }
        None => parts.push("build id unknown".to_owned()),
    }
    if profile.sample_period > 0 {
        parts.push(format!(
            "one sample per {} allocated on average",
            human_bytes(i64::try_from(profile.sample_period).unwrap_or(i64::MAX))
        ));
    }
    parts.push(format!("{} live (estimated)", human_bytes(total)));
    parts.join(" · ")
}

/// Frames that only carry a task or thread to the service's code.
fn is_plumbing(name: &str) -> bool {
    const CRATES: &[&str] = &[
        "tokio",
        "hyper",
        "hyper_util",
        "h2",
        "axum",
        "axum_core",
        "tower",
        "tower_http",
        "tower_layer",
        "tower_service",
        "futures",
        "futures_util",
        "futures_core",
        "futures_executor",
        "pin_project_lite",
        "tracing_futures",
    ];
    const PREFIXES: &[&str] = &[
        "std::panicking::",
        "std::panic::",
        "std::rt::",
        "std::sys::backtrace::__rust_begin_short_backtrace",
        "std::thread::",
        "<std::thread::",
        "<std::sys::thread::",
        "<core::panic::unwind_safe::AssertUnwindSafe",
        "core::ops::function::",
        "<alloc::boxed::Box<dyn core::ops::function::",
        "<&dyn core::ops::function::",
        "<core::pin::Pin<",
        "<core::future::",
        "core::future::",
        "<tracing::instrument::Instrumented",
        "__rust_try",
        "__libc_start",
        "_start",
        "start_thread",
        "clone3",
        "[libc",
        "libc.so",
    ];
    if name == "main" || PREFIXES.iter().any(|p| name.starts_with(p)) {
        return true;
    }
    crate_of(name).is_some_and(|c| CRATES.contains(&c))
}

/// What a collapsed frame is shown as in the tooltip: its crate, or `std` glue.
fn plumbing_group(name: &str) -> &'static str {
    match crate_of(name) {
        Some("tokio") => "tokio",
        Some("hyper" | "hyper_util" | "h2") => "hyper",
        Some("axum" | "axum_core") => "axum",
        Some("tower" | "tower_http" | "tower_layer" | "tower_service") => "tower",
        Some("futures" | "futures_util" | "futures_core" | "futures_executor") => "futures",
        Some("std" | "core" | "alloc") => "std",
        Some(_) => "other",
        None => "libc",
    }
}

/// The stacks merged into a prefix tree; node 0 is the root.
struct Tree {
    nodes: Vec<Node>,
    /// `(parent, name) → child`, to merge equal prefixes.
    index: HashMap<(usize, String), usize>,
}

struct Node {
    name: String,
    /// `file:line` of the heaviest stack through it.
    source: Option<String>,
    /// Heaviest single stack's bytes, to pick `source`.
    heaviest: i64,
    bytes: i64,
    children: Vec<usize>,
    /// The service's own code (drawn in its own color).
    own: bool,
    /// For a [`COLLAPSED`] box: the group of each frame it stands for.
    collapsed: Vec<&'static str>,
}

impl Node {
    fn new(name: String) -> Self {
        Node {
            name,
            source: None,
            heaviest: 0,
            bytes: 0,
            children: Vec::new(),
            own: false,
            collapsed: Vec::new(),
        }
    }
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            nodes: vec![Node::new(String::new())],
            index: HashMap::new(),
        }
    }
}

impl Tree {
    /// The child `name` of `parent` (created when new), with `bytes` more under it.
    fn child(&mut self, parent: usize, name: String, source: Option<String>, bytes: i64) -> usize {
        let child = match self.index.get(&(parent, name.clone())) {
            Some(&child) => child,
            None => {
                let child = self.nodes.len();
                self.nodes.push(Node::new(name.clone()));
                self.nodes[parent].children.push(child);
                self.index.insert((parent, name), child);
                child
            }
        };
        let node = &mut self.nodes[child];
        node.bytes += bytes;
        if bytes > node.heaviest {
            node.heaviest = bytes;
            node.source = source;
        }
        child
    }

    fn depth(&self, root: usize) -> usize {
        let mut deepest = 0;
        let mut stack = vec![(root, 0)];
        while let Some((node, d)) = stack.pop() {
            deepest = deepest.max(d);
            stack.extend(self.nodes[node].children.iter().map(|&c| (c, d + 1)));
        }
        deepest
    }
}

/// The name cut to what fits in `width` pixels, with ".." when cut (the script does the same
/// after a zoom).
fn fit(name: &str, width: f64) -> String {
    let room = ((width - 6.0) / FONT_WIDTH).floor();
    if room < 3.0 {
        return String::new();
    }
    let room = room as usize;
    if name.chars().count() <= room {
        return name.to_owned();
    }
    let mut cut: String = name.chars().take(room - 2).collect();
    cut.push_str("..");
    cut
}

/// A color derived from the name, stable across profiles: the service's own code in warm
/// orange-red, libraries in pale yellow, collapsed plumbing in grey.
fn color(name: &str, own: bool) -> String {
    if name == COLLAPSED {
        return "rgb(200,200,200)".to_owned();
    }
    let hash = name.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    if own {
        let g = 90 + (hash % 70);
        let b = 40 + ((hash >> 8) % 40);
        format!("rgb(235,{g},{b})")
    } else {
        let r = 225 + (hash % 30);
        let g = 195 + ((hash >> 8) % 45);
        let b = 90 + ((hash >> 16) % 50);
        format!("rgb({r},{g},{b})")
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Frame, Location, Sample};
    use super::*;

    fn frame(name: &str) -> Location {
        Location {
            address: 0,
            mapping: None,
            frames: vec![Frame {
                function: name.into(),
                file: Some("src/lib.rs".into()),
                line: 9,
            }],
        }
    }

    #[test]
    fn svg_has_a_box_per_frame_and_escapes_names() {
        let profile = Profile {
            locations: vec![frame("<Vec<u8>>::leak"), frame("svc::run"), frame("tiny")],
            samples: vec![
                Sample {
                    locations: vec![0, 1],
                    objects: 1,
                    bytes: 64 << 20,
                },
                Sample {
                    locations: vec![2, 1],
                    objects: 1,
                    bytes: 1,
                },
            ],
            sample_period: 512 << 10,
            ..Profile::default()
        };
        let svg = flamegraph_svg(&profile, "heap");
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("&lt;Vec&lt;u8&gt;&gt;::leak"));
        assert!(svg.contains("<title>svc::run\nsrc/lib.rs:9\n64.0 MiB (100.00 %)</title>"));
        assert!(svg.contains("one sample per 512.0 KiB allocated on average"));
        assert!(svg.contains("sans-serif") && svg.contains("function zoom("));
        assert!(!svg.contains("tiny"), "boxes under MIN_WIDTH are dropped");
        assert_eq!(svg.matches("<rect").count(), 4); // background, all, run, leak
        assert_eq!(fit("abcdefghij", 40.0), "ab..");
    }

    #[test]
    fn runtime_plumbing_is_collapsed_unless_asked() {
        let names = [
            "alloc::vec::Vec::with_capacity",
            "svc::http::auth",
            "tokio::runtime::task::raw::poll",
            "std::panicking::catch_unwind",
            "tokio::runtime::task::harness::poll_future",
            "svc::main",
            "std::rt::lang_start",
            "_start",
        ];
        let profile = Profile {
            locations: names.iter().map(|n| frame(n)).collect(),
            samples: vec![Sample {
                locations: (0..names.len()).collect(),
                objects: 1,
                bytes: 1 << 20,
            }],
            ..Profile::default()
        };
        let svg = flamegraph_svg(&profile, "heap");
        assert!(!svg.contains("tokio::runtime"), "{svg}");
        assert_eq!(svg.matches(r#"data-n="[runtime]""#).count(), 2);
        assert!(svg.contains("3 collapsed frames of std, tokio"));
        assert!(svg.contains(r#"data-n="svc::http::auth""#));
        let all = flamegraph_svg_with(
            &profile,
            &FlameOptions {
                title: "heap".into(),
                all_frames: true,
            },
        );
        assert!(all.contains("tokio::runtime::task::raw::poll"));
        assert!(!all.contains("[runtime]"));
    }
}

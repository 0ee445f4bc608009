//! A flame graph of live bytes as a self-contained SVG (no script): one box per function in
//! a stack, as wide as the bytes allocated under it, callers below callees. Hover shows the
//! full name and figures.
//!
//! Written here rather than taken from `inferno` (a dozen crates for the same picture); the
//! cost is bounded: one tree node per distinct stack prefix, and boxes narrower than
//! `MIN_WIDTH` pixels are not drawn.

use std::collections::HashMap;
use std::fmt::Write;

use super::Profile;
use super::report::{human_bytes, stack_names};

const WIDTH: f64 = 1200.0;
const FRAME_HEIGHT: f64 = 16.0;
const MARGIN: f64 = 10.0;
const TITLE_HEIGHT: f64 = 30.0;
const FONT_WIDTH: f64 = 6.6;
/// Boxes narrower than this (pixels) are dropped with their children: they cannot be read,
/// and they would make a profile with many tiny stacks produce a huge SVG.
const MIN_WIDTH: f64 = 0.3;

/// The profile's live bytes as a flame graph SVG titled `title`.
pub fn flamegraph_svg(profile: &Profile, title: &str) -> String {
    let mut tree = Tree::default();
    for sample in &profile.samples {
        if sample.bytes <= 0 {
            continue;
        }
        let mut node = 0;
        tree.nodes[0].bytes += sample.bytes;
        for (name, _) in stack_names(profile, sample).into_iter().rev() {
            node = tree.child(node, name);
            tree.nodes[node].bytes += sample.bytes;
        }
    }
    let total = tree.nodes[0].bytes.max(1);
    let depth = tree.depth(0);
    let height = TITLE_HEIGHT + (depth as f64 + 1.0) * FRAME_HEIGHT + 2.0 * MARGIN;
    let mut svg = String::with_capacity(64 * 1024);
    let _ = write!(
        svg,
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="100%" height="100%" fill="#f8f8f8"/>
<text x="{x}" y="20" font-family="Verdana" font-size="15" text-anchor="middle">{t}</text>
<g font-family="Verdana" font-size="11">
"##,
        x = WIDTH / 2.0,
        t = escape(&format!("{title}: {} live", human_bytes(total)))
    );
    let scale = (WIDTH - 2.0 * MARGIN) / total as f64;
    // Iterative walk: (node, x, level); the root is drawn as "all".
    let mut stack = vec![(0usize, MARGIN, 0usize)];
    while let Some((node, x, level)) = stack.pop() {
        let n = &tree.nodes[node];
        let w = n.bytes as f64 * scale;
        if w < MIN_WIDTH {
            continue;
        }
        let y = height - MARGIN - (level as f64 + 1.0) * FRAME_HEIGHT;
        let name = if node == 0 { "all" } else { &n.name };
        let pct = n.bytes as f64 * 100.0 / total as f64;
        let label = fit(name, w);
        let _ = writeln!(
            svg,
            r#"<g><title>{} ({}, {pct:.2}%)</title><rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h}" fill="{c}" rx="2"/><text x="{tx:.1}" y="{ty:.1}">{l}</text></g>"#,
            escape(name),
            human_bytes(n.bytes),
            h = FRAME_HEIGHT - 1.0,
            c = color(name),
            tx = x + 3.0,
            ty = y + FRAME_HEIGHT - 4.5,
            l = escape(&label),
        );
        let mut child_x = x;
        let mut children = n.children.clone();
        children.sort_by(|a, b| tree.nodes[*a].name.cmp(&tree.nodes[*b].name));
        for child in children {
            stack.push((child, child_x, level + 1));
            child_x += tree.nodes[child].bytes as f64 * scale;
        }
    }
    svg.push_str("</g>\n</svg>\n");
    svg
}

/// The stacks merged into a prefix tree; node 0 is the root.
struct Tree {
    nodes: Vec<Node>,
    /// `(parent, name) → child`, to merge equal prefixes.
    index: HashMap<(usize, String), usize>,
}

struct Node {
    name: String,
    bytes: i64,
    children: Vec<usize>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            nodes: vec![Node {
                name: String::new(),
                bytes: 0,
                children: Vec::new(),
            }],
            index: HashMap::new(),
        }
    }
}

impl Tree {
    fn child(&mut self, parent: usize, name: String) -> usize {
        if let Some(&child) = self.index.get(&(parent, name.clone())) {
            return child;
        }
        let child = self.nodes.len();
        self.nodes.push(Node {
            name: name.clone(),
            bytes: 0,
            children: Vec::new(),
        });
        self.nodes[parent].children.push(child);
        self.index.insert((parent, name), child);
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

/// The name cut to what fits in `width` pixels, with ".." when cut.
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

/// A warm color derived from the name, stable across profiles.
fn color(name: &str) -> String {
    let hash = name.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    let r = 205 + (hash % 50);
    let g = (hash >> 8) % 230;
    let b = (hash >> 16) % 55;
    format!("rgb({r},{g},{b})")
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

    #[test]
    fn svg_has_a_box_per_frame_and_escapes_names() {
        let frame = |name: &str| Location {
            address: 0,
            mapping: None,
            frames: vec![Frame {
                function: name.into(),
                file: None,
                line: 0,
            }],
        };
        let profile = Profile {
            locations: vec![frame("<Vec<u8>>::leak"), frame("main"), frame("tiny")],
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
            ..Profile::default()
        };
        let svg = flamegraph_svg(&profile, "heap");
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("&lt;Vec&lt;u8&gt;&gt;::leak"));
        assert!(svg.contains("<title>main (64.0 MiB, 100.00%)</title>"));
        assert!(!svg.contains("tiny"), "boxes under MIN_WIDTH are dropped");
        assert_eq!(svg.matches("<rect").count(), 4); // background, all, main, leak
        assert_eq!(fit("abcdefghij", 40.0), "abc..");
    }
}

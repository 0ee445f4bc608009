//! The README's configuration block is the code's defaults, and names every setting: checked
//! here so the two cannot drift apart again.
//!
//! The settings the code accepts are listed by serde itself: a probe key in each table makes
//! `deny_unknown_fields` answer with the names it expects.

use std::collections::BTreeSet;

use super::*;

const README: &str = include_str!("../../../../README.md");

/// The first ```toml block of the README's "## Configuration" section.
fn readme_block() -> &'static str {
    let section = &README[README
        .find("## Configuration")
        .expect("README has ## Configuration")..];
    let start = section.find("```toml\n").expect("a ```toml block") + "```toml\n".len();
    let len = section[start..].find("```").expect("the block ends");
    &section[start..start + len]
}

/// The keys `deny_unknown_fields` expects in the table at `path` (`[]` is the top level).
fn expected_keys(path: &[&str]) -> Vec<String> {
    let mut text = String::new();
    if !path.is_empty() {
        text.push_str(&format!("[{}]\n", path.join(".")));
    }
    text.push_str("zz_probe = 1\n");
    let err = match toml::from_str::<FileConfig>(&text) {
        Ok(_) => panic!("{path:?} accepted an unknown key"),
        Err(err) => err.to_string(),
    };
    let Some(list) = err
        .split("expected one of ")
        .nth(1)
        .or_else(|| err.split("expected ").nth(1))
    else {
        return Vec::new();
    };
    list.lines()
        .next()
        .unwrap_or("")
        .split(',')
        .filter_map(|name| {
            let name = name.trim().trim_matches('`');
            (!name.is_empty() && name != "zz_probe").then(|| name.to_owned())
        })
        .collect()
}

/// Whether `key` of the table at `path` is itself a table (a section).
fn is_section(path: &[&str], key: &str) -> bool {
    let mut full: Vec<&str> = path.to_vec();
    full.push(key);
    let text = format!("[{}]\nzz_probe = 1\n", full.join("."));
    toml::from_str::<FileConfig>(&text)
        .err()
        .is_some_and(|err| err.to_string().contains("unknown field"))
}

/// Every setting as `section.key`, sections included as prefixes.
fn all_settings() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for key in expected_keys(&[]) {
        if is_section(&[], &key) {
            for inner in expected_keys(&[&key]) {
                out.insert(format!("{key}.{inner}"));
            }
        } else {
            out.insert(key);
        }
    }
    out
}

/// The settings the block names, set or shown commented out (`# key = …`).
fn documented_settings(block: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut section = String::new();
    for line in block.lines() {
        // `# key = value  # comment` documents a setting left at its default or unset.
        let line = line.trim().trim_start_matches('#');
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            // `[retention.orgs.acme]`: an entry of the map setting `retention.orgs`.
            let parts: Vec<&str> = name.split('.').collect();
            if parts.len() > 2 {
                out.insert(parts[..2].join("."));
            }
            section = name.to_owned();
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            let map_entry = section.split('.').count() > 2;
            if !map_entry
                && !key.is_empty()
                && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                out.insert(if section.is_empty() {
                    key.to_owned()
                } else {
                    format!("{section}.{key}")
                });
            }
        }
    }
    out
}

#[test]
fn readme_names_every_setting_and_only_real_ones() {
    let settings = all_settings();
    assert!(
        settings.len() > 20,
        "the probe found too few settings: {settings:?}"
    );
    let documented = documented_settings(readme_block());
    let missing: Vec<_> = settings.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&settings).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "README's configuration block: missing {missing:?}, not settings {unknown:?}"
    );
}

#[test]
fn readme_values_are_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("readme.toml");
    std::fs::write(&path, readme_block()).unwrap();
    // The block's listen and data_dir are a production example; everything else is a default.
    let same_place = |config: Option<PathBuf>| Overrides {
        listen: Some(DEFAULT_LISTEN.into()),
        data_dir: Some(DEFAULT_DATA_DIR.into()),
        config,
        ..Overrides::default()
    };
    let from_readme = Config::load(same_place(Some(path))).unwrap();
    let defaults = Config::load(same_place(None)).unwrap();
    assert_eq!(format!("{from_readme:#?}"), format!("{defaults:#?}"));
}

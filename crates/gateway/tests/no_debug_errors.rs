//! The build fails if product code formats an error with Debug in a log line or message:
//! Debug of an error that carries a backtrace is how this kind of service got OOM-killed
//! (std symbolizes the backtrace: +60 to +200 MiB, never freed). Use Display: `%err`, `{err}`.

use std::path::{Path, PathBuf};

/// Macros whose arguments end up in logs or messages.
const MACROS: [&str; 12] = [
    "error!(",
    "warn!(",
    "info!(",
    "debug!(",
    "trace!(",
    "event!(",
    "println!(",
    "eprintln!(",
    "format!(",
    "write!(",
    "writeln!(",
    "panic!(",
];

/// Whether `line` formats something error-like with Debug inside one of `MACROS`.
fn debug_formats_an_error(line: &str) -> bool {
    if !MACROS.iter().any(|m| line.contains(m)) {
        return false;
    }
    let names = ["e", "err", "error", "source", "cause"];
    let bytes = line.as_bytes();
    // tracing's `?err` / `field = ?err`
    for (i, _) in line.match_indices('?') {
        let before = if i == 0 { b' ' } else { bytes[i - 1] };
        if !(before == b' ' || before == b'(' || before == b',') {
            continue;
        }
        let rest: String = line[i + 1..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
            .collect();
        let last = rest.rsplit('.').next().unwrap_or("");
        if names.contains(&last) {
            return true;
        }
    }
    // `{err:?}`, `{err:#?}`
    for name in names {
        if line.contains(&format!("{{{name}:?}}")) || line.contains(&format!("{{{name}:#?}}")) {
            return true;
        }
    }
    // `{:?}` with an error-like argument
    if line.contains("{:?}") || line.contains("{:#?}") {
        // An argument that is the error itself (`err`, `&err`, `self.err`), not `err.kind()`.
        let args = line.rsplit_once("\",").map_or("", |(_, a)| a);
        return args
            .split(',')
            .map(|a| {
                a.trim()
                    .trim_end_matches([')', ';'])
                    .trim_start_matches('&')
            })
            .any(|a| {
                let last = a.rsplit('.').next().unwrap_or("");
                names.contains(&last) && !a.contains('(')
            });
    }
    false
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_detector_knows_good_from_bad() {
    for bad in [
        r#"tracing::error!(?err, "append failed");"#,
        r#"warn!(stream = %id, error = ?err, "x");"#,
        r#"error!("failed: {err:?}");"#,
        r#"eprintln!("failed: {:?}", err);"#,
        r#"let m = format!("{e:#?}");"#,
        r#"debug!(error = ?self.err, "x");"#,
    ] {
        assert!(debug_formats_an_error(bad), "should flag: {bad}");
    }
    for good in [
        r#"tracing::error!(error = %err, "append failed");"#,
        r#"error!("failed: {err}");"#,
        r#"eprintln!("error: {err:#}");"#,
        r#"format!("--url {:?}", args.url)"#,
        r#"let x = y?;"#,
        r#"debug!(stream = ?id, "x");"#,
        r#"panic!("{check}: unexpected ({:?}): {err}", err.kind())"#,
    ] {
        assert!(!debug_formats_an_error(good), "should pass: {good}");
    }
}

#[test]
fn product_code_never_formats_an_error_with_debug() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in ["gateway", "memwatch", "loadgen"] {
        rust_files(&crates.join(krate).join("src"), &mut files);
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut hits = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests at the end of a file may print whatever helps debugging.
        let product = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in product.lines().enumerate() {
            if debug_formats_an_error(line) {
                hits.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "errors formatted with Debug (use Display):\n{}",
        hits.join("\n")
    );
}

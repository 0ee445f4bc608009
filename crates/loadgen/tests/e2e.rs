//! The real `gateway-bench` binary end to end, with this test binary playing the gateway.
//!
//! `gateway-bench ingest --gateway-bin <this binary>` starts us as `<this> serve --listen A
//! --data-dir D`; `main` sees `serve` and becomes a fake gateway (tests/common) that writes
//! `D/admin.token` like the real one. Environment variables make it fail in chosen ways.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use common::{FakeState, TOKEN};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => return fake_gateway(&args[1..]),
        Some("--version") => return println!("fake-gateway 0.0.0"),
        _ if args.iter().any(|a| a == "--list") => return,
        _ => {}
    }
    let checks: [(&str, fn()); 5] = [
        ("smoke run writes results", smoke_run_writes_results),
        ("a running server is driven by URL", drives_a_running_server),
        (
            "failed start shows the gateway's stderr",
            failed_start_shows_stderr,
        ),
        ("a gateway never ready times out", never_ready_times_out),
        ("a missing binary is named", missing_binary_is_named),
    ];
    for (name, check) in checks {
        check();
        println!("e2e: {name} ... ok");
    }
}

fn smoke_run_writes_results() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("results/r.json");
    let output = bench(
        &[
            "--smoke",
            "--duration",
            "300ms",
            "--streams",
            "1,3",
            "--chunk",
            "16KiB",
            "--limit-batch",
            "256KiB",
        ],
        tmp.path(),
        &out,
        &[],
    );
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("| 3 streams |") && stdout.contains("| raw fdatasync per chunk |"),
        "{stdout}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let scenarios = json["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 2);
    for sc in scenarios {
        assert!(sc["requests"].as_u64().unwrap() > 0, "{sc}");
        assert_eq!(sc["error_total"], 0, "{sc}");
        assert!(sc["peak_rss_mib"].as_f64().unwrap() > 0.0, "{sc}");
        assert_eq!(sc["peak_rss_reset"], true, "{sc}");
        assert!(sc["rss_samples"].as_u64().unwrap() > 0, "{sc}");
        assert!(sc["cpu_s_per_gib"].as_f64().is_some(), "{sc}");
        assert!(sc["minor_faults_per_gib"].as_f64().is_some(), "{sc}");
        assert!(sc["share_of_limit"].as_f64().unwrap() > 0.0, "{sc}");
    }
    assert!(json["idle_rss_mib"].as_f64().unwrap() > 0.0);
    assert!(json["raw"]["mib_per_s"].as_f64().unwrap() > 0.0);
    // the ceiling is the faster of buffered 64 KiB writes and direct ones, both shown
    let limits = [&json["limit"], &json["other_limit"]];
    let mut labels: Vec<&str> = limits
        .iter()
        .map(|l| l["label"].as_str().unwrap())
        .collect();
    labels.sort_unstable();
    assert_eq!(
        labels,
        [
            "disk limit, direct 256 KiB writes: fdatasync per 256 KiB",
            "disk limit: fdatasync per 256 KiB"
        ]
    );
    assert!(json["limit"]["mib_per_s"].as_f64() >= json["other_limit"]["mib_per_s"].as_f64());
    assert!(stdout.contains("| disk limit, direct 256 KiB writes: fdatasync per 256 KiB |"));
    assert_eq!(json["settings"]["server_version"], "fake-gateway 0.0.0");
    assert!(json["machine"]["data_fs"]["fs_type"].is_string());
    assert_eq!(
        std::fs::read_to_string(out.with_extension("md")).unwrap(),
        stdout
    );
    assert_eq!(
        run_dirs_left(tmp.path()),
        0,
        "the run directory was not removed"
    );
}

fn drives_a_running_server() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut server = Command::new(std::env::current_exe().unwrap())
        .args(["serve", "--listen", &addr.to_string(), "--data-dir"])
        .arg(tmp.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let token = tmp.path().join("admin.token");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !token.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = tmp.path().join("r.json");
    let url = format!("http://{addr}/v1/streams/peer");
    let pid = server.id().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_gateway-bench"))
        .args(["ingest", "--smoke", "--duration", "300ms", "--streams", "2"])
        .args(["--target-url", &url, "--token", TOKEN, "--target-pid", &pid])
        .arg("--data-dir")
        .arg(tmp.path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(output.status.success(), "{}", describe(&output));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let sc = &json["scenarios"][0];
    assert!(sc["requests"].as_u64().unwrap() > 0, "{sc}");
    assert!(sc["cpu_s_per_gib"].as_f64().is_some(), "{sc}");
    assert!(sc["peak_rss_mib"].as_f64().unwrap() > 0.0, "{sc}");
    assert!(
        json["settings"]["server"]
            .as_str()
            .unwrap()
            .starts_with(&url),
        "{json}"
    );
}

fn failed_start_shows_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let output = bench(
        &["--smoke"],
        tmp.path(),
        &tmp.path().join("r.json"),
        &[("FAKE_GATEWAY_FAIL", "1")],
    );
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("exited") && stderr.contains("the data dir is cursed"),
        "{stderr}"
    );
    assert!(!tmp.path().join("r.json").exists());
    assert_eq!(run_dirs_left(tmp.path()), 0);
}

fn never_ready_times_out() {
    let tmp = tempfile::tempdir().unwrap();
    let output = bench(
        &["--smoke", "--startup-timeout", "1s"],
        tmp.path(),
        &tmp.path().join("r.json"),
        &[("FAKE_GATEWAY_NOT_READY", "1")],
    );
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not ready within") && stderr.contains("503"),
        "{stderr}"
    );
    assert!(
        stderr.contains("fake gateway listening"),
        "stderr tail missing: {stderr}"
    );
}

fn missing_binary_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_gateway-bench"))
        .args([
            "ingest",
            "--smoke",
            "--gateway-bin",
            "/nonexistent/engine-gateway",
            "--data-dir",
        ])
        .arg(tmp.path())
        .arg("--out")
        .arg(tmp.path().join("r.json"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/engine-gateway"), "{stderr}");
}

/// Runs `gateway-bench ingest` with this binary as the gateway.
fn bench(args: &[&str], data_dir: &Path, out: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gateway-bench"))
        .arg("ingest")
        .arg("--gateway-bin")
        .arg(std::env::current_exe().unwrap())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--out")
        .arg(out)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run_dirs_left(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("gateway-bench-")
        })
        .count()
}

/// The fake gateway process: `serve --listen ADDR --data-dir DIR`. Exits by itself after a
/// minute in case its parent died without killing it.
fn fake_gateway(args: &[String]) {
    let value = |flag: &str| {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1].clone()
    };
    let (listen, data_dir) = (value("--listen"), PathBuf::from(value("--data-dir")));
    if std::env::var_os("FAKE_GATEWAY_FAIL").is_some() {
        eprintln!("fake gateway: refusing to start: the data dir is cursed");
        std::process::exit(3);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
        eprintln!("fake gateway listening on {listen}");
        let token_tmp = data_dir.join("admin.token.tmp");
        std::fs::write(&token_tmp, format!("{TOKEN}\n")).unwrap();
        std::fs::rename(&token_tmp, data_dir.join("admin.token")).unwrap();
        let state = Arc::new(FakeState {
            not_ready: std::env::var_os("FAKE_GATEWAY_NOT_READY").is_some(),
            ..FakeState::default()
        });
        let _ = tokio::time::timeout(Duration::from_secs(60), common::serve(listener, state)).await;
    });
}

//! A real `nats-server -js` for tests: ephemeral loopback port, temporary store directory,
//! killed on drop. Restartable on the same port and directory, to test reconnection.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine_gateway::store::nats::NatsConfig;

pub mod cluster;

/// Where tests look for the server binary first.
const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A running (or stopped) nats-server.
pub struct NatsServer {
    binary: PathBuf,
    pub port: u16,
    /// JetStream store directory, kept across restarts.
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The nats-server binary, or `None` (after printing a skip notice) when it is missing.
/// Panics when it is missing and `REQUIRE_NATS=1`.
pub fn binary() -> Option<PathBuf> {
    let found = [PathBuf::from(NATS_SERVER)]
        .into_iter()
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect::<Vec<_>>()
        }))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("REQUIRE_NATS").as_deref() == Ok("1") {
            panic!("nats-server not found on PATH or at {NATS_SERVER}, and REQUIRE_NATS=1");
        }
        eprintln!("skipping: nats-server not found (set REQUIRE_NATS=1 to make this fatal)");
    }
    found
}

impl NatsServer {
    /// Starts a server, or returns `None` when the binary is missing (see [`binary`]).
    pub fn start() -> Option<NatsServer> {
        let binary = binary()?;
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut server = NatsServer {
            binary,
            port,
            dir,
            child: None,
        };
        server.restart();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A gateway config for this server, with short timeouts so failures show quickly.
    pub fn config(&self) -> NatsConfig {
        let mut config = NatsConfig::from_url(&self.url()).unwrap();
        config.request_timeout = Duration::from_secs(1);
        config.connect_timeout = Duration::from_secs(2);
        config
    }

    pub fn store_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory, and waits until it accepts.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(&self.binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(self.port);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on the port.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

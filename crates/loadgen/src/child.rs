//! The gateway under test as a child process: start on a free loopback port, wait until ready.
//!
//! Its stderr is drained by a thread into a bounded tail, so a failed start can show why and a
//! chatty gateway can never block on a full pipe.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hyper::{Method, StatusCode};

use crate::client::{Target, probe};

/// A child process that is killed and reaped when dropped, so no run, failed or not, leaves
/// a server behind.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How to start the gateway.
#[derive(Debug, Clone)]
pub struct GatewaySpec {
    pub bin: PathBuf,
    /// A fresh, empty directory the gateway owns for this run.
    pub data_dir: PathBuf,
    /// Passed after `serve --listen … --data-dir …`, for tuning flags.
    pub extra_args: Vec<String>,
    /// Set in the gateway's environment on top of ours (e.g. `MALLOC_CONF`, log levels).
    pub env: Vec<(String, String)>,
    /// Bound on waiting for `admin.token` and `/readyz`.
    pub startup_timeout: Duration,
}

/// A running gateway; killed when dropped.
pub struct GatewayChild {
    /// `None` once stopped.
    child: Option<Child>,
    /// Kept apart from `child` so it stays readable after a stop.
    pid: u32,
    target: Target,
    /// Last lines of the gateway's stderr.
    stderr_tail: Arc<Mutex<Tail>>,
}

impl GatewayChild {
    /// Starts the gateway and returns once `/readyz` answers 200, using the admin token it
    /// writes into `data_dir/admin.token` on a first start.
    pub async fn start(spec: &GatewaySpec) -> anyhow::Result<Self> {
        let addr = free_loopback_port()?;
        let mut child = Command::new(&spec.bin)
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(&spec.extra_args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the gateway binary {}", spec.bin.display()))?;
        let stderr_tail = Arc::new(Mutex::new(Tail::default()));
        if let Some(stderr) = child.stderr.take() {
            let tail = stderr_tail.clone();
            std::thread::Builder::new()
                .name("gateway-stderr".into())
                .spawn(move || {
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        if let Ok(mut tail) = tail.lock() {
                            tail.push(line);
                        }
                    }
                })
                .context("starting the stderr reader thread")?;
        }
        let mut starting = Starting {
            child: Some(child),
            stderr_tail,
        };
        let target = starting.wait_ready(spec, addr).await?;
        let child = starting.child.take().context("gateway child vanished")?;
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            target,
            stderr_tail: starting.stderr_tail.clone(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Fails with the stderr tail when the gateway has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("the gateway was stopped");
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "the gateway exited ({status}); its stderr ends with:\n{}",
                tail_text(&self.stderr_tail)
            );
        }
        Ok(())
    }

    pub fn stderr_tail(&self) -> String {
        tail_text(&self.stderr_tail)
    }

    /// Kills the gateway and reaps it.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }
}

impl Drop for GatewayChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The child while it starts; kills it when startup fails.
struct Starting {
    child: Option<Child>,
    stderr_tail: Arc<Mutex<Tail>>,
}

impl Starting {
    async fn wait_ready(&mut self, spec: &GatewaySpec, addr: SocketAddr) -> anyhow::Result<Target> {
        let deadline = Instant::now() + spec.startup_timeout;
        let token_file = spec.data_dir.join("admin.token");
        let mut target = None::<Target>;
        let mut last_problem = String::from("admin.token not written yet");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                // Give the reader thread a moment to collect the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                bail!(
                    "the gateway exited ({status}) before becoming ready; its stderr ends with:\n{}",
                    tail_text(&self.stderr_tail)
                );
            }
            if target.is_none() {
                target = read_token(&token_file)
                    .await?
                    .map(|t| Target::new(addr, &t))
                    .transpose()?;
            }
            if let Some(target) = &target {
                match probe(target, Method::GET, "/readyz", Duration::from_secs(1)).await {
                    Ok((StatusCode::OK, _)) => return Ok(target.clone()),
                    Ok((status, _)) => last_problem = format!("/readyz answered {status}"),
                    Err(err) => last_problem = format!("/readyz: {err:#}"),
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the gateway was not ready within {:?} ({last_problem}); its stderr ends with:\n{}",
                    spec.startup_timeout,
                    tail_text(&self.stderr_tail)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The token, once the file exists and is complete (non-empty after trimming).
async fn read_token(path: &Path) -> anyhow::Result<Option<String>> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// A port the kernel just handed out; released right away for the gateway to bind.
pub fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// Lines kept from the gateway's stderr.
const TAIL_LINES: usize = 40;
/// Longest line kept, in bytes; longer lines are cut.
const TAIL_LINE_BYTES: usize = 1000;

/// The last `TAIL_LINES` lines of a stream.
#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
}

impl Tail {
    fn push(&mut self, mut line: String) {
        if line.len() > TAIL_LINE_BYTES {
            let mut cut = TAIL_LINE_BYTES;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

fn tail_text(tail: &Mutex<Tail>) -> String {
    let Ok(tail) = tail.lock() else {
        return String::from("  (stderr unavailable)");
    };
    if tail.lines.is_empty() {
        return String::from("  (stderr was empty)");
    }
    tail.lines.iter().map(|l| format!("  | {l}\n")).collect()
}

//! A child memory cgroup for one test child: created under this test process's own memory
//! cgroup (as named in /proc/self/cgroup, never elsewhere), with a limit, removed on drop.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A memory cgroup this test created.
pub struct ChildCgroup {
    pub dir: PathBuf,
    v2: bool,
}

impl ChildCgroup {
    /// Creates `<own memory cgroup>/<name>` with `limit` bytes (and no swap).
    pub fn create(name: &str, limit: u64) -> Result<Self, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let (v2, rel) = own
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
                ctl.split(',')
                    .any(|c| c == "memory")
                    .then(|| (false, path.to_string()))
            })
            .or_else(|| {
                own.lines()
                    .find_map(|l| l.strip_prefix("0::").map(|p| (true, p.to_string())))
            })
            .ok_or("no memory cgroup in /proc/self/cgroup")?;
        let mine = memwatch::cgroup_memory().map_err(|e| e.to_string())?;
        if !mine.path.ends_with(rel.trim_start_matches('/')) {
            return Err(format!(
                "the memory cgroup directory {} is not /proc/self/cgroup's {rel}",
                mine.path.display()
            ));
        }
        let dir = mine.path.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let cgroup = Self { dir, v2 };
        if v2 {
            cgroup.write("memory.max", limit)?;
            let _ = cgroup.write("memory.swap.max", 0);
        } else {
            cgroup.write("memory.limit_in_bytes", limit)?;
            if cgroup.dir.join("memory.memsw.limit_in_bytes").exists() {
                cgroup.write("memory.memsw.limit_in_bytes", limit)?;
            }
        }
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: u64) -> Result<(), String> {
        let path = self.dir.join(file);
        std::fs::write(&path, value.to_string())
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// OOM kills recorded by the kernel (v1 `memory.oom_control`, v2 `memory.events`).
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Makes `command`'s child join this cgroup between fork and exec, so all of its memory
    /// is charged here.
    pub fn join_on_exec(&self, command: &mut Command) {
        let procs = CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
        // SAFETY: the closure only makes async-signal-safe calls (getpid, open, write, close)
        // on memory prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                let mut digits = [0u8; 20];
                let mut pid = libc::getpid() as u32;
                let mut at = digits.len();
                loop {
                    at -= 1;
                    digits[at] = b'0' + (pid % 10) as u8;
                    pid /= 10;
                    if pid == 0 {
                        break;
                    }
                }
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, digits[at..].as_ptr().cast(), digits.len() - at);
                libc::close(fd);
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        // The child is reaped; the kernel may still be releasing the cgroup for a moment.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove cgroup {}", self.dir.display());
    }
}

//! What PostgreSQL and Redis servers share: a private temporary directory, an
//! unprivileged user to run as when we are root, free ports, and stopping by PID.

use std::ffi::CString;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use crate::Error;

/// A free TCP port on 127.0.0.1 at the time of the call.
pub fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| Error::io("finding a free port on 127.0.0.1", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("finding a free port on 127.0.0.1", e))
}

/// Fails with [`Error::PortInUse`] when something already listens on `port`.
pub(crate) fn ensure_port_free(port: u16) -> Result<(), Error> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(Error::PortInUse { port }),
        Err(e) => Err(Error::io(format!("checking port {port}"), e)),
    }
}

/// The uid/gid a server runs as when this process is root (PostgreSQL refuses root).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// `None` when not root; else the `postgres` user, created if missing. Decided once
    /// per process, so parallel starts don't race on `useradd`.
    pub fn for_postgres() -> Result<Option<RunAs>, Error> {
        static DECIDED: Mutex<Option<Option<RunAs>>> = Mutex::new(None);
        let mut decided = DECIDED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(run_as) = *decided {
            return Ok(run_as);
        }
        let run_as = Self::decide()?;
        *decided = Some(run_as);
        Ok(run_as)
    }

    fn decide() -> Result<Option<RunAs>, Error> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        if let Some(user) = lookup_user("postgres") {
            return Ok(Some(user));
        }
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "postgres",
            ])
            .output();
        // Another process may have created the user meanwhile: look again either way.
        for _ in 0..20 {
            if let Some(user) = lookup_user("postgres") {
                return Ok(Some(user));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(Error::NoServerUser {
            reason: match out {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            },
        })
    }

    pub fn apply(self, cmd: &mut Command) {
        cmd.uid(self.uid).gid(self.gid);
    }

    pub fn chown(self, path: &Path) -> Result<(), Error> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| Error::io(format!("chown {}", path.display()), e))
    }
}

fn lookup_user(name: &str) -> Option<RunAs> {
    let cname = CString::new(name).ok()?;
    // SAFETY: a zeroed passwd is a valid out-parameter; getpwnam_r (unlike getpwnam) is
    // thread-safe and writes strings only into `buf`, which outlives the call.
    let mut record: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut record,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    Some(RunAs {
        uid: record.pw_uid,
        gid: record.pw_gid,
    })
}

/// A private directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub(crate) struct TempRoot {
    path: PathBuf,
    keep: bool,
}

impl TempRoot {
    pub fn new(kind: &str, owner: Option<RunAs>) -> Result<TempRoot, Error> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::var_os("PGOPT_EMBEDDED_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        sweep_leftovers(&base);
        let path = base.join(format!(
            "pgopt-{kind}-{}-{}-{nanos:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
        let root = TempRoot { path, keep: false };
        if let Some(owner) = owner {
            owner.chown(&root.path)?;
        }
        Ok(root)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes a subdirectory owned by `owner` (when given).
    pub fn subdir(&self, name: &str, owner: Option<RunAs>) -> Result<PathBuf, Error> {
        let dir = self.path.join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("chmod {}", dir.display()), e))?;
        if let Some(owner) = owner {
            owner.chown(&dir)?;
        }
        Ok(dir)
    }

    /// Leave the directory on disk after drop (set `PGOPT_EMBEDDED_KEEP=1` to debug).
    pub fn keep_if_requested(&mut self) {
        self.keep = std::env::var_os("PGOPT_EMBEDDED_KEEP").is_some();
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes what test processes that were killed (SIGKILL, a test runner's timeout) left
/// behind: their servers (by the PID in the directory) and their directories. Runs once
/// per process; a directory counts as left behind when the process named in it is gone.
fn sweep_leftovers(base: &Path) {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| {
        let Ok(entries) = std::fs::read_dir(base) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(owner) = leftover_owner(name) else {
                continue;
            };
            if process_alive(owner) {
                continue;
            }
            let dir = entry.path();
            // A PostgreSQL that outlived its owner: its PID is line 1 of postmaster.pid.
            let pid_file = dir.join("data").join("postmaster.pid");
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            {
                if process_alive(pid) {
                    // SAFETY: signalling a PID read from a server's own pid file.
                    unsafe { libc::kill(pid, libc::SIGQUIT) };
                }
            }
            tracing::debug!(dir = %dir.display(), "removing a dead test process's leftovers");
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
}

/// `pgopt-pg-1234-0-abc` → 1234 (the PID of the process that made it).
fn leftover_owner(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("pgopt-")?;
    rest.split('-')
        .find_map(|part| part.parse::<i32>().ok())
        .filter(|pid| *pid > 0)
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let exists = unsafe { libc::kill(pid, 0) == 0 };
    exists || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Runs a helper program to completion; its output becomes the error on failure.
pub(crate) fn run(mut cmd: Command, what: &str) -> Result<(), Error> {
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("running {what}"), e))?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if output.is_empty() {
        output = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    Err(Error::CommandFailed {
        command: what.to_string(),
        status: out.status.to_string(),
        output: tail(&output, 20),
    })
}

/// The last `lines` lines of a text.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn log_tail(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|t| tail(&t, 20))
        .unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()))
}

/// Waits until `ready()` says yes, the child exits, or the timeout passes.
pub(crate) fn wait_ready(
    child: &mut Child,
    what: &str,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        // Exit first: a server that lost its port must not pass for ready because
        // another server answers on it.
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::ExitedEarly {
                what: what.to_string(),
                status: status.to_string(),
                log_tail: log_tail(log),
            });
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::StartTimeout {
                what: what.to_string(),
                seconds: timeout.as_secs(),
                log_tail: log_tail(log),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Sends `signal` to the child and waits for it to exit; SIGKILL after `grace`.
/// The child is reaped, so its PID is gone when this returns.
pub(crate) fn stop_child(child: &mut Child, signal: libc::c_int, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill with a PID we spawned and have not reaped yet.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!(pid, "server did not stop in time; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_directories_name_their_owner() {
        assert_eq!(leftover_owner("pgopt-pg-1234-0-1f489c7d"), Some(1234));
        assert_eq!(leftover_owner("pgopt-pg-replica-77-3-ab"), Some(77));
        assert_eq!(leftover_owner("pgopt-redis-9-0-0"), Some(9));
        assert_eq!(leftover_owner("pgopt-env.toml"), None);
        assert_eq!(leftover_owner("postgres-1234"), None);
    }

    #[test]
    fn the_sweep_removes_a_dead_owners_directory_only() {
        let base = std::env::temp_dir().join(format!("pgopt-sweeptest-{}", std::process::id()));
        // PIDs above the kernel's pid_max are never alive.
        let dead = base.join("pgopt-pg-2147483646-0-0");
        let alive = base.join(format!("pgopt-pg-{}-0-0", std::process::id()));
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::create_dir_all(&alive).unwrap();
        sweep_leftovers(&base);
        assert!(!dead.exists());
        assert!(alive.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}

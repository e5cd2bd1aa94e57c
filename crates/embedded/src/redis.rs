//! A throwaway Redis server: no persistence, a free port, stopped by PID on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{self, TempRoot};
use crate::Error;

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `redis-server`. Dropping it stops the server.
#[derive(Debug)]
pub struct Redis {
    child: Option<Child>,
    program: PathBuf,
    port: u16,
    /// The cluster bus port of a cluster node (`--cluster-port`), else `None`.
    bus_port: Option<u16>,
    log_path: PathBuf,
    root: TempRoot,
}

impl Redis {
    /// Starts `redis-server` on a free loopback port.
    pub async fn start() -> Result<Redis, Error> {
        tokio::task::spawn_blocking(Self::start_blocking)
            .await
            .map_err(|e| Error::Join(e.to_string()))?
    }

    pub fn start_blocking() -> Result<Redis, Error> {
        Self::start_node(false)
    }

    /// Starts a `redis-server` with cluster mode on (its bus on another free port,
    /// `nodes.conf` in its own directory), not yet part of any cluster.
    pub fn start_cluster_node_blocking() -> Result<Redis, Error> {
        Self::start_node(true)
    }

    fn start_node(cluster: bool) -> Result<Redis, Error> {
        let program = find_on_path("redis-server").ok_or(Error::ProgramNotFound {
            program: "redis-server",
            package: "redis-server",
        })?;
        let root = TempRoot::new("redis", None)?;
        let mut redis = Redis {
            child: None,
            program,
            port: 0,
            bus_port: None,
            log_path: root.path().join("redis.log"),
            root,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            redis.port = process::free_port()?;
            if cluster {
                // The default (port + 10000) is past 65535 for high ports.
                redis.bus_port = Some(process::free_port()?);
            }
            match redis.spawn() {
                Err(Error::ExitedEarly { log_tail, .. })
                    if attempt < 5 && log_tail.contains("Address already in use") =>
                {
                    continue
                }
                Err(e) => return Err(e),
                Ok(()) => return Ok(redis),
            }
        }
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let port = self.port.to_string();
        let mut command = Command::new(&self.program);
        command
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"]);
        if let Some(bus) = self.bus_port {
            command
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--cluster-config-file", "nodes.conf"]);
        }
        let mut child = command
            .arg("--dir")
            .arg(self.root.path())
            .arg("--logfile")
            .arg(&self.log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", self.program.display()), e))?;
        let pid = child.id();
        let ready = process::wait_ready(
            &mut child,
            &format!("Redis on port {}", self.port),
            &self.log_path,
            START_TIMEOUT,
            // Ours, not another test's Redis that won the race for this port.
            || server_pid(self.port) == Some(pid),
        );
        if let Err(e) = ready {
            process::stop_child(&mut child, libc::SIGKILL, Duration::from_secs(2));
            return Err(e);
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server (kept stopped until [`Redis::restart`]).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_child(&mut child, libc::SIGTERM, Duration::from_secs(5));
        }
    }

    /// Starts a stopped server again on the same port (data is not kept).
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        self.spawn()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `process_id` the Redis server on `port` reports, when one answers.
fn server_pid(port: u16) -> Option<u32> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    // A bulk string: "$LEN\r\n…\r\n"; read until process_id's line is complete.
    while reply.len() < 64 * 1024 {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(rest) = text.split("process_id:").nth(1) {
            if let Some((pid, _)) = rest.split_once("\r\n") {
                return pid.trim().parse().ok();
            }
        }
    }
    None
}

/// Full path of `program` on `$PATH` (plus the sbin directories Debian uses).
pub(crate) fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

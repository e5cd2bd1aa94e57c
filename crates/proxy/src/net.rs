//! Sockets: the stream a client or server connection runs on (TCP, a Unix-domain
//! socket, or TLS over TCP), where it leads ([`Endpoint`]), and the Unix-domain socket
//! pgopt listens on besides TCP (`unix_socket_dir`), named as PostgreSQL names its own
//! (`<dir>/.s.PGSQL.<port>`), so `psql -h <dir> -p <port>` finds it.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsStream;

use crate::config::Keepalive;

/// Where a connection leads: a TCP address, or a Unix-domain socket given as its
/// directory and port (the socket file is [`socket_path`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(std::net::SocketAddr),
    Unix { dir: Arc<str>, port: u16 },
}

impl Endpoint {
    /// The TCP address, when it is one.
    pub fn tcp(&self) -> Option<std::net::SocketAddr> {
        match self {
            Endpoint::Tcp(addr) => Some(*addr),
            Endpoint::Unix { .. } => None,
        }
    }

    /// The address and port as SHOW CLIENTS and SHOW SERVERS give them: `unix` and the
    /// socket's port for a Unix-domain socket, as PgBouncer shows it.
    pub fn parts(&self) -> (String, u16) {
        match self {
            Endpoint::Tcp(addr) => (addr.ip().to_string(), addr.port()),
            Endpoint::Unix { port, .. } => ("unix".into(), *port),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => addr.fmt(f),
            Endpoint::Unix { dir, port } => write!(f, "unix:{}", socket_path(dir, *port).display()),
        }
    }
}

/// The socket file of `port` in `dir`, as PostgreSQL and libpq name it.
pub fn socket_path(dir: &str, port: u16) -> PathBuf {
    Path::new(dir).join(format!(".s.PGSQL.{port}"))
}

/// Whether a server's `host` is a Unix-domain socket directory: an absolute path, as
/// libpq reads it.
pub fn is_socket_dir(host: &str) -> bool {
    host.starts_with('/')
}

/// A client or server connection: plain TCP, a Unix-domain socket, or TLS over TCP
/// after an accepted SSLRequest.
pub enum PgStream {
    Plain(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A client's connection.
pub type ClientStream = PgStream;

impl fmt::Debug for PgStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PgStream::Plain(_) => "PgStream::Plain",
            PgStream::Unix(_) => "PgStream::Unix",
            PgStream::Tls(_) => "PgStream::Tls",
        })
    }
}

/// A plain or Unix-domain socket out of any runtime, to be registered with another.
pub enum Detached {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Detached {
    /// Registers the socket with the current runtime.
    pub fn attach(self) -> io::Result<PgStream> {
        match self {
            Detached::Tcp(tcp) => TcpStream::from_std(tcp).map(PgStream::Plain),
            Detached::Unix(unix) => UnixStream::from_std(unix).map(PgStream::Unix),
        }
    }

    /// Err when the peer closed the connection or sent something unasked: the socket
    /// itself says so, whatever the runtime it left had seen of it.
    pub fn check_quiet(&self) -> io::Result<()> {
        let peeked = match self {
            Detached::Tcp(tcp) => peek(tcp),
            Detached::Unix(unix) => peek(unix),
        };
        match peeked {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the peer closed the connection or sent unasked data",
            )),
            Err(e) => Err(e),
        }
    }
}

/// One non-blocking peek at a socket: the bytes stay for whoever reads next.
fn peek(socket: &impl AsFd) -> io::Result<usize> {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    socket2::SockRef::from(socket).peek(&mut byte)
}

impl PgStream {
    /// Connects to `host`:`port` — a Unix-domain socket when `host` is a directory,
    /// else TCP (no Nagle delay; `keepalive` set when given) — and says where the
    /// connection leads and, for TCP, where it comes from.
    pub async fn connect(
        host: &str,
        port: u16,
        keepalive: Option<&Keepalive>,
    ) -> io::Result<(PgStream, Endpoint, Option<Endpoint>)> {
        if is_socket_dir(host) {
            let peer = Endpoint::Unix {
                dir: host.into(),
                port,
            };
            return Ok((Self::connect_endpoint(&peer).await?, peer, None));
        }
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        if let Some(keepalive) = keepalive {
            crate::io::keep_alive(&tcp, keepalive);
        }
        let peer = Endpoint::Tcp(tcp.peer_addr()?);
        let local = tcp.local_addr().ok().map(Endpoint::Tcp);
        Ok((PgStream::Plain(tcp), peer, local))
    }

    /// Connects to where `endpoint` leads (a CancelRequest's way to its server).
    pub async fn connect_endpoint(endpoint: &Endpoint) -> io::Result<PgStream> {
        match endpoint {
            Endpoint::Tcp(addr) => TcpStream::connect(addr).await.map(PgStream::Plain),
            Endpoint::Unix { dir, port } => UnixStream::connect(socket_path(dir, *port))
                .await
                .map(PgStream::Unix),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, PgStream::Tls(_))
    }

    /// The common name of the client's TLS certificate, when it sent one (verified in
    /// the handshake against `client_tls.ca_file`).
    pub fn peer_common_name(&self) -> Option<String> {
        let PgStream::Tls(tls) = self else {
            return None;
        };
        let certs = tls.get_ref().1.peer_certificates()?;
        crate::tls::common_name(certs.first()?)
    }

    /// The `tls-server-end-point` channel binding data of the peer's certificate (the
    /// server's, on a connection pgopt made), for SCRAM-SHA-256-PLUS; `None` in plain
    /// text or when its signature names no hash ([`crate::tls::end_point`]).
    pub fn peer_end_point(&self) -> Option<Vec<u8>> {
        let PgStream::Tls(tls) = self else {
            return None;
        };
        crate::tls::end_point(tls.get_ref().1.peer_certificates()?.first()?)
    }

    /// The TLS version and cipher suite in use, as PgBouncer's SHOW CLIENTS `tls`
    /// column has them (`TLSv1.3/TLS13_AES_256_GCM_SHA384`); `None` in plain text.
    pub fn tls_description(&self) -> Option<String> {
        let PgStream::Tls(tls) = self else {
            return None;
        };
        let conn = tls.get_ref().1;
        let version = match conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
            other => format!("{other:?}"),
        };
        let suite = conn.negotiated_cipher_suite()?.suite();
        Some(format!("{version}/{suite:?}"))
    }

    /// The process id of the client at the other end of a Unix-domain socket, as the
    /// kernel reports it (SO_PEERCRED); `None` over TCP.
    pub fn peer_pid(&self) -> Option<u32> {
        let PgStream::Unix(unix) = self else {
            return None;
        };
        let pid = unix.peer_cred().ok()?.pid()?;
        u32::try_from(pid).ok()
    }

    /// Whether the client sent a TLS certificate (verified in the handshake against
    /// `client_tls.ca_file`).
    pub fn has_peer_certificate(&self) -> bool {
        let PgStream::Tls(tls) = self else {
            return false;
        };
        tls.get_ref()
            .1
            .peer_certificates()
            .is_some_and(|certs| !certs.is_empty())
    }

    pub fn is_unix(&self) -> bool {
        matches!(self, PgStream::Unix(_))
    }

    /// Whether an idle connection has nothing to say (pending bytes — a FATAL from a
    /// server shutting down — or end-of-file mean it is dead). A peek, not a read:
    /// under TLS the bytes belong to the TLS session. No syscall while the event loop
    /// has seen nothing to read.
    pub fn is_quiet(&self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self {
            PgStream::Plain(tcp) => tcp.poll_peek(&mut cx, &mut buf).is_pending(),
            PgStream::Tls(tls) => tls.get_ref().0.poll_peek(&mut cx, &mut buf).is_pending(),
            PgStream::Unix(unix) => {
                // Tokio's readiness is cleared only when the peek would block.
                let peeked = unix.try_io(Interest::READABLE, || peek(unix));
                matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Whether the peer has closed the connection (or reset it), asked of the socket
    /// itself: a peek, a syscall whatever the event loop has seen (for a rare path:
    /// a client that waited, just as its wait ended).
    pub fn peer_left(&self) -> bool {
        let peeked = match self {
            PgStream::Plain(tcp) => peek(tcp),
            PgStream::Tls(tls) => peek(tls.get_ref().0),
            PgStream::Unix(unix) => peek(unix),
        };
        match peeked {
            Ok(n) => n == 0,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ),
        }
    }

    /// Runs the server side of the TLS handshake on a plain TCP stream.
    pub async fn upgrade(self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<PgStream> {
        match self {
            PgStream::Plain(tcp) => Ok(PgStream::Tls(Box::new(acceptor.accept(tcp).await?.into()))),
            other => Ok(other),
        }
    }

    /// Takes a plain or Unix-domain socket out of this runtime (to hand it to
    /// another); TLS streams stay where they are (an error).
    pub fn detach(self) -> io::Result<Detached> {
        match self {
            PgStream::Plain(tcp) => tcp.into_std().map(Detached::Tcp),
            PgStream::Unix(unix) => unix.into_std().map(Detached::Unix),
            PgStream::Tls(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a TLS stream cannot move to another runtime",
            )),
        }
    }
}

impl AsyncRead for PgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PgStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PgStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PgStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PgStream::Plain(s) => s.is_write_vectored(),
            PgStream::Unix(s) => s.is_write_vectored(),
            PgStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PgStream::Unix(s) => Pin::new(s).poll_flush(cx),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PgStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The Unix-domain socket pgopt listens on.
pub struct UnixSocket {
    pub listener: UnixListener,
    /// What SHOW CLIENTS shows of its clients.
    pub endpoint: Endpoint,
}

/// The socket's file, removed when this is dropped (unless something else has
/// replaced it since).
pub struct SocketFile {
    path: PathBuf,
    /// To remove only our own.
    id: FileId,
}

/// What tells one file from another at the same path: its device and inode, and its
/// creation (an inode freed by one file may be given to the next at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl UnixSocket {
    /// Listens on `<dir>/.s.PGSQL.<port>` with permissions `mode`, owned by `group`
    /// (a name or a number) when given. A socket file left by a server that did not
    /// stop cleanly is replaced; one a server still accepts on is not (an error, as
    /// PostgreSQL refuses to start then) — unless `take_over` (`so_reuseport`: a new
    /// pgopt starting beside a running one), when the new socket is renamed over it, so
    /// clients reach the new one from then on while the old one serves what it has.
    pub async fn bind(
        dir: &str,
        port: u16,
        mode: u32,
        group: Option<&str>,
        take_over: bool,
    ) -> io::Result<(UnixSocket, SocketFile)> {
        let path = socket_path(dir, port);
        let mut taking_over = false;
        // The group database may be remote (NSS): off the event loop.
        let gid = match group {
            None => None,
            Some(group) => {
                let group = group.to_string();
                Some(
                    tokio::task::spawn_blocking(move || group_id(&group))
                        .await
                        .map_err(io::Error::other)??,
                )
            }
        };
        let context = |e: io::Error, what: &str| {
            io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
        };
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                let probe = UnixStream::connect(&path);
                match tokio::time::timeout(Duration::from_secs(1), probe).await {
                    // Left behind: nothing accepts on it.
                    Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        match std::fs::remove_file(&path) {
                            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                                return Err(context(e, "removing the stale socket"))
                            }
                            _ => {}
                        }
                    }
                    Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {}
                    // A server accepts on it, and this one is to take its place.
                    Ok(Ok(_)) if take_over => taking_over = true,
                    // Accepted, or a server too busy to (a full backlog: EAGAIN), or
                    // one that lets us not in (EACCES): in use, left alone.
                    answer => {
                        let why = match answer {
                            Ok(Err(e)) => format!(" (connecting: {e})"),
                            _ => String::new(),
                        };
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("another server is listening on {}{why}", path.display()),
                        ));
                    }
                }
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(context(e, "looking at")),
        }
        // Taking over: made under a name of its own first, complete, then renamed
        // over the running server's (so no client finds the path missing or the
        // socket half set up).
        let made_at = if taking_over {
            let own = path.with_file_name(format!(".s.PGSQL.{port}.{}.new", std::process::id()));
            let _ = std::fs::remove_file(&own);
            own
        } else {
            path.clone()
        };
        let listener = UnixListener::bind(&made_at).map_err(|e| context(e, "listening on"))?;
        // Its group, then its permissions, as PostgreSQL; its identity after both
        // and the rename (which change its ctime).
        let made = std::os::unix::fs::chown(&made_at, None, gid)
            .map_err(|e| {
                let group = group.unwrap_or_default();
                context(e, &format!("setting unix_socket_group {group:?} on"))
            })
            .and_then(|()| {
                std::fs::set_permissions(&made_at, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| context(e, "setting the permissions of"))
            })
            .and_then(|()| {
                if taking_over {
                    std::fs::rename(&made_at, &path)
                        .map_err(|e| context(e, "taking over the socket"))?;
                    tracing::info!(path = %path.display(), "took over the Unix-domain socket of the pgopt running beside this one (so_reuseport)");
                }
                std::fs::symlink_metadata(&path).map_err(|e| context(e, "looking at"))
            });
        let file = match made {
            Ok(meta) => SocketFile {
                id: FileId::of(&meta),
                path,
            },
            Err(e) => {
                let _ = std::fs::remove_file(&made_at);
                return Err(e);
            }
        };
        let socket = UnixSocket {
            listener,
            endpoint: Endpoint::Unix {
                dir: dir.into(),
                port,
            },
        };
        Ok((socket, file))
    }
}

/// The id of the group `name` (PgBouncer's `unix_socket_group`): a group name from the
/// group database, or a number.
fn group_id(name: &str) -> io::Result<u32> {
    let unknown = |why: String| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("unix_socket_group {name:?}: {why}"),
        )
    };
    if let Ok(gid) = name.parse::<u32>() {
        // (gid_t)-1 tells chown to leave the group alone.
        if gid == u32::MAX {
            return Err(unknown("not a group id".into()));
        }
        return Ok(gid);
    }
    let c_name = std::ffi::CString::new(name).map_err(|_| unknown("a NUL in the name".into()))?;
    let mut size = 16 * 1024;
    loop {
        // SAFETY: a zeroed group is a valid out-parameter; getgrnam_r (unlike getgrnam)
        // is thread-safe and writes strings only into `buf`, and only gr_gid is read.
        let mut record: libc::group = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; size];
        let mut found: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                c_name.as_ptr(),
                &mut record,
                buf.as_mut_ptr(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && size < 1 << 20 {
            size *= 4;
            continue;
        }
        // Some name services say "not found" with an error code (as POSIX allows).
        if found.is_null()
            && matches!(
                rc,
                0 | libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM
            )
        {
            return Err(unknown("no such group".into()));
        }
        if rc != 0 {
            return Err(unknown(format!(
                "looking it up: {}",
                io::Error::from_raw_os_error(rc)
            )));
        }
        return Ok(record.gr_gid);
    }
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|meta| FileId::of(&meta) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

//! A lean Redis client for the bus and L2 on a plain `redis://` node: commands written
//! straight in RESP2, one multiplexed connection whose replies a reader task hands back
//! in order, and a subscriber.
//!
//! The redis crate's multiplexed connection parses every reply with a combinator parser
//! and passes each call through a task of its own, and its subscriber does the same for
//! every message: with Redis, that was most of the 46,000 instructions a commit cost
//! pgopt (docs/benchmarks.md). TLS (`rediss://`), Unix sockets and Redis Cluster's
//! commands stay on the redis crate ([`Target::of`] says which); on a cluster the
//! bus's subscription, on the node that owns its slot, is this client's too.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use redis::{ErrorKind, RedisError, RedisResult, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// The longest bulk string a reply may hold (Redis' own limit): a longer one, or a
/// malformed reply, drops the connection.
const MAX_BULK: usize = 512 << 20;
/// The most elements an array may hold, and how deeply arrays may nest.
const MAX_ELEMENTS: usize = 1 << 24;
const MAX_DEPTH: usize = 8;
/// Room kept at the front of a command for its `*<count>\r\n`.
const HEAD: usize = 16;
/// A command longer than this is written by a task of its own, so that a caller who
/// gives up on a slow write (a large value) leaves it whole for the calls behind it.
const LONG_COMMAND: usize = 64 * 1024;
/// How long such a write may take.
const LONG_WRITE: std::time::Duration = std::time::Duration::from_secs(30);
/// A read buffer grown past this (a large reply) goes back to its usual size once
/// empty.
const BUF_KEEP: usize = 1 << 20;

/// Where and as whom to connect: a plain TCP node. (No `Debug`: it holds a password.)
#[derive(Clone)]
pub struct Target {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl Target {
    /// The target of `url` (parsed as the redis crate parses it); `Ok(None)` for what
    /// this client does not speak: TLS, a Unix socket, RESP3.
    pub fn of(url: &str) -> RedisResult<Option<Target>> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)?;
        if info.redis.protocol != redis::ProtocolVersion::RESP2 {
            return Ok(None);
        }
        Ok(match info.addr {
            redis::ConnectionAddr::Tcp(host, port) => Some(Target {
                host,
                port,
                username: info.redis.username,
                password: info.redis.password,
                db: info.redis.db,
            }),
            _ => None,
        })
    }
}

/// A command in RESP's wire form, built argument by argument.
#[derive(Debug, Clone)]
pub struct Command {
    /// `HEAD` bytes of room, then each argument as a bulk string.
    buf: Vec<u8>,
    args: usize,
}

impl Command {
    pub fn new(name: &str) -> Command {
        let mut cmd = Command {
            buf: Vec::with_capacity(HEAD + 256),
            args: 0,
        };
        cmd.buf.resize(HEAD, 0);
        cmd.arg(name);
        cmd
    }

    pub fn arg(&mut self, arg: impl AsRef<[u8]>) -> &mut Command {
        let arg = arg.as_ref();
        self.buf.push(b'$');
        push_decimal(&mut self.buf, arg.len() as u64);
        self.buf.extend_from_slice(b"\r\n");
        self.buf.extend_from_slice(arg);
        self.buf.extend_from_slice(b"\r\n");
        self.args += 1;
        self
    }

    /// A number argument, in decimal.
    pub fn num(&mut self, n: u64) -> &mut Command {
        let mut digits = [0u8; 20];
        let digits = decimal(n, &mut digits);
        self.arg(digits)
    }

    /// An argument given in pieces, written as one.
    pub fn arg_with(&mut self, parts: &[&[u8]]) -> &mut Command {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.buf.push(b'$');
        push_decimal(&mut self.buf, len as u64);
        self.buf.extend_from_slice(b"\r\n");
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.buf.extend_from_slice(b"\r\n");
        self.args += 1;
        self
    }

    /// The command as sent: `*<count>\r\n` then the arguments.
    fn wire(&mut self) -> &[u8] {
        let mut head = Vec::with_capacity(HEAD);
        head.push(b'*');
        push_decimal(&mut head, self.args as u64);
        head.extend_from_slice(b"\r\n");
        let start = HEAD - head.len();
        self.buf[start..HEAD].copy_from_slice(&head);
        &self.buf[start..]
    }

    /// The arguments, the command's name first.
    pub fn args(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = &self.buf[HEAD..];
        std::iter::from_fn(move || {
            let line = rest.iter().position(|&b| b == b'\r')?;
            let len: usize = std::str::from_utf8(&rest[1..line]).ok()?.parse().ok()?;
            let arg = rest.get(line + 2..line + 2 + len)?;
            rest = &rest[line + 4 + len..];
            Some(arg)
        })
    }
}

/// `n` in decimal, written at the end of `digits`.
fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[i..]
}

fn push_decimal(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(decimal(n, &mut [0u8; 20]));
}

fn broken(why: impl Into<String>) -> RedisError {
    RedisError::from(io::Error::new(io::ErrorKind::BrokenPipe, why.into()))
}

fn malformed(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// An error reply as the redis crate reports it (NOSCRIPT by its kind: the caller loads
/// the script then).
fn error_reply(line: &[u8]) -> RedisError {
    let text = String::from_utf8_lossy(line).into_owned();
    if text.starts_with("NOSCRIPT") {
        RedisError::from((ErrorKind::NoScriptError, "NOSCRIPT", text))
    } else {
        RedisError::from((ErrorKind::ResponseError, "Redis refused", text))
    }
}

/// One reply from the front of `buf`: `Ok(None)` until it is all there, with how many
/// bytes it took; an error reply is `Ok(Some((Err(…), n)))`, a malformed one `Err`.
#[allow(clippy::type_complexity)]
pub fn parse(buf: &[u8]) -> io::Result<Option<(RedisResult<Value>, usize)>> {
    let mut at = 0;
    Ok(match value(buf, &mut at, 0)? {
        None => None,
        Some(Reply::Error(line)) => Some((Err(error_reply(line)), at)),
        Some(Reply::Value(v)) => Some((Ok(v), at)),
    })
}

enum Reply<'a> {
    Value(Value),
    Error(&'a [u8]),
}

/// The line at `at` (without its `\r\n`), moving `at` past it.
fn line<'a>(buf: &'a [u8], at: &mut usize) -> io::Result<Option<&'a [u8]>> {
    let rest = &buf[*at..];
    let Some(end) = rest.iter().position(|&b| b == b'\n') else {
        if rest.len() > 64 * 1024 {
            return Err(malformed("a reply line without its end"));
        }
        return Ok(None);
    };
    if end == 0 || rest[end - 1] != b'\r' {
        return Err(malformed("a reply line not ended by CRLF"));
    }
    *at += end + 1;
    Ok(Some(&rest[..end - 1]))
}

fn integer(line: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("a reply's number is not a number"))
}

/// A length: -1 (nil) or up to `max`.
fn length(line: &[u8], max: usize) -> io::Result<Option<usize>> {
    match integer(line)? {
        -1 => Ok(None),
        n if n >= 0 && (n as u64) <= max as u64 => Ok(Some(n as usize)),
        _ => Err(malformed("a reply's length is out of range")),
    }
}

fn value<'a>(buf: &'a [u8], at: &mut usize, depth: usize) -> io::Result<Option<Reply<'a>>> {
    let Some(&kind) = buf.get(*at) else {
        return Ok(None);
    };
    let mut next = *at + 1;
    let Some(head) = line(buf, &mut next)? else {
        return Ok(None);
    };
    let v = match kind {
        b'+' if head == b"OK" => Value::Okay,
        b'+' => Value::SimpleString(String::from_utf8_lossy(head).into_owned()),
        b'-' => {
            *at = next;
            return Ok(Some(Reply::Error(head)));
        }
        b':' => Value::Int(integer(head)?),
        b'$' => match length(head, MAX_BULK)? {
            None => Value::Nil,
            Some(n) => {
                if buf.len() < next + n + 2 {
                    return Ok(None);
                }
                if &buf[next + n..next + n + 2] != b"\r\n" {
                    return Err(malformed("a bulk string not ended by CRLF"));
                }
                let s = buf[next..next + n].to_vec();
                next += n + 2;
                Value::BulkString(s)
            }
        },
        b'*' => match length(head, MAX_ELEMENTS)? {
            None => Value::Nil,
            Some(_) if depth >= MAX_DEPTH => return Err(malformed("arrays nested too deeply")),
            Some(n) => {
                let mut items = Vec::with_capacity(n.min(1024));
                // An error inside an array (pgopt sends nothing that gets one) makes
                // the whole reply that error, once all of it is read.
                let mut error = None;
                for _ in 0..n {
                    match value(buf, &mut next, depth + 1)? {
                        None => return Ok(None),
                        Some(Reply::Value(v)) => items.push(v),
                        Some(Reply::Error(line)) => error = error.or(Some(line)),
                    }
                }
                if let Some(line) = error {
                    *at = next;
                    return Ok(Some(Reply::Error(line)));
                }
                Value::Array(items)
            }
        },
        _ => return Err(malformed("a reply of a kind RESP2 does not have")),
    };
    *at = next;
    Ok(Some(Reply::Value(v)))
}

/// A connection that has sent its AUTH and SELECT, and what it read past their replies.
async fn open(target: &Target) -> RedisResult<(TcpStream, BytesMut)> {
    let mut stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
    stream.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    if let Some(password) = &target.password {
        let mut auth = Command::new("AUTH");
        if let Some(user) = &target.username {
            auth.arg(user);
        }
        auth.arg(password);
        converse(&mut stream, &mut buf, &mut auth).await?;
    }
    if target.db != 0 {
        let mut select = Command::new("SELECT");
        select.arg(target.db.to_string());
        converse(&mut stream, &mut buf, &mut select).await?;
    }
    Ok((stream, buf))
}

/// Sends `cmd` and reads its reply (on a connection no one else uses).
async fn converse(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    cmd: &mut Command,
) -> RedisResult<Value> {
    stream.write_all(cmd.wire()).await?;
    read_reply(stream, buf).await
}

/// The next reply on `stream`; an error reply is an error.
async fn read_reply<R: AsyncReadExt + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
) -> RedisResult<Value> {
    loop {
        if let Some((reply, used)) = parse(buf)? {
            buf.advance(used);
            return reply;
        }
        buf.reserve(16 * 1024);
        if stream.read_buf(buf).await? == 0 {
            return Err(broken("Redis closed the connection"));
        }
    }
}

/// Callers waiting for replies, in the order their commands were sent.
#[derive(Default)]
struct Waiting {
    queue: VecDeque<oneshot::Sender<RedisResult<Value>>>,
    /// Why the connection is no longer usable.
    closed: Option<String>,
}

impl Waiting {
    /// Fails every waiting caller and every later one.
    fn close(&mut self, why: &str) {
        if self.closed.is_none() {
            self.closed = Some(why.to_string());
        }
        for tx in self.queue.drain(..) {
            let _ = tx.send(Err(broken(why)));
        }
    }
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connection many callers share: each command is written whole under a lock, and
/// a reader task hands each reply to the caller next in line.
pub struct Pipe {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    waiting: Arc<Mutex<Waiting>>,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pipe")
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.reader.abort();
        lock(&self.waiting).close("the connection was dropped");
    }
}

/// Closes the pipe unless disarmed: a command cut off mid-write (its caller gave up)
/// leaves the stream in no state to go on.
struct CutOff<'a>(Option<&'a Mutex<Waiting>>);

impl Drop for CutOff<'_> {
    fn drop(&mut self) {
        if let Some(waiting) = self.0 {
            lock(waiting).close("a command was cut off mid-write");
        }
    }
}

impl Pipe {
    pub async fn connect(target: &Target) -> RedisResult<Pipe> {
        let (stream, buf) = open(target).await?;
        let (read, write) = stream.into_split();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let reader = tokio::spawn(read_replies(read, buf, waiting.clone()));
        Ok(Pipe {
            writer: Arc::new(tokio::sync::Mutex::new(write)),
            waiting,
            reader,
        })
    }

    /// Sends `cmd` and waits for its reply.
    pub async fn query(&self, cmd: &mut Command) -> RedisResult<Value> {
        let (tx, rx) = oneshot::channel();
        {
            let mut writer = self.writer.clone().lock_owned().await;
            {
                let mut waiting = lock(&self.waiting);
                if let Some(why) = &waiting.closed {
                    return Err(broken(why.clone()));
                }
                waiting.queue.push_back(tx);
            }
            if cmd.wire().len() > LONG_COMMAND {
                // Written whole whatever the caller does (the lock goes with it).
                let wire = cmd.wire().to_vec();
                let waiting = self.waiting.clone();
                tokio::spawn(async move {
                    // (Bounded: a Redis that stopped reading must not keep the socket.)
                    let write = tokio::time::timeout(LONG_WRITE, writer.write_all(&wire));
                    match write.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            lock(&waiting).close(&format!("writing to Redis failed: {e}"))
                        }
                        Err(_) => lock(&waiting).close("a long write to Redis timed out"),
                    }
                });
            } else {
                let mut cut_off = CutOff(Some(&self.waiting));
                let written = writer.write_all(cmd.wire()).await;
                cut_off.0 = None;
                if let Err(e) = written {
                    lock(&self.waiting).close(&format!("writing to Redis failed: {e}"));
                    return Err(e.into());
                }
            }
        }
        rx.await
            .unwrap_or_else(|_| Err(broken("the connection was dropped")))
    }
}

impl Pipe {
    /// Sends two short commands in one write and waits for both replies (what
    /// [`Pipe::query`] twice costs in a system call and a wake-up less). A command
    /// over 64 KB goes through [`Pipe::query`].
    pub async fn query_pair(
        &self,
        first: &mut Command,
        second: &mut Command,
    ) -> RedisResult<(Value, Value)> {
        if first.wire().len() + second.wire().len() > LONG_COMMAND {
            let a = self.query(first).await?;
            return Ok((a, self.query(second).await?));
        }
        let (tx_a, rx_a) = oneshot::channel();
        let (tx_b, rx_b) = oneshot::channel();
        {
            let mut writer = self.writer.lock().await;
            {
                let mut waiting = lock(&self.waiting);
                if let Some(why) = &waiting.closed {
                    return Err(broken(why.clone()));
                }
                waiting.queue.push_back(tx_a);
                waiting.queue.push_back(tx_b);
            }
            let mut both = Vec::with_capacity(first.wire().len() + second.wire().len());
            both.extend_from_slice(first.wire());
            both.extend_from_slice(second.wire());
            let mut cut_off = CutOff(Some(&self.waiting));
            let written = writer.write_all(&both).await;
            cut_off.0 = None;
            if let Err(e) = written {
                lock(&self.waiting).close(&format!("writing to Redis failed: {e}"));
                return Err(e.into());
            }
        }
        let dropped = || broken("the connection was dropped");
        let a = rx_a.await.unwrap_or_else(|_| Err(dropped()))?;
        let b = rx_b.await.unwrap_or_else(|_| Err(dropped()))?;
        Ok((a, b))
    }
}

async fn read_replies(mut read: OwnedReadHalf, mut buf: BytesMut, waiting: Arc<Mutex<Waiting>>) {
    loop {
        loop {
            match parse(&buf) {
                Ok(Some((reply, used))) => {
                    buf.advance(used);
                    let mut w = lock(&waiting);
                    match w.queue.pop_front() {
                        // (A caller that gave up has dropped its receiver.)
                        Some(tx) => drop(tx.send(reply)),
                        None => {
                            w.close("Redis sent a reply nothing asked for");
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    lock(&waiting).close(&format!("a malformed reply from Redis: {e}"));
                    return;
                }
            }
        }
        if buf.is_empty() && buf.capacity() > BUF_KEEP {
            buf = BytesMut::with_capacity(16 * 1024);
        }
        buf.reserve(16 * 1024);
        match read.read_buf(&mut buf).await {
            Ok(0) => {
                lock(&waiting).close("Redis closed the connection");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                lock(&waiting).close(&format!("reading from Redis failed: {e}"));
                return;
            }
        }
    }
}

/// A connection subscribed to channels.
pub struct Subscriber {
    stream: TcpStream,
    buf: BytesMut,
}

impl Subscriber {
    /// Subscribes to `channels`, returning once Redis confirmed each.
    pub async fn subscribe(target: &Target, channels: &[&str]) -> RedisResult<Subscriber> {
        let (mut stream, mut buf) = open(target).await?;
        let mut cmd = Command::new("SUBSCRIBE");
        for c in channels {
            cmd.arg(c);
        }
        stream.write_all(cmd.wire()).await?;
        for _ in channels {
            match read_reply(&mut stream, &mut buf).await? {
                Value::Array(v) if matches!(v.first(), Some(Value::BulkString(k)) if k == b"subscribe") =>
                    {}
                _ => return Err(broken("Redis did not confirm a subscription")),
            }
        }
        Ok(Subscriber { stream, buf })
    }

    /// The next message: its channel and payload.
    pub async fn next(&mut self) -> RedisResult<(Vec<u8>, Vec<u8>)> {
        loop {
            if let Value::Array(v) = read_reply(&mut self.stream, &mut self.buf).await? {
                let mut v = v.into_iter();
                if let (
                    Some(Value::BulkString(kind)),
                    Some(Value::BulkString(channel)),
                    Some(Value::BulkString(payload)),
                ) = (v.next(), v.next(), v.next())
                {
                    if kind == b"message" {
                        return Ok((channel, payload));
                    }
                }
            }
            // (Anything else a subscribed connection may get — a pong — is skipped.)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(buf: &[u8]) -> Option<(RedisResult<Value>, usize)> {
        parse(buf).unwrap()
    }

    #[test]
    fn commands_are_written_in_resp() {
        let mut cmd = Command::new("EVALSHA");
        cmd.arg("abc").num(2).arg_with(&[b"p:", b"t"]).arg(b"");
        assert_eq!(
            cmd.wire(),
            b"*5\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n2\r\n$3\r\np:t\r\n$0\r\n\r\n"
        );
        let args: Vec<&[u8]> = cmd.args().collect();
        assert_eq!(args, [&b"EVALSHA"[..], b"abc", b"2", b"p:t", b""]);
        let mut many = Command::new("X");
        for _ in 0..10 {
            many.num(u64::MAX);
        }
        assert!(many
            .wire()
            .starts_with(b"*11\r\n$1\r\nX\r\n$20\r\n18446744073709551615\r\n"));
    }

    #[test]
    fn replies_are_read_whole_or_not_at_all() {
        let reply = b"*3\r\n$7\r\nmessage\r\n$-1\r\n:42\r\n+OK\r\n";
        let (v, used) = parsed(reply).unwrap();
        assert_eq!(used, reply.len() - 5);
        assert_eq!(
            v.unwrap(),
            Value::Array(vec![
                Value::BulkString(b"message".to_vec()),
                Value::Nil,
                Value::Int(42)
            ])
        );
        for cut in 0..used {
            assert!(parsed(&reply[..cut]).is_none(), "cut at {cut}");
        }
        assert_eq!(parsed(b"+OK\r\n").unwrap().0.unwrap(), Value::Okay);
        assert_eq!(
            parsed(b"$0\r\n\r\n").unwrap().0.unwrap(),
            Value::BulkString(vec![])
        );
        let (e, used) = parsed(b"-NOSCRIPT No matching script.\r\n").unwrap();
        assert_eq!(used, 31);
        assert_eq!(e.unwrap_err().kind(), ErrorKind::NoScriptError);
        let e = parsed(b"-ERR wrong\r\n").unwrap().0.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ResponseError);
        assert!(!e.is_io_error());
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for bad in [
            &b"?x\r\n"[..],
            b"$3\r\nabcd\r\n",
            b"$-2\r\n",
            b":x\r\n",
            b"+OK\n",
            b"$99999999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse(&[b'+'; 70 * 1024]).is_err());
    }
}

//! Thread per core: client sessions spread over single-threaded runtimes, as
//! PgBouncer's `so_reuseport` processes spread clients, instead of one work-stealing
//! runtime. A session's socket reads wake it on its own thread: no task moves between
//! threads, no sleeping sibling is woken to steal work (a futex call per wake), and
//! the scheduler takes no shared locks. On this 2-core machine it cut the proxy's CPU
//! per `pgbench -S` transaction from 14.0 to 12.5 µs (docs/benchmarks.md).
//!
//! The pools stay shared: a server connection is registered with the runtime of the
//! thread that opened it (its *home*), and a checkout prefers an idle connection
//! whose home is the checking-out thread (see `Pool::take_idle`). One from another
//! thread still works: its readiness comes from its home runtime's event loop, which
//! wakes the session across threads.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::net::{ClientStream, Endpoint};
use crate::shared::Shared;

thread_local! {
    static HOME: Cell<usize> = const { Cell::new(0) };
    /// On a session thread: the runtime the proxy started on.
    static MAIN: RefCell<Option<Handle>> = const { RefCell::new(None) };
}

/// Spawns a task that must outlive the session that starts it (a replica checker, a
/// pool shrinking after RELOAD, a SHUTDOWN's drain) on the runtime the proxy started
/// on: a session thread's runtime ends when the proxy is dropped.
pub fn spawn_background(task: impl Future<Output = ()> + Send + 'static) {
    match MAIN.with(|main| main.borrow().clone()) {
        Some(main) => drop(main.spawn(task)),
        None => drop(tokio::spawn(task)),
    }
}

/// The runtime this thread runs sessions for: 0 the one the proxy started on, `i` the
/// `i`-th session thread.
pub fn home() -> usize {
    HOME.with(Cell::get)
}

/// The runtimes sessions run on, taken in turn.
pub struct Spawner {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

/// The session threads; dropping this stops them (their runtimes end, and with them
/// the sessions and server connections they hold).
pub struct Workers {
    _stops: Vec<oneshot::Sender<()>>,
}

/// Session threads besides the starting runtime for `workers` threads in all (0: one
/// per core).
pub fn session_threads(workers: usize) -> usize {
    let threads = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    threads.saturating_sub(1)
}

/// Starts `threads` session threads besides the current runtime, which serves sessions
/// too.
pub fn start(threads: usize) -> std::io::Result<(Arc<Spawner>, Workers)> {
    let main = Handle::current();
    let mut handles = vec![main.clone()];
    let mut stops = Vec::with_capacity(threads);
    for i in 1..=threads {
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, handle) = std::sync::mpsc::channel();
        let main = main.clone();
        std::thread::Builder::new()
            .name(format!("pgopt-worker-{i}"))
            .spawn(move || {
                HOME.with(|h| h.set(i));
                MAIN.with(|m| *m.borrow_mut() = Some(main));
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = ready.send(Ok(runtime.handle().clone()));
                        // Until the proxy is dropped; then the runtime's sessions end.
                        let _ = runtime.block_on(stopped);
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            })?;
        let handle = handle
            .recv()
            .map_err(|_| std::io::Error::other("a session thread ended at start"))??;
        handles.push(handle);
        stops.push(stop);
    }
    Ok((
        Arc::new(Spawner {
            handles,
            next: AtomicUsize::new(0),
        }),
        Workers { _stops: stops },
    ))
}

impl Spawner {
    /// Runs the session of the client on `stream` on the next runtime in turn.
    pub fn spawn_session(&self, stream: ClientStream, peer: Endpoint, shared: Arc<Shared>) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        // (Boxed: a session's future is kilobytes, and a task's is moved several
        // times as it is spawned; a box moves as a pointer.)
        if i == 0 {
            tokio::spawn(Box::pin(crate::session::run(stream, peer, shared)));
            return;
        }
        // The socket moves to that runtime's event loop.
        let stream = match stream.detach() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(client = %peer, error = %e, "handing a client to a session thread failed");
                return;
            }
        };
        self.handles[i].spawn(Box::pin(async move {
            match stream.attach() {
                Ok(stream) => crate::session::run(stream, peer, shared).await,
                Err(e) => {
                    tracing::warn!(client = %peer, error = %e, "handing a client to a session thread failed")
                }
            }
        }));
    }
}

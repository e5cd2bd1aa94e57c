//! Single flight: concurrent misses on one key make one trip to PostgreSQL. The first
//! caller leads (gets a [`Flight`]); the others wait until it is dropped — filled,
//! failed or abandoned — and look again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::key::Key;

/// Fills in progress: key hash → (full key, closed when the fill ends).
type InFlight = Arc<Mutex<HashMap<u64, (Arc<[u8]>, Arc<Semaphore>)>>>;

/// Fills in progress, by key.
#[derive(Default)]
pub struct Flights {
    map: InFlight,
}

/// A fill this caller leads; dropping it lets the waiters go.
pub struct Flight {
    map: Option<InFlight>,
    hash: u64,
    done: Arc<Semaphore>,
}

pub enum Joined {
    Leader(Flight),
    /// Resolves when the leader's flight ends.
    Waiter(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl Flights {
    pub fn join(&self, key: &Key) -> Joined {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key.hash()) {
            Some((bytes, done)) if **bytes == *key.bytes() => {
                let done = done.clone();
                Joined::Waiter(Box::pin(async move {
                    // Closed when the flight ends: acquire fails at once then.
                    let _ = done.acquire().await;
                }))
            }
            // Another key in the same bucket is in flight: lead without registering.
            Some(_) => Joined::Leader(Flight {
                map: None,
                hash: key.hash(),
                done: Arc::new(Semaphore::new(0)),
            }),
            None => {
                let done = Arc::new(Semaphore::new(0));
                map.insert(key.hash(), (key.bytes().into(), done.clone()));
                Joined::Leader(Flight {
                    map: Some(self.map.clone()),
                    hash: key.hash(),
                    done,
                })
            }
        }
    }

    /// Fills in progress.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Some(map) = &self.map {
            map.lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.hash);
        }
        self.done.close();
    }
}

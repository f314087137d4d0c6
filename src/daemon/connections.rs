//! The listener's client connections: how many it keeps open at once, and which one gives way to a new client.
//!
//! Every connection holds a file descriptor, and so does the daemon's own work (the store, the trigger watcher,
//! sources, Iterable): the cap (`daemon.max_connections`) stays below the process's descriptor limit, less a
//! reserve for that work, and the soft limit is raised to the hard one at start. At the cap a new client takes the
//! place of the connection idle longest (no request in progress: a client that has sent nothing yet, or a
//! kept-alive connection between requests), as busy web servers drop idle keep-alive connections; when every
//! connection is busy, new clients wait in the kernel's backlog until one ends. How requests are served is the
//! listener's; this module only keeps the table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Descriptors kept for the daemon's own work: the store's pool (three files per SQLite connection), the trigger
/// watcher, segment sources, Iterable's connection pools, the log and the runtime.
pub const RESERVED_DESCRIPTORS: u64 = 128;

/// The fewest client connections the listener keeps, however low the descriptor limit.
const MIN_CONNECTIONS: usize = 8;

/// Raises the process's soft descriptor limit to its hard limit (a service manager's soft limit is often 1024
/// while the hard one is far higher), and answers the limit in force afterwards. A limit that cannot be raised
/// stays as it was, with a warning; the error says that the limit cannot even be read.
pub fn raise_descriptor_limit() -> Result<u64, String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("cannot read the descriptor limit: {e}"))?;
    if soft >= hard {
        return Ok(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Ok(hard),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot raise the descriptor limit from {soft} to its hard limit {hard}.");
            Ok(soft)
        }
    }
}

/// The hard descriptor limit, which `raise_descriptor_limit` makes the soft one: what the daemon will have.
pub fn hard_descriptor_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok().map(|(_, hard)| hard)
}

/// How many client connections to keep open at once: `configured`, but no more than the descriptor `limit` less
/// `RESERVED_DESCRIPTORS` (and never fewer than a handful).
pub fn cap(configured: usize, limit: u64) -> usize {
    let room = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
    configured.min(room).max(MIN_CONNECTIONS)
}

/// One open connection, as the table sees it.
struct Entry {
    /// Requests in progress on it.
    busy: usize,
    /// When it opened or last finished a request.
    idle_since: Instant,
    /// Cancelled to tell it to close; it keeps its place until it has.
    close: CancellationToken,
}

impl Entry {
    /// Whether it may close for a new client: no request in progress, and not closing already.
    fn can_give_way(&self) -> bool {
        self.busy == 0 && !self.close.is_cancelled()
    }
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Entry>,
}

/// The open connections, shared by the accept loop and each connection's task.
pub struct Connections {
    cap: usize,
    table: Mutex<Table>,
    /// Signalled when a connection closes or goes idle (the accept loop may then have room).
    changed: Notify,
}

impl Connections {
    pub fn new(cap: usize) -> Arc<Connections> {
        Arc::new(Connections { cap, table: Mutex::default(), changed: Notify::new() })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().expect("connection table lock")
    }

    /// Whether a new client can be taken: below the cap, or at it with an idle connection to give way. A connection
    /// that gave way keeps its place until it has closed, so descriptors never exceed the cap by more than one.
    fn has_room(&self) -> bool {
        let t = self.table();
        t.open.len() < self.cap || (t.open.len() == self.cap && t.open.values().any(Entry::can_give_way))
    }

    /// Waits until a new client can be taken (see `has_room`).
    pub async fn room(&self) {
        while !self.has_room() {
            self.changed.notified().await;
        }
    }

    /// Waits until every connection has closed.
    pub async fn drained(&self) {
        while !self.table().open.is_empty() {
            self.changed.notified().await;
        }
    }

    /// Takes in a new connection. At the cap, the connection idle longest is told to close and this one takes its
    /// place; None when none can give way (the caller then drops the new one).
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut t = self.table();
        if t.open.len() > self.cap {
            return None;
        }
        if t.open.len() == self.cap {
            let oldest = t.open.values().filter(|e| e.can_give_way()).min_by_key(|e| e.idle_since)?;
            oldest.close.cancel();
        }
        let id = t.next_id;
        t.next_id += 1;
        let close = CancellationToken::new();
        t.open.insert(id, Entry { busy: 0, idle_since: Instant::now(), close: close.clone() });
        Some(Slot { id, connections: self.clone(), close })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.table().open.len()
    }
}

/// A connection's place in the table, given up when it drops.
pub struct Slot {
    id: u64,
    connections: Arc<Connections>,
    close: CancellationToken,
}

impl Slot {
    /// Completes when the connection is to close to make room for a new client.
    pub async fn evicted(&self) {
        self.close.cancelled().await
    }

    /// Marks a request in progress until the guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        if let Some(e) = self.connections.table().open.get_mut(&self.id) {
            e.busy += 1;
        }
        Busy(self.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.table().open.remove(&self.id);
        self.connections.changed.notify_one();
    }
}

/// A request in progress on a connection (see `Slot::busy`).
pub struct Busy(Arc<Slot>);

impl Drop for Busy {
    fn drop(&mut self) {
        let slot = &self.0;
        if let Some(e) = slot.connections.table().open.get_mut(&slot.id) {
            e.busy -= 1;
            if e.busy == 0 {
                e.idle_since = Instant::now();
            }
        }
        slot.connections.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_the_daemons_own_work() {
        assert_eq!(cap(512, 1024), 512);
        assert_eq!(cap(512, 256), 128, "256 descriptors: 128 kept");
        assert_eq!(cap(512, 524_288), 512);
        assert_eq!(cap(100, 100), MIN_CONNECTIONS, "a handful, however low the limit");
    }

    #[test]
    fn at_the_cap_the_connection_idle_longest_gives_way_and_a_busy_one_never_does() {
        let c = Connections::new(3);
        let first = Arc::new(c.admit().unwrap());
        let second = Arc::new(c.admit().unwrap());
        let third = Arc::new(c.admit().unwrap());
        let _busy = first.busy();
        std::thread::sleep(Duration::from_millis(5));
        drop(third.busy());
        // first is busy; second has been idle longest.
        let fourth = c.admit().unwrap();
        assert!(second.close.is_cancelled() && !first.close.is_cancelled() && !third.close.is_cancelled());
        assert_eq!(c.open(), 4, "second keeps its place until it has closed");
        assert!(!c.has_room() && c.admit().is_none(), "one connection closing at a time");
        drop(second);
        assert!(c.has_room(), "third and fourth are idle");
        let _busy = (third.busy(), Arc::new(fourth).busy());
        assert!(!c.has_room(), "every connection busy: the next client waits");
        assert!(c.admit().is_none());
    }

    #[tokio::test]
    async fn the_accept_loop_wakes_when_a_connection_closes() {
        let c = Connections::new(1);
        let only = Arc::new(c.admit().unwrap());
        let busy = only.busy();
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.room().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(busy);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    }
}

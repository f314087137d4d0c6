//! The per-connection list lock, held while a run reads a connection's lists and creates the ones missing, so that
//! no two runs, in one process or several, on one host or several, can both find a list missing and both create it
//! (Iterable allows several lists with one name). On SQLite it is an OS file lock beside the store
//! (`<store>.locks/connection-<id>.lock`); on PostgreSQL an advisory lock in the store, which every daemon sharing
//! it sees.
//!
//! It owns only that lock; it must be held briefly (one `GET /api/lists` and the creations), never while sending.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Held while a run looks up and creates lists of one connection; released on drop (or by the OS, or the database,
/// when the process dies).
pub struct ListLock {
    _held: Held,
}

impl std::fmt::Debug for ListLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListLock")
    }
}

enum Held {
    File(#[allow(dead_code)] File),
    Store(#[allow(dead_code)] crate::store::ListsLock),
}

#[derive(Debug, thiserror::Error)]
pub enum ListLockError {
    #[error("cannot take the list lock {path}: {cause}. Check that the directory beside the store is writable.")]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("cannot take the list lock in the store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The run was asked to stop while it waited for the lock.
    #[error("stopped waiting for the list lock: the run was asked to stop")]
    Cancelled,
}

/// How often a waiting run tries the lock again. Holders keep it for one `GET /api/lists` and a few creations.
const RETRY_EVERY: Duration = Duration::from_millis(25);

impl ListLock {
    /// Waits, without blocking a thread, until this process holds the list lock of `connection_id` (in `store` on
    /// PostgreSQL, else in `dir`), or until `cancel` is cancelled.
    pub async fn acquire_for(
        store: &crate::store::Store,
        dir: &Path,
        connection_id: i64,
        cancel: &CancellationToken,
    ) -> Result<ListLock, ListLockError> {
        if store.kind() == crate::store::Kind::Sqlite {
            return Self::acquire(dir, connection_id, cancel).await;
        }
        match store.lock_lists(connection_id, RETRY_EVERY, cancel).await? {
            Some(held) => Ok(ListLock { _held: Held::Store(held) }),
            None => Err(ListLockError::Cancelled),
        }
    }

    /// Waits, without blocking a thread, until this process holds the file lock of `connection_id` in `dir`, or
    /// until `cancel` is cancelled.
    pub async fn acquire(
        dir: &Path,
        connection_id: i64,
        cancel: &CancellationToken,
    ) -> Result<ListLock, ListLockError> {
        let path = dir.join(format!("connection-{connection_id}.lock"));
        let io = |cause| ListLockError::Io { path: path.clone(), cause };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io)?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(ListLock { _held: Held::File(file) }),
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_EVERY) => {}
                _ = cancel.cancelled() => return Err(ListLockError::Cancelled),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_until_the_first_lets_go_or_its_run_stops() {
        let dir = tempfile::tempdir().unwrap();
        let never = CancellationToken::new();
        let first = ListLock::acquire(dir.path(), 7, &never).await.unwrap();
        let path = dir.path().to_path_buf();
        let second = tokio::spawn(async move { ListLock::acquire(&path, 7, &CancellationToken::new()).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "the second holder got the lock while the first held it");
        ListLock::acquire(dir.path(), 8, &never).await.expect("other connections are independent");

        let stop = CancellationToken::new();
        stop.cancel();
        let stopped = ListLock::acquire(dir.path(), 7, &stop).await;
        assert!(matches!(stopped, Err(ListLockError::Cancelled)), "{stopped:?}");

        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap();
    }
}

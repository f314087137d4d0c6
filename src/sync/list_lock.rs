//! The per-connection list lock: an OS file lock beside the store (`<store>.locks/connection-<id>.lock`) held
//! while a run reads a connection's lists and creates the ones missing, so that no two runs, in one process or
//! several, can both find a list missing and both create it (Iterable allows several lists with one name).
//!
//! It owns only that file; it must be held briefly (one `GET /api/lists` and the creations), never while sending.

use std::fs::File;
use std::path::{Path, PathBuf};

/// Held while a run looks up and creates lists of one connection; released on drop (or by the OS when the
/// process dies).
#[derive(Debug)]
pub struct ListLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot take the list lock {path}: {cause}. Check that the directory beside the store is writable.")]
pub struct ListLockError {
    path: PathBuf,
    cause: std::io::Error,
}

impl ListLock {
    /// Waits, without blocking the runtime, until this process holds the list lock of `connection_id`.
    pub async fn acquire(dir: &Path, connection_id: i64) -> Result<ListLock, ListLockError> {
        let path = dir.join(format!("connection-{connection_id}.lock"));
        let io = |cause| ListLockError { path: path.clone(), cause };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io)?;
        // `File::lock` blocks the thread until the holder lets go, so it waits on a blocking-pool thread.
        let locked = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(|e| io(std::io::Error::other(e)))?;
        Ok(ListLock { _file: locked.map_err(io)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_holder_waits_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = ListLock::acquire(dir.path(), 7).await.unwrap();
        let path = dir.path().to_path_buf();
        let second = tokio::spawn(async move { ListLock::acquire(&path, 7).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "the second holder got the lock while the first held it");
        ListLock::acquire(dir.path(), 8).await.expect("other connections are independent");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap();
    }
}

//! The per-export run lock: an OS file lock beside the store, so two runs of one export never overlap, across
//! processes too, and a lock held by a process that died (even by `kill -9`) is released by the OS at once.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

/// Held while an export runs; released on drop.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("export is already running in another process (lock {path})")]
    Busy { path: PathBuf },
    #[error("cannot create the run lock {path}: {cause}. Check that the directory beside the store is writable.")]
    Io { path: PathBuf, cause: std::io::Error },
}

impl RunLock {
    /// Takes the lock of export `export_id` without waiting.
    pub fn try_acquire(dir: &Path, export_id: i64) -> Result<RunLock, LockError> {
        let path = dir.join(format!("export-{export_id}.lock"));
        let io = |cause| LockError::Io { path: path.clone(), cause };
        private_dir(dir).map_err(io)?;
        let mut options = File::options();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(RunLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(LockError::Busy { path }),
            Err(TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// Whether some process holds the lock of `export_id` now.
    pub fn is_held(dir: &Path, export_id: i64) -> bool {
        matches!(Self::try_acquire(dir, export_id), Err(LockError::Busy { .. }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock folder sits beside the store and is the owner's alone, whatever the umask.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_of_the_same_export_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::try_acquire(dir.path(), 1).unwrap();
        assert!(matches!(RunLock::try_acquire(dir.path(), 1), Err(LockError::Busy { .. })));
        assert!(RunLock::try_acquire(dir.path(), 2).is_ok(), "other exports are independent");
        assert!(RunLock::is_held(dir.path(), 1));
        drop(first);
        assert!(RunLock::try_acquire(dir.path(), 1).is_ok());
    }
}

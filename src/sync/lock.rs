//! The per-export run lock: an OS file lock beside the store, so two runs of one export never overlap, across
//! processes too, and a lock held by a process that died (even by `kill -9`) is released by the OS at once.
//!
//! The lock is a Linux open-file-description lock (`F_OFD_SETLK`), so whether a run is in flight can be asked with
//! `F_OFD_GETLK`, which never takes the lock: a read-only `runs` or a starting daemon cannot make a concurrent
//! `export run` find its export busy. (With `flock`, the only way to ask was to take the lock for a moment.)

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

/// Held while an export runs; released on drop (closing the file releases an OFD lock).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("export is already running in another process ({held_by})")]
    Busy { held_by: String },
    #[error("cannot ask the store who runs the export: {cause}")]
    Store { cause: String },
    #[error("cannot create the run lock {path}: {cause}. Check that the directory beside the store is writable.")]
    Io { path: PathBuf, cause: std::io::Error },
}

/// How long `try_acquire` waits out a holder before calling the export busy: a daemon's start-up sweep holds a
/// lock for one SQL statement (milliseconds), which must not make a concurrent `export run` give up; a run holds it
/// far longer. Short, because the wait blocks the caller's thread.
const SHORT_HOLD: Duration = Duration::from_millis(250);

/// The whole file, exclusively (`l_type` F_WRLCK), or the query for it.
fn whole_file(l_type: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        // Must be 0 for OFD locks.
        l_pid: 0,
    }
}

fn lock_path(dir: &Path, export_id: i64) -> PathBuf {
    dir.join(format!("export-{export_id}.lock"))
}

impl RunLock {
    /// Takes the lock of export `export_id`, waiting at most a moment for a holder that is not a run (see
    /// `SHORT_HOLD`); a run in flight makes it `Busy`.
    pub fn try_acquire(dir: &Path, export_id: i64) -> Result<RunLock, LockError> {
        let path = lock_path(dir, export_id);
        let io = |cause| LockError::Io { path: path.clone(), cause };
        private_dir(dir).map_err(io)?;
        let mut options = File::options();
        options.create(true).truncate(false).read(true).write(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(io)?;
        let give_up = Instant::now() + SHORT_HOLD;
        loop {
            match fcntl(&file, FcntlArg::F_OFD_SETLK(&whole_file(libc::F_WRLCK))) {
                Ok(_) => return Ok(RunLock { _file: file, path }),
                Err(Errno::EAGAIN | Errno::EACCES) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(Errno::EAGAIN | Errno::EACCES) => {
                    return Err(LockError::Busy { held_by: format!("lock {}", path.display()) })
                }
                Err(e) => return Err(io(e.into())),
            }
        }
    }

    /// Whether some process (this one included) holds the lock of `export_id` now. Asks the kernel
    /// (`F_OFD_GETLK`); never takes the lock, so it cannot disturb a run that is starting.
    pub fn is_held(dir: &Path, export_id: i64) -> bool {
        let path = lock_path(dir, export_id);
        // Opened read-only and never created: a missing file means no run ever held it.
        let Ok(file) = File::open(&path) else { return false };
        let mut query = whole_file(libc::F_WRLCK);
        match fcntl(&file, FcntlArg::F_OFD_GETLK(&mut query)) {
            Ok(_) => query.l_type != libc::F_UNLCK as libc::c_short,
            Err(e) => {
                tracing::warn!(lock = %path.display(), error = %e, "Cannot ask whether the run lock is held; assuming it is.");
                true
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Held (shared) by every daemon on a SQLite store while it runs, so that what must have the store to itself
/// (`store copy`) can tell a daemon uses it, and keep one from starting meanwhile (exclusive).
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
}

impl DaemonLock {
    fn open(dir: &Path) -> std::io::Result<File> {
        private_dir(dir)?;
        let mut options = File::options();
        options.create(true).truncate(false).read(true).write(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(dir.join("daemon.lock"))
    }

    fn take(dir: &Path, l_type: libc::c_int) -> std::io::Result<Option<DaemonLock>> {
        let file = Self::open(dir)?;
        match fcntl(&file, FcntlArg::F_OFD_SETLK(&whole_file(l_type))) {
            Ok(_) => Ok(Some(DaemonLock { _file: file })),
            Err(Errno::EAGAIN | Errno::EACCES) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A daemon's share of the store (any number of daemons hold it at once); None while the store is taken whole.
    pub fn shared(dir: &Path) -> std::io::Result<Option<DaemonLock>> {
        Self::take(dir, libc::F_RDLCK)
    }

    /// The store whole: None while any daemon runs on it.
    pub fn exclusive(dir: &Path) -> std::io::Result<Option<DaemonLock>> {
        Self::take(dir, libc::F_WRLCK)
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
        assert!(!RunLock::is_held(dir.path(), 1));
        assert!(RunLock::try_acquire(dir.path(), 1).is_ok());
    }

    #[test]
    fn a_lock_held_only_for_a_moment_is_waited_out() {
        let dir = tempfile::tempdir().unwrap();
        let sweep = RunLock::try_acquire(dir.path(), 3).unwrap();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(sweep);
        });
        assert!(RunLock::try_acquire(dir.path(), 3).is_ok());
        holder.join().unwrap();
    }

    #[test]
    fn asking_whether_a_lock_is_held_never_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!RunLock::is_held(dir.path(), 7), "no file yet: not held");
        assert!(!dir.path().join("export-7.lock").exists(), "asking creates nothing");
        let lock = RunLock::try_acquire(dir.path(), 7).unwrap();
        drop(lock);
        // Query from many threads while another takes the lock over and over: the taker never finds it busy.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let askers: Vec<_> = (0..4)
            .map(|_| {
                let (dir, stop) = (dir.path().to_path_buf(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = RunLock::is_held(&dir, 7);
                    }
                })
            })
            .collect();
        for _ in 0..200 {
            let l = File::options().write(true).open(dir.path().join("export-7.lock")).unwrap();
            assert!(fcntl(&l, FcntlArg::F_OFD_SETLK(&whole_file(libc::F_WRLCK))).is_ok(), "a query took the lock");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for a in askers {
            a.join().unwrap();
        }
    }
}

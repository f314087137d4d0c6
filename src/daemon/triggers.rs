//! Trigger files: a file named after an export (or `all`) in the trigger directory asks the daemon to run it.
//! The directory is watched (`notify`) and also scanned on an interval, because events can be missed on bind
//! mounts and network file systems. A file is removed when it is taken; names starting with `.` are ignored, so
//! writers can create `.NAME.tmp` and rename it into place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc;

use super::Command;

/// The name that runs every export.
pub const ALL: &str = "all";

/// Writes a trigger file atomically (write a hidden temporary file, then rename it into place).
pub fn write_trigger(dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, format!("requested at {}\n", chrono::Utc::now().to_rfc3339()))?;
    let path = dir.join(name);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Whether `name` can be a trigger file name.
pub fn valid_trigger_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\0']) && name != ALL
}

/// Takes every trigger file in `dir`: removes it and turns it into a command.
fn take_triggers(dir: &Path) -> Vec<Command> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        match std::fs::remove_file(dir.join(&name)) {
            Ok(()) => {
                tracing::info!(trigger = %name, "Took trigger file.");
                out.push(if name == ALL {
                    Command::RunAll { trigger: "trigger-file", refresh_only: false }
                } else {
                    Command::Run { export: name, trigger: "trigger-file", note: None }
                });
            }
            // Another scan took it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(trigger = %name, error = %e, "Cannot remove trigger file; ignoring it until it can be.")
            }
        }
    }
    out
}

/// Watches and polls `dir` until `tx` closes, sending a command per trigger file.
pub async fn watch(dir: PathBuf, poll: Duration, tx: mpsc::Sender<Command>) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), error = %e, "Cannot create the trigger directory; trigger files will not work.");
    }
    let (event_tx, mut events) = mpsc::channel::<()>(16);
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = event_tx.try_send(());
        }
    })
    .and_then(|mut w| w.watch(&dir, notify::RecursiveMode::NonRecursive).map(|_| w));
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "Cannot watch the trigger directory; scanning it on the interval only.");
            None
        }
    };
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = events.recv() => {}
        }
        let dir2 = dir.clone();
        let commands = tokio::task::spawn_blocking(move || take_triggers(&dir2)).await.unwrap_or_default();
        for c in commands {
            if tx.send(c).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_files_are_taken_once_and_hidden_files_ignored() {
        let dir = tempfile::tempdir().unwrap();
        write_trigger(dir.path(), "weekly").unwrap();
        write_trigger(dir.path(), ALL).unwrap();
        std::fs::write(dir.path().join(".partial.tmp"), "").unwrap();
        let cmds = take_triggers(dir.path());
        assert_eq!(cmds.len(), 2);
        assert!(matches!(&cmds[0], Command::RunAll { .. }));
        assert!(matches!(&cmds[1], Command::Run { export, .. } if export == "weekly"));
        assert!(take_triggers(dir.path()).is_empty(), "taken files are removed");
        assert!(dir.path().join(".partial.tmp").exists());
    }

    #[test]
    fn names_that_cannot_be_trigger_files_are_refused() {
        assert!(valid_trigger_name("VIP export"));
        assert!(!valid_trigger_name("a/b"));
        assert!(!valid_trigger_name(".hidden"));
        assert!(!valid_trigger_name("all"));
    }
}

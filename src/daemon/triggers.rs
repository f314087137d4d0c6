//! Trigger files: a file named after an export (or `all`) in the trigger directory asks the daemon to run it.
//! The directory is watched (`notify`) and also scanned on an interval, because events can be missed on bind
//! mounts and network file systems. A file is removed when it is taken; names starting with `.` are ignored, so
//! writers can create `.NAME.tmp` and rename it into place. Only files named after an export (or `all`) are taken:
//! anything else in the directory is left alone, so a misconfigured directory cannot lose other files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::Watcher;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Command;
use crate::config::Config;
use crate::queue::Trigger;
use crate::store::Store;

/// The name that runs every export.
pub const ALL: &str = "all";

/// How often files that name no export are matched against the exports again.
const RECHECK_STRAY_FILES: Duration = Duration::from_secs(5);

/// Writes a trigger file atomically (write a hidden temporary file, then rename it into place).
pub fn write_trigger(dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, format!("requested at {}\n", chrono::Utc::now().to_rfc3339()))?;
    let path = dir.join(name);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Refuses a `daemon.trigger_dir` that is, or contains, the folder of the store, of the master key or of the
/// config file: files there must never be mistaken for triggers. Paths are compared absolute and with symlinks
/// resolved; a trigger directory that does not exist yet is compared by its absolute path.
pub fn check_paths(config: &Config, config_path: Option<&Path>) -> Result<(), String> {
    let trigger_dir = resolve(&config.daemon.trigger_dir);
    let mut folders = vec![
        ("the store's folder", config.store.path.clone()),
        ("the master key's folder", config.store.master_key_path()),
    ];
    if let Some(p) = config_path {
        folders.push(("the config file's folder", p.to_path_buf()));
    }
    for (what, file) in folders {
        let folder = resolve(&file).parent().map(Path::to_path_buf).unwrap_or_default();
        if folder.starts_with(&trigger_dir) {
            let relation = if folder == trigger_dir { "is" } else { "contains" };
            return Err(format!(
                "daemon.trigger_dir {} {relation} {what} ({}): the daemon takes (removes) files in the trigger \
                 directory, so it must be a directory of its own. Set daemon.trigger_dir to e.g. \"{}\".",
                trigger_dir.display(),
                folder.display(),
                folder.join("triggers").display()
            ));
        }
    }
    Ok(())
}

/// `path` made absolute, `.` and `..` removed, and the longest part that exists resolved (symlinks included).
fn resolve(path: &Path) -> PathBuf {
    use std::path::Component;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut lexical = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                lexical.pop();
            }
            c => lexical.push(c),
        }
    }
    let mut existing = lexical.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return lexical,
        }
    }
}

/// Whether `name` can be a trigger file name.
pub fn valid_trigger_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\0']) && name != ALL
}

/// Takes the trigger files in `dir` named after an export in `exports` (or `all`): removes each and turns it into
/// a command. Other files are left where they are; each name is warned about once (`warned` remembers which, and
/// forgets a name once its file is gone, so a new stray file of that name is warned about again).
fn take_triggers(dir: &Path, exports: &HashSet<String>, warned: &mut HashSet<String>) -> Vec<Command> {
    let mut names = candidates(dir);
    names.sort();
    warned.retain(|n| names.contains(n));
    let mut out = Vec::new();
    for name in names {
        if name != ALL && !exports.contains(&name) {
            if warned.insert(name.clone()) {
                tracing::warn!(trigger_dir = %dir.display(), file = %name, "A file in the trigger directory is not named after an export (or `all`); leaving it alone.");
            }
            continue;
        }
        match std::fs::remove_file(dir.join(&name)) {
            Ok(()) => {
                tracing::info!(trigger = %name, "Took trigger file.");
                out.push(if name == ALL {
                    Command::RunAll { trigger: Trigger::TriggerFile, refresh_only: false, due_at: None }
                } else {
                    Command::Run { export: name, trigger: Trigger::TriggerFile, due_at: None }
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

/// Names of the regular, non-hidden files in `dir`.
fn candidates(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// Whether a file event can mean that a trigger file appeared: created, renamed into place, or written and
/// closed, under a name that is not hidden. Opening, reading and closing without writing (our own scan of the
/// directory makes those), removals and metadata changes cannot, and waking on them made the watcher feed itself.
fn may_be_trigger(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    if event.need_rescan() {
        return true;
    }
    let kind = matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Any
            | EventKind::Other
    );
    let visible = |p: &PathBuf| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| !n.starts_with('.'));
    kind && (event.paths.is_empty() || event.paths.iter().any(visible))
}

/// Watches and polls `dir` until `tx` closes, sending a command per trigger file of an export in `store`.
pub async fn watch(dir: PathBuf, poll: Duration, store: Store, tx: mpsc::Sender<Command>, stop: CancellationToken) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), error = %e, "Cannot create the trigger directory; trigger files will not work.");
    }
    let (event_tx, mut events) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| may_be_trigger(&e)) {
            // A full channel already holds a wake-up.
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
    let mut warned = HashSet::new();
    let mut checked = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = events.recv() => {}
            _ = stop.cancelled() => return,
        }
        let dir2 = dir.clone();
        let found = tokio::task::spawn_blocking(move || candidates(&dir2)).await.unwrap_or_default();
        if found.is_empty() {
            warned.clear();
            continue;
        }
        // Files already warned about are only checked again now and then (an export of that name may have been
        // added since), so a stray file does not cost a store query at every scan.
        if found.iter().all(|n| warned.contains(n)) && checked.elapsed() < RECHECK_STRAY_FILES {
            continue;
        }
        checked = Instant::now();
        // Read the names at each scan that finds files, so an export added a moment ago is already known.
        let exports: HashSet<String> = match store.exports().await {
            Ok(e) => e.into_iter().map(|e| e.name).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the exports to match trigger files; trying again at the next scan.");
                continue;
            }
        };
        let dir2 = dir.clone();
        let (commands, w) = tokio::task::spawn_blocking(move || {
            let commands = take_triggers(&dir2, &exports, &mut warned);
            (commands, warned)
        })
        .await
        .unwrap_or_default();
        warned = w;
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
        std::fs::write(dir.path().join("store.db"), "precious").unwrap();
        let exports = HashSet::from(["weekly".to_string()]);
        let mut warned = HashSet::new();
        let cmds = take_triggers(dir.path(), &exports, &mut warned);
        assert_eq!(cmds.len(), 2);
        assert!(matches!(&cmds[0], Command::RunAll { .. }));
        assert!(matches!(&cmds[1], Command::Run { export, .. } if export == "weekly"));
        assert!(take_triggers(dir.path(), &exports, &mut warned).is_empty(), "taken files are removed");
        assert!(dir.path().join(".partial.tmp").exists());
        assert_eq!(std::fs::read_to_string(dir.path().join("store.db")).unwrap(), "precious", "not a trigger");
        assert_eq!(warned, HashSet::from(["store.db".to_string()]));
    }

    #[test]
    fn only_events_that_can_bring_a_trigger_file_wake_the_watcher() {
        use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
        let ev = |kind, name: &str| notify::Event::new(kind).add_path(PathBuf::from("/t").join(name));
        assert!(may_be_trigger(&ev(EventKind::Create(CreateKind::File), "nightly")));
        assert!(may_be_trigger(&ev(EventKind::Modify(ModifyKind::Name(RenameMode::To)), "nightly")));
        assert!(may_be_trigger(&ev(EventKind::Access(AccessKind::Close(AccessMode::Write)), "nightly")));
        // What a scan of the directory itself produces, and what taking a file produces.
        assert!(!may_be_trigger(&ev(EventKind::Access(AccessKind::Open(AccessMode::Any)), "")));
        assert!(!may_be_trigger(&ev(EventKind::Access(AccessKind::Close(AccessMode::Read)), "nightly")));
        assert!(!may_be_trigger(&ev(EventKind::Remove(notify::event::RemoveKind::File), "nightly")));
        // A writer's hidden temporary file.
        assert!(!may_be_trigger(&ev(EventKind::Create(CreateKind::File), ".nightly.1.tmp")));
    }

    #[test]
    fn a_trigger_dir_holding_the_store_or_the_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.store.path = dir.path().join("state/store.db");
        config.daemon.trigger_dir = dir.path().join("state");
        assert!(check_paths(&config, None).unwrap_err().contains("is the store's folder"));
        config.daemon.trigger_dir = dir.path().join("state/./../state/");
        assert!(check_paths(&config, None).is_err(), "the same folder written another way");
        config.daemon.trigger_dir = dir.path().to_path_buf();
        assert!(check_paths(&config, None).unwrap_err().contains("contains the store's folder"));
        config.daemon.trigger_dir = dir.path().join("state/triggers");
        assert!(check_paths(&config, None).is_ok(), "a folder inside the store's folder is fine");
        let conf = dir.path().join("etc/app.toml");
        config.daemon.trigger_dir = dir.path().join("etc");
        assert!(check_paths(&config, Some(&conf)).unwrap_err().contains("config file"));
        std::os::unix::fs::symlink(dir.path().join("state"), dir.path().join("link")).unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        config.daemon.trigger_dir = dir.path().join("link");
        assert!(check_paths(&config, None).is_err(), "a symlink to the store's folder");
    }

    #[test]
    fn names_that_cannot_be_trigger_files_are_refused() {
        assert!(valid_trigger_name("VIP export"));
        assert!(!valid_trigger_name("a/b"));
        assert!(!valid_trigger_name(".hidden"));
        assert!(!valid_trigger_name("all"));
    }
}

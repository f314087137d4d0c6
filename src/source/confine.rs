//! What a segment's source may reach on this host ([`Reach`]), and the only way a source saved over the HTTP API
//! opens a file. A segment saved from the CLI reads what the operator named, links followed. A segment saved over
//! the HTTP API (`Reach::Within` the folders of `[sources] allowed_dirs`) reads, at every read (columns, count,
//! preview, run), only a regular file inside one of those folders as it is at that moment: whoever may write in a
//! drop folder can swap a file, or a subfolder on its path, for a symbolic link at any time, so a check made when
//! the segment was saved, or a moment before opening, proves nothing. Its PostgreSQL URL may name no file and no
//! socket of the host (see `postgres::network_only`).
//!
//! How a file is opened, so that no swap can win a race:
//!
//! - The path (absolute, resolved when the segment was saved) must lie inside an allowed folder as that folder
//!   resolves now; a folder taken off `allowed_dirs` stops its segments from reading.
//! - CSV and JSON Lines files are opened by us, one path component at a time from `/`: each folder with
//!   `openat(parent, name, O_PATH | O_DIRECTORY | O_NOFOLLOW)`, the file with `O_NOFOLLOW | O_NONBLOCK`, then
//!   `fstat` must say it is a regular file. Each step holds the folder it found, so nothing renamed or linked later
//!   changes what the next step opens, and no link is ever followed. The reader reads that descriptor and nothing
//!   else (a CSV error's line number is read from it too, never by the path again).
//! - The SQLite library opens the path, its `-wal` and `-shm` files by name itself, and resolves links on the way
//!   (it cannot be handed a descriptor, and a path through `/proc/self/fd` is resolved back to a name). So the
//!   file is first opened as above (which gives the clear refusals), and then SQLite's connection is opened from a
//!   thread of our own that the kernel has confined with Landlock (Linux 5.13 and later) to the files beneath the
//!   folder the walk found (held by its descriptor, not by name): there it may read the database, and read, write
//!   and create its `-wal` and `-shm` files, and nothing else anywhere. sqlx runs each connection on a worker thread
//!   that this thread starts, which inherits the confinement for the connection's whole life, so every file SQLite
//!   opens, now or at any later query, is checked by the kernel at the moment it opens it. Its temporary tables stay
//!   in memory (it may create no temporary file). Other threads of the process are not confined. Where the kernel
//!   cannot confine (no Landlock), such a segment is refused rather than read unconfined.
//!
//! A hard link is a file like any other: the kernel's `fs.protected_hardlinks` (on by default) keeps anyone from
//! linking a file they may not read and write into a folder of theirs.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::{SourceError, SourceSpec};

/// What a source may reach on this host, by how its segment was saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// What the operator named at the host's shell (the CLI): a file anywhere, links followed; any PostgreSQL URL.
    Anywhere,
    /// What the HTTP API may name: regular files inside these folders (`[sources] allowed_dirs`), opened without
    /// following any link, and PostgreSQL URLs that name no file and no socket.
    Within(Vec<PathBuf>),
}

/// Why a source may not be read or saved under [`Reach::Within`], in words.
#[derive(Debug)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Refusal {
    fn into_error(self, spec: &str) -> SourceError {
        SourceError::Confined { spec: spec.to_owned(), problem: self.0 }
    }
}

/// The allowed folders, for messages.
fn folders(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        "[sources] allowed_dirs, which is empty (file sources then come from the CLI on the host, unless the host's \
         administrator names folders there)"
            .to_string()
    } else {
        let names: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        format!("[sources] allowed_dirs ({})", names.join(", "))
    }
}

/// The folder names of an absolute path without `.` or `..`, or why it is not one.
fn names(path: &Path) -> Result<Vec<&std::ffi::OsStr>, Refusal> {
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(name) => names.push(name),
            _ => {
                return Err(Refusal(format!(
                    "{} is not an absolute path without '.' or '..' (files over the HTTP API are named by their \
                     absolute path)",
                    path.display()
                )))
            }
        }
    }
    if !path.is_absolute() || names.is_empty() {
        return Err(Refusal(format!("{} is not the absolute path of a file", path.display())));
    }
    Ok(names)
}

/// Whether `path`, as written, lies inside one of `dirs` (as written, or as they resolve now). For a segment saved
/// before the store recorded how segments were saved; see `Store::open_configured`.
pub fn lies_within(path: &Path, dirs: &[PathBuf]) -> bool {
    dirs.iter().any(|dir| {
        let inside = |dir: &Path| path.starts_with(dir) && path != dir;
        inside(dir) || std::fs::canonicalize(dir).is_ok_and(|real| inside(&real))
    })
}

/// The source as it may be saved under `reach`: for `Within`, a file's path resolved (`..`, links) now and inside
/// an allowed folder, a regular file; a PostgreSQL URL that names no file and no socket. Every later read is
/// confined again (see the module's doc): this only makes sure what is saved names an allowed file.
pub fn for_saving(spec: SourceSpec, reach: &Reach) -> Result<SourceSpec, Refusal> {
    let Reach::Within(dirs) = reach else { return Ok(spec) };
    let path = match &spec {
        SourceSpec::Postgres { url, .. } => return super::postgres::network_only(url).map(|()| spec),
        SourceSpec::Sqlite { path } | SourceSpec::Csv { path } | SourceSpec::Jsonl { path } => path,
    };
    let only_there = || format!("file sources over the HTTP API must be files inside a folder of {}", folders(dirs));
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Refusal(format!("give the file's absolute path, without '..'; {}", only_there())));
    }
    let real = std::fs::canonicalize(path)
        .map_err(|e| Refusal(format!("the file {} cannot be opened ({e}); {}", path.display(), only_there())))?;
    let inside = dirs.iter().filter_map(|d| std::fs::canonicalize(d).ok()).any(|d| real.starts_with(&d));
    if !inside || !real.is_file() {
        return Err(Refusal(only_there()));
    }
    Ok(match spec {
        SourceSpec::Sqlite { .. } => SourceSpec::Sqlite { path: real },
        SourceSpec::Csv { .. } => SourceSpec::Csv { path: real },
        SourceSpec::Jsonl { .. } => SourceSpec::Jsonl { path: real },
        pg @ SourceSpec::Postgres { .. } => pg,
    })
}

/// A PostgreSQL source's URL checked against `reach` before the driver sees it.
pub(super) fn check_url(spec: &str, url: &str, reach: &Reach) -> Result<(), SourceError> {
    match reach {
        Reach::Anywhere => Ok(()),
        Reach::Within(_) => super::postgres::network_only(url).map_err(|refusal| refusal.into_error(spec)),
    }
}

/// Opens a file source's file for reading under `reach`.
pub(super) fn open_file(spec: &str, path: &Path, reach: &Reach) -> Result<File, SourceError> {
    match reach {
        Reach::Anywhere => File::open(path).map_err(|error| super::file_open_error(spec.to_owned(), path, &error)),
        Reach::Within(dirs) => Ok(open_within(spec, path, dirs)?.file),
    }
}

/// A file opened inside an allowed folder, and the folder it was found in, both held by descriptor.
pub(super) struct Confined {
    pub file: File,
    pub folder: OwnedFd,
}

/// Opens `path` for reading as the module's doc says: inside a folder of `dirs` as it resolves now, one component at
/// a time from the root, no link followed, a regular file.
pub(super) fn open_within(spec: &str, path: &Path, dirs: &[PathBuf]) -> Result<Confined, SourceError> {
    walk(path, dirs).map_err(|refusal| refusal.into_error(spec))
}

/// Whether a source may be read under `reach`, judged without opening anything: for `Within`, a file's path inside
/// an allowed folder as it resolves now, a PostgreSQL URL that names no file and no socket. Every read checks this
/// again, and more (see the module's doc); `validate` uses it to warn about segments that will not be read.
pub fn check_reach(spec: &SourceSpec, reach: &Reach) -> Result<(), Refusal> {
    let Reach::Within(dirs) = reach else { return Ok(()) };
    match spec {
        SourceSpec::Postgres { url, .. } => super::postgres::network_only(url),
        SourceSpec::Sqlite { path } | SourceSpec::Csv { path } | SourceSpec::Jsonl { path } => {
            inside_now(path, dirs).map(|_| ())
        }
    }
}

/// The folder names of `path`, once it is known to lie inside a folder of `dirs` as they resolve now.
fn inside_now<'p>(path: &'p Path, dirs: &[PathBuf]) -> Result<Vec<&'p std::ffi::OsStr>, Refusal> {
    let names = names(path)?;
    let inside = dirs.iter().filter_map(|d| std::fs::canonicalize(d).ok()).any(|d| path.starts_with(&d) && path != d);
    if !inside {
        return Err(Refusal(format!(
            "{} is not inside a folder of {}: the segment was saved over the HTTP API, which reads files only there. \
             Name its folder there again, or save the segment from the CLI on the host",
            path.display(),
            folders(dirs)
        )));
    }
    Ok(names)
}

fn walk(path: &Path, dirs: &[PathBuf]) -> Result<Confined, Refusal> {
    let names = inside_now(path, dirs)?;
    let (last, parents) = names.split_last().expect("names() refuses a path without one");
    let mut walked = PathBuf::from("/");
    let mut folder = rustix::fs::openat(CWD, "/", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| Refusal(format!("the root folder cannot be opened ({e})")))?;
    for name in parents {
        walked.push(name);
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let next = rustix::fs::openat(&folder, *name, flags, Mode::empty())
            .map_err(|e| refused_step(&folder, name, &walked, e, "a folder"))?;
        // O_DIRECTORY already refuses a link; this says so plainly should a kernel open the link itself.
        if !is(&next, FileType::Directory) {
            return Err(refused_step(&folder, name, &walked, Errno::NOTDIR, "a folder"));
        }
        folder = next;
    }
    walked.push(last);
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let file = rustix::fs::openat(&folder, *last, flags, Mode::empty())
        .map_err(|e| refused_step(&folder, last, &walked, e, "a file"))?;
    if !is(&file, FileType::RegularFile) {
        return Err(Refusal(format!("{} is not a regular file", walked.display())));
    }
    Ok(Confined { file: File::from(file), folder })
}

fn is(fd: &OwnedFd, kind: FileType) -> bool {
    rustix::fs::fstat(fd).is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode) == kind)
}

/// Why opening `name` in `folder` (at `walked`) failed, in words.
fn refused_step(folder: &OwnedFd, name: &std::ffi::OsStr, walked: &Path, error: Errno, wanted: &str) -> Refusal {
    let link = rustix::fs::statat(folder, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Symlink);
    let walked = walked.display();
    Refusal(if link || error == Errno::LOOP {
        format!(
            "{walked} is a symbolic link, and the files of segments saved over the HTTP API are read without \
             following links; an administrator saves the segment again with the file's real path"
        )
    } else if error == Errno::NOENT {
        format!("{walked} does not exist")
    } else if error == Errno::NOTDIR {
        format!("{walked} is not {wanted}")
    } else {
        format!("{walked} cannot be opened ({error}); check that this user may read it")
    })
}

/// Confines the calling thread, and the threads it starts from now on, to the files beneath `folder`: read, write
/// and create regular files there (a SQLite database, its `-wal` and `-shm` files), read `/dev/urandom`, nothing
/// else anywhere. Call it on a thread of its own, never on a pooled one: it cannot be undone.
pub(super) fn confine_this_thread(folder: &OwnedFd) -> Result<(), String> {
    use landlock::{
        Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus,
        ABI,
    };
    let confine = || -> Result<RulesetStatus, RulesetError> {
        let beneath = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::MakeReg | AccessFs::Truncate;
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(ABI::V6))?
            .create()?
            .add_rule(PathBeneath::new(folder, beneath))?;
        // SQLite seeds its random numbers from it, once per process, perhaps on this thread.
        if let Ok(urandom) = PathFd::new("/dev/urandom") {
            ruleset = ruleset.add_rule(PathBeneath::new(urandom, AccessFs::ReadFile))?;
        }
        Ok(ruleset.restrict_self()?.ruleset)
    };
    match confine() {
        Ok(RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced) => Ok(()),
        Ok(RulesetStatus::NotEnforced) => Err(NO_LANDLOCK.to_string()),
        Err(error) => Err(format!("{NO_LANDLOCK} ({error})")),
    }
}

/// Why a SQLite file of a segment saved over the HTTP API cannot be read on this system.
const NO_LANDLOCK: &str = "this system cannot confine the SQLite library's own file access (the kernel's Landlock \
     security module, Linux 5.13 or later, is missing, turned off, or blocked by a system call filter), which a SQLite \
     segment saved over the HTTP API needs; add the segment from the CLI on the host instead, or allow Landlock";

/// Whether this system can confine SQLite sources saved over the HTTP API (for `validate`): a thread of its own is
/// confined to a temporary folder and then ends.
pub fn sqlite_confinement_available() -> Result<(), String> {
    let dir = std::env::temp_dir();
    let folder = rustix::fs::openat(CWD, &dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("{} cannot be opened ({e})", dir.display()))?;
    std::thread::spawn(move || confine_this_thread(&folder))
        .join()
        .unwrap_or_else(|_| Err("the check of the kernel's Landlock stopped unexpectedly".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;

    struct Tree {
        _dir: tempfile::TempDir,
        root: PathBuf,
        allowed: PathBuf,
    }

    /// `allowed/` with `a.csv` and `sub/b.csv`, and `outside/secret.csv` beside it.
    fn tree() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let allowed = root.join("allowed");
        std::fs::create_dir_all(allowed.join("sub")).unwrap();
        std::fs::create_dir(root.join("outside")).unwrap();
        std::fs::write(allowed.join("a.csv"), "a").unwrap();
        std::fs::write(allowed.join("sub/b.csv"), "b").unwrap();
        std::fs::write(root.join("outside/secret.csv"), "secret").unwrap();
        Tree { _dir: dir, root, allowed }
    }

    fn read(path: &Path, dirs: &[PathBuf]) -> Result<String, String> {
        let mut text = String::new();
        walk(path, dirs).map_err(|r| r.0)?.file.read_to_string(&mut text).unwrap();
        Ok(text)
    }

    #[test]
    fn a_regular_file_inside_an_allowed_folder_is_opened_and_its_folder_held() {
        let t = tree();
        let dirs = [t.allowed.clone()];
        assert_eq!(read(&t.allowed.join("a.csv"), &dirs).unwrap(), "a");
        assert_eq!(read(&t.allowed.join("sub/b.csv"), &dirs).unwrap(), "b");
        let confined = walk(&t.allowed.join("sub/b.csv"), &dirs).unwrap();
        // The folder held is the one the file was found in, whatever happens to its name afterwards.
        std::fs::rename(t.allowed.join("sub"), t.allowed.join("moved")).unwrap();
        let held = rustix::fs::fstat(&confined.folder).unwrap();
        let moved = std::fs::metadata(t.allowed.join("moved")).unwrap();
        assert_eq!(held.st_ino, std::os::unix::fs::MetadataExt::ino(&moved));
    }

    #[test]
    fn a_link_anywhere_on_the_path_is_refused_even_one_that_stays_inside() {
        let t = tree();
        let dirs = [t.allowed.clone()];
        symlink(t.root.join("outside/secret.csv"), t.allowed.join("key.csv")).unwrap();
        symlink(t.root.join("outside"), t.allowed.join("out")).unwrap();
        symlink(t.allowed.join("a.csv"), t.allowed.join("same.csv")).unwrap();
        symlink(t.allowed.join("sub"), t.allowed.join("sub2")).unwrap();
        for (path, link) in [
            (t.allowed.join("key.csv"), t.allowed.join("key.csv")),
            (t.allowed.join("out/secret.csv"), t.allowed.join("out")),
            (t.allowed.join("same.csv"), t.allowed.join("same.csv")),
            (t.allowed.join("sub2/b.csv"), t.allowed.join("sub2")),
        ] {
            let why = read(&path, &dirs).unwrap_err();
            assert!(why.contains(&format!("{} is a symbolic link", link.display())), "{}: {why}", path.display());
        }
    }

    #[test]
    fn only_a_regular_file_inside_a_folder_allowed_now_is_opened() {
        let t = tree();
        let dirs = [t.allowed.clone()];
        let refused = [
            (t.root.join("outside/secret.csv"), "is not inside a folder of [sources] allowed_dirs"),
            (t.allowed.clone(), "is not inside"),
            (t.allowed.join("sub"), "is not a regular file"),
            (t.allowed.join("missing.csv"), "does not exist"),
            (t.allowed.join("sub/../../outside/secret.csv"), "without '.' or '..'"),
            (PathBuf::from("allowed/a.csv"), "is not the absolute path"),
        ];
        for (path, why) in refused {
            let got = read(&path, &dirs).unwrap_err();
            assert!(got.contains(why), "{}: {got}", path.display());
        }
        assert!(read(&t.allowed.join("a.csv"), &[]).unwrap_err().contains("which is empty"), "none by default");
        // A FIFO is no regular file, and opening it does not wait for a writer.
        let fifo = t.allowed.join("fifo.csv");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(read(&fifo, &dirs).unwrap_err().contains("is not a regular file"));
    }

    #[test]
    fn an_allowed_folder_named_through_a_link_is_the_folder_it_resolves_to_now() {
        let t = tree();
        let named = t.root.join("named");
        symlink(&t.allowed, &named).unwrap();
        let dirs = [named.clone()];
        assert_eq!(read(&t.allowed.join("a.csv"), &dirs).unwrap(), "a", "saved paths are resolved ones");
        assert!(read(&named.join("a.csv"), &dirs).unwrap_err().contains("not inside"), "nor through the link");
        std::fs::remove_file(&named).unwrap();
        symlink(t.root.join("outside"), &named).unwrap();
        assert!(
            read(&t.allowed.join("a.csv"), &dirs).unwrap_err().contains("not inside"),
            "the link now leads elsewhere"
        );
    }

    #[test]
    fn a_path_lies_within_a_folder_as_written_or_as_it_resolves() {
        let t = tree();
        let named = t.root.join("named");
        symlink(&t.allowed, &named).unwrap();
        assert!(lies_within(&t.allowed.join("a.csv"), std::slice::from_ref(&named)));
        assert!(lies_within(&named.join("x.csv"), std::slice::from_ref(&named)));
        assert!(!lies_within(&t.root.join("outside/secret.csv"), std::slice::from_ref(&named)));
        assert!(
            !lies_within(&t.root.join("allowed2/a.csv"), std::slice::from_ref(&t.allowed)),
            "by component, not by text"
        );
        assert!(!lies_within(&t.allowed, std::slice::from_ref(&t.allowed)), "the folder itself is no file in it");
    }

    #[test]
    fn saving_resolves_the_path_and_accepts_only_an_allowed_regular_file() {
        let t = tree();
        let dirs = [t.allowed.clone()];
        let csv = |p: PathBuf| SourceSpec::Csv { path: p };
        let SourceSpec::Csv { path } =
            for_saving(csv(t.allowed.join("sub/./b.csv")), &Reach::Within(dirs.to_vec())).unwrap()
        else {
            panic!("a csv source stays one")
        };
        assert_eq!(path, t.allowed.join("sub/b.csv"));
        symlink(t.root.join("outside/secret.csv"), t.allowed.join("key.csv")).unwrap();
        for refused in [
            t.allowed.join("key.csv"),
            t.allowed.join("sub/../../outside/secret.csv"),
            t.allowed.join("sub"),
            t.allowed.join("missing.csv"),
            t.root.join("allowed2.csv"),
        ] {
            let why = for_saving(csv(refused.clone()), &Reach::Within(dirs.to_vec())).unwrap_err().0;
            assert!(why.contains("allowed_dirs"), "{}: {why}", refused.display());
        }
        assert!(for_saving(csv(t.root.join("outside/secret.csv")), &Reach::Anywhere).is_ok(), "the CLI is not limited");
    }

    #[test]
    fn a_confined_thread_reads_beneath_its_folder_only_and_its_new_threads_too() {
        if let Err(why) = sqlite_confinement_available() {
            panic!("this test needs Landlock, which the project's machines have: {why}");
        }
        let t = tree();
        let confined = walk(&t.allowed.join("sub/b.csv"), std::slice::from_ref(&t.allowed)).unwrap();
        let (sub, outside, sibling) =
            (t.allowed.join("sub/b.csv"), t.root.join("outside/secret.csv"), t.allowed.join("a.csv"));
        let outcome = std::thread::spawn(move || {
            confine_this_thread(&confined.folder).unwrap();
            let here = std::fs::read_to_string(&sub).is_ok();
            let elsewhere = std::fs::read_to_string(&outside).is_ok();
            let beside = std::fs::read_to_string(&sibling).is_ok();
            let child = std::thread::spawn(move || std::fs::read_to_string(&outside).is_ok()).join().unwrap();
            (here, elsewhere, beside, child)
        })
        .join()
        .unwrap();
        assert_eq!(outcome, (true, false, false, false));
        assert_eq!(std::fs::read_to_string(t.root.join("outside/secret.csv")).unwrap(), "secret", "others are free");
    }
}

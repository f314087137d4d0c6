//! The store holds every member's email and sealed keys: its files are the owner's alone, whatever the umask.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

#[test]
fn a_run_under_a_permissive_umask_leaves_no_store_file_readable_by_others() {
    let env = Env::new();
    env.setup_csv_export("Private", &emails(0, 20));
    // The harness made the store already; remove it so the run below creates every file under umask 000.
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let _ = std::fs::remove_file(env.path(f));
    }
    let bin = assert_cmd::cargo::cargo_bin("segment-exporter");
    let script = format!(
        "umask 000 && {bin} connection add iterable --api-key-env ITERABLE_KEY --base-url {url} --accept-data-privacy \
         && {bin} segment add Private --source csv:{csv} && {bin} export add exp --connection iterable --segment Private \
         --email-field email && {bin} export run exp",
        bin = bin.display(),
        url = env.base_url,
        csv = env.path("members.csv").display()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(env.dir.path())
        .env("SEGMENT_EXPORTER_CONFIG", env.path("config.toml"))
        .env("ITERABLE_KEY", KEY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(env.members("Private").len(), 20);
    for f in ["store.db", "store.db-wal", "store.db-shm"] {
        let path = env.path(f);
        if path.exists() {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{f} has mode {mode:o}");
        }
    }
    let locks = std::fs::metadata(env.path("store.db.locks")).unwrap().permissions().mode() & 0o777;
    assert_eq!(locks & 0o077, 0, "the lock folder has mode {locks:o}");
}

//! The config file as an operator meets it: `validate` reports every problem of a file in one pass.

use assert_cmd::Command;

#[test]
fn validate_lists_every_problem_of_a_broken_file_at_once_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        "[iterable]\nbatchsize = 5\nconcurrency = \"many\"\nbatch_size = 0\n\
         [daemon]\nshutdown_grace = \"5 parsecs\"\nmax_concurrent_runs = 0\nwatch_dir = \"x\"\n[nosuch]\na = 1\n",
    )
    .unwrap();
    let out = Command::cargo_bin("segment-exporter")
        .unwrap()
        .current_dir(dir.path())
        .args(["--config", path.to_str().unwrap(), "validate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("7 problem(s)"), "{err}");
    for key in [
        "iterable.batchsize",
        "iterable.concurrency",
        "iterable.batch_size",
        "daemon.shutdown_grace",
        "daemon.max_concurrent_runs",
        "daemon.watch_dir",
        "nosuch",
    ] {
        assert!(err.contains(key), "{key} is not reported:\n{err}");
    }
}

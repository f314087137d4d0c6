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

#[test]
fn a_duration_written_as_a_bare_number_is_refused_with_an_example_of_one_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("durations.toml");
    std::fs::write(&path, "[daemon]\nreload_interval = 5\n[sync]\nretry_rejected_interval = \"a day\"\n").unwrap();
    let out = Command::cargo_bin("segment-exporter")
        .unwrap()
        .current_dir(dir.path())
        .args(["--config", path.to_str().unwrap(), "validate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["daemon.reload_interval", "sync.retry_rejected_interval"] {
        let line = err.lines().find(|l| l.contains(key)).unwrap_or_else(|| panic!("{key} is not reported:\n{err}"));
        assert!(line.contains("e.g. \"30s\", \"15m\" or \"24h\""), "no example for {key}:\n{err}");
    }
}

//! Run history is bounded: old runs are pruned after `store.history_retention`, invalid and rejected members are
//! kept for the last `sync.keep_issue_runs` runs, offending values are stored clipped, and the store's size levels
//! off under a steady schedule.

mod common;

use std::time::Duration;

use common::*;

/// An env whose config has these `[store]` and `[sync]` lines.
fn env_with(store: &str, sync: &str) -> Env {
    let env = Env::new();
    let path = env.path("config.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace("[store]\n", &format!("[store]\n{store}\n"));
    std::fs::write(&path, format!("{text}\n[sync]\n{sync}\n")).unwrap();
    env
}

/// `valid` good members and `invalid` rows whose email is malformed.
fn members_with_invalid(valid: usize, invalid: usize) -> Vec<String> {
    let mut rows = emails(0, valid);
    rows.extend((0..invalid).map(|i| format!("not-an-email-{i}")));
    rows
}

#[test]
fn invalid_members_are_kept_for_the_last_runs_only_and_old_runs_are_pruned() {
    // Six runs within the hour's retention, however slow the machine; then the retention is cut to 1 s.
    let env = env_with("history_retention = \"1h\"", "keep_issue_runs = 3");
    env.setup_csv_export("Kept", &members_with_invalid(40, 10));
    for _ in 0..6 {
        let report = env.json(&["export", "run", "exp"]);
        assert_eq!(report["status"], "succeeded", "{report}");
        assert_eq!(report["lists"][0]["invalid"], 10);
    }
    assert_eq!(env.store_i64("SELECT COUNT(*) FROM runs"), 6, "all six are younger than an hour");
    let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(env.path("config.toml"), config.replace("history_retention = \"1h\"", "history_retention = \"1s\""))
        .unwrap();
    assert_eq!(env.store_i64("SELECT COUNT(*) FROM run_issues"), 30, "10 invalid rows for each of the last 3 runs");
    let newest = env.json(&["runs", "--limit", "1"])[0]["id"].as_i64().unwrap();
    let shown = env.json(&["runs", "show", &newest.to_string(), "--rejected"]);
    assert_eq!(shown["issues"].as_array().map(Vec::len), Some(10), "{shown}");

    // Past the retention, earlier runs go; the latest stays even when it is old too.
    std::thread::sleep(Duration::from_millis(1200));
    env.ok(&["export", "run", "exp"]);
    let runs = env.json(&["runs", "--limit", "100"]);
    let ids: Vec<i64> = runs.as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 1, "only the run just made is younger than 1s: {ids:?}");
    assert!(ids[0] > newest);
    assert_eq!(env.store_i64("SELECT COUNT(*) FROM run_targets"), 1);
    assert_eq!(env.store_i64("SELECT COUNT(*) FROM run_issues"), 10);
    // The export's memory of its list is not history: nothing to send on the next run.
    env.sandbox.reset_stats();
    env.ok(&["export", "run", "exp"]);
    assert_eq!(requests(&env.stats(), "lists.subscribe"), 0);
    assert_eq!(env.members("Kept"), sorted(emails(0, 40)));
}

#[test]
fn a_huge_offending_value_is_stored_clipped() {
    let env = Env::new();
    let huge = format!("{}@", "x".repeat(100_000));
    env.setup_csv_export("Huge", &[emails(0, 1), vec![huge]].concat());
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["lists"][0]["invalid"], 1, "{report}");
    let longest = env.store_i64("SELECT MAX(LENGTH(CAST(member AS BLOB))) FROM run_issues");
    assert!(longest <= 256, "a stored offending value is {longest} bytes");
}

#[test]
fn the_store_size_levels_off_under_a_steady_schedule() {
    let env = env_with("", "keep_issue_runs = 5");
    env.setup_csv_export("Steady", &members_with_invalid(2_000, 2_000));
    // The database file after a checkpoint: the WAL's size depends on when SQLite last checkpointed.
    let size = || {
        env.store_i64("PRAGMA wal_checkpoint(TRUNCATE)");
        std::fs::metadata(env.path("store.db")).unwrap().len()
    };
    let mut after = Vec::new();
    for run in 1..=30 {
        env.ok(&["export", "run", "exp"]);
        if run == 10 || run == 30 {
            after.push(size());
        }
    }
    println!("store size after 10 no-change runs: {} bytes, after 30: {} bytes", after[0], after[1]);
    assert_eq!(env.store_i64("SELECT COUNT(*) FROM run_issues"), 5 * 2_000);
    assert!(after[1] <= after[0] + after[0] / 10, "the store kept growing: {after:?}");
}

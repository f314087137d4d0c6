//! The mass-addition guard, end to end with the real binary against the sandbox: a run that would suddenly put
//! many new members on a list stops before adding anyone, and goes through only when allowed.

mod common;

use std::time::Duration;

use common::*;
use segment_exporter::sandbox::SandboxOptions;

fn rows(members: &[String]) -> Vec<(&str, &str)> {
    members.iter().map(|e| (e.as_str(), "gold")).collect()
}

#[test]
fn a_query_that_suddenly_returns_ten_times_the_list_stops_before_adding_anyone_until_allowed() {
    let env = Env::new();
    let before = emails(0, 150);
    env.setup_csv_export("Growing", &before);
    assert_eq!(env.json(&["export", "run", "exp"])["status"], "succeeded");
    // A broken query: ten times as many rows, the 150 among them.
    let after = emails(0, 1500);
    env.write_csv("members.csv", &rows(&after));

    let plan = env.json(&["export", "run", "exp", "--dry-run"]);
    assert_eq!(plan["status"], "refused", "a dry run says the guard would stop the run: {plan}");
    env.sandbox.reset_stats();
    let out = env.run(&["export", "run", "exp"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("stopped before adding anyone"), "{err}");
    assert!(err.contains("'Growing'") && err.contains("1350") && err.contains("--allow-mass-addition"), "{err}");
    assert!(err.contains("Nothing was changed on any list"), "{err}");
    assert_eq!(env.stats().total_requests, 0, "the guard counts from the export's memory: {:?}", env.stats());
    assert_eq!(env.members("Growing"), sorted(before.clone()), "the list is unchanged");
    let runs = env.json(&["runs", "--export", "exp", "--limit", "1"]);
    assert_eq!(runs[0]["status"], "refused", "{runs}");

    // Asked again, it stops again: nothing about the refusal lets the next run through.
    assert_eq!(env.run(&["export", "run", "exp"]).status.code(), Some(1));
    assert_eq!(env.members("Growing").len(), 150);

    let report = env.json(&["export", "run", "exp", "--allow-mass-addition"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["lists"][0]["added"], 1350);
    assert_eq!(env.members("Growing"), sorted(after));
    let audit = env.json(&["audit", "--limit", "1"]);
    assert!(audit.to_string().contains("allow mass addition"), "the audit records the override: {audit}");
}

#[test]
fn growth_up_to_the_share_re_sends_and_small_lists_pass_the_guard() {
    let env = Env::with_config(opts(), "[sync]\nmass_addition_share = 0.5\n");
    let first = emails(0, 200);
    env.setup_csv_export("Steady", &first);
    env.ok(&["export", "run", "exp"]);
    // 100 new members on a list of 200 is exactly half: not more than the share.
    let grown = emails(0, 300);
    env.write_csv("members.csv", &rows(&grown));
    assert_eq!(env.json(&["export", "run", "exp"])["lists"][0]["added"], 100);
    // Every member's field changes: 300 re-sends and 10 new ones; only the new count.
    let changed = emails(0, 310);
    env.write_csv("members.csv", &changed.iter().map(|e| (e.as_str(), "silver")).collect::<Vec<_>>());
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!((report["lists"][0]["added"].as_u64(), report["lists"][0]["updated"].as_u64()), (Some(10), Some(300)));
    // And then 200 new on 310: more than half, stopped.
    env.write_csv("members.csv", &rows(&emails(0, 510)));
    let out = env.run(&["export", "run", "exp"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("would gain 200 new members on top of its 310"), "{}", text(&out.stderr));

    // A list the export holds fewer than mass_addition_min_list_size (100) members on grows freely.
    let small = Env::new();
    small.setup_csv_export("Small", &emails(0, 99));
    small.ok(&["export", "run", "exp"]);
    small.write_csv("members.csv", &rows(&emails(0, 5000)));
    assert_eq!(small.json(&["export", "run", "exp"])["lists"][0]["added"], 4901);
}

#[test]
fn an_interrupted_first_fill_resumes_without_stopping_at_the_guard() {
    let env = Env::with_sandbox(SandboxOptions { latency: Duration::from_millis(150), ..opts() });
    let members = emails(0, 2000);
    env.setup_csv_export("Big", &members);
    let mut child = env.spawn_run();
    env.wait_for_subscribers(300, Duration::from_secs(60));
    child.kill().unwrap();
    child.wait().unwrap();
    let sent = env.stats().subscribers_received;
    assert!((300..1000).contains(&sent), "killed after {sent} of 2000: the resume would add more than the list holds");
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "a first fill is not growth: {report}");
    assert_eq!(env.members("Big"), sorted(members));
}

#[test]
fn the_first_run_after_adopting_a_list_is_not_stopped_by_the_guard() {
    let env = Env::new();
    // A list of 150 someone else filled, named like the segment, adopted by the export's first run.
    let list_id = env.create_list_by_hand("Adopted");
    let theirs: Vec<String> = (0..150).map(|i| format!("theirs{i}@example.com")).collect();
    env.subscribe_by_hand(list_id, &theirs.iter().map(String::as_str).collect::<Vec<_>>());
    env.setup_csv_export("Adopted", &emails(0, 1000));
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(env.members("Adopted").len(), 1150);
}

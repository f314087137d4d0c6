//! End-to-end: what a run counts as done, sent, rejected or left alone. The real binary against the sandbox.

mod common;

use common::*;
use segment_exporter::sandbox::Faults;

fn write_members(env: &Env, members: &[String]) {
    let rows: Vec<(&str, &str)> = members.iter().map(|e| (e.as_str(), "gold")).collect();
    env.write_csv("members.csv", &rows);
}

#[test]
fn answers_that_do_not_account_for_a_batch_are_retried_and_the_list_ends_exact() {
    let env = Env::new();
    let members = emails(0, 200);
    env.setup_csv_export("Counted", &members);
    env.sandbox.set_faults(Faults { miscount_next: Some(3), truncate_next: Some(2), ..Faults::default() });
    let report = env.run_exact("Counted", &members);
    assert_eq!(report["lists"][0]["added"], 200, "{report}");
    assert_eq!(env.stats().bad_answers, 5, "{:?}", env.stats());

    // Unsubscribes are held to the same count.
    write_members(&env, &members[20..]);
    env.sandbox.set_faults(Faults { miscount_next: Some(1), ..Faults::default() });
    let report = env.run_exact("Counted", &members[20..]);
    assert_eq!(report["lists"][0]["removed"], 20, "{report}");
    assert_eq!(env.stats().bad_answers, 6);
}

#[test]
fn persistent_miscounts_fail_the_run_saying_what_did_not_add_up_and_the_next_run_sends_the_rest() {
    let env = Env::new();
    let first = emails(0, 100);
    env.setup_csv_export("Counted", &first);
    env.run_exact("Counted", &first);

    let all = emails(0, 200);
    write_members(&env, &all);
    env.sandbox.set_faults(Faults { miscount_rate: Some(1.0), ..Faults::default() });
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "failed", "{report}");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("successCount 0 + failCount 0 for 50 member(s) sent"), "{error}");
    assert_eq!(report["lists"][0]["added"], 0, "nothing was acknowledged: {report}");
    assert_eq!(env.members("Counted"), sorted(first.clone()));

    env.sandbox.set_faults(Faults { miscount_rate: Some(0.0), ..Faults::default() });
    env.sandbox.reset_stats();
    let report = env.run_exact("Counted", &all);
    assert_eq!(report["lists"][0]["added"], 100, "{report}");
    assert_eq!(env.stats().subscribers_received, 100, "only what was not acknowledged is sent again");
}

/// Sends SIGTERM to a child process, as systemd or `kill` would.
fn terminate(child: &std::process::Child) {
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// Waits for a child to exit, at most `within`.
fn wait_exit(child: &mut std::process::Child, within: std::time::Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}

#[test]
fn a_stop_during_retry_backoff_ends_the_run_interrupted_at_once() {
    let env = Env::new();
    let members = emails(0, 100);
    env.setup_csv_export("Stuck", &members);
    // Long backoff: without a cancellable wait, the stop would sit out 20 s or more.
    let config = format!(
        "[store]\npath = \"{}\"\n\n[iterable]\nbatch_size = 50\nretry_min_delay = \"20s\"\nretry_max_delay = \"60s\"\n",
        env.path("store.db").display()
    );
    std::fs::write(env.path("config.toml"), config).unwrap();
    env.sandbox.set_faults(Faults { fail_rate: Some(1.0), ..Faults::default() });
    env.sandbox.reset_stats();
    let mut child = env.spawn_run();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while env.stats().total_requests == 0 {
        assert!(std::time::Instant::now() < deadline, "the run never reached Iterable");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let asked = std::time::Instant::now();
    terminate(&child);
    let status = wait_exit(&mut child, std::time::Duration::from_secs(10));
    let took = asked.elapsed();
    if status.is_none() {
        child.kill().unwrap();
    }
    assert!(status.is_some() && took < std::time::Duration::from_secs(3), "the run took {took:?} to stop");
    assert_eq!(env.stats().total_requests, 1, "no attempt after the stop: {:?}", env.stats());
    let runs = env.json(&["runs", "--export", "exp"]);
    assert_eq!(runs[0]["status"], "interrupted", "{runs}");
}

//! End-to-end: the real binary runs exports against the sandbox over loopback HTTP, with a real SQLite store.

mod common;

use std::time::{Duration, Instant};

use common::*;
use segment_exporter::sandbox::{Faults, SandboxOptions};

#[test]
fn a_first_run_puts_every_valid_member_on_a_list_named_like_the_segment() {
    let env = Env::new();
    let members = emails(0, 120);
    env.setup_csv_export("VIP customers", &members);
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(env.members("VIP customers"), sorted(members));
    assert_eq!(report["lists"][0]["added"], 120);
    // batch_size 50 -> 3 subscribe requests.
    assert_eq!(requests(&env.stats(), "lists.subscribe"), 3);
    let shown = env.json(&["export", "show", "exp"]);
    assert_eq!(shown["lists"][0]["members"], 120);
    assert_eq!(shown["lists"][0]["list_id"], env.list_id("VIP customers").unwrap());
}

#[test]
fn members_who_join_and_leave_are_added_and_removed_and_others_are_left_alone() {
    let env = Env::new();
    let first = emails(0, 100);
    let csv = env.setup_csv_export("Churn risk", &first);
    env.ok(&["export", "run", "exp"]);
    // Someone else puts a member on the list by hand: runs must never remove it.
    let list_id = env.list_id("Churn risk").unwrap();
    env.subscribe_by_hand(list_id, &["manual@example.com"]);
    // 10 leave (0..10), 15 join (100..115).
    let now: Vec<String> = emails(10, 105);
    let rows: Vec<(&str, &str)> = now.iter().map(|e| (e.as_str(), "gold")).collect();
    env.write_csv(csv.file_name().unwrap().to_str().unwrap(), &rows);
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["lists"][0]["added"], 15);
    assert_eq!(report["lists"][0]["removed"], 10);
    let mut expected = now.clone();
    expected.push("manual@example.com".into());
    assert_eq!(env.members("Churn risk"), sorted(expected));
}

#[test]
fn a_run_with_no_changes_sends_no_request_at_all() {
    let env = Env::new();
    env.setup_csv_export("Seg", &emails(0, 80));
    env.ok(&["export", "run", "exp"]);
    env.sandbox.reset_stats();
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["lists"][0]["unchanged"], 80);
    assert_eq!(env.stats().total_requests, 0, "{:?}", env.stats());
    assert_eq!(report["requests"], 0);
}

#[test]
fn a_changed_field_re_sends_only_that_member() {
    let env = Env::new();
    let members = emails(0, 30);
    let csv = env.setup_csv_export("Seg", &members);
    env.ok(&["export", "run", "exp"]);
    let mut rows: Vec<(&str, &str)> = members.iter().map(|e| (e.as_str(), "gold")).collect();
    rows[7].1 = "silver";
    env.write_csv(csv.file_name().unwrap().to_str().unwrap(), &rows);
    env.sandbox.reset_stats();
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!((report["lists"][0]["added"].as_u64(), report["lists"][0]["updated"].as_u64()), (Some(0), Some(1)));
    assert_eq!(env.stats().subscribers_received, 1);
}

#[test]
fn a_run_through_429s_500s_and_dropped_connections_still_ends_exact() {
    let env = Env::new();
    // Enough requests (about 60 batches of 50) that every kind of fault shows up.
    let members = emails(0, 3000);
    env.setup_csv_export("Flaky", &members);
    // A bucket of one request: the 3 requests in flight meet 429s whatever the machine's speed.
    let flaky =
        Faults { rate_limit: Some(Some(40.0)), rate_limit_burst: Some(1.0), fail_rate: Some(0.3), ..Faults::default() };
    env.sandbox.set_faults(flaky.clone());
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    let stats = env.stats();
    assert!(stats.dropped_connections > 0, "{stats:?}");
    assert!(stats.answered_with("lists.subscribe", 500) > 0, "{stats:?}");
    assert!(stats.rate_limited > 0, "{stats:?}");
    let calm = Faults { rate_limit: Some(None), fail_rate: Some(0.0), ..Faults::default() };
    env.sandbox.set_faults(calm.clone());
    assert_eq!(env.sandbox_lists().len(), 1, "a lost answer to the create call must not create a second list");
    assert_eq!(env.members("Flaky"), sorted(members.clone()));
    env.sandbox.set_faults(flaky);
    // Leavers too, through the same faults.
    let csv_rows: Vec<(&str, &str)> = members[1000..].iter().map(|e| (e.as_str(), "gold")).collect();
    env.write_csv("members.csv", &csv_rows);
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    env.sandbox.set_faults(calm);
    assert_eq!(env.members("Flaky"), sorted(members[1000..].to_vec()));
}

#[test]
fn retry_after_and_rate_limits_slow_the_run_down_without_losing_members() {
    let env = Env::with_sandbox(SandboxOptions { rate_limit: Some(20.0), retry_after: true, ..opts() });
    let members = emails(0, 500);
    env.setup_csv_export("Paced", &members);
    env.run_exact("Paced", &members);
}

#[test]
fn a_run_killed_mid_way_resumes_and_ends_exact_without_resending_acknowledged_batches() {
    let env = Env::with_sandbox(SandboxOptions { latency: Duration::from_millis(150), ..opts() });
    let members = emails(0, 2000);
    env.setup_csv_export("Big", &members);
    let mut child = env.spawn_run();
    // Wait until some batches are acknowledged, then kill -9.
    env.wait_for_subscribers(500, Duration::from_secs(60));
    child.kill().unwrap();
    child.wait().unwrap();
    let sent_before = env.stats().subscribers_received;
    assert!(sent_before < 2000, "the run finished before it was killed; slow the sandbox down");
    let runs = env.json(&["runs", "--export", "exp"]);
    assert_eq!(runs[0]["status"], "interrupted", "a dead run shows as interrupted: {runs}");

    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["resumed_runs"][0], runs[0]["id"]);
    assert_eq!(env.members("Big"), sorted(members));
    // Only batches in flight at the kill (3 of 50) may be sent twice.
    let total = env.stats().subscribers_received;
    assert!(total <= 2000 + 3 * 50, "sent {total} subscribers for 2000 members");
    let recorded = env.json(&["runs", "show", &runs[0]["id"].to_string()]);
    assert_eq!(recorded["status"], "interrupted");
}

#[test]
fn the_mass_removal_guard_stops_before_removing_anyone_until_allowed() {
    let env = Env::new();
    let members = emails(0, 100);
    env.setup_csv_export("Guarded", &members);
    env.ok(&["export", "run", "exp"]);
    // A broken query that suddenly returns 10 rows.
    let rows: Vec<(&str, &str)> = members[..10].iter().map(|e| (e.as_str(), "gold")).collect();
    env.write_csv("members.csv", &rows);
    env.sandbox.reset_stats();
    let out = env.run(&["export", "run", "exp"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("Guarded") && err.contains("--allow-mass-removal") && err.contains("90"), "{err}");
    assert_eq!(requests(&env.stats(), "lists.unsubscribe"), 0);
    assert_eq!(env.members("Guarded").len(), 100);
    let runs = env.json(&["runs", "--export", "exp", "--limit", "1"]);
    assert_eq!(runs[0]["status"], "refused");

    let report = env.json(&["export", "run", "exp", "--allow-mass-removal"]);
    assert_eq!(report["status"], "succeeded");
    assert_eq!(env.members("Guarded"), sorted(members[..10].to_vec()));
}

#[test]
fn invalid_and_rejected_members_are_counted_with_reasons_and_not_resent() {
    let env = Env::new();
    let rows = [
        ("good1@example.com", "gold"),
        ("  GOOD1@Example.com ", "gold"),
        ("", "gold"),
        ("not-an-email", "gold"),
        ("user @example.com", "gold"),
        ("gone+forgotten@example.com", "gold"),
        ("good2@example.com", "gold"),
    ];
    let csv = env.write_csv("members.csv", &rows);
    env.add_connection();
    env.ok(&["segment", "add", "Mixed", "--source", &format!("csv:{}", csv.display())]);
    env.ok(&["export", "add", "exp", "--connection", "iterable", "--segment", "Mixed", "--email-field", "email"]);
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    let list = &report["lists"][0];
    assert_eq!(list["invalid"], 3);
    assert_eq!(list["duplicates"], 1);
    assert_eq!(list["rejected"], 1);
    assert_eq!(list["added"], 2);
    assert_eq!(env.members("Mixed"), vec!["good1@example.com", "good2@example.com"]);
    let shown = env.json(&["runs", "show", &report["run_id"].to_string(), "--rejected"]);
    let issues = shown["issues"].as_array().unwrap();
    assert_eq!(issues.len(), 4, "{issues:?}");
    assert!(issues
        .iter()
        .any(|i| i["kind"] == "rejected" && i["reason"].as_str().unwrap().contains("forgottenEmails")));
    assert!(issues.iter().any(|i| i["kind"] == "invalid" && i["reason"].as_str().unwrap().contains("space")));
    env.sandbox.reset_stats();
    let again = env.json(&["export", "run", "exp"]);
    assert_eq!(again["status"], "succeeded");
    assert_eq!(env.stats().subscribers_received, 0, "a rejected member is not re-sent while unchanged");
}

#[test]
fn a_wrong_api_key_is_refused_at_connection_add_and_fails_a_run_at_once() {
    let env = Env::new();
    let out = env
        .cmd()
        .env("WRONG_KEY", "not-the-key-at-all")
        .args([
            "connection",
            "add",
            "bad",
            "--api-key-env",
            "WRONG_KEY",
            "--base-url",
            &env.base_url,
            "--accept-data-privacy",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("BadApiKey") && err.contains("not saved"), "{err}");
    assert!(!err.contains("not-the-key-at-all"), "the key must never be printed");
    assert!(env.json(&["connection", "list"]).as_array().unwrap().is_empty());

    // A key that stops working later: the run fails fast, names the problem, and changes nothing.
    env.setup_csv_export("Seg", &emails(0, 10));
    let started = Instant::now();
    let out = env.cmd().env("ITERABLE_KEY", "revoked-key-123456").args(["export", "run", "exp"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(20));
    let err = text(&out.stderr) + &text(&out.stdout);
    assert!(err.contains("rejected the API key"), "{err}");
    assert!(!err.contains("revoked-key-123456"));
    assert_eq!(env.list_id("Seg"), None, "no list was created");
}

#[test]
fn a_dry_run_prints_the_plan_and_changes_nothing() {
    let env = Env::new();
    env.setup_csv_export("Dry", &emails(0, 40));
    env.sandbox.reset_stats();
    let report = env.json(&["export", "run", "exp", "--dry-run"]);
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["lists"][0]["to_add"], 40);
    assert_eq!(report["lists"][0]["examples_add"].as_array().unwrap().len(), 5);
    assert_eq!(env.stats().total_requests, 0);
    assert!(env.json(&["runs"]).as_array().unwrap().is_empty(), "a dry run is not recorded");
    let out = env.ok(&["export", "run", "exp", "--dry-run"]);
    assert!(text(&out.stdout).contains("nothing was changed"));
}

#[test]
fn a_missing_email_column_fails_naming_the_segment_and_column_and_changes_no_list() {
    let env = Env::new();
    let csv = env.setup_csv_export("Broken", &emails(0, 10));
    env.ok(&["export", "run", "exp"]);
    std::fs::write(&csv, "mail,tier\na@example.com,gold\n").unwrap();
    env.sandbox.reset_stats();
    let out = env.run(&["export", "run", "exp"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("Broken") && err.contains("email"), "{err}");
    assert_eq!(requests(&env.stats(), "lists.subscribe") + requests(&env.stats(), "lists.unsubscribe"), 0);
    assert_eq!(env.members("Broken").len(), 10);
    assert_eq!(env.json(&["runs", "--limit", "1"])[0]["status"], "failed");
}

#[test]
fn a_list_deleted_in_iterable_is_recreated_and_refilled() {
    let env = Env::new();
    let members = emails(0, 60);
    env.setup_csv_export("Phoenix", &members);
    env.ok(&["export", "run", "exp"]);
    let old = env.list_id("Phoenix").unwrap();
    env.delete_list(old);
    let report = env.json(&["export", "run", "exp", "--full"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    let new = env.list_id("Phoenix").unwrap();
    assert_ne!(old, new);
    assert_eq!(env.members("Phoenix"), sorted(members));
}

#[test]
fn a_second_run_of_the_same_export_is_refused_while_one_is_running() {
    let env = Env::with_sandbox(SandboxOptions { latency: Duration::from_millis(200), ..opts() });
    env.setup_csv_export("Busy", &emails(0, 600));
    let mut first = env.spawn_run();
    env.wait_for_subscribers(1, Duration::from_secs(30));
    // Iterable frozen, the first run stays in flight however long the second takes to start.
    env.hold();
    let out = env.run(&["export", "run", "exp"]);
    env.release();
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("already running"));
    assert!(first.wait().unwrap().success());
    assert_eq!(env.members("Busy").len(), 600);
}

#[test]
fn a_new_list_that_answers_invalid_list_id_for_a_while_is_retried() {
    let env = Env::with_sandbox(SandboxOptions { list_propagation: Duration::from_millis(2500), ..opts() });
    let members = emails(0, 20);
    env.setup_csv_export("Fresh", &members);
    env.run_exact("Fresh", &members);
}

#[test]
fn faults_can_be_switched_on_while_the_sandbox_runs() {
    let env = Env::new();
    env.sandbox.set_faults(Faults { fail_rate: Some(1.0), ..Faults::default() });
    let rows = [("a@example.com", "gold")];
    let csv = env.write_csv("members.csv", &rows);
    env.add_connection_with(&["--skip-verify"]);
    env.add_segment_and_export("S", &format!("csv:{}", csv.display()), None);
    let out = env.run(&["export", "run", "exp"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("kept failing"), "{}", text(&out.stderr));
}

#[test]
fn runs_shows_a_run_in_flight_with_its_progress_rate_and_time_left() {
    let env = Env::with_sandbox(SandboxOptions { latency: Duration::from_millis(200), ..opts() });
    env.setup_csv_export("Live", &emails(0, 1500));
    let mut child = env.spawn_run();
    env.wait_for_subscribers(150, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    env.hold();
    let runs = env.json(&["runs"]);
    let table = text(&env.ok(&["runs"]).stdout);
    env.release();
    assert_eq!(runs[0]["status"], "running", "{runs}");
    let p = &runs[0]["progress"];
    assert_eq!(p["planned"], 1500);
    assert!(p["done"].as_u64().unwrap() > 0 && p["done"].as_u64().unwrap() < 1500, "{p}");
    assert!(p["per_second"].as_f64().unwrap() > 0.0 && p["seconds_left"].as_f64().unwrap() > 0.0, "{p}");
    assert!(table.contains("running") && table.contains("left"), "{table}");
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_run_with_nothing_to_send_still_recreates_a_deleted_list_once_its_check_is_due() {
    let env = Env::with_config(opts(), "\n[sync]\nlist_check_interval = \"1ms\"\n");
    let members = emails(0, 40);
    env.setup_csv_export("Checked", &members);
    env.run_exact("Checked", &members);
    let old = env.list_id("Checked").unwrap();
    env.delete_list(old);
    std::thread::sleep(Duration::from_millis(5));
    let report = env.run_exact("Checked", &members);
    assert_ne!(env.list_id("Checked").unwrap(), old);
    assert_eq!(report["lists"][0]["added"], 40, "{report}");
    // Seen again just now: with the check not due, a no-change run would send nothing; here it is due at once,
    // so it looks (one GET) and sends nothing more.
    env.sandbox.reset_stats();
    env.run_exact("Checked", &members);
    assert_eq!(requests(&env.stats(), "lists.subscribe"), 0);
    assert_eq!(requests(&env.stats(), "lists.get"), 2, "the run's check and the test's own lookup");
}

/// `segment-exporter ARGS` run in a pseudo-terminal of `cols` x `rows` (util-linux `script`), as a person would.
fn in_terminal(env: &Env, cols: u16, rows: u16, args: &str) -> String {
    let bin = assert_cmd::cargo::cargo_bin("segment-exporter");
    let out = std::process::Command::new("script")
        .args(["-qec", &format!("stty cols {cols} rows {rows}; exec {} {args}", bin.display()), "/dev/null"])
        .current_dir(env.dir.path())
        .env("SEGMENT_EXPORTER_CONFIG", env.path("config.toml"))
        .env_remove("RUST_LOG")
        .output()
        .expect("util-linux `script` runs the command in a terminal");
    assert!(out.status.success(), "{args}: {}", text(&out.stdout));
    text(&out.stdout).replace('\r', "")
}

#[test]
fn tables_in_a_terminal_wrap_between_words_and_a_terminal_of_unknown_size_sets_no_limit() {
    let env = Env::new();
    env.setup_csv_export("Marketing audience", &emails(0, 5));
    env.ok(&["export", "run", "exp"]);
    let words_of = |table: &str| -> Vec<String> {
        table.split(|c: char| "│┆┌┐└┘├┤┬┴┼─═╞╡╪ \n".contains(c)).filter(|w| !w.is_empty()).map(String::from).collect()
    };
    for cols in [40, 60, 100] {
        let shown = in_terminal(&env, cols, 40, "runs show 1");
        let words = words_of(&shown);
        for word in ["Marketing", "audience", "succeeded", "unchanged", "Iterable"] {
            assert!(words.iter().any(|w| w == word), "{word:?} is cut at {cols} columns:\n{shown}");
        }
        let widest = shown.lines().map(|l| l.chars().count()).max().unwrap();
        assert!(widest <= usize::from(cols), "wider than the {cols} columns it needs no more than:\n{shown}");
    }
    // Narrower than its words: wider than the terminal, never cut mid-word (it was "succee ded" at 100).
    let shown = in_terminal(&env, 100, 40, "runs");
    let words = words_of(&shown);
    for word in ["trigger", "succeeded", "progress", "rejected", "manual", "UTC"] {
        assert!(words.iter().any(|w| w == word), "{word:?} is cut at 100 columns:\n{shown}");
    }
    // A terminal that reports 0x0 (some containers' do) is no reason to squeeze a table to a column a letter.
    let shown = in_terminal(&env, 0, 0, "runs");
    let header = shown.lines().find(|l| l.contains("export")).unwrap_or_else(|| panic!("{shown}"));
    for word in ["run", "export", "trigger", "status", "took / progress", "added", "updated", "rejected"] {
        assert!(header.contains(word), "{word:?} not whole on the header line:\n{shown}");
    }
    assert_eq!(shown.lines().filter(|l| l.contains("manual")).count(), 1, "one line per run:\n{shown}");
}

#[test]
fn a_read_only_key_passes_connect_and_the_runs_first_refused_write_fails_it_saying_a_server_side_key_is_needed() {
    let env = Env::with_sandbox(segment_exporter::sandbox::SandboxOptions { read_only_keys: true, ..opts() });
    // Connect can only read: the key reads lists, and it says that is what it checked.
    env.setup_csv_export("VIP", &emails(0, 30));
    let tested = text(&env.ok(&["connection", "test", "iterable"]).stdout);
    assert!(tested.contains("reads lists") && tested.contains("write"), "{tested}");
    for (case, first_write) in [("a list to create", "lists.create"), ("a list found by name", "lists.subscribe")] {
        if first_write == "lists.subscribe" {
            env.create_list_of_type("VIP", "Standard");
        }
        env.sandbox.reset_stats();
        let report = env.json(&["export", "run", "exp"]);
        assert_eq!(report["status"], "failed", "{case}: {report}");
        let error = report["error"].as_str().unwrap();
        for words in ["revoked, read-only, or otherwise unable to write lists", "server-side", "HTTP 403"] {
            assert!(error.contains(words), "{case}: {words:?} missing: {error}");
        }
        let stats = env.stats();
        assert_eq!(stats.statuses[first_write].get(&403), Some(&1), "{case}: refused once, not retried: {stats:?}");
        assert_eq!(requests(&stats, "lists.subscribe") + requests(&stats, "lists.create"), 1, "{case}: {stats:?}");
    }
}

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
    let attempts_before_stop = env.stats().total_requests;
    let asked = std::time::Instant::now();
    terminate(&child);
    let status = wait_exit(&mut child, std::time::Duration::from_secs(10));
    let took = asked.elapsed();
    if status.is_none() {
        child.kill().unwrap();
    }
    assert!(status.is_some() && took < std::time::Duration::from_secs(3), "the run took {took:?} to stop");
    assert!(attempts_before_stop <= 2, "the 20 s backoff was not waited: {:?}", env.stats());
    assert_eq!(env.stats().total_requests, attempts_before_stop, "no attempt after the stop: {:?}", env.stats());
    let runs = env.json(&["runs", "--export", "exp"]);
    assert_eq!(runs[0]["status"], "interrupted", "{runs}");
}

/// Appends a `[sync]` section to the env's config.
fn sync_config(env: &Env, lines: &str) {
    let mut config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    config.push_str(&format!("\n[sync]\n{lines}\n"));
    std::fs::write(env.path("config.toml"), config).unwrap();
}

#[test]
fn a_rejected_member_is_not_sent_by_a_run_with_no_change_but_again_once_its_retry_is_due() {
    let env = Env::new();
    let members = emails(0, 10);
    env.setup_csv_export("Picky", &members);
    env.sandbox.set_rejected(&[&members[3]]);
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!((report["lists"][0]["added"].as_u64(), report["lists"][0]["rejected"].as_u64()), (Some(9), Some(1)));
    // The cause is gone in Iterable, but within sync.retry_rejected_interval (24h) a run with no change sends nothing.
    env.sandbox.set_rejected::<&str>(&[]);
    env.sandbox.reset_stats();
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(env.stats().subscribers_received, 0, "{:?}", env.stats());
    assert!(!env.members("Picky").contains(&members[3]));
    // Once the interval has passed ("0s": at once), the rejected member, and only it, is sent again.
    sync_config(&env, "retry_rejected_interval = \"0s\"");
    let report = env.run_exact("Picky", &members);
    assert_eq!(report["lists"][0]["added"], 1, "{report}");
    assert_eq!(env.stats().subscribers_received, 1);
    // Acknowledged now: nothing more to send.
    env.sandbox.reset_stats();
    env.run_exact("Picky", &members);
    assert_eq!(requests(&env.stats(), "lists.subscribe"), 0);
}

#[test]
fn a_rejected_member_whose_fields_change_is_sent_by_the_next_run() {
    let env = Env::new();
    let members = emails(0, 5);
    env.setup_csv_export("Picky", &members);
    env.sandbox.set_rejected(&[&members[2]]);
    env.ok(&["export", "run", "exp"]);
    env.sandbox.set_rejected::<&str>(&[]);
    let mut rows: Vec<(&str, &str)> = members.iter().map(|e| (e.as_str(), "gold")).collect();
    rows[2].1 = "silver";
    env.write_csv("members.csv", &rows);
    env.sandbox.reset_stats();
    env.run_exact("Picky", &members);
    assert_eq!(env.stats().subscribers_received, 1);
}

#[test]
fn members_iterable_calls_forgotten_are_never_sent_again() {
    let env = Env::new();
    let mut members = emails(0, 3);
    members.push("gone+forgotten@example.com".into());
    env.setup_csv_export("Forgetful", &members);
    sync_config(&env, "retry_rejected_interval = \"0s\"");
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["lists"][0]["rejected"], 1, "{report}");
    env.sandbox.reset_stats();
    let report = env.json(&["export", "run", "exp", "--full"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(env.stats().subscribers_received, 3, "even --full leaves the forgotten member out");
    env.sandbox.reset_stats();
    env.ok(&["export", "run", "exp"]);
    assert_eq!(env.stats().subscribers_received, 0);
}

#[test]
fn a_member_we_subscribed_whose_later_update_was_refused_is_unsubscribed_when_it_leaves() {
    let env = Env::new();
    let members = emails(0, 6);
    env.setup_csv_export("Refusing", &members);
    env.run_exact("Refusing", &members);
    // Its next update is refused...
    env.sandbox.set_rejected(&[&members[1]]);
    let mut rows: Vec<(&str, &str)> = members.iter().map(|e| (e.as_str(), "gold")).collect();
    rows[1].1 = "silver";
    env.write_csv("members.csv", &rows);
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["lists"][0]["rejected"], 1, "{report}");
    // ...and then it leaves: it is still ours to remove.
    let rest: Vec<String> = members.iter().filter(|m| *m != &members[1]).cloned().collect();
    write_members(&env, &rest);
    let report = env.run_exact("Refusing", &rest);
    assert_eq!(report["lists"][0]["removed"], 1, "{report}");
}

#[test]
fn a_member_too_large_to_send_counts_as_rejected_with_the_reason_too_large() {
    let env = Env::with_config(opts(), "max_body_bytes = 10000");
    let huge = "x".repeat(20_000);
    let csv = env.write_csv("members.csv", &[("small@example.com", "gold"), ("big@example.com", &huge)]);
    env.add_connection();
    env.add_segment_and_export("Sizes", &format!("csv:{}", csv.display()), None);
    let out = env.ok(&["export", "run", "exp"]);
    let summary = text(&out.stdout);
    assert!(summary.contains("succeeded") && summary.contains("rejected"), "{summary}");
    assert!(summary.contains("--rejected"), "the summary points at the member not sent: {summary}");
    let runs = env.json(&["runs", "--export", "exp"]);
    let run_id = runs[0]["id"].to_string();
    let shown = env.json(&["runs", "show", &run_id, "--rejected"]);
    let target = &shown["targets"][0];
    assert_eq!((target["added"].as_u64(), target["rejected"].as_u64()), (Some(1), Some(1)), "{shown}");
    let issues = shown["issues"].as_array().unwrap();
    assert!(
        issues.iter().any(|i| i["kind"] == "rejected"
            && i["member"] == "big@example.com"
            && i["reason"].as_str().unwrap().starts_with("too large")),
        "{issues:?}"
    );
    assert_eq!(env.members("Sizes"), vec!["small@example.com"]);
}

/// Creates a list through the real API and subscribes `emails` to it, as someone working in Iterable would.
fn prefilled_list(env: &Env, name: &str, emails: &[&str]) -> i64 {
    let list_id = env.create_list_by_hand(name);
    env.subscribe_by_hand(list_id, emails);
    list_id
}

#[test]
fn a_full_re_send_and_a_removed_field_count_members_as_updated_never_as_added_again() {
    let env = Env::new();
    let members = emails(0, 12);
    env.setup_csv_export("Again", &members);
    let first = env.run_exact("Again", &members);
    assert_eq!((first["lists"][0]["added"].as_u64(), first["lists"][0]["updated"].as_u64()), (Some(12), Some(0)));
    let full = env.json(&["export", "run", "exp", "--full"]);
    assert_eq!(full["status"], "succeeded", "{full}");
    let list = &full["lists"][0];
    assert_eq!((list["to_add"].as_u64(), list["to_update"].as_u64()), (Some(0), Some(12)), "{full}");
    assert_eq!((list["added"].as_u64(), list["updated"].as_u64()), (Some(0), Some(12)), "{full}");
    env.ok(&["export", "edit", "exp", "--remove-field", "tier"]);
    let out = env.ok(&["export", "run", "exp"]);
    let summary = text(&out.stdout);
    let header = summary.lines().find(|l| l.contains("updated")).unwrap_or_else(|| panic!("{summary}"));
    let row = summary.lines().find(|l| l.contains("Again")).unwrap_or_else(|| panic!("{summary}"));
    let cells = |l: &str| l.split(['│', '┆']).map(|c| c.trim().to_string()).collect::<Vec<_>>();
    let (header, row) = (cells(header), cells(row));
    let cell = |name: &str| row[header.iter().position(|h| h == name).unwrap_or_else(|| panic!("{summary}"))].clone();
    assert_eq!((cell("added"), cell("updated")), ("0".to_string(), "12".to_string()), "{summary}");
    let runs = env.json(&["runs", "--export", "exp"]);
    let sum = |run: &serde_json::Value, k: &str| run["targets"][0][k].as_u64().unwrap();
    assert_eq!((sum(&runs[0], "added"), sum(&runs[0], "updated")), (0, 12), "{runs}");
    assert_eq!((sum(&runs[2], "added"), sum(&runs[2], "updated")), (12, 0), "{runs}");
}

#[test]
fn members_that_were_on_an_adopted_list_stay_when_they_leave_the_segment() {
    let env = Env::new();
    let list_id = prefilled_list(&env, "Adopted", &["pre.in@example.com", "pre.out@example.com"]);
    let segment: Vec<String> =
        ["pre.in@example.com", "ours.stays@example.com", "ours.leaves@example.com"].map(String::from).to_vec();
    env.setup_csv_export("Adopted", &segment);
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["lists"][0]["list_id"], list_id, "the list is found by name, not created");
    assert_eq!(requests(&env.stats(), "lists.getUsers"), 1, "its members are read once, when it is adopted");
    // What the run did to the list: two members new on it, one that was on it already.
    let list = &report["lists"][0];
    let n = |k: &str| list[k].as_u64().unwrap();
    assert_eq!((n("to_add"), n("to_update")), (2, 1), "the plan, once the list was read: {report}");
    assert_eq!((n("added"), n("updated"), n("already_on_list")), (2, 0, 1), "{report}");
    let run_id = report["run_id"].to_string();
    let shown = env.json(&["runs", "show", &run_id]);
    let t = &shown["targets"][0];
    assert_eq!(
        (t["planned_add"].as_u64(), t["planned_update"].as_u64(), t["added"].as_u64(), t["already_on_list"].as_u64()),
        (Some(2), Some(1), Some(2), Some(1)),
        "{shown}"
    );
    let table = text(&env.ok(&["runs", "show", &run_id]).stdout);
    assert!(table.contains("2 added, 0 updated, 1 already there, 0 removed"), "{table}");
    let mut expected = segment.clone();
    expected.push("pre.out@example.com".into());
    assert_eq!(env.members("Adopted"), sorted(expected));

    // The pre-existing member and one we added leave the segment: only ours is unsubscribed.
    write_members(&env, &segment[1..2]);
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["lists"][0]["removed"], 1, "{report}");
    assert_eq!(
        env.members("Adopted"),
        vec!["ours.stays@example.com", "pre.in@example.com", "pre.out@example.com"],
        "members that were on the list before the export adopted it stay"
    );
    assert_eq!(requests(&env.stats(), "lists.getUsers"), 1, "an adopted list is read only once");
}

#[test]
fn two_exports_of_one_segment_started_together_create_one_list() {
    let env = Env::with_sandbox(segment_exporter::sandbox::SandboxOptions {
        latency: std::time::Duration::from_millis(150),
        ..opts()
    });
    let members = emails(0, 20);
    env.setup_csv_export("Shared", &members);
    // `export add` refuses a second export of one list now; a store from before that rule may still hold such a
    // pair, and list creation must stay single for it: make one the way such a store has it.
    let source = format!("csv:{}", env.path("members.csv").display());
    env.ok(&["segment", "add", "Shared copy", "--source", &source]);
    env.ok(&[
        "export",
        "add",
        "exp2",
        "--connection",
        "iterable",
        "--segment",
        "Shared copy",
        "--email-field",
        "email",
    ]);
    env.store_sql(&["UPDATE targets SET list_name = 'Shared' WHERE list_name = 'Shared copy'"]);
    let spawn = |export: &str| {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("segment-exporter"))
            .current_dir(env.dir.path())
            .env("SEGMENT_EXPORTER_CONFIG", env.path("config.toml"))
            .env("ITERABLE_KEY", KEY)
            .args(["export", "run", export])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (spawn("exp"), spawn("exp2"));
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let named: Vec<_> = env.sandbox_lists().into_iter().filter(|(_, name)| name == "Shared").collect();
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!(env.members("Shared"), sorted(members));
}

#[test]
fn a_stop_while_a_new_list_is_not_usable_yet_ends_the_run_interrupted_at_once() {
    let sandbox =
        segment_exporter::sandbox::SandboxOptions { list_propagation: std::time::Duration::from_secs(120), ..opts() };
    let env = Env::with_config(sandbox, "new_list_grace = \"120s\"");
    env.setup_csv_export("Fresh", &emails(0, 10));
    env.sandbox.reset_stats();
    let mut child = env.spawn_run();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while requests(&env.stats(), "lists.subscribe") == 0 {
        assert!(std::time::Instant::now() < deadline, "the run never sent: {:?}", env.stats());
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
    let runs = env.json(&["runs", "--export", "exp"]);
    assert_eq!(runs[0]["status"], "interrupted", "{runs}");
}

#[test]
fn adopting_a_list_waits_out_the_get_users_rate_limit_instead_of_failing() {
    let env = Env::new();
    // A long enough cap that a 429's rateLimitReset (up to 12 s for 5 a minute) is honoured, not cut short.
    let config = format!(
        "[store]\npath = \"{}\"\n\n[iterable]\nbatch_size = 50\nretry_min_delay = \"20ms\"\nretry_max_delay = \"20s\"\n",
        env.path("store.db").display()
    );
    std::fs::write(env.path("config.toml"), config).unwrap();
    prefilled_list(&env, "Busy", &["pre@example.com"]);
    // Someone else used up this minute's five getUsers calls.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let list_id = env.list_id("Busy").unwrap();
    rt.block_on(async {
        for _ in 0..5 {
            let url = format!("{}/api/lists/getUsers?listId={list_id}", env.base_url);
            reqwest::Client::new().get(url).header("Api-Key", KEY).send().await.unwrap();
        }
    });
    let members = emails(0, 3);
    env.setup_csv_export("Busy", &members);
    env.sandbox.reset_stats();
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    let stats = env.stats();
    assert!(stats.answered_with("lists.getUsers", 429) >= 1, "{stats:?}");
    assert_eq!(stats.answered_with("lists.getUsers", 200), 1, "{stats:?}");
    // The member read while adopting stays when the segment no longer has it (it never had).
    write_members(&env, &members[..2]);
    env.ok(&["export", "run", "exp"]);
    assert_eq!(env.members("Busy"), vec!["pre@example.com", "user0@example.com", "user1@example.com"]);
}

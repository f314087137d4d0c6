//! `export verify`: lists read back from the sandbox and compared with the segment and the export's memory, with
//! drift made behind the exporter's back (by hand, a silent drop, a late or cut-short `getUsers`), and repaired.

mod common;

use common::{emails, opts, sorted, text, Env};
use segment_exporter::sandbox::{Faults, SandboxOptions};
use serde_json::{json, Value};

/// An env whose verify counts changes older than `settle` as settled ("0s": every change).
fn env_settling(settle: &str, sandbox: SandboxOptions) -> Env {
    Env::with_config(sandbox, &format!("\n[sync]\nverify_settle = \"{settle}\"\n"))
}

/// Sandbox options without Iterable's limit of 5 getUsers a minute: these tests verify (two reads each in the
/// sandbox's default hybrid project) more often than that; waiting it out is `run_accounting`'s to test.
fn unlimited() -> SandboxOptions {
    SandboxOptions { documented_limits: false, ..opts() }
}

/// Writes the segment's CSV (`email,tier`) with these members.
fn write_members(env: &Env, members: &[String]) {
    let rows: Vec<(&str, &str)> = members.iter().map(|e| (e.as_str(), "gold")).collect();
    env.write_csv("members.csv", &rows);
}

/// Runs `export verify exp` with `extra` flags and --json; returns its exit code and report.
fn verify(env: &Env, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["--json", "export", "verify", "exp"];
    args.extend_from_slice(extra);
    let out = env.run(&args);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {} {}", text(&out.stdout), text(&out.stderr)));
    (out.status.code().unwrap(), report)
}

fn count(report: &Value, category: &str) -> u64 {
    report["lists"][0][category]["count"].as_u64().unwrap_or_else(|| panic!("{category}: {report}"))
}

fn unsubscribe_by_hand(env: &Env, list_id: i64, members: &[String]) {
    let subscribers: Vec<_> = members.iter().map(|e| json!({ "email": e })).collect();
    env.post_api(
        "/api/lists/unsubscribe",
        json!({ "listId": list_id, "subscribers": subscribers, "channelUnsubscribe": false }),
    );
}

fn subscribe_by_hand(env: &Env, list_id: i64, members: &[String]) {
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    env.subscribe_by_hand(list_id, &refs);
}

#[test]
fn drift_made_by_hand_is_found_in_its_categories_and_repaired_step_by_step() {
    drift_by_hand(&env_settling("0s", unlimited()));
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn drift_made_by_hand_is_found_and_repaired_on_a_postgresql_store_too() {
    drift_by_hand(&Env::on_postgres(unlimited(), "\n[sync]\nverify_settle = \"0s\"\n"));
}

fn drift_by_hand(env: &Env) {
    let ours = emails(0, 200);
    env.setup_csv_export("Drift", &ours);
    env.run_exact("Drift", &ours);
    // Ten leave the segment and are unsubscribed by the export.
    write_members(env, &ours[..190]);
    let report = env.run_exact("Drift", &ours[..190]);
    assert_eq!(report["lists"][0]["removed"], 10, "{report}");
    let (code, report) = verify(env, &[]);
    assert_eq!((code, report["drifted"].as_bool()), (0, Some(false)), "a list as sent is clean: {report}");

    // Behind the exporter's back: 50 of its members unsubscribed, 30 others added, the 10 removed put back.
    let list_id = env.list_id("Drift").unwrap();
    unsubscribe_by_hand(env, list_id, &ours[..50]);
    let others: Vec<String> = (0..30).map(|i| format!("other{i}@example.org")).collect();
    subscribe_by_hand(env, list_id, &others);
    subscribe_by_hand(env, list_id, &ours[190..]);

    let (code, report) = verify(env, &[]);
    assert_eq!(code, 3, "drift has an exit code of its own: {report}");
    assert_eq!(report["drifted"], true, "{report}");
    assert_eq!(report["kind"], "verify", "{report}");
    assert_eq!(report["lists"][0]["verdict"], "drifted", "{report}");
    let found: Vec<u64> =
        ["missing", "not_yet_sent", "lingering", "others", "settling"].iter().map(|c| count(&report, c)).collect();
    assert_eq!(found, vec![50, 0, 10, 30, 0], "missing, not yet sent, lingering, others', settling: {report}");
    let examples = report["lists"][0]["missing"]["examples"].as_array().unwrap();
    assert_eq!(examples.len(), 20, "up to 20 examples of a category: {report}");
    assert!(examples.iter().all(|e| ours[..50].contains(&e.as_str().unwrap().to_string())), "{report}");
    assert_eq!(report["lists"][0]["lingering"]["examples"].as_array().unwrap().len(), 10);
    assert_eq!(report["lists"][0]["read_members"], 180, "190 - 50 + 30 + 10: {report}");
    let subscribed_before = env.stats().subscribers_received;
    assert_eq!(
        report["lists"][0]["list_size"], report["lists"][0]["read_members"],
        "the count read is checked against the list's size"
    );
    let shown = env.json(&["runs", "show", &report["run_id"].to_string()]);
    assert_eq!(shown["kind"], "verify", "a verify is recorded as a run of its own kind: {shown}");

    // --repair sends the 50 again and leaves the others and the lingering alone.
    let (code, report) = verify(env, &["--repair"]);
    assert_eq!(report["kind"], "verify_repair", "{report}");
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(code, 3, "lingering members are left, so the list still drifts: {report}");
    assert_eq!(report["repaired"][0]["added"], 50, "{report}");
    assert_eq!(report["repaired"][0]["removed"], 0, "{report}");
    assert_eq!(env.stats().subscribers_received - subscribed_before, 50, "only the missing are sent");
    let mut expected: Vec<String> = ours.clone();
    expected.extend(others.iter().cloned());
    assert_eq!(env.members("Drift"), sorted(expected.clone()), "the 50 are back, others' and lingering stay");

    // --remove-lingering takes the 10 off, through the mass-removal guard.
    let (code, report) = verify(env, &["--repair", "--remove-lingering"]);
    assert_eq!((code, report["status"].as_str()), (0, Some("succeeded")), "{report}");
    assert_eq!((count(&report, "missing"), count(&report, "lingering")), (0, 10), "{report}");
    assert_eq!(report["repaired"][0]["removed"], 10, "{report}");
    let mut expected: Vec<String> = ours[..190].to_vec();
    expected.extend(others.iter().cloned());
    assert_eq!(env.members("Drift"), sorted(expected), "members added by someone else stay");

    // A second verify is clean.
    let (code, report) = verify(env, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["drifted"], false, "{report}");
    let found: Vec<u64> =
        ["missing", "not_yet_sent", "lingering", "others", "settling"].iter().map(|c| count(&report, c)).collect();
    assert_eq!(found, vec![0, 0, 0, 30, 0], "{report}");
    let table = text(&env.ok(&["runs"]).stdout);
    assert!(table.contains("verify"), "{table}");
    let shown = text(&env.ok(&["runs", "show", &report["run_id"].to_string()]).stdout);
    assert!(shown.contains("clean: 0 missing, 0 not yet sent, 0 lingering, 30 others', 0 settling"), "{shown}");
}

#[test]
fn members_sent_a_moment_ago_that_getusers_does_not_show_yet_are_settling_not_missing() {
    let env = env_settling("15m", unlimited());
    let ours = emails(0, 40);
    env.setup_csv_export("Late", &ours[..30]);
    env.run_exact("Late", &ours[..30]);
    env.sandbox.set_faults(Faults { get_users_delay_ms: Some(600_000), ..Faults::default() });
    write_members(&env, &ours[10..]);
    let report = env.run_exact("Late", &ours[10..]);
    assert_eq!((report["lists"][0]["added"].as_u64(), report["lists"][0]["removed"].as_u64()), (Some(10), Some(10)));
    let (code, report) = verify(&env, &[]);
    assert_eq!(code, 0, "{report}");
    let found: Vec<u64> =
        ["missing", "not_yet_sent", "lingering", "others", "settling"].iter().map(|c| count(&report, c)).collect();
    assert_eq!(found, vec![0, 0, 0, 0, 20], "10 sent and 10 removed a moment ago: {report}");
    assert_eq!(report["lists"][0]["verdict"], "clean", "{report}");
}

#[test]
fn a_change_the_sandbox_acknowledged_and_dropped_is_found_by_the_next_verify_and_repaired() {
    let env = env_settling("0s", unlimited());
    let ours = emails(0, 120);
    env.setup_csv_export("Dropped", &ours[..100]);
    env.run_exact("Dropped", &ours[..100]);
    // The next subscribe is answered as done, every member counted, and applied to nothing.
    env.sandbox.set_faults(Faults { silent_drop_next: Some(1), ..Faults::default() });
    write_members(&env, &ours);
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!((report["status"].as_str(), report["lists"][0]["added"].as_u64()), (Some("succeeded"), Some(20)));
    assert_eq!(env.members("Dropped"), sorted(ours[..100].to_vec()), "the run believes what it was told");
    let (code, report) = verify(&env, &[]);
    assert_eq!((code, count(&report, "missing")), (3, 20), "{report}");
    let (code, report) = verify(&env, &["--repair"]);
    assert_eq!((code, report["repaired"][0]["added"].as_u64()), (0, Some(20)), "{report}");
    assert_eq!(env.members("Dropped"), sorted(ours.clone()));
    assert_eq!(verify(&env, &[]).0, 0);
}

#[test]
fn a_getusers_answer_cut_short_gives_no_verdict_and_repairs_nothing() {
    let env = env_settling("0s", unlimited());
    let ours = emails(0, 60);
    env.setup_csv_export("Cut", &ours);
    env.run_exact("Cut", &ours);
    env.sandbox.set_faults(Faults { cut_get_users_next: Some(1), ..Faults::default() });
    let before = env.stats().subscribers_received;
    let (code, report) = verify(&env, &["--repair"]);
    assert_eq!(code, 1, "no verdict is a failed verify: {report}");
    assert_eq!(report["lists"][0]["verdict"], "no_verdict", "{report}");
    assert_eq!(
        (report["lists"][0]["read_members"].as_u64(), report["lists"][0]["list_size"].as_u64()),
        (Some(30), Some(60))
    );
    assert!(report["error"].as_str().unwrap().contains("no verdict"), "{report}");
    assert_eq!(env.stats().subscribers_received, before, "nothing was repaired");
    assert_eq!(count(&report, "missing"), 0, "nothing concluded: {report}");
    // Read whole again, the list is clean.
    assert_eq!(verify(&env, &[]).0, 0);
}

#[test]
fn a_hybrid_list_is_matched_on_the_user_id_or_the_email_of_each_member() {
    let env = env_settling(
        "0s",
        SandboxOptions { project_type: segment_exporter::sandbox::SandboxProjectType::Hybrid, ..unlimited() },
    );
    env.add_connection_with(&["--project-type", "hybrid"]);
    // Half the members have a user id (sent by it), half only an email.
    let mut csv = String::from("email,user_id,tier\n");
    for i in 0..40 {
        let uid = if i % 2 == 0 { format!("u{i}") } else { String::new() };
        csv.push_str(&format!("user{i}@example.com,{uid},gold\n"));
    }
    std::fs::write(env.path("people.csv"), csv).unwrap();
    let source = format!("csv:{}", env.path("people.csv").display());
    env.ok(&["segment", "add", "Hybrid", "--source", &source]);
    env.ok(&[
        "export",
        "add",
        "exp",
        "--connection",
        "iterable",
        "--segment",
        "Hybrid",
        "--email-field",
        "email",
        "--user-id-field",
        "user_id",
    ]);
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    let (code, report) = verify(&env, &[]);
    assert_eq!(code, 0, "members by user id and by email are all found: {report}");
    assert_eq!((count(&report, "missing"), count(&report, "others")), (0, 0), "{report}");
    // A member the export sends by its email gets a user id elsewhere (the app): getUsers with preferUserId then
    // names it by that id, and the second read, of emails, still finds it.
    let list_id = env.list_id("Hybrid").unwrap();
    env.post_api(
        "/api/lists/subscribe",
        json!({ "listId": list_id, "subscribers": [{ "email": "user3@example.com", "userId": "app-3" }] }),
    );
    let (code, report) = verify(&env, &[]);
    assert_eq!((code, count(&report, "missing"), count(&report, "others")), (0, 0, 0), "{report}");
    // Someone takes one of each off the list: one by its user id, one by its email.
    env.post_api(
        "/api/lists/unsubscribe",
        json!({ "listId": list_id, "channelUnsubscribe": false,
                "subscribers": [{ "userId": "u0" }, { "email": "user1@example.com" }] }),
    );
    let (code, report) = verify(&env, &[]);
    assert_eq!((code, count(&report, "missing")), (3, 2), "{report}");
    let mut missing: Vec<String> = report["lists"][0]["missing"]["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect();
    missing.sort();
    assert_eq!(missing, vec!["user1@example.com", "userId:u0"], "each as the export identifies it: {report}");
}

#[test]
fn verifying_an_export_whose_run_is_in_flight_exits_75() {
    let env = env_settling("0s", unlimited());
    let ours = emails(0, 200);
    env.setup_csv_export("Busy", &ours);
    env.hold();
    let mut run = env.spawn_run();
    // Wait until the run holds the export (its row is running).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while env.store_i64("SELECT COUNT(*) FROM runs WHERE status = 'running'") == 0 {
        assert!(std::time::Instant::now() < deadline, "the run never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = env.run(&["export", "verify", "exp"]);
    env.release();
    assert_eq!(out.status.code(), Some(75), "{}", text(&out.stderr));
    assert!(run.wait().unwrap().success());
}

/// GET `path` of the served daemon with `token`, as JSON.
async fn get(base: &str, token: &str, path: &str) -> Value {
    reqwest::Client::new().get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap().json().await.unwrap()
}

/// Waits until run `id` has ended; returns it as `GET /api/v1/runs/{id}` shows it.
async fn ended_run(base: &str, token: &str, id: i64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let run = get(base, token, &format!("/api/v1/runs/{id}")).await;
        if run["status"] != "running" {
            return run;
        }
        assert!(std::time::Instant::now() < deadline, "run {id} never ended: {run}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[test]
fn a_verify_asked_for_over_the_api_is_queued_like_a_run_read_like_one_and_measured_and_one_falls_due_after_a_run() {
    let env = Env::with_config(unlimited(), "\n[sync]\nverify_settle = \"0s\"\nverify_interval = \"1h\"\n");
    let ours = emails(0, 30);
    // The daemon runs in this process, which has no ITERABLE_KEY: the key is stored (sealed) instead.
    let add =
        ["connection", "add", "iterable", "--api-key-stdin", "--base-url", &env.base_url, "--accept-data-privacy"];
    let out = env.cmd().args(add).write_stdin(common::KEY).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    write_members(&env, &ours);
    let source = format!("csv:{}", env.path("members.csv").display());
    env.add_segment_and_export("Api", &source, None);
    env.run_exact("Api", &ours);
    let list_id = env.list_id("Api").unwrap();
    unsubscribe_by_hand(&env, list_id, &ours[..5]);
    let token = env.json(&["user", "add", "ann", "--role", "admin"])["token"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let served = rt.block_on(common::in_process::serve(&env, ""));
    let base = served.base.clone();
    let client = reqwest::Client::new();
    let post = |path: &str, body: Option<Value>| {
        let mut req = client.post(format!("{base}/api/v1{path}")).bearer_auth(&token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        rt.block_on(async {
            let answer = req.send().await.unwrap();
            (answer.status().as_u16(), answer.json::<Value>().await.unwrap())
        })
    };

    let (status, _) = post("/exports/exp/verify", Some(json!({ "remove_lingering": true })));
    assert_eq!(status, 422, "remove_lingering without repair is refused");
    let (status, accepted) = post("/exports/exp/verify", None);
    assert_eq!(status, 202, "{accepted}");
    let run = rt.block_on(ended_run(&base, &token, accepted["run_id"].as_i64().expect("the verify's run id")));
    assert_eq!((run["kind"].as_str(), run["trigger"].as_str()), (Some("verify"), Some("api")), "{run}");
    assert_eq!(run["verify"][0]["verdict"], "drifted", "{run}");
    assert_eq!(run["verify"][0]["missing"]["count"], 5, "{run}");
    // The daemon counts a run in /metrics last, just after its end is recorded: wait for it, a few seconds at most.
    let missing = "segment_exporter_list_drift_members{export=\"exp\",list=\"Api\",kind=\"missing\"} 5";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics =
            rt.block_on(async { reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap() });
        if metrics.contains(missing) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // A repair over the API is counted like a run.
    let (_, accepted) = post("/exports/exp/verify", Some(json!({ "repair": true })));
    let run = rt.block_on(ended_run(&base, &token, accepted["run_id"].as_i64().unwrap()));
    assert_eq!((run["kind"].as_str(), run["status"].as_str()), (Some("verify_repair"), Some("succeeded")), "{run}");
    assert_eq!(run["lists"][0]["added"], 5, "{run}");
    assert_eq!(env.sandbox.list_members(list_id).unwrap(), sorted(ours.clone()));
    assert_eq!(env.store_i64("SELECT COUNT(*) FROM runs WHERE kind != 'run'"), 2);

    // With no verify within sync.verify_interval, the next run's end queues one, on the schedule's behalf, report
    // only.
    env.store_sql(&["UPDATE runs SET started_at = '2020-01-01T00:00:00.000Z' WHERE kind != 'run'"]);
    let answer = rt.block_on(async {
        let r = client.post(format!("{base}/api/v1/exports/exp/runs")).bearer_auth(&token).send().await.unwrap();
        r.json::<Value>().await.unwrap()
    });
    rt.block_on(ended_run(&base, &token, answer["run_id"].as_i64().unwrap()));
    let scheduled = rt.block_on(async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let runs = get(&base, &token, "/api/v1/runs?export=exp").await;
            let found =
                runs.as_array().unwrap().iter().find(|r| r["trigger"] == "schedule" && r["status"] != "running");
            if let Some(v) = found {
                break v.clone();
            }
            assert!(std::time::Instant::now() < deadline, "no scheduled verify: {runs}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    assert_eq!((scheduled["kind"].as_str(), scheduled["status"].as_str()), (Some("verify"), Some("succeeded")));
    rt.block_on(served.stop());
}

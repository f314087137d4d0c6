//! Several real `segment-exporter daemon` processes sharing one PostgreSQL store: the schedule fires once, a run
//! whose daemon is killed, frozen or cut off is taken over and ends exact, a frozen daemon that wakes records and
//! sends nothing more, any replica answers any request, and a rolling restart loses no run. They need the server
//! at `TEST_POSTGRES_URL` and are marked ignored; `.ci/run` runs them.

mod common;

use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;
use segment_exporter::sandbox::SandboxOptions;

/// The daemons' section: any free port, trigger files in the env, a refresh schedule that never fires in a test.
fn daemon_section(max_concurrent_runs: usize) -> String {
    format!(
        "\n[daemon]\nstatus_listen = \"127.0.0.1:0\"\ntrigger_dir = \"triggers\"\ntrigger_poll_interval = \"500ms\"\n\
         reload_interval = \"1s\"\nshutdown_grace = \"20s\"\nrefresh_schedule = \"0 0 0 1 1 *\"\n\
         max_concurrent_runs = {max_concurrent_runs}\n"
    )
}

/// A CSV segment `name` of `members` and an export of it, also named `name`, on schedule `schedule`.
fn add_export(env: &Env, name: &str, members: &[String], schedule: &str) {
    let rows: Vec<(&str, &str)> = members.iter().map(|e| (e.as_str(), "gold")).collect();
    let csv = env.write_csv(&format!("{name}.csv"), &rows);
    env.ok(&["segment", "add", name, "--source", &format!("csv:{}", csv.display())]);
    env.ok(&[
        "export",
        "add",
        name,
        "--connection",
        "iterable",
        "--segment",
        name,
        "--email-field",
        "email",
        "--schedule",
        schedule,
    ]);
}

fn runs(env: &Env) -> Vec<serde_json::Value> {
    env.json(&["runs", "--limit", "500"]).as_array().unwrap().clone()
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The pid in the holder of export `export_id`'s live lease, if one holds it.
fn lease_holder_pid(env: &Env, export_id: i64) -> Option<u32> {
    let holder = env.pg_text(&format!(
        "SELECT COALESCE((SELECT holder FROM run_leases WHERE export_id = {export_id} AND holder IS NOT NULL \
         AND expires_at > clock_timestamp()), '')"
    ));
    let pid = holder.split_whitespace().skip_while(|w| *w != "pid").nth(1)?;
    pid.parse().ok()
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn three_postgres_daemons_run_each_scheduled_tick_of_twenty_exports_once_and_every_list_ends_exact() {
    let opts = SandboxOptions { latency: Duration::from_millis(150), ..opts() };
    let env = Env::on_postgres(opts, &daemon_section(2));
    env.add_connection();
    let lists: Vec<(String, Vec<String>)> = (0..20).map(|i| (format!("tick{i:02}"), emails(i * 10, 5))).collect();
    for (name, members) in &lists {
        add_export(&env, name, members, "*/5 * * * * *");
    }
    let daemons: Vec<Daemon> = (0..3).map(|_| Daemon::start(&env)).collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    // The schedules end (the daemons see it within their reload interval), then the runs in flight do.
    env.pg_sql(&["UPDATE exports SET schedule = 'off', updated_at = clock_timestamp()"]);
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    wait_for("the last runs end", Duration::from_secs(60), || {
        env.pg_i64("SELECT COUNT(*) FROM runs WHERE status = 'running'") == 0
            && env.pg_i64("SELECT COUNT(*) FROM run_requests WHERE state = 'queued'") == 0
    });
    for d in &daemons {
        d.signal("-TERM");
    }
    for mut d in daemons {
        assert_eq!(d.wait_exit(Duration::from_secs(40)), Some(0), "{}", d.logs());
    }

    let failed = env.pg_i64("SELECT COUNT(*) FROM runs WHERE status != 'succeeded'");
    assert_eq!(failed, 0, "{:#?}", runs(&env).iter().filter(|r| r["status"] != "succeeded").collect::<Vec<_>>());
    // Every tick is queued once whoever's clock fired it, and runs at most once (a tick that found its export
    // running merged into the follow-up).
    for (i, (name, members)) in lists.iter().enumerate() {
        let export_id = (i + 1) as i64;
        let ticks = env.pg_i64(&format!("SELECT COUNT(*) FROM schedule_ticks WHERE export_id = {export_id}"));
        let scheduled_runs =
            env.pg_i64(&format!("SELECT COUNT(*) FROM runs WHERE export_id = {export_id} AND trigger = 'schedule'"));
        // One tick every 5 s, one missed at start (the exports are older than their last scheduled time), and the
        // ticks until the daemons saw the schedules end; three replicas firing each would make three times as many.
        let most = (elapsed.as_secs() / 5 + 3) as i64;
        assert!((8..=most).contains(&ticks), "{name}: {ticks} ticks in {elapsed:?}");
        assert!(scheduled_runs <= ticks, "{name}: {scheduled_runs} scheduled runs for {ticks} ticks");
        assert!(scheduled_runs >= ticks / 2, "{name}: only {scheduled_runs} runs for {ticks} ticks");
        assert_eq!(env.members(name), sorted(members.clone()), "{name}");
    }
    assert_eq!(
        env.pg_i64("SELECT COUNT(*) FROM (SELECT run_id FROM run_requests WHERE run_id IS NOT NULL GROUP BY run_id HAVING COUNT(*) > 1) d"),
        0,
        "no run answers two requests"
    );
    assert!(
        env.pg_i64("SELECT COUNT(DISTINCT owner) FROM runs") >= 2,
        "the replicas share the work: every run went to one of them"
    );
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn kill_9_of_the_postgres_daemon_holding_a_run_lets_another_take_it_over_and_the_list_ends_exact() {
    let opts = SandboxOptions { latency: Duration::from_millis(60), ..opts() };
    let env = Env::on_postgres(opts, &format!("batch_size = 500\n{}", daemon_section(2)));
    env.add_connection();
    let members = emails(0, 100_000);
    add_export(&env, "big", &members, "off");
    let daemons = [Daemon::start(&env), Daemon::start(&env)];
    env.ok(&["export", "trigger", "big"]);
    env.wait_for_subscribers(20_000, Duration::from_secs(120));
    let holder = lease_holder_pid(&env, 1).expect("a daemon holds the run");
    let victim = daemons.iter().find(|d| d.child.id() == holder).expect("the holder is one of ours");
    let killed_at = Instant::now();
    victim.signal("-KILL");
    // Taken over within the lease's life, the Iterable timeout, and a few seconds.
    wait_for("the run taken over", Duration::from_secs(6 + 2 + 10), || {
        env.pg_i64("SELECT COUNT(*) FROM runs WHERE trigger = 'takeover'") == 1
    });
    let took = killed_at.elapsed();
    wait_for("the taken-over run ends", Duration::from_secs(180), || {
        env.pg_i64("SELECT COUNT(*) FROM runs WHERE status = 'running'") == 0
    });
    let r = runs(&env);
    assert_eq!(r[0]["status"], "succeeded", "{r:?}");
    assert_eq!(r[1]["status"], "interrupted", "{r:?}");
    assert!(r[0]["note"].as_str().unwrap_or("").contains("resumes run"), "{r:?}");
    assert_eq!(env.members("big"), sorted(members), "the list ends exact");
    // No member acknowledged twice: what the runs counted as added is the list, once.
    assert_eq!(env.pg_i64("SELECT CAST(SUM(added) AS BIGINT) FROM run_targets"), 100_000);
    assert_eq!(env.pg_i64("SELECT COUNT(*) FROM members"), 100_000);
    eprintln!("taken over {took:?} after the kill");
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn a_frozen_postgres_daemon_that_wakes_after_losing_its_lease_records_and_sends_nothing_more() {
    // Requests take most of the Iterable timeout, so some are in flight when the holder freezes.
    let opts = SandboxOptions { latency: Duration::from_millis(1500), ..opts() };
    let env = Env::on_postgres(opts, &format!("batch_size = 200\nconcurrency = 4\n{}", daemon_section(2)));
    env.add_connection();
    let members = emails(0, 20_000);
    add_export(&env, "frozen", &members, "off");
    let daemons = [Daemon::start(&env), Daemon::start(&env)];
    env.ok(&["export", "trigger", "frozen"]);
    env.wait_for_subscribers(2_000, Duration::from_secs(60));
    let holder = lease_holder_pid(&env, 1).expect("a daemon holds the run");
    let frozen = daemons.iter().find(|d| d.child.id() == holder).expect("the holder is one of ours");
    frozen.signal("-STOP");
    wait_for("the run taken over", Duration::from_secs(6 + 2 + 10), || {
        env.pg_i64("SELECT COUNT(*) FROM runs WHERE trigger = 'takeover'") == 1
    });
    wait_for("the taken-over run ends", Duration::from_secs(120), || {
        env.pg_i64("SELECT COUNT(*) FROM runs WHERE status = 'running'") == 0
    });
    assert_eq!(env.members("frozen"), sorted(members.clone()), "the list ends exact");
    let subscribes = requests(&env.stats(), "lists.subscribe");
    let recorded = env.pg_text("SELECT string_agg(id || ':' || status, ',' ORDER BY id) FROM runs");
    let counted = env.pg_i64("SELECT CAST(SUM(added) AS BIGINT) FROM run_targets");

    frozen.signal("-CONT");
    frozen.wait_for_log("lease was lost", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(requests(&env.stats(), "lists.subscribe"), subscribes, "the woken daemon started a request");
    assert_eq!(env.pg_text("SELECT string_agg(id || ':' || status, ',' ORDER BY id) FROM runs"), recorded);
    assert_eq!(env.pg_i64("SELECT CAST(SUM(added) AS BIGINT) FROM run_targets"), counted, "it recorded more");
    assert_eq!(counted, 20_000, "every member counted once");
    assert_eq!(env.members("frozen"), sorted(members));
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn every_postgres_connection_of_the_daemon_holding_a_run_cut_at_once_and_the_run_resumes_and_ends_exact() {
    let opts = SandboxOptions { latency: Duration::from_millis(40), ..opts() };
    let env = Env::on_postgres(opts, &format!("batch_size = 200\n{}", daemon_section(2)));
    env.add_connection();
    let members = emails(0, 30_000);
    add_export(&env, "cut", &members, "off");
    let daemons = [Daemon::start(&env), Daemon::start(&env)];
    env.ok(&["export", "trigger", "cut"]);
    env.wait_for_subscribers(5_000, Duration::from_secs(60));
    let holder = lease_holder_pid(&env, 1).expect("a daemon holds the run");
    let cut = env.pg_i64(&format!(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'segment-exporter {holder}') t"
    ));
    assert!(cut > 0, "the holder had no connection to cut");
    wait_for("the list complete and no run going", Duration::from_secs(120), || {
        env.pg_i64("SELECT COUNT(*) FROM runs WHERE status = 'running'") == 0
            && env.pg_i64("SELECT COUNT(*) FROM run_requests WHERE state = 'queued'") == 0
            && env.members("cut").len() == members.len()
    });
    let r = runs(&env);
    assert_eq!(r[0]["status"], "succeeded", "the last run succeeded: {r:#?}");
    assert_eq!(env.members("cut"), sorted(members), "the list ends exact");
    assert_eq!(env.pg_i64("SELECT COUNT(*) FROM members"), 30_000);
    assert_eq!(env.pg_i64("SELECT CAST(SUM(added) AS BIGINT) FROM run_targets"), 30_000, "every member counted once");
    drop(daemons);
}

/// One HTTP call to a replica as a load balancer in front of them would pass it on: the browser's `Host` and
/// `Origin` are the front's, whichever replica answers. Returns the status and the JSON body.
fn call(
    replica: &Daemon,
    front: &str,
    method: reqwest::Method,
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value, Option<String>) {
    block_on(async {
        let mut r = reqwest::Client::new()
            .request(method, format!("{}/api/v1{path}", replica.status))
            .header("Host", front.trim_start_matches("http://"))
            .header("Origin", front);
        if let Some(c) = cookie {
            r = r.header("Cookie", c);
        }
        if let Some(t) = csrf {
            r = r.header("X-CSRF-Token", t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let answer = r.send().await.unwrap();
        let status = answer.status().as_u16();
        let cookie =
            answer.headers().get("set-cookie").map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string());
        (status, answer.json().await.unwrap_or(serde_json::Value::Null), cookie)
    })
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn any_postgres_replica_answers_any_request_signed_in_on_one_run_through_another_watched_and_cancelled_on_others() {
    let opts = SandboxOptions { latency: Duration::from_millis(150), ..opts() };
    let env = Env::on_postgres(opts, &format!("batch_size = 100\n{}", daemon_section(2)));
    env.add_connection();
    add_export(&env, "shared", &emails(0, 20_000), "off");
    env.ok(&["user", "add", "ann", "--role", "admin"]);
    env.cmd()
        .args(["user", "password", "ann", "--password-stdin"])
        .write_stdin("correct horse battery\n")
        .assert()
        .success();
    let [a, b, c] = [Daemon::start(&env), Daemon::start(&env), Daemon::start(&env)];
    let front = a.status.clone();
    use reqwest::Method;

    let login = serde_json::json!({ "user": "ann", "password": "correct horse battery" });
    let (status, session, cookie) = call(&a, &front, Method::POST, "/session", None, None, Some(login));
    assert_eq!(status, 200, "{session}");
    let (cookie, csrf) = (cookie.expect("a session cookie"), session["csrf_token"].as_str().unwrap().to_string());
    let (status, me, _) = call(&b, &front, Method::GET, "/me", Some(&cookie), None, None);
    assert_eq!(
        (status, me["name"].as_str()),
        (200, Some("ann")),
        "the session signed in on one replica holds on another"
    );

    let (status, accepted, _) =
        call(&b, &front, Method::POST, "/exports/shared/runs", Some(&cookie), Some(&csrf), Some(serde_json::json!({})));
    assert_eq!(status, 202, "{accepted}");
    let request = accepted["request_id"].as_i64().unwrap();
    wait_for("the run has an id", Duration::from_secs(20), || {
        env.pg_i64(&format!("SELECT COALESCE((SELECT run_id FROM run_requests WHERE id = {request}), 0)")) > 0
    });
    let run_id = env.pg_i64(&format!("SELECT run_id FROM run_requests WHERE id = {request}"));
    // Watched on a third replica: while it goes, with the progress its holder publishes.
    let mut seen = serde_json::Value::Null;
    wait_for("progress shown on the third replica", Duration::from_secs(30), || {
        let (status, run, _) = call(&c, &front, Method::GET, &format!("/runs/{run_id}"), Some(&cookie), None, None);
        assert_eq!(status, 200, "{run}");
        seen = run.clone();
        run["status"] == "running" && run["progress"]["done"].as_u64().unwrap_or(0) > 0
    });
    assert!(seen["progress"]["planned"].as_u64().unwrap() >= 20_000, "{seen}");

    // Cancelled through the first: the change waits for the run, wherever it goes, to stop.
    let change = serde_json::json!({ "schedule": "refresh", "cancel_run": true });
    let (status, edited, _) =
        call(&a, &front, Method::PATCH, "/exports/shared", Some(&cookie), Some(&csrf), Some(change));
    assert_eq!(status, 200, "{edited}");
    let (_, run, _) = call(&c, &front, Method::GET, &format!("/runs/{run_id}"), Some(&cookie), None, None);
    assert_eq!(run["status"], "cancelled", "{run}");
    assert!(env.stats().subscribers_received < 20_000, "the run stopped before the end");
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn a_rolling_restart_of_every_postgres_replica_while_runs_go_loses_no_run_and_stalls_none() {
    let opts = SandboxOptions { latency: Duration::from_millis(50), ..opts() };
    let env = Env::on_postgres(opts, &format!("batch_size = 100\n{}", daemon_section(2)));
    env.add_connection();
    let lists: Vec<(String, Vec<String>)> = (0..6).map(|i| (format!("roll{i}"), emails(i * 100_000, 12_000))).collect();
    for (name, members) in &lists {
        add_export(&env, name, members, "off");
    }
    let mut daemons: Vec<Daemon> = (0..3).map(|_| Daemon::start(&env)).collect();
    env.ok(&["export", "trigger", "--all"]);
    env.wait_for_subscribers(3_000, Duration::from_secs(60));
    for i in 0..3 {
        let mut old = daemons.remove(0);
        old.signal("-TERM");
        assert_eq!(old.wait_exit(Duration::from_secs(40)), Some(0), "{}", old.logs());
        daemons.push(Daemon::start(&env));
        std::thread::sleep(Duration::from_secs(1 + i));
    }
    wait_for("every run ended", Duration::from_secs(180), || {
        env.pg_i64("SELECT COUNT(*) FROM runs WHERE status = 'running'") == 0
            && env.pg_i64("SELECT COUNT(*) FROM run_requests WHERE state = 'queued'") == 0
    });
    for (name, members) in &lists {
        assert_eq!(env.members(name), sorted(members.clone()), "{name}");
    }
    assert_eq!(
        env.pg_i64("SELECT COUNT(*) FROM runs r WHERE r.id = (SELECT MAX(id) FROM runs WHERE export_id = r.export_id) AND status != 'succeeded'"),
        0,
        "every export's last run succeeded: {:#?}",
        runs(&env)
    );
    // A run a stopping replica let go was continued by another at once, not after its lease lapsed.
    let stalled = env.pg_i64(
        "SELECT COUNT(*) FROM runs t JOIN runs p ON p.export_id = t.export_id AND p.id = \
         (SELECT MAX(id) FROM runs WHERE export_id = t.export_id AND id < t.id) \
         WHERE t.trigger = 'takeover' AND t.started_at - p.finished_at > interval '5 seconds'",
    );
    assert_eq!(stalled, 0, "{:#?}", runs(&env));
    assert!(env.pg_i64("SELECT COUNT(*) FROM runs WHERE trigger = 'takeover'") >= 1, "no run was handed over");
}

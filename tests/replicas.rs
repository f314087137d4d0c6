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

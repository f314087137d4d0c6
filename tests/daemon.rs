//! End-to-end: the real `segment-exporter daemon` on a temp dir, against the sandbox.

mod common;

use std::process::{Child, Command as StdCommand, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;
use segment_exporter::sandbox::{Faults, SandboxOptions};

const DAEMON: &str = "\n[daemon]\nstatus_listen = \"127.0.0.1:0\"\ntrigger_dir = \"triggers\"\ntrigger_poll_interval = \"500ms\"\nreload_interval = \"1s\"\nshutdown_grace = \"15s\"\nrefresh_schedule = \"0 0 0 1 1 *\"\n";

fn daemon_env(opts: SandboxOptions) -> Env {
    Env::with_config(opts, DAEMON)
}

fn env_with_export(opts: SandboxOptions, members: &[String], schedule: &str) -> Env {
    let env = daemon_env(opts);
    let rows: Vec<(&str, &str)> = members.iter().map(|e| (e.as_str(), "gold")).collect();
    let csv = env.write_csv("members.csv", &rows);
    env.add_connection();
    env.ok(&["segment", "add", "Daemon list", "--source", &format!("csv:{}", csv.display())]);
    env.ok(&[
        "export",
        "add",
        "nightly",
        "--connection",
        "iterable",
        "--segment",
        "Daemon list",
        "--email-field",
        "email",
        "--schedule",
        schedule,
    ]);
    env
}

fn runs(env: &Env) -> Vec<serde_json::Value> {
    env.json(&["runs", "--limit", "100"]).as_array().unwrap().clone()
}

fn wait_for_runs(env: &Env, within: Duration, pred: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let r = runs(env);
        if pred(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "runs never matched: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_trigger_file_runs_the_export_and_the_list_ends_exact() {
    let members = emails(0, 150);
    let env = env_with_export(opts(), &members, "off");
    let daemon = Daemon::start(&env);
    let asked = chrono::Utc::now();
    env.ok(&["export", "trigger", "nightly"]);
    let r = wait_for_runs(&env, Duration::from_secs(20), |r| r.iter().any(|r| r["status"] == "succeeded"));
    assert_eq!(r[0]["trigger"], "trigger-file");
    let started: chrono::DateTime<chrono::Utc> = serde_json::from_value(r[0]["started_at"].clone()).unwrap();
    eprintln!("measured: trigger file to run start {} ms", (started - asked).num_milliseconds());
    assert_eq!(env.members("Daemon list"), sorted(members));
    assert!(!env.path("triggers/nightly").exists(), "the daemon removes the file it took");
    drop(daemon);
}

#[test]
fn a_schedule_fires_repeatedly() {
    let env = env_with_export(opts(), &emails(0, 5), "* * * * * *");
    let _daemon = Daemon::start(&env);
    let r = wait_for_runs(&env, Duration::from_secs(20), |r| {
        r.iter().filter(|r| r["trigger"] == "schedule" && r["status"] == "succeeded").count() >= 4
    });
    assert!(r.iter().all(|r| r["status"] != "failed"), "{r:?}");
}

#[test]
fn an_export_added_while_the_daemon_runs_is_picked_up() {
    let env = daemon_env(opts());
    env.add_connection();
    let daemon = Daemon::start(&env);
    let members = emails(0, 20);
    let rows: Vec<(&str, &str)> = members.iter().map(|e| (e.as_str(), "gold")).collect();
    let csv = env.write_csv("late.csv", &rows);
    env.ok(&["segment", "add", "Late", "--source", &format!("csv:{}", csv.display())]);
    env.ok(&[
        "export",
        "add",
        "late",
        "--connection",
        "iterable",
        "--segment",
        "Late",
        "--email-field",
        "email",
        "--schedule",
        "*/2 * * * * *",
    ]);
    daemon.wait_for_log("Exports changed in the store", Duration::from_secs(10));
    wait_for_runs(&env, Duration::from_secs(15), |r| {
        r.iter().any(|r| r["export_name"] == "late" && r["status"] == "succeeded")
    });
    assert_eq!(env.members("Late"), sorted(members));
}

#[test]
fn sigterm_during_a_run_exits_within_the_grace_period_and_a_restart_finishes_exact() {
    let members = emails(0, 2000);
    let opts = SandboxOptions { latency: Duration::from_millis(150), ..opts() };
    let env = env_with_export(opts, &members, "off");
    let mut daemon = Daemon::start(&env);
    env.ok(&["export", "trigger", "nightly"]);
    env.wait_for_subscribers(300, Duration::from_secs(30));
    let stopped = Instant::now();
    daemon.signal("-TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(15)), Some(0), "{}", daemon.logs());
    assert!(stopped.elapsed() < Duration::from_secs(15));
    let r = runs(&env);
    assert_eq!(r[0]["status"], "interrupted", "{r:?}");
    assert!(env.stats().subscribers_received < 2000, "the run should have been cut short");
    drop(daemon);

    let _again = Daemon::start(&env);
    env.ok(&["export", "trigger", "nightly"]);
    let r = wait_for_runs(&env, Duration::from_secs(60), |r| r[0]["status"] == "succeeded");
    assert!(r[0]["note"].as_str().unwrap_or("").contains("resumes"), "{r:?}");
    assert_eq!(env.members("Daemon list"), sorted(members));
    assert!(env.stats().subscribers_received <= 2000 + 3 * 50);
}

#[test]
fn a_bad_config_on_sighup_is_rejected_and_the_old_one_stays() {
    let members = emails(0, 10);
    let env = env_with_export(opts(), &members, "off");
    let daemon = Daemon::start(&env);
    let good = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(
        env.path("config.toml"),
        good.replace("batch_size = 50", "batch_size = 0").replace("concurrency = 3", "concurrency = 0"),
    )
    .unwrap();
    daemon.signal("-HUP");
    daemon.wait_for_log("Config reload rejected", Duration::from_secs(10));
    let logs = daemon.logs();
    assert!(logs.contains("batch_size") && logs.contains("concurrency"), "every error is listed:\n{logs}");
    assert_eq!(daemon.get("/readyz").0, 200);
    // The CLI refuses the broken file too, so trigger by hand; the daemon still runs with the old config.
    segment_exporter::daemon::write_trigger(&env.path("triggers"), "nightly").unwrap();
    daemon.wait_for_log("Run finished.", Duration::from_secs(20));
    assert_eq!(env.members("Daemon list"), sorted(members));
    // A good config is taken.
    std::fs::write(env.path("config.toml"), good).unwrap();
    daemon.signal("-HUP");
    daemon.wait_for_log("Configuration reloaded.", Duration::from_secs(10));
}

#[test]
fn the_status_endpoints_answer() {
    let env = env_with_export(opts(), &emails(0, 10), "off");
    let daemon = Daemon::start(&env);
    assert_eq!(daemon.get("/healthz"), (200, "ok\n".to_string()));
    assert_eq!(daemon.get("/readyz").0, 200);
    env.ok(&["export", "trigger", "nightly"]);
    wait_for_runs(&env, Duration::from_secs(20), |r| r.first().is_some_and(|r| r["status"] == "succeeded"));
    // The loop counts the finish just after the store records it.
    let finished = "segment_exporter_runs_total{export=\"nightly\",status=\"succeeded\"} 1";
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (code, metrics) = daemon.get("/metrics");
        assert_eq!(code, 200);
        if metrics.contains(finished) {
            break metrics;
        }
        assert!(Instant::now() < deadline, "the finished run is never counted: {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(metrics.contains("segment_exporter_members_total{export=\"nightly\",change=\"added\"} 10"), "{metrics}");
    // New members apart from re-sent ones: a first run updates nobody.
    for kind in ["updated", "already_on_list"] {
        let series = format!("segment_exporter_members_total{{export=\"nightly\",change=\"{kind}\"}} 0");
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
    assert!(
        metrics.contains("segment_exporter_iterable_requests_total{endpoint=\"/api/lists/subscribe\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("segment_exporter_seconds_since_last_success{export=\"nightly\"}"));
    assert!(!metrics.contains("@example.com"));
    let (code, status) = daemon.get("/status");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["exports"]["nightly"]["last_run"]["status"], "succeeded");
    assert_eq!(v["exports"]["nightly"]["schedule"], "off");
    assert!(v["exports"]["nightly"]["next_run"].is_null());
}

#[test]
fn triggers_during_a_run_queue_exactly_one_follow_up_run_and_the_history_says_so() {
    let members = emails(0, 2400);
    let opts = SandboxOptions { latency: Duration::from_millis(150), ..opts() };
    let env = env_with_export(opts, &members, "off");
    let daemon = Daemon::start(&env);
    env.ok(&["export", "trigger", "nightly"]);
    daemon.wait_for_log("Run started.", Duration::from_secs(20));
    // Iterable frozen, the run stays in flight through both triggers however slow the machine.
    env.hold();
    env.ok(&["export", "trigger", "nightly"]);
    daemon.wait_for_log("queued one follow-up run", Duration::from_secs(30));
    env.ok(&["export", "trigger", "nightly"]);
    daemon.wait_for_log("merged into it", Duration::from_secs(30));
    env.release();
    let r =
        wait_for_runs(&env, Duration::from_secs(60), |r| r.len() == 2 && r.iter().all(|r| r["status"] == "succeeded"));
    assert!(r[0]["note"].as_str().unwrap_or("").contains("follow-up"), "{r:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(runs(&env).len(), 2, "three triggers during one run give one follow-up, not two");
    assert_eq!(env.members("Daemon list"), sorted(members));
}

/// The daemon process's own CPU time (user plus system), from /proc/PID/stat, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces): utime is the 14th field of the
    // line, stime the 15th, counted in clock ticks.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks_per_second()
}

/// `getconf CLK_TCK`, or 100 (Linux's USER_HZ everywhere in practice) when getconf is missing.
fn clock_ticks_per_second() -> f64 {
    StdCommand::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Share of one core the daemon used over `quiet`, once it is ready and has settled.
fn idle_cpu_share(daemon: &Daemon, quiet: Duration) -> f64 {
    std::thread::sleep(Duration::from_secs(1));
    let pid = daemon.child.id();
    let (before, at) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(quiet);
    (cpu_seconds(pid) - before) / at.elapsed().as_secs_f64()
}

#[test]
fn an_idle_daemon_with_no_export_uses_well_under_one_percent_of_a_core() {
    let env = daemon_env(opts());
    let daemon = Daemon::start(&env);
    let share = idle_cpu_share(&daemon, Duration::from_secs(10));
    eprintln!("measured: idle daemon, no export: {:.3}% of a core over 10 s", share * 100.0);
    assert!(share < 0.01, "the idle daemon used {:.1}% of a core", share * 100.0);
}

#[test]
fn an_idle_daemon_with_exports_and_a_used_trigger_dir_uses_well_under_one_percent_of_a_core() {
    let env = env_with_export(opts(), &emails(0, 10), "off");
    let daemon = Daemon::start(&env);
    env.ok(&["export", "trigger", "nightly"]);
    wait_for_runs(&env, Duration::from_secs(20), |r| r.first().is_some_and(|r| r["status"] == "succeeded"));
    // A file that is not a trigger stays in the directory: scans that find it must not keep the daemon busy.
    std::fs::write(env.path("triggers/README"), "not a trigger").unwrap();
    let share = idle_cpu_share(&daemon, Duration::from_secs(10));
    eprintln!("measured: idle daemon, one export: {:.3}% of a core over 10 s", share * 100.0);
    assert!(share < 0.01, "the idle daemon used {:.1}% of a core", share * 100.0);
}

#[test]
fn a_file_in_the_trigger_dir_that_names_no_export_is_left_alone_and_warned_about_once() {
    let env = env_with_export(opts(), &emails(0, 10), "off");
    std::fs::create_dir_all(env.path("triggers")).unwrap();
    std::fs::write(env.path("triggers/notes.txt"), "keep me").unwrap();
    let daemon = Daemon::start(&env);
    env.ok(&["export", "trigger", "nightly"]);
    wait_for_runs(&env, Duration::from_secs(20), |r| r.first().is_some_and(|r| r["status"] == "succeeded"));
    // Several scans (every 500 ms) pass with the file there.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(std::fs::read_to_string(env.path("triggers/notes.txt")).unwrap(), "keep me");
    let warnings = daemon.logs().matches("not named after an export").count();
    assert_eq!(warnings, 1, "{}", daemon.logs());
    assert!(daemon.logs().contains("notes.txt"));
}

#[test]
fn a_trigger_dir_that_holds_the_store_is_refused_by_validate_and_daemon_with_78_and_the_store_is_intact() {
    let env = env_with_export(opts(), &emails(0, 10), "off");
    let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    let store_dir = env.dir.path().display().to_string();
    for trigger_dir in [store_dir.clone(), env.dir.path().parent().unwrap().display().to_string()] {
        std::fs::write(
            env.path("config.toml"),
            config.replace("trigger_dir = \"triggers\"", &format!("trigger_dir = \"{trigger_dir}\"")),
        )
        .unwrap();
        let before: Vec<_> = std::fs::read_dir(env.dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        for cmd in ["validate", "daemon"] {
            let out = env.cmd().arg(cmd).timeout(Duration::from_secs(20)).output().unwrap();
            assert_eq!(out.status.code(), Some(78), "{cmd}: {}", text(&out.stderr));
            assert!(text(&out.stderr).contains("daemon.trigger_dir"), "{}", text(&out.stderr));
        }
        let after: Vec<_> = std::fs::read_dir(env.dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(before, after, "nothing in the store's folder was removed or added");
    }
    std::fs::write(env.path("config.toml"), config).unwrap();
    assert_eq!(env.json(&["export", "list"]).as_array().unwrap().len(), 1, "the store is intact");
}

/// Starts `export run nightly` in the background.
fn spawn_cli_run(env: &Env) -> Child {
    StdCommand::new(assert_cmd::cargo::cargo_bin("segment-exporter"))
        .current_dir(env.dir.path())
        .env("SEGMENT_EXPORTER_CONFIG", env.path("config.toml"))
        .env("ITERABLE_KEY", KEY)
        .env_remove("RUST_LOG")
        .args(["export", "run", "nightly"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_child(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < deadline, "the CLI run did not end in {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_trigger_while_a_cli_run_goes_is_queued_and_runs_when_it_ends() {
    let members = emails(0, 1500);
    let opts = SandboxOptions { latency: Duration::from_millis(150), ..opts() };
    let env = env_with_export(opts, &members, "off");
    let mut cli = spawn_cli_run(&env);
    env.wait_for_subscribers(100, Duration::from_secs(30));
    // Iterable frozen, the CLI run stays in flight while the daemon starts and the trigger arrives.
    env.hold();
    let daemon = Daemon::start(&env);
    env.ok(&["export", "trigger", "nightly"]);
    daemon.wait_for_log("running in another process; queued one follow-up", Duration::from_secs(30));
    assert_eq!(runs(&env).len(), 1, "the daemon waits for the CLI run");
    env.release();
    assert_eq!(wait_child(&mut cli, Duration::from_secs(60)), Some(0));
    let r =
        wait_for_runs(&env, Duration::from_secs(30), |r| r.len() == 2 && r.iter().all(|r| r["status"] == "succeeded"));
    assert_eq!(r[0]["trigger"], "trigger-file");
    assert!(r[0]["note"].as_str().unwrap_or("").contains("follow-up"), "{r:?}");
    assert_eq!(r[1]["trigger"], "manual");
    assert_eq!(env.members("Daemon list"), sorted(members));
}

#[test]
fn a_daemon_starting_during_a_cli_run_leaves_it_running_and_it_finishes_succeeded() {
    let members = emails(0, 1000);
    let opts = SandboxOptions { latency: Duration::from_millis(150), ..opts() };
    let env = env_with_export(opts, &members, "off");
    let mut cli = spawn_cli_run(&env);
    env.wait_for_subscribers(100, Duration::from_secs(30));
    // Iterable frozen, the CLI run stays in flight while the daemon starts and sweeps.
    env.hold();
    let daemon = Daemon::start(&env);
    let during = runs(&env);
    env.release();
    assert_eq!(during[0]["status"], "running", "{}", daemon.logs());
    assert!(!daemon.logs().contains("marked interrupted"), "{}", daemon.logs());
    assert_eq!(wait_child(&mut cli, Duration::from_secs(60)), Some(0));
    let r = runs(&env);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["status"], "succeeded", "{r:?}");
    assert_eq!(env.members("Daemon list"), sorted(members));
}

#[test]
fn reading_the_history_many_times_during_cli_runs_never_makes_a_run_find_its_export_busy() {
    let env = env_with_export(opts(), &emails(0, 40), "off");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|i| {
            let (cmd, stop) = (env.cmd(), stop.clone());
            let args: &[&str] = if i % 2 == 0 { &["runs"] } else { &["export", "list"] };
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            std::thread::spawn(move || {
                let mut cmd = cmd;
                cmd.args(&args);
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let out = cmd.output().unwrap();
                    assert!(out.status.success(), "{}", text(&out.stderr));
                    n += 1;
                }
                n
            })
        })
        .collect();
    for i in 0..8 {
        let out = env.run(&["export", "run", "nightly", "--full"]);
        assert_ne!(out.status.code(), Some(75), "run {i} found its export busy: {}", text(&out.stderr));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    eprintln!("measured: {reads} history reads during 8 runs");
}

/// An export whose CLI run is in flight with its batches held at the sandbox until `env.release()`, and the given
/// shutdown grace.
fn cli_run_with_a_stuck_batch(members: &[String], grace: &str) -> (Env, Child) {
    // Slow enough (20 batches at 100 ms, 3 at a time) that the run is still sending when the hold starts.
    let env = env_with_export(SandboxOptions { latency: Duration::from_millis(100), ..opts() }, members, "off");
    let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    let config = config.replace("shutdown_grace = \"15s\"", &format!("shutdown_grace = \"{grace}\""));
    std::fs::write(env.path("config.toml"), config).unwrap();
    let cli = spawn_cli_run(&env);
    env.wait_for_subscribers(100, Duration::from_secs(30));
    env.hold();
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.stats().held == 0 {
        assert!(Instant::now() < deadline, "no batch was in flight to hold: {:?}", env.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    (env, cli)
}

fn signal(child: &Child, sig: &str) {
    assert!(StdCommand::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
}

#[test]
fn ctrl_c_stops_a_cli_run_within_the_shutdown_grace_records_it_interrupted_and_the_next_run_is_exact() {
    let members = emails(0, 1000);
    let (env, mut cli) = cli_run_with_a_stuck_batch(&members, "1s");
    let asked = Instant::now();
    signal(&cli, "-INT");
    let code = wait_child(&mut cli, Duration::from_secs(15));
    let took = asked.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(cli.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    eprintln!("measured: Ctrl-C to exit with a batch stuck in flight {} ms (grace 1 s)", took.as_millis());
    assert!(took < Duration::from_millis(1000 + 2500), "took {took:?}: {stderr}");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("shutdown_grace"), "{stderr}");
    let r = runs(&env);
    assert_eq!(r[0]["status"], "interrupted", "{r:?}");
    env.release();
    env.sandbox.set_faults(Faults { latency_ms: Some(0), ..Faults::default() });
    let report = env.json(&["export", "run", "nightly"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(env.members("Daemon list"), sorted(members));
}

#[test]
fn a_second_ctrl_c_ends_a_cli_run_at_once_with_130() {
    // A grace far longer than the test may take: only the second signal can end the run in time.
    let (env, mut cli) = cli_run_with_a_stuck_batch(&emails(0, 1000), "60s");
    signal(&cli, "-INT");
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    signal(&cli, "-INT");
    assert_eq!(wait_child(&mut cli, Duration::from_secs(30)), Some(130));
    assert!(asked.elapsed() < Duration::from_secs(30), "long before the 60 s grace was over");
    env.release();
}

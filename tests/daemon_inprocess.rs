//! The daemon built and run in this process (`Daemon::build` + `run_until`), against a real sandbox and a real
//! SQLite store, with its status listener on port 0: shutdown grace expiry, the `max_concurrent_runs` queue,
//! missed-run catch-up, and a run that panics.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures::future::BoxFuture;
use segment_exporter::config::Config;
use segment_exporter::daemon::{Daemon, Runner};
use segment_exporter::sandbox::{Faults, SandboxOptions};
use segment_exporter::store::{Run, RunStatus, Store};
use segment_exporter::sync::{Engine, Progress, RunGuard, RunOptions, RunReport, SyncError};
use tokio_util::sync::CancellationToken;

/// An env whose exports `names` each send their own CSV segment of `members` (with a `-NAME` suffix), with the
/// key in a file (this process's environment is shared by every test) and `daemon` settings appended.
fn setup(opts: SandboxOptions, names: &[&str], members: usize, schedule: &str, daemon: &str) -> Env {
    let env = Env::with_sandbox(opts);
    let key = env.path("iterable.key");
    std::fs::write(&key, KEY).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let key = key.display().to_string();
    let base = ["connection", "add", "iterable", "--api-key-file", &key, "--base-url", &env.base_url];
    env.ok(&[&base[..], &["--accept-data-privacy"]].concat());
    for name in names {
        let rows: Vec<String> = emails(0, members).iter().map(|e| e.replace('@', &format!("-{name}@"))).collect();
        let rows: Vec<(&str, &str)> = rows.iter().map(|e| (e.as_str(), "gold")).collect();
        let csv = env.write_csv(&format!("{name}.csv"), &rows);
        let segment = format!("List {name}");
        env.ok(&["segment", "add", &segment, "--source", &format!("csv:{}", csv.display())]);
        env.ok(&[
            "export",
            "add",
            name,
            "--connection",
            "iterable",
            "--segment",
            &segment,
            "--email-field",
            "email",
            "--schedule",
            schedule,
        ]);
    }
    let mut config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    config.push_str(&format!(
        "\n[daemon]\nstatus_listen = \"off\"\ntrigger_dir = \"{}\"\ntrigger_poll_interval = \"500ms\"\n\
         reload_interval = \"1s\"\nrefresh_schedule = \"0 0 0 1 1 *\"\n{daemon}\n",
        env.path("triggers").display()
    ));
    std::fs::write(env.path("config.toml"), config).unwrap();
    env
}

fn members_of(name: &str, n: usize) -> Vec<String> {
    sorted(emails(0, n).iter().map(|e| e.replace('@', &format!("-{name}@"))).collect())
}

fn config(env: &Env) -> Config {
    Config::load(Some(&env.path("config.toml"))).unwrap().0
}

/// Builds the daemon with a status listener on port 0 and checks that it answers.
async fn build(env: &Env) -> Daemon {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daemon = Daemon::build(config(env), Some(env.path("config.toml")), Some(listener)).await.unwrap();
    assert_ne!(daemon.status_address().unwrap().port(), 0);
    daemon
}

async fn runs(env: &Env) -> Vec<Run> {
    let store = Store::open(&env.path("store.db")).await.unwrap();
    let mut runs = store.runs(None, 100).await.unwrap();
    runs.reverse();
    runs
}

async fn wait_for_runs(env: &Env, within: Duration, pred: impl Fn(&[Run]) -> bool) -> Vec<Run> {
    let deadline = Instant::now() + within;
    loop {
        let r = runs(env).await;
        if pred(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "runs never matched: {r:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `daemon` on a task; returns the task and the token that asks it to stop.
fn spawn(daemon: Daemon) -> (tokio::task::JoinHandle<()>, CancellationToken) {
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    (tokio::spawn(async move { daemon.run_until(shutdown).await.unwrap() }), stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_still_going_when_the_shutdown_grace_ends_is_stopped_and_recorded_interrupted_then_resumed_exact() {
    // Slow enough (12 batches at 100 ms, 3 at a time) that the run is still sending when the hold starts.
    let sandbox = SandboxOptions { latency: Duration::from_millis(100), ..opts() };
    let env = tokio::task::spawn_blocking(move || setup(sandbox, &["slow"], 600, "off", "shutdown_grace = \"1s\""))
        .await
        .unwrap();
    let daemon = build(&env).await;
    let handle = daemon.handle();
    let (task, stop) = spawn(daemon);
    handle.run("slow").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.stats().subscribers_received < 100 {
        assert!(Instant::now() < deadline, "the run never got going: {:?}", env.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // From now on every request is held, far longer than the grace period.
    env.hold();
    while env.stats().held == 0 {
        assert!(Instant::now() < deadline, "no batch was in flight to hold: {:?}", env.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let asked = Instant::now();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("run_until returned").unwrap();
    let took = asked.elapsed();
    eprintln!("measured: shutdown with a batch stuck in flight took {} ms (grace 1 s)", took.as_millis());
    assert!(took < Duration::from_millis(1000 + 2500), "waited {took:?}, more than the grace period and a margin");
    let r = runs(&env).await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, RunStatus::Interrupted, "{r:#?}");
    assert!(r[0].error.as_deref().unwrap_or("").contains("shutdown_grace"), "{r:#?}");

    env.release();
    env.sandbox.set_faults(Faults { latency_ms: Some(0), ..Faults::default() });
    let daemon = build(&env).await;
    let handle = daemon.handle();
    let (task, stop) = spawn(daemon);
    handle.run("slow").await;
    let r = wait_for_runs(&env, Duration::from_secs(60), |r| r.len() == 2 && r[1].status != RunStatus::Running).await;
    assert_eq!(r[1].status, RunStatus::Succeeded, "{r:#?}");
    assert!(r[1].note.as_deref().unwrap_or("").contains("resumes"), "{r:#?}");
    let env = Arc::new(env);
    let e = env.clone();
    let members = tokio::task::spawn_blocking(move || e.members("List slow")).await.unwrap();
    assert_eq!(members, members_of("slow", 600));
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_concurrent_runs_1_three_exports_triggered_at_once_run_one_after_another_and_all_succeed() {
    let opts = SandboxOptions { latency: Duration::from_millis(60), ..opts() };
    let names = ["one", "two", "three"];
    let env =
        tokio::task::spawn_blocking(move || setup(opts, &names, 200, "off", "max_concurrent_runs = 1")).await.unwrap();
    let daemon = build(&env).await;
    let handle = daemon.handle();
    let (task, stop) = spawn(daemon);
    for name in names {
        handle.run(name).await;
    }
    let r = wait_for_runs(&env, Duration::from_secs(60), |r| {
        r.len() == 3 && r.iter().all(|r| r.status != RunStatus::Running)
    })
    .await;
    assert!(r.iter().all(|r| r.status == RunStatus::Succeeded), "{r:#?}");
    let mut spans: Vec<_> = r.iter().map(|r| (r.started_at, r.finished_at.unwrap(), r.export_name.clone())).collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "{} and {} overlapped: {spans:?}", pair[0].2, pair[1].2);
    }
    let env = Arc::new(env);
    for name in names {
        let e = env.clone();
        let members = tokio::task::spawn_blocking(move || e.members(&format!("List {name}"))).await.unwrap();
        assert_eq!(members, members_of(name, 200));
    }
    stop.cancel();
    task.await.unwrap();
}

/// Makes the export look as if it was added two days ago, so its daily 03:00 run was due while no daemon ran.
async fn backdate_exports(env: &Env) {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(env.path("store.db")).connect().await.unwrap();
    sqlx::query("UPDATE exports SET created_at = ?")
        .bind(chrono::Utc::now() - chrono::Duration::days(2))
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_run_missed_while_the_daemon_was_down_runs_once_at_start() {
    let env = tokio::task::spawn_blocking(|| {
        setup(opts(), &["daily"], 20, "0 0 3 * * *", "run_missed_on_start = true\ntime_zone = \"UTC\"")
    })
    .await
    .unwrap();
    backdate_exports(&env).await;
    let (task, stop) = spawn(build(&env).await);
    let r = wait_for_runs(&env, Duration::from_secs(20), |r| r.iter().any(|r| r.status == RunStatus::Succeeded)).await;
    assert_eq!(r[0].trigger, "missed-schedule");
    // Once, not at every start-up check or reload.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(runs(&env).await.len(), 1);
    stop.cancel();
    task.await.unwrap();
    // Caught up: a restart finds nothing missed.
    let (task, stop) = spawn(build(&env).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runs(&env).await.len(), 1);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_run_missed_on_start_off_a_missed_scheduled_run_is_not_run_at_start() {
    let env = tokio::task::spawn_blocking(|| {
        setup(opts(), &["daily"], 20, "0 0 3 * * *", "run_missed_on_start = false\ntime_zone = \"UTC\"")
    })
    .await
    .unwrap();
    backdate_exports(&env).await;
    let (task, stop) = spawn(build(&env).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(runs(&env).await.is_empty());
    stop.cancel();
    task.await.unwrap();
}

/// Records a run, then panics: the first time only; later runs go to the engine.
struct PanicOnce {
    store: Store,
    engine: Engine,
    panicked: AtomicBool,
    /// Fired by the test once a second request is queued behind the run that will panic.
    go: Arc<tokio::sync::Notify>,
}

impl Runner for PanicOnce {
    fn run_taken<'a>(
        &'a self,
        guard: RunGuard,
        opts: &'a RunOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunReport, SyncError>> {
        Box::pin(async move {
            if self.panicked.swap(true, Ordering::SeqCst) {
                return self.engine.run_taken(guard, opts, progress, cancel).await;
            }
            let export_id = guard.export_id();
            let run_id = self.store.start_run(export_id, &opts.trigger, false, None).await?;
            progress.set_run_id(run_id);
            // Until the test has queued a second request behind this run.
            let _ = tokio::time::timeout(Duration::from_secs(30), self.go.notified()).await;
            panic!("injected failure in the run of export #{export_id}");
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_panics_is_recorded_failed_frees_its_export_and_its_follow_up_runs() {
    let env = tokio::task::spawn_blocking(|| setup(opts(), &["fragile"], 30, "off", "shutdown_grace = \"30s\""))
        .await
        .unwrap();
    let config = Arc::new(config(&env));
    let store = Store::open(&config.store.path).await.unwrap();
    let go = Arc::new(tokio::sync::Notify::new());
    let engine = Engine::new(store.clone(), config);
    let runner = PanicOnce { store, engine, panicked: AtomicBool::new(false), go: go.clone() };
    let daemon = build(&env).await.with_runner(Arc::new(runner));
    let handle = daemon.handle();
    let (task, stop) = spawn(daemon);
    // The daemon takes its commands in order: the second request meets the first run in flight.
    handle.run("fragile").await;
    handle.run("fragile").await;
    go.notify_one();
    let r = wait_for_runs(&env, Duration::from_secs(30), |r| {
        r.len() == 2 && r.iter().all(|r| r.status != RunStatus::Running)
    })
    .await;
    assert_eq!(r[0].status, RunStatus::Failed, "{r:#?}");
    assert!(r[0].error.as_deref().unwrap_or("").contains("injected failure in the run of export #"), "{r:#?}");
    assert_eq!(r[1].status, RunStatus::Succeeded, "the queued follow-up runs: {r:#?}");
    assert!(r[1].note.as_deref().unwrap_or("").contains("follow-up"), "{r:#?}");
    // Nothing is left running, so the stop does not wait out the 30 s grace.
    let asked = Instant::now();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("run_until returned").unwrap();
    assert!(asked.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_a_run_that_another_process_marked_changes_nothing_and_says_so() {
    let env = tokio::task::spawn_blocking(|| setup(opts(), &["marked"], 5, "off", "")).await.unwrap();
    let store = Store::open(&env.path("store.db")).await.unwrap();
    let export = store.export("marked").await.unwrap();
    let run_id = store.start_run(export.id, "manual", false, None).await.unwrap();
    // What a sweep elsewhere does to a run it believes orphaned.
    assert_eq!(store.interrupt_orphaned_runs(export.id).await.unwrap(), vec![run_id]);
    assert!(!store.finish_run(run_id, RunStatus::Succeeded, None).await.unwrap());
    assert_eq!(store.run(run_id).await.unwrap().status, RunStatus::Interrupted);
    // A run of another owner (another process) is not this process's to finish either.
    let other = store.start_run(export.id, "manual", false, None).await.unwrap();
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(env.path("store.db")).connect().await.unwrap();
    sqlx::query("UPDATE runs SET owner = 'pid 1 token 0' WHERE id = ?").bind(other).execute(&mut conn).await.unwrap();
    assert!(!store.finish_run(other, RunStatus::Succeeded, None).await.unwrap());
    assert_eq!(store.run(other).await.unwrap().status, RunStatus::Running);
    sqlx::query("UPDATE runs SET owner = ? WHERE id = ?")
        .bind(segment_exporter::store::process_owner())
        .bind(other)
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(store.finish_run(other, RunStatus::Succeeded, None).await.unwrap());
    assert_eq!(store.run(other).await.unwrap().status, RunStatus::Succeeded);
}

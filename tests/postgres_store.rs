//! The store on PostgreSQL as an operator meets it: moving a SQLite store there (`store copy`), and the refusals
//! that keep replicas of different versions or keys from touching it. They need the server at `TEST_POSTGRES_URL`
//! and are marked ignored; `.ci/run` runs them.

mod common;

use std::time::Duration;

use common::daemon::Daemon;
use common::*;

const DAEMON: &str =
    "\n[daemon]\nstatus_listen = \"127.0.0.1:0\"\ntrigger_dir = \"triggers\"\nrefresh_schedule = \"0 0 0 1 1 *\"\n";

/// A config naming the PostgreSQL database `url` as the store, with the master key at `key`.
fn postgres_config(env: &Env, url: &str, key: &std::path::Path) -> std::path::PathBuf {
    let path = env.path("postgres.toml");
    std::fs::write(&path, format!("[store]\nurl = \"{url}\"\nmaster_key_file = \"{}\"\n{DAEMON}", key.display()))
        .unwrap();
    path
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn store_copy_moves_a_sqlite_store_into_postgres_whole_and_the_next_run_there_sends_nothing() {
    let env = Env::with_config(opts(), DAEMON);
    // A connection whose key is sealed in the store, a segment whose database password is sealed, accounts with a
    // token and a password, a session, run history and an audit trail.
    env.cmd()
        .args([
            "connection",
            "add",
            "iterable",
            "--api-key-stdin",
            "--base-url",
            &env.base_url,
            "--accept-data-privacy",
        ])
        .write_stdin(KEY)
        .assert()
        .success();
    let members = emails(0, 300);
    let rows: Vec<(&str, &str)> = members.iter().map(|e| (e.as_str(), "gold")).collect();
    let csv = env.write_csv("members.csv", &rows);
    env.ok(&["segment", "add", "Moved", "--source", &format!("csv:{}", csv.display())]);
    let server = url::Url::parse(&common::pg::server()).unwrap();
    let with_password = format!(
        "postgres://{}:not-really-needed@{}:{}/{}",
        server.username(),
        server.host_str().unwrap(),
        server.port().unwrap_or(5432),
        server.path().trim_start_matches('/')
    );
    env.ok(&["segment", "add", "Sealed", "--source", &with_password, "--query", "SELECT 'x@example.com' AS email"]);
    env.ok(&["export", "add", "moved", "--connection", "iterable", "--segment", "Moved", "--email-field", "email"]);
    env.ok(&["export", "run", "moved"]);
    env.ok(&["export", "run", "moved"]);
    let token = env.json(&["user", "add", "ann", "--role", "admin"])["token"].as_str().unwrap().to_string();
    env.cmd()
        .args(["user", "password", "ann", "--password-stdin"])
        .write_stdin("correct horse battery\n")
        .assert()
        .success();
    let sqlite_daemon = Daemon::start(&env);
    let cookie = block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/session", sqlite_daemon.status))
            .header("Origin", &sqlite_daemon.status)
            .json(&serde_json::json!({ "user": "ann", "password": "correct horse battery" }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string()
    });
    drop(sqlite_daemon);
    let runs_before = env.json(&["runs"]);
    let audit_before = env.json(&["audit", "--limit", "1000"]).as_array().unwrap().len();

    let target = common::pg::Database::new();
    let copied = env.json(&["store", "copy", "--to", &target.url]);
    assert_eq!(copied["tables"]["members"], 300, "{copied}");
    assert_eq!(copied["exports_checked"], 1, "{copied}");
    assert!(copied["tables"]["sessions"].as_i64().unwrap() >= 1, "{copied}");
    let again = env.run(&["--json", "store", "copy", "--to", &target.url]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stdout).contains("not empty"), "{}", text(&again.stdout));

    // From PostgreSQL, with the same master key: everything is there and readable.
    let config = postgres_config(&env, &target.url, &env.path("store.db.key"));
    let on_pg = |args: &[&str]| {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = env.cmd().env("SEGMENT_EXPORTER_CONFIG", &config).args(&all).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(on_pg(&["runs"]), runs_before, "the run history, ids and all");
    assert!(on_pg(&["audit", "--limit", "1000"]).as_array().unwrap().len() > audit_before, "the audit (and the copy)");
    assert!(on_pg(&["connection", "show", "iterable"])["api_key"]
        .as_str()
        .unwrap()
        .starts_with("stored in the store, encrypted"));
    assert_eq!(on_pg(&["segment", "preview", "Sealed"])[0]["email"], "x@example.com", "the sealed password opens");
    let requests_before = env.stats().requests.values().sum::<u64>();
    let report = on_pg(&["export", "run", "moved"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["requests"], 0, "the next run from the new store sends nothing that did not change");
    assert_eq!(env.stats().requests.values().sum::<u64>(), requests_before);
    assert!(report["run_id"].as_i64().unwrap() > runs_before[0]["id"].as_i64().unwrap(), "ids go on, never reused");

    // The token and the session work against a daemon on the new store.
    std::fs::copy(&config, env.path("config.toml")).unwrap();
    let pg_daemon = Daemon::start(&env);
    block_on(async {
        let client = reqwest::Client::new();
        let me = client.get(format!("{}/api/v1/me", pg_daemon.status)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(me.status(), 200);
        let me = client.get(format!("{}/api/v1/me", pg_daemon.status)).header("Cookie", &cookie).send().await.unwrap();
        assert_eq!(me.status(), 200, "the session signed in on the SQLite store");
    });
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn a_postgres_store_of_another_schema_version_is_refused_with_78_naming_both_and_a_running_daemon_stops_taking_work() {
    let env = Env::on_postgres(opts(), DAEMON);
    env.add_connection();
    let members = emails(0, 20);
    let rows: Vec<(&str, &str)> = members.iter().map(|e| (e.as_str(), "gold")).collect();
    let csv = env.write_csv("members.csv", &rows);
    env.ok(&["segment", "add", "Versions", "--source", &format!("csv:{}", csv.display())]);
    env.ok(&[
        "export",
        "add",
        "versions",
        "--connection",
        "iterable",
        "--segment",
        "Versions",
        "--email-field",
        "email",
    ]);
    let known = env.pg_i64("SELECT MAX(version) FROM _sqlx_migrations");
    let daemon = Daemon::start(&env);

    // Another release migrates the store: the running daemon finishes nothing new, and says why.
    let newer = known + 1;
    env.pg_sql(&[&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ({newer}, 'from a newer release', TRUE, '\\x00', 0)"
    )]);
    daemon.wait_for_log("newer than this daemon knows", Duration::from_secs(20));
    // (The CLI refuses the store now; the daemon's trigger folder still takes a request.)
    std::fs::create_dir_all(env.path("triggers")).unwrap();
    std::fs::write(env.path("triggers/versions"), "").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(!env.path("triggers/versions").exists(), "the daemon took the trigger file");
    assert_eq!(env.pg_i64("SELECT COUNT(*) FROM runs"), 0, "a paused daemon took the run");
    let (_, status) = daemon.get("/status");
    assert!(status.contains("newer than this daemon knows"), "{status}");
    drop(daemon);

    let out = env.run(&["export", "list"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(&newer.to_string()) && err.contains(&known.to_string()), "{err}");
    assert!(err.contains("newer release"), "{err}");

    // A store that lacks a migration this version needs: `store migrate` is what to run.
    env.pg_sql(&[&format!("DELETE FROM _sqlx_migrations WHERE version IN ({newer}, {known})")]);
    let out = env.run(&["daemon"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("store migrate"), "{}", text(&out.stderr));
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn a_postgres_replica_whose_master_key_is_not_the_stores_refuses_to_start_with_78() {
    let env = Env::on_postgres(opts(), DAEMON);
    env.add_connection();
    std::fs::write(env.path("master.key"), common::pg::random_hex_key()).unwrap();
    let out = env.run(&["daemon"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is not the store's"), "{}", text(&out.stderr));
    std::fs::remove_file(env.path("master.key")).unwrap();
    let out = env.run(&["export", "list"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("needs the store's master key"), "{}", text(&out.stderr));
}

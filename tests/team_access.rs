//! Export users and a connection's export user, from the CLI and in the daemon.

mod common;

use std::time::{Duration, Instant};

use common::*;
use segment_exporter::access::ops::{self, Caller};
use segment_exporter::access::Actor;
use segment_exporter::config::Config;
use segment_exporter::daemon::Daemon;
use segment_exporter::store::{RunStatus, Store};

fn setup(schedule: &str) -> Env {
    let env = Env::new();
    let key = env.path("iterable.key");
    std::fs::write(&key, KEY).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let key = key.display().to_string();
    let base = ["connection", "add", "iterable", "--api-key-file", &key, "--base-url", &env.base_url];
    env.ok(&[&base[..], &["--accept-data-privacy", "--usable-by", "contributors"]].concat());
    let csv = env.write_csv("people.csv", &[("a@example.com", "gold"), ("b@example.com", "silver")]);
    env.ok(&["segment", "add", "vip", "--source", &format!("csv:{}", csv.display())]);
    let add = ["export", "add", "exp", "--connection", "iterable", "--segment", "vip", "--email-field", "email"];
    env.ok(&[&add[..], &["--schedule", schedule]].concat());
    env
}

#[test]
fn export_users_are_added_and_removed_from_the_cli_and_each_change_is_audited() {
    let env = setup("off");
    env.ok(&["user", "add", "carl", "--role", "contributor"]);
    env.ok(&["user", "add", "dora", "--role", "contributor"]);
    let v = env.json(&["export", "users", "exp", "--add", "carl", "--add", "dora"]);
    assert_eq!(v["users"], serde_json::json!(["carl", "dora"]));
    let v = env.json(&["export", "users", "exp", "--remove", "dora"]);
    assert_eq!(v["users"], serde_json::json!(["carl"]));
    let again = env.run(&["export", "users", "exp", "--remove", "dora"]);
    assert!(text(&again.stderr).contains("'dora' is not an export user of export 'exp'"), "{}", text(&again.stderr));
    let unknown = env.run(&["export", "users", "exp", "--add", "zed"]);
    assert!(text(&unknown.stderr).contains("user 'zed' does not exist"), "{}", text(&unknown.stderr));
    env.ok(&["user", "remove", "carl"]);
    assert_eq!(env.json(&["export", "users", "exp"])["users"], serde_json::json!([]));
    let audit = env.json(&["audit"]);
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"export.users.add") && actions.contains(&"export.users.remove"), "{actions:?}");
}

async fn backdate_exports(env: &Env) {
    let store = Store::open(&env.path("store.db")).await.unwrap();
    sqlx::query("UPDATE exports SET created_at = ?")
        .bind(chrono::Utc::now() - chrono::Duration::days(2))
        .execute(store.pool())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_run_refuses_when_the_connections_export_user_is_no_longer_an_admin_and_says_who_must_act() {
    let env = tokio::task::spawn_blocking(|| {
        let env = setup("0 0 3 * * *");
        env.ok(&["user", "add", "ann", "--role", "admin"]);
        env
    })
    .await
    .unwrap();
    let config_text = std::fs::read_to_string(env.path("config.toml")).unwrap()
        + &format!(
            "\n[daemon]\nstatus_listen = \"off\"\ntrigger_dir = \"{}\"\nrun_missed_on_start = true\ntime_zone = \"UTC\"\n",
            env.path("triggers").display()
        );
    std::fs::write(env.path("config.toml"), config_text).unwrap();
    let config = Config::load(Some(&env.path("config.toml"))).unwrap().0;
    let store = Store::open(&env.path("store.db")).await.unwrap();
    let ann = Actor::User(store.user("ann").await.unwrap());
    let caller = Caller { actor: &ann, origin: "test" };
    ops::become_connection_export_user(&store, &config, &caller, "iterable").await.unwrap();
    store.set_user_role("ann", segment_exporter::store::Role::Contributor).await.unwrap();
    backdate_exports(&env).await;

    let daemon = Daemon::build(config, Some(env.path("config.toml")), None).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(daemon.run_until(stop.clone().cancelled_owned()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let run = loop {
        if let Some(r) = store.runs(Some("exp"), 1).await.unwrap().into_iter().next() {
            break r;
        }
        assert!(Instant::now() < deadline, "no run was recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Refused, "{run:#?}");
    let error = run.error.unwrap_or_default();
    assert!(error.contains("on behalf of 'ann', who is no longer an administrator"), "{error}");
    assert!(error.contains("connection export-user iterable"), "{error}");
    let lists = tokio::task::spawn_blocking(move || env.sandbox_lists()).await.unwrap();
    assert!(lists.is_empty(), "nothing was sent to Iterable: {lists:?}");
}

#[test]
fn validate_warns_of_a_connection_whose_export_user_was_removed_until_an_admin_takes_it_over() {
    let env = setup("off");
    assert_eq!(env.json(&["validate"])["warnings"], serde_json::json!([]), "the CLI's operator is a fine export user");
    env.ok(&["user", "add", "ann", "--role", "admin"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = Config::load(Some(&env.path("config.toml"))).unwrap().0;
        let store = Store::open(&env.path("store.db")).await.unwrap();
        let ann = Actor::User(store.user("ann").await.unwrap());
        ops::become_connection_export_user(&store, &config, &Caller { actor: &ann, origin: "test" }, "iterable")
            .await
            .unwrap();
    });
    env.ok(&["user", "remove", "ann"]);
    let warnings = env.json(&["validate"])["warnings"].to_string();
    assert!(warnings.contains("on behalf of 'ann', whose account was removed"), "{warnings}");
    env.ok(&["connection", "export-user", "iterable"]);
    assert_eq!(env.json(&["validate"])["warnings"], serde_json::json!([]));
}

#[test]
fn connections_made_from_the_cli_run_on_behalf_of_the_local_operator_who_can_take_one_back() {
    let env = setup("off");
    let out = env.cmd().env("USER", "tess").args(["connection", "export-user", "iterable"]).output().unwrap();
    assert!(text(&out.stdout).contains("on behalf of local:tess"), "{}", text(&out.stdout));
    let shown = env.json(&["connection", "show", "iterable"]);
    assert_eq!((shown["export_user"].as_str(), shown["export_user_problem"].is_null()), (Some("local:tess"), true));
    let missing = env.run(&["connection", "export-user", "nope"]);
    assert!(text(&missing.stderr).contains("connection 'nope' does not exist"), "{}", text(&missing.stderr));
}

//! The HTTP API under /api/v1, served by the daemon built in this process against the sandbox: the permission
//! matrix of every endpoint built so far, throttled authentication, and the seed's team flow end to end.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use segment_exporter::config::Config;
use segment_exporter::daemon::Daemon;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The accounts of the matrix, in its column order.
const WHO: [&str; 5] = ["no token", "revoked token", "contributor not export user", "contributor export user", "admin"];

struct Team {
    env: Env,
    base: String,
    /// Tokens in `WHO` order (None: no token).
    tokens: Vec<Option<String>>,
    /// Rotated-away tokens of three accounts, used in turn as "revoked token", so that the matrix stays within
    /// the per-account allowance of failed authentications.
    revoked: Vec<String>,
    revoked_next: std::sync::atomic::AtomicUsize,
    csv: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn token_of(v: &Value) -> String {
    v["token"].as_str().unwrap().to_string()
}

/// Connections `open` (usable by contributors) and `closed` (admins only), a 40-member segment `vip`, accounts
/// ann (admin), carl and dora (contributors), rex (whose first token was rotated away); the daemon serving.
async fn team() -> Team {
    let (env, tokens, csv, revoked) = tokio::task::spawn_blocking(|| {
        let env = Env::new();
        let key = env.path("iterable.key");
        std::fs::write(&key, KEY).unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let key = key.display().to_string();
        for (name, usable_by) in [("open", "contributors"), ("closed", "admins")] {
            let base = ["connection", "add", name, "--api-key-file", &key, "--base-url", &env.base_url];
            env.ok(&[&base[..], &["--accept-data-privacy", "--usable-by", usable_by]].concat());
        }
        let rows: Vec<String> = emails(0, 40);
        let rows: Vec<(&str, &str)> = rows.iter().map(|e| (e.as_str(), "gold")).collect();
        let csv = env.write_csv("vip.csv", &rows).display().to_string();
        // A list is managed by one export per connection: each export of the matrix sends its own segment.
        for segment in ["vip", "s-2", "s-3", "s-4", "c-4"] {
            env.ok(&["segment", "add", segment, "--source", &format!("csv:{csv}")]);
        }
        let mut revoked = Vec::new();
        for name in ["rex", "rex2", "rex3"] {
            revoked.push(token_of(&env.json(&["user", "add", name, "--role", "contributor"])));
            env.ok(&["user", "token", name, "--rotate"]);
        }
        let dora = token_of(&env.json(&["user", "add", "dora", "--role", "contributor"]));
        let carl = token_of(&env.json(&["user", "add", "carl", "--role", "contributor"]));
        let ann = token_of(&env.json(&["user", "add", "ann", "--role", "admin"]));
        (env, vec![None, Some(revoked[0].clone()), Some(dora), Some(carl), Some(ann)], csv, revoked)
    })
    .await
    .unwrap();
    let mut config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    config.push_str(&format!(
        "\n[daemon]\nstatus_listen = \"off\"\ntrigger_dir = \"{}\"\nrefresh_schedule = \"0 0 0 1 1 *\"\n",
        env.path("triggers").display()
    ));
    std::fs::write(env.path("config.toml"), config).unwrap();
    let config = Config::load(Some(&env.path("config.toml"))).unwrap().0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daemon = Daemon::build(config, Some(env.path("config.toml")), Some(listener)).await.unwrap();
    let base = format!("http://{}/api/v1", daemon.status_address().unwrap());
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move { daemon.run_until(shutdown).await.unwrap() });
    Team { env, base, tokens, csv, revoked, revoked_next: Default::default(), stop, task }
}

impl Team {
    async fn call(&self, who: usize, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value, String) {
        let token = match who {
            1 => {
                let turn = self.revoked_next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some(self.revoked[turn % self.revoked.len()].clone())
            }
            _ => self.tokens[who].clone(),
        };
        self.call_with(token.as_deref(), method, path, body).await
    }

    async fn call_with(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, String) {
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null), text)
    }

    /// No body holds the Iterable key or any token; contributors' bodies hold no source path or key file.
    fn assert_no_secret(&self, who: usize, what: &str, body: &str) {
        assert!(!body.contains(KEY), "{what} by {}: the API key leaked: {body}", WHO[who]);
        for t in self.tokens.iter().flatten().chain(&self.revoked) {
            let secret = t.splitn(3, '_').nth(2).unwrap();
            assert!(!body.contains(secret), "{what} by {}: a token leaked: {body}", WHO[who]);
        }
        if who < 4 {
            for hidden in [self.csv.as_str(), "iterable.key", "api_key"] {
                assert!(!body.contains(hidden), "{what} by {}: '{hidden}' shown: {body}", WHO[who]);
            }
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// A request body made for the caller of `WHO`'s index.
type Body = fn(usize) -> Value;

fn export_body(name: &str, connection: &str) -> Value {
    export_of(name, connection, "vip")
}

fn export_of(name: &str, connection: &str, segment: &str) -> Value {
    json!({ "name": name, "connection": connection, "segments": [segment], "email_field": "email", "schedule": "off" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_each_kind_of_caller_with_the_expected_status_and_no_secret() {
    let t = team().await;
    let (status, _, _) = t.call(3, Method::POST, "/exports", Some(export_body("carls", "open"))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, run, _) = t.call(4, Method::POST, "/exports/carls/runs", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let run_id = run["run_id"].as_i64().expect("the run id");

    use StatusCode as S;
    let (u, nf, fb) = (S::UNAUTHORIZED, S::NOT_FOUND, S::FORBIDDEN);
    let runs_path = format!("/runs/{run_id}");
    let cases: Vec<(Method, String, Option<Body>, [StatusCode; 5])> = vec![
        (Method::GET, "/me".into(), None, [u, u, S::OK, S::OK, S::OK]),
        (Method::GET, "/connections".into(), None, [u, u, S::OK, S::OK, S::OK]),
        (Method::GET, "/connections/open".into(), None, [u, u, S::OK, S::OK, S::OK]),
        (Method::GET, "/connections/closed".into(), None, [u, u, nf, nf, S::OK]),
        (Method::GET, "/connections/missing".into(), None, [u, u, nf, nf, nf]),
        (Method::POST, "/connections/open/export-user".into(), None, [u, u, fb, fb, S::OK]),
        (Method::POST, "/connections/closed/export-user".into(), None, [u, u, nf, nf, S::OK]),
        (Method::GET, "/exports".into(), None, [u, u, S::OK, S::OK, S::OK]),
        (Method::GET, "/exports/carls".into(), None, [u, u, nf, S::OK, S::OK]),
        (Method::GET, "/exports/carls/users".into(), None, [u, u, nf, S::OK, S::OK]),
        (
            Method::POST,
            "/exports".into(),
            Some(|who| export_of(&format!("open-{who}"), "open", &format!("s-{who}"))),
            [u, u, S::CREATED, S::CREATED, S::CREATED],
        ),
        (
            Method::POST,
            "/exports".into(),
            Some(|who| export_of(&format!("closed-{who}"), "closed", &format!("c-{who}"))),
            [u, u, nf, nf, S::CREATED],
        ),
        (
            Method::POST,
            "/exports".into(),
            Some(|_| export_body("carls", "open")),
            [u, u, S::CONFLICT, S::CONFLICT, S::CONFLICT],
        ),
        (
            Method::POST,
            "/exports".into(),
            Some(
                |who| json!({ "name": format!("bad-{who}"), "connection": "open", "segments": ["vip"], "email_field": "nope" }),
            ),
            [u, u, S::UNPROCESSABLE_ENTITY, S::UNPROCESSABLE_ENTITY, S::UNPROCESSABLE_ENTITY],
        ),
        (Method::POST, "/exports/carls/runs".into(), None, [u, u, nf, S::ACCEPTED, S::ACCEPTED]),
        (Method::GET, "/runs?export=carls".into(), None, [u, u, nf, S::OK, S::OK]),
        (Method::GET, runs_path.clone(), None, [u, u, nf, S::OK, S::OK]),
        (Method::GET, "/runs/999999".into(), None, [u, u, nf, nf, nf]),
        (Method::GET, "/audit".into(), None, [u, u, fb, fb, S::OK]),
        (Method::GET, "/segments".into(), None, [u, u, S::OK, S::OK, S::OK]),
        // rex (whose old token is the revoked one) is added and removed: no caller of the matrix changes rights.
        (Method::POST, "/exports/carls/users".into(), Some(|_| json!({ "user": "rex" })), [u, u, nf, S::OK, S::OK]),
        (Method::POST, "/exports/carls/users".into(), Some(|_| json!({ "user": "nobody" })), [u, u, nf, nf, nf]),
        (Method::DELETE, "/exports/carls/users/rex".into(), None, [u, u, nf, S::OK, S::UNPROCESSABLE_ENTITY]),
        (Method::GET, "/nowhere".into(), None, [nf, nf, nf, nf, nf]),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, expected) in &cases {
        for (who, want) in expected.iter().enumerate() {
            let (got, json, text) = t.call(who, method.clone(), path, body.map(|b| b(who))).await;
            t.assert_no_secret(who, &format!("{method} {path}"), &text);
            if got != *want {
                wrong.push(format!("{method} {path} by {}: {got}, expected {want}: {text}", WHO[who]));
            }
            if !got.is_success() {
                assert!(json["error"]["kind"].is_string() && json["error"]["message"].is_string(), "{text}");
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Lists show only what the caller may see: segments' names to all, their sources to admins.
    let (_, segments, _) = t.call(3, Method::GET, "/segments", None).await;
    assert_eq!(segments[0], json!({ "name": "c-4", "created_at": segments[0]["created_at"] }));
    let (_, segments, _) = t.call(4, Method::GET, "/segments", None).await;
    assert!(segments[0]["source"].as_str().unwrap().ends_with("vip.csv"), "{segments}");
    let (_, conns, _) = t.call(2, Method::GET, "/connections", None).await;
    assert_eq!(conns.as_array().unwrap().iter().map(|c| c["name"].clone()).collect::<Vec<_>>(), vec![json!("open")]);
    let (_, exports, _) = t.call(2, Method::GET, "/exports", None).await;
    let names: Vec<&str> = exports.as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["open-2"], "dora sees her own export only");
    let (_, hidden, _) = t.call(2, Method::GET, "/exports/carls", None).await;
    let (_, missing, _) = t.call(2, Method::GET, "/exports/nothing-here", None).await;
    assert_eq!(
        hidden["error"]["message"].as_str().unwrap().replace("carls", "X"),
        missing["error"]["message"].as_str().unwrap().replace("nothing-here", "X"),
        "a hidden export reads exactly like a missing one"
    );

    // Removal: export users and admins only, once its runs are over.
    let deadline = Instant::now() + Duration::from_secs(30);
    while t
        .call(4, Method::GET, "/runs?export=carls", None)
        .await
        .1
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["status"] == "running")
    {
        assert!(Instant::now() < deadline, "the runs of carls never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (who, want) in [(0, u), (1, u), (2, nf), (3, S::OK), (4, nf)] {
        let (got, _, text) = t.call(who, Method::DELETE, "/exports/carls", None).await;
        t.assert_no_secret(who, "DELETE /exports/carls", &text);
        assert_eq!(got, want, "DELETE /exports/carls by {}: {text}", WHO[who]);
    }
    let (got, _, text) = t.call(4, Method::DELETE, "/exports/open-3", None).await;
    assert_eq!(got, S::OK, "an admin removes anyone's export: {text}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_throttled_per_account_while_other_accounts_still_get_in() {
    let t = team().await;
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(t.call_with(Some(&t.revoked[0]), Method::GET, "/me", None).await.0);
    }
    // 20 failures are allowed in a burst; the 21st uses up the account's allowance and the next ones wait.
    assert!(statuses[..21].iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{statuses:?}");
    assert!(statuses[21..].iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    assert_eq!(t.call(4, Method::GET, "/me", None).await.0, StatusCode::OK, "another account is not locked out");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_any_account_exists_the_api_answers_401_to_everyone() {
    let env = tokio::task::spawn_blocking(Env::new).await.unwrap();
    let mut config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    config.push_str(&format!("\n[daemon]\nstatus_listen = \"off\"\ntrigger_dir = \"{}\"\n", env.path("t").display()));
    std::fs::write(env.path("config.toml"), config).unwrap();
    let config = Config::load(Some(&env.path("config.toml"))).unwrap().0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daemon = Daemon::build(config, None, Some(listener)).await.unwrap();
    let base = format!("http://{}/api/v1", daemon.status_address().unwrap());
    let stop = CancellationToken::new();
    let task = tokio::spawn(daemon.run_until(stop.clone().cancelled_owned()));
    for token in ["", "se_1_AAAA", "anything"] {
        let resp = reqwest::Client::new().get(format!("{base}/me")).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contributor_creates_and_runs_an_export_on_an_admins_connection_and_the_audit_tells_each_step() {
    let t = team().await;
    let (admin, contributor) = (4, 3);
    // The admin becomes the export user of the connection open to contributors.
    let (status, v, _) = t.call(admin, Method::POST, "/connections/open/export-user", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (_, conn, _) = t.call(contributor, Method::GET, "/connections/open", None).await;
    assert_eq!(conn["export_user"], "ann");
    assert_eq!(conn["privacy_accepted_by"].as_str().unwrap().split(':').next(), Some("local"));

    let (status, v, _) = t.call(contributor, Method::POST, "/exports", Some(export_body("team", "open"))).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["users"], json!(["carl"]), "the creator is its export user");
    assert!(v["last_run"].is_null(), "saving does not run it");
    let (status, v, _) = t.call(contributor, Method::POST, "/exports", Some(export_body("nope", "closed"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");

    let (status, v, _) = t.call(contributor, Method::POST, "/exports/team/runs", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["state"], "started");
    let id = v["run_id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let (status, run, _) = t.call(contributor, Method::GET, &format!("/runs/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{run}");
        if run["status"] != "running" {
            break run;
        }
        assert!(run["progress"]["phase"].is_string(), "a running run shows its progress: {run}");
        assert!(Instant::now() < deadline, "the run never ended: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["trigger"], "api");
    let (_, listed, _) = t.call(contributor, Method::GET, "/runs?export=team", None).await;
    assert_eq!(listed[0]["id"], id);

    let (status, audit, _) = t.call(admin, Method::GET, "/audit?limit=10", None).await;
    assert_eq!(status, StatusCode::OK);
    let steps: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .filter(|r| r["origin"].as_str().unwrap().starts_with("api "))
        .map(|r| {
            (
                r["actor"].as_str().unwrap().into(),
                r["action"].as_str().unwrap().into(),
                r["target"].as_str().unwrap().into(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        steps,
        vec![
            s("ann", "connection.export_user", "open"),
            s("carl", "export.add", "team"),
            s("carl", "export.run", "team")
        ]
    );
    assert!(audit[0]["origin"].as_str().unwrap().contains("127.0.0.1"), "{audit}");

    // The admin removes the destination; the export stays, detached.
    let (status, v, _) = t.call(admin, Method::DELETE, "/connections/open?exports=detach", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["exports"], json!(["team"]));
    let (_, audit, _) = t.call(admin, Method::GET, "/audit?limit=1", None).await;
    assert_eq!((audit[0]["actor"].as_str(), audit[0]["action"].as_str()), (Some("ann"), Some("connection.remove")));

    let Team { env, stop, task, .. } = t;
    stop.cancel();
    task.await.unwrap();
    let members = tokio::task::spawn_blocking(move || env.members("vip")).await.unwrap();
    assert_eq!(members, sorted(emails(0, 40)), "the sandbox's list equals the segment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_add_and_remove_connections_and_the_key_is_checked_and_never_shown() {
    let t = team().await;
    let sandbox = t.env.base_url.clone();
    let body = |name: &str, key: &str| json!({ "name": name, "api_key": key, "base_url": sandbox, "usable_by": "contributors", "accept_data_privacy": true });
    for (who, want) in [(0, 401), (1, 401), (2, 403), (3, 403), (4, 201)] {
        let (got, v, text) = t.call(who, Method::POST, "/connections", Some(body(&format!("c{who}"), KEY))).await;
        t.assert_no_secret(who, "POST /connections", &text);
        assert_eq!(got.as_u16(), want, "POST /connections by {}: {v}", WHO[who]);
    }
    let (_, v, _) = t.call(4, Method::GET, "/connections/c4", None).await;
    assert_eq!(v["privacy_accepted_by"], "ann");
    assert_eq!(v["export_user"], "ann", "the admin who sets it up is its export user by default");
    assert_eq!(v["api_key"], "stored in the store, encrypted");

    // The "Connect" step alone answers what Iterable said and saves nothing.
    let check = |key: &str| json!({ "api_key": key, "base_url": sandbox });
    let (got, _, _) = t.call(2, Method::POST, "/connections/check", Some(check(KEY))).await;
    assert_eq!(got, StatusCode::FORBIDDEN);
    let (got, v, text) = t.call(4, Method::POST, "/connections/check", Some(check(KEY))).await;
    assert_eq!((got, v["ok"].clone()), (StatusCode::OK, json!(true)), "{v}");
    t.assert_no_secret(4, "POST /connections/check", &text);
    let (got, v, text) = t.call(4, Method::POST, "/connections/check", Some(check("wrong-key-0000"))).await;
    assert_eq!((got, v["ok"].clone(), v["bad_key"].clone()), (StatusCode::OK, json!(false), json!(true)), "{v}");
    assert!(!text.contains("wrong-key-0000"), "{text}");
    let (_, all, _) = t.call(4, Method::GET, "/connections", None).await;
    assert_eq!(all.as_array().unwrap().len(), 3, "checking saved nothing: {all}");

    let (got, v, _) = t.call(4, Method::POST, "/connections", Some(body("bad", "not-the-key"))).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let mut no_consent = body("later", KEY);
    no_consent["accept_data_privacy"] = json!(false);
    let (got, v, _) = t.call(4, Method::POST, "/connections", Some(no_consent)).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("accept_data_privacy"), "{v}");
    for name in ["bad", "later"] {
        assert_eq!(t.call(4, Method::GET, &format!("/connections/{name}"), None).await.0, StatusCode::NOT_FOUND);
    }
    let (got, _, _) = t.call(4, Method::POST, "/connections", Some(body("c4", KEY))).await;
    assert_eq!(got, StatusCode::CONFLICT);

    let (got, _, _) = t.call(3, Method::POST, "/exports", Some(export_body("uses-open", "open"))).await;
    assert_eq!(got, StatusCode::CREATED);
    for (who, path, want) in [
        (2, "/connections/open", 403),
        (3, "/connections/open", 403),
        (3, "/connections/closed", 404),
        (4, "/connections/open", 409),
        (4, "/connections/open?exports=sideways", 422),
        (4, "/connections/open?exports=remove", 200),
        (4, "/connections/open", 404),
    ] {
        let (got, v, text) = t.call(who, Method::DELETE, path, None).await;
        t.assert_no_secret(who, path, &text);
        assert_eq!(got.as_u16(), want, "DELETE {path} by {}: {v}", WHO[who]);
    }
    assert_eq!(t.call(3, Method::GET, "/exports/uses-open", None).await.0, StatusCode::NOT_FOUND, "removed with it");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_error_naming_the_segments_source_is_shown_to_admins_only() {
    let t = team().await;
    let (got, _, _) = t.call(3, Method::POST, "/exports", Some(export_body("doomed", "open"))).await;
    assert_eq!(got, StatusCode::CREATED);
    std::fs::remove_file(&t.csv).unwrap();
    let (got, v, _) = t.call(3, Method::POST, "/exports/doomed/runs", None).await;
    assert_eq!(got, StatusCode::ACCEPTED, "{v}");
    let id = v["run_id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (admin_view, contributor_view) = loop {
        let (_, admin, _) = t.call(4, Method::GET, &format!("/runs/{id}"), None).await;
        if admin["status"] != "running" {
            let (_, contributor, text) = t.call(3, Method::GET, &format!("/runs/{id}"), None).await;
            t.assert_no_secret(3, "GET /runs/ID", &text);
            let (_, listed, text) = t.call(3, Method::GET, "/runs?export=doomed", None).await;
            t.assert_no_secret(3, "GET /runs", &text);
            assert_eq!(listed[0]["error"], contributor["error"]);
            break (admin, contributor);
        }
        assert!(Instant::now() < deadline, "the run never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(admin_view["status"], "failed", "{admin_view}");
    assert!(admin_view["error"].as_str().unwrap().contains("vip.csv"), "{admin_view}");
    assert!(contributor_view["error"].as_str().unwrap().contains("an administrator can see why"), "{contributor_view}");
    t.stop().await;
}

/// Asks for a run of `export` with `body` as `who`; returns the finished run.
async fn run_to_end(t: &Team, who: usize, export: &str, body: Value) -> Value {
    let (got, v, _) = t.call(who, Method::POST, &format!("/exports/{export}/runs"), Some(body)).await;
    assert_eq!(got, StatusCode::ACCEPTED, "{v}");
    let id = v["run_id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, run, _) = t.call(who, Method::GET, &format!("/runs/{id}"), None).await;
        if run["status"] != "running" {
            return run;
        }
        assert!(Instant::now() < deadline, "the run never ended: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_user_plans_a_run_then_repeats_one_the_mass_removal_guard_stopped_with_allow_mass_removal() {
    let t = team().await;
    let (got, _, _) = t.call(3, Method::POST, "/exports", Some(export_body("guarded", "open"))).await;
    assert_eq!(got, StatusCode::CREATED);
    assert_eq!(run_to_end(&t, 3, "guarded", json!({})).await["status"], "succeeded");
    // 35 of the 40 members leave the segment: more than half of the list.
    let rows: Vec<String> = emails(0, 5);
    let text: String = std::iter::once("email,tier".to_string())
        .chain(rows.iter().map(|e| format!("{e},gold")))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&t.csv, text + "\n").unwrap();

    let (got, plan, _) = t.call(3, Method::POST, "/exports/guarded/runs", Some(json!({ "dry_run": true }))).await;
    assert_eq!(got, StatusCode::OK, "{plan}");
    assert_eq!(plan["lists"][0]["to_remove"], 35, "{plan}");
    let refused = run_to_end(&t, 3, "guarded", json!({})).await;
    assert_eq!(refused["status"], "refused", "{refused}");
    let allowed = run_to_end(&t, 3, "guarded", json!({ "allow_mass_removal": true })).await;
    assert_eq!(allowed["status"], "succeeded", "{allowed}");
    let (got, _, _) = t.call(3, Method::POST, "/exports/guarded/runs", Some(json!({ "sideways": true }))).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, audit, _) = t.call(4, Method::GET, "/audit?user=carl&limit=3", None).await;
    assert_eq!(audit[0]["detail"], "allow mass removal", "{audit}");
    assert_eq!(audit[2]["action"], "export.run.dry", "{audit}");

    let Team { env, stop, task, .. } = t;
    stop.cancel();
    task.await.unwrap();
    let members = tokio::task::spawn_blocking(move || env.members("vip")).await.unwrap();
    assert_eq!(members, sorted(emails(0, 5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_made_through_the_api_takes_a_user_id_column_and_needs_an_identity_column() {
    let t = team().await;
    let with_ids = json!({ "name": "ids", "connection": "open", "segments": ["s-2"], "email_field": "email",
                           "user_id_field": "tier", "schedule": "off" });
    let (status, v, _) = t.call(4, Method::POST, "/exports", Some(with_ids)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!((v["email_field"].as_str(), v["user_id_field"].as_str()), (Some("email"), Some("tier")), "{v}");
    // A hybrid project identifies a member by one of them at least: without either, nothing is saved.
    let without = json!({ "name": "none", "connection": "open", "segments": ["s-3"], "schedule": "off" });
    let (status, v, _) = t.call(4, Method::POST, "/exports", Some(without)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("--user-id-field or both"), "{v}");
    t.stop().await;
}

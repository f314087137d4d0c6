//! The HTTP API under /api/v1, served by the daemon built in this process against the sandbox: the permission
//! matrix of every endpoint (each answer checked against the OpenAPI document's schema), wrong tokens throttled per
//! client, and the seed's team flow end to end.

mod common;

use std::time::{Duration, Instant};

use common::in_process::{serve, Served};
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
    /// Rotated-away tokens of five accounts, used in turn as "revoked token" (each from another loopback
    /// address), so that the matrix stays within the allowance of wrong tokens per client.
    revoked: Vec<String>,
    revoked_next: std::sync::atomic::AtomicUsize,
    csv: String,
    /// `[sources] allowed_dirs`: the one folder file sources may come from over HTTP.
    allowed: std::path::PathBuf,
    served: Served,
}

fn token_of(v: &Value) -> String {
    v["token"].as_str().unwrap().to_string()
}

/// The password of segment `pg`'s database, sealed in the store: no answer may hold it.
const PG_PASSWORD: &str = "Pg-Secret-7Q2x";

/// Connections `open` (usable by contributors) and `closed` (admins only), a 40-member segment `vip`, a postgres
/// segment `pg` with a password, accounts ann (admin), carl and dora (contributors), rex (whose first token was
/// rotated away); file sources over HTTP allowed from the folder `allowed`; the daemon serving.
async fn team() -> Team {
    team_with(opts()).await
}

async fn team_with(sandbox: segment_exporter::sandbox::SandboxOptions) -> Team {
    let (env, tokens, csv, revoked) = tokio::task::spawn_blocking(move || {
        let env = Env::with_sandbox(sandbox);
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
        let pg = format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:5432/test");
        let query = "SELECT 'pg@example.com' AS email";
        env.ok(&["segment", "add", "pg", "--source", &pg, "--query", query, "--skip-check"]);
        std::fs::create_dir(env.path("allowed")).unwrap();
        let mut revoked = Vec::new();
        for name in ["rex", "rex2", "rex3", "rex4", "rex5"] {
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
    let allowed = env.path("allowed");
    let served = serve(&env, &format!("\n[sources]\nallowed_dirs = [\"{}\"]\n", allowed.display())).await;
    let base = format!("{}/api/v1", served.base);
    Team { env, base, tokens, csv, allowed, revoked, revoked_next: Default::default(), served }
}

impl Team {
    async fn call(&self, who: usize, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value, String) {
        if who != 1 {
            return self.call_with(self.tokens[who].as_deref(), method, path, body).await;
        }
        let turn = self.revoked_next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = &self.revoked[turn % self.revoked.len()];
        let from = std::net::IpAddr::from([127, 0, 0, 2 + (turn % 8) as u8]);
        let client = reqwest::Client::builder().local_address(from).build().unwrap();
        self.send(client, Some(token), method, path, body).await
    }

    async fn call_with(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, String) {
        self.send(reqwest::Client::new(), token, method, path, body).await
    }

    async fn send(
        &self,
        client: reqwest::Client,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, String) {
        let mut req = client.request(method, format!("{}{path}", self.base));
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

    /// No body holds the Iterable key, a source's password or any token; contributors' bodies hold no source, key
    /// file, key description, Iterable address or internal id.
    fn assert_no_secret(&self, who: usize, what: &str, body: &str) {
        assert!(!body.contains(KEY), "{what} by {}: the API key leaked: {body}", WHO[who]);
        assert!(!body.contains(PG_PASSWORD), "{what} by {}: a source password leaked: {body}", WHO[who]);
        for t in self.tokens.iter().flatten().chain(&self.revoked) {
            let secret = t.splitn(3, '_').nth(2).unwrap();
            assert!(!body.contains(secret), "{what} by {}: a token leaked: {body}", WHO[who]);
        }
        // The OpenAPI document names every field (for everyone), and holds no value.
        if who < 4 && !what.ends_with("/openapi.json") {
            let hidden_keys = ["\"base_url\"", "\"source\":", "\"query\":", "\"connection_id\"", "\"export_id\""];
            for hidden in [self.csv.as_str(), "iterable.key", "api_key", &self.env.base_url, "127.0.0.1:5432"]
                .into_iter()
                .chain(hidden_keys)
            {
                assert!(!body.contains(hidden), "{what} by {}: '{hidden}' shown: {body}", WHO[who]);
            }
        }
    }

    /// The body with `ALLOWED` and `STORE` replaced by the allowed folder and the store's path.
    fn paths_in(&self, body: Value) -> Value {
        let text = body.to_string();
        let text = text.replace("ALLOWED", &self.allowed.display().to_string());
        let text = text.replace("STORE", &self.env.path("store.db").display().to_string());
        serde_json::from_str(&text).unwrap()
    }

    async fn stop(self) {
        self.served.stop().await;
    }
}

/// Checks an answer against the OpenAPI document: its status must be documented for the operation, and its body
/// valid against the schema given for that status. Returns the operation (`METHOD /api/v1/TEMPLATE`).
fn check_against_document(
    doc: &Value,
    method: &Method,
    path: &str,
    status: StatusCode,
    body: &Value,
) -> Result<String, String> {
    let path = format!("/api/v1{}", path.split('?').next().unwrap());
    let parts: Vec<&str> = path.split('/').collect();
    let method_key = method.as_str().to_lowercase();
    // Fixed segments win over parameters (`/connections/check` over `/connections/{name}`).
    let mut templates: Vec<(&String, &Value)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(template, item)| {
            let t: Vec<&str> = template.split('/').collect();
            item.get(&method_key).is_some()
                && t.len() == parts.len()
                && t.iter().zip(&parts).all(|(a, b)| a.starts_with('{') || a == b)
        })
        .collect();
    templates.sort_by_key(|(template, _)| template.matches('{').count());
    let (template, item) = templates.first().ok_or_else(|| format!("{method} {path} is not in the document"))?;
    let operation = format!("{} {template}", method.as_str());
    let response = &item[&method_key]["responses"][status.as_str()];
    if response.is_null() {
        return Err(format!("{operation}: status {status} is not documented"));
    }
    if response.get("content").is_none() && body.is_null() {
        return Ok(operation);
    }
    let Some(schema) = response["content"]["application/json"]["schema"].as_object() else {
        return Err(format!("{operation}: status {status} has no JSON schema"));
    };
    let mut root = json!({ "components": doc["components"] });
    for (k, v) in schema {
        root[k] = v.clone();
    }
    let validator = jsonschema::validator_for(&root).map_err(|e| format!("{operation}: bad schema: {e}"))?;
    let errors: Vec<String> = validator.iter_errors(body).map(|e| format!("{e} at {}", e.instance_path())).collect();
    if !errors.is_empty() {
        return Err(format!("{operation} {status}: the body does not fit the schema: {}: {body}", errors.join("; ")));
    }
    Ok(operation)
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
    let (u, nf, fb, bad, conflict) =
        (S::UNAUTHORIZED, S::NOT_FOUND, S::FORBIDDEN, S::UNPROCESSABLE_ENTITY, S::CONFLICT);
    let runs_path = format!("/runs/{run_id}");
    let inside = t.allowed.join("people.csv");
    std::fs::copy(&t.csv, &inside).unwrap();
    // Each case: the request, then the status expected from each caller of `WHO`, in order.
    let cases: Vec<(Method, String, Option<Body>, [StatusCode; 5])> = vec![
        (Method::GET, "/me".into(), None, [u, u, S::OK, S::OK, S::OK]),
        (Method::GET, "/openapi.json".into(), None, [S::OK, S::OK, S::OK, S::OK, S::OK]),
        // Sessions are the web console's: a bearer token has none, and a wrong password signs no one in.
        (Method::GET, "/session".into(), None, [u, u, u, u, u]),
        (
            Method::POST,
            "/session".into(),
            Some(|_| json!({ "user": "nobody", "password": "not-a-password" })),
            [u, u, u, u, u],
        ),
        (Method::DELETE, "/session".into(), None, [u, u, u, u, u]),
        (Method::GET, "/connections".into(), None, [u, u, S::OK, S::OK, S::OK]),
        (Method::GET, "/connections/open".into(), None, [u, u, S::OK, S::OK, S::OK]),
        (Method::GET, "/connections/closed".into(), None, [u, u, nf, nf, S::OK]),
        (Method::GET, "/connections/missing".into(), None, [u, u, nf, nf, nf]),
        (
            Method::POST,
            "/connections".into(),
            Some(
                |who| json!({ "name": format!("new-{who}"), "api_key": "k", "accept_data_privacy": true, "skip_verify": true }),
            ),
            [u, u, fb, fb, S::CREATED],
        ),
        (
            Method::POST,
            "/connections/check".into(),
            Some(|_| json!({ "api_key": "k", "base_url": "http://127.0.0.1:9" })),
            [u, u, fb, fb, S::OK],
        ),
        (
            Method::PATCH,
            "/connections/open".into(),
            Some(|_| json!({ "usable_by": "contributors" })),
            [u, u, fb, fb, S::OK],
        ),
        (
            Method::PATCH,
            "/connections/closed".into(),
            Some(|_| json!({ "usable_by": "admins" })),
            [u, u, nf, nf, S::OK],
        ),
        (Method::PATCH, "/connections/open".into(), Some(|_| json!({ "api_key": "not-the-key" })), [u, u, fb, fb, bad]),
        (Method::PATCH, "/connections/open".into(), Some(|_| json!({ "sideways": 1 })), [u, u, fb, fb, bad]),
        (Method::DELETE, "/connections/new-4".into(), None, [u, u, nf, nf, S::OK]),
        (Method::POST, "/connections/open/export-user".into(), None, [u, u, fb, fb, S::OK]),
        (Method::DELETE, "/connections/open/export-user".into(), None, [u, u, fb, fb, S::OK]),
        (Method::DELETE, "/connections/open/export-user".into(), None, [u, u, fb, fb, conflict]),
        (Method::POST, "/connections/closed/export-user".into(), None, [u, u, nf, nf, S::OK]),
        (Method::POST, "/connections/open/export-user".into(), None, [u, u, fb, fb, S::OK]),
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
        (Method::POST, "/exports".into(), Some(|_| export_body("carls", "open")), [u, u, conflict, conflict, conflict]),
        (
            Method::POST,
            "/exports".into(),
            Some(
                |who| json!({ "name": format!("bad-{who}"), "connection": "open", "segments": ["vip"], "email_field": "nope" }),
            ),
            [u, u, bad, bad, bad],
        ),
        // Each caller gives another schedule, so each change is a change; a run in flight is stopped first.
        (
            Method::PATCH,
            "/exports/carls".into(),
            Some(|who| json!({ "schedule": format!("0 0 {who} * * *"), "cancel_run": true })),
            [u, u, nf, S::OK, S::OK],
        ),
        (Method::PATCH, "/exports/carls".into(), Some(|_| json!({ "add_fields": ["nope"] })), [u, u, nf, bad, bad]),
        (Method::POST, "/exports/carls/runs".into(), None, [u, u, nf, S::ACCEPTED, S::ACCEPTED]),
        (Method::POST, "/exports/carls/verify".into(), None, [u, u, nf, S::ACCEPTED, S::ACCEPTED]),
        (Method::POST, "/exports/carls/runs".into(), Some(|_| json!({ "dry_run": true })), [u, u, nf, S::OK, S::OK]),
        (Method::GET, "/runs?export=carls".into(), None, [u, u, nf, S::OK, S::OK]),
        (Method::GET, runs_path.clone(), None, [u, u, nf, S::OK, S::OK]),
        (Method::GET, "/runs/999999".into(), None, [u, u, nf, nf, nf]),
        (Method::GET, "/audit".into(), None, [u, u, fb, fb, S::OK]),
        // Accounts are administrators' (the web console's Users screen).
        (Method::GET, "/users".into(), None, [u, u, fb, fb, S::OK]),
        (Method::GET, "/users/dora".into(), None, [u, u, fb, fb, S::OK]),
        (
            Method::POST,
            "/users".into(),
            Some(|who| json!({ "name": format!("u-{who}"), "role": "contributor" })),
            [u, u, fb, fb, S::CREATED],
        ),
        (Method::PATCH, "/users/u-4".into(), Some(|_| json!({ "role": "admin" })), [u, u, fb, fb, S::OK]),
        (Method::PATCH, "/users/u-4".into(), Some(|_| json!({ "role": "owner" })), [u, u, fb, fb, bad]),
        (
            Method::POST,
            "/users/u-4/password".into(),
            Some(|_| json!({ "password": "a long enough passphrase" })),
            [u, u, fb, fb, S::OK],
        ),
        (Method::POST, "/users/u-4/token".into(), None, [u, u, fb, fb, S::OK]),
        // Sessions: administrators see and end anyone's, an account its own; another's do not exist.
        (Method::GET, "/users/carl/sessions".into(), None, [u, u, nf, S::OK, S::OK]),
        (Method::GET, "/users/nobody/sessions".into(), None, [u, u, nf, nf, nf]),
        (Method::DELETE, "/users/carl/sessions/999999".into(), None, [u, u, nf, nf, nf]),
        (Method::DELETE, "/users/carl/sessions".into(), None, [u, u, nf, S::OK, S::OK]),
        (Method::DELETE, "/users/u-4".into(), None, [u, u, fb, fb, S::OK]),
        (Method::GET, "/users/u-4".into(), None, [u, u, fb, fb, nf]),
        (Method::GET, "/segments".into(), None, [u, u, S::OK, S::OK, S::OK]),
        (Method::GET, "/segments?count=now".into(), None, [u, u, S::OK, S::OK, S::OK]),
        (Method::GET, "/segments/vip".into(), None, [u, u, S::OK, S::OK, S::OK]),
        (Method::GET, "/segments/pg?count=now".into(), None, [u, u, S::OK, S::OK, S::OK]),
        (Method::GET, "/segments/missing".into(), None, [u, u, nf, nf, nf]),
        (
            Method::POST,
            "/segments".into(),
            Some(|who| json!({ "name": format!("seg-{who}"), "source": "csv:ALLOWED/people.csv" })),
            [u, u, fb, fb, S::CREATED],
        ),
        (
            Method::POST,
            "/segments".into(),
            Some(|who| json!({ "name": format!("key-{who}"), "source": "csv:STORE.key" })),
            [u, u, fb, fb, bad],
        ),
        (
            Method::PATCH,
            "/segments/seg-4".into(),
            Some(|_| json!({ "source": "csv:ALLOWED/people.csv" })),
            [u, u, fb, fb, S::OK],
        ),
        (
            Method::PATCH,
            "/segments/vip".into(),
            Some(|_| json!({ "source": "csv:ALLOWED/people.csv" })),
            [u, u, fb, fb, S::OK],
        ),
        (Method::DELETE, "/segments/vip".into(), None, [u, u, fb, fb, conflict]),
        (Method::DELETE, "/segments/seg-4".into(), None, [u, u, fb, fb, S::OK]),
        // rex (whose old token is the revoked one) is added and removed: no caller of the matrix changes rights.
        (Method::POST, "/exports/carls/users".into(), Some(|_| json!({ "user": "rex" })), [u, u, nf, S::OK, S::OK]),
        (Method::POST, "/exports/carls/users".into(), Some(|_| json!({ "user": "nobody" })), [u, u, nf, nf, nf]),
        (Method::DELETE, "/exports/carls/users/rex".into(), None, [u, u, nf, S::OK, bad]),
        // Notification channels: administrators manage them; contributors list those open to them.
        (Method::GET, "/channels".into(), None, [u, u, S::OK, S::OK, S::OK]),
        (
            Method::POST,
            "/channels".into(),
            Some(|_| json!({ "name": "hook", "webhook": "http://127.0.0.1:9/hook" })),
            [u, u, fb, fb, S::CREATED],
        ),
        (Method::POST, "/channels".into(), Some(|_| json!({ "name": "bad", "email": [] })), [u, u, fb, fb, bad]),
        (Method::GET, "/channels/hook".into(), None, [u, u, fb, fb, S::OK]),
        (Method::POST, "/channels/hook/test".into(), None, [u, u, fb, fb, S::OK]),
        (Method::GET, "/channels/hook/deliveries".into(), None, [u, u, fb, fb, S::OK]),
        (Method::DELETE, "/channels/hook".into(), None, [u, u, fb, fb, S::OK]),
        (Method::GET, "/nowhere".into(), None, [nf, nf, nf, nf, nf]),
    ];
    let (_, doc, _) = t.call(0, Method::GET, "/openapi.json", None).await;
    let mut covered = std::collections::BTreeSet::new();
    let mut wrong = Vec::new();
    for (method, path, body, expected) in &cases {
        for (who, want) in expected.iter().enumerate() {
            let body = body.map(|b| t.paths_in(b(who)));
            let (got, json, text) = t.call(who, method.clone(), path, body).await;
            t.assert_no_secret(who, &format!("{method} {path}"), &text);
            if got != *want {
                wrong.push(format!("{method} {path} by {}: {got}, expected {want}: {text}", WHO[who]));
            }
            if !got.is_success() {
                assert!(json["error"]["kind"].is_string() && json["error"]["message"].is_string(), "{text}");
            }
            if path != "/nowhere" {
                match check_against_document(&doc, method, path, got, &json) {
                    Ok(operation) => {
                        covered.insert((operation, who));
                    }
                    Err(e) => wrong.push(format!("{method} {path} by {}: {e}", WHO[who])),
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Lists show only what the caller may see: segments' names to all, their sources to admins.
    let (_, segments, _) = t.call(3, Method::GET, "/segments", None).await;
    let created_at = segments[0]["created_at"].clone();
    assert_eq!(segments[0], json!({ "name": "c-4", "created_at": created_at, "members": null, "counted_at": null }));
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
        let (got, json, text) = t.call(who, Method::DELETE, "/exports/carls", None).await;
        t.assert_no_secret(who, "DELETE /exports/carls", &text);
        assert_eq!(got, want, "DELETE /exports/carls by {}: {text}", WHO[who]);
        let operation = check_against_document(&doc, &Method::DELETE, "/exports/carls", got, &json).unwrap();
        covered.insert((operation, who));
    }
    // The check bites: an answer with a field the document does not list fails it.
    let (_, mut me, _) = t.call(3, Method::GET, "/me", None).await;
    me["api_key"] = json!("x");
    assert!(check_against_document(&doc, &Method::GET, "/me", StatusCode::OK, &me).is_err());
    // Every operation the document describes was asked by each kind of caller.
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            for (who, caller) in WHO.iter().enumerate() {
                if !covered.contains(&(format!("{} {template}", method.to_uppercase()), who)) {
                    wrong.push(format!("{} {template} was not asked by {caller}", method.to_uppercase()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let (got, _, text) = t.call(4, Method::DELETE, "/exports/open-3", None).await;
    assert_eq!(got, S::OK, "an admin removes anyone's export: {text}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_throttled_per_client_while_other_clients_still_get_in() {
    let t = team().await;
    let guesser = || reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 30])).build().unwrap();
    let mut statuses = Vec::new();
    let started = Instant::now();
    while statuses.last() != Some(&StatusCode::TOO_MANY_REQUESTS) && statuses.len() < 80 {
        statuses.push(t.send(guesser(), Some(&t.revoked[0]), Method::GET, "/me", None).await.0);
    }
    // 50 failures are allowed in a burst, and one more for each 3 s that passed; the 51st uses up the client's
    // allowance, and then it waits.
    let refused = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    let allowance = 51 + started.elapsed().as_secs() as usize / 3 + 1;
    assert!((51..=allowance).contains(&refused), "{refused} refused before the 429: {statuses:?}");
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    let again = guesser().get(format!("{}/me", t.base)).bearer_auth(&t.revoked[1]).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS, "a blocked client stays blocked for a while");
    let retry_after: u64 = again.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=6).contains(&retry_after), "it says when to come back: {retry_after}");
    let ann = t.tokens[4].as_deref();
    assert_eq!(t.send(guesser(), ann, Method::GET, "/me", None).await.0, StatusCode::TOO_MANY_REQUESTS, "any token");
    assert_eq!(t.call(4, Method::GET, "/me", None).await.0, StatusCode::OK, "another client is not held up");
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
async fn the_seed_flow_runs_through_the_api_from_connecting_to_removing_the_destination_and_the_audit_tells_each_step()
{
    let t = team().await;
    let (admin, contributor) = (4, 3);
    // The admin connects a destination usable by contributors, agrees, and is its export user.
    let connect = json!({ "name": "dest", "api_key": KEY, "base_url": t.env.base_url, "usable_by": "contributors",
        "accept_data_privacy": true, "project_type": "hybrid" });
    let (status, v, text) = t.call(admin, Method::POST, "/connections", Some(connect)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    t.assert_no_secret(admin, "POST /connections", &text);
    assert_eq!((v["export_user"].as_str(), v["privacy_accepted_by"].as_str()), (Some("ann"), Some("ann")));
    assert!(v["verified_at"].is_string(), "the key was checked with Iterable: {v}");
    let (_, conn, text) = t.call(contributor, Method::GET, "/connections/dest", None).await;
    t.assert_no_secret(contributor, "GET /connections/dest", &text);
    assert_eq!(conn["export_user"], "ann");

    // A contributor picks a segment and its email column, and creates an export on it; not on an admins' one.
    let (_, segment, _) = t.call(contributor, Method::GET, "/segments/vip", None).await;
    assert_eq!(segment["columns"], json!(["email", "tier"]), "{segment}");
    let (status, v, _) = t.call(contributor, Method::POST, "/exports", Some(export_body("team", "dest"))).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["users"], json!(["carl"]), "the creator is its export user");
    assert!(v["last_run"].is_null(), "saving does not run it");
    let (status, v, _) = t.call(contributor, Method::POST, "/exports", Some(export_of("nope", "closed", "s-2"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");

    // It runs the export on demand and follows its progress to the end.
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
        // Between its last batch and its end being recorded, a run has no live progress left to show.
        if run["done"] != run["planned"] {
            assert!(run["progress"]["phase"].is_string(), "a running run shows its progress: {run}");
        }
        assert!(Instant::now() < deadline, "the run never ended: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["trigger"], "api");
    assert_eq!((run["planned"].as_u64(), run["done"].as_u64()), (Some(40), Some(40)), "{run}");
    let list = &run["lists"][0];
    assert_eq!(
        (
            list["planned_add"].as_u64(),
            list["added"].as_u64(),
            list["updated"].as_u64(),
            list["already_on_list"].as_u64()
        ),
        (Some(40), Some(40), Some(0), Some(0)),
        "all new on the list: {run}"
    );
    let (_, listed, _) = t.call(contributor, Method::GET, "/runs?export=team", None).await;
    assert_eq!(listed[0]["id"], id);
    let (_, export, _) = t.call(contributor, Method::GET, "/exports/team", None).await;
    let last = &export["last_run"];
    assert_eq!(
        (last["added"].as_u64(), last["updated"].as_u64(), last["already_on_list"].as_u64()),
        (Some(40), Some(0), Some(0)),
        "{export}"
    );
    let (_, segment, _) = t.call(contributor, Method::GET, "/segments/vip", None).await;
    assert_eq!(segment["members"], 40, "the segment's size after the run: {segment}");
    let members = {
        let env = &t.env;
        tokio::task::block_in_place(|| env.members("vip"))
    };
    assert_eq!(members, sorted(emails(0, 40)), "the sandbox's list equals the segment");

    // The admin removes the destination; the export stays, detached.
    let (status, v, _) = t.call(admin, Method::DELETE, "/connections/dest?exports=detach", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["exports"], json!(["team"]));
    let (_, export, _) = t.call(contributor, Method::GET, "/exports/team", None).await;
    assert_eq!((export["connection"].clone(), export["enabled"].clone()), (Value::Null, json!(false)), "{export}");

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
            s("ann", "connection.add", "dest"),
            s("carl", "export.add", "team"),
            s("carl", "export.run", "team"),
            s("ann", "connection.remove", "dest"),
        ]
    );
    assert!(audit[0]["origin"].as_str().unwrap().contains("127.0.0.1"), "{audit}");
    assert_eq!(audit[0]["detail"], "exports detached", "{audit}");
    t.stop().await;
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

/// Writes the team's CSV with `n` members (emails 0..n).
fn write_members(t: &Team, n: usize) {
    let text: String = std::iter::once("email,tier".to_string())
        .chain(emails(0, n).iter().map(|e| format!("{e},gold")))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&t.csv, text + "\n").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_the_mass_addition_guard_stopped_goes_through_with_allow_mass_addition() {
    let t = team().await;
    write_members(&t, 120);
    let (got, _, _) = t.call(3, Method::POST, "/exports", Some(export_body("growing", "open"))).await;
    assert_eq!(got, StatusCode::CREATED);
    assert_eq!(run_to_end(&t, 3, "growing", json!({})).await["status"], "succeeded");
    write_members(&t, 1200);

    let (got, plan, _) = t.call(3, Method::POST, "/exports/growing/runs", Some(json!({ "dry_run": true }))).await;
    assert_eq!(got, StatusCode::OK, "{plan}");
    assert_eq!(
        (plan["stopped_by_guard"].as_str(), plan["lists"][0]["to_add"].as_u64()),
        (Some("mass_addition"), Some(1080))
    );
    assert_eq!(plan["stopped_by_mass_removal_guard"], false, "{plan}");
    let refused = run_to_end(&t, 3, "growing", json!({})).await;
    assert_eq!(refused["status"], "refused", "{refused}");
    assert_eq!(refused["stopped_by_guard"], "mass_addition", "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("allow-mass-addition"), "it says how to go on: {refused}");
    // Allowing the other guard does not let it through.
    let still = run_to_end(&t, 3, "growing", json!({ "allow_mass_removal": true })).await;
    assert_eq!(still["stopped_by_guard"], "mass_addition", "{still}");
    let allowed = run_to_end(&t, 3, "growing", json!({ "allow_mass_addition": true })).await;
    assert_eq!(allowed["status"], "succeeded", "{allowed}");
    assert_eq!(allowed["stopped_by_guard"], Value::Null, "{allowed}");
    assert_eq!(allowed["lists"][0]["added"], 1080, "{allowed}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_user_plans_a_run_then_repeats_one_the_mass_removal_guard_stopped_with_allow_mass_removal() {
    let t = team().await;
    let (got, _, _) = t.call(3, Method::POST, "/exports", Some(export_body("guarded", "open"))).await;
    assert_eq!(got, StatusCode::CREATED);
    assert_eq!(run_to_end(&t, 3, "guarded", json!({})).await["status"], "succeeded");
    // 35 of the 40 members leave the segment: more than half of the list.
    let rows: Vec<String> = emails(0, 5).into_iter().chain(["not-an-email".to_string()]).collect();
    let text: String = std::iter::once("email,tier".to_string())
        .chain(rows.iter().map(|e| format!("{e},gold")))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&t.csv, text + "\n").unwrap();

    let (got, plan, _) = t.call(3, Method::POST, "/exports/guarded/runs", Some(json!({ "dry_run": true }))).await;
    assert_eq!(got, StatusCode::OK, "{plan}");
    assert_eq!(plan["lists"][0]["to_remove"], 35, "{plan}");
    assert_eq!(plan["stopped_by_mass_removal_guard"], true, "the plan says the guard would stop the run: {plan}");
    let refused = run_to_end(&t, 3, "guarded", json!({})).await;
    assert_eq!(refused["status"], "refused", "{refused}");
    assert_eq!(refused["stopped_by_mass_removal_guard"], true, "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("allow-mass-removal"), "it says how to go on: {refused}");
    let allowed = run_to_end(&t, 3, "guarded", json!({ "allow_mass_removal": true })).await;
    assert_eq!(allowed["status"], "succeeded", "{allowed}");
    assert_eq!(allowed["stopped_by_mass_removal_guard"], false, "{allowed}");
    // The member it could not send is shown to its export user (and admins), not to another contributor.
    let issues = &allowed["rejected_and_invalid"];
    assert_eq!((issues[0]["kind"].as_str(), issues[0]["member"].as_str()), (Some("invalid"), Some("not-an-email")));
    let path = format!("/runs/{}", allowed["id"]);
    assert_eq!(t.call(4, Method::GET, &path, None).await.1["rejected_and_invalid"], *issues);
    let (got, v, _) = t.call(2, Method::GET, &path, None).await;
    assert_eq!(got, StatusCode::NOT_FOUND, "{v}");
    let (_, listed, _) = t.call(3, Method::GET, "/runs?export=guarded", None).await;
    assert!(listed[0].get("rejected_and_invalid").is_none(), "lists leave the members out: {listed}");
    let (got, _, _) = t.call(3, Method::POST, "/exports/guarded/runs", Some(json!({ "sideways": true }))).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, audit, _) = t.call(4, Method::GET, "/audit?user=carl&limit=3", None).await;
    assert_eq!(audit[0]["detail"], "allow mass removal", "{audit}");
    assert_eq!(audit[2]["action"], "export.run.dry", "{audit}");

    let Team { env, served, .. } = t;
    served.stop().await;
    let members = tokio::task::spawn_blocking(move || env.members("vip")).await.unwrap();
    assert_eq!(members, sorted(emails(0, 5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_opens_a_connection_to_contributors_and_replaces_its_key_only_once_iterable_accepts_the_new_one() {
    const SECOND: &str = "second-key-9876543210";
    let t =
        team_with(segment_exporter::sandbox::SandboxOptions { api_keys: vec![KEY.into(), SECOND.into()], ..opts() })
            .await;
    assert_eq!(t.call(3, Method::GET, "/connections/closed", None).await.0, StatusCode::NOT_FOUND);
    let (got, v, _) =
        t.call(4, Method::PATCH, "/connections/closed", Some(json!({ "usable_by": "contributors" }))).await;
    assert_eq!(got, StatusCode::OK, "{v}");
    let (got, v, text) = t.call(3, Method::GET, "/connections/closed", None).await;
    assert_eq!((got, v["usable_by"].as_str()), (StatusCode::OK, Some("contributors")), "{v}");
    t.assert_no_secret(3, "GET /connections/closed", &text);

    // A key Iterable refuses is not saved; the old one goes on working.
    let (got, v, text) =
        t.call(4, Method::PATCH, "/connections/open", Some(json!({ "api_key": "wrong-key-1111" }))).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(!text.contains("wrong-key-1111"), "{text}");
    let (_, v, _) = t.call(4, Method::GET, "/connections/open", None).await;
    assert!(v["api_key"].as_str().unwrap().starts_with("file "), "{v}");
    assert_eq!(v["api_key_source"], "file", "{v}");
    let (got, v, text) = t.call(4, Method::PATCH, "/connections/open", Some(json!({ "api_key": SECOND }))).await;
    assert_eq!(got, StatusCode::OK, "{v}");
    assert!(!text.contains(SECOND), "{text}");
    assert_eq!(
        (v["api_key"].as_str(), v["api_key_last4"].as_str()),
        (Some("stored in the store, encrypted"), Some("3210"))
    );
    assert_eq!(v["api_key_source"], "stored", "{v}");
    let (got, v, _) = t.call(3, Method::PATCH, "/connections/open", Some(json!({ "usable_by": "admins" }))).await;
    assert_eq!(got, StatusCode::FORBIDDEN, "{v}");

    // Runs now go with the new key.
    let (got, _, _) = t.call(3, Method::POST, "/exports", Some(export_body("rotated", "open"))).await;
    assert_eq!(got, StatusCode::CREATED);
    assert_eq!(run_to_end(&t, 3, "rotated", json!({})).await["status"], "succeeded");
    let (got, v, _) = t.call(4, Method::PATCH, "/connections/open", Some(json!({ "project_type": "userid" }))).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "an export on it could not run in a userID-based project: {v}");
    let (got, v, _) = t.call(4, Method::PATCH, "/connections/open", Some(json!({}))).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("nothing to change"), "{v}");

    let (_, audit, _) = t.call(4, Method::GET, "/audit?user=ann&limit=2", None).await;
    assert_eq!(
        (audit[0]["action"].as_str(), audit[0]["detail"].as_str()),
        (Some("connection.edit"), Some("key replaced"))
    );
    assert_eq!(audit[1]["detail"], "usable by contributors", "{audit}");
    let Team { env, served, .. } = t;
    served.stop().await;
    let members = tokio::task::spawn_blocking(move || env.members("vip")).await.unwrap();
    assert_eq!(members, sorted(emails(0, 40)));
}

/// Segment `big` and carl's export `slow` of it on `open`, whose run (3,000 members in batches of 50, three at a
/// time, 150 ms each: several seconds) has sent its first batch; its id.
async fn slow_run_under_way(t: &Team) -> i64 {
    let rows: Vec<String> = emails(0, 3000);
    let text: String = std::iter::once("email,tier".to_string())
        .chain(rows.iter().map(|e| format!("{e},gold")))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(t.allowed.join("big.csv"), text + "\n").unwrap();
    let source = format!("csv:{}", t.allowed.join("big.csv").display());
    let (got, v, _) = t.call(4, Method::POST, "/segments", Some(json!({ "name": "big", "source": source }))).await;
    assert_eq!(got, StatusCode::CREATED, "{v}");
    let (got, _, _) = t.call(3, Method::POST, "/exports", Some(export_of("slow", "open", "big"))).await;
    assert_eq!(got, StatusCode::CREATED);
    let (got, v, _) = t.call(3, Method::POST, "/exports/slow/runs", None).await;
    assert_eq!(got, StatusCode::ACCEPTED, "{v}");
    let id = v["run_id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, run, _) = t.call(3, Method::GET, &format!("/runs/{id}"), None).await;
        assert_eq!(run["status"], "running", "the run ended before it was looked at: {run}");
        if run["progress"]["done"].as_u64().unwrap_or(0) > 0 {
            return id;
        }
        assert!(Instant::now() < deadline, "the run never got going: {run}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_connection_first_cancels_the_run_in_flight_on_it() {
    let t =
        team_with(segment_exporter::sandbox::SandboxOptions { latency: Duration::from_millis(150), ..opts() }).await;
    let id = slow_run_under_way(&t).await;
    let (got, v, _) = t.call(4, Method::DELETE, "/connections/open?exports=remove", None).await;
    assert_eq!(got, StatusCode::OK, "{v}");
    assert_eq!(v["exports"], json!(["slow"]));
    let (_, run, _) = t.call(4, Method::GET, &format!("/runs/{id}"), None).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    assert!(run["done"].as_u64().unwrap() < 3000, "it stopped part-way: {run}");
    assert_eq!(t.call(3, Method::GET, "/exports/slow", None).await.0, StatusCode::NOT_FOUND);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_a_running_export_is_refused_naming_cancel_run_which_then_stops_the_run() {
    let t =
        team_with(segment_exporter::sandbox::SandboxOptions { latency: Duration::from_millis(150), ..opts() }).await;
    let id = slow_run_under_way(&t).await;
    let change = json!({ "schedule": "0 0 3 * * *" });
    let (got, v, _) = t.call(3, Method::PATCH, "/exports/slow", Some(change.clone())).await;
    assert_eq!(got, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["kind"], "running", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("cancel_run") && !message.contains("--cancel-run"), "the API's own words: {message}");
    let mut with_cancel = change;
    with_cancel["cancel_run"] = json!(true);
    let (got, v, _) = t.call(3, Method::PATCH, "/exports/slow", Some(with_cancel)).await;
    assert_eq!(got, StatusCode::OK, "{v}");
    let (_, run, _) = t.call(3, Method::GET, &format!("/runs/{id}"), None).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(error.contains("cancelled on request") && !error.contains("--cancel-run"), "{error}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_file_sources_must_lie_inside_the_allowed_folders_and_contributors_see_columns_and_sizes_only() {
    let t = team().await;
    let inside = t.allowed.join("people.csv");
    std::fs::copy(&t.csv, &inside).unwrap();
    let master_key = t.env.path("store.db.key");
    assert!(master_key.exists(), "the master key sealed pg's password");
    std::os::unix::fs::symlink(&master_key, t.allowed.join("key.csv")).unwrap();
    std::os::unix::fs::symlink(t.env.path(""), t.allowed.join("up")).unwrap();
    let allowed = t.allowed.display().to_string();
    let refused = [
        format!("csv:{allowed}/../vip.csv"),
        format!("csv:{allowed}/key.csv"),
        format!("csv:{allowed}/up/vip.csv"),
        format!("sqlite:{}", t.env.path("store.db").display()),
        format!("jsonl:{}", master_key.display()),
        "csv:people.csv".to_string(),
        "postgres://postgres@127.0.0.1:5432/test?sslkey=/etc/ssl/private/key.pem".to_string(),
    ];
    let key_bytes = std::fs::read(&master_key).unwrap();
    for (i, source) in refused.iter().enumerate() {
        let body = json!({ "name": format!("no-{i}"), "source": source, "query": null, "skip_check": true });
        let (got, v, text) = t.call(4, Method::POST, "/segments", Some(body)).await;
        assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{source}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("allowed_dirs") || source.starts_with("postgres"),
            "{source}: {v}"
        );
        assert!(!text.as_bytes().windows(key_bytes.len().min(16)).any(|w| key_bytes.starts_with(w)), "{text}");
    }
    let (got, v, _) = t
        .call(
            4,
            Method::POST,
            "/segments",
            Some(json!({ "name": "ok", "source": format!("csv:{allowed}/./people.csv") })),
        )
        .await;
    assert_eq!(got, StatusCode::CREATED, "{v}");
    assert_eq!(v["source"], format!("csv:{}", std::fs::canonicalize(&inside).unwrap().display()), "stored resolved");
    // A database password given over HTTP is sealed, and shown nowhere.
    let pg = json!({ "name": "pg-api", "source": "postgres://postgres@127.0.0.1:5432/test", "password": PG_PASSWORD,
        "query": "SELECT 'a@example.com' AS email", "skip_check": true });
    let (got, v, text) = t.call(4, Method::POST, "/segments", Some(pg)).await;
    assert_eq!(got, StatusCode::CREATED, "{v}");
    t.assert_no_secret(4, "POST /segments", &text);
    assert_eq!(
        (v["source"].as_str(), v["password"].as_str()),
        (Some("postgres://postgres:***@127.0.0.1:5432/test"), Some("stored in the store, encrypted")),
        "{v}"
    );
    let (_, audit, text) = t.call(4, Method::GET, "/audit?limit=1", None).await;
    assert_eq!(audit[0]["action"], "segment.add");
    t.assert_no_secret(4, "GET /audit", &text);
    let (got, v, _) = t
        .call(4, Method::POST, "/segments", Some(json!({ "name": "pw-file", "source": "csv:/x.csv", "password": "p" })))
        .await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // A segment made on the host from elsewhere cannot be changed over HTTP to read more than it did.
    let (got, v, _) =
        t.call(4, Method::PATCH, "/segments/vip", Some(json!({ "skip_check": true, "query": "x" }))).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    // Contributors see the columns and sizes, never the source.
    let (got, v, text) = t.call(2, Method::GET, "/segments/ok", None).await;
    assert_eq!(got, StatusCode::OK, "{v}");
    t.assert_no_secret(2, "GET /segments/ok", &text);
    assert_eq!((v["columns"].clone(), v["members"].clone()), (json!(["email", "tier"]), Value::Null), "{v}");
    std::fs::write(&inside, "email,tier\na@example.com,gold\nb@example.com,gold\n").unwrap();
    let (_, v, _) = t.call(2, Method::GET, "/segments/ok?count=now", None).await;
    assert_eq!(v["members"], 2, "{v}");
    std::fs::remove_file(&inside).unwrap();
    let (_, v, text) = t.call(2, Method::GET, "/segments/ok", None).await;
    assert!(v["unreadable"].as_str().unwrap().contains("an administrator can see why"), "{v}");
    assert!(!text.contains("people.csv"), "{text}");
    let (_, v, _) = t.call(4, Method::GET, "/segments/ok", None).await;
    assert!(v["unreadable"].as_str().unwrap().contains("people.csv"), "admins see why: {v}");
    let (got, _, _) = t.call(2, Method::GET, "/segments/ok?count=later", None).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_user_edits_an_export_over_http_with_the_checks_of_export_edit() {
    let t = team().await;
    let (got, _, _) = t.call(3, Method::POST, "/exports", Some(export_body("team", "open"))).await;
    assert_eq!(got, StatusCode::CREATED);
    let change = json!({ "add_segments": ["s-2"], "add_fields": ["tier=Tier:string"], "null_fields": "skip" });
    let (got, v, _) = t.call(3, Method::PATCH, "/exports/team", Some(change.clone())).await;
    assert_eq!(got, StatusCode::OK, "{v}");
    let lists: Vec<&str> =
        v["export"]["lists"].as_array().unwrap().iter().map(|l| l["list_name"].as_str().unwrap()).collect();
    assert_eq!(lists, vec!["vip", "s-2"]);
    assert_eq!(v["export"]["fields"], json!([{ "column": "tier", "iterable_field": "Tier", "field_type": "string" }]));
    assert_eq!(v["export"]["null_fields"], "skip");
    for (body, says) in [
        (change, "already sends it"),
        (json!({ "remove_segments": ["nope"] }), "does not send it"),
        (json!({ "add_fields": ["missing"] }), "ask an administrator to check the segment"),
        (json!({ "schedule": "every tuesday" }), "--schedule"),
        (json!({ "on_leave": "sometimes" }), "on_leave"),
        (json!({}), "nothing to change"),
    ] {
        let (got, v, text) = t.call(3, Method::PATCH, "/exports/team", Some(body.clone())).await;
        assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(says), "{body}: {v}");
        t.assert_no_secret(3, "PATCH /exports/team", &text);
    }
    let (got, _, _) = t.call(2, Method::PATCH, "/exports/team", Some(json!({ "schedule": "off" }))).await;
    assert_eq!(got, StatusCode::NOT_FOUND, "another contributor cannot tell it exists");
    let (_, audit, _) = t.call(4, Method::GET, "/audit?user=carl&limit=1", None).await;
    assert_eq!(audit[0]["action"], "export.edit");
    assert_eq!(run_to_end(&t, 3, "team", json!({})).await["status"], "succeeded");
    // Once members are on its lists, another identity column would make each a leaver and a joiner: refused.
    let (got, v, _) = t.call(3, Method::PATCH, "/exports/team", Some(json!({ "email_field": "tier" }))).await;
    assert_eq!(got, StatusCode::CONFLICT, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("would change who the members"), "{v}");
    let (got, v, _) = t.call(3, Method::PATCH, "/exports/team", Some(json!({ "existing_users_only": true }))).await;
    assert_eq!((got, v["export"]["existing_users_only"].clone()), (StatusCode::OK, json!(true)), "{v}");
    t.stop().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_router_turns_away_are_answered_in_the_apis_error_shape_too() {
    let t = team().await;
    let admin = t.tokens[4].clone();
    // A path that does not parse, a query that does not, a method a path does not take: 422, 422, 405.
    let cases = [
        (Method::GET, "/runs/abc", StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        (Method::GET, "/runs?limit=-1", StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        (Method::PUT, "/segments", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ];
    for (method, path, status, kind) in cases {
        let (got, v, text) = t.call_with(admin.as_deref(), method.clone(), path, None).await;
        assert_eq!((got, v["error"]["kind"].as_str()), (status, Some(kind)), "{method} {path}: {text}");
        assert!(v["error"]["message"].is_string(), "{text}");
    }
    // A body over the limit: 413, before anything is read or saved.
    let huge = format!("{{\"name\": \"{}\"}}", "a".repeat(3_000_000));
    let resp = reqwest::Client::new()
        .post(format!("{}/segments", t.base))
        .bearer_auth(admin.as_deref().unwrap())
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["kind"], "too_large", "{v}");
    let (_, segments, _) = t.call(4, Method::GET, "/segments", None).await;
    assert!(segments.as_array().unwrap().iter().all(|s| s["name"].as_str().unwrap().len() < 100), "nothing saved");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contributors_run_list_is_filtered_to_their_exports_before_the_limit_is_applied() {
    let t = team().await;
    let (admin, carl, dora) = (4, 3, 2);
    let (got, _, _) = t.call(carl, Method::POST, "/exports", Some(export_body("carls", "open"))).await;
    assert_eq!(got, StatusCode::CREATED);
    let carls_first = run_to_end(&t, carl, "carls", json!({})).await;
    let carls_second = run_to_end(&t, carl, "carls", json!({})).await;
    // The administrator's export then runs more often than the limit asked for: all newer than carl's runs.
    let (got, _, _) = t.call(admin, Method::POST, "/exports", Some(export_of("anns", "closed", "s-2"))).await;
    assert_eq!(got, StatusCode::CREATED);
    for _ in 0..5 {
        assert_eq!(run_to_end(&t, admin, "anns", json!({})).await["status"], "succeeded");
    }
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect::<Vec<_>>();
    let (got, listed, _) = t.call(carl, Method::GET, "/runs?limit=5", None).await;
    assert_eq!(got, StatusCode::OK, "{listed}");
    assert_eq!(ids(&listed), [carls_second["id"].as_i64().unwrap(), carls_first["id"].as_i64().unwrap()], "{listed}");
    let (_, listed, _) = t.call(carl, Method::GET, "/runs?limit=1", None).await;
    assert_eq!(ids(&listed), [carls_second["id"].as_i64().unwrap()], "the limit counts carl's runs: {listed}");
    let (_, listed, _) = t.call(dora, Method::GET, "/runs?limit=5", None).await;
    assert_eq!(listed, json!([]), "dora is an export user of nothing");
    let (_, listed, _) = t.call(admin, Method::GET, "/runs?limit=5", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 5, "an administrator sees everyone's: {listed}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_user_subscribes_an_export_to_the_channels_open_to_contributors_only() {
    let t = team().await;
    let (status, _, _) = t.call(3, Method::POST, "/exports", Some(export_body("carls", "open"))).await;
    assert_eq!(status, StatusCode::CREATED);
    for (name, usable_by) in [("team", "contributors"), ("oncall", "admins")] {
        let body = json!({ "name": name, "email": ["ops@example.com"], "usable_by": usable_by });
        let (status, created, text) = t.call(4, Method::POST, "/channels", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{text}");
        assert!(created.get("signing_secret").is_none(), "only webhooks are signed");
    }
    let (_, listed, _) = t.call(3, Method::GET, "/channels", None).await;
    assert_eq!(listed, json!([{ "name": "team", "kind": "email", "usable_by": "contributors" }]), "no addresses");
    let patch = |notify: &str| Some(json!({ "notify": [notify] }));
    let (status, body, _) = t.call(3, Method::PATCH, "/exports/carls", patch("oncall")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an admins' channel does not exist for carl: {body}");
    let (status, body, _) = t.call(3, Method::PATCH, "/exports/carls", patch("team:failed,exploded")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("'exploded' is not an event"), "{body}");
    let (status, body, _) = t.call(3, Method::PATCH, "/exports/carls", patch("team:failed,recovered")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["export"]["notify"], json!([{ "channel": "team", "events": ["failed", "recovered"] }]));
    let (status, _, _) = t.call(4, Method::PATCH, "/exports/carls", patch("oncall")).await;
    assert_eq!(status, StatusCode::OK, "an administrator may use any channel");
    let (_, seen_by_carl, _) = t.call(3, Method::GET, "/exports/carls", None).await;
    assert_eq!(seen_by_carl["notify"].as_array().unwrap().len(), 1, "carl sees the channel open to him only");
    let (_, seen_by_ann, _) = t.call(4, Method::GET, "/exports/carls", None).await;
    assert_eq!(seen_by_ann["notify"].as_array().unwrap().len(), 2);
    let (status, body, _) = t.call(3, Method::PATCH, "/exports/carls", Some(json!({ "no_notify": ["team"] }))).await;
    assert_eq!((status, body["export"]["notify"].clone()), (StatusCode::OK, json!([])), "{body}");
}

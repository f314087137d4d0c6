//! Accounts over the API (`/api/v1/users`, what the web console's Users screen calls), through the real daemon
//! binary: only administrators manage accounts, a new or rotated token is answered once and works, the old one stops
//! at once, a password reset ends the account's sessions, the last administrator can neither be removed nor made a
//! contributor over the API, every change is audited, and no answer or log line holds a password.

mod common;

use common::daemon::Daemon;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";

fn call(d: &Daemon, token: Option<&str>, method: Method, path: &str, body: Option<Value>) -> (u16, Value, String) {
    block_on(async {
        let mut r = reqwest::Client::new().request(method, format!("{}/api/v1{path}", d.status));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null), text)
    })
}

fn sign_in(d: &Daemon, user: &str, password: &str) -> (u16, String) {
    block_on(async {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/session", d.status))
            .json(&json!({ "user": user, "password": password }))
            .send()
            .await
            .unwrap();
        let cookie = r
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .unwrap_or_default();
        (r.status().as_u16(), cookie)
    })
}

fn with_cookie(d: &Daemon, cookie: &str) -> u16 {
    block_on(async {
        let r = reqwest::Client::new().get(format!("{}/api/v1/me", d.status)).header("Cookie", cookie).send().await;
        r.unwrap().status().as_u16()
    })
}

#[test]
fn accounts_are_managed_by_administrators_over_the_api_with_tokens_once_and_the_last_admin_kept() {
    let daemon =
        "\n[daemon]\nstatus_listen = \"127.0.0.1:0\"\ntrigger_dir = \"triggers\"\nrefresh_schedule = \"0 0 0 1 1 *\"\n";
    let env = Env::with_config(opts(), daemon);
    let ann = env.json(&["user", "add", "ann", "--role", "admin"])["token"].as_str().unwrap().to_string();
    let carl = env.json(&["user", "add", "carl", "--role", "contributor"])["token"].as_str().unwrap().to_string();
    let d = Daemon::start(&env);

    // Contributors and strangers manage no account.
    for (who, token, expected) in [("nobody", None, 401), ("carl", Some(carl.as_str()), 403)] {
        let cases = [
            (Method::GET, "/users", None),
            (Method::GET, "/users/ann", None),
            (Method::POST, "/users", Some(json!({ "name": "eve", "role": "admin" }))),
            (Method::PATCH, "/users/carl", Some(json!({ "role": "admin" }))),
            (Method::POST, "/users/carl/password", Some(json!({ "password": PASSWORD }))),
            (Method::POST, "/users/ann/token", None),
            (Method::DELETE, "/users/ann", None),
        ];
        for (method, path, body) in cases {
            let (status, _, text) = call(&d, token, method.clone(), path, body);
            assert_eq!(status, expected, "{who}: {method} {path}: {text}");
        }
    }
    let names = |v: &Value| -> Vec<String> {
        v.as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap().to_string()).collect()
    };
    let (_, users, _) = call(&d, Some(&ann), Method::GET, "/users", None);
    assert_eq!(names(&users), vec!["ann", "carl"], "a refused request changed the accounts");

    // An admin adds dora: her token is in the answer once and works.
    let (status, added, text) =
        call(&d, Some(&ann), Method::POST, "/users", Some(json!({ "name": "dora", "role": "contributor" })));
    assert_eq!(status, 201, "{text}");
    let dora = added["token"].as_str().unwrap().to_string();
    let (status, me, _) = call(&d, Some(&dora), Method::GET, "/me", None);
    assert_eq!((status, me["name"].as_str()), (200, Some("dora")));
    let (_, shown, text) = call(&d, Some(&ann), Method::GET, "/users/dora", None);
    assert!(!text.contains(&dora) && shown["role"] == "contributor", "the token is shown again: {text}");
    let (status, _, text) = call(&d, Some(&ann), Method::POST, "/users", Some(json!({ "name": "dora", "role": "x" })));
    assert_eq!(status, 422, "an unknown role: {text}");
    let (status, _, text) =
        call(&d, Some(&ann), Method::POST, "/users", Some(json!({ "name": "dora", "role": "admin" })));
    assert_eq!(status, 409, "a second dora: {text}");

    // A password, then a reset: the reset ends the sessions signed in with the old one.
    let (status, _, text) =
        call(&d, Some(&ann), Method::POST, "/users/dora/password", Some(json!({ "password": "short" })));
    assert_eq!(status, 422, "a short password: {text}");
    assert!(!text.contains("short\""), "the answer quotes the password: {text}");
    let (status, _, _) =
        call(&d, Some(&ann), Method::POST, "/users/dora/password", Some(json!({ "password": PASSWORD })));
    assert_eq!(status, 200);
    let (status, cookie) = sign_in(&d, "dora", PASSWORD);
    assert_eq!(status, 200);
    assert_eq!(with_cookie(&d, &cookie), 200);
    let new_password = "another long passphrase";
    call(&d, Some(&ann), Method::POST, "/users/dora/password", Some(json!({ "password": new_password })));
    assert_eq!(with_cookie(&d, &cookie), 401, "a session outlived its password");
    assert_eq!(sign_in(&d, "dora", PASSWORD).0, 401, "the old password still signs in");
    assert_eq!(sign_in(&d, "dora", new_password).0, 200);

    // Rotating: the new token works, the old one stops at once.
    let (status, rotated, _) = call(&d, Some(&ann), Method::POST, "/users/dora/token", None);
    assert_eq!(status, 200);
    let fresh = rotated["token"].as_str().unwrap();
    assert_eq!(call(&d, Some(&dora), Method::GET, "/me", None).0, 401, "the rotated-away token works");
    assert_eq!(call(&d, Some(fresh), Method::GET, "/me", None).0, 200);

    // Roles: dora becomes an admin and manages accounts; ann is then not the last admin and may step down, but
    // dora, the last one, may neither step down nor be removed.
    let (status, changed, _) = call(&d, Some(&ann), Method::PATCH, "/users/dora", Some(json!({ "role": "admin" })));
    assert_eq!((status, changed["role"].as_str()), (200, Some("admin")));
    assert_eq!(call(&d, Some(fresh), Method::GET, "/users", None).0, 200);
    let (status, _, _) = call(&d, Some(fresh), Method::PATCH, "/users/ann", Some(json!({ "role": "contributor" })));
    assert_eq!(status, 200);
    let (status, _, text) = call(&d, Some(fresh), Method::PATCH, "/users/dora", Some(json!({ "role": "contributor" })));
    assert_eq!(status, 409, "the last admin stepped down: {text}");
    assert!(text.contains("last administrator"), "{text}");
    let (status, _, text) = call(&d, Some(fresh), Method::DELETE, "/users/dora", None);
    assert_eq!(status, 409, "the last admin was removed: {text}");
    let (status, _, _) = call(&d, Some(fresh), Method::DELETE, "/users/carl", None);
    assert_eq!(status, 200);
    assert_eq!(call(&d, Some(&carl), Method::GET, "/me", None).0, 401, "a removed account's token works");
    // The host's operator is the administrator of last resort: the CLI may still do it.
    env.ok(&["user", "role", "dora", "contributor"]);

    // Every change is audited with who did it; no password reached an answer, the audit or the log.
    let audit = env.json(&["audit", "--limit", "100"]);
    let rows: Vec<(String, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
            (s("actor"), s("action"), s("target"))
        })
        .collect();
    for expected in [
        ("ann", "user.add", "dora"),
        ("ann", "user.password", "dora"),
        ("ann", "user.token.rotate", "dora"),
        ("ann", "user.role", "dora"),
        ("dora", "user.role", "ann"),
        ("dora", "user.remove", "carl"),
    ] {
        let expected = (expected.0.to_string(), expected.1.to_string(), expected.2.to_string());
        assert!(rows.contains(&expected), "no audit row {expected:?} in {rows:?}");
    }
    let everything = format!("{audit}{}", d.logs());
    for secret in [PASSWORD, new_password, &dora, fresh] {
        assert!(!everything.contains(secret), "a secret reached the audit or the log");
    }
}

//! The web console's session and the listener's transport, through the real daemon binary: sign-in and sign-out
//! with the cookie's attributes, CSRF refusals, wrong passwords audited and throttled, expiry, plain HTTP refused off
//! loopback (and `validate` saying why), HTTPS with a certificate made here, and `/metrics` and `/status` kept for
//! administrators off loopback. No password, token or session id shows in any log line or response body.

mod common;

use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;
use reqwest::header::{HeaderMap, COOKIE, ORIGIN, SET_COOKIE};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";

/// An env whose daemon listens on `listen`, with `extra` lines in `[daemon]`; accounts ann (admin, with
/// `PASSWORD`) and carl (contributor, no password). Returns their tokens.
fn team(listen: &str, extra: &str) -> (Env, String, String) {
    let daemon = format!(
        "\n[daemon]\nstatus_listen = \"{listen}\"\ntrigger_dir = \"triggers\"\nrefresh_schedule = \"0 0 0 1 1 *\"\n{extra}"
    );
    let env = Env::with_config(opts(), &daemon);
    let ann = env.json(&["user", "add", "ann", "--role", "admin"])["token"].as_str().unwrap().to_string();
    let carl = env.json(&["user", "add", "carl", "--role", "contributor"])["token"].as_str().unwrap().to_string();
    set_password(&env);
    (env, ann, carl)
}

fn set_password(env: &Env) {
    env.cmd()
        .args(["user", "password", "ann", "--password-stdin"])
        .write_stdin(format!("{PASSWORD}\n"))
        .assert()
        .success();
}

/// A status, the headers and the body of an answer.
struct Answer {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    fn set_cookie(&self) -> String {
        self.headers.get(SET_COOKIE).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
    }
}

fn send(request: reqwest::RequestBuilder) -> Answer {
    block_on(async {
        let r = request.send().await.unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        Answer { status, headers, text: r.text().await.unwrap() }
    })
}

/// A browser's view of the service: where it is, the page's origin, and the session it holds.
struct Browser {
    client: reqwest::Client,
    base: String,
    origin: String,
    cookie: Option<String>,
    csrf: Option<String>,
}

impl Browser {
    fn new(client: reqwest::Client, root: &str) -> Browser {
        Browser { client, base: format!("{root}/api/v1"), origin: root.to_string(), cookie: None, csrf: None }
    }

    fn sign_in(&mut self, user: &str, password: &str) -> Answer {
        let body = json!({ "user": user, "password": password });
        let mut request = self.client.post(format!("{}/session", self.base)).header(ORIGIN, &self.origin);
        if let Some(c) = &self.cookie {
            request = request.header(COOKIE, c);
        }
        let answer = send(request.json(&body));
        if answer.status == 200 {
            self.cookie = Some(answer.set_cookie().split(';').next().unwrap().to_string());
            self.csrf = answer.json()["csrf_token"].as_str().map(str::to_string);
        }
        answer
    }

    /// Another browser holding the same session.
    fn clone_session(&self) -> Browser {
        Browser {
            client: self.client.clone(),
            base: self.base.clone(),
            origin: self.origin.clone(),
            cookie: self.cookie.clone(),
            csrf: self.csrf.clone(),
        }
    }

    /// The session id the cookie holds.
    fn session_id(&self) -> String {
        self.cookie.as_ref().unwrap().split_once('=').unwrap().1.to_string()
    }

    /// A request with the cookie, and with the given Origin and CSRF token headers.
    fn request(&self, method: reqwest::Method, path: &str, origin: Option<&str>, csrf: Option<&str>) -> Answer {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            r = r.header(COOKIE, c);
        }
        if let Some(o) = origin {
            r = r.header(ORIGIN, o);
        }
        if let Some(t) = csrf {
            r = r.header("X-CSRF-Token", t);
        }
        send(r)
    }

    fn get(&self, path: &str) -> Answer {
        self.request(reqwest::Method::GET, path, None, None)
    }

    /// A change as the console makes it: the cookie, this page's Origin and the session's CSRF token.
    fn change(&self, method: reqwest::Method, path: &str) -> Answer {
        self.request(method, path, Some(&self.origin), self.csrf.as_deref())
    }
}

fn assert_no_secret(what: &str, haystack: &str, secrets: &[&str]) {
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(!haystack.contains(s), "{what} holds a secret ({}…): {haystack}", &s[..6.min(s.len())]);
    }
}

fn audit(env: &Env) -> Vec<Value> {
    env.json(&["audit", "--limit", "200"]).as_array().unwrap().clone()
}

#[test]
fn a_person_signs_in_works_with_the_cookie_and_signs_out_and_every_change_needs_the_origin_and_the_csrf_token() {
    let (env, ann, _) = team("127.0.0.1:0", "");
    let daemon = Daemon::start(&env);
    let mut browser = Browser::new(reqwest::Client::new(), &daemon.status);

    let mut evil = Browser::new(reqwest::Client::new(), &daemon.status);
    evil.origin = "http://evil.example".into();
    assert_eq!(evil.sign_in("ann", PASSWORD).status, 403, "a sign-in posted by another site");

    let signed_in = browser.sign_in("ann", PASSWORD);
    assert_eq!(signed_in.status, 200, "{}", signed_in.text);
    let body = signed_in.json();
    assert_eq!(body["user"], json!({ "name": "ann", "role": "admin" }));
    let csrf = browser.csrf.clone().expect("a CSRF token");
    let cookie = signed_in.set_cookie();
    let id = browser.session_id();
    assert!(cookie.starts_with("segment_exporter_session="), "{cookie}");
    assert_eq!(id.len(), 43, "256 random bits, base64url: {cookie}");
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).skip(1).collect();
    for wanted in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(attributes.contains(&wanted), "{wanted} missing from {cookie}");
    }
    assert!(!attributes.contains(&"Secure"), "plain HTTP on loopback: a Secure cookie would not come back");
    assert_eq!(signed_in.headers.get("cache-control").unwrap(), "no-store");
    assert_no_secret("the sign-in answer", &signed_in.text, &[PASSWORD, &id]);

    let me = browser.get("/me");
    assert_eq!((me.status, me.json()["name"].clone()), (200, json!("ann")), "{}", me.text);
    let session = browser.get("/session");
    assert_eq!(session.status, 200);
    assert_eq!(session.json()["csrf_token"], json!(csrf), "a reloaded page gets the same token");

    // A change with the cookie: through only with this site's Origin and the token. The body is wrong on purpose:
    // 422 means the request got past authentication and CSRF.
    use reqwest::Method;
    let post = |origin: Option<&str>, token: Option<&str>| {
        let mut r =
            browser.client.post(format!("{}/exports", browser.base)).header(COOKIE, browser.cookie.as_ref().unwrap());
        if let Some(o) = origin {
            r = r.header(ORIGIN, o);
        }
        if let Some(t) = token {
            r = r.header("X-CSRF-Token", t);
        }
        send(r.json(&json!({ "name": 1 })))
    };
    let ours = browser.origin.clone();
    assert_eq!(post(Some(&ours), Some(&csrf)).status, 422);
    for (why, origin, token) in [
        ("from another site", Some("http://evil.example"), Some(csrf.as_str())),
        ("from another port of this host", Some("http://127.0.0.1:1"), Some(csrf.as_str())),
        ("without the CSRF header", Some(ours.as_str()), None),
        ("with another session's token", Some(ours.as_str()), Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")),
        ("saying nowhere where it comes from", None, Some(csrf.as_str())),
    ] {
        let refused = post(origin, token);
        assert_eq!(refused.status, 403, "a change {why}: {}", refused.text);
        assert_eq!(refused.json()["error"]["kind"], "csrf", "{why}");
    }
    let referer = send(
        browser
            .client
            .post(format!("{}/exports", browser.base))
            .header(COOKIE, browser.cookie.as_ref().unwrap())
            .header("Referer", format!("{ours}/exports"))
            .header("X-CSRF-Token", &csrf)
            .json(&json!({ "name": 1 })),
    );
    assert_eq!(referer.status, 422, "without an Origin, the Referer says where it comes from");
    let bearer = send(
        reqwest::Client::new().post(format!("{}/exports", browser.base)).bearer_auth(&ann).json(&json!({ "name": 1 })),
    );
    assert_eq!(bearer.status, 422, "a token needs no CSRF token: {}", bearer.text);

    let before = browser.clone_session();
    assert_eq!(browser.sign_in("ann", PASSWORD).status, 200);
    assert_ne!(browser.session_id(), id, "a sign-in starts from a fresh session id");
    assert_eq!(before.get("/me").status, 401, "the session the browser held before ended");
    assert_eq!(env.store_i64("SELECT COUNT(*) FROM sessions"), 1);

    assert_eq!(browser.request(Method::DELETE, "/session", Some(&ours), None).status, 403);
    let out = browser.change(Method::DELETE, "/session");
    assert_eq!(out.status, 204, "{}", out.text);
    assert!(out.set_cookie().contains("Max-Age=0"), "the cookie is cleared: {}", out.set_cookie());
    assert_eq!(env.store_i64("SELECT COUNT(*) FROM sessions"), 0, "signed out on the server too");
    let after = browser.get("/me");
    assert_eq!(after.status, 401, "the old cookie no longer works: {}", after.text);

    let rows = audit(&env);
    for action in ["session.sign_in", "session.sign_out"] {
        let row = rows.iter().find(|r| r["action"] == action).unwrap_or_else(|| panic!("no {action}: {rows:?}"));
        assert_eq!((row["actor"].as_str(), row["origin"].as_str()), (Some("ann"), Some("api 127.0.0.1")), "{row}");
    }
    let secrets = [PASSWORD, id.as_str(), csrf.as_str(), ann.splitn(3, '_').nth(2).unwrap()];
    assert_no_secret("the audit", &serde_json::to_string(&rows).unwrap(), &secrets);
    assert_no_secret("the daemon's log", &daemon.logs(), &secrets);
    assert_no_secret("the stored sessions", &std::fs::read_to_string(env.path("store.db")).unwrap_or_default(), &[&id]);
}

#[test]
fn wrong_passwords_are_refused_alike_audited_without_the_typed_name_and_throttled_for_the_account_and_client() {
    let (env, _, carl) = team("127.0.0.1:0", "");
    let daemon = Daemon::start(&env);
    let mut browser = Browser::new(reqwest::Client::new(), &daemon.status);
    // People type their password into the name field: such a name must not be kept anywhere.
    let typed_as_name = "Tr0ub4dor&3-typed-into-the-name-field";
    let unknown = browser.sign_in(typed_as_name, "whatever it is");
    let wrong = browser.sign_in("ann", "not the password at all");
    let no_password = browser.sign_in("carl", "carl has none set");
    for a in [&unknown, &wrong, &no_password] {
        assert_eq!(a.status, 401, "{}", a.text);
        assert_eq!(a.json(), wrong.json(), "every failure reads alike, revealing no account");
        assert!(a.set_cookie().is_empty());
    }

    let mut refused = 1;
    let started = Instant::now();
    let throttled = loop {
        let a = browser.sign_in("ann", "still not the password");
        if a.status == 429 {
            break a;
        }
        assert_eq!(a.status, 401, "{}", a.text);
        refused += 1;
        // 20 at once, then one more for each 3 s that passed (a slow machine's attempts take a while).
        let allowance = 20 + started.elapsed().as_secs() as usize / 3 + 2;
        assert!(refused <= allowance, "never throttled after {refused} wrong passwords");
    };
    assert!(refused >= 20, "throttled after only {refused} wrong passwords");
    assert_eq!(throttled.json()["error"]["kind"], "too_many_attempts");
    assert_eq!(browser.sign_in("ann", PASSWORD).status, 429, "while throttled, not even the right password is tried");
    let mut elsewhere = Browser::new(client_from([127, 0, 0, 2]), &daemon.status);
    assert_eq!(elsewhere.sign_in("ann", PASSWORD).status, 200, "from another client, ann signs in");
    let me = send(reqwest::Client::new().get(format!("{}/me", browser.base)).bearer_auth(&carl));
    assert_eq!(me.status, 200, "another account from the same address still gets in");

    let rows = audit(&env);
    let failed: Vec<&Value> = rows.iter().filter(|r| r["action"] == "session.sign_in.failed").collect();
    let anns: Vec<&&Value> = failed.iter().filter(|r| r["actor"] == "ann").collect();
    assert_eq!(anns.len(), 1, "one row a minute for ann from this client: {anns:?}");
    assert_eq!(anns[0]["count"], refused, "counting each wrong password, not the 429s");
    assert!(failed.iter().all(|r| r["origin"] == "api 127.0.0.1"), "{failed:?}");
    assert!(failed.iter().any(|r| r["actor"] == "carl"), "an account without a password: {failed:?}");
    let unknown_row = failed.iter().find(|r| r["actor"] == "unknown").expect("the unknown name's attempt");
    assert_eq!(unknown_row["detail"], "no such account");
    let everything = format!("{}\n{}", serde_json::to_string(&rows).unwrap(), daemon.logs());
    assert_no_secret(
        "the audit and the log",
        &everything,
        &[typed_as_name, PASSWORD, "not the password", "carl has none"],
    );
}

#[test]
fn a_session_ends_when_idle_at_its_lifetime_however_busy_and_when_the_password_changes() {
    let (env, _, _) = team("127.0.0.1:0", "session_idle_timeout = \"2s\"\nsession_lifetime = \"8s\"\n");
    let daemon = Daemon::start(&env);
    let client = reqwest::Client::new();

    let mut idle = Browser::new(client.clone(), &daemon.status);
    assert_eq!(idle.sign_in("ann", PASSWORD).status, 200);
    assert_eq!(idle.get("/me").status, 200);
    std::thread::sleep(Duration::from_millis(2500));
    let ended = idle.get("/me");
    assert_eq!(ended.status, 401, "idle for longer than session_idle_timeout: {}", ended.text);
    assert!(ended.text.contains("session has ended"), "{}", ended.text);

    let mut busy = Browser::new(client.clone(), &daemon.status);
    assert_eq!(busy.sign_in("ann", PASSWORD).status, 200);
    // After the answer: the session's lifetime started before it.
    let start = Instant::now();
    // Past the idle timeout twice over, well within the lifetime (8 s, however slow a request is here).
    while start.elapsed() < Duration::from_millis(4500) {
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(busy.get("/me").status, 200, "in use, so not idle, at {:?}", start.elapsed());
    }
    std::thread::sleep(Duration::from_millis(8600).saturating_sub(start.elapsed()));
    assert_eq!(busy.get("/me").status, 401, "past session_lifetime, however busy");

    let mut changed = Browser::new(client.clone(), &daemon.status);
    assert_eq!(changed.sign_in("ann", PASSWORD).status, 200);
    set_password(&env);
    assert_eq!(changed.get("/me").status, 401, "a new password signs everyone out");

    let mut forged = Browser::new(client, &daemon.status);
    forged.cookie = Some(format!("segment_exporter_session={}", "A".repeat(43)));
    assert_eq!(forged.get("/me").status, 401, "an invented session id");
    assert_eq!(env.store_i64("SELECT COUNT(*) FROM sessions"), 0, "ended sessions are gone from the store");
}

#[test]
fn off_loopback_plain_http_is_refused_unless_allowed_and_then_metrics_and_status_need_an_admins_or_the_metrics_token() {
    let metrics_token = "4f1c0de5a11ce0ff1ce4f1c0de5a11ce0ff1ce00";
    let (env, ann, carl) = team("0.0.0.0:0", "allow_plain_http = true\nmetrics_token_file = \"metrics.token\"\n");
    std::fs::write(env.path("metrics.token"), format!("{metrics_token}\n")).unwrap();
    let allowed = std::fs::read_to_string(env.path("config.toml")).unwrap();
    std::fs::write(env.path("config.toml"), allowed.replace("allow_plain_http = true\n", "")).unwrap();
    for command in ["validate", "daemon"] {
        let out = env.cmd().arg(command).timeout(Duration::from_secs(30)).output().unwrap();
        assert_eq!(out.status.code(), Some(78), "{command}: {}", text(&out.stderr));
        let err = text(&out.stderr);
        for says in ["'0.0.0.0:0' is not a loopback address", "daemon.tls_cert", "daemon.allow_plain_http = true"] {
            assert!(err.contains(says), "{command} does not say {says:?}: {err}");
        }
    }

    std::fs::write(env.path("config.toml"), allowed).unwrap();
    let validated = text(&env.ok(&["validate"]).stdout);
    assert!(
        validated.contains("plain HTTP on 0.0.0.0:0, off loopback: allowed by daemon.allow_plain_http"),
        "{validated}"
    );
    assert!(validated.contains("no daemon.trusted_proxies: behind a proxy"), "{validated}");

    let daemon = Daemon::start(&env);
    let client = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut r = client.get(format!("{}{path}", daemon.status));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        send(r)
    };
    assert_eq!((get("/healthz", None).status, get("/readyz", None).status), (200, 200), "health stays open");
    for path in ["/metrics", "/status"] {
        assert_eq!(get(path, None).status, 401, "{path} without a token off loopback");
        assert_eq!(get(path, Some(&carl)).status, 403, "{path} for a contributor");
        let admin = get(path, Some(&ann));
        assert_eq!(admin.status, 200, "{path} for an admin: {}", admin.text);
        let scraper = get(path, Some(metrics_token));
        assert_eq!(scraper.status, 200, "{path} with the metrics token: {}", scraper.text);
    }
    assert!(get("/metrics", Some(metrics_token)).text.contains("segment_exporter_"));
    let api = get("/api/v1/me", Some(metrics_token));
    assert_eq!(api.status, 401, "the metrics token reads metrics, and nothing of the API");
    assert_no_secret("the daemon's log", &daemon.logs(), &[metrics_token, ann.splitn(3, '_').nth(2).unwrap()]);
}

#[test]
fn with_a_certificate_the_daemon_serves_https_only_and_the_session_cookie_is_secure_and_host_only() {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (made.cert.pem(), made.signing_key.serialize_pem());
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    let tls = format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", cert.display(), key.display());
    let (env, ann, _) = team("0.0.0.0:0", &tls);
    let validated = text(&env.ok(&["validate"]).stdout);
    assert!(validated.contains("HTTPS on 0.0.0.0:0"), "{validated}");

    let daemon = Daemon::start(&env);
    assert!(daemon.https, "{}", daemon.logs());
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], daemon.port));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", local)
        .build()
        .unwrap();
    let root = format!("https://localhost:{}", daemon.port);
    let health = send(client.get(format!("{root}/healthz")));
    assert_eq!((health.status, health.text.as_str()), (200, "ok\n"));

    let stranger = reqwest::Client::builder().resolve("localhost", local).build().unwrap();
    let untrusted = block_on(stranger.get(format!("{root}/healthz")).send());
    assert!(untrusted.is_err(), "a client that does not trust the certificate gets no answer");
    let plain = block_on(reqwest::Client::new().get(format!("http://{local}/healthz")).send());
    assert!(plain.map(|r| r.status().as_u16()).unwrap_or(0) != 200, "plain HTTP is not served");

    let mut browser = Browser::new(client.clone(), &root);
    let signed_in = browser.sign_in("ann", PASSWORD);
    assert_eq!(signed_in.status, 200, "{}", signed_in.text);
    let cookie = signed_in.set_cookie();
    assert!(cookie.starts_with("__Host-segment_exporter_session="), "{cookie}");
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).skip(1).collect();
    for wanted in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(attributes.contains(&wanted), "{wanted} missing from {cookie}");
    }
    assert!(!cookie.contains("Domain"), "{cookie}");
    assert_eq!(browser.get("/me").status, 200);
    assert_eq!(browser.change(reqwest::Method::DELETE, "/session").status, 204);

    assert_eq!(send(client.get(format!("{root}/metrics"))).status, 401, "off loopback");
    assert_eq!(send(client.get(format!("{root}/metrics")).bearer_auth(&ann)).status, 200);

    let health = env.ok(&["healthcheck", "--addr", &local.to_string()]);
    assert!(text(&health.stdout).contains("healthy"));
    assert_no_secret("the daemon's log", &daemon.logs(), &[PASSWORD, &browser.session_id(), &key_pem[40..100]]);
}

/// A client that goes through a reverse proxy on this host: every request carries what the proxy adds.
/// A client whose connections come from `address` (a loopback address other than 127.0.0.1: another client).
fn client_from(address: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder().local_address(std::net::IpAddr::from(address)).build().unwrap()
}

fn behind_proxy(client_address: &str) -> reqwest::Client {
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-for", client_address.parse().unwrap());
    h.insert("x-forwarded-proto", "https".parse().unwrap());
    h.insert("x-forwarded-host", "exports.example.com".parse().unwrap());
    reqwest::Client::builder().default_headers(h).build().unwrap()
}

#[test]
fn behind_a_trusted_proxy_the_client_its_https_and_its_host_come_from_the_proxys_headers() {
    let proxy = "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\npublic_hosts = [\"exports.example.com\"]\n";
    let (env, ann, _) = team("127.0.0.1:0", proxy);
    let validated = text(&env.ok(&["validate"]).stdout);
    assert!(validated.contains("believed from daemon.trusted_proxies (127.0.0.1, 10.0.0.0/8)"), "{validated}");
    let daemon = Daemon::start(&env);
    // A browser on https://exports.example.com, which nginx on this host passes to the daemon over plain HTTP.
    let mut browser = Browser::new(behind_proxy("203.0.113.9"), &daemon.status);
    browser.origin = "https://exports.example.com".into();
    let signed_in = browser.sign_in("ann", PASSWORD);
    assert_eq!(signed_in.status, 200, "the Origin matches the host the proxy reports: {}", signed_in.text);
    let cookie = signed_in.set_cookie();
    assert!(cookie.starts_with("__Host-segment_exporter_session="), "the browser is on HTTPS: {cookie}");
    assert!(cookie.split(';').map(str::trim).any(|a| a == "Secure"), "{cookie}");
    assert_eq!(browser.get("/me").status, 200, "the __Host- cookie is read back");
    assert_eq!(browser.change(reqwest::Method::DELETE, "/session").status, 204, "signed out through the proxy");
    let rows = audit(&env);
    let origins: Vec<&Value> =
        rows.iter().filter(|r| r["action"].as_str().unwrap().starts_with("session.")).map(|r| &r["origin"]).collect();
    assert_eq!(origins, [&json!("api 203.0.113.9"), &json!("api 203.0.113.9")], "the client, not the proxy");

    // Wrong tokens from one client behind the proxy block that client, not everyone the proxy serves.
    let api = format!("{}/api/v1/me", daemon.status);
    let attacker = behind_proxy("198.51.100.66");
    let mut tries = 0;
    while send(attacker.get(&api).bearer_auth(format!("guess-{tries}"))).status != 429 {
        tries += 1;
        assert!(tries <= 60, "never throttled");
    }
    assert_eq!(send(attacker.get(&api).bearer_auth(&ann)).status, 429, "the attacker's address is blocked");
    assert_eq!(send(behind_proxy("203.0.113.9").get(&api).bearer_auth(&ann)).status, 200, "its neighbours are not");
}

#[test]
fn forwarded_headers_from_a_peer_that_is_not_a_trusted_proxy_change_nothing() {
    let (env, _, _) = team("127.0.0.1:0", "");
    let daemon = Daemon::start(&env);
    let mut browser = Browser::new(behind_proxy("203.0.113.9"), &daemon.status);
    browser.origin = "https://exports.example.com".into();
    assert_eq!(browser.sign_in("ann", PASSWORD).status, 403, "a forged X-Forwarded-Host is no excuse for the Origin");
    browser.origin = daemon.status.clone();
    let signed_in = browser.sign_in("ann", PASSWORD);
    assert_eq!(signed_in.status, 200, "{}", signed_in.text);
    let cookie = signed_in.set_cookie();
    assert!(cookie.starts_with("segment_exporter_session=") && !cookie.contains("Secure"), "{cookie}");
    let rows = audit(&env);
    let sign_in = rows.iter().find(|r| r["action"] == "session.sign_in").unwrap();
    assert_eq!(sign_in["origin"], "api 127.0.0.1", "the peer, not what it claims: {sign_in}");
}

#[test]
fn a_person_sees_their_sessions_and_ends_one_and_an_admin_signs_anyone_out_everywhere() {
    let (env, _, carl_token) = team("127.0.0.1:0", "");
    env.cmd()
        .args(["user", "password", "carl", "--password-stdin"])
        .write_stdin(format!("{PASSWORD}\n"))
        .assert()
        .success();
    let daemon = Daemon::start(&env);
    let browser = |user: &str| {
        let mut b = Browser::new(reqwest::Client::new(), &daemon.status);
        assert_eq!(b.sign_in(user, PASSWORD).status, 200);
        b
    };
    // ann signs in at her desk and on her phone; carl on his laptop.
    let (desk, phone, laptop) = (browser("ann"), browser("ann"), browser("carl"));
    let listed = desk.get("/users/ann/sessions").json();
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed.iter().filter(|s| s["current"] == true).count(), 1, "the desk's own session is marked");
    assert!(listed.iter().all(|s| s["origin"] == "api 127.0.0.1" && s["expires_at"].is_string()), "{listed:?}");
    let phone_id = listed.iter().find(|s| s["current"] == false).unwrap()["id"].as_i64().unwrap();
    assert_no_secret("the session list", &serde_json::to_string(listed).unwrap(), &[&phone.session_id()]);

    // Her phone is lost: she ends that session from her desk; the desk stays signed in.
    let ended = desk.change(reqwest::Method::DELETE, &format!("/users/ann/sessions/{phone_id}"));
    assert_eq!((ended.status, ended.json()["ended"].clone()), (200, json!(1)), "{}", ended.text);
    assert_eq!(phone.get("/me").status, 401, "the phone is signed out");
    assert_eq!(desk.get("/me").status, 200);

    // carl sees his own sessions, not ann's (they do not exist to him), and cannot end hers.
    assert_eq!(laptop.get("/users/carl/sessions").json().as_array().map(Vec::len), Some(1));
    let hers = laptop.get("/users/ann/sessions");
    assert_eq!(hers.status, 404, "{}", hers.text);
    assert_eq!(laptop.change(reqwest::Method::DELETE, "/users/ann/sessions").status, 404);
    assert_eq!(desk.get("/me").status, 200, "nothing of ann's ended");

    // An administrator signs carl out everywhere, from the CLI too; his token keeps working.
    let cli = env.json(&["user", "sessions", "carl"]);
    assert_eq!(cli.as_array().map(Vec::len), Some(1), "{cli}");
    let out = env.json(&["user", "sign-out", "carl"]);
    assert_eq!(out["ended"], 1, "{out}");
    assert_eq!(laptop.get("/me").status, 401, "carl's browser must sign in again");
    let me = send(reqwest::Client::new().get(format!("{}/me", desk.base)).bearer_auth(&carl_token));
    assert_eq!(me.status, 200, "the API token is not a session");
    let none = env.cmd().args(["user", "sessions", "carl"]).assert().success();
    assert!(String::from_utf8_lossy(&none.get_output().stdout).contains("not signed in"));
    let missing = env.run(&["--json", "user", "sign-out", "carl", "--session", &phone_id.to_string()]);
    assert_eq!(missing.status.code(), Some(1), "ann's phone session is not carl's");
    let missing: Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!(missing["error"]["kind"], "not_found", "{missing}");
    assert!(missing["error"]["message"].as_str().unwrap().contains(&format!("session {phone_id}")), "{missing}");

    let rows = audit(&env);
    let ends: Vec<(&Value, &Value, &Value)> = rows
        .iter()
        .filter(|r| r["action"] == "session.end")
        .map(|r| (&r["actor"], &r["target"], &r["detail"]))
        .collect();
    assert_eq!(ends.len(), 2, "{ends:?}");
    assert!(ends.iter().any(|(a, t, _)| **a == "ann" && **t == "ann"), "{ends:?}");
    assert!(ends
        .iter()
        .any(|(a, t, d)| a.as_str().unwrap().starts_with("local:") && **t == "carl" && **d == "all 1 session(s)"));
}

#[test]
fn a_configuration_reloaded_with_sighup_governs_the_api_at_once() {
    let (env, ann, _) = team("127.0.0.1:0", "");
    let allowed = env.path("segments");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::write(allowed.join("people.csv"), "email\nann@example.com\n").unwrap();
    let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    let with_dir = format!("{config}\n[sources]\nallowed_dirs = [\"{}\"]\n", allowed.display());
    std::fs::write(env.path("config.toml"), &with_dir).unwrap();
    let daemon = Daemon::start(&env);
    let api = format!("{}/api/v1", daemon.status);
    let add = |name: &str| {
        let body = json!({ "name": name, "source": format!("csv:{}", allowed.join("people.csv").display()) });
        send(reqwest::Client::new().post(format!("{api}/segments")).bearer_auth(&ann).json(&body))
    };
    assert_eq!(add("first").status, 201, "inside daemon.allowed_dirs");

    // The folder is taken off the list and the daemon told: the API refuses it from then on, and a proxy named
    // meanwhile is believed, for the public host named with it.
    let narrowed = with_dir.replace(&format!("allowed_dirs = [\"{}\"]", allowed.display()), "allowed_dirs = []");
    let narrowed = narrowed.replace(
        "[daemon]\n",
        "[daemon]\ntrusted_proxies = [\"127.0.0.1\"]\npublic_hosts = [\"exports.example.com\"]\n",
    );
    std::fs::write(env.path("config.toml"), narrowed).unwrap();
    daemon.signal("-HUP");
    daemon.wait_for_log("Configuration reloaded.", Duration::from_secs(30));
    let refused = add("second");
    assert_eq!(refused.status, 422, "{}", refused.text);
    assert!(refused.text.contains("allowed_dirs"), "{}", refused.text);
    let mut browser = Browser::new(behind_proxy("203.0.113.9"), &daemon.status);
    browser.origin = "https://exports.example.com".into();
    assert_eq!(browser.sign_in("ann", PASSWORD).status, 200);
    let rows = audit(&env);
    let sign_in = rows.iter().find(|r| r["action"] == "session.sign_in").unwrap();
    assert_eq!(sign_in["origin"], "api 203.0.113.9", "{sign_in}");
    assert!(!daemon.logs().contains("take effect at the next restart"), "{}", daemon.logs());
}

/// A client that trusts only `cert_pem` and finds `localhost` at `local`.
fn trusting(cert_pem: &str, local: std::net::SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", local)
        .build()
        .unwrap()
}

#[test]
fn a_certificate_renewed_on_disk_is_served_without_a_restart_and_a_broken_one_is_not() {
    let made = |name: &str| {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), name.to_string()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    };
    let (old_cert, old_key) = made("old.example");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &old_cert).unwrap();
    std::fs::write(&key, &old_key).unwrap();
    let tls =
        format!("tls_cert = \"{}\"\ntls_key = \"{}\"\nreload_interval = \"200ms\"\n", cert.display(), key.display());
    let (env, _, _) = team("127.0.0.1:0", &tls);
    let daemon = Daemon::start(&env);
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], daemon.port));
    let health =
        |client: &reqwest::Client| block_on(client.get(format!("https://localhost:{}/healthz", daemon.port)).send());
    assert!(health(&trusting(&old_cert, local)).is_ok_and(|r| r.status() == 200));

    // A renewal that went wrong (the key of another certificate): the old one goes on being served.
    let (new_cert, new_key) = made("new.example");
    std::fs::write(&cert, &new_cert).unwrap();
    daemon.wait_for_log("TLS certificate not reloaded", Duration::from_secs(30));
    assert!(health(&trusting(&old_cert, local)).is_ok_and(|r| r.status() == 200), "the old one still serves");

    // The key follows: the new pair is served to new connections, and the old one no longer is.
    std::fs::write(&key, &new_key).unwrap();
    daemon.wait_for_log("TLS certificate reloaded", Duration::from_secs(30));
    assert!(health(&trusting(&new_cert, local)).is_ok_and(|r| r.status() == 200), "{}", daemon.logs());
    assert!(health(&trusting(&old_cert, local)).is_err(), "the replaced certificate is still served");
    assert_no_secret("the daemon's log", &daemon.logs(), &[&old_key[40..100], &new_key[40..100]]);
}

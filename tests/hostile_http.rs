//! The listener against hostile clients, through the real daemon binary: a sign-in link whose `next` leads off
//! this origin (an open redirect), idle sockets beyond the descriptor limit (the daemon must neither stall nor
//! keep them), and requests addressed to a host name the service is not known by (DNS rebinding).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::*;
use reqwest::header::{COOKIE, HOST, LOCATION, ORIGIN, SET_COOKIE};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";

/// An env whose daemon listens on loopback, with `extra` lines in `[daemon]`, and admin ann (with `PASSWORD`).
/// Returns ann's token.
fn team(extra: &str) -> (Env, String) {
    let daemon = format!(
        "\n[daemon]\nstatus_listen = \"127.0.0.1:0\"\ntrigger_dir = \"triggers\"\ntrigger_poll_interval = \"500ms\"\n\
         refresh_schedule = \"0 0 0 1 1 *\"\n{extra}"
    );
    let env = Env::with_config(opts(), &daemon);
    let ann = env.json(&["user", "add", "ann", "--role", "admin"])["token"].as_str().unwrap().to_string();
    env.cmd()
        .args(["user", "password", "ann", "--password-stdin"])
        .write_stdin(format!("{PASSWORD}\n"))
        .assert()
        .success();
    (env, ann)
}

/// A client that follows no redirect, so that each answer is seen as sent.
fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

fn send(request: reqwest::RequestBuilder) -> Answer {
    block_on(async {
        let r = request.timeout(Duration::from_secs(30)).send().await.unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        Answer { status, headers, text: r.text().await.unwrap() }
    })
}

/// `/sign-in?next=NEXT`, `next` encoded as a link would carry it.
fn sign_in_link(next: &str) -> String {
    format!("/sign-in?next={}", url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>())
}

/// Where a browser on `page` goes when told `target` (a Location header, or `location.href = target`).
fn followed(page: &str, target: &str) -> url::Url {
    url::Url::parse(page).unwrap().join(target).unwrap_or_else(|e| panic!("a browser cannot follow {target:?}: {e}"))
}

/// The `data-next` attribute of the sign-in page, which its script follows after signing in.
fn data_next(page: &str) -> String {
    let start = page.find("data-next=\"").expect("the sign-in form says where it goes next") + "data-next=\"".len();
    let raw = &page[start..start + page[start..].find('"').unwrap()];
    raw.replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&#39;", "'").replace("&amp;", "&")
}

/// Links an attacker could send: each leads a browser off the service's origin if `next` is followed as given.
const OFF_ORIGIN: [&str; 12] = [
    "/\t/evil.example/phish",
    "/\n/evil.example/phish",
    "/\r\n/evil.example/phish",
    "//evil.example/phish",
    "/\\evil.example/phish",
    "\\\\evil.example/phish",
    "/.//evil.example/phish",
    "/%2e//evil.example/phish",
    "https://evil.example/phish",
    "http:\\\\evil.example\\phish",
    "javascript:alert(document.domain)",
    " //evil.example/phish",
];

#[test]
fn a_sign_in_link_never_leads_the_browser_off_this_origin_signed_in_or_not_and_never_fails() {
    let (env, _) = team("");
    let daemon = Daemon::start(&env);
    let http = client();
    let origin = url::Url::parse(&daemon.status).unwrap().origin();
    let sign_in = send(
        http.post(format!("{}/api/v1/session", daemon.status))
            .header(ORIGIN, &daemon.status)
            .json(&json!({ "user": "ann", "password": PASSWORD })),
    );
    assert_eq!(sign_in.status, 200, "{}", sign_in.text);
    let cookie = sign_in.headers[SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_string();

    for next in OFF_ORIGIN {
        let page_url = format!("{}{}", daemon.status, sign_in_link(next));
        // Not signed in: the page's script goes to data-next after signing in.
        let page = send(http.get(&page_url));
        assert_eq!(page.status, 200, "next={next:?}: {}", page.text);
        let target = data_next(&page.text);
        let went = followed(&page_url, &target);
        assert_eq!(went.origin(), origin, "next={next:?}: the script would go to {went} ({target:?})");

        // Signed in: the server redirects at once.
        let redirect = send(http.get(&page_url).header(COOKIE, &cookie));
        assert_eq!(redirect.status, 303, "next={next:?}: {}", redirect.text);
        let location = redirect.headers[LOCATION].to_str().unwrap();
        let went = followed(&page_url, location);
        assert_eq!(went.origin(), origin, "next={next:?}: redirected to {went} ({location:?})");
        assert_eq!(went.path(), "/exports", "next={next:?}: an unsafe next falls back to the exports");
    }

    // A next on this origin is kept, however it is spelled, and sent back as a path of this service.
    for (next, kept) in [
        ("/exports/vip-x?tab=runs", "/exports/vip-x?tab=runs"),
        ("/exports/vip%20x", "/exports/vip%20x"),
        ("/users/../audit", "/audit"),
        (&format!("{}/account", daemon.status), "/account"),
    ] {
        let page_url = format!("{}{}", daemon.status, sign_in_link(next));
        let redirect = send(http.get(&page_url).header(COOKIE, &cookie));
        assert_eq!(redirect.status, 303, "next={next:?}: {}", redirect.text);
        assert_eq!(redirect.headers[LOCATION], kept, "next={next:?}");
        assert_eq!(data_next(&send(http.get(&page_url)).text), kept, "next={next:?}");
    }
}

/// How long idle sockets may stay open in the next test: `daemon.idle_timeout` there.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn idle_sockets_beyond_the_descriptor_limit_neither_stall_the_daemon_nor_stay_open() {
    let (env, ann) = team(&format!("idle_timeout = \"{}s\"\n", IDLE_TIMEOUT.as_secs()));
    let members = emails(0, 120);
    env.setup_csv_export("idle", &members);
    // The soft limit of a systemd service unless raised; the daemon raises its soft limit to the hard one, which
    // the shell set too.
    let daemon = Daemon::start_with_descriptor_limit(&env, 256);
    daemon.wait_for_log("client connections at most", Duration::from_secs(10));
    let address: SocketAddr = daemon.status.trim_start_matches("http://").parse().unwrap();

    // More idle sockets than the daemon has descriptors: each connects, and sends nothing. A daemon that stopped
    // accepting leaves them to the kernel's backlog (128 here), and connecting then times out.
    let opened = Instant::now();
    let mut idle: Vec<TcpStream> =
        (0..400).map_while(|_| TcpStream::connect_timeout(&address, Duration::from_secs(5)).ok()).collect();
    eprintln!("measured: {} idle sockets opened in {} ms", idle.len(), opened.elapsed().as_millis());
    assert!(idle.len() > 256, "only {} sockets could connect", idle.len());

    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let asked = Instant::now();
    let health = send(http.get(format!("{}/healthz", daemon.status)));
    assert_eq!(health.status, 200, "{}", health.text);
    eprintln!(
        "measured: /healthz answered in {} ms with {} idle sockets open",
        asked.elapsed().as_millis(),
        idle.len()
    );
    let asked = Instant::now();
    let exports = send(http.get(format!("{}/api/v1/exports", daemon.status)).bearer_auth(&ann));
    assert_eq!(exports.status, 200, "{}", exports.text);
    eprintln!("measured: the API answered in {} ms", asked.elapsed().as_millis());

    // The daemon's own work (the trigger watcher, the store, the source file, Iterable) has its descriptors.
    let asked = Instant::now();
    env.ok(&["export", "trigger", "exp"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = env.json(&["runs", "--limit", "5"]);
        if runs.as_array().unwrap().iter().any(|r| r["status"] == "succeeded") {
            break;
        }
        assert!(Instant::now() < deadline, "the triggered run never succeeded: {runs}\n{}", daemon.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("measured: trigger file to a finished run in {} ms", asked.elapsed().as_millis());
    assert_eq!(env.members("idle"), sorted(members));

    // Every idle socket is closed by the daemon: none is left open for long after the idle timeout.
    let deadline = Instant::now() + IDLE_TIMEOUT + Duration::from_secs(30);
    for socket in &mut idle {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(closes_within(socket, left), "an idle socket is still open after {:?}", opened.elapsed());
    }
    eprintln!(
        "measured: all {} idle sockets closed {} ms after they were opened",
        idle.len(),
        opened.elapsed().as_millis()
    );
    let logs = daemon.logs();
    assert!(!logs.contains("ERROR") && !logs.contains("Cannot accept"), "it never ran out of descriptors: {logs}");
}

/// Reads from `socket` until the daemon closes it, or `within` passes: whether it closed.
fn closes_within(socket: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buffer = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn at_the_connection_cap_a_new_client_takes_the_place_of_the_connection_idle_longest() {
    let (env, _) = team("max_connections = 8\nidle_timeout = \"2m\"\n");
    let daemon = Daemon::start(&env);
    daemon.wait_for_log("client connections at most 8", Duration::from_secs(10));
    let address: SocketAddr = daemon.status.trim_start_matches("http://").parse().unwrap();
    // Eight kept-alive connections, each answered once, and idle since, the first longest.
    let mut kept: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut socket = TcpStream::connect(address).unwrap();
            socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
            let mut answer = Vec::new();
            let mut buffer = [0u8; 512];
            while !String::from_utf8_lossy(&answer).ends_with("ok\n") {
                let n = socket.read(&mut buffer).unwrap();
                assert!(n > 0, "closed before answering: {}", String::from_utf8_lossy(&answer));
                answer.extend_from_slice(&buffer[..n]);
            }
            std::thread::sleep(Duration::from_millis(20));
            socket
        })
        .collect();
    let asked = Instant::now();
    assert_eq!(send(client().get(format!("{}/healthz", daemon.status))).status, 200);
    eprintln!("measured: a ninth client answered in {} ms", asked.elapsed().as_millis());
    assert!(closes_within(&mut kept[0], Duration::from_secs(30)), "the connection idle longest gave way");
    assert!(!closes_within(&mut kept[1], Duration::from_millis(300)), "only one gave way");

    // A client that starts a request and stalls is closed when the idle timeout passes, like a silent one.
    let (env, _) = team("idle_timeout = \"1s\"\n");
    let daemon = Daemon::start(&env);
    let address: SocketAddr = daemon.status.trim_start_matches("http://").parse().unwrap();
    let mut slow = TcpStream::connect(address).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: loc").unwrap();
    let started = Instant::now();
    assert!(closes_within(&mut slow, Duration::from_secs(30)), "a stalled header keeps its connection");
    eprintln!("measured: a stalled header's connection closed after {} ms", started.elapsed().as_millis());
}

/// A GET of `path` that names `host` in its Host header (and, through a trusted proxy, `forwarded`).
fn addressed(daemon: &Daemon, path: &str, host: &str, forwarded: Option<&str>, token: &str) -> Answer {
    let mut r = client().get(format!("{}{path}", daemon.status)).header(HOST, host).bearer_auth(token);
    if let Some(f) = forwarded {
        r = r.header("x-forwarded-host", f);
    }
    send(r)
}

#[test]
fn a_request_for_a_host_name_the_service_is_not_known_by_is_refused_before_any_handler_except_health() {
    let (env, ann) = team("public_hosts = [\"exports.example.com\"]\n");
    let daemon = Daemon::start(&env);
    let port = daemon.port;
    let evil = format!("evil.example:{port}");
    for path in ["/status", "/metrics", "/", "/exports", "/sign-in", "/nowhere"] {
        let refused = addressed(&daemon, path, &evil, None, &ann);
        assert_eq!(refused.status, 421, "{path}: {}", refused.text);
        assert!(
            refused.text.contains("evil.example") && refused.text.contains("daemon.public_hosts"),
            "{path}: {}",
            refused.text
        );
        assert!(!refused.text.contains("exports.example.com"), "the refusal names no public host: {}", refused.text);
    }
    for path in ["/api/v1/me", "/api/v1/exports", "/api/v1/nowhere"] {
        let refused = addressed(&daemon, path, &evil, None, &ann);
        assert_eq!(refused.status, 421, "{path}: {}", refused.text);
        let body: Value = serde_json::from_str(&refused.text).unwrap_or_else(|_| panic!("{path}: {}", refused.text));
        assert_eq!(body["error"]["kind"], "misdirected", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("'evil.example'") && message.contains("daemon.public_hosts"), "{message}");
    }
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}"), format!("[::1]:{port}"), "LOCALHOST".into()]
    {
        let status = addressed(&daemon, "/status", &host, None, &ann);
        assert_eq!(status.status, 200, "{host}: {}", status.text);
    }
    for host in ["exports.example.com", "Exports.Example.com:443", "exports.example.com."] {
        assert_eq!(addressed(&daemon, "/api/v1/me", host, None, &ann).status, 200, "{host}");
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(addressed(&daemon, path, &evil, None, &ann).status, 200, "{path} answers whatever the host");
    }
    // Not a trusted proxy: what it claims is not the host.
    assert_eq!(addressed(&daemon, "/status", &evil, Some("exports.example.com"), &ann).status, 421);
    assert_eq!(addressed(&daemon, "/status", "localhost", Some("evil.example"), &ann).status, 200);
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_host_is_the_one_checked() {
    let (env, ann) = team("trusted_proxies = [\"127.0.0.1\"]\npublic_hosts = [\"exports.example.com\"]\n");
    let daemon = Daemon::start(&env);
    let inner = format!("127.0.0.1:{}", daemon.port);
    assert_eq!(addressed(&daemon, "/status", &inner, Some("exports.example.com"), &ann).status, 200);
    let refused = addressed(&daemon, "/status", &inner, Some("evil.example"), &ann);
    assert_eq!(refused.status, 421, "{}", refused.text);
    assert!(refused.text.contains("evil.example"), "{}", refused.text);
    assert_eq!(addressed(&daemon, "/healthz", &inner, Some("evil.example"), &ann).status, 200);
}

#[test]
fn validate_warns_about_a_listener_others_reach_without_public_hosts_and_names_bad_entries() {
    let (env, _) = team("");
    let config = std::fs::read_to_string(env.path("config.toml")).unwrap();
    let with = |extra: &str| std::fs::write(env.path("config.toml"), format!("{config}{extra}")).unwrap();
    let warning = "daemon.public_hosts is empty";

    let quiet = text(&env.ok(&["validate"]).stdout);
    assert!(!quiet.contains("warning:"), "loopback, no proxy: nothing to warn about: {quiet}");
    assert!(quiet.contains("name it by an IP address or localhost (daemon.public_hosts names no other)"), "{quiet}");
    assert!(quiet.contains("at most 512 client connections at once"), "{quiet}");
    with("trusted_proxies = [\"127.0.0.1\"]\n");
    let proxied = text(&env.ok(&["validate"]).stdout);
    assert!(
        proxied.contains("warning: the listener is behind daemon.trusted_proxies") && proxied.contains(warning),
        "{proxied}"
    );
    with("public_hosts = [\"exports.example.com\"]\ntrusted_proxies = [\"127.0.0.1\"]\n");
    let named = text(&env.ok(&["validate"]).stdout);
    assert!(!named.contains("warning:"), "{named}");
    assert!(named.contains("IP address or localhost, exports.example.com (daemon.public_hosts)"), "{named}");

    let off = config.replace("status_listen = \"127.0.0.1:0\"", "status_listen = \"0.0.0.0:0\"");
    std::fs::write(env.path("config.toml"), format!("{off}allow_plain_http = true\n")).unwrap();
    let json = env.json(&["validate"]);
    let warnings = json["warnings"].to_string();
    assert!(warnings.contains(warning) && warnings.contains("0.0.0.0:0"), "{json}");

    std::fs::write(
        env.path("config.toml"),
        format!("{config}public_hosts = [\"https://exports.example.com\", \"a.example:443\", \"b.example\"]\n"),
    )
    .unwrap();
    let refused = env.run(&["validate"]);
    assert_eq!(refused.status.code(), Some(78));
    let err = text(&refused.stderr);
    assert!(err.contains("'https://exports.example.com'") && err.contains("'a.example:443'"), "{err}");
    assert!(!err.contains("'b.example'"), "{err}");
}

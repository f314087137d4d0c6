//! Notifications end to end, with the real binary and real receivers over loopback: a webhook receiver that checks
//! every signature, a Slack-shaped one and an SMTP server, each written here over a plain TCP listener so that a
//! test can make it refuse, fail, hang or go down.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{emails, opts, text, Env, KEY};
use hmac::Mac;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const NOTIFY: &str = "\n[notify]\nretry_min_delay = \"50ms\"\nretry_max_delay = \"200ms\"\npoll_interval = \"50ms\"\n\
                      run_wait = \"10s\"\ntimeout = \"3s\"\n";
const DAEMON: &str = "\n[daemon]\nstatus_listen = \"127.0.0.1:0\"\ntrigger_dir = \"triggers\"\n\
                      trigger_poll_interval = \"100ms\"\nreload_interval = \"1s\"\nshutdown_grace = \"5s\"\n\
                      refresh_schedule = \"0 0 0 1 1 *\"\n";

/// What a receiver does with the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answers with this status.
    Answer(u16),
    /// Closes the connection at once, as a receiver that is down (a reset, not an answer).
    Down,
    /// Reads the request and never answers.
    Hang,
}

#[derive(Debug, Clone)]
struct Received {
    headers: HashMap<String, String>,
    body: String,
    /// The status answered; None for a request held or dropped.
    answered: Option<u16>,
}

/// An HTTP receiver on a loopback port; each request meets the mode set when it arrives, or the next of `script`.
#[derive(Clone)]
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    mode: Arc<Mutex<Mode>>,
    /// Modes for the next requests, before `mode` applies.
    script: Arc<Mutex<Vec<Mode>>>,
}

impl Receiver {
    fn start(path: &str) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let r = Receiver {
            url,
            received: Default::default(),
            mode: Arc::new(Mutex::new(Mode::Answer(200))),
            script: Default::default(),
        };
        let me = r.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (socket, _) = listener.accept().await.unwrap();
                    let me = me.clone();
                    tokio::spawn(async move { me.serve(socket).await });
                }
            });
        });
        r
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn script(&self, modes: &[Mode]) {
        *self.script.lock().unwrap() = modes.to_vec();
    }

    fn next_mode(&self) -> Mode {
        let mut script = self.script.lock().unwrap();
        if script.is_empty() {
            *self.mode.lock().unwrap()
        } else {
            script.remove(0)
        }
    }

    async fn serve(&self, socket: tokio::net::TcpStream) {
        let mode = self.next_mode();
        if mode == Mode::Down {
            return;
        }
        let mut reader = BufReader::new(socket);
        let mut headers = HashMap::new();
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap() == 0 || line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.trim_end().split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.unwrap();
        let index = {
            let mut received = self.received.lock().unwrap();
            received.push(Received { headers, body: String::from_utf8(body).unwrap(), answered: None });
            received.len() - 1
        };
        let status = match mode {
            Mode::Answer(status) => status,
            Mode::Hang => {
                // Holds the connection until the client gives up.
                let mut rest = Vec::new();
                let _ = reader.read_to_end(&mut rest).await;
                return;
            }
            Mode::Down => unreachable!(),
        };
        let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        let _ = reader.get_mut().write_all(answer.as_bytes()).await;
        self.received.lock().unwrap()[index].answered = Some(status);
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds of what was received.
    fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "the receiver never got {what}; it got {got:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The documents a webhook receiver took (answered 2xx).
fn delivered(got: &[Received]) -> Vec<serde_json::Value> {
    got.iter()
        .filter(|r| r.answered.is_some_and(|s| (200..300).contains(&s)))
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect()
}

/// Checks a request's `Segment-Exporter-Signature: t=TIMESTAMP,v1=HEX` as a receiver would, independently of the
/// program's own code: HMAC-SHA256 of `TIMESTAMP.BODY` with the secret.
fn signature_is_valid(r: &Received, secret: &str) -> bool {
    let Some(header) = r.headers.get("segment-exporter-signature") else { return false };
    let parts: HashMap<&str, &str> = header.split(',').filter_map(|p| p.split_once('=')).collect();
    let (Some(t), Some(v1)) = (parts.get("t"), parts.get("v1")) else { return false };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", r.body).as_bytes());
    mac.verify_slice(&hex::decode(v1).unwrap_or_default()).is_ok()
}

/// A webhook channel `name` to `receiver`; returns its signing secret (shown once).
fn add_webhook(env: &Env, name: &str, receiver: &Receiver) -> String {
    let added = env.json(&["notify", "add", name, "--webhook", &receiver.url]);
    added["signing_secret"].as_str().expect("a signing secret is made and shown once").to_string()
}

/// Nothing in any message carries an email of the segment, the API key or a secret.
fn assert_nothing_secret(messages: &[String], members: &[String], secrets: &[&str]) {
    for m in messages {
        for e in members {
            assert!(!m.contains(e.as_str()), "a message carries the member email {e}: {m}");
        }
        for s in secrets {
            assert!(!m.contains(s), "a message carries a secret: {m}");
        }
        assert!(!m.contains(KEY), "a message carries the API key: {m}");
    }
}

#[test]
fn an_export_that_fails_five_runs_then_succeeds_tells_one_failure_and_one_recovery_signed_with_one_id_per_event() {
    let env = Env::with_config(opts(), NOTIFY);
    let members = emails(0, 30);
    let csv = env.setup_csv_export("s", &members);
    let hook = Receiver::start("/hook");
    let secret = add_webhook(&env, "ops", &hook);
    env.ok(&["export", "edit", "exp", "--notify", "ops"]);
    // The failure is answered 500 twice before it is taken: the retries must carry the same event.
    hook.script(&[Mode::Answer(500), Mode::Answer(500)]);
    let saved = std::fs::read(&csv).unwrap();
    std::fs::remove_file(&csv).unwrap();
    for _ in 0..5 {
        let out = env.run(&["export", "run", "exp"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    }
    std::fs::write(&csv, saved).unwrap();
    env.ok(&["export", "run", "exp"]);

    let got = hook.received();
    assert!(got.iter().all(|r| signature_is_valid(r, &secret)), "every request is signed: {got:#?}");
    let taken = delivered(&got);
    let types: Vec<&str> = taken.iter().map(|d| d["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["failed", "recovered"], "{taken:#?}");
    let failed_id = taken[0]["id"].as_str().unwrap();
    let tries: Vec<&Received> = got.iter().filter(|r| r.body.contains(failed_id)).collect();
    assert_eq!(tries.len(), 3, "two 500s, then taken");
    assert_eq!(tries.iter().map(|r| r.answered).collect::<Vec<_>>(), [Some(500), Some(500), Some(200)]);
    assert!(tries.iter().all(|r| r.body == tries[0].body), "a retry is the same document");
    assert_ne!(taken[1]["id"], taken[0]["id"]);
    assert_eq!(taken[0]["export"], "exp");
    assert_eq!(taken[0]["connection"], "iterable");
    assert!(taken[0]["error"].as_str().unwrap().contains("members.csv"), "an admins' channel sees the source");
    assert_eq!(taken[1]["counts"]["added"], 30);

    let log = env.json(&["notify", "log", "--channel", "ops"]);
    let states: Vec<(&str, &str, i64)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["event"].as_str().unwrap(), d["state"].as_str().unwrap(), d["attempts"].as_i64().unwrap()))
        .collect();
    assert_eq!(states, [("recovered", "delivered", 1), ("failed", "delivered", 3)]);
    let bodies: Vec<String> = got.iter().map(|r| r.body.clone()).collect();
    assert_nothing_secret(&bodies, &members, &[&secret]);
}

#[test]
fn a_receiver_that_is_down_gets_the_notification_once_it_is_up_and_500s_are_retried_by_the_daemon() {
    let env = Env::with_config(opts(), &format!("{NOTIFY}{DAEMON}"));
    let csv = env.setup_csv_export("s", &emails(0, 5));
    let hook = Receiver::start("/hook");
    let secret = add_webhook(&env, "ops", &hook);
    env.ok(&["export", "edit", "exp", "--notify", "ops:failed,recovered"]);
    hook.set(Mode::Down);
    std::fs::remove_file(&csv).unwrap();
    let daemon = Daemon::start(&env);
    env.ok(&["export", "trigger", "exp"]);
    // Down: attempts reach it and are cut off, and it stays in the outbox.
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.store_i64("SELECT COALESCE(MAX(attempts), 0) FROM notify_outbox WHERE state = 'pending'") < 3 {
        assert!(Instant::now() < deadline, "no retries while the receiver is down:\n{}", daemon.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(delivered(&hook.received()).is_empty());
    hook.script(&[Mode::Answer(503)]);
    hook.set(Mode::Answer(200));
    let got = hook.wait_for("the failure, once up", Duration::from_secs(30), |got| !delivered(got).is_empty());
    assert_eq!(got.iter().map(|r| r.answered).collect::<Vec<_>>(), [Some(503), Some(200)], "a 503 is retried");
    assert!(got.iter().all(|r| signature_is_valid(r, &secret)));
    assert_eq!(delivered(&got)[0]["type"], "failed");
    let (_, metrics) = daemon.get("/metrics");
    assert!(
        metrics.contains("segment_exporter_notification_deliveries_total{channel=\"ops\",outcome=\"delivered\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("segment_exporter_notification_deliveries_total{channel=\"ops\",outcome=\"retry\"}"));
}

#[test]
fn a_receiver_that_never_answers_holds_up_neither_the_next_run_nor_another_channel() {
    let env = Env::with_config(opts(), &format!("{NOTIFY}{DAEMON}").replace("timeout = \"3s\"", "timeout = \"120s\""));
    let csv = env.setup_csv_export("s", &emails(0, 5));
    let (stuck, fine) = (Receiver::start("/stuck"), Receiver::start("/fine"));
    add_webhook(&env, "stuck", &stuck);
    add_webhook(&env, "fine", &fine);
    env.ok(&["export", "edit", "exp", "--notify", "stuck:failed", "--notify", "fine:recovered"]);
    stuck.set(Mode::Hang);
    let saved = std::fs::read(&csv).unwrap();
    std::fs::remove_file(&csv).unwrap();
    let daemon = Daemon::start(&env);
    env.ok(&["export", "trigger", "exp"]);
    stuck.wait_for("the failure (held, never answered)", Duration::from_secs(30), |got| got.len() == 1);
    // While the stuck receiver holds that request, the next run goes through and the other channel hears of it.
    std::fs::write(&csv, saved).unwrap();
    env.ok(&["export", "trigger", "exp"]);
    let got = fine.wait_for("the recovery", Duration::from_secs(30), |got| !delivered(got).is_empty());
    assert_eq!(delivered(&got)[0]["type"], "recovered");
    let held = stuck.received();
    assert_eq!(held.len(), 1, "the stuck receiver still holds its one request");
    assert_eq!(held[0].answered, None, "and has not answered it");
    assert_eq!(env.store_i64("SELECT COUNT(*) FROM runs WHERE status = 'succeeded'"), 1, "{}", daemon.logs());
}

#[test]
fn a_notification_written_at_a_runs_end_is_delivered_after_a_kill_9_and_a_restart() {
    let env = Env::with_config(opts(), &format!("{NOTIFY}{DAEMON}"));
    let csv = env.setup_csv_export("s", &emails(0, 5));
    let hook = Receiver::start("/hook");
    let secret = add_webhook(&env, "ops", &hook);
    env.ok(&["export", "edit", "exp", "--notify", "ops"]);
    hook.set(Mode::Down);
    std::fs::remove_file(&csv).unwrap();
    let mut daemon = Daemon::start(&env);
    env.ok(&["export", "trigger", "exp"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.store_i64("SELECT COUNT(*) FROM notify_outbox WHERE state = 'pending'") == 0 {
        assert!(Instant::now() < deadline, "the run's end wrote nothing:\n{}", daemon.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.signal("-KILL");
    daemon.wait_exit(Duration::from_secs(10));
    assert!(delivered(&hook.received()).is_empty(), "nothing was taken before the kill");
    hook.set(Mode::Answer(200));
    let _restarted = Daemon::start(&env);
    let got =
        hook.wait_for("the failure, after the restart", Duration::from_secs(60), |got| !delivered(got).is_empty());
    let taken = delivered(&got);
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0]["type"], "failed");
    assert!(got.iter().all(|r| signature_is_valid(r, &secret)));
    let ids: std::collections::HashSet<String> = got
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "every attempt, before and after the restart, carries the one event id");
}

/// A small SMTP server: takes every message, keeps its text.
struct SmtpServer {
    port: u16,
    messages: Arc<Mutex<Vec<String>>>,
}

impl SmtpServer {
    fn start() -> SmtpServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let messages: Arc<Mutex<Vec<String>>> = Default::default();
        let sink = messages.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (socket, _) = listener.accept().await.unwrap();
                    let sink = sink.clone();
                    tokio::spawn(async move {
                        let (read, mut write) = socket.into_split();
                        let mut lines = BufReader::new(read).lines();
                        write.write_all(b"220 test ESMTP\r\n").await.unwrap();
                        while let Ok(Some(line)) = lines.next_line().await {
                            let verb = line.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
                            let reply: &[u8] = match verb.as_str() {
                                "EHLO" => b"250-test\r\n250 8BITMIME\r\n",
                                "DATA" => {
                                    write.write_all(b"354 go on\r\n").await.unwrap();
                                    let mut message = String::new();
                                    while let Ok(Some(l)) = lines.next_line().await {
                                        if l == "." {
                                            break;
                                        }
                                        message.push_str(&l);
                                        message.push('\n');
                                    }
                                    sink.lock().unwrap().push(message);
                                    b"250 queued\r\n"
                                }
                                "QUIT" => {
                                    let _ = write.write_all(b"221 bye\r\n").await;
                                    return;
                                }
                                _ => b"250 ok\r\n",
                            };
                            write.write_all(reply).await.unwrap();
                        }
                    });
                }
            });
        });
        SmtpServer { port, messages }
    }

    fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }
}

#[test]
fn slack_gets_a_readable_message_and_email_a_plain_and_an_html_part_and_neither_carries_an_email_of_the_segment() {
    let smtp = SmtpServer::start();
    let extra = format!(
        "{NOTIFY}\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"segment-exporter <exports@example.com>\"\n",
        smtp.port
    );
    let env = Env::with_config(opts(), &extra);
    let members = emails(0, 20);
    let csv = env.setup_csv_export("s", &members);
    let slack = Receiver::start("/services/T000/B000/XXXX");
    env.ok(&["notify", "add", "team", "--slack", &slack.url, "--usable-by", "contributors"]);
    env.ok(&["notify", "add", "mail", "--email", "ops@example.com,oncall@example.com"]);

    let test = env.json(&["notify", "test", "team"]);
    assert_eq!((test["delivered"].as_bool(), test["answer"].as_str()), (Some(true), Some("HTTP 200")), "{test}");
    let test = env.json(&["notify", "test", "mail"]);
    assert_eq!(test["delivered"], true, "{test}");

    env.ok(&["export", "edit", "exp", "--notify", "team:failed", "--notify", "mail:failed"]);
    std::fs::remove_file(&csv).unwrap();
    assert_eq!(env.run(&["export", "run", "exp"]).status.code(), Some(1));

    let posts = slack.received();
    assert_eq!(posts.len(), 2, "{posts:#?}");
    let message: serde_json::Value = serde_json::from_str(&posts[1].body).unwrap();
    let words = message["text"].as_str().unwrap();
    assert!(words.contains("*Export \"exp\" failed*") && words.contains("*Connection:* iterable"), "{words}");
    assert!(!words.contains("members.csv"), "a contributors' channel never sees the source: {words}");
    assert!(words.contains("only administrators see"), "{words}");

    let mails = smtp.messages();
    assert_eq!(mails.len(), 2, "{mails:#?}");
    let failure = &mails[1];
    assert!(failure.contains("Subject: [segment-exporter] export \"exp\" failed"), "{failure}");
    assert!(failure.contains("To: ops@example.com, oncall@example.com"), "{failure}");
    assert!(failure.contains("Content-Type: text/plain") && failure.contains("Content-Type: text/html"), "{failure}");
    let mut everything: Vec<String> = posts.iter().map(|p| p.body.clone()).collect();
    everything.extend(mails);
    assert_nothing_secret(&everything, &members, &[&slack.url]);
}

#[test]
fn a_guard_stop_is_told_and_the_run_let_through_afterwards_is_told_as_a_recovery() {
    let env = Env::with_config(opts(), NOTIFY);
    let members = emails(0, 30);
    env.setup_csv_export("s", &members);
    let hook = Receiver::start("/hook");
    let secret = add_webhook(&env, "ops", &hook);
    env.ok(&["export", "edit", "exp", "--notify", "ops"]);
    env.ok(&["export", "run", "exp"]);
    assert!(hook.received().is_empty(), "a first success tells nothing");
    let kept: Vec<(&str, &str)> = members[..5].iter().map(|e| (e.as_str(), "gold")).collect();
    env.write_csv("members.csv", &kept);
    let out = env.run(&["export", "run", "exp"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let got = hook.wait_for("the guard stop", Duration::from_secs(10), |got| !delivered(got).is_empty());
    let guard = &delivered(&got)[0];
    assert_eq!(guard["type"], "guard");
    assert!(guard["summary"].as_str().unwrap().contains("stopped by a guard"), "{guard}");
    assert!(guard["error"].as_str().unwrap().contains("--allow-mass-removal"), "{guard}");
    env.ok(&["export", "run", "exp", "--allow-mass-removal"]);
    let got = hook.wait_for("the recovery", Duration::from_secs(10), |got| delivered(got).len() == 2);
    assert_eq!(delivered(&got)[1]["type"], "recovered");
    assert!(got.iter().all(|r| signature_is_valid(r, &secret)));
    let bodies: Vec<String> = got.iter().map(|r| r.body.clone()).collect();
    assert_nothing_secret(&bodies, &members, &[&secret]);
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn with_two_daemons_on_one_postgresql_store_each_notification_is_delivered_by_one_of_them() {
    let env = Env::on_postgres(opts(), &format!("{NOTIFY}{DAEMON}"));
    // A key Iterable refuses: every run fails (and the connection's key is told once, to no one here).
    let wrong = env.path("wrong.key");
    std::fs::write(&wrong, "not-the-key-0123456789").unwrap();
    let base = ["connection", "add", "iterable", "--api-key-file", wrong.to_str().unwrap(), "--base-url"];
    env.ok(&[&base[..], &[env.base_url.as_str(), "--accept-data-privacy", "--skip-verify"]].concat());
    let hook = Receiver::start("/hook");
    let secret = add_webhook(&env, "ops", &hook);
    let exports: Vec<String> = (0..6).map(|i| format!("exp{i}")).collect();
    for name in &exports {
        let csv = env.write_csv(&format!("{name}.csv"), &[("a@example.com", "gold")]);
        env.ok(&["segment", "add", name, "--source", &format!("csv:{}", csv.display())]);
        let add = ["export", "add", name, "--connection", "iterable", "--segment", name, "--email-field", "email"];
        env.ok(&[&add[..], &["--schedule", "off", "--skip-check", "--notify", "ops:failed"]].concat());
    }
    let (a, b) = (Daemon::start(&env), Daemon::start(&env));
    env.ok(&["export", "trigger", "--all"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.pg_i64("SELECT COUNT(*) FROM runs WHERE status = 'failed'") < 6 {
        assert!(Instant::now() < deadline, "the runs did not all fail:\n{}\n{}", a.logs(), b.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = hook.wait_for("a failure of every export", Duration::from_secs(60), |got| delivered(got).len() >= 6);
    // Both daemons look for due notifications every 50 ms; a little longer, in case one were delivered twice.
    std::thread::sleep(Duration::from_millis(500));
    let got = hook.received().len().max(got.len());
    assert_eq!(got, 6, "six events, each delivered once: {:#?}", hook.received());
    let mut told: Vec<String> =
        delivered(&hook.received()).iter().map(|d| d["export"].as_str().unwrap().to_string()).collect();
    told.sort();
    assert_eq!(told, exports);
    assert!(hook.received().iter().all(|r| signature_is_valid(r, &secret)));
}

#[test]
fn export_run_without_a_daemon_leaves_what_a_hanging_receiver_did_not_take_in_the_outbox_for_later() {
    let config =
        NOTIFY.replace("run_wait = \"10s\"", "run_wait = \"1s\"").replace("timeout = \"3s\"", "timeout = \"60s\"");
    let env = Env::with_config(opts(), &config);
    let csv = env.setup_csv_export("s", &emails(0, 5));
    let hook = Receiver::start("/hook");
    add_webhook(&env, "ops", &hook);
    env.ok(&["export", "edit", "exp", "--notify", "ops"]);
    hook.set(Mode::Hang);
    std::fs::remove_file(&csv).unwrap();
    let out = env.run(&["export", "run", "exp"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // The command is done, and the receiver still holds the request it never answered.
    let held = hook.received();
    assert_eq!((held.len(), held[0].answered), (1, None));
    assert_eq!(env.store_i64("SELECT COUNT(*) FROM runs WHERE status = 'failed' AND finished_at IS NOT NULL"), 1);
    let log = env.json(&["notify", "log"]);
    assert_eq!(log[0]["state"], "pending", "{log}");
    assert!(log[0]["last_answer"].as_str().unwrap().contains("notify.run_wait"), "{log}");
    assert!(text(&out.stderr).contains("stay in the outbox"), "{}", text(&out.stderr));
    // The next delivery takes it at once: its claim was let go.
    hook.set(Mode::Answer(200));
    let config =
        std::fs::read_to_string(env.path("config.toml")).unwrap().replace("timeout = \"60s\"", "timeout = \"5s\"");
    std::fs::write(env.path("config.toml"), config).unwrap();
    std::fs::write(&csv, "email,tier\n").unwrap();
    env.ok(&["export", "run", "exp"]);
    let got = hook.wait_for("the failure, then the recovery", Duration::from_secs(10), |got| delivered(got).len() == 2);
    // Both are due in the same delivery round, and go out side by side: in either order.
    let mut types: Vec<String> = delivered(&got).iter().map(|d| d["type"].as_str().unwrap().to_string()).collect();
    types.sort();
    assert_eq!(types, ["failed", "recovered"]);
}

#[test]
fn rejected_members_a_recreated_list_and_a_refused_key_are_each_told_and_the_key_once_per_connection() {
    let env = Env::with_config(opts(), NOTIFY);
    let mut members = emails(0, 20);
    let csv = env.setup_csv_export("s", &members);
    let hook = Receiver::start("/hook");
    let secret = add_webhook(&env, "ops", &hook);
    env.ok(&["export", "edit", "exp", "--notify", "ops:rejected,list,key"]);
    // Five of twenty-five members cannot be sent: more than notify.rejected_share.
    let mut rows: Vec<(String, &str)> = members.iter().map(|e| (e.clone(), "gold")).collect();
    rows.extend((0..5).map(|i| (format!("not-an-email-{i}"), "gold")));
    let rows: Vec<(&str, &str)> = rows.iter().map(|(e, t)| (e.as_str(), *t)).collect();
    env.write_csv("members.csv", &rows);
    env.ok(&["export", "run", "exp"]);
    let got = hook.wait_for("rejected", Duration::from_secs(10), |got| delivered(got).len() == 1);
    let rejected = &delivered(&got)[0];
    assert_eq!(rejected["type"], "rejected");
    assert_eq!(rejected["counts"]["invalid"], 5, "{rejected}");
    env.ok(&["export", "run", "exp"]);
    assert_eq!(delivered(&hook.received()).len(), 1, "still rejecting: told once");

    // The list deleted in Iterable is recreated by the next run that looks (--full), and that is told.
    env.delete_list(env.list_id("s").unwrap());
    env.ok(&["export", "run", "exp", "--full"]);
    let got = hook.wait_for("list", Duration::from_secs(10), |got| delivered(got).len() == 2);
    assert_eq!(delivered(&got)[1]["type"], "list");
    assert_eq!(delivered(&got)[1]["lists"], serde_json::json!(["s"]));

    // A second export of the connection; then the key is refused: told once for the connection, not per export.
    env.ok(&["segment", "add", "t", "--source", &format!("csv:{}", csv.display())]);
    let add = ["export", "add", "exp2", "--connection", "iterable", "--segment", "t", "--email-field", "email"];
    env.ok(&[&add[..], &["--notify", "ops:key"]].concat());
    let edit = ["connection", "edit", "iterable", "--api-key-stdin", "--skip-verify"];
    env.cmd().args(edit).write_stdin("not-the-key-0123456789").assert().success();
    for export in ["exp", "exp2", "exp"] {
        assert_eq!(env.run(&["export", "run", export, "--full"]).status.code(), Some(1));
    }
    let got = hook.received();
    let taken = delivered(&got);
    let keys: Vec<&serde_json::Value> = taken.iter().filter(|d| d["type"] == "key").collect();
    assert_eq!(keys.len(), 1, "{taken:#?}");
    assert_eq!(keys[0]["connection"], "iterable");
    assert!(got.iter().all(|r| signature_is_valid(r, &secret)));
    members.extend((0..5).map(|i| format!("not-an-email-{i}")));
    let bodies: Vec<String> = got.iter().map(|r| r.body.clone()).collect();
    assert_nothing_secret(&bodies, &members, &[&secret, "not-the-key-0123456789"]);
}

#[test]
fn validate_warns_of_an_email_channel_without_a_mail_server() {
    let env = Env::new();
    env.ok(&["notify", "add", "mail", "--email", "ops@example.com"]);
    let report = env.json(&["validate"]);
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("channel 'mail' sends email, but [smtp] host and from are not both set"), "{report}");
    let test = env.json(&["notify", "test", "mail"]);
    assert_eq!(test["delivered"], false);
    assert!(test["answer"].as_str().unwrap().contains("[smtp] host and from are not set"), "{test}");
}

#[test]
fn the_mass_addition_guard_is_told_as_a_guard_stop_too() {
    let env = Env::with_config(opts(), NOTIFY);
    let before = emails(0, 150);
    env.setup_csv_export("s", &before);
    let hook = Receiver::start("/hook");
    add_webhook(&env, "ops", &hook);
    env.ok(&["export", "edit", "exp", "--notify", "ops"]);
    env.ok(&["export", "run", "exp"]);
    let after = emails(0, 1500);
    let rows: Vec<(&str, &str)> = after.iter().map(|e| (e.as_str(), "gold")).collect();
    env.write_csv("members.csv", &rows);
    assert_eq!(env.run(&["export", "run", "exp"]).status.code(), Some(1));
    let got = hook.wait_for("the guard stop", Duration::from_secs(10), |got| !delivered(got).is_empty());
    let guard = &delivered(&got)[0];
    assert_eq!(guard["type"], "guard", "{guard}");
    assert!(guard["error"].as_str().unwrap().contains("--allow-mass-addition"), "{guard}");
    assert_eq!(env.members("s").len(), 150, "the list is unchanged");
    env.ok(&["export", "run", "exp", "--allow-mass-addition"]);
    let got = hook.wait_for("the recovery", Duration::from_secs(10), |got| delivered(got).len() == 2);
    assert_eq!(delivered(&got)[1]["type"], "recovered");
    let bodies: Vec<String> = got.iter().map(|r| r.body.clone()).collect();
    assert_nothing_secret(&bodies, &after, &[]);
}

#[test]
fn a_webhook_url_piped_on_standard_input_stays_off_the_command_line_and_is_never_shown() {
    let env = Env::with_config(opts(), NOTIFY);
    let hook = Receiver::start("/piped-hook");
    let added = env
        .cmd()
        .args(["notify", "add", "piped", "--webhook", "-", "--json"])
        .write_stdin(format!("{}\n", hook.url))
        .assert()
        .success();
    let added: serde_json::Value = serde_json::from_slice(&added.get_output().stdout).unwrap();
    let secret = added["signing_secret"].as_str().expect("a signing secret is made").to_string();
    let test = env.json(&["notify", "test", "piped"]);
    assert_eq!(test["delivered"], true, "the URL read from standard input is the one posted to: {test}");
    let got = hook.received();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(signature_is_valid(&got[0], &secret));
    for shown in [env.json(&["notify", "show", "piped"]), env.json(&["notify", "list"])] {
        assert!(!shown.to_string().contains("piped-hook"), "the URL is shown after saving: {shown}");
    }
    // Nothing piped: refused, naming the flag and how to pipe it, and nothing saved.
    let out = env.cmd().args(["notify", "add", "empty", "--slack", "-"]).write_stdin("").assert().failure();
    let err = text(&out.get_output().stderr);
    assert!(err.contains("no URL on standard input for --slack -") && err.contains("printf"), "{err}");
    assert!(!env.json(&["notify", "list"]).to_string().contains("empty"));
}

#[test]
fn a_verify_that_finds_drift_tells_it_once_and_a_repair_that_fixes_it_tells_nothing_more() {
    let sandbox = segment_exporter::sandbox::SandboxOptions { documented_limits: false, ..opts() };
    let env = Env::with_config(sandbox, &format!("{NOTIFY}\n[sync]\nverify_settle = \"0s\"\n"));
    let members = emails(0, 40);
    env.setup_csv_export("s", &members);
    let hook = Receiver::start("/hook");
    let secret = add_webhook(&env, "ops", &hook);
    env.ok(&["export", "edit", "exp", "--notify", "ops:drift"]);
    env.ok(&["export", "run", "exp"]);
    let list_id = env.list_id("s").unwrap();
    // Six of the export's members unsubscribed by hand in Iterable.
    let gone: Vec<serde_json::Value> = members[..6].iter().map(|e| serde_json::json!({ "email": e })).collect();
    env.post_api(
        "/api/lists/unsubscribe",
        serde_json::json!({ "listId": list_id, "subscribers": gone, "channelUnsubscribe": false }),
    );

    for _ in 0..2 {
        let out = env.run(&["export", "verify", "exp"]);
        assert_eq!(out.status.code(), Some(3), "drift: {}", text(&out.stderr));
    }
    let taken = delivered(&hook.received());
    assert_eq!(taken.len(), 1, "drift is told once, not at every verify that finds it: {taken:#?}");
    assert_eq!(taken[0]["type"], "drift");
    assert_eq!(taken[0]["export"], "exp");
    assert_eq!(taken[0]["counts"]["differing"], 6, "{}", taken[0]);
    assert!(hook.received().iter().all(|r| signature_is_valid(r, &secret)));

    assert_eq!(env.run(&["export", "verify", "exp", "--repair"]).status.code(), Some(0));
    assert_eq!(env.run(&["export", "verify", "exp"]).status.code(), Some(0), "clean after the repair");
    let types: Vec<String> =
        delivered(&hook.received()).iter().map(|d| d["type"].as_str().unwrap().to_string()).collect();
    assert!(types.iter().filter(|t| *t == "drift").count() == 1, "{types:?}");
    let bodies: Vec<String> = hook.received().iter().map(|r| r.body.clone()).collect();
    assert_nothing_secret(&bodies, &members, &[&secret]);
}

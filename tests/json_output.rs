//! `--json` is dependable: every command, in success and in failure, writes exactly one JSON document on stdout;
//! failures are `{"error": {"kind", "message"}}` with the exit code they have without `--json` (and the human
//! `error: ...` line stays on stderr); every time in the output is RFC 3339 UTC.

mod common;

use std::io::Read;
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// What a case expects: its exit code, and for a failure the error kind.
#[derive(Clone, Copy)]
enum Expect {
    Ok,
    Fails(i32, &'static str),
}

/// Parses stdout as exactly one JSON value.
fn one_document(stdout: &[u8]) -> Result<Value, String> {
    let mut values = serde_json::Deserializer::from_slice(stdout).into_iter::<Value>();
    let first = match values.next() {
        Some(Ok(v)) => v,
        Some(Err(e)) => return Err(format!("stdout is not JSON ({e})")),
        None => return Err("stdout is empty".into()),
    };
    match values.next() {
        None => Ok(first),
        Some(_) => Err("stdout holds more than one JSON document".into()),
    }
}

/// Whether `s[i..]` starts like a date and time: `dddd-dd-dd` then a separator and `dd:dd`.
fn time_at(s: &[u8], i: usize) -> bool {
    let digit = |k: usize| s.get(i + k).is_some_and(u8::is_ascii_digit);
    let at = |k: usize, c: u8| s.get(i + k) == Some(&c);
    (0..4).all(digit)
        && at(4, b'-')
        && digit(5)
        && digit(6)
        && at(7, b'-')
        && digit(8)
        && digit(9)
        && matches!(s.get(i + 10), Some(b' ' | b'T' | b't' | b'_'))
        && digit(11)
        && digit(12)
        && at(13, b':')
}

/// Every time written anywhere in `value` (whole strings or inside a message) as (the text, whether it is RFC 3339
/// in UTC).
fn times_in(value: &Value, found: &mut Vec<(String, bool)>) {
    match value {
        Value::String(s) => {
            let bytes = s.as_bytes();
            for i in 0..bytes.len() {
                if (i == 0 || !bytes[i - 1].is_ascii_digit()) && time_at(bytes, i) {
                    let token: String =
                        s[i..].chars().take_while(|c| !c.is_whitespace() && !"\"',;)".contains(*c)).collect();
                    let utc =
                        chrono::DateTime::parse_from_rfc3339(&token).is_ok_and(|t| t.offset().local_minus_utc() == 0);
                    found.push((s[i..].chars().take(40).collect(), utc));
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| times_in(v, found)),
        Value::Object(map) => map.values().for_each(|v| times_in(v, found)),
        _ => {}
    }
}

/// Runs `--json ARGS` and checks the rules; returns the document, or what is wrong.
fn check(env: &Env, args: &[&str], expect: Expect, times: &mut Vec<(String, bool)>) -> Result<Value, String> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = env.run(&all);
    let doc = one_document(&out.stdout)?;
    let code = out.status.code().unwrap_or(-1);
    let error = doc.get("error").filter(|e| e.is_object());
    match expect {
        Expect::Ok => {
            if code != 0 {
                return Err(format!("exit {code}, expected 0"));
            }
            if error.is_some() {
                return Err("a success printed an error document".into());
            }
        }
        Expect::Fails(want, kind) => {
            if code != want {
                return Err(format!("exit {code}, expected {want}"));
            }
            let error = error.ok_or("a failure printed no error document")?;
            if error["kind"] != kind {
                return Err(format!("kind {}, expected {kind}", error["kind"]));
            }
            if error["message"].as_str().is_none_or(str::is_empty) {
                return Err("the error has no message".into());
            }
            if doc.as_object().map_or(0, |o| o.len()) != 1 {
                return Err("the error document has keys beside `error`".into());
            }
            if !text(&out.stderr).contains("error: ") {
                return Err("no human `error: ...` line on stderr".into());
            }
        }
    }
    times_in(&doc, times);
    Ok(doc)
}

/// Runs every case, then reports all that broke a rule at once.
fn check_all(env: &Env, cases: &[(Vec<String>, Expect)], times: &mut Vec<(String, bool)>) {
    let mut broken = Vec::new();
    for (args, expect) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Err(why) = check(env, &args, *expect, times) {
            let out = env.run(&[&["--json"], &args[..]].concat());
            broken.push(format!(
                "`--json {}`: {why}\n  stdout: {}\n  stderr: {}",
                args.join(" "),
                text(&out.stdout),
                text(&out.stderr)
            ));
        }
    }
    assert!(broken.is_empty(), "{} case(s) broke the --json rules:\n{}", broken.len(), broken.join("\n"));
}

fn case(args: &[&str], expect: Expect) -> (Vec<String>, Expect) {
    (args.iter().map(|s| s.to_string()).collect(), expect)
}

#[test]
fn every_command_prints_one_json_document_in_success_and_in_failure_with_rfc3339_times() {
    use Expect::*;
    let env = Env::new();
    let csv = env.setup_csv_export("Seg", &emails(0, 10));
    let csv_source = format!("csv:{}", csv.display());
    env.ok(&["export", "run", "exp"]);
    std::fs::write(env.path("wrong.key"), "wrong-key-Sup3rSecret\n").unwrap();
    let wrong_key = env.path("wrong.key").display().to_string();
    let url = env.base_url.clone();
    let pg = "postgres://reader:Sup3rSecretPW@127.0.0.1:1/customers";
    let add_other = ["connection", "add", "other", "--api-key-env", "ITERABLE_KEY", "--base-url", &url];
    let sample = env.path("sample.db").display().to_string();
    let cases = vec![
        // connection
        case(&["connection", "list"], Ok),
        case(&["connection", "show", "iterable"], Ok),
        case(&["connection", "show", "nope"], Fails(1, "not_found")),
        case(&["connection", "test", "iterable"], Ok),
        case(&["connection", "test", "nope"], Fails(1, "not_found")),
        case(&["connection", "lists", "iterable", "--sizes"], Ok),
        case(&["connection", "lists", "nope"], Fails(1, "not_found")),
        case(&add_other, Fails(1, "invalid_input")),
        case(&[&add_other[..], &["--accept-data-privacy"]].concat(), Ok),
        case(&[&add_other[..], &["--accept-data-privacy"]].concat(), Fails(1, "exists")),
        case(
            &["connection", "add", "bad", "--api-key-file", &wrong_key, "--base-url", &url, "--accept-data-privacy"],
            Fails(1, "iterable"),
        ),
        case(
            &[
                "connection",
                "add",
                "bad",
                "--api-key-env",
                "UNSET_KEY_VAR",
                "--base-url",
                &url,
                "--accept-data-privacy",
            ],
            Fails(1, "secret"),
        ),
        case(&["connection", "add", "bad"], Fails(2, "usage")),
        case(
            &[
                "connection",
                "add",
                "broken",
                "--api-key-file",
                &wrong_key,
                "--base-url",
                &url,
                "--accept-data-privacy",
                "--skip-verify",
            ],
            Ok,
        ),
        // Once printed `{"ok": false}` and then nothing for the error: now only the error document.
        case(&["connection", "test", "broken"], Fails(1, "iterable")),
        case(&["connection", "remove", "broken"], Ok),
        case(&["connection", "remove", "other"], Ok),
        case(&["connection", "remove", "other"], Fails(1, "not_found")),
        // segment
        case(&["segment", "add", "Seg2", "--source", &csv_source], Ok),
        case(&["segment", "add", "Seg2", "--source", &csv_source], Fails(1, "exists")),
        case(&["segment", "add", "Seg3", "--source", "csv:/no/such/file.csv"], Fails(1, "source")),
        case(&["segment", "add", "Seg3", "--source", "ftp:somewhere"], Fails(1, "invalid_input")),
        case(&["segment", "add", "Seg3", "--source", pg, "--query", "SELECT 1"], Fails(1, "source")),
        case(&["segment", "list"], Ok),
        case(&["segment", "preview", "Seg"], Ok),
        case(&["segment", "preview", "nope"], Fails(1, "not_found")),
        case(&["segment", "edit", "Seg2", "--source", &csv_source], Ok),
        case(&["segment", "edit", "nope", "--source", &csv_source], Fails(1, "not_found")),
        case(&["segment", "remove", "Seg"], Fails(1, "conflict")),
        // export
        case(&["export", "add", "exp2", "--connection", "iterable", "--segment", "Seg2", "--email-field", "email"], Ok),
        case(
            &["export", "add", "exp2", "--connection", "iterable", "--segment", "Seg2", "--email-field", "email"],
            Fails(1, "exists"),
        ),
        case(
            &["export", "add", "a/b", "--connection", "iterable", "--segment", "Seg2", "--email-field", "email"],
            Fails(1, "invalid_input"),
        ),
        case(
            &["export", "add", "exp3", "--connection", "iterable", "--segment", "Seg2", "--email-field", "no_such"],
            Fails(1, "invalid_input"),
        ),
        case(
            &["export", "add", "exp3", "--connection", "nope", "--segment", "Seg2", "--email-field", "email"],
            Fails(1, "not_found"),
        ),
        case(&["export", "edit", "exp2", "--schedule", "0 30 2 * * *"], Ok),
        case(&["export", "edit", "exp2", "--schedule", "every tuesday"], Fails(1, "invalid_input")),
        case(&["export", "edit", "nope", "--schedule", "off"], Fails(1, "not_found")),
        case(&["export", "list"], Ok),
        case(&["export", "show", "exp"], Ok),
        case(&["export", "show", "nope"], Fails(1, "not_found")),
        case(&["export", "run", "exp"], Ok),
        case(&["export", "run", "exp", "--dry-run"], Ok),
        case(&["export", "run", "exp", "--full"], Ok),
        case(&["export", "run", "nope"], Fails(1, "not_found")),
        case(&["export", "trigger", "exp"], Ok),
        case(&["export", "trigger", "--all"], Ok),
        case(&["export", "trigger", "nope"], Fails(1, "not_found")),
        case(&["export", "remove", "exp2"], Ok),
        case(&["export", "remove", "exp2"], Fails(1, "not_found")),
        case(&["export", "list", "--include-removed"], Ok),
        case(&["export", "show", "exp2", "--include-removed"], Ok),
        case(&["segment", "remove", "Seg2"], Ok),
        case(&["segment", "remove", "Seg2"], Fails(1, "not_found")),
        case(&["export", "bogus"], Fails(2, "usage")),
        case(&[], Fails(2, "usage")),
        // runs
        case(&["runs"], Ok),
        case(&["runs", "--export", "exp"], Ok),
        case(&["runs", "--export", "exp2", "--include-removed"], Ok),
        case(&["runs", "--export", "nope"], Fails(1, "not_found")),
        case(&["runs", "show", "1"], Ok),
        case(&["runs", "show", "1", "--rejected"], Ok),
        case(&["runs", "show", "999"], Fails(1, "not_found")),
        case(&["runs", "--limit", "many"], Fails(2, "usage")),
        // the rest
        case(&["validate"], Ok),
        case(&["healthcheck", "--addr", "127.0.0.1:1"], Fails(1, "failed")),
        case(&["sample-data", &sample, "--profiles", "20"], Ok),
        case(&["sample-data", &sample, "--profiles", "20"], Fails(1, "exists")),
        case(&["sample-data", &sample, "--profiles", "20", "--force"], Ok),
        case(&["sample-data", &sample, "--churn", "0.9"], Fails(2, "usage")),
        case(&["sandbox", "--fail-rate", "2"], Fails(2, "usage")),
        case(&["completions", "bash"], Ok),
        case(&["completions", "cmd.exe"], Fails(2, "usage")),
        case(&["man"], Ok),
    ];
    let mut times = Vec::new();
    check_all(&env, &cases, &mut times);

    let human: Vec<_> = times.iter().filter(|(_, utc)| !utc).map(|(t, _)| t).collect();
    assert!(human.is_empty(), "times that are not RFC 3339 UTC: {human:?}");
    // Not vacuous: connections, segments, exports and runs all carry times.
    assert!(times.len() >= 30, "only {} times seen: {times:?}", times.len());

    // The times that used to be human text or epoch milliseconds.
    let listed = env.json(&["export", "list"]);
    assert!(is_rfc3339_utc(&listed[0]["last_run"]["started_at"]), "{listed}");
    env.ok(&["export", "edit", "exp", "--schedule", "0 30 2 * * *"]);
    let listed = env.json(&["export", "list"]);
    assert!(is_rfc3339_utc(&listed[0]["next_run"]), "{listed}");
    let lists = env.json(&["connection", "lists", "iterable"]);
    assert!(is_rfc3339_utc(&lists[0]["created_at"]), "{lists}");
}

fn is_rfc3339_utc(v: &Value) -> bool {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .is_some_and(|t| t.offset().local_minus_utc() == 0)
}

#[test]
fn error_documents_carry_neither_an_api_key_nor_a_source_password() {
    let env = Env::new();
    env.add_connection();
    std::fs::write(env.path("wrong.key"), "wrong-key-Sup3rSecret\n").unwrap();
    let key_file = env.path("wrong.key").display().to_string();
    let out = env.run(&[
        "--json",
        "connection",
        "add",
        "bad",
        "--api-key-file",
        &key_file,
        "--base-url",
        &env.base_url,
        "--accept-data-privacy",
    ]);
    let pg = "postgres://reader:Sup3rSecretPW@127.0.0.1:1/customers";
    let out2 = env.run(&["--json", "segment", "add", "Pg", "--source", pg, "--query", "SELECT email FROM t"]);
    for out in [out, out2] {
        let doc = one_document(&out.stdout).unwrap();
        assert!(doc["error"]["message"].is_string(), "{doc}");
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!all.contains("Sup3rSecret"), "a secret reached the output: {all}");
    }
}

#[test]
fn an_invalid_config_file_is_one_config_error_document_listing_every_problem_with_exit_78() {
    let env = Env::new();
    std::fs::write(
        env.path("bad.toml"),
        "[store]\nhistory_retention = \"0s\"\ncolour = \"blue\"\n\n[iterable]\nbatch_size = 0\nconcurrency = \"four\"\n",
    )
    .unwrap();
    let bad = env.path("bad.toml").display().to_string();
    for command in [&["validate"][..], &["export", "list"], &["daemon"], &["healthcheck"]] {
        let mut times = Vec::new();
        let doc = check(&env, &[&["--config", &bad], command].concat(), Expect::Fails(78, "config"), &mut times)
            .unwrap_or_else(|e| panic!("{command:?}: {e}"));
        let problems = doc["error"]["problems"].as_array().unwrap_or_else(|| panic!("no problems: {doc}"));
        assert_eq!(problems.len(), 4, "{doc}");
        for key in ["store.history_retention", "store.colour", "iterable.batch_size", "iterable.concurrency"] {
            assert!(problems.iter().any(|p| p.as_str().unwrap().contains(key)), "{key} missing: {doc}");
        }
    }
    // A config that parses but cannot be run is a config error too.
    let store_dir = env.dir.path().display().to_string();
    std::fs::write(
        env.path("clash.toml"),
        format!("[store]\npath = \"{store_dir}/store.db\"\n\n[daemon]\ntrigger_dir = \"{store_dir}\"\n"),
    )
    .unwrap();
    let clash = env.path("clash.toml").display().to_string();
    let doc = check(&env, &["--config", &clash, "validate"], Expect::Fails(78, "config"), &mut Vec::new()).unwrap();
    assert_eq!(doc["error"]["problems"].as_array().map(Vec::len), Some(1), "{doc}");
}

#[test]
fn a_busy_export_refuses_runs_edits_and_removals_with_busy_documents_and_exit_75() {
    let env = Env::new();
    env.setup_csv_export("Seg", &emails(0, 5));
    let id = env.json(&["export", "show", "exp"])["id"].as_i64().unwrap();
    let _held = segment_exporter::sync::RunLock::try_acquire(&env.path("store.db.locks"), id).unwrap();
    let cases = [
        case(&["export", "run", "exp"], Expect::Fails(75, "busy")),
        case(&["export", "edit", "exp", "--schedule", "off"], Expect::Fails(75, "busy")),
        case(&["export", "remove", "exp"], Expect::Fails(75, "busy")),
    ];
    check_all(&env, &cases, &mut Vec::new());
}

#[test]
fn a_null_email_is_json_null_in_a_dry_runs_examples_as_in_the_recorded_issues() {
    let env = Env::new();
    let db = env.path("profiles.db");
    write_sqlite(&db, &[(Some("a@example.com"), "gold"), (None, "gold"), (Some("not an email"), "gold")]);
    env.add_connection();
    env.add_segment_and_export("Seg", &format!("sqlite:{}", db.display()), Some("SELECT email, tier FROM profiles"));
    let dry = env.json(&["export", "run", "exp", "--dry-run"]);
    let examples = dry["lists"][0]["examples_invalid"].as_array().unwrap_or_else(|| panic!("{dry}"));
    assert!(examples.iter().any(|e| e["member"].is_null() && e["reason"].is_string()), "{dry}");
    assert!(examples.iter().any(|e| e["member"] == "not an email"), "{dry}");
    let report = env.json(&["export", "run", "exp"]);
    let run_id = report["run_id"].to_string();
    let shown = env.json(&["runs", "show", &run_id, "--rejected"]);
    let issues = shown["issues"].as_array().unwrap_or_else(|| panic!("{shown}"));
    assert!(issues.iter().any(|i| i["member"].is_null()), "{shown}");
}

#[test]
fn a_null_member_reads_as_null_and_an_empty_one_as_empty_in_the_table_of_refused_members() {
    let env = Env::new();
    let db = env.path("profiles.db");
    write_sqlite(&db, &[(Some("a@example.com"), "gold"), (None, "silver"), (Some(""), "bronze")]);
    env.add_connection();
    env.add_segment_and_export("Seg", &format!("sqlite:{}", db.display()), Some("SELECT email, tier FROM profiles"));
    let report = env.json(&["export", "run", "exp"]);
    let run_id = report["run_id"].to_string();
    let shown = env.json(&["runs", "show", &run_id, "--rejected"]);
    let members: Vec<&serde_json::Value> = shown["issues"].as_array().unwrap().iter().map(|i| &i["member"]).collect();
    assert_eq!(members.len(), 2, "{shown}");
    assert!(members.contains(&&Value::Null) && members.contains(&&json!("")), "{shown}");
    let table = String::from_utf8(env.ok(&["runs", "show", &run_id, "--rejected"]).stdout).unwrap();
    let row_of = |shown: &str| table.lines().filter(|l| l.contains(shown)).count();
    assert_eq!((row_of("(null)"), row_of("(empty)")), (1, 1), "{table}");
}

/// Spawns `--json ARGS` with stdout and stderr piped.
fn spawn_json(env: &Env, args: &[&str]) -> std::process::Child {
    StdCommand::new(assert_cmd::cargo::cargo_bin("segment-exporter"))
        .current_dir(env.dir.path())
        .env("SEGMENT_EXPORTER_CONFIG", env.path("config.toml"))
        .env("ITERABLE_KEY", KEY)
        .env_remove("RUST_LOG")
        .arg("--json")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// SIGTERMs `child` and returns its exit code and whole stdout.
fn stop(mut child: std::process::Child, stdout_so_far: Vec<u8>) -> (i32, Vec<u8>) {
    assert!(StdCommand::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let mut stdout = stdout_so_far;
    child.stdout.take().unwrap().read_to_end(&mut stdout).unwrap();
    (child.wait().unwrap().code().unwrap_or(-1), stdout)
}

#[test]
fn healthcheck_daemon_and_sandbox_print_one_document_each() {
    let env = Env::with_config(
        opts(),
        "\n[daemon]\nstatus_listen = \"127.0.0.1:0\"\ntrigger_dir = \"triggers\"\nrefresh_schedule = \"0 0 0 1 1 *\"\n",
    );
    env.setup_csv_export("Seg", &emails(0, 5));
    env.ok(&["export", "run", "exp"]);
    env.ok(&["export", "edit", "exp", "--schedule", "0 30 2 * * *"]);
    let mut daemon = spawn_json(&env, &["daemon"]);
    // The daemon logs its status address on stderr; read it there.
    let stderr = daemon.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once("Status endpoint listening. address=") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("the daemon logs its status address");
    let mut times = Vec::new();
    let healthy = check(&env, &["healthcheck", "--addr", &addr], Expect::Ok, &mut times).unwrap();
    assert_eq!(healthy, serde_json::json!({ "healthy": true, "address": addr, "status": 200 }));
    // The status endpoint's JSON follows the same rule for times.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let url = format!("http://{addr}/status");
        let status: Value = rt.block_on(async { reqwest::get(url).await.unwrap().json().await.unwrap() });
        if status["ready"] == true || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    times_in(&status, &mut times);
    assert!(is_rfc3339_utc(&status["exports"]["exp"]["next_run"]), "{status}");
    assert!(is_rfc3339_utc(&status["exports"]["exp"]["last_run"]["started_at"]), "{status}");
    assert!(times.iter().all(|(_, utc)| *utc), "{times:?}");
    let (code, stdout) = stop(daemon, Vec::new());
    assert_eq!(code, 0);
    assert_eq!(one_document(&stdout).unwrap(), serde_json::json!({ "stopped": true }));
    // With the daemon gone, the same check is an error document and exit 1.
    let doc = check(&env, &["healthcheck", "--addr", &addr], Expect::Fails(1, "failed"), &mut times).unwrap();
    assert!(doc["error"]["message"].as_str().unwrap().contains(&addr), "{doc}");

    let mut sandbox = spawn_json(&env, &["sandbox", "--listen", "127.0.0.1:0"]);
    let mut out = sandbox.stdout.take().unwrap();
    let (mut seen, deadline) = (Vec::new(), Instant::now() + Duration::from_secs(30));
    while one_document(&seen).is_err() {
        assert!(Instant::now() < deadline, "the sandbox printed no document: {}", text(&seen));
        let mut buf = [0u8; 256];
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "the sandbox closed stdout: {}", text(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    sandbox.stdout = Some(out);
    let (code, stdout) = stop(sandbox, seen);
    assert_eq!(code, 0);
    let doc = one_document(&stdout).unwrap();
    assert!(doc["base_url"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{doc}");
}

#[test]
fn a_run_stopped_at_once_by_a_second_signal_prints_an_aborted_document_and_exits_130() {
    let env = Env::new();
    env.setup_csv_export("Seg", &emails(0, 100));
    // Every request is held, so the run is still in flight when the signals come.
    env.hold();
    env.sandbox.reset_stats();
    let run = spawn_json(&env, &["export", "run", "exp"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.stats().total_requests == 0 {
        assert!(Instant::now() < deadline, "the run never reached the sandbox");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(StdCommand::new("kill").args(["-INT", &run.id().to_string()]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(200));
    let (code, stdout) = stop(run, Vec::new());
    env.release();
    assert_eq!(code, 130, "{}", text(&stdout));
    let doc = one_document(&stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&stdout)));
    assert_eq!(doc["error"]["kind"], "aborted", "{doc}");
}

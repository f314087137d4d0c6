//! End-to-end: profile fields mirror the source. A NULL clears a field (or, with `--null-fields skip`, leaves it);
//! a `:TYPE` fixes how a column is sent whatever the source's own typing.

mod common;

use common::*;
use serde_json::json;

/// Writes `members.csv` with columns `email,tier,nick`.
fn write_rows(env: &Env, rows: &[(&str, &str, &str)]) -> std::path::PathBuf {
    let mut text = String::from("email,tier,nick\n");
    for (email, tier, nick) in rows {
        text.push_str(&format!("{email},{tier},{nick}\n"));
    }
    let path = env.path("members.csv");
    std::fs::write(&path, text).unwrap();
    path
}

fn setup(env: &Env, extra: &[&str]) {
    let csv = write_rows(env, &[("a@example.com", "gold", "Al"), ("b@example.com", "gold", "Bo")]);
    env.add_connection();
    env.ok(&["segment", "add", "Nicks", "--source", &format!("csv:{}", csv.display())]);
    let add = ["export", "add", "exp", "--connection", "iterable", "--segment", "Nicks", "--email-field", "email"];
    env.ok(&[&add[..], &["--field", "tier", "--field", "nick"], extra].concat());
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(env.sandbox.user_fields("b@example.com").unwrap()["nick"], "Bo");
}

#[test]
fn a_value_that_becomes_null_clears_the_field_in_iterable_by_default() {
    let env = Env::new();
    setup(&env, &[]);
    assert_eq!(env.json(&["export", "show", "exp"])["null_fields"], "clear");
    write_rows(&env, &[("a@example.com", "gold", "Al"), ("b@example.com", "gold", "")]);
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["lists"][0]["updated"], 1, "only the member whose field changed is sent: {report}");
    assert_eq!(report["lists"][0]["added"], 0, "and it is no new member of the list: {report}");
    let b = env.sandbox.user_fields("b@example.com").unwrap();
    assert_eq!((b.get("nick"), b.get("tier")), (None, Some(&json!("gold"))), "{b:?}");
    assert_eq!(env.sandbox.user_fields("a@example.com").unwrap()["nick"], "Al");
}

#[test]
fn with_null_fields_skip_a_value_that_becomes_null_is_left_as_it_is_in_iterable() {
    let env = Env::new();
    setup(&env, &["--null-fields", "skip"]);
    write_rows(&env, &[("a@example.com", "gold", "Al"), ("b@example.com", "silver", "")]);
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    let b = env.sandbox.user_fields("b@example.com").unwrap();
    assert_eq!((b.get("nick"), b.get("tier")), (Some(&json!("Bo")), Some(&json!("silver"))), "{b:?}");

    // And `export edit` switches it.
    env.ok(&["export", "edit", "exp", "--null-fields", "clear"]);
    env.ok(&["export", "run", "exp"]);
    assert_eq!(env.sandbox.user_fields("b@example.com").unwrap().get("nick"), None);
}

#[test]
fn a_typed_date_column_from_csv_is_sent_in_iterables_format_and_a_value_that_is_no_date_is_invalid() {
    let env = Env::new();
    let csv = env.path("members.csv");
    std::fs::write(
        &csv,
        "email,joined,visits\n\
         a@example.com,2026-03-04,12\n\
         b@example.com,2026-03-04T05:06:07+02:00,007\n\
         c@example.com,next tuesday,1\n\
         d@example.com,2026-01-02 03:04:05,many\n",
    )
    .unwrap();
    env.add_connection();
    env.ok(&["segment", "add", "Dates", "--source", &format!("csv:{}", csv.display())]);
    let add = ["export", "add", "exp", "--connection", "iterable", "--segment", "Dates", "--email-field", "email"];
    env.ok(&[&add[..], &["--field", "joined:date", "--field", "visits=visitCount:long"]].concat());
    let shown = env.json(&["export", "show", "exp"]);
    assert_eq!(shown["fields"][0]["field_type"], "date", "{shown}");

    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!((report["lists"][0]["added"].as_u64(), report["lists"][0]["invalid"].as_u64()), (Some(2), Some(2)));
    let a = env.sandbox.user_fields("a@example.com").unwrap();
    assert_eq!((a["joined"].clone(), a["visitCount"].clone()), (json!("2026-03-04 00:00:00 +00:00"), json!(12)));
    let b = env.sandbox.user_fields("b@example.com").unwrap();
    assert_eq!((b["joined"].clone(), b["visitCount"].clone()), (json!("2026-03-04 03:06:07 +00:00"), json!(7)));
    assert_eq!(env.members("Dates"), vec!["a@example.com", "b@example.com"]);

    let shown = env.json(&["runs", "show", &report["run_id"].to_string(), "--rejected"]);
    let reasons: Vec<String> = shown["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("{} {}", i["member"].as_str().unwrap_or("?"), i["reason"].as_str().unwrap_or("?")))
        .collect();
    assert!(reasons.iter().any(|r| r.starts_with("c@example.com") && r.contains("'joined'") && r.contains("date")));
    assert!(reasons.iter().any(|r| r.starts_with("d@example.com") && r.contains("'visitCount'") && r.contains("long")));
}

#[test]
fn an_unknown_field_type_is_refused_naming_the_types_there_are() {
    let env = Env::new();
    let csv = write_rows(&env, &[("a@example.com", "gold", "Al")]);
    env.add_connection();
    env.ok(&["segment", "add", "Nicks", "--source", &format!("csv:{}", csv.display())]);
    let out = env.run(&[
        "export",
        "add",
        "exp",
        "--connection",
        "iterable",
        "--segment",
        "Nicks",
        "--email-field",
        "email",
        "--field",
        "tier:money",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("unknown type 'money'") && err.contains("string, long, double, boolean, date"), "{err}");
}

#[test]
fn an_untyped_column_is_sent_as_the_type_it_was_first_sent_as_on_later_runs() {
    let env = Env::new();
    let db = env.path("profiles.db");
    write_sqlite(&db, &[(Some("a@example.com"), "gold")]);
    env.add_connection();
    env.ok(&[
        "segment",
        "add",
        "Scores",
        "--source",
        &format!("sqlite:{}", db.display()),
        "--query",
        "SELECT email, 5 AS score FROM profiles",
    ]);
    let add = ["export", "add", "exp", "--connection", "iterable", "--segment", "Scores", "--email-field", "email"];
    env.ok(&[&add[..], &["--field", "score", "--skip-check"]].concat());
    env.ok(&["export", "run", "exp"]);
    assert_eq!(env.sandbox.user_fields("a@example.com").unwrap()["score"], json!(5));
    assert_eq!(env.json(&["export", "show", "exp"])["fields"][0]["sent_type"], "long");

    // The query now yields text: sent as the number it holds, as the field was first sent.
    env.ok(&["segment", "edit", "Scores", "--query", "SELECT email, '6' AS score FROM profiles"]);
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(env.sandbox.user_fields("a@example.com").unwrap()["score"], json!(6));
}

#[test]
fn fields_iterable_drops_are_named_once_as_a_warning_in_the_run_summary_and_in_runs_show() {
    let env = Env::with_sandbox(segment_exporter::sandbox::SandboxOptions { accept_new_fields: false, ..opts() });
    let members = emails(0, 120);
    let rows: Vec<(&str, &str, &str)> = members.iter().map(|e| (e.as_str(), "gold", "Nick")).collect();
    let csv = write_rows(&env, &rows);
    env.add_connection();
    env.ok(&["segment", "add", "Nicks", "--source", &format!("csv:{}", csv.display())]);
    let add = ["export", "add", "exp", "--connection", "iterable", "--segment", "Nicks", "--email-field", "email"];
    env.ok(&[&add[..], &["--field", "tier", "--field", "nick"]].concat());

    let out = env.ok(&["export", "run", "exp"]);
    let summary = text(&out.stdout);
    assert_eq!(summary.matches("Warning: Iterable dropped the field(s) 'nick', 'tier'").count(), 1, "{summary}");
    assert_eq!(env.members("Nicks").len(), 120, "the members are on the list all the same");
    let runs = env.json(&["runs", "--export", "exp"]);
    let run_id = runs[0]["id"].to_string();
    let shown = env.json(&["runs", "show", &run_id]);
    let warnings = shown["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{shown}");
    assert!(warnings[0].as_str().unwrap().contains("does not accept new fields"), "{shown}");
    let human = text(&env.ok(&["runs", "show", &run_id]).stdout);
    assert!(human.contains("Iterable dropped the field(s) 'nick', 'tier'"), "{human}");

    // A run whose answers drop nothing has no warning.
    env.ok(&["export", "edit", "exp", "--remove-field", "nick", "--remove-field", "tier"]);
    let report = env.json(&["export", "run", "exp"]);
    assert!(report.get("warnings").is_none(), "{report}");
}

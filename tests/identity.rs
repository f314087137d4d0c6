//! End-to-end: members are identified as the connection's kind of Iterable project identifies users. A
//! userID-based export sends user ids (with the email beside them), a hybrid one a user id where the row has one
//! and the email otherwise; what the export remembers, diffs and removes is that identity, so an email that changes
//! under one user id, or a hybrid row that gains a user id, is one update of the same member, never an unsubscribe
//! and a subscribe.

mod common;

use common::*;
use segment_exporter::sandbox::{SandboxOptions, SandboxProjectType};

fn env_of(project_type: SandboxProjectType) -> Env {
    Env::with_sandbox(SandboxOptions { project_type, ..opts() })
}

/// Writes `user_id,email,tier` rows; None is an empty cell (NULL in a CSV source).
fn write_rows(env: &Env, rows: &[(Option<&str>, Option<&str>, &str)]) -> std::path::PathBuf {
    let mut text = String::from("user_id,email,tier\n");
    for (user_id, email, tier) in rows {
        text.push_str(&format!("{},{},{tier}\n", user_id.unwrap_or(""), email.unwrap_or("")));
    }
    let path = env.path("members.csv");
    std::fs::write(&path, text).unwrap();
    path
}

fn connection(env: &Env, project_type: &str) {
    env.add_connection_with(&["--project-type", project_type]);
}

const EXPORT: [&str; 9] = ["export", "add", "exp", "--connection", "iterable", "--segment", "VIP", "--field", "tier"];

fn segment(env: &Env, csv: &std::path::Path) {
    env.ok(&["segment", "add", "VIP", "--source", &format!("csv:{}", csv.display())]);
}

fn run_ok(env: &Env) -> serde_json::Value {
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    report
}

fn identities(env: &Env) -> Vec<(Option<String>, Option<String>)> {
    env.sandbox.list_identities(env.list_id("VIP").expect("list VIP")).unwrap()
}

/// A run report's (added, updated, removed) on its one list.
fn changes(report: &serde_json::Value) -> (u64, u64, u64) {
    let l = &report["lists"][0];
    let n = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("no {k} in {report}"));
    (n("added"), n("updated"), n("removed"))
}

fn pair(user_id: Option<&str>, email: Option<&str>) -> (Option<String>, Option<String>) {
    (user_id.map(str::to_string), email.map(str::to_string))
}

#[test]
fn a_user_id_based_export_puts_exactly_the_segments_user_ids_on_its_list_with_their_emails() {
    let env = env_of(SandboxProjectType::UserId);
    connection(&env, "userid");
    let csv = write_rows(
        &env,
        &[
            (Some("u1"), Some("Ann@Example.com"), "gold"),
            (Some("u2"), None, "silver"),
            (Some("u3"), Some("c@x.com"), "gold"),
        ],
    );
    segment(&env, &csv);
    // Without a user id column the export is refused, saying why.
    let out = env.run(&[&EXPORT[..], &["--email-field", "email"]].concat());
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("--user-id-field is required") && err.contains("identifies nobody"), "{err}");

    env.ok(&[&EXPORT[..], &["--email-field", "email", "--user-id-field", "user_id"]].concat());
    let report = run_ok(&env);
    assert_eq!(report["lists"][0]["added"], 3, "{report}");
    assert_eq!(env.members("VIP"), vec!["u1", "u2", "u3"]);
    assert_eq!(
        identities(&env),
        vec![pair(Some("u1"), Some("ann@example.com")), pair(Some("u2"), None), pair(Some("u3"), Some("c@x.com"))]
    );
    assert_eq!(env.sandbox.user_by_user_id("u2").unwrap().1["tier"], "silver");

    // A user who leaves is unsubscribed by user id.
    let csv = write_rows(&env, &[(Some("u1"), Some("ann@example.com"), "gold"), (Some("u3"), Some("c@x.com"), "gold")]);
    assert!(csv.exists());
    let report = run_ok(&env);
    assert_eq!((report["lists"][0]["removed"].as_u64(), report["lists"][0]["added"].as_u64()), (Some(1), Some(0)));
    assert_eq!(env.members("VIP"), vec!["u1", "u3"]);
}

#[test]
fn an_email_change_under_the_same_user_id_sends_one_update_and_no_unsubscribe() {
    let env = env_of(SandboxProjectType::UserId);
    connection(&env, "userid");
    let csv = write_rows(&env, &[(Some("u1"), Some("a@x.com"), "gold"), (Some("u2"), Some("b@x.com"), "gold")]);
    segment(&env, &csv);
    env.ok(&[&EXPORT[..], &["--email-field", "email", "--user-id-field", "user_id"]].concat());
    run_ok(&env);

    write_rows(&env, &[(Some("u1"), Some("a.new@x.com"), "gold"), (Some("u2"), Some("b@x.com"), "gold")]);
    env.sandbox.reset_stats();
    let report = run_ok(&env);
    assert_eq!(changes(&report), (0, 1, 0), "{report}");
    let stats = env.stats();
    assert_eq!(requests(&stats, "lists.unsubscribe"), 0, "{stats:?}");
    assert_eq!(stats.subscribers_received, 1, "{stats:?}");
    assert_eq!(env.sandbox.user_by_user_id("u1").unwrap().0.as_deref(), Some("a.new@x.com"));
    assert_eq!(env.members("VIP"), vec!["u1", "u2"]);

    // Nothing changed since: nothing is sent.
    env.sandbox.reset_stats();
    run_ok(&env);
    assert_eq!(requests(&env.stats(), "lists.subscribe"), 0);
}

#[test]
fn in_a_hybrid_project_a_member_keeping_its_email_or_its_user_id_is_the_same_member_updated() {
    let env = env_of(SandboxProjectType::Hybrid);
    connection(&env, "hybrid");
    let csv = write_rows(
        &env,
        &[(None, Some("a@x.com"), "gold"), (Some("u2"), Some("b@x.com"), "gold"), (None, Some("c@x.com"), "gold")],
    );
    segment(&env, &csv);
    env.ok(&[&EXPORT[..], &["--email-field", "email", "--user-id-field", "user_id"]].concat());
    run_ok(&env);
    assert_eq!(
        identities(&env),
        vec![pair(None, Some("a@x.com")), pair(None, Some("c@x.com")), pair(Some("u2"), Some("b@x.com"))]
    );

    // a gains a user id; u2's email changes; c is as it was.
    write_rows(
        &env,
        &[
            (Some("u1"), Some("a@x.com"), "gold"),
            (Some("u2"), Some("b2@x.com"), "gold"),
            (None, Some("c@x.com"), "gold"),
        ],
    );
    env.sandbox.reset_stats();
    let report = run_ok(&env);
    assert_eq!(changes(&report), (0, 2, 0), "{report}");
    assert_eq!(requests(&env.stats(), "lists.unsubscribe"), 0, "{:?}", env.stats());
    assert_eq!(
        identities(&env),
        vec![pair(None, Some("c@x.com")), pair(Some("u1"), Some("a@x.com")), pair(Some("u2"), Some("b2@x.com"))]
    );

    // u2's row loses its user id but keeps its email: still the same member.
    write_rows(
        &env,
        &[(Some("u1"), Some("a@x.com"), "gold"), (None, Some("b2@x.com"), "gold"), (None, Some("c@x.com"), "gold")],
    );
    env.sandbox.reset_stats();
    let report = run_ok(&env);
    assert_eq!(changes(&report), (0, 1, 0), "{report}");
    assert_eq!(requests(&env.stats(), "lists.unsubscribe"), 0);
    assert_eq!(env.members("VIP"), vec!["a@x.com", "b2@x.com", "c@x.com"]);

    // And then nothing changed: nothing is sent, and a leaver is unsubscribed as who it is now.
    env.sandbox.reset_stats();
    run_ok(&env);
    assert_eq!(env.stats().total_requests, 0, "{:?}", env.stats());
    write_rows(&env, &[(Some("u1"), Some("a@x.com"), "gold"), (None, Some("c@x.com"), "gold")]);
    let report = run_ok(&env);
    assert_eq!(report["lists"][0]["removed"], 1, "{report}");
    assert_eq!(env.members("VIP"), vec!["a@x.com", "c@x.com"]);
}

#[test]
fn a_hybrid_export_given_a_user_id_column_after_its_runs_keeps_its_members() {
    let env = env_of(SandboxProjectType::Hybrid);
    connection(&env, "hybrid");
    let csv = write_rows(&env, &[(Some("u1"), Some("a@x.com"), "gold"), (Some("u2"), Some("b@x.com"), "gold")]);
    segment(&env, &csv);
    env.ok(&[&EXPORT[..], &["--email-field", "email"]].concat());
    run_ok(&env);
    // Its members keep their emails, which match them to their records: allowed.
    env.ok(&["export", "edit", "exp", "--user-id-field", "user_id"]);
    env.sandbox.reset_stats();
    let report = run_ok(&env);
    assert_eq!(changes(&report), (0, 2, 0), "{report}");
    assert_eq!(requests(&env.stats(), "lists.unsubscribe"), 0);
    assert_eq!(identities(&env), vec![pair(Some("u1"), Some("a@x.com")), pair(Some("u2"), Some("b@x.com"))]);
}

#[test]
fn invalid_user_ids_are_counted_invalid_with_the_reason_and_not_sent() {
    let env = env_of(SandboxProjectType::UserId);
    connection(&env, "userid");
    let long = "x".repeat(53);
    let csv = write_rows(
        &env,
        &[
            (Some("good"), None, "gold"),
            (Some(&long), None, "gold"),
            (Some("trailing "), None, "gold"),
            (Some("caf\u{e9}"), None, "gold"),
            (None, Some("only-email@x.com"), "gold"),
        ],
    );
    segment(&env, &csv);
    env.ok(&[&EXPORT[..], &["--email-field", "email", "--user-id-field", "user_id"]].concat());
    let dry = env.json(&["export", "run", "exp", "--dry-run"]);
    assert_eq!(dry["lists"][0]["invalid"], 4, "{dry}");
    let report = run_ok(&env);
    assert_eq!((report["lists"][0]["invalid"].as_u64(), report["lists"][0]["added"].as_u64()), (Some(4), Some(1)));
    assert_eq!(env.members("VIP"), vec!["good"]);
    let shown = env.json(&["runs", "show", &report["run_id"].to_string(), "--rejected"]);
    let reasons: Vec<String> =
        shown["issues"].as_array().unwrap().iter().map(|i| i["reason"].as_str().unwrap().to_string()).collect();
    for why in ["longer than 52 characters", "ends with a space", "not printable ASCII", "user id is NULL"] {
        assert!(reasons.iter().any(|r| r.contains(why)), "no issue says {why:?}: {reasons:?}");
    }
}

#[test]
fn identity_settings_that_cannot_work_are_refused_saying_why_and_what_to_do() {
    let env = env_of(SandboxProjectType::UserId);
    let csv = write_rows(&env, &[(Some("u1"), Some("a@x.com"), "gold")]);
    segment(&env, &csv);
    let base = ["connection", "add", "mail", "--api-key-env", "ITERABLE_KEY", "--base-url", &env.base_url];
    env.ok(&[&base[..], &["--accept-data-privacy", "--project-type", "email"]].concat());
    let add = |connection: &str, extra: &[&str]| {
        let args = ["export", "add", "e", "--connection", connection, "--segment", "VIP"];
        env.run(&[&args[..], extra].concat())
    };
    // Email-based: a user id column is not an identity there.
    let out = add("mail", &["--email-field", "email", "--user-id-field", "user_id"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("--user-id-field does not apply") && err.contains("email-based"), "{err}");
    // Hybrid: at least one identity column.
    let base = ["connection", "add", "hy", "--api-key-env", "ITERABLE_KEY", "--base-url", &env.base_url];
    env.ok(&[&base[..], &["--accept-data-privacy", "--project-type", "hybrid"]].concat());
    let err = text(&add("hy", &[]).stderr);
    assert!(err.contains("give --email-field, --user-id-field or both"), "{err}");

    // A userID-based export that has run may not change its user id column.
    connection(&env, "userid");
    env.ok(&[&EXPORT[..], &["--user-id-field", "user_id"]].concat());
    // Before its first run it may.
    env.ok(&["export", "edit", "exp", "--user-id-field", "email"]);
    env.ok(&["export", "edit", "exp", "--user-id-field", "user_id"]);
    run_ok(&env);
    env.sandbox.reset_stats();
    let out = env.run(&["export", "edit", "exp", "--user-id-field", "email"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("would change who the members") && err.contains("export remove exp"), "{err}");
    let refused = env.json(&["export", "edit", "exp", "--user-id-field", "email"]);
    assert_eq!(refused["error"]["kind"], "conflict", "{refused}");
    assert_eq!(env.json(&["export", "show", "exp"])["user_id_field"], "user_id");
    // Its email column is only the users' address there: changing it is an ordinary edit.
    env.ok(&["export", "edit", "exp", "--email-field", "email"]);
    assert_eq!(env.stats().total_requests, 0);
}

#[test]
fn existing_users_only_can_be_switched_by_export_edit() {
    let env = env_of(SandboxProjectType::Hybrid);
    connection(&env, "hybrid");
    let csv = write_rows(&env, &[(None, Some("new@x.com"), "gold")]);
    segment(&env, &csv);
    env.ok(&[&EXPORT[..], &["--email-field", "email"]].concat());
    env.ok(&["export", "edit", "exp", "--existing-users-only"]);
    assert_eq!(env.json(&["export", "show", "exp"])["existing_users_only"], true);
    let report = run_ok(&env);
    assert_eq!(report["lists"][0]["rejected"], 1, "the unknown user is not created: {report}");
    env.ok(&["export", "edit", "exp", "--no-existing-users-only"]);
    assert_eq!(env.json(&["export", "show", "exp"])["existing_users_only"], false);
    // The member refused as not found is sent again once its retry is due (`--full` sends everyone now).
    let report = env.json(&["export", "run", "exp", "--full"]);
    assert_eq!(report["lists"][0]["added"], 1, "{report}");
    assert_eq!(env.members("VIP"), vec!["new@x.com"]);
}

#[test]
fn an_adopted_hybrid_list_is_read_by_user_id_so_its_earlier_members_are_never_unsubscribed() {
    let env = env_of(SandboxProjectType::Hybrid);
    connection(&env, "hybrid");
    // The list exists, with a user who has both an email and a user id.
    let list = env.create_list_by_hand("VIP");
    let body = serde_json::json!({"listId": list, "subscribers": [{"userId": "old1", "email": "o@x.com"}]});
    env.post_api("/api/lists/subscribe", body);
    let csv = write_rows(&env, &[(Some("old1"), Some("o@x.com"), "gold"), (Some("u1"), Some("a@x.com"), "gold")]);
    segment(&env, &csv);
    env.ok(&[&EXPORT[..], &["--email-field", "email", "--user-id-field", "user_id"]].concat());
    run_ok(&env);
    // old1 leaves the segment: it was on the list before the export adopted it, so it stays.
    write_rows(&env, &[(Some("u1"), Some("a@x.com"), "gold")]);
    let report = run_ok(&env);
    assert_eq!(report["lists"][0]["removed"], 0, "{report}");
    assert_eq!(identities(&env), vec![pair(Some("old1"), Some("o@x.com")), pair(Some("u1"), Some("a@x.com"))]);
}

#[test]
fn held_to_the_specs_one_identifier_per_subscriber_a_user_id_sent_with_its_email_is_refused_and_a_user_id_alone_is_not()
{
    for (project_type, name) in [(SandboxProjectType::UserId, "userid"), (SandboxProjectType::Hybrid, "hybrid")] {
        let env = Env::with_sandbox(SandboxOptions { project_type, one_identifier_per_subscriber: true, ..opts() });
        connection(&env, name);
        let csv = write_rows(&env, &[(Some("u1"), Some("a@x.com"), "gold"), (Some("u2"), Some("b@x.com"), "gold")]);
        segment(&env, &csv);
        // What the exporter sends where user ids identify: each user id with its email (and preferUserId).
        env.ok(&[&EXPORT[..], &["--email-field", "email", "--user-id-field", "user_id"]].concat());
        let report = env.json(&["export", "run", "exp"]);
        assert_eq!(report["status"], "failed", "{name}: {report}");
        let error = report["error"].as_str().unwrap();
        assert!(error.contains("BadParams") && error.contains("(but not both)"), "{name}: {error}");
        assert_eq!(env.members("VIP"), Vec::<String>::new(), "{name}: nothing went through");

        // A user id alone conforms, and goes through: a new user then has no email address to be mailed at.
        env.ok(&["export", "remove", "exp"]);
        env.ok(&[&EXPORT[..], &["--user-id-field", "user_id"]].concat());
        run_ok(&env);
        assert_eq!(identities(&env), vec![pair(Some("u1"), None), pair(Some("u2"), None)], "{name}");
    }
}

//! End-to-end: a connection knows the kind of Iterable project it reaches (email-based, userID-based or hybrid), and
//! an export whose identity columns cannot work in it (no user id column for a userID-based project, where an email
//! identifies nobody) is refused with the reason instead of being sent emails. Identity itself: tests/identity.rs.

mod common;

use common::*;
use segment_exporter::sandbox::{SandboxOptions, SandboxProjectType};

fn add_connection(env: &Env, name: &str, extra: &[&str]) -> std::process::Output {
    let base = ["connection", "add", name, "--api-key-env", "ITERABLE_KEY", "--base-url", &env.base_url];
    env.run(&[&base[..], &["--accept-data-privacy"], extra].concat())
}

#[test]
fn a_new_connection_is_hybrid_by_default_and_connection_show_says_so() {
    let env = Env::new();
    env.setup_csv_export("VIP", &emails(0, 10));
    assert_eq!(env.json(&["connection", "show", "iterable"])["project_type"], "hybrid");
    let human = text(&env.ok(&["connection", "show", "iterable"]).stdout);
    assert!(human.lines().any(|l| l.contains("project type") && l.contains("hybrid")), "{human}");
    // Members are identified by email, which identifies users in a hybrid project too.
    env.run_exact("VIP", &emails(0, 10));

    assert!(add_connection(&env, "mail", &["--project-type", "email"]).status.success());
    assert_eq!(env.json(&["connection", "show", "mail"])["project_type"], "email");
}

#[test]
fn connection_add_help_names_each_project_type_and_how_its_exports_identify_members() {
    let env = Env::new();
    let help = text(&env.ok(&["connection", "add", "--help"]).stdout);
    let at = help.find("--project-type").unwrap_or_else(|| panic!("{help}"));
    let option = &help[at..help[at..].find("--usable-by").map_or(help.len(), |end| at + end)];
    for word in ["email", "userid", "hybrid", "by user id"] {
        assert!(option.contains(word), "--project-type's help lacks {word:?}: {option}");
    }
    assert!(!help.contains("not supported"), "the README supports every project type: {help}");
}

#[test]
fn the_sandbox_imitates_by_default_the_project_type_a_new_connection_says_it_reaches() {
    let env = Env::new();
    let default_of = |args: &[&str]| {
        let help = text(&env.ok(args).stdout);
        let at = help.find("--project-type").unwrap_or_else(|| panic!("{help}"));
        let after = &help[at..];
        let default = after.find("[default: ").unwrap_or_else(|| panic!("{after}"));
        after[default + 10..].split(']').next().unwrap().to_string()
    };
    let connection = default_of(&["connection", "add", "--help"]);
    assert_eq!(connection, "hybrid");
    assert_eq!(default_of(&["sandbox", "--help"]), connection, "the demo and the tour meet the project they say");
    assert_eq!(SandboxOptions::default().project_type, SandboxProjectType::Hybrid);
}

#[test]
fn an_email_based_connection_in_the_eu_data_centre_is_warned_about() {
    let env = Env::new();
    let out = add_connection(&env, "eu-mail", &["--region", "eu", "--project-type", "email"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("EU data centre has no email-based projects"), "{err}");
    let out = add_connection(&env, "eu-hybrid", &["--region", "eu", "--project-type", "hybrid"]);
    assert!(!text(&out.stderr).contains("email-based"), "{}", text(&out.stderr));
}

#[test]
fn an_export_without_a_user_id_column_is_refused_for_a_user_id_based_project_by_add_and_by_a_run() {
    let env = Env::new();
    let csv = env.write_csv("members.csv", &[("a@example.com", "gold")]);
    assert!(add_connection(&env, "iterable", &["--project-type", "userid"]).status.success());
    env.ok(&["segment", "add", "VIP", "--source", &format!("csv:{}", csv.display())]);
    let add = ["export", "add", "exp", "--connection", "iterable", "--segment", "VIP", "--email-field", "email"];
    let out = env.run(&add);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("userID-based") && err.contains("identifies nobody"), "{err}");

    // An export whose connection turned out to be userID-based: its run is refused before any request.
    env.ok(&[
        "connection",
        "add",
        "other",
        "--api-key-env",
        "ITERABLE_KEY",
        "--base-url",
        &env.base_url,
        "--accept-data-privacy",
    ]);
    env.ok(&["export", "add", "exp", "--connection", "other", "--segment", "VIP", "--email-field", "email"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::ConnectOptions;
        let mut conn =
            sqlx::sqlite::SqliteConnectOptions::new().filename(env.path("store.db")).connect().await.unwrap();
        sqlx::query("UPDATE connections SET project_type = 'userid' WHERE name = 'other'")
            .execute(&mut conn)
            .await
            .unwrap();
    });
    env.sandbox.reset_stats();
    let out = env.run(&["export", "run", "exp"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("userID-based"), "{}", text(&out.stderr));
    assert_eq!(env.stats().total_requests, 0, "{:?}", env.stats());
}

#[test]
fn existing_users_only_does_not_create_users_and_counts_the_unknown_ones_as_not_found() {
    let env = Env::with_sandbox(SandboxOptions { project_type: SandboxProjectType::Hybrid, ..opts() });
    // known@ is already a user of the project (subscribed to another list by someone else).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let url = |p: &str| format!("{}{p}", env.base_url);
        let created: serde_json::Value = http
            .post(url("/api/lists"))
            .header("Api-Key", KEY)
            .json(&serde_json::json!({"name": "Other"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let body = serde_json::json!({"listId": created["listId"], "subscribers": [{"email": "known@example.com"}]});
        let r = http.post(url("/api/lists/subscribe")).header("Api-Key", KEY).json(&body).send().await.unwrap();
        assert!(r.status().is_success());
    });
    let csv = env.write_csv(
        "members.csv",
        &[("known@example.com", "gold"), ("new1@example.com", "gold"), ("new2@example.com", "gold")],
    );
    env.add_connection();
    env.ok(&["segment", "add", "VIP", "--source", &format!("csv:{}", csv.display())]);
    let add = ["export", "add", "exp", "--connection", "iterable", "--segment", "VIP", "--email-field", "email"];
    env.ok(&[&add[..], &["--existing-users-only"]].concat());

    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!((report["lists"][0]["added"].as_u64(), report["lists"][0]["rejected"].as_u64()), (Some(1), Some(2)));
    assert_eq!(env.members("VIP"), vec!["known@example.com"]);
    assert!(env.sandbox.user_fields("new1@example.com").is_none(), "no user was created");
    let shown = env.json(&["runs", "show", &report["run_id"].to_string(), "--rejected"]);
    let issues = shown["issues"].as_array().unwrap();
    assert!(issues.iter().all(|i| i["reason"].as_str().unwrap().contains("notFoundEmails")), "{issues:?}");

    // In an email-based project Iterable ignores the option and would create every member: refused, saying why.
    assert!(add_connection(&env, "mail", &["--project-type", "email"]).status.success());
    let out = env.run(&[
        "export",
        "add",
        "exp2",
        "--connection",
        "mail",
        "--segment",
        "VIP",
        "--email-field",
        "email",
        "--existing-users-only",
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("--existing-users-only") && err.contains("email-based"), "{err}");
}

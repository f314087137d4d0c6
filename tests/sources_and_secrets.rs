//! End-to-end: every source kind feeds a real export, and keys and emails stay out of output and logs.

mod common;

use common::*;

fn export_of(env: &Env, segment: &str, source: &str, query: Option<&str>) -> serde_json::Value {
    env.add_connection();
    env.add_segment_and_export(segment, source, query);
    env.json(&["export", "run", "exp"])
}

#[test]
fn a_sqlite_segment_is_exported_with_its_query_applied() {
    let env = Env::new();
    let db = env.path("profiles.db");
    write_sqlite(
        &db,
        &[
            (Some("a@example.com"), "gold"),
            (Some("b@example.com"), "silver"),
            (None, "gold"),
            (Some("C@example.com"), "gold"),
        ],
    );
    let report = export_of(
        &env,
        "Gold",
        &format!("sqlite:{}", db.display()),
        Some("SELECT email, tier FROM profiles WHERE tier = 'gold'"),
    );
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["lists"][0]["invalid"], 1);
    assert_eq!(env.members("Gold"), vec!["a@example.com", "c@example.com"]);
}

#[test]
fn a_relative_file_path_is_stored_absolute_so_the_daemon_finds_it_from_anywhere() {
    let env = Env::new();
    env.write_csv("rel.csv", &[("a@example.com", "gold")]);
    env.ok(&["segment", "add", "Rel", "--source", "csv:rel.csv"]);
    let listed = env.json(&["segment", "list"]);
    let expected = format!("csv:{}", env.path("rel.csv").display());
    assert_eq!(listed[0]["source"], expected.as_str());
}

#[test]
fn a_jsonl_segment_is_exported() {
    let env = Env::new();
    let path = env.path("people.jsonl");
    std::fs::write(
        &path,
        "{\"email\":\"x@example.com\",\"tier\":\"gold\"}\n\n{\"email\":\"y@example.com\",\"tier\":\"gold\"}\n",
    )
    .unwrap();
    let report = export_of(&env, "Json", &format!("jsonl:{}", path.display()), None);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(env.members("Json"), vec!["x@example.com", "y@example.com"]);
}

#[test]
fn a_malformed_jsonl_file_fails_the_run_naming_the_line_and_changes_nothing() {
    let env = Env::new();
    let path = env.path("people.jsonl");
    std::fs::write(&path, "{\"email\":\"x@example.com\",\"tier\":\"gold\"}\n").unwrap();
    export_of(&env, "Json", &format!("jsonl:{}", path.display()), None);
    std::fs::write(&path, "{\"email\":\"x@example.com\",\"tier\":\"gold\"}\n{broken\n").unwrap();
    env.sandbox.reset_stats();
    let out = env.run(&["export", "run", "exp"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("Json") && err.contains('2'), "{err}");
    assert_eq!(requests(&env.stats(), "lists.unsubscribe"), 0);
    assert_eq!(env.members("Json"), vec!["x@example.com"]);
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn a_postgres_segment_is_exported_from_a_real_server() {
    let url = std::env::var("TEST_POSTGRES_URL")
        .expect("TEST_POSTGRES_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test); .ci/run sets it");
    let table = format!("e2e_profiles_{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query(&format!("DROP TABLE IF EXISTS {table}")).execute(&mut conn).await.unwrap();
        sqlx::query(&format!("CREATE TABLE {table} (email text, tier text, score int)")).execute(&mut conn).await.unwrap();
        sqlx::query(&format!(
            "INSERT INTO {table} VALUES ('p1@example.com','gold',1),('P2@Example.com','gold',2),('p3@example.com','bronze',3)"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    });
    let env = Env::new();
    let report =
        export_of(&env, "PG gold", &url, Some(&format!("SELECT email, tier FROM {table} WHERE tier = 'gold'")));
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(env.members("PG gold"), vec!["p1@example.com", "p2@example.com"]);
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query(&format!("DROP TABLE {table}")).execute(&mut conn).await.unwrap();
    });
}

#[test]
fn a_key_given_on_stdin_is_stored_encrypted_and_never_shown() {
    let env = Env::new();
    let out = env
        .cmd()
        .args(["connection", "add", "vault", "--api-key-stdin", "--base-url", &env.base_url, "--accept-data-privacy"])
        .write_stdin(format!("{KEY}\n"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let store = std::fs::read(env.path("store.db")).unwrap();
    assert!(!store.windows(KEY.len()).any(|w| w == KEY.as_bytes()), "the key must not be stored in clear");
    let key_file = env.path("store.db.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    for args in [
        &["connection", "show", "vault"][..],
        &["connection", "list"][..],
        &["--json", "connection", "show", "vault"][..],
    ] {
        let out = env.ok(args);
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(!all.contains(KEY), "{args:?} printed the key");
        assert!(all.contains("6789"), "{args:?} shows the last four characters: {all}");
    }
    // The stored key works.
    env.ok(&["connection", "test", "vault"]);
}

#[test]
fn a_connection_needs_privacy_consent() {
    let env = Env::new();
    let out = env.run(&["connection", "add", "c", "--api-key-env", "ITERABLE_KEY", "--base-url", &env.base_url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--accept-data-privacy"));
    assert!(env.json(&["connection", "list"]).as_array().unwrap().is_empty());
}

#[test]
fn info_logs_hold_no_email_addresses_or_keys() {
    let env = Env::new();
    env.setup_csv_export("Logged", &emails(0, 30));
    let out = env.cmd().env("RUST_LOG", "info").args(["export", "run", "exp"]).output().unwrap();
    assert!(out.status.success());
    let logs = text(&out.stderr);
    assert!(logs.contains("Run finished"), "{logs}");
    assert!(!logs.contains("@example.com"), "{logs}");
    assert!(!logs.contains(KEY));
}

#[test]
fn connection_remove_refuses_while_exports_use_it_and_can_detach_them() {
    let env = Env::new();
    env.setup_csv_export("Seg", &emails(0, 3));
    let out = env.run(&["connection", "remove", "iterable"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--detach-exports"));
    env.ok(&["connection", "remove", "iterable", "--detach-exports"]);
    let shown = env.json(&["export", "show", "exp"]);
    assert_eq!(shown["enabled"], false);
    let out = env.run(&["export", "run", "exp"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no connection"));
}

#[test]
fn bad_schedules_and_reserved_fields_are_refused_at_export_add() {
    let env = Env::new();
    let csv = env.write_csv("m.csv", &[("a@example.com", "gold")]);
    env.add_connection();
    env.ok(&["segment", "add", "S", "--source", &format!("csv:{}", csv.display())]);
    let base = ["export", "add", "e", "--connection", "iterable", "--segment", "S", "--email-field", "email"];
    let out = env.run(&[&base[..], &["--schedule", "30 2 * * *"]].concat());
    assert!(text(&out.stderr).contains("six fields"), "{}", text(&out.stderr));
    let out = env.run(&[&base[..], &["--field", "tier=emailListIds"]].concat());
    assert!(text(&out.stderr).contains("emailListIds"), "{}", text(&out.stderr));
    let out = env.run(&[&base[..], &["--field", "missing_col"]].concat());
    assert!(text(&out.stderr).contains("no column 'missing_col'"), "{}", text(&out.stderr));
    assert!(env.json(&["export", "list"]).as_array().unwrap().is_empty());
}

#[test]
fn an_invalid_config_file_exits_78_listing_every_problem() {
    let env = Env::new();
    let bad = env.path("bad.toml");
    std::fs::write(&bad, "[iterable]\nbatch_size = 0\nconcurrency = 0\n").unwrap();
    let out = env.cmd().env("SEGMENT_EXPORTER_CONFIG", &bad).arg("validate").output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = text(&out.stderr);
    assert!(err.contains("batch_size") && err.contains("concurrency"), "{err}");
    env.ok(&["validate"]);
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn a_database_error_quoting_a_members_email_keeps_it_out_of_logs_and_output() {
    let url = std::env::var("TEST_POSTGRES_URL")
        .expect("TEST_POSTGRES_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test); .ci/run sets it");
    let table = format!("e2e_redact_{}", std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sql = |statement: String| {
        rt.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query(&statement).execute(&mut conn).await.unwrap();
        })
    };
    sql(format!("DROP TABLE IF EXISTS {table}"));
    sql(format!("CREATE TABLE {table} (email text, tier text)"));
    sql(format!("INSERT INTO {table} VALUES ('ok@example.com', 'gold')"));
    let env = Env::new();
    // The query casts the email to a date by mistake once a member with a private address joins.
    let query =
        format!("SELECT email, CASE WHEN email LIKE 'bob%' THEN email::date::text ELSE tier END AS tier FROM {table}");
    let report = export_of(&env, "PG typo", &url, Some(&query));
    assert_eq!(report["status"], "succeeded", "{report}");
    sql(format!("INSERT INTO {table} VALUES ('bob.private@example.com', 'gold')"));
    let out = env.cmd().env("RUST_LOG", "info").args(["export", "run", "exp"]).output().unwrap();
    let debug = env.cmd().env("RUST_LOG", "debug").args(["export", "run", "exp"]).output().unwrap();
    sql(format!("DROP TABLE {table}"));
    assert_eq!(out.status.code(), Some(1));
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(all.contains("invalid input syntax for type date"), "the error still says what went wrong: {all}");
    assert!(!all.contains("bob.private"), "an email reached logs or output above debug: {all}");
    let history = serde_json::to_string(&env.json(&["runs"])).unwrap();
    assert!(!history.contains("bob.private"), "{history}");
    assert!(text(&debug.stderr).contains("bob.private"), "debug level keeps the full text for the operator");
}

#[test]
fn a_query_that_fails_at_segment_add_is_refused_with_advice_that_works_when_followed() {
    let env = Env::new();
    let db = env.path("profiles.db");
    write_sqlite(&db, &[(Some("a@example.com"), "gold")]);
    let source = format!("sqlite:{}", db.display());
    let bad = ["segment", "add", "VIP list", "--source", &source, "--query", "SELECT email, tierz FROM profiles"];
    let out = env.run(&bad);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no such column: tierz") && err.contains("Fix the SQL"), "{err}");
    assert!(err.contains("--skip-check") && err.contains("`segment preview \"VIP list\"`"), "{err}");
    // Followed: saved as it is, previewed (the same failure, with the segment's name), fixed, previewed.
    env.ok(&[&bad[..], &["--skip-check"]].concat());
    let preview = env.run(&["segment", "preview", "VIP list"]);
    assert_eq!(preview.status.code(), Some(1));
    assert!(text(&preview.stderr).contains("no such column: tierz"), "{}", text(&preview.stderr));
    env.ok(&["segment", "edit", "VIP list", "--query", "SELECT email, tier FROM profiles"]);
    let preview = text(&env.ok(&["segment", "preview", "VIP list"]).stdout);
    assert!(preview.contains("a@example.com") && preview.contains("gold"), "{preview}");
}

#[test]
fn sample_data_refuses_to_replace_an_existing_database_unless_forced() {
    let env = Env::new();
    let db = env.path("crm.db");
    write_sqlite(&db, &[(Some("keep@example.com"), "gold")]);
    let path = db.to_str().unwrap();
    let out = env.run(&["sample-data", path, "--profiles", "5"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("exists already") && err.contains("--force"), "{err}");
    // Untouched: its own table is still there, and no profiles table was written.
    let rows =
        env.ok(&["segment", "add", "crm", "--source", &format!("sqlite:{path}"), "--query", "SELECT * FROM profiles"]);
    assert!(text(&rows.stdout).contains("crm"), "{}", text(&rows.stdout));
    let kept = text(&env.ok(&["segment", "preview", "crm"]).stdout);
    assert!(kept.contains("keep@example.com") && !kept.contains("customer"), "{kept}");

    env.ok(&["sample-data", path, "--profiles", "5", "--force"]);
    let replaced = text(&env.ok(&["segment", "preview", "crm"]).stdout);
    assert!(replaced.contains("customer1@example.com") && !replaced.contains("keep@example.com"), "{replaced}");
}

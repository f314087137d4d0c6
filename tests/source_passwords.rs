//! The database passwords of PostgreSQL sources: sealed with the master key or kept as a reference, never in the
//! store's files in clear, never printed; and a store written before they were kept apart is upgraded in place.

mod common;

use std::path::Path;

use common::*;
use segment_exporter::store::{SourcePassword, Store};

/// The PostgreSQL server of the tests (trust authentication: any password is accepted, and ignored).
fn pg_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .expect("TEST_POSTGRES_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test); .ci/run sets it")
}

/// `url` with `password` in its user part.
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user_info, host) = rest.rsplit_once('@').unwrap_or(("postgres", rest));
    let user = user_info.split(':').next().unwrap();
    format!("{scheme}://{user}:{password}@{host}")
}

/// A password no other test uses, so finding it in a file means this test put it there.
fn password(tag: &str) -> String {
    format!("Sup3rSecretPW-{tag}-{}", std::process::id())
}

/// Runs SQL statements against the test server.
fn pg(statements: &[String]) {
    let url = pg_url();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        for statement in statements {
            sqlx::query(statement).execute(&mut conn).await.unwrap();
        }
    });
}

/// A table `name(email, tier)` with two gold members; dropped again by the returned guard.
fn pg_table(name: &str) -> impl Drop {
    pg(&[
        format!("DROP TABLE IF EXISTS {name}"),
        format!("CREATE TABLE {name} (email text, tier text)"),
        format!("INSERT INTO {name} VALUES ('p1@example.com', 'gold'), ('p2@example.com', 'gold')"),
    ]);
    struct Dropper(String);
    impl Drop for Dropper {
        fn drop(&mut self) {
            pg(&[format!("DROP TABLE IF EXISTS {}", self.0)]);
        }
    }
    Dropper(name.to_string())
}

/// The store's files (database, write-ahead log, shared memory) that hold `needle`.
fn store_files_holding(env: &Env, needle: &str) -> Vec<String> {
    ["store.db", "store.db-wal", "store.db-shm"]
        .into_iter()
        .filter(|file| {
            std::fs::read(env.path(file))
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
        })
        .map(str::to_string)
        .collect()
}

fn all_output(out: &std::process::Output) -> String {
    text(&out.stdout) + &text(&out.stderr)
}

/// Runs the binary with extra environment variables.
fn run_with(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = env.cmd();
    for (name, value) in vars {
        cmd.env(name, value);
    }
    cmd.args(args).output().unwrap()
}

/// The segment as the library reads it, and its password resolved (None when it has none kept apart).
fn stored_segment(env: &Env, name: &str) -> (segment_exporter::store::Segment, Option<String>) {
    use secrecy::ExposeSecret;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(&env.path("store.db")).await.unwrap();
        let segment = store.segment(name).await.unwrap();
        store.close().await;
        // A reference this test process cannot read (an unset variable) reads as None.
        let password = segment_exporter::secrets::resolve_source_password(&segment, &env.path("store.db.key"))
            .ok()
            .flatten()
            .map(|p| p.expose_secret().to_string());
        (segment, password)
    })
}

/// A store as the release before this one left it (migrations before 20261201000200), holding segment `name` with
/// `source` as that release stored it, and whatever `more` inserts.
fn old_store(path: &Path, name: &str, source: &str, more: &[(String, Vec<Vec<u8>>)]) {
    let migrations = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir("migrations/sqlite").unwrap() {
        let entry = entry.unwrap();
        let file = entry.file_name().into_string().unwrap();
        let version: i64 = file.split('_').next().unwrap().parse().unwrap();
        if version < 20261201000200 {
            std::fs::copy(entry.path(), migrations.path().join(&file)).unwrap();
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        sqlx::migrate::Migrator::new(migrations.path()).await.unwrap().run(&pool).await.unwrap();
        sqlx::query("INSERT INTO segments (name, source, query, created_at) VALUES (?, ?, ?, '2026-11-01T00:00:00Z')")
            .bind(name)
            .bind(source)
            .bind("SELECT email, tier FROM nowhere")
            .execute(&pool)
            .await
            .unwrap();
        for (sql, blobs) in more {
            let mut query = sqlx::query(sql);
            for blob in blobs {
                query = query.bind(blob.clone());
            }
            query.execute(&pool).await.unwrap();
        }
        pool.close().await;
    });
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn a_password_in_a_postgres_url_is_sealed_never_reaches_the_store_files_and_runs_still_read_the_segment() {
    let table = format!("pw_sealed_{}", std::process::id());
    let _table = pg_table(&table);
    let secret = password("sealed");
    let env = Env::new();
    env.add_connection();
    let out = env.ok(&[
        "segment",
        "add",
        "PG",
        "--source",
        &with_password(&pg_url(), &secret),
        "--query",
        &format!("SELECT email, tier FROM {table}"),
    ]);
    assert!(!all_output(&out).contains(&secret), "{}", all_output(&out));
    assert!(text(&out.stdout).contains(":***@"), "the output shows where the password goes: {}", text(&out.stdout));
    env.ok(&["export", "add", "exp", "--connection", "iterable", "--segment", "PG", "--email-field", "email"]);
    let run = run_with(&env, &[("RUST_LOG", "info")], &["--json", "export", "run", "exp"]);
    assert!(run.status.success(), "{}", all_output(&run));
    assert!(!all_output(&run).contains(&secret), "a run printed the password: {}", all_output(&run));
    assert_eq!(env.members("PG"), vec!["p1@example.com", "p2@example.com"]);

    assert_eq!(store_files_holding(&env, &secret), Vec::<String>::new(), "the password is in the store in clear");
    let (segment, resolved) = stored_segment(&env, "PG");
    assert!(matches!(segment.password, SourcePassword::Sealed { .. }), "{segment:?}");
    assert_eq!(resolved.as_deref(), Some(secret.as_str()), "the sealed password opens with the master key");
    for args in [&["segment", "list"][..], &["--json", "segment", "list"][..], &["runs"][..]] {
        let out = env.ok(args);
        assert!(!all_output(&out).contains(&secret), "{args:?}: {}", all_output(&out));
        if args[0] != "runs" {
            assert!(text(&out.stdout).contains("postgres:***@"), "{args:?}: {}", text(&out.stdout));
        }
    }
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn password_env_and_password_file_store_only_the_reference_and_postgres_runs_read_them() {
    let table = format!("pw_refs_{}", std::process::id());
    let _table = pg_table(&table);
    let secret = password("reference");
    let env = Env::new();
    env.add_connection();
    let file = env.path("pg-password");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let query = format!("SELECT email, tier FROM {table}");
    let vars = [("SEG_PG_PASSWORD", secret.as_str())];
    let url = pg_url();
    let add = |name: &str, how: &[&str]| {
        let args = [&["segment", "add", name, "--source", &url, "--query", &query][..], how].concat();
        let out = run_with(&env, &vars, &args);
        assert!(out.status.success(), "{}", all_output(&out));
        assert!(text(&out.stdout).contains("postgres:***@"), "{}", text(&out.stdout));
    };
    add("By env", &["--password-env", "SEG_PG_PASSWORD"]);
    add("By file", &["--password-file", file.to_str().unwrap()]);
    let (by_env, _) = stored_segment(&env, "By env");
    assert_eq!(by_env.password, SourcePassword::Env("SEG_PG_PASSWORD".into()));
    let (by_file, resolved) = stored_segment(&env, "By file");
    assert_eq!(by_file.password, SourcePassword::File(file.display().to_string()));
    assert_eq!(resolved.as_deref(), Some(secret.as_str()), "read from the file, without its line ending");
    assert!(!env.path("store.db.key").exists(), "nothing was sealed, so no master key was needed");

    let export = ["export", "add", "exp", "--connection", "iterable", "--segment", "By env", "--segment", "By file"];
    let out = run_with(&env, &vars, &[&export[..], &["--email-field", "email"]].concat());
    assert!(out.status.success(), "{}", all_output(&out));
    let run = run_with(&env, &[vars[0], ("RUST_LOG", "info")], &["--json", "export", "run", "exp"]);
    assert!(run.status.success(), "{}", all_output(&run));
    assert!(!all_output(&run).contains(&secret), "{}", all_output(&run));
    assert_eq!(env.members("By env"), vec!["p1@example.com", "p2@example.com"]);
    assert_eq!(env.members("By file"), vec!["p1@example.com", "p2@example.com"]);
    assert_eq!(store_files_holding(&env, &secret), Vec::<String>::new());
    assert_eq!(store_files_holding(&env, "SEG_PG_PASSWORD").len(), 1, "the reference is what is stored");
}

#[test]
fn a_missing_password_variable_is_an_error_naming_the_segment_and_the_variable() {
    let env = Env::new();
    env.add_connection();
    let add = ["segment", "add", "Churn", "--source", "postgres://reader@127.0.0.1:1/crm", "--query", "SELECT 1"];
    let with_env = [&add[..], &["--password-env", "CHURN_DB_PASSWORD"]].concat();
    let out = env.run(&with_env);
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    let err = text(&out.stderr);
    assert!(err.contains("'Churn'") && err.contains("CHURN_DB_PASSWORD") && err.contains("not set"), "{err}");
    assert_eq!(env.json(&["segment", "list"]), serde_json::json!([]), "nothing was saved");

    // Saved unchecked (the daemon's environment may have it), every use says what is missing.
    env.ok(&[&with_env[..], &["--skip-check"]].concat());
    env.ok(&[
        "export",
        "add",
        "exp",
        "--connection",
        "iterable",
        "--segment",
        "Churn",
        "--email-field",
        "email",
        "--skip-check",
    ]);
    for args in [&["segment", "preview", "Churn"][..], &["export", "run", "exp"][..]] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", all_output(&out));
        let err = text(&out.stderr);
        assert!(err.contains("segment 'Churn'") && err.contains("CHURN_DB_PASSWORD"), "{args:?}: {err}");
        assert!(err.contains("--password-env"), "says how to change it: {err}");
    }
    let preview = env.json(&["segment", "preview", "Churn"]);
    assert_eq!(preview["error"]["kind"], "secret", "{preview}");
    let runs = env.json(&["runs"]);
    assert!(runs[0]["error"].as_str().unwrap().contains("CHURN_DB_PASSWORD"), "{runs}");
    assert!(env.sandbox_lists().is_empty(), "no list was touched");
}

#[test]
fn nothing_prints_a_source_password_neither_list_preview_and_run_errors_nor_info_logs() {
    let secret = password("quiet");
    let env = Env::new();
    env.add_connection();
    // Nothing listens on port 1: every read fails, and its error must not carry the password.
    let source = format!("postgres://reader:{secret}@127.0.0.1:1/crm?sslmode=disable");
    let add = ["segment", "add", "Quiet", "--source", &source, "--query", "SELECT email, tier FROM t"];
    let out = run_with(&env, &[("RUST_LOG", "info")], &add);
    assert_eq!(out.status.code(), Some(1), "the check fails: {}", all_output(&out));
    assert!(!all_output(&out).contains(&secret), "{}", all_output(&out));
    env.ok(&[&add[..], &["--skip-check"]].concat());
    let export = ["export", "add", "exp", "--connection", "iterable", "--segment", "Quiet", "--email-field", "email"];
    env.ok(&[&export[..], &["--skip-check"]].concat());

    let mut seen = String::new();
    for args in [
        &["segment", "list"][..],
        &["--json", "segment", "list"][..],
        &["segment", "preview", "Quiet"][..],
        &["export", "run", "exp"][..],
        &["--json", "export", "run", "exp"][..],
        &["runs"][..],
        &["--json", "runs"][..],
        &["export", "show", "exp"][..],
    ] {
        let out = run_with(&env, &[("RUST_LOG", "info")], args);
        seen.push_str(&all_output(&out));
        assert!(!all_output(&out).contains(&secret), "{args:?} printed the password: {}", all_output(&out));
    }
    assert!(seen.contains("postgres://reader:***@127.0.0.1:1/crm"), "the source is shown redacted: {seen}");
    assert!(seen.contains("Cannot open"), "the errors still say what went wrong: {seen}");
    assert_eq!(store_files_holding(&env, &secret), Vec::<String>::new());
}

#[test]
fn a_sealed_source_password_keeps_a_lost_master_key_from_being_replaced() {
    let env = Env::new();
    let secret = password("lost-key");
    let source = format!("postgres://reader:{secret}@127.0.0.1:1/crm");
    env.ok(&["segment", "add", "Sealed", "--source", &source, "--query", "SELECT 1", "--skip-check"]);
    let key_file = env.path("store.db.key");
    assert!(key_file.exists(), "the first sealed secret creates the master key");
    std::fs::rename(&key_file, env.path("elsewhere.key")).unwrap();

    let stdin_key = env
        .cmd()
        .args(["connection", "add", "vault", "--api-key-stdin", "--base-url", &env.base_url, "--accept-data-privacy"])
        .write_stdin(format!("{KEY}\n"))
        .output()
        .unwrap();
    assert_eq!(stdin_key.status.code(), Some(1), "{}", all_output(&stdin_key));
    let err = text(&stdin_key.stderr);
    assert!(err.contains("is missing") && err.contains("segment 'Sealed'"), "{err}");
    let another = env.run(&[
        "segment",
        "add",
        "Other",
        "--source",
        "postgres://reader:pw2@127.0.0.1:1/crm",
        "--query",
        "SELECT 1",
        "--skip-check",
    ]);
    assert_eq!(another.status.code(), Some(1), "{}", all_output(&another));
    let err = text(&another.stderr);
    assert!(err.contains("segment 'Sealed'") && err.contains("--password-env"), "{err}");
    assert!(!key_file.exists(), "no new master key may be created beside sealed passwords");
    let names = env.json(&["segment", "list"]);
    assert_eq!(names.as_array().unwrap().len(), 1, "nothing was stored: {names}");

    // A password kept by reference needs no master key; the sealed one opens again once the key is back.
    let by_env = ["segment", "add", "Other", "--source", "postgres://reader@127.0.0.1:1/crm", "--query", "SELECT 1"];
    env.ok(&[&by_env[..], &["--password-env", "OTHER_PW", "--skip-check"]].concat());
    std::fs::rename(env.path("elsewhere.key"), &key_file).unwrap();
    assert_eq!(stored_segment(&env, "Sealed").1.as_deref(), Some(secret.as_str()));
}

#[test]
fn editing_a_segment_keeps_its_sealed_password_for_a_new_url_and_can_move_it_to_a_reference() {
    let env = Env::new();
    let secret = password("edit");
    let source = format!("postgres://reader:{secret}@127.0.0.1:1/crm");
    env.ok(&["segment", "add", "S", "--source", &source, "--query", "SELECT 1", "--skip-check"]);
    env.ok(&[
        "segment",
        "add",
        "T",
        "--source",
        "postgres://other@127.0.0.1:2/crm",
        "--query",
        "SELECT 1",
        "--skip-check",
    ]);

    // A new host without password: the password goes along, sealed again for the new source.
    env.ok(&["segment", "edit", "S", "--source", "postgres://reader@127.0.0.1:3/crm2", "--skip-check"]);
    let (s, resolved) = stored_segment(&env, "S");
    assert_eq!(s.source, "postgres://reader@127.0.0.1:3/crm2");
    assert_eq!(resolved.as_deref(), Some(secret.as_str()));
    // The query alone: the password stays as it is.
    env.ok(&["segment", "edit", "S", "--query", "SELECT 2", "--skip-check"]);
    assert_eq!(stored_segment(&env, "S").1.as_deref(), Some(secret.as_str()));

    // A sealed password opens only for its own segment: moved to another row, it is refused.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::ConnectOptions;
        let mut conn =
            sqlx::sqlite::SqliteConnectOptions::new().filename(env.path("store.db")).connect().await.unwrap();
        sqlx::query(
            "UPDATE segments SET (password_source, password_ciphertext, password_nonce) = \
             (SELECT password_source, password_ciphertext, password_nonce FROM segments WHERE name = 'S') \
             WHERE name = 'T'",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    });
    let out = env.run(&["segment", "preview", "T"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot be decrypted"), "{}", text(&out.stderr));

    env.ok(&["segment", "edit", "S", "--password-env", "S_PASSWORD", "--skip-check"]);
    assert_eq!(stored_segment(&env, "S").0.password, SourcePassword::Env("S_PASSWORD".into()));
    env.ok(&["segment", "edit", "S", "--no-password", "--skip-check"]);
    assert_eq!(stored_segment(&env, "S").0.password, SourcePassword::None);
    let out = env.run(&["segment", "edit", "S", "--source", "csv:/x.csv", "--password-env", "X", "--skip-check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("takes no password"), "{}", text(&out.stderr));
    let both = format!("postgres://reader:{secret}@127.0.0.1:1/crm");
    let out = env.run(&["segment", "edit", "S", "--source", &both, "--password-env", "X", "--skip-check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not both"), "{}", text(&out.stderr));
    assert!(!all_output(&out).contains(&secret));
}

#[test]
#[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
fn a_store_holding_a_postgres_password_in_clear_is_sealed_and_rewritten_at_upgrade_and_still_runs() {
    let table = format!("pw_upgrade_{}", std::process::id());
    let _table = pg_table(&table);
    let secret = password("upgrade");
    let env = Env::new();
    old_store(&env.path("store.db"), "Legacy", &with_password(&pg_url(), &secret), &[]);
    assert!(!store_files_holding(&env, &secret).is_empty(), "the old release kept it in clear");

    let out = run_with(&env, &[("RUST_LOG", "info")], &["--json", "segment", "list"]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert!(!all_output(&out).contains(&secret), "{}", all_output(&out));
    assert!(text(&out.stderr).contains("Rewrote the store file"), "{}", text(&out.stderr));
    assert_eq!(store_files_holding(&env, &secret), Vec::<String>::new(), "no old page keeps the password");
    let (legacy, resolved) = stored_segment(&env, "Legacy");
    assert_eq!(legacy.source, pg_url(), "the source is kept, without its password");
    assert_eq!(resolved.as_deref(), Some(secret.as_str()), "and the password is sealed, not lost");

    env.ok(&["segment", "edit", "Legacy", "--query", &format!("SELECT email, tier FROM {table}")]);
    env.add_connection();
    env.ok(&["export", "add", "exp", "--connection", "iterable", "--segment", "Legacy", "--email-field", "email"]);
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(env.members("Legacy"), vec!["p1@example.com", "p2@example.com"]);
    assert_eq!(store_files_holding(&env, &secret), Vec::<String>::new());
}

#[test]
fn a_missing_master_key_at_upgrade_loses_nothing_says_what_to_do_and_the_upgrade_finishes_once_it_is_back() {
    let env = Env::new();
    let secret = password("upgrade-no-key");
    // The old store has a connection whose API key is sealed with a master key that is not there at upgrade time.
    let key_file = env.path("store.db.key");
    let master = segment_exporter::secrets::MasterKey::load(&key_file, true).unwrap();
    let (ciphertext, nonce) = master.seal("vault", &secrecy::SecretString::from(KEY.to_string()));
    let connection = format!(
        "INSERT INTO connections (name, base_url, usable_by, key_source, key_ciphertext, key_nonce, \
         privacy_accepted_at, privacy_accepted_by, created_at) VALUES ('vault', '{}', 'admins', 'stored', ?, ?, \
         '2026-11-01T00:00:00Z', 't', '2026-11-01T00:00:00Z')",
        env.base_url
    );
    let source = format!("postgres://reader:{secret}@127.0.0.1:1/crm");
    old_store(&env.path("store.db"), "Legacy", &source, &[(connection, vec![ciphertext, nonce])]);
    std::fs::rename(&key_file, env.path("backup.key")).unwrap();

    let out = env.run(&["--json", "segment", "list"]);
    assert!(out.status.success(), "the store still opens: {}", all_output(&out));
    let err = text(&out.stderr);
    assert!(err.contains("'Legacy'") && err.contains("still stored in clear"), "{err}");
    assert!(err.contains("is missing") && err.contains("Restore the file"), "says what to do: {err}");
    assert!(err.contains("--password-env"), "and the other way out: {err}");
    assert!(!all_output(&out).contains(&secret), "{}", all_output(&out));
    assert!(!key_file.exists(), "no new master key beside the sealed API key");
    assert!(!store_files_holding(&env, &secret).is_empty(), "nothing was lost or changed");
    let (legacy, resolved) = stored_segment(&env, "Legacy");
    assert_eq!(legacy.password, SourcePassword::None);
    assert!(resolved.is_none() && legacy.source.contains(&secret), "the segment works as before");

    std::fs::rename(env.path("backup.key"), &key_file).unwrap();
    let out = env.run(&["segment", "list"]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert!(!text(&out.stderr).contains("still stored in clear"), "{}", text(&out.stderr));
    assert_eq!(store_files_holding(&env, &secret), Vec::<String>::new());
    assert_eq!(stored_segment(&env, "Legacy").1.as_deref(), Some(secret.as_str()));
    env.ok(&["connection", "test", "vault"]);
}

#[test]
fn a_password_left_in_a_free_page_by_a_segment_removed_before_the_upgrade_is_gone_after_it() {
    let env = Env::new();
    let secret = password("removed");
    let source = format!("postgres://reader:{secret}@127.0.0.1:1/crm");
    // The old `segment remove`: the row is deleted, its bytes stay in the page until it is reused.
    old_store(&env.path("store.db"), "Gone", &source, &[("DELETE FROM segments WHERE name = 'Gone'".into(), vec![])]);
    assert!(!store_files_holding(&env, &secret).is_empty(), "the old release left it in the file");

    let out = env.run(&["--json", "segment", "list"]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(store_files_holding(&env, &secret), Vec::<String>::new(), "no old page keeps the password");
}

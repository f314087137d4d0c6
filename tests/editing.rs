//! Changing and removing exports and segments: what an export remembers across edits, what happens to its lists,
//! runs in flight, ids that are never reused, one list per export, and stores upgraded from before all this.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use segment_exporter::sandbox::SandboxOptions;
use segment_exporter::store::{KeySource, NewConnection, NewExport, NullFields, OnLeave, RunStatus, Store, TargetPlan};
use sqlx::{ConnectOptions, Row};

/// Writes a CSV with a header and rows.
fn write_rows(env: &Env, name: &str, header: &str, rows: &[String]) -> String {
    let path = env.path(name);
    std::fs::write(&path, format!("{header}\n{}\n", rows.join("\n"))).unwrap();
    format!("csv:{}", path.display())
}

fn with(mut v: Vec<String>, extra: &str) -> Vec<String> {
    v.push(extra.into());
    sorted(v)
}

fn stderr_of(env: &Env, args: &[&str]) -> (Option<i32>, String) {
    let out = env.run(args);
    (out.status.code(), text(&out.stderr))
}

// ---- item 1: editing ----

#[test]
fn a_field_added_by_edit_re_sends_every_member_once_with_the_field_and_nothing_more() {
    let env = Env::new();
    let members = emails(0, 60);
    let rows: Vec<String> = members.iter().map(|e| format!("{e},gold,Paris")).collect();
    let source = write_rows(&env, "m.csv", "email,tier,city", &rows);
    env.add_connection();
    env.add_segment_and_export("Seg", &source, None);
    env.run_exact("Seg", &members);
    env.ok(&["export", "edit", "exp", "--add-field", "city=home_city"]);
    let shown = env.json(&["export", "show", "exp"]);
    assert_eq!(shown["fields"][1]["iterable_field"], "home_city", "{shown}");
    assert_eq!(shown["lists"][0]["members"], 60, "the export keeps its memory of the list: {shown}");
    env.sandbox.reset_stats();
    let report = env.run_exact("Seg", &members);
    let counts = |k: &str| report["lists"][0][k].as_u64();
    assert_eq!(
        (counts("added"), counts("updated"), counts("to_update")),
        (Some(0), Some(60), Some(60)),
        "every member again, with the new field, none new on the list: {report}"
    );
    assert_eq!(report["lists"][0]["removed"], 0, "{report}");
    assert_eq!(env.stats().subscribers_received, 60);
    env.sandbox.reset_stats();
    assert_eq!(env.json(&["export", "run", "exp"])["status"], "succeeded");
    assert_eq!(env.stats().total_requests, 0, "then nothing: {:?}", env.stats());
}

#[test]
fn a_narrower_segment_query_removes_only_the_leavers_through_the_mass_removal_guard() {
    let env = Env::new();
    let db = env.path("crm.db");
    let gold = emails(0, 90);
    let silver = emails(100, 10);
    let mut rows: Vec<(Option<&str>, &str)> = gold.iter().map(|e| (Some(e.as_str()), "gold")).collect();
    rows.extend(silver.iter().map(|e| (Some(e.as_str()), "silver")));
    write_sqlite(&db, &rows);
    env.add_connection();
    let source = format!("sqlite:{}", db.display());
    env.add_segment_and_export("Good", &source, Some("SELECT email, tier FROM profiles"));
    env.run_exact("Good", &[gold.clone(), silver.clone()].concat());
    let list_id = env.list_id("Good").unwrap();
    env.subscribe_by_hand(list_id, &["manual@example.com"]);

    env.ok(&["segment", "edit", "Good", "--query", "SELECT email, tier FROM profiles WHERE tier = 'gold'"]);
    env.sandbox.reset_stats();
    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!((report["lists"][0]["added"].as_u64(), report["lists"][0]["removed"].as_u64()), (Some(0), Some(10)));
    assert_eq!(env.members("Good"), with(gold.clone(), "manual@example.com"));
    assert_eq!(env.stats().subscribers_received, 0, "nobody re-sent");

    // A query that loses most of the list meets the guard like any other run.
    env.ok(&["segment", "edit", "Good", "--query", "SELECT email, tier FROM profiles WHERE email < 'user2'"]);
    let refused = env.json(&["export", "run", "exp"]);
    assert_eq!(refused["status"], "refused", "{refused}");
    assert_eq!(env.members("Good"), with(gold, "manual@example.com"));
}

#[test]
fn a_segment_edit_is_checked_like_an_add_and_a_segment_can_be_removed_once_no_export_sends_it() {
    let env = Env::new();
    let db = env.path("crm.db");
    write_sqlite(&db, &[(Some("a@example.com"), "gold")]);
    env.add_connection();
    let source = format!("sqlite:{}", db.display());
    env.add_segment_and_export("A", &source, Some("SELECT email, tier FROM profiles"));
    env.ok(&["segment", "add", "B", "--source", &source, "--query", "SELECT email, tier FROM profiles"]);
    env.ok(&["export", "edit", "exp", "--add-segment", "B"]);
    env.ok(&["export", "run", "exp"]);

    let (code, err) = stderr_of(&env, &["segment", "edit", "A", "--query", "SELECT email FROM profiles"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("needs the column 'tier'"), "{err}");
    let (code, err) = stderr_of(&env, &["segment", "edit", "A", "--query", "SELECT nonsense"]);
    assert_eq!(code, Some(1), "{err}");
    let (code, err) = stderr_of(&env, &["segment", "remove", "A"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--remove-segment"), "the message says how: {err}");

    env.ok(&["export", "edit", "exp", "--remove-segment", "A"]);
    env.ok(&["segment", "remove", "A"]);
    let segments = env.json(&["segment", "list"]);
    assert_eq!(segments.as_array().unwrap().len(), 1, "{segments}");
    // The history of the run that sent A stays readable.
    let runs = env.json(&["runs", "--export", "exp"]);
    let shown = env.json(&["runs", "show", &runs[0]["id"].to_string()]);
    assert_eq!(shown["targets"].as_array().unwrap().len(), 2, "{shown}");
    env.ok(&["export", "run", "exp"]);
}

#[test]
fn a_removed_segment_s_list_is_left_alone_unless_emptied_and_then_only_of_our_members() {
    let env = Env::new();
    let a = emails(0, 30);
    let b = emails(100, 70);
    let sa = write_rows(&env, "a.csv", "email,tier", &a.iter().map(|e| format!("{e},gold")).collect::<Vec<_>>());
    let sb = write_rows(&env, "b.csv", "email,tier", &b.iter().map(|e| format!("{e},gold")).collect::<Vec<_>>());
    env.add_connection();
    env.add_segment_and_export("A", &sa, None);
    env.ok(&["segment", "add", "B", "--source", &sb]);
    env.ok(&["export", "edit", "exp", "--add-segment", "B"]);
    env.ok(&["export", "run", "exp"]);
    let b_list = env.list_id("B").unwrap();
    env.subscribe_by_hand(b_list, &["manual@example.com"]);

    // Forgotten: the list stays as it is, and runs no longer touch it.
    env.sandbox.reset_stats();
    env.ok(&["export", "edit", "exp", "--remove-segment", "B"]);
    assert_eq!(env.stats().total_requests, 0, "removing a segment does not touch Iterable");
    let shown = env.json(&["export", "show", "exp"]);
    assert_eq!(shown["lists"].as_array().unwrap().len(), 1, "{shown}");
    std::fs::write(env.path("b.csv"), "email,tier\n").unwrap();
    env.ok(&["export", "run", "exp"]);
    assert_eq!(env.members("B"), with(b.clone(), "manual@example.com"));

    // Added back: the existing list is adopted, by name, like any list found by name: the members it holds then
    // (the export forgot that it had put them there) count as pre-existing and stay. A member who joins later is
    // the export's own.
    let joined = "joined@example.com".to_string();
    let mut rows: Vec<String> = b.iter().map(|e| format!("{e},gold")).collect();
    rows.push(format!("{joined},gold"));
    write_rows(&env, "b.csv", "email,tier", &rows);
    env.ok(&["export", "edit", "exp", "--add-segment", "B"]);
    env.ok(&["export", "run", "exp"]);
    assert_eq!(env.list_id("B"), Some(b_list));
    assert_eq!(env.sandbox_lists().len(), 2);
    assert_eq!(env.members("B"), with(with(b.clone(), "manual@example.com"), &joined));

    // Emptied: only what this export put there since it adopted the list goes; the hand-added member and the
    // members there before the adoption stay. No guard: it was asked for.
    env.ok(&["export", "edit", "exp", "--remove-segment", "B", "--empty-removed-lists"]);
    assert_eq!(env.members("B"), with(b, "manual@example.com"));
    assert_eq!(env.members("A"), sorted(a));
}

#[test]
fn export_remove_with_empty_lists_unsubscribes_our_members_and_keeps_the_history_readable() {
    let env = Env::new();
    let members = emails(0, 80);
    env.setup_csv_export("Gone", &members);
    env.ok(&["export", "run", "exp"]);
    let list = env.list_id("Gone").unwrap();
    env.subscribe_by_hand(list, &["manual@example.com"]);
    env.ok(&["export", "remove", "exp", "--empty-lists"]);
    assert_eq!(env.members("Gone"), vec!["manual@example.com".to_string()]);
    assert_eq!(env.json(&["export", "list"]).as_array().unwrap().len(), 0);
    let all = env.json(&["export", "list", "--include-removed"]);
    assert!(all[0]["removed_at"].is_string(), "{all}");
    let runs = env.json(&["runs", "--include-removed"]);
    assert_eq!(runs[0]["export_removed"], true, "{runs}");
    assert!(text(&env.ok(&["runs", "--include-removed"]).stdout).contains("exp (removed)"));
    assert_eq!(env.json(&["runs"]).as_array().unwrap().len(), 0, "hidden without --include-removed");
}

#[test]
fn emptying_that_iterable_keeps_failing_removes_nothing_and_the_same_command_finishes_later() {
    let env = Env::new();
    let members = emails(0, 120);
    env.setup_csv_export("Stuck", &members);
    env.ok(&["export", "run", "exp"]);
    env.sandbox.set_faults(segment_exporter::sandbox::Faults { fail_rate: Some(1.0), ..Default::default() });
    let (code, err) = stderr_of(&env, &["export", "remove", "exp", "--empty-lists"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not removed") && err.contains("emptying list 'Stuck'"), "{err}");
    assert_eq!(env.json(&["export", "show", "exp"])["lists"][0]["members"], 120, "still there, still remembered");
    env.sandbox.set_faults(segment_exporter::sandbox::Faults { fail_rate: Some(0.0), ..Default::default() });
    env.ok(&["export", "remove", "exp", "--empty-lists"]);
    assert!(env.members("Stuck").is_empty());
}

#[test]
fn an_export_name_used_again_starts_a_history_of_its_own() {
    let env = Env::new();
    let members = emails(0, 40);
    env.setup_csv_export("Again", &members);
    env.ok(&["export", "run", "exp"]);
    let old = env.json(&["export", "show", "exp"]);
    env.ok(&["export", "remove", "exp"]);
    assert_eq!(env.members("Again"), sorted(members.clone()), "the list is left as it is");
    env.ok(&["export", "add", "exp", "--connection", "iterable", "--segment", "Again", "--email-field", "email"]);
    let new = env.json(&["export", "show", "exp"]);
    assert_ne!(new["id"], old["id"]);
    assert_ne!(new["targets"][0]["id"], old["targets"][0]["id"]);
    assert_eq!(env.json(&["runs", "--export", "exp"]).as_array().unwrap().len(), 0, "no history of its own yet");
    env.run_exact("Again", &members);
    let mine = env.json(&["runs", "--export", "exp"]);
    let both = env.json(&["runs", "--export", "exp", "--include-removed"]);
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert_eq!(both.as_array().unwrap().len(), 2);
    assert_eq!((both[0]["export_removed"].as_bool(), both[1]["export_removed"].as_bool()), (Some(false), Some(true)));
    assert_ne!(both[0]["export_id"], both[1]["export_id"]);
}

#[test]
fn export_edit_refuses_bad_changes_and_changes_nothing() {
    let env = Env::new();
    env.setup_csv_export("S", &emails(0, 5));
    let before = env.json(&["export", "show", "exp"]);
    for (args, says) in [
        (vec!["--add-field", "nope"], "no column 'nope'"),
        (vec!["--remove-field", "city"], "does not send that column"),
        (vec!["--remove-segment", "S"], "at least one segment"),
        (vec!["--add-field", "tier=x"], "already sent"),
        (vec!["--schedule", "every tuesday"], "--schedule"),
        (vec![], "nothing to change"),
    ] {
        let (code, err) = stderr_of(&env, &[&["export", "edit", "exp"][..], &args[..]].concat());
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let mut after = env.json(&["export", "show", "exp"]);
    after["updated_at"] = before["updated_at"].clone();
    assert_eq!(before, after);
}

// ---- item 2: ids, runs in flight ----

#[test]
fn removing_or_editing_an_export_whose_run_is_in_flight_is_refused_and_changes_nothing() {
    let env = Env::with_sandbox(SandboxOptions { latency: Duration::from_millis(150), ..opts() });
    // Long enough (60 batches at 150 ms, 3 at a time) to stay in flight through the three refused commands.
    let members = emails(0, 3000);
    env.setup_csv_export("Busy", &members);
    let mut child = env.spawn_run();
    env.wait_for_subscribers(100, Duration::from_secs(60));
    // Iterable frozen, the run stays in flight through the three commands however slow they are to start.
    env.hold();
    let run_id = env.json(&["runs", "--export", "exp"])[0]["id"].clone();
    let refusals: Vec<_> = [
        vec!["export", "remove", "exp"],
        vec!["export", "edit", "exp", "--on-leave", "keep"],
        vec!["connection", "remove", "iterable", "--remove-exports"],
    ]
    .into_iter()
    .map(|args| (stderr_of(&env, &args), args))
    .collect();
    env.release();
    for ((code, err), args) in refusals {
        assert_eq!(code, Some(75), "{args:?}: {err}");
        assert!(err.contains(&format!("#{run_id}")) && err.contains("--cancel-run"), "{err}");
    }
    let shown = env.json(&["export", "show", "exp"]);
    assert_eq!(shown["on_leave"], "remove");
    assert_eq!(env.json(&["connection", "list"]).as_array().unwrap().len(), 1);
    assert!(child.wait().unwrap().success(), "the run went on undisturbed");
    assert_eq!(env.members("Busy"), sorted(members));
}

#[test]
fn cancel_run_stops_the_run_within_a_batch_and_a_new_export_of_the_same_name_ends_exact() {
    let env = Env::with_sandbox(SandboxOptions { latency: Duration::from_millis(150), ..opts() });
    let members = emails(0, 2000);
    env.setup_csv_export("Shared", &members);
    let mut child = env.spawn_run();
    env.wait_for_subscribers(200, Duration::from_secs(60));
    let run_id = env.json(&["runs", "--export", "exp"])[0]["id"].clone();
    // Iterable frozen while the removing command starts and asks the run to stop, so that what is measured is the
    // run's answer to the request, not how fast a process starts on this machine.
    env.hold();
    let at_request = env.stats().subscribers_received;
    let mut removal = env.spawn(&["export", "remove", "exp", "--cancel-run"]);
    let asked = Instant::now();
    while !cancel_requested(&env.path("store.db")) {
        assert!(asked.elapsed() < Duration::from_secs(60), "the removal never asked the run to stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    env.release();
    assert!(removal.wait().unwrap().success(), "the removal succeeds once the run stopped");
    let at_removal = env.stats().subscribers_received;
    assert!(!child.wait().unwrap().success(), "a cancelled run does not succeed");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.stats().subscribers_received, at_removal, "nothing is sent after the removal");
    // The 3 batches held in flight, which finish and are recorded, and what started before the run's next poll
    // of the flag (every 100 ms; it polls while held too).
    let after = at_removal - at_request;
    eprintln!("subscribers sent after the cancel request: {after}");
    assert!(after <= 8 * 50, "{after} subscribers sent after the cancel request");
    assert!(at_removal < 2000, "the run finished before it was cancelled; slow the sandbox down");
    let runs = env.json(&["runs", "--include-removed"]);
    assert_eq!(runs[0]["id"], run_id);
    assert_eq!(runs[0]["status"], "cancelled", "{runs}");
    assert_eq!(runs[0]["export_removed"], true);
    assert_eq!(runs[0]["targets"][0]["added"], at_removal, "every batch sent was finished and recorded: {runs}");

    // The scenario that once left a list 3,382 members short: a new export of the same name and segment.
    env.ok(&["export", "add", "exp", "--connection", "iterable", "--segment", "Shared", "--email-field", "email"]);
    env.run_exact("Shared", &members);
    assert_eq!(env.json(&["export", "show", "exp"])["lists"][0]["members"], 2000);
    env.sandbox.reset_stats();
    assert_eq!(env.json(&["export", "run", "exp"])["status"], "succeeded");
    assert_eq!(env.stats().total_requests, 0, "and it knows what it sent");
}

#[test]
fn removing_a_connection_with_cancel_run_stops_its_exports_runs_and_removes_them() {
    let env = Env::with_sandbox(SandboxOptions { latency: Duration::from_millis(150), ..opts() });
    env.setup_csv_export("Conn", &emails(0, 2000));
    let mut child = env.spawn_run();
    env.wait_for_subscribers(100, Duration::from_secs(60));
    // Iterable frozen until the removal has asked the run to stop: the run cannot end before it is cancelled.
    env.hold();
    let mut removal = env.spawn(&["connection", "remove", "iterable", "--remove-exports", "--cancel-run"]);
    let asked = Instant::now();
    while !cancel_requested(&env.path("store.db")) {
        assert!(asked.elapsed() < Duration::from_secs(60), "the removal never asked the run to stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    env.release();
    assert!(removal.wait().unwrap().success());
    assert!(!child.wait().unwrap().success());
    let runs = env.json(&["runs", "--include-removed"]);
    assert_eq!((runs[0]["status"].as_str(), runs[0]["export_removed"].as_bool()), (Some("cancelled"), Some(true)));
    assert_eq!(env.json(&["export", "list"]).as_array().unwrap().len(), 0);
}

/// Whether some run of the store at `path` was asked to stop.
fn cancel_requested(path: &Path) -> bool {
    block_on(async {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(path).connect().await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE cancel_requested_at IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        n > 0
    })
}

/// A store in `dir` with connection `c`, segment `s` and export `e` sending it.
async fn library_store(dir: &Path) -> (Store, i64, i64, segment_exporter::store::Export) {
    let store = Store::open(&dir.join("store.db")).await.unwrap();
    let conn = store
        .add_connection(&NewConnection {
            name: "c".into(),
            base_url: "http://x".into(),
            region: None,
            project_type: segment_exporter::store::ProjectType::Email,
            usable_by: "admins".into(),
            key: KeySource::Env("K".into()),
            key_last4: None,
            privacy_accepted_by: "t".into(),
            verified: false,
        })
        .await
        .unwrap();
    let seg = store.add_segment("s", "csv:x.csv", None).await.unwrap();
    let export = store.add_export(&new_export("e", conn.id, seg.id)).await.unwrap();
    (store, conn.id, seg.id, export)
}

fn new_export(name: &str, connection_id: i64, segment_id: i64) -> NewExport {
    NewExport {
        name: name.into(),
        connection_id,
        email_field: Some("email".into()),
        user_id_field: None,
        on_leave: OnLeave::Remove,
        null_fields: NullFields::Clear,
        existing_users_only: false,
        schedule: "off".into(),
        segment_ids: vec![segment_id],
        fields: vec![],
    }
}

#[test]
fn a_run_that_is_no_longer_running_records_no_acknowledgement() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, _, export) = library_store(dir.path()).await;
        let t = export.targets[0].id;
        let run = store.start_run(export.id, "manual", false, None).await.unwrap();
        store.record_plan(run, t, "s", &TargetPlan::default(), &Default::default()).await.unwrap();
        let m = segment_exporter::store::AckedMember::new("a@x.com", 1);
        store.ack_subscribed(run, t, std::slice::from_ref(&m), &[], &[]).await.unwrap();
        store.finish_run(run, RunStatus::Cancelled, None).await.unwrap();
        let late = segment_exporter::store::AckedMember::new("b@x.com", 1);
        assert!(store.ack_subscribed(run, t, &[late], &[], &[]).await.is_err());
        assert!(store.ack_unsubscribed(run, t, &["a@x.com".to_string()]).await.is_err());
        assert_eq!(store.member_counts(t).await.unwrap().subscribed, 1, "nothing changed");
        assert_eq!(store.run(run).await.unwrap().targets[0].counts.added, 1);
        assert_eq!(store.run(run).await.unwrap().status, RunStatus::Cancelled);
    });
}

#[test]
fn the_store_refuses_a_second_export_of_a_list_and_can_say_so_without_naming_the_first() {
    block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (store, connection_id, segment_id, _) = library_store(dir.path()).await;
        let e = store.add_export(&new_export("secret-campaign", connection_id, segment_id)).await.unwrap_err();
        assert!(e.to_string().contains("managed by export 'e'"), "{e}");
        assert!(!e.without_names().contains("'e'") && e.without_names().contains("another export"), "{e}");
        assert_eq!(store.export_names().await.unwrap(), vec!["e"], "nothing saved");
    });
}

// ---- item 3: one list, one export ----

#[test]
fn a_list_managed_by_one_export_is_refused_to_another_on_the_same_connection() {
    let env = Env::new();
    env.setup_csv_export("Mine", &emails(0, 5));
    let other = ["export", "add", "other", "--connection", "iterable", "--email-field", "email"];
    let (code, err) = stderr_of(&env, &[&other[..], &["--segment", "Mine"]].concat());
    assert_eq!(code, Some(1));
    assert!(err.contains("list 'Mine' is already managed by export 'exp'"), "{err}");
    let csv = write_rows(&env, "o.csv", "email", &["x@example.com".to_string()]);
    env.ok(&["segment", "add", "Own", "--source", &csv]);
    env.ok(&[&other[..], &["--segment", "Own"]].concat());
    let (code, err) = stderr_of(&env, &["export", "edit", "other", "--add-segment", "Mine"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("managed by export 'exp'"), "{err}");
    assert_eq!(env.json(&["export", "show", "other"])["targets"].as_array().unwrap().len(), 1);
    // Once the first export lets go of the list, the other may take it.
    env.ok(&["export", "remove", "exp"]);
    env.ok(&["export", "edit", "other", "--add-segment", "Mine"]);
}

// ---- upgrading ----

/// Builds a store as main's migrations left it (the first two), in `path`.
fn old_store(path: &Path) {
    let old = tempfile::tempdir().unwrap();
    for f in ["20261129000001_initial.sql", "20261129000002_list_checked.sql"] {
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite").join(f), old.path().join(f))
            .unwrap();
    }
    block_on(async {
        let mut conn =
            sqlx::sqlite::SqliteConnectOptions::new().filename(path).create_if_missing(true).connect().await.unwrap();
        sqlx::migrate::Migrator::new(old.path()).await.unwrap().run(&mut conn).await.unwrap();
    });
}

/// Runs statements against the store file directly.
fn sql(path: &Path, statements: &[&str]) {
    block_on(async {
        let mut conn =
            sqlx::sqlite::SqliteConnectOptions::new().filename(path).foreign_keys(true).connect().await.unwrap();
        for s in statements {
            sqlx::query(s).execute(&mut conn).await.unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    });
}

/// Every row of the tables main had, as JSON text, in a fixed order.
fn snapshot(path: &Path) -> Vec<(String, String)> {
    let tables = [
        ("connections", "id"),
        ("segments", "id"),
        ("exports", "id"),
        ("export_fields", "export_id, position"),
        ("targets", "id"),
        ("members", "target_id, email"),
        ("runs", "id"),
        ("run_targets", "rowid"),
        ("run_issues", "rowid"),
    ];
    let old_columns = |t: &str| -> Vec<&'static str> {
        match t {
            "exports" => vec![
                "id",
                "name",
                "connection_id",
                "email_field",
                "on_leave",
                "schedule",
                "enabled",
                "created_at",
                "updated_at",
            ],
            "targets" => vec!["id", "export_id", "segment_id", "position", "list_name", "list_id", "list_checked_at"],
            "export_fields" => vec!["export_id", "position", "source_column", "iterable_field"],
            "segments" => vec!["id", "name", "source", "query", "created_at"],
            "connections" => vec![
                "id",
                "name",
                "base_url",
                "region",
                "usable_by",
                "key_source",
                "key_ref",
                "key_ciphertext",
                "key_nonce",
                "key_last4",
                "privacy_accepted_at",
                "privacy_accepted_by",
                "verified_at",
                "created_at",
            ],
            "runs" => vec![
                "id",
                "export_id",
                "trigger",
                "status",
                "full_resync",
                "started_at",
                "finished_at",
                "error",
                "pid",
                "note",
            ],
            "members" => vec!["target_id", "email", "fields_hash", "state"],
            "run_targets" => vec![
                "run_id",
                "target_id",
                "list_name",
                "list_id",
                "source_rows",
                "planned_add",
                "planned_remove",
                "unchanged",
                "invalid",
                "duplicates",
                "added",
                "removed",
                "rejected",
            ],
            _ => vec!["*"],
        }
    };
    block_on(async {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(path).connect().await.unwrap();
        let mut out = Vec::new();
        for (t, order) in tables {
            let cols = old_columns(t);
            let select = if cols == ["*"] {
                // Every column of these tables is unchanged: list them from the schema.
                let names: Vec<String> = sqlx::query(&format!("PRAGMA table_info({t})"))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<String, _>("name"))
                    .collect();
                names.join(", ")
            } else {
                cols.join(", ")
            };
            let rows: Vec<String> =
                sqlx::query_scalar(&format!("SELECT json_array({select}) FROM {t} ORDER BY {order}"))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            out.push((t.to_string(), rows.join("\n")));
        }
        out
    })
}

/// An old store with connection `iterable` (the sandbox), segments S and T, exports `exp` (S, with run history and
/// members) and `other` (T), and a removed export whose ids old SQLite would have handed out again.
fn fill_old_store(env: &Env, members: &[String], share: bool) {
    let path = env.path("store.db");
    old_store(&path);
    let rows: Vec<String> = members.iter().map(|e| format!("{e},gold")).collect();
    let s = write_rows(env, "s.csv", "email,tier", &rows);
    let t = write_rows(env, "t.csv", "email,tier", &rows[..5]);
    let now = "2026-11-01T00:00:00Z";
    let conn = format!(
        "INSERT INTO connections VALUES (1, 'iterable', '{}', NULL, 'admins', 'env', 'ITERABLE_KEY', NULL, NULL, NULL, \
         '{now}', 'test', '{now}', '{now}')",
        env.base_url
    );
    let segs = format!(
        "INSERT INTO segments VALUES (1, 'S', '{}', NULL, '{now}'), (2, 'T', '{}', NULL, '{now}')",
        s.replace('\'', "''"),
        t.replace('\'', "''")
    );
    let other_segment = if share { 1 } else { 2 };
    let exports = format!(
        "INSERT INTO exports VALUES (1, 'exp', 1, 'email', 'remove', 'off', 1, '{now}', '{now}'), \
         (2, 'other', 1, 'email', 'remove', 'off', 1, '{now}', '{now}'), \
         (3, 'gone', 1, 'email', 'remove', 'off', 1, '{now}', '{now}')"
    );
    let targets = format!(
        "INSERT INTO targets (id, export_id, segment_id, position, list_name) VALUES (1, 1, 1, 0, 'S'), \
         (2, 2, {other_segment}, 0, '{}'), (3, 3, 2, 0, 'T')",
        if share { "S" } else { "T" }
    );
    let runs = format!(
        "INSERT INTO runs VALUES (1, 1, 'manual', 'succeeded', 0, '{now}', '{now}', NULL, 1, NULL), \
         (2, 1, 'schedule', 'failed', 0, '{now}', '{now}', 'boom', 1, NULL), \
         (3, 3, 'manual', 'succeeded', 0, '{now}', '{now}', NULL, 1, NULL)"
    );
    sql(
        &path,
        &[
            &conn,
            &segs,
            &exports,
            "INSERT INTO export_fields VALUES (1, 0, 'tier', 'tier')",
            &targets,
            &runs,
            "INSERT INTO run_targets (run_id, target_id, list_name, source_rows, planned_add, added) VALUES \
             (1, 1, 'S', 3, 3, 3), (2, 1, 'S', 3, 0, 0), (3, 3, 'T', 1, 1, 1)",
            "INSERT INTO run_issues VALUES (1, 1, 'invalid', 'not-an-email', 'no @'), (2, 1, 'rejected', 'x@y.z', 'r')",
            // The old `export remove`: the export's row and, by cascade, everything about it.
            "DELETE FROM exports WHERE id = 3",
        ],
    );
}

#[test]
fn an_upgraded_store_keeps_every_row_and_never_hands_out_an_id_twice() {
    let env = Env::new();
    let members = emails(0, 30);
    fill_old_store(&env, &members, false);
    let path = env.path("store.db");
    // What the old export had acknowledged: its first 3 members, so the next run sends the other 27.
    sql(
        &path,
        &["INSERT INTO members (target_id, email, fields_hash, state) SELECT 1, email, 0, 'subscribed' FROM \
           (SELECT 'user0@example.com' AS email UNION SELECT 'user1@example.com' UNION SELECT 'user2@example.com')"],
    );
    let before = snapshot(&path);
    let (code, err) = stderr_of(&env, &["export", "list"]);
    assert_eq!(code, Some(0), "{err}");
    let after = snapshot(&path);
    for ((table, old), (_, new)) in before.iter().zip(&after) {
        assert_eq!(old, new, "table {table} changed in the upgrade");
    }
    block_on(async {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).connect().await.unwrap();
        let broken = sqlx::query("PRAGMA foreign_key_check").fetch_all(&mut conn).await.unwrap();
        assert!(broken.is_empty(), "foreign keys broken by the upgrade");
    });
    let runs = env.json(&["runs", "--export", "exp"]);
    assert_eq!(runs.as_array().unwrap().len(), 2, "{runs}");
    let shown = env.json(&["runs", "show", "1", "--rejected"]);
    assert_eq!(shown["issues"].as_array().unwrap().len(), 1, "{shown}");
    let shown = env.json(&["runs", "show", "2", "--rejected"]);
    assert_eq!(shown["issues"][0]["member"], "x@y.z", "{shown}");
    assert_eq!(env.json(&["export", "show", "exp"])["lists"][0]["members"], 3);

    let report = env.json(&["export", "run", "exp"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(env.members("S"), sorted(members));

    // Ids: even rows deleted outright (as the old `export remove` did) never lend their ids to new rows.
    let last_run = report["run_id"].as_i64().unwrap();
    sql(&path, &["DELETE FROM runs WHERE id = (SELECT MAX(id) FROM runs)"]);
    let t = format!("csv:{}", env.path("t.csv").display());
    env.ok(&["segment", "add", "U", "--source", &t]);
    env.ok(&["export", "add", "new", "--connection", "iterable", "--segment", "U", "--email-field", "email"]);
    let new = env.json(&["export", "show", "new"]);
    // (Ids deleted before the upgrade left no trace; new ids start above every id the store holds.)
    assert!(new["id"].as_i64().unwrap() > 2, "{new}");
    assert!(new["targets"][0]["id"].as_i64().unwrap() > 2, "{new}");
    let report = env.json(&["export", "run", "new"]);
    assert!(report["run_id"].as_i64().unwrap() > last_run, "run ids go on after a deleted one: {report}");
}

#[test]
fn ids_of_a_removed_export_are_never_given_to_a_new_one() {
    let env = Env::new();
    env.setup_csv_export("S", &emails(0, 3));
    env.ok(&["export", "run", "exp"]);
    let old = env.json(&["export", "show", "exp"]);
    let old_run = env.json(&["runs"])[0]["id"].as_i64().unwrap();
    // Deleted outright, as before soft deletion: SQLite without AUTOINCREMENT would hand the ids out again.
    let path = env.path("store.db");
    sql(&path, &["DELETE FROM exports WHERE id = (SELECT MAX(id) FROM exports)"]);
    env.ok(&["export", "add", "exp", "--connection", "iterable", "--segment", "S", "--email-field", "email"]);
    let new = env.json(&["export", "show", "exp"]);
    assert!(new["id"].as_i64() > old["id"].as_i64(), "{new} vs {old}");
    assert!(new["targets"][0]["id"].as_i64() > old["targets"][0]["id"].as_i64());
    let report = env.json(&["export", "run", "exp"]);
    assert!(report["run_id"].as_i64().unwrap() > old_run, "{report}");
}

#[test]
fn two_exports_that_already_share_a_list_keep_running_after_the_upgrade_and_an_edit_says_how_to_fix_it() {
    let env = Env::new();
    let members = emails(0, 20);
    fill_old_store(&env, &members, true);
    env.run_exact("S", &members);
    let report = env.json(&["export", "run", "other"]);
    assert_eq!(report["status"], "succeeded", "{report}");
    for (edited, other) in [("exp", "other"), ("other", "exp")] {
        let (code, err) = stderr_of(&env, &["export", "edit", edited, "--schedule", "refresh"]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(&format!("managed by export '{other}'")) && err.contains("--remove-segment"), "{err}");
    }
    env.ok(&["export", "edit", "other", "--remove-segment", "S", "--add-segment", "T"]);
    env.ok(&["export", "edit", "exp", "--schedule", "refresh"]);
}

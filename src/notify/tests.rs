use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::store::test_support::{an_export, on_both};
use crate::store::{ChannelKind, DeliveryOutcome, NewChannel};

fn config() -> Arc<Config> {
    let mut c = Config::default();
    c.notify.repeat_interval = Duration::from_secs(3600);
    c.daemon.public_url = Some("https://exports.example.com".into());
    Arc::new(c)
}

async fn email_channel(store: &Store, name: &str, usable_by: ChannelAudience) -> Channel {
    store
        .add_channel(&NewChannel {
            name: name.into(),
            kind: ChannelKind::Email,
            url: None,
            addresses: vec!["ops@example.com".into()],
            secret: None,
            usable_by,
            created_by: "t".into(),
        })
        .await
        .unwrap()
}

/// A run of `export` ended with `status` (and `error`), told through the notifier as the engine tells it.
async fn run_ending(
    store: &Store,
    notifier: &Notifier,
    export: &Export,
    status: RunStatus,
    error: Option<&str>,
) -> i64 {
    let run_id = store.start_run(export.id, "manual", false, None).await.unwrap();
    assert!(notifier.finish_run(store, export, run_id, status, error).await.unwrap());
    run_id
}

fn blank() -> EventDocument {
    EventDocument {
        id: String::new(),
        kind: DocumentKind::Test,
        time: crate::store::now(),
        reminder: false,
        summary: String::new(),
        export: None,
        connection: None,
        run: None,
        error: None,
        counts: None,
        lists: vec![],
    }
}

/// The documents due now, claimed and marked delivered, oldest first.
async fn take_due(store: &Store) -> Vec<EventDocument> {
    let claimed = store.claim_notifications("test", Duration::from_secs(60), 100).await.unwrap();
    let mut out = Vec::new();
    for n in claimed {
        assert!(store.record_delivery(n.id, "test", &DeliveryOutcome::Delivered, "HTTP 200").await.unwrap());
        out.push(serde_json::from_str(&n.payload).unwrap());
    }
    out
}

on_both! {
    async fn an_export_failing_five_times_then_succeeding_tells_one_failure_and_one_recovery(store: Store) {
        let export = an_export(&store).await;
        let channel = email_channel(&store, "ops", ChannelAudience::Admins).await;
        store.set_subscriptions(export.id, &[(channel.id, EventKind::DEFAULT.to_vec())], &[]).await.unwrap();
        let notifier = Notifier::new(config());
        let mut runs = Vec::new();
        for _ in 0..5 {
            runs.push(run_ending(&store, &notifier, &export, RunStatus::Failed, Some("list 's': Iterable refused it")).await);
        }
        let ok = run_ending(&store, &notifier, &export, RunStatus::Succeeded, None).await;
        let told = take_due(&store).await;
        let kinds: Vec<DocumentKind> = told.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, [DocumentKind::Failed, DocumentKind::Recovered]);
        assert_eq!(told[0].run.as_ref().unwrap().id, runs[0], "the first failure is told");
        assert_eq!(told[1].run.as_ref().unwrap().id, ok);
        assert_ne!(told[0].id, told[1].id, "two events, two ids");
        assert_eq!(told[0].error.as_deref(), Some("list 's': Iterable refused it"));
        assert_eq!(told[0].export.as_deref(), Some("e"));
        assert_eq!(told[0].connection.as_deref(), Some("c"));
        assert_eq!(
            told[0].run.as_ref().unwrap().url.as_deref(),
            Some(format!("https://exports.example.com/exports/e#run-{}", runs[0]).as_str())
        );
        assert!(store.notify_states("export 1").await.unwrap().is_empty(), "recovered: nothing is open");
    }
}

on_both! {
    async fn a_run_end_not_recorded_writes_no_notification(store: Store) {
        let export = an_export(&store).await;
        let channel = email_channel(&store, "ops", ChannelAudience::Admins).await;
        store.set_subscriptions(export.id, &[(channel.id, EventKind::DEFAULT.to_vec())], &[]).await.unwrap();
        let notifier = Notifier::new(config());
        let run_id = store.start_run(export.id, "manual", false, None).await.unwrap();
        store.interrupt_orphaned_runs(export.id).await.unwrap();
        assert!(!notifier.finish_run(&store, &export, run_id, RunStatus::Failed, Some("x")).await.unwrap());
        assert_eq!(store.pending_notifications().await.unwrap(), 0, "no end recorded, nothing told");
        assert!(store.notify_states("export 1").await.unwrap().is_empty());
    }
}

on_both! {
    async fn each_notification_is_claimed_by_one_process_and_retried_with_the_same_event_id(store: Store) {
        let export = an_export(&store).await;
        let channel = email_channel(&store, "ops", ChannelAudience::Admins).await;
        store.set_subscriptions(export.id, &[(channel.id, vec![EventKind::Failed])], &[]).await.unwrap();
        run_ending(&store, &Notifier::new(config()), &export, RunStatus::Failed, Some("boom")).await;
        let first = store.claim_notifications("a", Duration::from_secs(60), 10).await.unwrap();
        assert_eq!(first.len(), 1);
        assert!(store.claim_notifications("b", Duration::from_secs(60), 10).await.unwrap().is_empty(), "claimed by a");
        assert!(!store.record_delivery(first[0].id, "b", &DeliveryOutcome::Delivered, "x").await.unwrap(), "b holds no claim");
        let soon = crate::store::now();
        assert!(store.record_delivery(first[0].id, "a", &DeliveryOutcome::Retry(soon), "HTTP 500").await.unwrap());
        let again = store.claim_notifications("b", Duration::from_secs(60), 10).await.unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].event_id.as_str(), again[0].attempts), (first[0].event_id.as_str(), 2));
        assert_eq!(again[0].payload, first[0].payload, "a retry carries the same document");
        assert!(store.record_delivery(again[0].id, "b", &DeliveryOutcome::Delivered, "HTTP 200").await.unwrap());
        let log = store.delivery_log(Some("ops"), 10).await.unwrap();
        assert_eq!((log[0].state.as_str(), log[0].attempts, log[0].last_answer.as_deref()), ("delivered", 2, Some("HTTP 200")));
        assert_eq!(store.pending_notifications().await.unwrap(), 0);
        assert_eq!(store.prune_notifications(log[0].created_at).await.unwrap(), 0, "kept while recent");
        assert_eq!(store.prune_notifications(crate::store::now() + chrono::Duration::seconds(1)).await.unwrap(), 1);
        assert!(store.delivery_log(None, 10).await.unwrap().is_empty());
    }
}

on_both! {
    async fn a_claim_that_lapses_is_taken_by_another_process(store: Store) {
        let export = an_export(&store).await;
        let channel = email_channel(&store, "ops", ChannelAudience::Admins).await;
        store.set_subscriptions(export.id, &[(channel.id, vec![EventKind::Failed])], &[]).await.unwrap();
        run_ending(&store, &Notifier::new(config()), &export, RunStatus::Failed, Some("boom")).await;
        assert_eq!(store.claim_notifications("dead", Duration::from_millis(1), 10).await.unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(store.claim_notifications("alive", Duration::from_secs(60), 10).await.unwrap().len(), 1);
    }
}

on_both! {
    async fn a_verify_that_finds_drift_tells_once_and_a_clean_one_ends_it(store: Store) {
        let export = an_export(&store).await;
        let channel = email_channel(&store, "ops", ChannelAudience::Admins).await;
        store.set_subscriptions(export.id, &[(channel.id, vec![EventKind::Drift])], &[]).await.unwrap();
        let config = config();
        raise_drift(&store, &config, &export, Some(7), 12, &["s".to_string()]).await.unwrap();
        raise_drift(&store, &config, &export, Some(8), 13, &["s".to_string()]).await.unwrap();
        let told = take_due(&store).await;
        assert_eq!(told.len(), 1, "told once while it goes on");
        assert_eq!(told[0].kind, DocumentKind::Drift);
        assert_eq!(told[0].counts.as_ref().unwrap().differing, Some(12));
        assert_eq!(told[0].lists, ["s"]);
        raise_drift(&store, &config, &export, Some(9), 0, &[]).await.unwrap();
        assert!(store.notify_states("export 1").await.unwrap().is_empty(), "a clean verify ends it");
        raise_drift(&store, &config, &export, Some(10), 1, &["s".to_string()]).await.unwrap();
        assert_eq!(take_due(&store).await.len(), 1, "and the next drift is told again");
    }
}

on_both! {
    async fn a_contributors_channel_gets_the_contributor_wording_of_an_error_that_names_a_source(store: Store) {
        let export = an_export(&store).await;
        let admins = email_channel(&store, "admins", ChannelAudience::Admins).await;
        let all = email_channel(&store, "all", ChannelAudience::Contributors).await;
        store
            .set_subscriptions(export.id, &[(admins.id, vec![EventKind::Failed]), (all.id, vec![EventKind::Failed])], &[])
            .await
            .unwrap();
        let error = "segment 's' could not be read from csv:x.csv: no such file; member ann@example.com";
        run_ending(&store, &Notifier::new(config()), &export, RunStatus::Failed, Some(error)).await;
        let told = store.claim_notifications("t", Duration::from_secs(60), 10).await.unwrap();
        let by_channel = |id: i64| -> EventDocument {
            serde_json::from_str(&told.iter().find(|n| n.channel_id == id).unwrap().payload).unwrap()
        };
        let admin_error = by_channel(admins.id).error.unwrap();
        assert!(admin_error.contains("csv:x.csv"), "{admin_error}");
        assert!(!admin_error.contains("ann@example.com"), "no email in any message: {admin_error}");
        assert_eq!(by_channel(all.id).error.as_deref(), Some(crate::access::wording::HIDDEN_ERROR));
        assert_eq!(told[0].event_id, told[1].event_id, "one event, one id on every channel");
    }
}

fn end(status: RunStatus, error: Option<&str>) -> RunEnd {
    let now = crate::store::now();
    RunEnd {
        export: Export {
            id: 1,
            name: "e".into(),
            connection_id: Some(1),
            connection_name: Some("c".into()),
            email_field: Some("email".into()),
            user_id_field: None,
            on_leave: crate::store::OnLeave::Remove,
            null_fields: crate::store::NullFields::Clear,
            existing_users_only: false,
            schedule: "off".into(),
            enabled: true,
            fields: vec![],
            targets: vec![],
            created_at: now,
            updated_at: now,
            removed_at: None,
        },
        run_id: 1,
        status,
        error: error.map(str::to_string),
        key_refused: false,
        recreated_lists: vec![],
    }
}

fn state(topic: &str, state: &str, told: DateTime<Utc>) -> NotifyState {
    NotifyState { topic: topic.into(), state: state.into(), since: told, last_told_at: told }
}

fn kinds(raised: &[Raised]) -> Vec<(EventKind, bool)> {
    raised.iter().map(|r| (r.kind, r.reminder)).collect()
}

#[test]
fn a_condition_that_goes_on_is_told_again_only_after_the_repeat_interval() {
    let config = config();
    let now = crate::store::now();
    let failed = end(RunStatus::Failed, Some("x"));
    let recent = [state("run", "failed", now - chrono::Duration::minutes(59))];
    assert!(decide(&failed, &Counts::default(), &recent, &[], &config, now).0.is_empty());
    let old = [state("run", "failed", now - chrono::Duration::minutes(61))];
    let (raised, states) = decide(&failed, &Counts::default(), &old, &[], &config, now);
    assert_eq!(kinds(&raised), [(EventKind::Failed, true)]);
    assert!(matches!(&states[0], StateChange::Told { told_at, .. } if *told_at == now));
}

#[test]
fn a_guard_stop_after_failures_is_a_change_of_state_and_is_told() {
    let config = config();
    let now = crate::store::now();
    let guard = end(RunStatus::Refused, Some(&format!("{}: list 's' would lose 90%", crate::sync::MASS_REMOVAL_STOP)));
    let failing = [state("run", "failed", now)];
    assert_eq!(kinds(&decide(&guard, &Counts::default(), &failing, &[], &config, now).0), [(EventKind::Guard, false)]);
    let refused = end(RunStatus::Refused, Some("connection 'c' has no export user"));
    assert_eq!(kinds(&decide(&refused, &Counts::default(), &[], &[], &config, now).0), [(EventKind::Failed, false)]);
    let interrupted = end(RunStatus::Interrupted, Some("shutdown"));
    assert!(decide(&interrupted, &Counts::default(), &failing, &[], &config, now).0.is_empty(), "no change of state");
}

#[test]
fn rejected_members_past_the_share_are_told_once_and_a_refused_key_once_per_connection() {
    let config = config();
    let now = crate::store::now();
    let ok = end(RunStatus::Succeeded, None);
    let counts = Counts { planned_add: 90, invalid: 10, rejected: 5, ..Counts::default() };
    let (raised, _) = decide(&ok, &counts, &[], &[], &config, now);
    assert_eq!(kinds(&raised), [(EventKind::Rejected, false)], "15 of 100 > 5%");
    let told = [state("rejected", "rejected", now)];
    assert!(decide(&ok, &counts, &told, &[], &config, now).0.is_empty());
    let fine = Counts { planned_add: 100, rejected: 1, ..Counts::default() };
    let (raised, states) = decide(&ok, &fine, &told, &[], &config, now);
    assert!(raised.is_empty());
    assert!(states.contains(&StateChange::Over { subject: "export 1".into(), topic: "rejected" }));

    let mut key = end(RunStatus::Failed, Some("Iterable rejected the API key"));
    key.key_refused = true;
    let (raised, _) = decide(&key, &Counts::default(), &[], &[], &config, now);
    assert_eq!(kinds(&raised), [(EventKind::Failed, false), (EventKind::Key, false)]);
    let key_told = [state("key", "key", now)];
    let (raised, _) = decide(&key, &Counts::default(), &[state("run", "failed", now)], &key_told, &config, now);
    assert!(raised.is_empty(), "another export of the connection: the key is told already");
}

#[test]
fn a_recreated_list_is_told_each_time() {
    let mut ok = end(RunStatus::Succeeded, None);
    ok.recreated_lists = vec!["s".into()];
    let (raised, _) = decide(&ok, &Counts::default(), &[], &[], &config(), crate::store::now());
    assert_eq!(raised, [Raised { kind: EventKind::List, reminder: false, lists: vec!["s".into()] }]);
}

#[test]
fn email_addresses_are_scrubbed_from_what_a_message_quotes() {
    assert_eq!(scrub("member 'ann@example.com' refused"), "member '[email]' refused");
    assert_eq!(scrub("a@b.co, c@d.org."), "[email], [email].");
    assert_eq!(scrub("list @home and x@y"), "list @home and x@y");
}

#[test]
fn a_webhook_signature_is_the_hmac_of_the_timestamp_and_the_body() {
    let secret = secrecy::SecretString::from("whsec_test".to_string());
    // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
    let expected = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"whsec_test").unwrap();
        mac.update(b"1700000000.{\"a\":1}");
        hex::encode(mac.finalize().into_bytes())
    };
    assert_eq!(sign(&secret, 1_700_000_000, br#"{"a":1}"#), expected);
    assert_eq!(expected.len(), 64);
}

#[test]
fn messages_read_as_the_issue_asks() {
    let mut d = blank();
    d.kind = DocumentKind::Failed;
    d.export = Some("nightly".into());
    d.summary = "Export \"nightly\" failed".into();
    assert_eq!(email_subject(&d), "[segment-exporter] export \"nightly\" failed");
    d.reminder = true;
    assert_eq!(email_subject(&d), "[segment-exporter] export \"nightly\" failed (reminder)");
    assert!(slack_text(&d).starts_with(":rotating_light: *Export \"nightly\" failed*"));
    assert!(text_body(&d).contains("Export: nightly"));
}

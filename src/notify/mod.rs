//! Notifications: what an event tells (once per change of state, with a reminder every `notify.repeat_interval`),
//! to which channels, in which words; the outbox worker that delivers them with retries; and the three ways out
//! (a signed webhook, Slack, email).
//!
//! It decides what to tell and how, reads and writes only through `store` (the outbox is written with the run's
//! end, in one transaction), and words errors for contributors through `access::wording`. It never changes a run
//! and never blocks one: delivery happens in its own tasks.

mod deliver;
mod message;
mod outbox;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use deliver::{sign, Answer, Deliverer, SIGNATURE_HEADER};
pub use message::{email_subject, slack_text, text_body};
pub use outbox::{DeliveryObserver, Outbox};

use crate::config::Config;
use crate::store::{
    Channel, ChannelAudience, EventKind, Export, NewNotification, NotifyState, Run, RunStatus, StateChange, Store,
    StoreError, Tidings,
};
use crate::sync::{RunEnd, RunEndTeller};

/// The document a notification carries: what a webhook receives as it is, and what Slack and email messages are
/// written from. It never carries an email address, a user id, a key or a password.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventDocument {
    /// The same on every retry and every channel of one event: receivers deduplicate by it.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: DocumentKind,
    pub time: DateTime<Utc>,
    /// A reminder that a condition goes on (`notify.repeat_interval`), not its first notice.
    pub reminder: bool,
    /// One line saying what happened.
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunRef>,
    /// Iterable's or the source's error (worded for contributors on a channel open to them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,
    /// The lists concerned (`list`: those recreated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lists: Vec<String>,
}

/// An event's type, or a test message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DocumentKind {
    Failed,
    Guard,
    Recovered,
    Rejected,
    Key,
    List,
    Drift,
    /// Sent by `notify test`.
    Test,
}

impl From<EventKind> for DocumentKind {
    fn from(k: EventKind) -> Self {
        match k {
            EventKind::Failed => DocumentKind::Failed,
            EventKind::Guard => DocumentKind::Guard,
            EventKind::Recovered => DocumentKind::Recovered,
            EventKind::Rejected => DocumentKind::Rejected,
            EventKind::Key => DocumentKind::Key,
            EventKind::List => DocumentKind::List,
            EventKind::Drift => DocumentKind::Drift,
        }
    }
}

impl DocumentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentKind::Failed => "failed",
            DocumentKind::Guard => "guard",
            DocumentKind::Recovered => "recovered",
            DocumentKind::Rejected => "rejected",
            DocumentKind::Key => "key",
            DocumentKind::List => "list",
            DocumentKind::Drift => "drift",
            DocumentKind::Test => "test",
        }
    }
}

/// The run an event is about.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRef {
    pub id: i64,
    pub status: String,
    pub trigger: String,
    /// The export's page in the console, at `daemon.public_url` (when set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A run's counts, over all its lists.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub planned_add: u64,
    pub planned_update: u64,
    pub planned_remove: u64,
    pub added: u64,
    pub updated: u64,
    pub already_on_list: u64,
    pub removed: u64,
    pub rejected: u64,
    pub invalid: u64,
    /// A verify's members found on the list but not in the segment, and the other way round (`drift`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differing: Option<u64>,
}

impl Counts {
    fn of(run: &Run) -> Counts {
        run.targets.iter().fold(Counts::default(), |mut c, t| {
            let t = &t.counts;
            c.planned_add += t.planned_add;
            c.planned_update += t.planned_update;
            c.planned_remove += t.planned_remove;
            c.added += t.added;
            c.updated += t.updated;
            c.already_on_list += t.already_on_list;
            c.removed += t.removed;
            c.rejected += t.rejected;
            c.invalid += t.invalid;
            c
        })
    }

    /// The share of the members a run planned to send that were rejected or invalid; None when it planned none.
    fn rejected_share(&self) -> Option<f64> {
        let planned = self.planned_add + self.planned_update + self.invalid;
        (planned > 0).then(|| (self.rejected + self.invalid) as f64 / planned as f64)
    }
}

/// Whether a run was stopped by a guard and waits for someone to decide (the one place this is asked, so that
/// a guard added later needs one line here).
fn stopped_by_guard(status: RunStatus, error: Option<&str>) -> bool {
    status == RunStatus::Refused && crate::sync::stopped_by_guard(error).is_some()
}

/// The subject an export's conditions are kept under.
fn export_subject(export_id: i64) -> String {
    format!("export {export_id}")
}

fn connection_subject(connection_id: i64) -> String {
    format!("connection {connection_id}")
}

/// A new event id: random, and the same for every channel and retry of the event.
fn new_event_id() -> String {
    format!("evt_{:032x}", rand::random::<u128>())
}

/// One event to tell, before it is worded for each channel.
#[derive(Debug, Clone, PartialEq)]
struct Raised {
    kind: EventKind,
    reminder: bool,
    lists: Vec<String>,
}

/// What to tell about a condition of `topic` that is now `state` (None: not in it), given what was told before:
/// the first notice and each change are told, a condition that goes on is told again once `repeat` has passed
/// since it was last told, and its end is recorded (and told as `over`, when given).
fn decide_condition(
    (subject, topic): (&str, &'static str),
    now_in: Option<(EventKind, &'static str)>,
    over: Option<EventKind>,
    before: Option<&NotifyState>,
    now: DateTime<Utc>,
    repeat: chrono::Duration,
    out: &mut (Vec<Raised>, Vec<StateChange>),
) {
    match (now_in, before) {
        (Some((kind, state)), before) => {
            let reminder = match before {
                None => false,
                Some(b) if b.state != state => false,
                Some(b) if now - b.last_told_at >= repeat => true,
                Some(_) => return,
            };
            out.0.push(Raised { kind, reminder, lists: vec![] });
            out.1.push(StateChange::Told { subject: subject.into(), topic, state: state.into(), told_at: now });
        }
        (None, Some(_)) => {
            if let Some(kind) = over {
                out.0.push(Raised { kind, reminder: false, lists: vec![] });
            }
            out.1.push(StateChange::Over { subject: subject.into(), topic });
        }
        (None, None) => {}
    }
}

/// What a run's end tells, from what was told before (`export_states`, `connection_states`): the pure part of
/// [`Notifier`], so that it can be tested without a store.
fn decide(
    end: &RunEnd,
    counts: &Counts,
    export_states: &[NotifyState],
    connection_states: &[NotifyState],
    config: &Config,
    now: DateTime<Utc>,
) -> (Vec<Raised>, Vec<StateChange>) {
    let repeat = chrono::Duration::from_std(config.notify.repeat_interval).unwrap_or(chrono::Duration::MAX);
    let subject = export_subject(end.export.id);
    let state_of = |states: &[NotifyState], topic: &str| states.iter().find(|s| s.topic == topic).cloned();
    let mut out = (Vec::new(), Vec::new());
    let run_state = match end.status {
        RunStatus::Succeeded => None,
        s if stopped_by_guard(s, end.error.as_deref()) => Some((EventKind::Guard, "guard")),
        RunStatus::Failed | RunStatus::Refused => Some((EventKind::Failed, "failed")),
        // Interrupted and cancelled runs are resumed or were stopped on purpose: no change of state.
        RunStatus::Interrupted | RunStatus::Cancelled | RunStatus::Running => return out,
    };
    let before = state_of(export_states, "run");
    decide_condition((&subject, "run"), run_state, Some(EventKind::Recovered), before.as_ref(), now, repeat, &mut out);
    // Rejected members: judged on runs that sent (or tried to); a refused run planned nothing it could send.
    if matches!(end.status, RunStatus::Succeeded | RunStatus::Failed) {
        if let Some(share) = counts.rejected_share() {
            let now_in = (share > config.notify.rejected_share).then_some((EventKind::Rejected, "rejected"));
            let before = state_of(export_states, "rejected");
            decide_condition((&subject, "rejected"), now_in, None, before.as_ref(), now, repeat, &mut out);
        }
    }
    if let Some(connection_id) = end.export.connection_id {
        let now_in = end.key_refused.then_some((EventKind::Key, "key"));
        // Only a success says the key works again; a failure for another reason says nothing of it.
        if now_in.is_some() || end.status == RunStatus::Succeeded {
            let before = state_of(connection_states, "key");
            let subject = connection_subject(connection_id);
            decide_condition((&subject, "key"), now_in, None, before.as_ref(), now, repeat, &mut out);
        }
    }
    if !end.recreated_lists.is_empty() {
        out.0.push(Raised { kind: EventKind::List, reminder: false, lists: end.recreated_lists.clone() });
    }
    (out.0, out.1)
}

/// Decides and words what events tell, for the engine (as its [`RunEndTeller`]) and for events outside runs.
#[derive(Clone)]
pub struct Notifier {
    config: Arc<Config>,
}

impl Notifier {
    pub fn new(config: Arc<Config>) -> Notifier {
        Notifier { config }
    }

    /// What a run's end tells: the notifications for each subscribed channel and the changes of state.
    pub async fn run_end_tidings(&self, store: &Store, end: &RunEnd) -> Result<Tidings, StoreError> {
        let run = store.run(end.run_id).await?;
        let counts = Counts::of(&run);
        let export_states = store.notify_states(&export_subject(end.export.id)).await?;
        let connection_states = match end.export.connection_id {
            Some(id) => store.notify_states(&connection_subject(id)).await?,
            None => vec![],
        };
        let now = crate::store::now();
        let (raised, states) = decide(end, &counts, &export_states, &connection_states, &self.config, now);
        let mut tidings = Tidings { notifications: vec![], states };
        if raised.is_empty() {
            return Ok(tidings);
        }
        let subscriptions = store.subscriptions(end.export.id).await?;
        let connection = match end.export.connection_id {
            Some(id) => Some(store.connection_by_id(id).await?),
            None => None,
        };
        let run_ref = RunRef {
            id: run.id,
            status: end.status.to_string(),
            trigger: run.trigger.clone(),
            url: self.run_url(&end.export.name, run.id),
        };
        for event in raised {
            let channels: Vec<i64> = match (event.kind, &connection) {
                (EventKind::Key, Some(conn)) => store.key_subscribers(conn.id).await?,
                _ => subscriptions.iter().filter(|s| s.events.contains(&event.kind)).map(|s| s.channel_id).collect(),
            };
            let id = new_event_id();
            for channel_id in channels {
                let channel = store.channel_by_id(channel_id).await?;
                let error = match (&end.error, event.kind) {
                    (_, EventKind::Recovered | EventKind::List) | (None, _) => None,
                    (Some(e), _) => Some(self.worded_error(store, &channel, end.export.id, e).await?),
                };
                let document = EventDocument {
                    id: id.clone(),
                    kind: event.kind.into(),
                    time: now,
                    reminder: event.reminder,
                    summary: message::summary(
                        event.kind,
                        &end.export.name,
                        connection.as_ref().map(|c| c.name.as_str()),
                        &counts,
                        &event.lists,
                        event.reminder,
                    ),
                    export: Some(end.export.name.clone()),
                    connection: connection.as_ref().map(|c| c.name.clone()),
                    run: Some(run_ref.clone()),
                    error,
                    counts: Some(counts.clone()),
                    lists: event.lists.clone(),
                };
                tidings.notifications.push(self.notification(&document, event.kind, channel_id, Some(run.id)));
            }
        }
        Ok(tidings)
    }

    /// A run error as `channel`'s audience may read it, without email addresses.
    async fn worded_error(
        &self,
        store: &Store,
        channel: &Channel,
        export_id: i64,
        error: &str,
    ) -> Result<String, StoreError> {
        let error = match channel.usable_by {
            ChannelAudience::Admins => error.to_string(),
            ChannelAudience::Contributors => {
                crate::access::wording::error_for_contributors(store, export_id, error).await?
            }
        };
        Ok(scrub(&error))
    }

    fn notification(
        &self,
        document: &EventDocument,
        kind: EventKind,
        channel_id: i64,
        run_id: Option<i64>,
    ) -> NewNotification {
        let give_up = chrono::Duration::from_std(self.config.notify.give_up_after).unwrap_or(chrono::Duration::MAX);
        NewNotification {
            event_id: document.id.clone(),
            event: kind,
            channel_id,
            export_name: document.export.clone(),
            run_id,
            payload: serde_json::to_string(document).expect("an event document serialises"),
            give_up_at: document.time.checked_add_signed(give_up).unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    }

    /// The export's page in the console, where its runs are, at `daemon.public_url`.
    fn run_url(&self, export: &str, run_id: i64) -> Option<String> {
        let mut url = self.config.daemon.public_url()?;
        url.path_segments_mut().ok()?.pop_if_empty().extend(["exports", export]);
        url.set_fragment(Some(&format!("run-{run_id}")));
        Some(url.to_string())
    }

    /// Tells the channels subscribed to `drift` that a verify found export `export`'s lists differ from its
    /// segments (`differing` members in all), once per change of state with reminders, as runs' failures are; a
    /// verify that finds none ends the condition. For the verify (`run_id`: the run or verify that found it).
    pub async fn raise_drift(
        &self,
        store: &Store,
        export: &Export,
        run_id: Option<i64>,
        differing: u64,
        lists: &[String],
    ) -> Result<(), StoreError> {
        let subject = export_subject(export.id);
        let states = store.notify_states(&subject).await?;
        let before = states.iter().find(|s| s.topic == "drift");
        let repeat = chrono::Duration::from_std(self.config.notify.repeat_interval).unwrap_or(chrono::Duration::MAX);
        let now = crate::store::now();
        let now_in = (differing > 0).then_some((EventKind::Drift, "drift"));
        let mut out = (Vec::new(), Vec::new());
        decide_condition((&subject, "drift"), now_in, None, before, now, repeat, &mut out);
        let mut tidings = Tidings { notifications: vec![], states: out.1 };
        if !out.0.is_empty() {
            let connection = match export.connection_id {
                Some(id) => Some(store.connection_by_id(id).await?.name),
                None => None,
            };
            let counts = Counts { differing: Some(differing), ..Counts::default() };
            let id = new_event_id();
            for sub in store.subscriptions(export.id).await?.iter().filter(|s| s.events.contains(&EventKind::Drift)) {
                let document = EventDocument {
                    id: id.clone(),
                    kind: DocumentKind::Drift,
                    time: now,
                    reminder: out.0[0].reminder,
                    summary: message::summary(
                        EventKind::Drift,
                        &export.name,
                        connection.as_deref(),
                        &counts,
                        lists,
                        out.0[0].reminder,
                    ),
                    export: Some(export.name.clone()),
                    connection: connection.clone(),
                    run: run_id.map(|id| RunRef {
                        id,
                        status: "succeeded".into(),
                        trigger: "verify".into(),
                        url: self.run_url(&export.name, id),
                    }),
                    error: None,
                    counts: Some(counts.clone()),
                    lists: lists.to_vec(),
                };
                tidings.notifications.push(self.notification(&document, EventKind::Drift, sub.channel_id, run_id));
            }
        }
        store.tell(&tidings).await
    }

    /// Finishes a run the engine could not (its task panicked, or was stopped), or that the daemon refused before
    /// it started, telling what it tells in the same transaction.
    pub async fn finish_run(
        &self,
        store: &Store,
        export: &Export,
        run_id: i64,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let end = RunEnd {
            export: export.clone(),
            run_id,
            status,
            error: error.map(str::to_string),
            key_refused: false,
            recreated_lists: vec![],
        };
        let tidings = self.run_end_tidings(store, &end).await?;
        store.finish_run_telling(run_id, status, error, &tidings).await
    }
}

impl RunEndTeller for Notifier {
    fn tidings<'a>(&'a self, store: &'a Store, end: &'a RunEnd) -> BoxFuture<'a, Result<Tidings, StoreError>> {
        Box::pin(self.run_end_tidings(store, end))
    }

    fn drift<'a>(
        &'a self,
        store: &'a Store,
        export: &'a Export,
        run_id: i64,
        differing: u64,
        lists: &'a [String],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.raise_drift(store, export, Some(run_id), differing, lists))
    }
}

/// Tells the channels of export `export` subscribed to `drift` that a verify found its lists differ from its
/// segments; see [`Notifier::raise_drift`].
pub async fn raise_drift(
    store: &Store,
    config: &Arc<Config>,
    export: &Export,
    run_id: Option<i64>,
    differing: u64,
    lists: &[String],
) -> Result<(), StoreError> {
    Notifier::new(config.clone()).raise_drift(store, export, run_id, differing, lists).await
}

/// `text` with anything shaped like an email address replaced by `[email]`: an error may quote a member.
pub fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let core = word.trim_matches(|c: char| !c.is_alphanumeric());
        match core.split_once('@') {
            Some((local, domain)) if !local.is_empty() && domain.contains('.') && !domain.starts_with('.') => {
                out.push_str(&word.replace(core, "[email]"))
            }
            _ => out.push_str(word),
        }
    }
    out
}

#[cfg(test)]
mod tests;

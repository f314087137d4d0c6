//! Notifications: channels, the exports subscribed to them, the conditions already told (so that a change of state
//! is told once), and the outbox of notifications to deliver. What to tell, and how, is `crate::notify`'s; this
//! file only keeps it, and writes a run's end and what it tells in one transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::db::{sql, Kind, Row, Tx};
use super::{now, KeySource, Result, RunStatus, Store, StoreError};

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A run failed or was refused.
    Failed,
    /// A guard stopped a run; it waits for someone to decide.
    Guard,
    /// The first success after failures or a guard stop.
    Recovered,
    /// More than `notify.rejected_share` of the members a run planned to send were rejected or invalid.
    Rejected,
    /// Iterable refused the connection's key (revoked or replaced); told once per connection.
    Key,
    /// A list was deleted in Iterable and recreated.
    List,
    /// A verify found a list that differs from its segment.
    Drift,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Failed,
        EventKind::Guard,
        EventKind::Recovered,
        EventKind::Rejected,
        EventKind::Key,
        EventKind::List,
        EventKind::Drift,
    ];

    /// What an export is told when a subscription names no events.
    pub const DEFAULT: [EventKind; 4] = [EventKind::Failed, EventKind::Guard, EventKind::Recovered, EventKind::Key];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Failed => "failed",
            EventKind::Guard => "guard",
            EventKind::Recovered => "recovered",
            EventKind::Rejected => "rejected",
            EventKind::Key => "key",
            EventKind::List => "list",
            EventKind::Drift => "drift",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a channel reaches people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// A JSON document POSTed to a URL, signed with the channel's secret.
    Webhook,
    /// A Slack incoming webhook: a readable message.
    Slack,
    /// Email through `[smtp]`: a plain-text and an HTML part.
    Email,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::Email => "email",
        }
    }
}

/// Who may subscribe exports to a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ChannelAudience {
    /// Administrators only: messages carry errors as administrators see them.
    Admins,
    /// Contributors too: errors are worded as a contributor sees them (no source, no query).
    Contributors,
}

impl ChannelAudience {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelAudience::Admins => "admins",
            ChannelAudience::Contributors => "contributors",
        }
    }
}

/// A channel's URL (webhook, Slack), sealed with the master key: it is a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedUrl {
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
}

impl std::fmt::Debug for SealedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealedUrl(..)")
    }
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub id: i64,
    pub name: String,
    pub kind: ChannelKind,
    /// Webhook and Slack.
    pub url: Option<SealedUrl>,
    /// Email: where it goes.
    pub addresses: Vec<String>,
    /// Webhook: where the signing secret comes from.
    pub secret: Option<KeySource>,
    pub usable_by: ChannelAudience,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

#[derive(Debug, Clone)]
pub struct NewChannel {
    pub name: String,
    pub kind: ChannelKind,
    pub url: Option<SealedUrl>,
    pub addresses: Vec<String>,
    pub secret: Option<KeySource>,
    pub usable_by: ChannelAudience,
    pub created_by: String,
}

/// An export's subscription to a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subscription {
    pub channel: String,
    pub channel_id: i64,
    pub events: Vec<EventKind>,
}

/// A condition told and not over yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyState {
    pub topic: String,
    pub state: String,
    pub since: DateTime<Utc>,
    pub last_told_at: DateTime<Utc>,
}

/// A notification to write to the outbox: one event, as one channel is told it.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub event_id: String,
    pub event: EventKind,
    pub channel_id: i64,
    pub export_name: Option<String>,
    pub run_id: Option<i64>,
    /// The document the channel is told (JSON).
    pub payload: String,
    pub give_up_at: DateTime<Utc>,
}

/// A change to what is known to have been told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    /// `subject` is now in `state` on `topic`, told at `told_at` (a first notice, a change, or a reminder).
    Told { subject: String, topic: &'static str, state: String, told_at: DateTime<Utc> },
    /// The condition is over.
    Over { subject: String, topic: &'static str },
}

/// What an event writes: the notifications and the changes of state, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Tidings {
    pub notifications: Vec<NewNotification>,
    pub states: Vec<StateChange>,
}

/// A notification claimed for delivery.
#[derive(Debug, Clone)]
pub struct Notification {
    pub id: i64,
    pub event_id: String,
    pub event: EventKind,
    pub channel_id: i64,
    pub payload: String,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub give_up_at: DateTime<Utc>,
}

/// What became of one attempt to deliver a notification.
#[derive(Debug, Clone)]
pub enum DeliveryOutcome {
    Delivered,
    /// Try again at this time.
    Retry(DateTime<Utc>),
    /// No more attempts: the receiver refused it for good, or `notify.give_up_after` passed.
    GiveUp,
}

/// One delivery, as `notify log` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: i64,
    pub event_id: String,
    pub event: EventKind,
    pub channel: String,
    pub export: Option<String>,
    pub run_id: Option<i64>,
    /// `pending`, `delivered` or `given_up`.
    pub state: String,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_answer: Option<String>,
}

const SELECT_CHANNEL: &str = "SELECT id, name, kind, url_ciphertext, url_nonce, addresses, secret_source, secret_ref, \
     secret_ciphertext, secret_nonce, usable_by, created_at, created_by FROM channels";

fn channel_from_row(row: Row) -> Result<Channel> {
    let kind: String = row.try_get("kind")?;
    let kind = match kind.as_str() {
        "webhook" => ChannelKind::Webhook,
        "slack" => ChannelKind::Slack,
        "email" => ChannelKind::Email,
        other => return Err(StoreError::unknown_value("channels", "kind", other)),
    };
    let url = match (row.try_get::<Option<Vec<u8>>, _>("url_ciphertext")?, row.try_get("url_nonce")?) {
        (Some(ciphertext), Some(nonce)) => Some(SealedUrl { ciphertext, nonce }),
        _ => None,
    };
    let source: Option<String> = row.try_get("secret_source")?;
    let secret_ref: Option<String> = row.try_get("secret_ref")?;
    let secret = match source.as_deref() {
        None => None,
        Some("env") => Some(KeySource::Env(secret_ref.unwrap_or_default())),
        Some("file") => Some(KeySource::File(secret_ref.unwrap_or_default())),
        Some("stored") => Some(KeySource::Stored {
            ciphertext: row.try_get::<Option<Vec<u8>>, _>("secret_ciphertext")?.unwrap_or_default(),
            nonce: row.try_get::<Option<Vec<u8>>, _>("secret_nonce")?.unwrap_or_default(),
        }),
        Some(other) => return Err(StoreError::unknown_value("channels", "secret_source", other)),
    };
    let usable_by: String = row.try_get("usable_by")?;
    let usable_by = match usable_by.as_str() {
        "admins" => ChannelAudience::Admins,
        "contributors" => ChannelAudience::Contributors,
        other => return Err(StoreError::unknown_value("channels", "usable_by", other)),
    };
    let addresses: Option<String> = row.try_get("addresses")?;
    Ok(Channel {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        kind,
        url,
        addresses: addresses.map(|a| a.split(',').map(str::to_string).collect()).unwrap_or_default(),
        secret,
        usable_by,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

fn event_kind(table: &'static str, value: &str) -> Result<EventKind> {
    EventKind::parse(value).ok_or_else(|| StoreError::unknown_value(table, "event", value))
}

fn events_text(events: &[EventKind]) -> String {
    events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(",")
}

impl Store {
    pub async fn add_channel(&self, c: &NewChannel) -> Result<Channel> {
        let (source, secret_ref, ciphertext, nonce) = match &c.secret {
            None => (None, None, None, None),
            Some(KeySource::Env(var)) => (Some("env"), Some(var.clone()), None, None),
            Some(KeySource::File(path)) => (Some("file"), Some(path.clone()), None, None),
            Some(KeySource::Stored { ciphertext, nonce }) => {
                (Some("stored"), None, Some(ciphertext.clone()), Some(nonce.clone()))
            }
        };
        let addresses = (!c.addresses.is_empty()).then(|| c.addresses.join(","));
        let id: i64 = sql("INSERT INTO channels (name, kind, url_ciphertext, url_nonce, addresses, secret_source, \
             secret_ref, secret_ciphertext, secret_nonce, usable_by, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id")
        .bind(&c.name)
        .bind(c.kind.as_str())
        .bind(c.url.as_ref().map(|u| u.ciphertext.clone()))
        .bind(c.url.as_ref().map(|u| u.nonce.clone()))
        .bind(addresses)
        .bind(source)
        .bind(secret_ref)
        .bind(ciphertext)
        .bind(nonce)
        .bind(c.usable_by.as_str())
        .bind(now())
        .bind(&c.created_by)
        .scalar(&self.db)
        .await
        .map_err(|e| StoreError::on_insert(e, "channel", &c.name))?;
        self.channel_by_id(id).await
    }

    pub async fn channels(&self) -> Result<Vec<Channel>> {
        sql(format!("{SELECT_CHANNEL} ORDER BY name"))
            .fetch_all(&self.db)
            .await?
            .into_iter()
            .map(channel_from_row)
            .collect()
    }

    pub async fn channel(&self, name: &str) -> Result<Channel> {
        let row = sql(format!("{SELECT_CHANNEL} WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| StoreError::not_found("channel", name, "notify list"))?;
        channel_from_row(row)
    }

    pub async fn channel_by_id(&self, id: i64) -> Result<Channel> {
        let row = sql(format!("{SELECT_CHANNEL} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| StoreError::not_found("channel", &id.to_string(), "notify list"))?;
        channel_from_row(row)
    }

    /// Removes a channel, its subscriptions and what it had still to deliver.
    pub async fn remove_channel(&self, name: &str) -> Result<()> {
        let done = sql("DELETE FROM channels WHERE name = $1").bind(name).execute(&self.db).await?;
        if done == 0 {
            return Err(StoreError::not_found("channel", name, "notify list"));
        }
        Ok(())
    }

    /// The exports subscribed to a channel, by name.
    pub async fn channel_exports(&self, channel_id: i64) -> Result<Vec<String>> {
        Ok(sql("SELECT e.name FROM export_channels s JOIN exports e ON e.id = s.export_id \
             WHERE s.channel_id = $1 AND e.removed_at IS NULL ORDER BY e.name")
        .bind(channel_id)
        .scalars(&self.db)
        .await?)
    }

    /// The channels an export is subscribed to, by channel name.
    pub async fn subscriptions(&self, export_id: i64) -> Result<Vec<Subscription>> {
        sql("SELECT c.name, c.id, s.events FROM export_channels s JOIN channels c ON c.id = s.channel_id \
             WHERE s.export_id = $1 ORDER BY c.name")
        .bind(export_id)
        .fetch_all(&self.db)
        .await?
        .into_iter()
        .map(|r| {
            let events: String = r.try_get(2)?;
            Ok(Subscription {
                channel: r.try_get(0)?,
                channel_id: r.try_get(1)?,
                events: events
                    .split(',')
                    .filter(|e| !e.is_empty())
                    .map(|e| event_kind("export_channels", e))
                    .collect::<Result<_>>()?,
            })
        })
        .collect()
    }

    /// Subscribes export `export_id` to a channel for `events` (replacing what it was told before), and ends the
    /// subscriptions to `unsubscribe`, in one transaction.
    pub async fn set_subscriptions(
        &self,
        export_id: i64,
        subscribe: &[(i64, Vec<EventKind>)],
        unsubscribe: &[i64],
    ) -> Result<()> {
        let mut tx = self.db.begin().await?;
        for channel_id in unsubscribe {
            sql("DELETE FROM export_channels WHERE export_id = $1 AND channel_id = $2")
                .bind(export_id)
                .bind(channel_id)
                .execute(&mut tx)
                .await?;
        }
        for (channel_id, events) in subscribe {
            sql("INSERT INTO export_channels (export_id, channel_id, events) VALUES ($1, $2, $3) \
                 ON CONFLICT (export_id, channel_id) DO UPDATE SET events = excluded.events")
            .bind(export_id)
            .bind(channel_id)
            .bind(events_text(events))
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Channels to tell about connection `connection_id`'s key: those that an export of the connection is
    /// subscribed to for `key`, each once.
    pub async fn key_subscribers(&self, connection_id: i64) -> Result<Vec<i64>> {
        let rows =
            sql("SELECT DISTINCT s.channel_id, s.events FROM export_channels s JOIN exports e ON e.id = s.export_id \
             WHERE e.connection_id = $1 AND e.removed_at IS NULL ORDER BY s.channel_id")
            .bind(connection_id)
            .pairs::<i64, String>(&self.db)
            .await?;
        let mut ids: Vec<i64> =
            rows.into_iter().filter(|(_, events)| events.split(',').any(|e| e == "key")).map(|(id, _)| id).collect();
        ids.dedup();
        Ok(ids)
    }

    /// The conditions told about `subject` and not over.
    pub async fn notify_states(&self, subject: &str) -> Result<Vec<NotifyState>> {
        sql("SELECT topic, state, since, last_told_at FROM notify_states WHERE subject = $1 ORDER BY topic")
            .bind(subject)
            .fetch_all(&self.db)
            .await?
            .into_iter()
            .map(|r| {
                Ok(NotifyState {
                    topic: r.try_get(0)?,
                    state: r.try_get(1)?,
                    since: r.try_get(2)?,
                    last_told_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Finishes a run this process started, as `finish_run` does, and writes what it tells in the same
    /// transaction: its notifications are in the outbox if and only if its end is recorded.
    pub async fn finish_run_telling(
        &self,
        run_id: i64,
        status: RunStatus,
        error: Option<&str>,
        tidings: &Tidings,
    ) -> Result<bool> {
        let mut tx = self.db.begin().await?;
        let at = now();
        let done = sql(
            "UPDATE runs SET status = $1, finished_at = $2, error = $3 WHERE id = $4 AND owner = $5 AND status = 'running'",
        )
        .bind(status.as_str())
        .bind(at)
        .bind(error)
        .bind(run_id)
        .bind(super::process_owner())
        .execute(&mut tx)
        .await?
            > 0;
        if !done {
            tx.rollback().await?;
            tracing::warn!(run_id, status = %status, "Run not recorded as finished: it is no longer running under this process (another process marked it). Check `segment-exporter runs show {run_id}`.");
            return Ok(false);
        }
        // A list's first fill is complete once a run that filled it succeeds (the mass-addition guard spares it
        // until then).
        if status == RunStatus::Succeeded {
            sql("UPDATE targets SET filled_at = $1 WHERE filled_at IS NULL \
                 AND id IN (SELECT target_id FROM run_targets WHERE run_id = $2)")
            .bind(at)
            .bind(run_id)
            .execute(&mut tx)
            .await?;
        }
        write_tidings(&mut tx, tidings).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Writes what an event outside a run's end tells (a drift found by a verify, say).
    pub async fn tell(&self, tidings: &Tidings) -> Result<()> {
        let mut tx = self.db.begin().await?;
        write_tidings(&mut tx, tidings).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims up to `limit` notifications due now for `holder`, until `lease` has passed: no other process
    /// delivers them meanwhile. On PostgreSQL, rows another replica is claiming are skipped, not waited for.
    pub async fn claim_notifications(
        &self,
        holder: &str,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<Notification>> {
        let at = now();
        let until = at + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let lock = match self.db.kind() {
            Kind::Postgres => " FOR UPDATE SKIP LOCKED",
            Kind::Sqlite => "",
        };
        let text = format!(
            "UPDATE notify_outbox SET claimed_by = $1, claimed_until = $2, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM notify_outbox WHERE state = 'pending' AND next_attempt_at <= $3 \
             AND (claimed_until IS NULL OR claimed_until < $3) ORDER BY id LIMIT $4{lock}) \
             RETURNING id, event_id, event, channel_id, payload, attempts, created_at, give_up_at"
        );
        let rows = sql(text).bind(holder).bind(until).bind(at).bind(limit as i64).fetch_all(&self.db).await?;
        let mut out: Vec<Notification> = rows
            .into_iter()
            .map(|r| {
                let event: String = r.try_get(2)?;
                Ok(Notification {
                    id: r.try_get(0)?,
                    event_id: r.try_get(1)?,
                    event: event_kind("notify_outbox", &event)?,
                    channel_id: r.try_get(3)?,
                    payload: r.try_get(4)?,
                    attempts: r.try_get::<i64, _>(5)? as u32,
                    created_at: r.try_get(6)?,
                    give_up_at: r.try_get(7)?,
                })
            })
            .collect::<Result<_>>()?;
        out.sort_by_key(|n| n.id);
        Ok(out)
    }

    /// Records an attempt at a notification `holder` claimed. False when the claim had passed to another process.
    pub async fn record_delivery(
        &self,
        id: i64,
        holder: &str,
        outcome: &DeliveryOutcome,
        answer: &str,
    ) -> Result<bool> {
        let at = now();
        let (state, next, finished) = match outcome {
            DeliveryOutcome::Delivered => ("delivered", at, Some(at)),
            DeliveryOutcome::Retry(when) => ("pending", *when, None),
            DeliveryOutcome::GiveUp => ("given_up", at, Some(at)),
        };
        Ok(sql("UPDATE notify_outbox SET state = $1, next_attempt_at = $2, finished_at = $3, last_answer = $4, \
             claimed_by = NULL, claimed_until = NULL WHERE id = $5 AND claimed_by = $6 AND state = 'pending'")
        .bind(state)
        .bind(next)
        .bind(finished)
        .bind(super::runs::clip(answer, 500))
        .bind(id)
        .bind(holder)
        .execute(&self.db)
        .await?
            == 1)
    }

    /// When the next notification falls due that no process holds a claim on (None when none is pending).
    pub async fn next_notification_due(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(sql("SELECT MIN(CASE WHEN claimed_until IS NOT NULL AND claimed_until > next_attempt_at \
             THEN claimed_until ELSE next_attempt_at END) FROM notify_outbox WHERE state = 'pending'")
        .scalar(&self.db)
        .await?)
    }

    /// Drops notifications delivered or given up before `cutoff` (`store.history_retention`); returns how many.
    pub async fn prune_notifications(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        Ok(sql("DELETE FROM notify_outbox WHERE state != 'pending' AND finished_at < $1")
            .bind(cutoff)
            .execute(&self.db)
            .await?)
    }

    /// Notifications still to deliver (counted for `/status` and the tests).
    pub async fn pending_notifications(&self) -> Result<i64> {
        Ok(sql("SELECT COUNT(*) FROM notify_outbox WHERE state = 'pending'").scalar(&self.db).await?)
    }

    /// The newest `limit` deliveries, of one channel when given, newest first.
    pub async fn delivery_log(&self, channel: Option<&str>, limit: u32) -> Result<Vec<Delivery>> {
        sql("SELECT o.id, o.event_id, o.event, c.name, o.export_name, o.run_id, o.state, o.attempts, o.created_at, \
             o.next_attempt_at, o.finished_at, o.last_answer FROM notify_outbox o JOIN channels c ON c.id = o.channel_id \
             WHERE ($1 IS NULL OR c.name = $1) ORDER BY o.id DESC LIMIT $2")
        .bind(channel)
        .bind(limit as i64)
        .fetch_all(&self.db)
        .await?
        .into_iter()
        .map(|r| {
            let event: String = r.try_get(2)?;
            let state: String = r.try_get(6)?;
            Ok(Delivery {
                id: r.try_get(0)?,
                event_id: r.try_get(1)?,
                event: event_kind("notify_outbox", &event)?,
                channel: r.try_get(3)?,
                export: r.try_get(4)?,
                run_id: r.try_get(5)?,
                next_attempt_at: (state == "pending").then(|| r.try_get(9)).transpose()?,
                state,
                attempts: r.try_get::<i64, _>(7)? as u32,
                created_at: r.try_get(8)?,
                finished_at: r.try_get(10)?,
                last_answer: r.try_get(11)?,
            })
        })
        .collect()
    }
}

async fn write_tidings(tx: &mut Tx, tidings: &Tidings) -> Result<()> {
    let at = now();
    for n in &tidings.notifications {
        sql("INSERT INTO notify_outbox (event_id, event, channel_id, export_name, run_id, payload, created_at, \
             next_attempt_at, give_up_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)")
        .bind(&n.event_id)
        .bind(n.event.as_str())
        .bind(n.channel_id)
        .bind(n.export_name.as_deref())
        .bind(n.run_id)
        .bind(&n.payload)
        .bind(at)
        .bind(n.give_up_at)
        .execute(&mut *tx)
        .await?;
    }
    for change in &tidings.states {
        match change {
            StateChange::Told { subject, topic, state, told_at } => {
                sql("INSERT INTO notify_states (subject, topic, state, since, last_told_at) VALUES ($1, $2, $3, $4, $4) \
                     ON CONFLICT (subject, topic) DO UPDATE SET last_told_at = excluded.last_told_at, \
                     since = CASE WHEN notify_states.state = excluded.state THEN notify_states.since ELSE excluded.since END, \
                     state = excluded.state")
                .bind(subject)
                .bind(*topic)
                .bind(state)
                .bind(told_at)
                .execute(&mut *tx)
                .await?;
            }
            StateChange::Over { subject, topic } => {
                sql("DELETE FROM notify_states WHERE subject = $1 AND topic = $2")
                    .bind(subject)
                    .bind(*topic)
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    Ok(())
}

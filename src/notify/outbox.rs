//! The outbox's delivery: claims notifications due (a claim is a lease, so with several replicas on one store each
//! notification is delivered by one of them), delivers each in a task of its own (a receiver that hangs holds only
//! its own task, never a run or another channel), and records the answer, with the next attempt after a growing,
//! jittered pause (`backon`) until `notify.give_up_after` has passed since the event. Delivery is at least once:
//! a process that dies mid-attempt leaves the claim to lapse, and the notification is tried again.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::deliver::{Answer, Deliverer};
use crate::config::Config;
use crate::store::{DeliveryOutcome, Notification, Store};

/// Notifications delivered at once by one process, at most.
const MAX_IN_FLIGHT: usize = 64;
/// How often the daemon drops notifications older than `store.history_retention`.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Counts deliveries (the daemon's metrics): by channel and outcome (`delivered`, `retry`, `refused`, `given_up`).
pub trait DeliveryObserver: Send + Sync {
    fn delivery(&self, channel: &str, outcome: &'static str);
}

/// The outbox of one process; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    store: Store,
    config: Arc<Config>,
    deliverer: Deliverer,
    holder: String,
    wake: Arc<Notify>,
    observer: Option<Arc<dyn DeliveryObserver>>,
}

impl Outbox {
    pub fn new(store: Store, config: Arc<Config>) -> Outbox {
        Outbox {
            deliverer: Deliverer::new(config.clone()),
            store,
            config,
            holder: crate::store::process_owner().to_string(),
            wake: Arc::new(Notify::new()),
            observer: None,
        }
    }

    pub fn with_observer(mut self, observer: Arc<dyn DeliveryObserver>) -> Outbox {
        self.observer = Some(observer);
        self
    }

    /// Looks for notifications due now rather than at the next poll (a run just ended).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// How long a claim holds: longer than an attempt can take.
    fn lease(&self) -> Duration {
        self.config.notify.timeout * 2 + Duration::from_secs(10)
    }

    /// Delivers notifications as they fall due until `stop`; attempts in flight then are dropped, and their claims
    /// lapse so that the next process (or this one, restarted) tries them again.
    pub async fn run(self, stop: CancellationToken) {
        let mut in_flight = JoinSet::new();
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while in_flight.try_join_next().is_some() {}
            let room = MAX_IN_FLIGHT.saturating_sub(in_flight.len());
            if room > 0 {
                match self.store.claim_notifications(&self.holder, self.lease(), room as u32).await {
                    Ok(claimed) => {
                        for n in claimed {
                            let me = self.clone();
                            in_flight.spawn(async move { me.attempt(n, None).await });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot read the notification outbox; trying again shortly.")
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = prune.tick() => self.prune().await,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.notify.poll_interval) => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            }
        }
        in_flight.abort_all();
    }

    /// Keeps the outbox bounded: what was delivered or given up is kept as long as run history.
    async fn prune(&self) {
        let retention =
            chrono::Duration::from_std(self.config.store.history_retention).unwrap_or(chrono::TimeDelta::MAX);
        let cutoff =
            crate::store::now().checked_sub_signed(retention).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        match self.store.prune_notifications(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(notifications = n, "Pruned old notifications."),
            Err(e) => tracing::warn!(error = %e, "Could not prune old notifications; tried again later."),
        }
    }

    /// Delivers what is due, retrying, for at most `within` (`export run` without a daemon, before it exits).
    /// Returns how many notifications are left to deliver: they stay in the outbox for the daemon or the next run.
    pub async fn drain(&self, within: Duration) -> Result<i64, crate::store::StoreError> {
        let deadline = tokio::time::Instant::now() + within;
        let until = crate::store::now() + chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
        while tokio::time::Instant::now() < deadline {
            let claimed = self.store.claim_notifications(&self.holder, self.lease(), MAX_IN_FLIGHT as u32).await?;
            if claimed.is_empty() {
                match self.store.next_notification_due().await? {
                    Some(due) if due <= until => {}
                    _ => break,
                }
                let pause = self.config.notify.poll_interval.min(Duration::from_millis(200));
                tokio::time::sleep_until((tokio::time::Instant::now() + pause).min(deadline)).await;
                continue;
            }
            futures::future::join_all(claimed.into_iter().map(|n| self.attempt(n, Some(deadline)))).await;
        }
        self.store.pending_notifications().await
    }

    /// One attempt at one claimed notification, recorded; cut short at `deadline` (`export run` exiting), when
    /// given, so that its claim is let go for the daemon or the next run at once.
    async fn attempt(&self, n: Notification, deadline: Option<tokio::time::Instant>) {
        let channel = match self.store.channel_by_id(n.channel_id).await {
            Ok(c) => c,
            // Removed meanwhile: its notifications went with it.
            Err(crate::store::StoreError::NotFound { .. }) => return,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read a notification's channel; trying again shortly.");
                return;
            }
        };
        let delivery = self.deliverer.deliver(&channel, &n.payload);
        let answer = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, delivery).await.unwrap_or_else(|_| {
                Answer::Retry("no answer before `export run` had to exit (notify.run_wait)".into())
            }),
            None => delivery.await,
        };
        let (outcome, label) = match &answer {
            Answer::Delivered(_) => (DeliveryOutcome::Delivered, "delivered"),
            Answer::Refused(_) => (DeliveryOutcome::GiveUp, "refused"),
            Answer::Retry(_) => {
                let next = crate::store::now()
                    + chrono::Duration::from_std(retry_delay(&self.config, n.attempts))
                        .unwrap_or(chrono::Duration::MAX);
                if next > n.give_up_at {
                    (DeliveryOutcome::GiveUp, "given_up")
                } else {
                    (DeliveryOutcome::Retry(next), "retry")
                }
            }
        };
        let (event, channel_name, attempts) = (n.event.as_str(), channel.name.as_str(), n.attempts);
        match label {
            "delivered" => {
                tracing::info!(channel = channel_name, event, event_id = %n.event_id, attempts, answer = answer.text(), "Notification delivered.")
            }
            "retry" => {
                tracing::warn!(channel = channel_name, event, event_id = %n.event_id, attempts, answer = answer.text(), "Notification not delivered yet; it is tried again.")
            }
            _ => {
                tracing::error!(channel = channel_name, event, event_id = %n.event_id, attempts, answer = answer.text(), "Notification given up: the receiver refused it, or notify.give_up_after passed. See `segment-exporter notify log`.")
            }
        }
        if let Some(observer) = &self.observer {
            observer.delivery(channel_name, label);
        }
        match self.store.record_delivery(n.id, &self.holder, &outcome, answer.text()).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!(id = n.id, "A notification's claim lapsed before its answer was recorded."),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot record a notification's delivery; it may be delivered again.")
            }
        }
    }
}

/// The pause before attempt `attempts + 1`: from `notify.retry_min_delay`, doubling with jitter, at most
/// `notify.retry_max_delay`.
fn retry_delay(config: &Config, attempts: u32) -> Duration {
    let n = &config.notify;
    backon::ExponentialBuilder::default()
        .with_min_delay(n.retry_min_delay)
        .with_max_delay(n.retry_max_delay)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(attempts.saturating_sub(1) as usize)
        .unwrap_or(n.retry_max_delay)
        .min(n.retry_max_delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_pauses_grow_and_stay_within_the_configured_bounds() {
        let mut config = Config::default();
        config.notify.retry_min_delay = Duration::from_secs(1);
        config.notify.retry_max_delay = Duration::from_secs(60);
        for attempts in 1..40 {
            let d = retry_delay(&config, attempts);
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(60), "{attempts}: {d:?}");
        }
        assert!(retry_delay(&config, 10) >= Duration::from_secs(60).min(Duration::from_secs(512)));
    }
}

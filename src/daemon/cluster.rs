//! This daemon among the others sharing a PostgreSQL store: it says it is alive (with what it runs and what it
//! cannot run here, and a digest of its run settings), listens for queued requests (`LISTEN/NOTIFY`, with polling
//! as the fallback), asks for the takeover of runs whose daemon lost its lease, watches the store's schema (a newer
//! one stops it taking work; runs in flight go on), and tells `/readyz` when the store does not answer.
//!
//! It owns only that upkeep; which runs start is still the command loop's, through the run queue. None of it
//! happens on SQLite, where one process takes the runs.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::status::Shared;
use crate::config::Config;
use crate::queue::{Ask, RunQueue, Trigger};
use crate::store::{Replica, Store};

/// Replicas not seen for this long are dropped from the store's list.
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// This daemon's identity among the replicas.
pub fn replica_id() -> String {
    crate::sync::guard::holder()
}

/// A digest of the settings that shape a run, so replicas can tell when theirs differ.
pub fn settings_digest(config: &Config) -> String {
    let text = serde_json::json!({
        "iterable": config.iterable, "sync": config.sync, "time_zone": config.daemon.time_zone,
    })
    .to_string();
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// Starts the upkeep of a daemon on a PostgreSQL store; nothing on SQLite.
pub fn spawn(store: Store, queue: RunQueue, config: Arc<Config>, shared: Arc<Shared>, stop: CancellationToken) {
    if store.kind() != crate::store::Kind::Postgres {
        return;
    }
    tokio::spawn(listen(store.clone(), queue.clone(), stop.clone()));
    tokio::spawn(upkeep(store, queue, config, shared, stop));
}

/// Wakes the command loop on every queue notification; `PgListener` reconnects by itself after a lost connection.
async fn listen(store: Store, queue: RunQueue, stop: CancellationToken) {
    let mut listener = loop {
        match store.listen_queue().await {
            Ok(Some(l)) => break l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for run requests yet; polling meanwhile, and trying again.");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    loop {
        tokio::select! {
            n = listener.recv() => match n {
                Ok(_) => queue.wake(),
                Err(e) => {
                    tracing::debug!(error = %e, "Listening for run requests failed; reconnecting.");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = stop.cancelled() => return,
        }
    }
}

/// Every `store.lease_renew`: the heartbeat, the lost leases, the schema, the cluster's view for `/status`.
async fn upkeep(store: Store, queue: RunQueue, config: Arc<Config>, shared: Arc<Shared>, stop: CancellationToken) {
    let started_at = chrono::Utc::now();
    let id = replica_id();
    let known = crate::store::known_schema_version();
    let mut tick = tokio::time::interval(config.store.lease_renew);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned_settings = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => {
                let _ = store.forget_replica(&id).await;
                return;
            }
        }
        let (stopping, held): (bool, Vec<String>) = {
            let s = shared.lock();
            (s.stopping, s.exports.iter().filter(|(_, e)| e.running).map(|(n, _)| n.clone()).collect())
        };
        let status = serde_json::json!({
            "stopping": stopping,
            "runs": held,
            "skipped": queue.skipped(),
            "paused": shared.lock().paused.clone(),
        });
        let me = Replica {
            id: id.clone(),
            host: crate::sync::guard::hostname(),
            started_at,
            seen_at: chrono::Utc::now(),
            version: env!("CARGO_PKG_VERSION").into(),
            schema_version: known,
            settings: settings_digest(&config),
            status: status.to_string(),
        };
        let round = async {
            store.heartbeat(&me).await?;
            let schema = store.schema_version().await?;
            let replicas = store.replicas(FORGET_AFTER).await?;
            let leases = store.live_leases().await?;
            let lost = store.lost_leases().await?;
            Ok::<_, crate::store::StoreError>((schema, replicas, leases, lost))
        };
        match round.await {
            Err(e) => {
                let was = shared.lock().store_unreachable.replace(e.to_string());
                if was.is_none() {
                    tracing::error!(error = %e, "The store does not answer: runs pause and retry, /readyz answers 503 until it does.");
                }
            }
            Ok((schema, replicas, leases, lost)) => {
                if shared.lock().store_unreachable.take().is_some() {
                    tracing::info!("The store answers again.");
                }
                let paused = (schema > known).then(|| {
                    format!(
                        "the store's schema is version {schema}, newer than this daemon knows ({known}): it takes no \
                         new runs (those in flight finish). Upgrade it to the release that migrated the store"
                    )
                });
                {
                    let mut s = shared.lock();
                    if paused.is_some() && s.paused.is_none() {
                        tracing::error!("{}.", paused.as_deref().unwrap_or_default());
                    }
                    s.paused = paused;
                    let digests: std::collections::BTreeSet<&str> =
                        replicas.iter().map(|r| r.settings.as_str()).collect();
                    if digests.len() > 1 && !warned_settings {
                        warned_settings = true;
                        tracing::warn!(replicas = replicas.len(), "Replicas run with different [iterable], [sync] or daemon.time_zone settings: a run's pace, retries and guards then depend on which replica takes it. Give every replica the same settings.");
                    }
                    s.cluster = Some(serde_json::json!({
                        "this_replica": id,
                        "replicas": replicas.iter().map(|r| serde_json::json!({
                            "id": r.id, "host": r.host, "started_at": r.started_at, "last_renewal": r.seen_at,
                            "version": r.version, "schema_version": r.schema_version, "settings": r.settings,
                            "status": serde_json::from_str::<serde_json::Value>(&r.status).unwrap_or_default(),
                        })).collect::<Vec<_>>(),
                    }));
                    s.remote_runs = leases.into_iter().collect();
                }
                for export_id in lost {
                    let ask = Ask {
                        export_id,
                        trigger: Trigger::Takeover,
                        requested_by: None,
                        full: false,
                        allow_mass_removal: false,
                        allow_mass_addition: false,
                        verify: None,
                    };
                    match queue.ask(&ask).await {
                        Ok(_) => tracing::warn!(
                            export_id,
                            "A daemon lost the lease of a run in flight; asking for it to be taken over."
                        ),
                        Err(e) => tracing::warn!(export_id, error = %e, "Cannot ask for a takeover yet."),
                    }
                }
            }
        }
    }
}

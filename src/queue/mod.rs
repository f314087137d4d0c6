//! The run queue: where every request for a run goes (the API, the console, trigger files, the schedule, missed
//! schedules), whoever asked. A request is a row in the store; at most one per export waits, and a request made
//! while one waits merges into it (the "one follow-up run" rule). Whoever has a free slot (the daemon's command
//! loop) takes the oldest requests it can start with `take`, and everyone can ask what became of a request
//! (`answer`). It also keeps the live progress of the runs this process has in flight (`live`).
//!
//! It sits below both the HTTP API and the daemon, so neither reaches into the other: the API puts requests here
//! and reads progress here, the daemon takes requests from here. It decides nothing about a run itself (the
//! engine, `crate::sync`, does) and never starts one.

mod live;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

pub use live::Live;

use crate::store::{NewRunRequest, RequestState, RunRequest, Store, StoreError, WaitingFor};
use crate::sync::{LockError, RunGuard};

/// What asked for a run; recorded with the run as its trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A person, through the HTTP API or the web console.
    Api,
    /// The export's schedule (or the refresh schedule).
    Schedule,
    /// A scheduled time that passed while no daemon was running.
    MissedSchedule,
    /// A file in `daemon.trigger_dir`, or `export trigger`.
    TriggerFile,
    /// A run whose daemon lost its lease (killed, frozen, cut off), taken over by another.
    Takeover,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Api => "api",
            Trigger::Schedule => "schedule",
            Trigger::MissedSchedule => "missed-schedule",
            Trigger::TriggerFile => "trigger-file",
            Trigger::Takeover => "takeover",
        }
    }

    /// Runs nobody asked for at that moment: they go on behalf of the connection's export user.
    pub fn is_scheduled(self) -> bool {
        matches!(self, Trigger::Schedule | Trigger::MissedSchedule)
    }

    pub fn parse(text: &str) -> Option<Trigger> {
        [Trigger::Api, Trigger::Schedule, Trigger::MissedSchedule, Trigger::TriggerFile, Trigger::Takeover]
            .into_iter()
            .find(|t| t.as_str() == text)
    }
}

/// A request for a run of one export.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub export_id: i64,
    pub trigger: Trigger,
    /// The account that asked, for the run's note.
    pub requested_by: Option<&'a str>,
    /// Re-send every member (for the run that starts next).
    pub full: bool,
    /// Let the run through the mass-removal guard (the run that starts next).
    pub allow_mass_removal: bool,
    /// Let the run through the mass-addition guard (the run that starts next).
    pub allow_mass_addition: bool,
    /// A verify of the export's lists instead of a run (`crate::sync::VerifyOptions`); None: a run.
    pub verify: Option<VerifyAsk>,
}

/// What a verify asks for besides reading and comparing the lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyAsk {
    /// Send the missing members again and correct the export's memory.
    pub repair: bool,
    /// With `repair`: unsubscribe the lingering members too.
    pub remove_lingering: bool,
}

/// What became of a request, as far as it got within the time its asker waited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A run took it; its id once the run's row exists.
    Started { run_id: Option<i64> },
    /// It waits, and why.
    Waiting(WaitingFor),
    /// It waits, and no daemon has looked at it yet (none is running, or all are stopping).
    Queued,
    /// It cannot run, and why.
    NotStarted(String),
}

/// A request taken for a run, with the export held for it: the run must start with this guard.
pub struct Taken {
    pub request: RunRequest,
    pub guard: RunGuard,
}

/// How often a request's asker looks at what became of it.
const ANSWER_POLL: Duration = Duration::from_millis(20);

/// The run queue; cheap to clone.
#[derive(Clone)]
pub struct RunQueue {
    store: Store,
    /// Shared by every clone, so a reload reaches the API's handle too.
    config: Arc<std::sync::RwLock<Arc<crate::config::Config>>>,
    wake: Arc<Notify>,
    live: Arc<Live>,
    /// Exports this process cannot run here (PostgreSQL stores), by name, and why.
    skipped: Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
}

impl RunQueue {
    pub fn new(store: Store, config: Arc<crate::config::Config>) -> RunQueue {
        RunQueue {
            store,
            config: Arc::new(std::sync::RwLock::new(config)),
            wake: Arc::default(),
            live: Arc::default(),
            skipped: Arc::default(),
        }
    }

    /// The configuration in force (what a replica can read, lease timing); `set_config` replaces it on reload.
    fn config(&self) -> Arc<crate::config::Config> {
        self.config.read().expect("queue config lock").clone()
    }

    /// A reloaded configuration, for every handle of this queue.
    pub fn set_config(&self, config: Arc<crate::config::Config>) {
        *self.config.write().expect("queue config lock") = config;
    }

    /// The exports this process leaves to others because it cannot run them here, and why.
    pub fn skipped(&self) -> std::collections::BTreeMap<String, String> {
        self.skipped.lock().expect("skipped lock").clone()
    }

    /// On a store shared by several hosts, whether this process can run the request's export here; it notes the
    /// ones it cannot, for `/status`.
    async fn runs_here(&self, request: &RunRequest) -> Result<bool, StoreError> {
        if self.store.kind() != crate::store::Kind::Postgres {
            return Ok(true);
        }
        let missing = crate::sync::readiness::missing_here(&self.store, &self.config(), request.export_id).await?;
        let mut skipped = self.skipped.lock().expect("skipped lock");
        match missing {
            None => {
                skipped.remove(&request.export_name);
                Ok(true)
            }
            Some(why) => {
                if skipped.insert(request.export_name.clone(), why.clone()).is_none() {
                    tracing::warn!(export = %request.export_name, reason = %why, "Leaving this export's runs to the other daemons: it cannot run here.");
                }
                Ok(false)
            }
        }
    }

    /// The runs this process has in flight, with their live progress.
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// Puts a request in the queue (or merges it into the export's waiting one) and wakes whoever takes runs.
    /// Returns the request's id.
    pub async fn ask(&self, ask: &Ask<'_>) -> Result<i64, StoreError> {
        let note = ask.requested_by.map(|by| format!("asked for by {by}"));
        let (id, merged) = self.store.enqueue_run(&new_request(ask, note.as_deref())).await?;
        if merged {
            tracing::info!(
                request = id,
                trigger = ask.trigger.as_str(),
                "A run request of this export waits already; this one is merged into it."
            );
        }
        self.wake.notify_one();
        Ok(id)
    }

    /// Queues the run of one scheduled time of an export: a time queued before (by this process or another
    /// sharing the store) is not queued again. Returns the request's id when this call queued it.
    pub async fn ask_scheduled(&self, ask: &Ask<'_>, due_at: DateTime<Utc>) -> Result<Option<i64>, StoreError> {
        let queued = self.store.enqueue_scheduled_run(&new_request(ask, None), due_at).await?;
        if queued.is_some() {
            self.wake.notify_one();
        }
        Ok(queued.map(|(id, _)| id))
    }

    /// Waits until someone should look at the queue again (a request was made in this process).
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// Wakes whoever takes runs (a slot freed, a run ended).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// What became of request `id`: waits until it started and its run has an id, or was found waiting or
    /// refused by whoever takes runs; at most `decide` while nobody looked at it, at most `run_id` for the id of a
    /// run that started.
    pub async fn answer(&self, id: i64, decide: Duration, run_id: Duration) -> Result<Answer, StoreError> {
        let started = tokio::time::Instant::now();
        loop {
            let request = self.store.run_request(id).await?;
            let (answer, patience) = match (request.state, request.run_id, request.waiting_for) {
                (RequestState::Started, Some(run_id), _) => return Ok(Answer::Started { run_id: Some(run_id) }),
                (RequestState::Started, None, _) => (Answer::Started { run_id: None }, run_id),
                (RequestState::NotStarted, _, _) => {
                    return Ok(Answer::NotStarted(request.reason.unwrap_or_else(|| "it could not start".into())))
                }
                (RequestState::Queued, _, Some(waiting)) => return Ok(Answer::Waiting(waiting)),
                (RequestState::Queued, _, None) => (Answer::Queued, decide),
            };
            if started.elapsed() >= patience {
                return Ok(answer);
            }
            tokio::time::sleep(ANSWER_POLL).await;
        }
    }

    /// Takes the requests that can start now, oldest first, up to `free_slots`: those whose export no run holds
    /// (`running_here` are this process's runs). Each request it cannot start yet is marked with why it waits.
    pub async fn take(&self, running_here: &HashSet<i64>, free_slots: usize) -> Result<Vec<Taken>, StoreError> {
        let mut taken = Vec::new();
        for request in self.store.queued_requests().await? {
            let waiting_for = if running_here.contains(&request.export_id) {
                WaitingFor::CurrentRun
            } else if taken.len() >= free_slots {
                WaitingFor::FreeSlot
            } else if !self.runs_here(&request).await? {
                continue;
            } else {
                match RunGuard::take(&self.store, &self.config(), request.export_id).await {
                    Ok(guard) => {
                        if self.store.claim_request(request.id, crate::store::process_owner()).await? {
                            taken.push(Taken { request, guard });
                        } else {
                            guard.release(true).await;
                        }
                        continue;
                    }
                    Err(LockError::Busy { .. }) => WaitingFor::AnotherProcess,
                    Err(e) => {
                        tracing::error!(export = %request.export_name, error = %e, "Cannot take the export's run lock; the request waits.");
                        continue;
                    }
                }
            };
            if request.waiting_for != Some(waiting_for) {
                self.store.set_request_waiting(request.id, waiting_for).await?;
                let (export, trigger) = (&request.export_name, &request.trigger);
                match waiting_for {
                    WaitingFor::CurrentRun => {
                        tracing::info!(export = %export, trigger = %trigger, "Export is running; queued one follow-up run.")
                    }
                    WaitingFor::FreeSlot => {
                        tracing::info!(export = %export, trigger = %trigger, running = running_here.len(), "At daemon.max_concurrent_runs; the run waits for a free slot.")
                    }
                    WaitingFor::AnotherProcess => {
                        tracing::info!(export = %export, trigger = %trigger, "Export is running in another process; queued one follow-up run for when it ends.")
                    }
                }
            }
        }
        Ok(taken)
    }

    /// Whether some request waits behind a run of another process (a lock to look at again later).
    pub async fn waits_for_another_process(&self) -> Result<bool, StoreError> {
        Ok(self.store.queued_requests().await?.iter().any(|r| r.waiting_for == Some(WaitingFor::AnotherProcess)))
    }

    /// A taken request that cannot run, and why; `run_id` is the run that recorded the refusal, if one did.
    pub async fn refuse(&self, request_id: i64, reason: &str, run_id: Option<i64>) -> Result<(), StoreError> {
        self.store.refuse_request(request_id, reason, run_id).await
    }

    /// A taken request whose run could not start after all (the export turned out busy): it waits again.
    pub async fn put_back(&self, request_id: i64) -> Result<(), StoreError> {
        self.store.requeue_request(request_id).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Start-up upkeep: requests a stopped process took but never started wait again; old ones are pruned.
    pub async fn tidy(&self) -> Result<(), StoreError> {
        self.store.requeue_abandoned_requests().await?;
        self.store.prune_requests().await
    }

    /// Whether a request of this export waits (a follow-up, when the export is running).
    pub async fn waiting_request(&self, export_id: i64) -> Result<Option<RunRequest>, StoreError> {
        self.store.queued_request_of(export_id).await
    }
}

fn new_request<'a>(ask: &Ask<'a>, note: Option<&'a str>) -> NewRunRequest<'a> {
    NewRunRequest {
        export_id: ask.export_id,
        trigger: ask.trigger.as_str(),
        requested_by: ask.requested_by,
        note,
        full: ask.full,
        allow_mass_removal: ask.allow_mass_removal,
        allow_mass_addition: ask.allow_mass_addition,
        wants_run: ask.verify.is_none(),
        verify: ask.verify.is_some(),
        repair: ask.verify.is_some_and(|v| v.repair),
        remove_lingering: ask.verify.is_some_and(|v| v.remove_lingering),
    }
}

//! Sending a plan: find or create each list, then stream the planned adds and removes to Iterable in batches of at
//! most `batch_size` members and `max_body_bytes`, several in flight, recording each acknowledged batch.
//!
//! Progress is recorded per member, not as an offset, so batches finishing out of order need no reordering: what
//! is in `members` was acknowledged, and the next plan skips it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::list_lock::{ListLock, ListLockError};
use super::progress::Progress;
use super::SyncError;
use crate::config::Config;
use crate::iterable::{
    encode_subscriber, is_forgotten, user_id_key, BulkResponse, IterableClient, IterableError, ListDetails,
};
use crate::store::{AckedMember, Export, IssueKind, OnLeave, PlanSession, ProjectType, Store, Target};

/// Members of a list read (`getUsers`) per write to the store.
pub(crate) const LIST_READ_CHUNK: usize = 4000;

/// Bytes of a subscribe body outside its subscribers.
const BODY_OVERHEAD: usize = 128;

/// One target's part of a run.
pub(crate) struct TargetRun<'a> {
    pub run_id: i64,
    pub target: &'a Target,
    pub list_id: i64,
    /// When this run created the list: Iterable may answer `invalidListId` for a while after.
    pub created_at: Option<Instant>,
    /// Subscribes ask Iterable not to create unknown users (`updateExistingUsersOnly`).
    pub existing_users_only: bool,
}

/// A target's list as `resolve_lists` found it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResolvedList {
    pub list_id: i64,
    /// The stored list no longer existed and was created again, so every member must be sent again.
    pub recreated: bool,
    /// The list was found by name and held members, recorded as pre-existing: those the run sends are on it already.
    pub adopted: bool,
    /// When this run created the list: Iterable may answer `invalidListId` for a while after.
    pub created_at: Option<Instant>,
}

pub(crate) struct Sender {
    store: Store,
    client: IterableClient,
    config: Arc<Config>,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    caps: Arc<BatchCaps>,
    dropped_fields: DroppedFields,
    project_type: ProjectType,
}

/// The fields Iterable dropped during a run (`filteredOutFields`: the project does not accept new fields).
pub(crate) type DroppedFields = Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>;

/// Batches in flight, at most `limit`; remembers the first failure.
///
/// Each batch runs as its own task, so requests, their answers and the recording of acknowledged batches go on
/// (on other cores) while the run reads and encodes the next batches. Dropping the window without draining it
/// aborts the batches still in flight, as dropping their futures did.
struct Window {
    inflight: FuturesUnordered<JoinHandle<Result<(), SyncError>>>,
    limit: usize,
    error: Option<SyncError>,
}

impl Window {
    fn new(limit: usize) -> Window {
        Window { inflight: FuturesUnordered::new(), limit: limit.max(1), error: None }
    }

    async fn push(&mut self, batch: BoxFuture<'static, Result<(), SyncError>>) {
        while self.inflight.len() >= self.limit {
            self.settle_one().await;
        }
        self.inflight.push(tokio::spawn(batch));
    }

    async fn settle_one(&mut self) {
        let error = match self.inflight.next().await {
            Some(Ok(Err(e))) => e,
            Some(Err(joined)) if joined.is_panic() => std::panic::resume_unwind(joined.into_panic()),
            // Only a runtime shutting down cancels a batch task.
            Some(Err(_)) => SyncError::Interrupted,
            Some(Ok(Ok(()))) | None => return,
        };
        tracing::debug!(error = %error, "Batch failed.");
        self.error.get_or_insert(error);
    }

    fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Lets every batch in flight finish (and be recorded), then reports the first failure.
    async fn drain(mut self) -> Result<(), SyncError> {
        while !self.inflight.is_empty() {
            self.settle_one().await;
        }
        self.error.take().map_or(Ok(()), Err)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        for batch in self.inflight.iter() {
            batch.abort();
        }
    }
}

impl Sender {
    pub fn new(
        store: Store,
        client: IterableClient,
        config: Arc<Config>,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> Sender {
        let caps = Arc::new(BatchCaps::new(config.iterable.batch_size, config.iterable.max_body_bytes));
        Sender {
            store,
            client,
            config,
            progress,
            cancel,
            caps,
            dropped_fields: Default::default(),
            project_type: ProjectType::Email,
        }
    }

    /// Members are named as the connection's kind of project names users (lists are read by user id where user
    /// ids identify).
    pub fn for_project(mut self, project_type: ProjectType) -> Sender {
        self.project_type = project_type;
        self
    }

    /// Collects the fields Iterable drops into `dropped`, for the run to report.
    pub fn reporting_dropped_fields(mut self, dropped: DroppedFields) -> Sender {
        self.dropped_fields = dropped;
        self
    }

    /// Finds each target's list: by its stored id, else by exact name, else by creating it. A stored id that no
    /// longer exists is recreated and all members are sent again.
    ///
    /// Lists are read and created under the connection's list lock, so two runs never both create one list. A list
    /// found by name (adopted, not created by this export) has its members read first and recorded as
    /// pre-existing: this export never unsubscribes them.
    pub async fn resolve_lists(
        &self,
        export: &Export,
        connection_id: i64,
        run_id: i64,
    ) -> Result<Vec<ResolvedList>, SyncError> {
        let _lock = match ListLock::acquire_for(&self.store, &self.config.store.lock_dir(), connection_id, &self.cancel)
            .await
        {
            Ok(lock) => lock,
            Err(ListLockError::Cancelled) => return Err(SyncError::Interrupted),
            Err(e) => return Err(e.into()),
        };
        // Read after taking the lock: a list another run created meanwhile is found, not created again.
        let lists = self.client.lists().await.map_err(|error| match error {
            IterableError::Cancelled { .. } => SyncError::Interrupted,
            error => SyncError::IterableSetup(error),
        })?;
        // Only Standard lists are static lists this export can fill. Before anything changes: a target that would
        // adopt a list of another kind, for want of a Standard one of its name, fails the run.
        let standard = |l: &&ListDetails| l.list_type.as_deref().is_none_or(|t| t == "Standard");
        for target in export.targets.iter().filter(|t| t.list_id.is_none_or(|id| !lists.iter().any(|l| l.id == id))) {
            let named: Vec<&ListDetails> = lists.iter().filter(|l| l.name == target.list_name).collect();
            if let Some(other) = named.iter().filter(|l| !standard(l)).min_by_key(|l| l.id) {
                if !named.iter().any(standard) {
                    return Err(SyncError::ListNotStandard {
                        list: target.list_name.clone(),
                        list_id: other.id,
                        list_type: other.list_type.clone().unwrap_or_default(),
                    });
                }
                let warning = format!(
                    "list '{}': Iterable also has a {} list of that name (id {}); it is left alone and the Standard \
                     list is used. Rename one of them in Iterable to tell them apart.",
                    target.list_name,
                    other.list_type.as_deref().unwrap_or_default(),
                    other.id
                );
                tracing::warn!(list = %target.list_name, other_list_id = other.id, "{warning}");
                self.store.record_run_warning(run_id, &warning).await?;
            }
        }
        let mut out = Vec::new();
        for target in &export.targets {
            let iterable = |error| iterable_error(target.list_name.clone(), error);
            let same_name_ids: Vec<i64> = lists.iter().filter(|l| l.name == target.list_name).map(|l| l.id).collect();
            let resolved = match target.list_id {
                Some(id) if lists.iter().any(|l| l.id == id) => {
                    self.store.mark_list_seen(target.id).await?;
                    ResolvedList { list_id: id, recreated: false, adopted: false, created_at: None }
                }
                Some(old) => {
                    let new = self.client.create_list(&target.list_name, &same_name_ids).await.map_err(iterable)?;
                    tracing::warn!(export = %export.name, list = %target.list_name, old_list_id = old, new_list_id = new,
                        "The list no longer exists in Iterable; recreated it and sending all members again.");
                    self.store.forget_preexisting(target.id).await?;
                    self.store.set_target_list(target.id, new, true).await?;
                    ResolvedList { list_id: new, recreated: true, adopted: false, created_at: Some(Instant::now()) }
                }
                None => {
                    let mut same_name: Vec<_> =
                        lists.iter().filter(|l| l.name == target.list_name).filter(standard).collect();
                    same_name.sort_by_key(|l| l.id);
                    if let Some(found) = same_name.first() {
                        if same_name.len() > 1 {
                            tracing::warn!(list = %target.list_name, list_id = found.id, count = same_name.len(),
                                "Several Iterable lists have this name; using the oldest. Its id is stored, so later runs use it.");
                        }
                        let adopted = self.record_preexisting(target, found.id).await?;
                        self.store.set_target_list(target.id, found.id, false).await?;
                        ResolvedList { list_id: found.id, recreated: false, adopted, created_at: None }
                    } else {
                        let id = self.client.create_list(&target.list_name, &same_name_ids).await.map_err(iterable)?;
                        tracing::info!(export = %export.name, list = %target.list_name, list_id = id, "Created the Iterable list.");
                        self.store.set_target_list(target.id, id, false).await?;
                        ResolvedList { list_id: id, recreated: false, adopted: false, created_at: Some(Instant::now()) }
                    }
                }
            };
            self.store.record_run_list(run_id, target.id, resolved.list_id).await?;
            out.push(resolved);
        }
        Ok(out)
    }

    /// Reads the members of a list this export adopts and records them as pre-existing, as they arrive (a list of
    /// millions is never held in memory); answers whether it held any. Done before the list's id is stored, so a
    /// run that fails here reads them again next time.
    async fn record_preexisting(&self, target: &Target, list_id: i64) -> Result<bool, SyncError> {
        let prefer_user_id = self.project_type != ProjectType::Email;
        let iterable = |e| iterable_error(target.list_name.clone(), e);
        let mut reader =
            self.client.list_users(list_id, prefer_user_id, self.config.iterable.timeout).await.map_err(iterable)?;
        let mut held = 0usize;
        while let Some(lines) = reader.next_lines(LIST_READ_CHUNK).await.map_err(iterable)? {
            held += lines.len();
            let members: Vec<String> =
                lines.iter().flat_map(|line| super::identity::keys_of_listed_user(self.project_type, line)).collect();
            self.store.record_preexisting(target.id, &members).await?;
        }
        if held > 0 {
            tracing::info!(list = %target.list_name, list_id, members = held,
                "Adopted an existing list; its members stay on it whatever the segment does.");
        }
        Ok(held > 0)
    }

    /// Sends one target's planned adds, then its removes.
    pub async fn send_target(
        &self,
        session: &mut PlanSession,
        t: &TargetRun<'_>,
        on_leave: OnLeave,
    ) -> Result<(), SyncError> {
        self.send_adds(session, t).await?;
        if on_leave == OnLeave::Remove {
            self.send_removes(session, t).await?;
        }
        if self.cancel.is_cancelled() {
            return Err(SyncError::Interrupted);
        }
        Ok(())
    }

    async fn send_adds(&self, session: &mut PlanSession, t: &TargetRun<'_>) -> Result<(), SyncError> {
        let cfg = &self.config.iterable;
        let mut window = Window::new(cfg.concurrency);
        let mut after = 0;
        let mut batch = AddBatch::default();
        let mut oversize = Vec::new();
        'read: loop {
            let chunk = session.adds(t.target.id, after, cfg.batch_size * 2).await?;
            let Some(last) = chunk.last() else { break };
            after = last.seq;
            let (max_members, max_bytes) = self.caps.get();
            for add in chunk {
                if self.cancel.is_cancelled() || window.failed() {
                    break 'read;
                }
                let fragment = encode_subscriber(&add.email, add.paired_email.as_deref(), &add.fields);
                if fragment.len() + BODY_OVERHEAD > cfg.max_body_bytes {
                    oversize.push((AckedMember::from(add), fragment.len()));
                    continue;
                }
                if batch.len() > 0
                    && (batch.len() >= max_members || batch.bytes + fragment.len() + 1 + BODY_OVERHEAD > max_bytes)
                {
                    window.push(self.subscribe_batch(t, std::mem::take(&mut batch))).await;
                }
                batch.push(AckedMember::from(add), fragment);
            }
        }
        if batch.len() > 0 && !self.cancel.is_cancelled() && !window.failed() {
            window.push(self.subscribe_batch(t, batch)).await;
        }
        if !oversize.is_empty() {
            self.reject_oversize(t, oversize).await?;
        }
        window.drain().await
    }

    /// Members that alone make a body larger than `iterable.max_body_bytes` are not sent: they count as rejected
    /// ("too large"), and are tried again like other rejected members.
    async fn reject_oversize(&self, t: &TargetRun<'_>, oversize: Vec<(AckedMember, usize)>) -> Result<(), SyncError> {
        let limit = self.config.iterable.max_body_bytes;
        let issues: Vec<_> = oversize
            .iter()
            .map(|(m, bytes)| {
                let reason = format!(
                    "too large: its data makes a {} byte request, more than iterable.max_body_bytes ({limit})",
                    bytes + BODY_OVERHEAD
                );
                (Some(m.email.clone()), reason)
            })
            .collect();
        let members: Vec<AckedMember> = oversize.into_iter().map(|(m, _)| m).collect();
        self.store.ack_subscribed(t.run_id, t.target.id, &[], &members, &[]).await?;
        self.store.record_issues(t.run_id, t.target.id, IssueKind::Rejected, &issues).await?;
        self.progress.add_done(members.len() as u64);
        tracing::warn!(list = %t.target.list_name, rejected = members.len(), limit,
            "Members too large to send were not sent; they count as rejected (see `runs show --rejected`).");
        Ok(())
    }

    async fn send_removes(&self, session: &mut PlanSession, t: &TargetRun<'_>) -> Result<(), SyncError> {
        let cfg = &self.config.iterable;
        let mut window = Window::new(cfg.concurrency);
        let mut after = 0;
        // An unsubscriber is `{"email":"…"}` or `{"userId":"…"}`: far below the body cap at any batch size we allow.
        loop {
            if self.cancel.is_cancelled() || window.failed() {
                break;
            }
            let chunk = session.removes(t.target.id, after, cfg.batch_size).await?;
            let Some((last, _)) = chunk.last() else { break };
            after = *last;
            let emails: Vec<String> = chunk.into_iter().map(|(_, e)| e).collect();
            window.push(self.unsubscribe_batch(t, emails)).await;
        }
        window.drain().await
    }

    fn subscribe_batch(&self, t: &TargetRun<'_>, batch: AddBatch) -> BoxFuture<'static, Result<(), SyncError>> {
        let ctx = BatchContext {
            client: self.client.clone(),
            store: self.store.clone(),
            progress: self.progress.clone(),
            cancel: self.cancel.clone(),
            caps: self.caps.clone(),
            dropped_fields: self.dropped_fields.clone(),
            run_id: t.run_id,
            target_id: t.target.id,
            list_id: t.list_id,
            list: t.target.list_name.clone(),
            existing_users_only: t.existing_users_only,
            grace_until: t.created_at.map(|at| at + self.config.iterable.new_list_grace),
        };
        Box::pin(async move {
            // A batch Iterable refuses as a whole (a field type one member gets wrong, a body too large) is sent
            // again in halves, until the members it refuses are alone: they are rejected, the others go through.
            // Only a batch as the run made it shrinks later ones: its halves are tried anyway, and one member too
            // large even alone says nothing about the others.
            let mut pending = vec![(batch, true)];
            while let Some((batch, as_made)) = pending.pop() {
                match ctx.subscribe(&batch).await {
                    Ok(response) => ctx.record(batch, response).await?,
                    Err(IterableError::BatchRefused { code, msg, too_large, .. }) => {
                        if too_large && as_made && batch.len() > 1 {
                            ctx.caps.shrink(&ctx.list, batch.len(), batch.bytes);
                        }
                        if batch.len() == 1 {
                            ctx.reject_alone(batch, &code, &msg).await?;
                        } else {
                            tracing::debug!(list = %ctx.list, members = batch.len(), code = %code,
                                "Iterable refused a batch as a whole; sending it in halves.");
                            let (first, second) = batch.split();
                            pending.push((second, false));
                            pending.push((first, false));
                        }
                    }
                    Err(error) => return Err(iterable_error(ctx.list.clone(), error)),
                }
            }
            Ok(())
        })
    }

    fn unsubscribe_batch(&self, t: &TargetRun<'_>, emails: Vec<String>) -> BoxFuture<'static, Result<(), SyncError>> {
        let (client, store, progress) = (self.client.clone(), self.store.clone(), self.progress.clone());
        let (run_id, target_id, list_id, list) = (t.run_id, t.target.id, t.list_id, t.target.list_name.clone());
        Box::pin(async move {
            let response =
                client.unsubscribe(list_id, &emails).await.map_err(|error| iterable_error(list.clone(), error))?;
            // notFound means the member is already off the list; other failures (e.g. GDPR-forgotten users) are
            // recorded, and the member is no longer ours to track either way.
            let failed = response.failed_updates.categorised(true);
            if !failed.is_empty() {
                let issues: Vec<_> = failed
                    .iter()
                    .map(|(e, cat)| (Some(e.clone()), format!("Iterable refused the unsubscribe: {cat}")))
                    .collect();
                store.record_issues(run_id, target_id, IssueKind::Rejected, &issues).await?;
            }
            store.ack_unsubscribed(run_id, target_id, &emails).await?;
            progress.add_done(emails.len() as u64);
            Ok(())
        })
    }
}

/// A failed call for `list` as the run's error; a call cut short because the run was asked to stop is an
/// interruption, not a failure.
fn iterable_error(list: String, error: IterableError) -> SyncError {
    match error {
        IterableError::Cancelled { .. } => SyncError::Interrupted,
        error => SyncError::Iterable { list, error },
    }
}

/// What one batch task needs, cloned out of the `Sender` so the task owns it.
struct BatchContext {
    client: IterableClient,
    store: Store,
    progress: Arc<Progress>,
    cancel: CancellationToken,
    caps: Arc<BatchCaps>,
    dropped_fields: DroppedFields,
    run_id: i64,
    target_id: i64,
    list_id: i64,
    list: String,
    existing_users_only: bool,
    /// Until then, a new list answering `invalidListId` is waited for rather than a failure.
    grace_until: Option<Instant>,
}

impl BatchContext {
    async fn subscribe(&self, batch: &AddBatch) -> Result<BulkResponse, IterableError> {
        let mut wait = Duration::from_secs(2);
        let members = &batch.members;
        // Iterable names a failed member by its email or its user id; a member named by user id may be named by the
        // email sent beside it.
        let in_batch = |key: &str| members.iter().any(|m| m.email == key || m.paired_email.as_deref() == Some(key));
        loop {
            match self.client.subscribe(self.list_id, &batch.fragments, self.existing_users_only, in_batch).await {
                Err(IterableError::InvalidListId { .. })
                    if self.grace_until.is_some_and(|g| Instant::now() + wait < g) =>
                {
                    tracing::debug!(list = %self.list, list_id = self.list_id, "New list not usable yet; retrying.");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.cancel.cancelled() => {
                            return Err(IterableError::Cancelled { endpoint: "/api/lists/subscribe".into() });
                        }
                    }
                    wait = (wait * 2).min(Duration::from_secs(20));
                }
                other => return other,
            }
        }
    }

    /// Records an answered batch: who is on the list now, who Iterable refused and why.
    async fn record(&self, batch: AddBatch, response: BulkResponse) -> Result<(), SyncError> {
        let (run_id, target_id) = (self.run_id, self.target_id);
        if !response.filtered_out_fields.is_empty() {
            self.dropped_fields
                .lock()
                .expect("dropped fields lock")
                .extend(response.filtered_out_fields.iter().cloned());
        }
        let mut failed: HashMap<String, &'static str> =
            response.failed_updates.categorised(false).into_iter().collect();
        for e in &response.invalid_emails {
            failed.entry(e.trim().to_lowercase()).or_insert("invalidEmails");
        }
        for id in &response.invalid_user_ids {
            failed.entry(user_id_key(id)).or_insert("invalidUserIds");
        }
        let failure = |m: &AckedMember| {
            failed.get(&m.email).or_else(|| m.paired_email.as_ref().and_then(|e| failed.get(e))).copied()
        };
        let n = batch.members.len() as u64;
        let (refused, subscribed): (Vec<_>, Vec<_>) = batch.members.into_iter().partition(|m| failure(m).is_some());
        let (forgotten, rejected): (Vec<_>, Vec<_>) =
            refused.into_iter().partition(|m| failure(m).is_some_and(is_forgotten));
        self.store.ack_subscribed(run_id, target_id, &subscribed, &rejected, &forgotten).await?;
        if !rejected.is_empty() || !forgotten.is_empty() {
            let issues: Vec<_> = rejected
                .iter()
                .chain(&forgotten)
                .map(|m| (Some(m.email.clone()), format!("Iterable rejected it: {}", failure(m).unwrap_or_default())))
                .collect();
            self.store.record_issues(run_id, target_id, IssueKind::Rejected, &issues).await?;
            tracing::info!(list = %self.list, rejected = issues.len(), "Iterable rejected some members; see `runs show --rejected`.");
        }
        self.progress.add_done(n);
        Ok(())
    }

    /// Records a member whose subscribe Iterable refused as a whole request even alone: rejected with Iterable's
    /// code and message, and tried again like other rejected members.
    async fn reject_alone(&self, batch: AddBatch, code: &str, msg: &str) -> Result<(), SyncError> {
        let issues: Vec<_> = batch
            .members
            .iter()
            .map(|m| (Some(m.email.clone()), format!("Iterable rejected it: {code}: {msg}")))
            .collect();
        self.store.ack_subscribed(self.run_id, self.target_id, &[], &batch.members, &[]).await?;
        self.store.record_issues(self.run_id, self.target_id, IssueKind::Rejected, &issues).await?;
        tracing::info!(list = %self.list, code, "Iterable refused a member's subscribe as a whole; it counts as rejected (see `runs show --rejected`).");
        self.progress.add_done(batch.members.len() as u64);
        Ok(())
    }
}

/// The largest batch (members and body bytes) the run still sends: the configured sizes until Iterable refuses a
/// batch as too large, then below the refused one's, for the rest of the run.
pub(crate) struct BatchCaps {
    members: AtomicUsize,
    bytes: AtomicUsize,
}

impl BatchCaps {
    pub(crate) fn new(members: usize, bytes: usize) -> BatchCaps {
        BatchCaps { members: AtomicUsize::new(members.max(1)), bytes: AtomicUsize::new(bytes) }
    }

    /// (members, body bytes) a batch may hold now.
    fn get(&self) -> (usize, usize) {
        (self.members.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }

    /// Iterable found a batch of `members` and `bytes` (its subscribers) too large: later batches stay at half.
    fn shrink(&self, list: &str, members: usize, bytes: usize) {
        let members = (members / 2).max(1);
        let bytes = (bytes / 2).max(1) + BODY_OVERHEAD;
        let before = self.members.fetch_min(members, Ordering::Relaxed);
        self.bytes.fetch_min(bytes, Ordering::Relaxed);
        if members < before {
            tracing::warn!(
                list,
                members,
                bytes,
                "Iterable refused a batch as too large; the rest of the run sends smaller ones."
            );
        }
    }
}

#[derive(Default)]
struct AddBatch {
    members: Vec<AckedMember>,
    fragments: Vec<Vec<u8>>,
    bytes: usize,
}

impl AddBatch {
    fn len(&self) -> usize {
        self.members.len()
    }

    fn push(&mut self, member: AckedMember, fragment: Vec<u8>) {
        self.bytes += fragment.len() + 1;
        self.members.push(member);
        self.fragments.push(fragment);
    }

    /// The first half and the rest, each with its own byte count.
    fn split(mut self) -> (AddBatch, AddBatch) {
        let half = self.members.len() / 2;
        let members = self.members.split_off(half);
        let fragments = self.fragments.split_off(half);
        let bytes = fragments.iter().map(|f| f.len() + 1).sum();
        let second = AddBatch { members, fragments, bytes };
        self.bytes -= bytes;
        (self, second)
    }
}

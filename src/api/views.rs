//! What the API answers with: one type per response body, each listed in the OpenAPI document. Fields that only
//! administrators may see are `Option`s left out of the JSON for everyone else; no type here has a field for an
//! API key, a token, a password, a source URL's password or an internal connection id, so none can leak by
//! accident. Handlers build these from store types; nothing here reads the store.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::{AuditEntry, Connection, Export, Issue, Run, RunStatus, SegmentOrigin};

/// Every error: `{"error": {"kind", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorDetail {
    /// A short stable word: unauthorized, not_found, forbidden, conflict, running, invalid_input, source, iterable,
    /// too_many_attempts, unavailable, failed, internal.
    pub kind: String,
    /// What went wrong and what to do; it never names what the caller may not see.
    pub message: String,
}

/// The caller.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Me {
    pub name: String,
    /// `admin` or `contributor`.
    pub role: String,
}

/// A web console session: who, and the token its changes must carry in `X-CSRF-Token`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionView {
    pub user: Me,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
    /// The session ends after this long unused.
    pub idle_timeout_seconds: u64,
}

/// A connection to an Iterable project. Its key is never shown; administrators see where it comes from.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionView {
    pub name: String,
    /// `us` or `eu`; null with a custom base URL.
    pub region: Option<String>,
    /// `email`, `userid` or `hybrid`.
    pub project_type: String,
    /// `admins` or `contributors`.
    pub usable_by: String,
    pub privacy_accepted_at: DateTime<Utc>,
    pub privacy_accepted_by: String,
    pub verified_at: Option<DateTime<Utc>>,
    /// The account on whose behalf its scheduled runs go.
    pub export_user: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Administrators only: the Iterable API address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Administrators only: where the key comes from (never the key), in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// Administrators only: `stored` (encrypted in the store), `env` (an environment variable read at each use) or
    /// `file` (a file read at each use).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_source: Option<String>,
    /// Administrators only: the key's last 4 characters, for a key stored encrypted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_last4: Option<String>,
    /// Administrators only: why scheduled runs on it would be refused, if they would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_user_problem: Option<String>,
}

/// What only administrators see of a connection.
pub struct ConnectionAdminFacts {
    /// Why its scheduled runs would be refused, if they would.
    pub export_user_problem: Option<String>,
}

impl ConnectionView {
    /// The connection as `admin` (None for contributors) lets it be seen.
    pub fn new(conn: &Connection, export_user: Option<String>, admin: Option<ConnectionAdminFacts>) -> ConnectionView {
        let mut view = ConnectionView {
            name: conn.name.clone(),
            region: conn.region.clone(),
            project_type: conn.project_type.as_str().to_string(),
            usable_by: conn.usable_by.clone(),
            privacy_accepted_at: conn.privacy_accepted_at,
            privacy_accepted_by: conn.privacy_accepted_by.clone(),
            verified_at: conn.verified_at,
            export_user,
            created_at: conn.created_at,
            base_url: None,
            api_key: None,
            api_key_source: None,
            api_key_last4: None,
            export_user_problem: None,
        };
        if let Some(facts) = admin {
            view.base_url = Some(conn.base_url.clone());
            view.api_key = Some(conn.key.describe());
            view.api_key_source = Some(conn.key.kind().to_string());
            view.api_key_last4 = conn.key_last4.clone();
            view.export_user_problem = facts.export_user_problem;
        }
        view
    }
}

/// What Iterable said of a key (the "Connect" step alone); nothing is saved.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCheck {
    /// The key reads lists (`GET /api/lists` answered): what the check can find out without writing. Whether the
    /// key may write them (a read-only key may not) shows at the first run, which fails at its first refused write.
    pub ok: bool,
    pub base_url: String,
    /// Lists in the project, when the key works.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lists: Option<usize>,
    /// Iterable refused the key itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bad_key: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRemoved {
    pub removed: String,
    /// The exports that used it.
    pub exports: Vec<String>,
    /// Whether they were removed (else detached: kept, disabled).
    pub exports_removed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportUserView {
    pub connection: String,
    /// Null once the export user stepped down: scheduled runs then refuse until an administrator adds themselves.
    pub export_user: Option<String>,
}

/// A column sent as an Iterable field.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldView {
    pub column: String,
    pub iterable_field: String,
    /// The type asked for (string, long, double, boolean, date); null lets the values decide.
    pub field_type: Option<String>,
}

/// A segment of an export and the Iterable list that mirrors it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListView {
    pub segment: String,
    pub list_name: String,
    /// Iterable's id of the list, once a run found or created it.
    pub list_id: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunSummary {
    pub id: i64,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Members subscribed over all lists, by what that did to the list: new on it (`added`), put there by this
    /// export before and sent again for a changed field or a full re-send (`updated`), or on it when the export
    /// adopted it (`already_on_list`).
    pub added: u64,
    pub updated: u64,
    pub already_on_list: u64,
    /// Members unsubscribed over all lists.
    pub removed: u64,
    /// Members not sent (invalid) or refused by Iterable (rejected).
    pub not_sent: u64,
}

impl RunSummary {
    fn new(r: &Run) -> RunSummary {
        let sum = |f: fn(&crate::store::RunTargetCounts) -> u64| r.targets.iter().map(|t| f(&t.counts)).sum();
        RunSummary {
            id: r.id,
            status: r.status.to_string(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            added: sum(|c| c.added),
            updated: sum(|c| c.updated),
            already_on_list: sum(|c| c.already_on_list),
            removed: sum(|c| c.removed),
            not_sent: sum(|c| c.invalid + c.rejected),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportView {
    pub name: String,
    /// The connection's name; null once it was removed and the export detached.
    pub connection: Option<String>,
    /// The email column; null where a user id alone identifies members.
    pub email_field: Option<String>,
    /// The user id column (userID-based and hybrid projects).
    pub user_id_field: Option<String>,
    /// `remove` or `keep`.
    pub on_leave: String,
    /// `clear` or `skip`.
    pub null_fields: String,
    pub existing_users_only: bool,
    /// `refresh`, `off` or a cron expression with seconds.
    pub schedule: String,
    pub enabled: bool,
    pub fields: Vec<FieldView>,
    pub lists: Vec<ListView>,
    /// Its export users: the accounts that may see, edit, run and remove it.
    pub users: Vec<String>,
    pub last_run: Option<RunSummary>,
    /// When the daemon's schedule runs it next; null when it is not scheduled (or the daemon has not planned it).
    pub next_run: Option<DateTime<Utc>>,
    /// The run in flight in this service, whose progress `GET /runs/{id}` answers.
    pub running_run_id: Option<i64>,
    /// The notification channels it tells, and of what (those open to the caller).
    pub notify: Vec<SubscriptionView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An export's subscription to a notification channel.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionView {
    pub channel: String,
    pub events: Vec<crate::store::EventKind>,
}

impl ExportView {
    pub fn new(export: &Export, users: Vec<String>, last_run: Option<&Run>) -> ExportView {
        ExportView {
            name: export.name.clone(),
            connection: export.connection_name.clone(),
            email_field: export.email_field.clone(),
            user_id_field: export.user_id_field.clone(),
            on_leave: export.on_leave.as_str().to_string(),
            null_fields: export.null_fields.as_str().to_string(),
            existing_users_only: export.existing_users_only,
            schedule: export.schedule.clone(),
            enabled: export.enabled,
            fields: export
                .fields
                .iter()
                .map(|f| FieldView {
                    column: f.column.clone(),
                    iterable_field: f.iterable_field.clone(),
                    field_type: f.field_type.map(|t| t.as_str().to_string()),
                })
                .collect(),
            lists: export
                .targets
                .iter()
                .map(|t| ListView {
                    segment: t.segment_name.clone(),
                    list_name: t.list_name.clone(),
                    list_id: t.list_id,
                })
                .collect(),
            users,
            last_run: last_run.map(RunSummary::new),
            next_run: None,
            running_run_id: None,
            notify: vec![],
            created_at: export.created_at,
            updated_at: export.updated_at,
        }
    }
}

/// What emptying did to one list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptiedView {
    pub list_name: String,
    pub list_id: Option<i64>,
    pub unsubscribed: u64,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportRemoved {
    pub removed: String,
    /// Lists emptied first (with `?empty_lists=true`).
    pub emptied: Vec<EmptiedView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportEdited {
    pub export: ExportView,
    /// Lists of removed segments emptied first (with `empty_removed_lists`).
    pub emptied: Vec<EmptiedView>,
}

/// What became of a run request, when the API answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunRequestState {
    /// A run took it (`run_id` names it once its row exists).
    Started,
    /// The export is running: this is its one follow-up run (later requests merge into it).
    QueuedAfterCurrentRun,
    /// Every slot (`daemon.max_concurrent_runs`) is busy.
    WaitingForAFreeSlot,
    /// A process that is not a daemon (an `export run`) runs the export.
    QueuedAfterAnotherProcess,
    /// Queued, and no daemon has taken it yet (none is running, or it is stopping): it runs when one does.
    Queued,
}

/// A run asked for: started, or queued.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunAccepted {
    pub export: String,
    pub state: RunRequestState,
    /// The request, which later requests for the same export may merge into.
    pub request_id: i64,
    /// The run's id once it started (follow it at /api/v1/runs/{id}).
    pub run_id: Option<i64>,
}

/// A member a plan found invalid: its email value as the source gave it, and why it is refused.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvalidView {
    pub member: Option<String>,
    pub reason: String,
}

/// What a run would do to one list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanListView {
    pub list_name: String,
    pub list_id: Option<i64>,
    pub source_rows: u64,
    pub members: u64,
    /// Members to subscribe that are not on the list as far as the store knows (a list not adopted yet may hold
    /// some of them: the run then counts those as already on the list).
    pub to_add: u64,
    /// Members to subscribe again that are on the list already: a field changed, a full re-send, or on it when the
    /// export adopted it.
    pub to_update: u64,
    pub to_remove: u64,
    pub unchanged: u64,
    pub invalid: u64,
    pub duplicates: u64,
    /// A few members of each kind (`examples_add`: members to subscribe, new or not).
    pub examples_add: Vec<String>,
    pub examples_remove: Vec<String>,
    pub examples_invalid: Vec<InvalidView>,
}

/// A dry run's answer: the plan, nothing changed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanView {
    pub export: String,
    /// `succeeded`, `refused` (a guard would stop the run) or `failed`.
    pub status: String,
    pub error: Option<String>,
    /// The guard that would stop the run, if one would.
    pub stopped_by_guard: Option<crate::sync::Guard>,
    /// `stopped_by_guard` is `mass_removal` (kept for clients written before the addition guard).
    pub stopped_by_mass_removal_guard: bool,
    pub lists: Vec<PlanListView>,
}

/// The guard that stopped a run (or would stop it), read from its status and recorded error.
fn guard_stop(status: RunStatus, error: Option<&str>) -> Option<crate::sync::Guard> {
    (status == RunStatus::Refused).then(|| crate::sync::stopped_by_guard(error)).flatten()
}

impl PlanView {
    pub fn new(report: crate::sync::RunReport) -> PlanView {
        PlanView {
            export: report.export,
            status: report.status.to_string(),
            stopped_by_guard: guard_stop(report.status, report.error.as_deref()),
            stopped_by_mass_removal_guard: guard_stop(report.status, report.error.as_deref())
                == Some(crate::sync::Guard::MassRemoval),
            error: report.error,
            lists: report
                .lists
                .into_iter()
                .map(|l| PlanListView {
                    list_name: l.list_name,
                    list_id: l.list_id,
                    source_rows: l.source_rows,
                    members: l.members,
                    to_add: l.to_add,
                    to_update: l.to_update,
                    to_remove: l.to_remove,
                    unchanged: l.unchanged,
                    invalid: l.invalid,
                    duplicates: l.duplicates,
                    examples_add: l.examples_add,
                    examples_remove: l.examples_remove,
                    examples_invalid: l
                        .examples_invalid
                        .into_iter()
                        .map(|e| InvalidView { member: e.member, reason: e.reason })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// One list of a run: what it planned and what it did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunListView {
    pub list_name: String,
    pub list_id: Option<i64>,
    pub source_rows: u64,
    /// Subscribes planned of members new on the list.
    pub planned_add: u64,
    /// Subscribes planned of members on the list already (updated, or on it when the export adopted it).
    pub planned_update: u64,
    pub planned_remove: u64,
    pub unchanged: u64,
    pub invalid: u64,
    pub duplicates: u64,
    /// Members new on the list.
    pub added: u64,
    /// Members this export had put on the list, sent again because a field changed or for a full re-send.
    pub updated: u64,
    /// Members that were on the list when the export adopted it, sent for their fields.
    pub already_on_list: u64,
    pub removed: u64,
    pub rejected: u64,
}

/// Live progress of a run in flight.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressView {
    /// `reading`, `resolving`, `sending` or `done`.
    pub phase: String,
    /// The list being worked on.
    pub list: String,
    pub done: u64,
    pub planned: u64,
    pub per_second: f64,
    pub seconds_left: Option<f64>,
}

/// A member a run did not send (`invalid`) or that Iterable refused (`rejected`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueView {
    pub list_name: String,
    /// `invalid` or `rejected`.
    pub kind: String,
    pub member: Option<String>,
    pub reason: String,
}

impl From<Issue> for IssueView {
    fn from(i: Issue) -> IssueView {
        let kind = serde_json::to_value(i.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        IssueView { list_name: i.list_name, kind, member: i.member, reason: i.reason }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunView {
    pub id: i64,
    pub export: String,
    /// What started it: `api`, `cli`, `schedule`, `trigger`, ...
    pub trigger: String,
    /// `running`, `succeeded`, `failed`, `interrupted`, `refused` or `cancelled`.
    pub status: String,
    pub full_resync: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub note: Option<String>,
    pub lists: Vec<RunListView>,
    /// Members planned (adds and removes) over all lists, and done so far.
    pub planned: u64,
    pub done: u64,
    /// A guard stopped it before the list changed: an export user may ask for the run again with
    /// `allow_mass_removal` (the segments really shrank) or `allow_mass_addition` (they really grew).
    pub stopped_by_guard: Option<crate::sync::Guard>,
    /// `stopped_by_guard` is `mass_removal` (kept for clients written before the addition guard).
    pub stopped_by_mass_removal_guard: bool,
    /// While it runs in this service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressView>,
    /// GET /runs/{id} only (export users and administrators): members not sent or refused, up to 100.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_and_invalid: Option<Vec<IssueView>>,
    /// `run`, `verify` (lists read back from Iterable and compared) or `verify_repair` (a verify that repaired).
    pub kind: String,
    /// A verify's findings per list (GET /runs/{id} only, for export users and administrators).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<Vec<VerifyListView>>,
}

/// How many members a verify found in one category of a list, and up to 20 of them.
#[derive(Debug, Serialize, ToSchema)]
pub struct DriftCategoryView {
    pub count: u64,
    pub examples: Vec<String>,
}

/// What a verify found on one list: its verdict (`clean`, `drifted`, or `no_verdict` when the members read did
/// not add up to the list's size) and members missing, not yet sent, lingering, others' and settling.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyListView {
    pub list_name: String,
    pub list_id: Option<i64>,
    pub verdict: String,
    pub read_members: u64,
    pub list_size: Option<u64>,
    pub missing: DriftCategoryView,
    pub not_yet_sent: DriftCategoryView,
    pub lingering: DriftCategoryView,
    pub others: DriftCategoryView,
    pub settling: DriftCategoryView,
    pub note: Option<String>,
}

impl VerifyListView {
    pub fn new(l: &crate::store::ListVerify) -> VerifyListView {
        let c = |c: &crate::store::Category| DriftCategoryView { count: c.count, examples: c.examples.clone() };
        VerifyListView {
            list_name: l.list_name.clone(),
            list_id: l.list_id,
            verdict: serde_json::to_value(l.verdict)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            read_members: l.read_members,
            list_size: l.list_size,
            missing: c(&l.missing),
            not_yet_sent: c(&l.not_yet_sent),
            lingering: c(&l.lingering),
            others: c(&l.others),
            settling: c(&l.settling),
            note: l.note.clone(),
        }
    }
}

impl RunView {
    pub fn new(run: &Run) -> RunView {
        let (planned, done) = run.progress();
        RunView {
            id: run.id,
            export: run.export_name.clone(),
            trigger: run.trigger.clone(),
            status: run.status.to_string(),
            full_resync: run.full_resync,
            started_at: run.started_at,
            finished_at: run.finished_at,
            error: run.error.clone(),
            note: run.note.clone(),
            lists: run
                .targets
                .iter()
                .map(|t| RunListView {
                    list_name: t.list_name.clone(),
                    list_id: t.list_id,
                    source_rows: t.counts.source_rows,
                    planned_add: t.counts.planned_add,
                    planned_update: t.counts.planned_update,
                    planned_remove: t.counts.planned_remove,
                    unchanged: t.counts.unchanged,
                    invalid: t.counts.invalid,
                    duplicates: t.counts.duplicates,
                    added: t.counts.added,
                    updated: t.counts.updated,
                    already_on_list: t.counts.already_on_list,
                    removed: t.counts.removed,
                    rejected: t.counts.rejected,
                })
                .collect(),
            planned,
            done,
            stopped_by_guard: guard_stop(run.status, run.error.as_deref()),
            stopped_by_mass_removal_guard: guard_stop(run.status, run.error.as_deref())
                == Some(crate::sync::Guard::MassRemoval),
            progress: None,
            rejected_and_invalid: None,
            kind: run.kind.as_str().to_string(),
            verify: None,
        }
    }
}

/// A segment: its name for everyone (to pick it for an export); its source for administrators.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentView {
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// Members counted by the last run that read it (rows less invalid and duplicate ones); null before any.
    pub members: Option<u64>,
    /// When that was counted: the end of that run, or now with `?count=now`.
    pub counted_at: Option<DateTime<Utc>>,
    /// GET /segments/{name} only: its columns, read now (to pick the email column and the fields).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Why the columns or the count could not be read now (for contributors, without the source's name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// Administrators only: the source, with `***` where a database password goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Administrators only: the SQL query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Administrators only: where the database password comes from (`none`, or how it is kept; never the password).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Administrators only: how it was last saved, which decides what its source may read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved_from: Option<SavedFrom>,
}

/// How a segment was last saved. `http`: over this API, so its file is read only inside `[sources] allowed_dirs`,
/// never through a link, and its postgres URL names no file and no socket; `cli`: on the host, read as named.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SavedFrom {
    Http,
    Cli,
}

impl From<SegmentOrigin> for SavedFrom {
    fn from(origin: SegmentOrigin) -> Self {
        match origin {
            SegmentOrigin::Http => SavedFrom::Http,
            SegmentOrigin::Cli => SavedFrom::Cli,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentRemoved {
    pub removed: String,
}

/// One audit row: who changed what, when, from where.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditView {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub detail: Option<String>,
    /// `cli`, or `api` and the caller's address.
    pub origin: String,
    /// How many times it happened: 1, but for failed sign-ins, recorded once a minute per name and client.
    pub count: i64,
}

impl From<AuditEntry> for AuditView {
    fn from(a: AuditEntry) -> AuditView {
        AuditView {
            id: a.id,
            at: a.at,
            actor: a.actor,
            action: a.action,
            target: a.target,
            detail: a.detail,
            origin: a.origin,
            count: a.count,
        }
    }
}

/// An account. Its token and password are never shown; a new token is answered once, in `NewToken`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserView {
    pub name: String,
    /// `admin` or `contributor`.
    pub role: String,
    /// Whether it has a password to sign in to the web console with.
    pub has_password: bool,
    pub token_created_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl UserView {
    pub fn new(u: &crate::store::User) -> UserView {
        UserView {
            name: u.name.clone(),
            role: u.role.to_string(),
            has_password: u.has_password,
            token_created_at: u.token_created_at,
            created_at: u.created_at,
        }
    }
}

/// An account with its new API token, shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub user: UserView,
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRemoved {
    pub removed: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordSet {
    pub user: String,
    pub password_set: bool,
}

/// A web console session that has not ended. Its secret id is never shown: only this number, to end it by.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionListingView {
    pub id: i64,
    pub signed_in_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Where the sign-in came from, e.g. "api 203.0.113.9".
    pub origin: String,
    /// Whether it is the session this request came with.
    pub current: bool,
}

/// How many sessions a sign-out ended.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionsEnded {
    pub user: String,
    pub ended: u64,
}

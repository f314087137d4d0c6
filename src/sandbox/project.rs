//! The sandbox's one Iterable project held in memory: static lists with their members, users (email, userId and
//! profile `dataFields`) with the indexes its kind of project identifies them by, and the project's field-type
//! schema. Everything here is synchronous and runs under the caller's lock, so each operation is O(batch) and never
//! copies the whole state; HTTP, parsing and validation happen before the lock is taken (see `api`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::validation::FieldType;
use super::wire::{Identity, ListDetails, UserBulkUpdateListResponse};
use super::SandboxProjectType;

/// The sandbox's project id, reported in `invalidListId` and rate-limit answers.
pub(crate) const PROJECT_ID: i64 = 1;

/// Ids of created lists start here, so they look like real ids and never collide with small test numbers.
const FIRST_LIST_ID: i64 = 1000;

/// A user's place in `Project::users`.
type UserNo = u32;

/// A subscribe item that passed the syntax checks and is ready to apply: at least one of `email` (lowercased)
/// and `user_id`.
#[derive(Debug)]
pub(crate) struct SubscriberUpdate {
    pub email: Option<String>,
    pub user_id: Option<String>,
    /// Look the user id up before the email (hybrid projects).
    pub prefer_user_id: bool,
    pub data_fields: Option<Map<String, Value>>,
    pub merge_nested_objects: bool,
}

/// The list does not exist, or was created less than `list_propagation` ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ListUnavailable;

#[derive(Debug)]
struct List {
    name: String,
    description: Option<String>,
    created_at_ms: i64,
    /// `Standard` for lists made through `POST /api/lists`; others only through `/_sandbox/lists`.
    list_type: &'static str,
    /// Subscribe and unsubscribe answer `invalidListId` before this instant, imitating propagation delay.
    usable_from: Instant,
    members: BTreeSet<UserNo>,
    /// Changes of `members` younger than the project's `change_delay`, oldest first: (when, user, added). Kept only
    /// while a delay is set.
    changes: VecDeque<(Instant, UserNo, bool)>,
}

impl List {
    /// Notes a change of `members`, for `getUsers` to show only once `delay` has passed.
    fn note_change(&mut self, now: Instant, no: UserNo, added: bool, delay: Duration) {
        if delay.is_zero() {
            self.changes.clear();
            return;
        }
        while self.changes.front().is_some_and(|(at, ..)| now.saturating_duration_since(*at) > delay) {
            self.changes.pop_front();
        }
        self.changes.push_back((now, no, added));
    }

    /// The members as they look `delay` after the changes: changes younger than that are undone.
    fn members_seen(&self, now: Instant, delay: Duration) -> std::borrow::Cow<'_, BTreeSet<UserNo>> {
        let young = |at: &Instant| now.saturating_duration_since(*at) < delay;
        if delay.is_zero() || !self.changes.iter().any(|(at, ..)| young(at)) {
            return std::borrow::Cow::Borrowed(&self.members);
        }
        let mut seen = self.members.clone();
        for (_, no, added) in self.changes.iter().rev().filter(|(at, ..)| young(at)) {
            if *added {
                seen.remove(no);
            } else {
                seen.insert(*no);
            }
        }
        std::borrow::Cow::Owned(seen)
    }
}

#[derive(Debug, Default)]
struct User {
    email: Option<Arc<str>>,
    user_id: Option<Arc<str>>,
    fields: Map<String, Value>,
}

/// Where an update's user is, or why it names nobody.
enum Located {
    Known(UserNo),
    /// Nobody yet: subscribe creates the user (unless only existing users are updated).
    Unknown,
    /// The request's identifiers cannot find or make a user (an email alone in a userID-based project, a userId
    /// alone that an email-based project does not know).
    NotFound(Identity),
    /// The identifiers name two different users, or would give one user another's unique identifier.
    Conflict(Identity),
}

#[derive(Debug)]
pub(crate) struct Project {
    project_type: SandboxProjectType,
    next_list_id: i64,
    lists: BTreeMap<i64, List>,
    users: Vec<User>,
    /// Unique in email-based and hybrid projects; not kept in userID-based ones, where an email is an ordinary field.
    by_email: HashMap<Arc<str>, UserNo>,
    /// Unique in userID-based and hybrid projects; in email-based ones the last user given the id.
    by_user_id: HashMap<Arc<str>, UserNo>,
    field_types: HashMap<String, FieldType>,
    /// Off: fields the project has never seen are dropped and reported in `filteredOutFields`.
    pub(crate) accept_new_fields: bool,
    /// How long a change of a list's members takes to show in `getUsers` (the `get_users_delay_ms` fault).
    pub(crate) change_delay: Duration,
}

impl Default for Project {
    fn default() -> Self {
        Self::new(true, SandboxProjectType::Email)
    }
}

impl Project {
    pub(crate) fn new(accept_new_fields: bool, project_type: SandboxProjectType) -> Self {
        Self {
            project_type,
            next_list_id: FIRST_LIST_ID,
            lists: BTreeMap::new(),
            users: Vec::new(),
            by_email: HashMap::new(),
            by_user_id: HashMap::new(),
            field_types: HashMap::new(),
            accept_new_fields,
            change_delay: Duration::ZERO,
        }
    }

    /// Names are not unique: creating a list with an existing name makes a second list, which is what the
    /// exporter must be designed for.
    pub(crate) fn create_list(&mut self, name: String, description: Option<String>, usable_from: Instant) -> i64 {
        self.create_list_of_type(name, description, usable_from, "Standard")
    }

    /// A list of any of Iterable's types (`Standard`, `Dynamic`, `Suppression`, `Internal`), so tests can put one
    /// in an exporter's way.
    pub(crate) fn create_list_of_type(
        &mut self,
        name: String,
        description: Option<String>,
        usable_from: Instant,
        list_type: &'static str,
    ) -> i64 {
        let id = self.next_list_id;
        self.next_list_id += 1;
        let list = List {
            name,
            description,
            created_at_ms: chrono::Utc::now().timestamp_millis(),
            list_type,
            usable_from,
            members: BTreeSet::new(),
            changes: VecDeque::new(),
        };
        self.lists.insert(id, list);
        id
    }

    /// Returns whether the list existed. Users stay in the project; only the memberships go.
    pub(crate) fn delete_list(&mut self, list_id: i64) -> bool {
        self.lists.remove(&list_id).is_some()
    }

    pub(crate) fn list_details(&self) -> Vec<ListDetails> {
        self.lists
            .iter()
            .map(|(&id, list)| ListDetails {
                id,
                name: list.name.clone(),
                description: list.description.clone(),
                created_at: list.created_at_ms,
                list_type: list.list_type,
            })
            .collect()
    }

    /// How each member is named in `getUsers` (sorted), or `None` when the list does not exist: by email in an
    /// email-based project, by user id in a userID-based one; in a hybrid one by email, or with `prefer_user_id` by
    /// user id where the user has one (either way by whichever the user has).
    pub(crate) fn members(&self, list_id: i64, prefer_user_id: bool) -> Option<Vec<&str>> {
        self.members_seen(list_id, prefer_user_id, Instant::now(), Duration::ZERO)
    }

    /// As `members`, as they show `delay` after their changes: changes younger than that are not seen yet.
    pub(crate) fn members_seen(
        &self,
        list_id: i64,
        prefer_user_id: bool,
        now: Instant,
        delay: Duration,
    ) -> Option<Vec<&str>> {
        let list = self.lists.get(&list_id)?;
        let mut named: Vec<&str> = list
            .members_seen(now, delay)
            .iter()
            .map(|&no| {
                let user = &self.users[no as usize];
                let by_id = match self.project_type {
                    SandboxProjectType::Email => false,
                    SandboxProjectType::UserId => true,
                    SandboxProjectType::Hybrid => prefer_user_id,
                };
                let (first, second) = if by_id { (&user.user_id, &user.email) } else { (&user.email, &user.user_id) };
                first.as_deref().or(second.as_deref()).unwrap_or_default()
            })
            .collect();
        named.sort_unstable();
        Some(named)
    }

    /// Members as (userId, email) pairs, sorted.
    pub(crate) fn member_identities(&self, list_id: i64) -> Option<Vec<(Option<String>, Option<String>)>> {
        let list = self.lists.get(&list_id)?;
        let mut out: Vec<_> = list
            .members
            .iter()
            .map(|&no| {
                let user = &self.users[no as usize];
                (user.user_id.as_deref().map(str::to_owned), user.email.as_deref().map(str::to_owned))
            })
            .collect();
        out.sort();
        Some(out)
    }

    pub(crate) fn user_data_fields(&self, email: &str) -> Option<&Map<String, Value>> {
        let no = match self.project_type {
            // An email identifies nobody there; the first user with it is shown.
            SandboxProjectType::UserId => self.users.iter().position(|u| u.email.as_deref() == Some(email))? as UserNo,
            _ => *self.by_email.get(email)?,
        };
        Some(&self.users[no as usize].fields)
    }

    /// The user with this user id: its email and profile fields.
    pub(crate) fn user_by_user_id(&self, user_id: &str) -> Option<(Option<&str>, &Map<String, Value>)> {
        let user = &self.users[*self.by_user_id.get(user_id)? as usize];
        Some((user.email.as_deref(), &user.fields))
    }

    /// The identity a failure of this update is reported under: its user id where user ids identify users (or
    /// where it is all the update has), else its email.
    pub(crate) fn reported_identity(&self, update: &SubscriberUpdate) -> Identity {
        match (&update.email, &update.user_id) {
            (Some(email), Some(_)) if self.project_type == SandboxProjectType::Email => Identity::Email(email.clone()),
            (_, Some(user_id)) => Identity::UserId(user_id.clone()),
            (Some(email), None) => Identity::Email(email.clone()),
            (None, None) => Identity::Email(String::new()),
        }
    }

    /// Finds the user an update names, as this kind of project identifies users.
    fn locate(&self, email: Option<&str>, user_id: Option<&str>, prefer_user_id: bool) -> Located {
        let by_email = |e: &str| self.by_email.get(e).copied();
        let by_id = |u: &str| self.by_user_id.get(u).copied();
        match self.project_type {
            SandboxProjectType::Email => match (email, user_id) {
                (Some(e), _) => by_email(e).map_or(Located::Unknown, Located::Known),
                (None, Some(u)) => by_id(u).map_or(Located::NotFound(Identity::UserId(u.to_owned())), Located::Known),
                (None, None) => Located::NotFound(Identity::Email(String::new())),
            },
            SandboxProjectType::UserId => match (email, user_id) {
                (_, Some(u)) => by_id(u).map_or(Located::Unknown, Located::Known),
                (Some(e), None) => Located::NotFound(Identity::Email(e.to_owned())),
                (None, None) => Located::NotFound(Identity::Email(String::new())),
            },
            SandboxProjectType::Hybrid => {
                let (found_by_email, found_by_id) = (email.and_then(by_email), user_id.and_then(by_id));
                match (found_by_email, found_by_id) {
                    (Some(a), Some(b)) if a != b => {
                        // Two users: the one looked up first is updated, and cannot take the other's identifier.
                        if prefer_user_id {
                            Located::Conflict(Identity::Email(email.unwrap_or_default().to_owned()))
                        } else {
                            Located::Conflict(Identity::UserId(user_id.unwrap_or_default().to_owned()))
                        }
                    }
                    (Some(no), None) if user_id.is_some() && self.users[no as usize].user_id.is_some() => {
                        // The email's user has another user id.
                        Located::Conflict(Identity::UserId(user_id.unwrap_or_default().to_owned()))
                    }
                    (Some(no), _) | (None, Some(no)) => Located::Known(no),
                    (None, None) => Located::Unknown,
                }
            }
        }
    }

    /// Drops the updates that name nobody (reported not found), that conflict (reported as conflicts) or, with
    /// `existing_only` in a project that honours it, that name a user the project does not have yet (not found).
    pub(crate) fn admit(
        &self,
        updates: &mut Vec<SubscriberUpdate>,
        existing_only: bool,
        outcome: &mut UserBulkUpdateListResponse,
    ) {
        let existing_only = existing_only && self.project_type != SandboxProjectType::Email;
        updates.retain(|update| {
            match self.locate(update.email.as_deref(), update.user_id.as_deref(), update.prefer_user_id) {
                Located::Known(_) => true,
                Located::Unknown if !existing_only => true,
                Located::Unknown => {
                    outcome.not_found(self.reported_identity(update));
                    false
                }
                Located::NotFound(identity) => {
                    outcome.not_found(identity);
                    false
                }
                Located::Conflict(identity) => {
                    outcome.conflict(identity);
                    false
                }
            }
        });
    }

    /// Checks every subscriber's `dataFields` against the project's field types, and against the types earlier
    /// subscribers of the same request give new fields. A field's type is fixed by the first value the project
    /// ever received for it, and one value of another type makes Iterable refuse the whole request
    /// (`RequestFieldsTypesMismatched`): the error is `params.validationErrors`, one entry per field.
    pub(crate) fn check_field_types(&self, updates: &[SubscriberUpdate]) -> Result<(), Map<String, Value>> {
        let mut introduced: HashMap<&str, FieldType> = HashMap::new();
        let mut errors = Map::new();
        for fields in updates.iter().filter_map(|u| u.data_fields.as_ref()) {
            for (name, value) in fields {
                let Some(incoming) = FieldType::of(value) else { continue };
                let expected = match self.field_types.get(name) {
                    Some(known) => *known,
                    None if !self.accept_new_fields => continue,
                    None => *introduced.entry(name.as_str()).or_insert(incoming),
                };
                if !expected.accepts(incoming) && !errors.contains_key(name) {
                    errors.insert(
                        name.clone(),
                        serde_json::json!({
                            "incomingTypes": [incoming.name()],
                            "expectedType": expected.name(),
                            "category": "user",
                            "offendingValue": value,
                            "_type": "UnexpectedType",
                        }),
                    );
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Adds each subscriber to the list, creating unknown users and merging their `dataFields`; an email or user
    /// id sent beside the identifier that found the user becomes theirs. Per-subscriber failures go into `outcome`.
    pub(crate) fn subscribe(
        &mut self,
        list_id: i64,
        now: Instant,
        updates: Vec<SubscriberUpdate>,
        outcome: &mut UserBulkUpdateListResponse,
    ) -> Result<(), ListUnavailable> {
        usable_list(&mut self.lists, list_id, now)?;
        for update in updates {
            let no = match self.locate(update.email.as_deref(), update.user_id.as_deref(), update.prefer_user_id) {
                Located::Known(no) => no,
                Located::Unknown => {
                    self.users.push(User::default());
                    (self.users.len() - 1) as UserNo
                }
                Located::NotFound(identity) => {
                    outcome.not_found(identity);
                    continue;
                }
                Located::Conflict(identity) => {
                    outcome.conflict(identity);
                    continue;
                }
            };
            self.identify(no, update.email.as_deref(), update.user_id.as_deref());
            let mut fields = update.data_fields;
            if let Some(fields) = &mut fields {
                if self.accept_new_fields {
                    register_new_fields(&mut self.field_types, fields, &mut outcome.created_fields);
                } else {
                    let field_types = &self.field_types;
                    fields.retain(|name, _| {
                        let known = field_types.contains_key(name);
                        if !known && !outcome.filtered_out_fields.contains(name) {
                            outcome.filtered_out_fields.push(name.clone());
                        }
                        known
                    });
                }
            }
            if let Some(fields) = fields {
                merge_data_fields(&mut self.users[no as usize].fields, fields, update.merge_nested_objects);
            }
            if let Some(list) = self.lists.get_mut(&list_id) {
                if list.members.insert(no) {
                    list.note_change(now, no, true, self.change_delay);
                }
            }
            outcome.succeeded();
        }
        Ok(())
    }

    /// Gives user `no` the email and user id an update carried, keeping the indexes of the identifiers this kind of
    /// project keeps (`locate` has ruled out taking another user's).
    fn identify(&mut self, no: UserNo, email: Option<&str>, user_id: Option<&str>) {
        let keeps_emails = self.project_type != SandboxProjectType::UserId;
        let user = &mut self.users[no as usize];
        if let Some(email) = email.filter(|e| user.email.as_deref() != Some(*e)) {
            let email: Arc<str> = Arc::from(email);
            if keeps_emails {
                if let Some(old) = user.email.take() {
                    self.by_email.remove(&old);
                }
                self.by_email.insert(Arc::clone(&email), no);
            }
            user.email = Some(email);
        }
        if let Some(user_id) = user_id.filter(|u| user.user_id.as_deref() != Some(*u)) {
            let user_id: Arc<str> = Arc::from(user_id);
            if let Some(old) = user.user_id.take() {
                if self.by_user_id.get(&old) == Some(&no) {
                    self.by_user_id.remove(&old);
                }
            }
            self.by_user_id.insert(Arc::clone(&user_id), no);
            user.user_id = Some(user_id);
        }
    }

    /// Removes each identity from the list; one that names no member (or, in a userID-based project, an email,
    /// which names nobody) is reported as not found.
    pub(crate) fn unsubscribe(
        &mut self,
        list_id: i64,
        now: Instant,
        identities: Vec<Identity>,
        outcome: &mut UserBulkUpdateListResponse,
    ) -> Result<(), ListUnavailable> {
        let Project { lists, by_email, by_user_id, project_type, change_delay, .. } = self;
        let list = usable_list(lists, list_id, now)?;
        for identity in identities {
            let user = match &identity {
                Identity::Email(_) if *project_type == SandboxProjectType::UserId => None,
                Identity::Email(email) => by_email.get(email.as_str()),
                Identity::UserId(user_id) => by_user_id.get(user_id.as_str()),
            };
            if let Some(&no) = user.filter(|no| list.members.remove(no)) {
                list.note_change(now, no, false, *change_delay);
                outcome.succeeded();
            } else {
                outcome.not_found(identity);
            }
        }
        Ok(())
    }
}

fn usable_list(lists: &mut BTreeMap<i64, List>, list_id: i64, now: Instant) -> Result<&mut List, ListUnavailable> {
    match lists.get_mut(&list_id) {
        Some(list) if now >= list.usable_from => Ok(list),
        _ => Err(ListUnavailable),
    }
}

fn register_new_fields(
    field_types: &mut HashMap<String, FieldType>,
    fields: &Map<String, Value>,
    created: &mut Vec<String>,
) {
    for (name, value) in fields {
        if let Some(kind) = FieldType::of(value) {
            if !field_types.contains_key(name) {
                field_types.insert(name.clone(), kind);
                created.push(name.clone());
            }
        }
    }
}

/// Iterable merges top-level fields and never deletes missing ones; `null` clears a field (what Grouparoo relies
/// on; Iterable's documentation does not say). With `mergeNestedObjects`, an object value is merged into the stored
/// object instead of replacing it.
fn merge_data_fields(profile: &mut Map<String, Value>, fields: Map<String, Value>, nested: bool) {
    for (name, value) in fields {
        match (profile.get_mut(&name), value) {
            (_, Value::Null) => {
                profile.remove(&name);
            }
            (Some(Value::Object(stored)), Value::Object(incoming)) if nested => {
                stored.extend(incoming);
            }
            (_, value) => {
                profile.insert(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn update(email: &str, fields: Value) -> SubscriberUpdate {
        SubscriberUpdate {
            email: Some(email.to_owned()),
            user_id: None,
            prefer_user_id: false,
            data_fields: fields.as_object().cloned(),
            merge_nested_objects: false,
        }
    }

    fn by_id(user_id: &str, email: Option<&str>) -> SubscriberUpdate {
        SubscriberUpdate {
            email: email.map(str::to_owned),
            user_id: Some(user_id.to_owned()),
            prefer_user_id: true,
            data_fields: None,
            merge_nested_objects: false,
        }
    }

    #[test]
    fn data_fields_are_merged_and_missing_fields_are_kept() {
        let mut project = Project::default();
        let id = project.create_list("l".into(), None, Instant::now());
        let mut outcome = UserBulkUpdateListResponse::default();
        let first = update("a@b.co", json!({"plan": "pro", "seats": 3}));
        let second = update("a@b.co", json!({"plan": "team"}));
        project.subscribe(id, Instant::now(), vec![first, second], &mut outcome).unwrap();
        let profile = project.user_data_fields("a@b.co").unwrap();
        assert_eq!(profile.get("plan"), Some(&json!("team")));
        assert_eq!(profile.get("seats"), Some(&json!(3)));
        assert_eq!(outcome.created_fields, vec!["plan", "seats"]);
    }

    #[test]
    fn null_clears_a_field_and_a_date_typed_field_refuses_other_text() {
        let mut project = Project::default();
        let id = project.create_list("l".into(), None, Instant::now());
        let mut outcome = UserBulkUpdateListResponse::default();
        let first = update("a@b.co", json!({"nick": "Al", "joined": "2026-03-04 00:00:00 +00:00"}));
        let cleared = update("a@b.co", json!({"nick": null}));
        project.subscribe(id, Instant::now(), vec![first, cleared], &mut outcome).unwrap();
        assert_eq!(project.user_data_fields("a@b.co").unwrap().get("nick"), None);
        let errors = project.check_field_types(&[update("b@b.co", json!({"joined": "soon"}))]).unwrap_err();
        assert_eq!(errors["joined"]["expectedType"], "date");
        assert!(project.check_field_types(&[update("b@b.co", json!({"nick": "2026-01-01 00:00:00 +00:00"}))]).is_ok());
    }

    #[test]
    fn merge_nested_objects_merges_instead_of_replacing() {
        let mut project = Project::default();
        let id = project.create_list("l".into(), None, Instant::now());
        let mut outcome = UserBulkUpdateListResponse::default();
        let mut second = update("a@b.co", json!({"address": {"city": "Oslo"}}));
        second.merge_nested_objects = true;
        let first = update("a@b.co", json!({"address": {"zip": "0150"}}));
        project.subscribe(id, Instant::now(), vec![first, second], &mut outcome).unwrap();
        let profile = project.user_data_fields("a@b.co").unwrap();
        assert_eq!(profile.get("address"), Some(&json!({"zip": "0150", "city": "Oslo"})));
    }

    #[test]
    fn a_user_id_sent_with_an_email_finds_the_user_later() {
        let mut project = Project::default();
        let id = project.create_list("l".into(), None, Instant::now());
        let mut outcome = UserBulkUpdateListResponse::default();
        let mut with_id = update("a@b.co", json!({}));
        with_id.user_id = Some("u1".into());
        project.subscribe(id, Instant::now(), vec![with_id], &mut outcome).unwrap();
        let identities = vec![Identity::UserId("u1".into()), Identity::UserId("nobody".into())];
        let mut outcome = UserBulkUpdateListResponse::default();
        project.unsubscribe(id, Instant::now(), identities, &mut outcome).unwrap();
        assert_eq!(outcome.success_count, 1);
        assert_eq!(outcome.failed_updates.not_found_user_ids, vec!["nobody"]);
        assert_eq!(project.members(id, false).unwrap().len(), 0);
    }

    #[test]
    fn with_a_change_delay_getusers_shows_a_list_as_it_was_until_the_delay_has_passed() {
        let mut project = Project::default();
        let id = project.create_list("l".into(), None, Instant::now());
        let mut outcome = UserBulkUpdateListResponse::default();
        let t0 = Instant::now();
        project.subscribe(id, t0, vec![update("old@b.co", json!({}))], &mut outcome).unwrap();
        project.change_delay = Duration::from_secs(10);
        let t1 = t0 + Duration::from_secs(1);
        project.subscribe(id, t1, vec![update("new@b.co", json!({}))], &mut outcome).unwrap();
        project.unsubscribe(id, t1, vec![Identity::Email("old@b.co".into())], &mut outcome).unwrap();
        assert_eq!(project.members(id, false).unwrap(), vec!["new@b.co"], "the change is made at once");
        let delay = project.change_delay;
        let seen =
            |at| project.members_seen(id, false, at, delay).unwrap().into_iter().map(String::from).collect::<Vec<_>>();
        assert_eq!(seen(t1 + Duration::from_secs(5)), vec!["old@b.co"], "not shown yet");
        assert_eq!(seen(t1 + Duration::from_secs(11)), vec!["new@b.co"], "shown once the delay passed");
    }

    #[test]
    fn lists_are_unavailable_until_their_propagation_instant() {
        let mut project = Project::default();
        let later = Instant::now() + std::time::Duration::from_secs(60);
        let id = project.create_list("l".into(), None, later);
        let mut outcome = UserBulkUpdateListResponse::default();
        let result = project.subscribe(id, Instant::now(), Vec::new(), &mut outcome);
        assert_eq!(result, Err(ListUnavailable));
        assert!(project.subscribe(id, later, Vec::new(), &mut outcome).is_ok());
    }

    #[test]
    fn a_user_id_project_identifies_by_user_id_only_and_keeps_the_email_as_a_field() {
        let mut project = Project::new(true, SandboxProjectType::UserId);
        let id = project.create_list("l".into(), None, Instant::now());
        let mut outcome = UserBulkUpdateListResponse::default();
        let mut updates = vec![by_id("u1", Some("a@b.co")), update("c@b.co", json!({}))];
        project.admit(&mut updates, false, &mut outcome);
        assert_eq!(outcome.failed_updates.not_found_emails, vec!["c@b.co"], "an email alone identifies nobody");
        project.subscribe(id, Instant::now(), updates, &mut outcome).unwrap();
        // A new email for the same user id is the same user, updated; emails are not unique.
        project
            .subscribe(
                id,
                Instant::now(),
                vec![by_id("u1", Some("new@b.co")), by_id("u2", Some("new@b.co"))],
                &mut outcome,
            )
            .unwrap();
        assert_eq!(project.members(id, false).unwrap(), vec!["u1", "u2"]);
        assert_eq!(project.user_by_user_id("u1").unwrap().0, Some("new@b.co"));
    }

    #[test]
    fn a_hybrid_project_finds_a_user_by_either_identifier_and_answers_user_ids_when_preferred() {
        let mut project = Project::new(true, SandboxProjectType::Hybrid);
        let id = project.create_list("l".into(), None, Instant::now());
        let mut outcome = UserBulkUpdateListResponse::default();
        project
            .subscribe(id, Instant::now(), vec![update("a@b.co", json!({})), update("b@b.co", json!({}))], &mut outcome)
            .unwrap();
        // a gains a user id: the same user.
        project.subscribe(id, Instant::now(), vec![by_id("u1", Some("a@b.co"))], &mut outcome).unwrap();
        assert_eq!(project.members(id, true).unwrap(), vec!["b@b.co", "u1"]);
        assert_eq!(project.members(id, false).unwrap(), vec!["a@b.co", "b@b.co"]);
        // u1 changes its email; b's email cannot be taken.
        let mut updates = vec![by_id("u1", Some("a2@b.co")), by_id("u1", Some("b@b.co"))];
        project.admit(&mut updates, false, &mut outcome);
        assert_eq!(outcome.failed_updates.conflict_emails, vec!["b@b.co"]);
        project.subscribe(id, Instant::now(), updates, &mut outcome).unwrap();
        assert_eq!(project.members(id, false).unwrap(), vec!["a2@b.co", "b@b.co"]);
        assert_eq!(outcome.success_count, 4);
    }
}

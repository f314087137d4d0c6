//! The sandbox's one Iterable project held in memory: static lists with their members, user profiles
//! (`dataFields`), the userId index and the project's field-type schema. Everything here is synchronous
//! and runs under the caller's lock, so each operation is O(batch) and never copies the whole state;
//! HTTP, parsing and validation happen before the lock is taken (see `api`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value};

use super::validation::FieldType;
use super::wire::{Identity, ListDetails, UserBulkUpdateListResponse};

/// The sandbox's project id, reported in `invalidListId` and rate-limit answers.
pub(crate) const PROJECT_ID: i64 = 1;

/// Ids of created lists start here, so they look like real ids and never collide with small test numbers.
const FIRST_LIST_ID: i64 = 1000;

/// A subscribe item that passed the syntax checks and is ready to apply.
#[derive(Debug)]
pub(crate) struct SubscriberUpdate {
    pub identity: Identity,
    /// A userId sent alongside an email; remembered so later userId-only requests find the user.
    pub user_id: Option<String>,
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
    /// Emails share their allocation with the `users` key.
    members: BTreeSet<Arc<str>>,
}

#[derive(Debug)]
pub(crate) struct Project {
    next_list_id: i64,
    lists: BTreeMap<i64, List>,
    users: HashMap<Arc<str>, Map<String, Value>>,
    user_ids: HashMap<String, Arc<str>>,
    field_types: HashMap<String, FieldType>,
    /// Off: fields the project has never seen are dropped and reported in `filteredOutFields`.
    pub(crate) accept_new_fields: bool,
}

impl Default for Project {
    fn default() -> Self {
        Self {
            next_list_id: FIRST_LIST_ID,
            lists: BTreeMap::new(),
            users: HashMap::new(),
            user_ids: HashMap::new(),
            field_types: HashMap::new(),
            accept_new_fields: true,
        }
    }
}

impl Project {
    pub(crate) fn new(accept_new_fields: bool) -> Self {
        Self { accept_new_fields, ..Self::default() }
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

    /// Members in ascending order, or `None` when the list does not exist.
    pub(crate) fn members(&self, list_id: i64) -> Option<impl ExactSizeIterator<Item = &str>> {
        self.lists.get(&list_id).map(|list| list.members.iter().map(|email| &**email))
    }

    pub(crate) fn user_data_fields(&self, email: &str) -> Option<&Map<String, Value>> {
        self.users.get(email)
    }

    /// Whether the project already has the user this identity names.
    pub(crate) fn is_user(&self, identity: &Identity) -> bool {
        match identity {
            Identity::Email(email) => self.users.contains_key(email.as_str()),
            Identity::UserId(user_id) => self.user_ids.contains_key(user_id),
        }
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

    /// Adds each subscriber to the list, creating unknown users (as an email-based project does) and
    /// merging their `dataFields`. Per-subscriber failures go into `outcome`.
    pub(crate) fn subscribe(
        &mut self,
        list_id: i64,
        now: Instant,
        updates: Vec<SubscriberUpdate>,
        outcome: &mut UserBulkUpdateListResponse,
    ) -> Result<(), ListUnavailable> {
        let Project { lists, users, user_ids, field_types, accept_new_fields, .. } = self;
        let list = usable_list(lists, list_id, now)?;
        for update in updates {
            let email: Arc<str> = match &update.identity {
                Identity::Email(email) => match users.get_key_value(email.as_str()) {
                    Some((known, _)) => Arc::clone(known),
                    None => Arc::from(email.as_str()),
                },
                // An email-based project cannot create a user from a userId alone.
                Identity::UserId(user_id) => match user_ids.get(user_id) {
                    Some(known) => Arc::clone(known),
                    None => {
                        outcome.not_found(update.identity);
                        continue;
                    }
                },
            };
            let mut update = update;
            if let Some(fields) = &mut update.data_fields {
                if *accept_new_fields {
                    register_new_fields(field_types, fields, &mut outcome.created_fields);
                } else {
                    fields.retain(|name, _| {
                        let known = field_types.contains_key(name);
                        if !known && !outcome.filtered_out_fields.contains(name) {
                            outcome.filtered_out_fields.push(name.clone());
                        }
                        known
                    });
                }
            }
            let profile = users.entry(Arc::clone(&email)).or_default();
            if let Some(fields) = update.data_fields {
                merge_data_fields(profile, fields, update.merge_nested_objects);
            }
            if let Some(user_id) = update.user_id {
                user_ids.insert(user_id, Arc::clone(&email));
            }
            list.members.insert(email);
            outcome.succeeded();
        }
        Ok(())
    }

    /// Removes each identity from the list; one that is not a member is reported as not found.
    pub(crate) fn unsubscribe(
        &mut self,
        list_id: i64,
        now: Instant,
        identities: Vec<Identity>,
        outcome: &mut UserBulkUpdateListResponse,
    ) -> Result<(), ListUnavailable> {
        let Project { lists, user_ids, .. } = self;
        let list = usable_list(lists, list_id, now)?;
        for identity in identities {
            let removed = match &identity {
                Identity::Email(email) => list.members.remove(email.as_str()),
                Identity::UserId(user_id) => user_ids.get(user_id).is_some_and(|email| list.members.remove(&**email)),
            };
            if removed {
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
            identity: Identity::Email(email.to_owned()),
            user_id: None,
            data_fields: fields.as_object().cloned(),
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
        assert_eq!(project.members(id).unwrap().len(), 0);
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
}

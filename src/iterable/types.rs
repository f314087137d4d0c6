//! Iterable's JSON shapes for the list endpoints, and the hand-built request bodies used on the hot path.

use serde::{Deserialize, Serialize};

/// Iterable data centres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Us,
    Eu,
}

impl Region {
    pub fn base_url(self) -> &'static str {
        match self {
            Region::Us => "https://api.iterable.com",
            Region::Eu => "https://api.eu.iterable.com",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Region::Us => "us",
            Region::Eu => "eu",
        }
    }
}

/// `ListDetails` from `GET /api/lists`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ListDetails {
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub created_at: Option<i64>,
    #[serde(default)]
    pub list_type: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListsResponse {
    pub lists: Vec<ListDetails>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateListResponse {
    pub list_id: i64,
}

/// Iterable's standard envelope `{msg, code, params}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Envelope {
    #[serde(default)]
    pub msg: String,
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub params: Option<serde_json::Value>,
}

/// The prefix of a member key that names a user by user id; any other key is a (normalised, lowercase) email.
/// A lowercase email can never begin with it, so the two kinds of key never collide.
pub const USER_ID_KEY_PREFIX: &str = "userId:";

/// The member key of a user id.
pub fn user_id_key(user_id: &str) -> String {
    let mut key = String::with_capacity(USER_ID_KEY_PREFIX.len() + user_id.len());
    key.push_str(USER_ID_KEY_PREFIX);
    key.push_str(user_id);
    key
}

/// How a request names a user: a member key read back as an email or a user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserRef<'a> {
    Email(&'a str),
    UserId(&'a str),
}

impl<'a> UserRef<'a> {
    /// The user a member key names (`userId:…` or an email).
    pub fn from_key(key: &'a str) -> UserRef<'a> {
        match key.strip_prefix(USER_ID_KEY_PREFIX) {
            Some(user_id) => UserRef::UserId(user_id),
            None => UserRef::Email(key),
        }
    }
}

/// Per-identity failures inside an HTTP 200 of subscribe or unsubscribe: each `...Emails` array has a
/// `...UserIds` twin.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct FailedUpdates {
    pub invalid_emails: Vec<String>,
    pub not_found_emails: Vec<String>,
    pub forgotten_emails: Vec<String>,
    pub conflict_emails: Vec<String>,
    pub invalid_data_emails: Vec<String>,
    pub invalid_user_ids: Vec<String>,
    pub not_found_user_ids: Vec<String>,
    pub forgotten_user_ids: Vec<String>,
    pub conflict_user_ids: Vec<String>,
    pub invalid_data_user_ids: Vec<String>,
}

impl FailedUpdates {
    /// Each failed identity as a member key (emails trimmed and lowercased, user ids as `userId:…`) with
    /// Iterable's category. `notFound…` is left out on unsubscribe, where it means the member is already off the
    /// list.
    pub fn categorised(&self, unsubscribe: bool) -> Vec<(String, &'static str)> {
        let mut out = Vec::new();
        let mut emails = |list: &Vec<String>, category: &'static str| {
            out.extend(list.iter().map(|e| (e.trim().to_lowercase(), category)));
        };
        emails(&self.invalid_emails, "invalidEmails");
        if !unsubscribe {
            emails(&self.not_found_emails, "notFoundEmails");
        }
        emails(&self.forgotten_emails, "forgottenEmails");
        emails(&self.conflict_emails, "conflictEmails");
        emails(&self.invalid_data_emails, "invalidDataEmails");
        let mut user_ids = |list: &Vec<String>, category: &'static str| {
            out.extend(list.iter().map(|id| (user_id_key(id), category)));
        };
        user_ids(&self.invalid_user_ids, "invalidUserIds");
        if !unsubscribe {
            user_ids(&self.not_found_user_ids, "notFoundUserIds");
        }
        user_ids(&self.forgotten_user_ids, "forgottenUserIds");
        user_ids(&self.conflict_user_ids, "conflictUserIds");
        user_ids(&self.invalid_data_user_ids, "invalidDataUserIds");
        out
    }

    /// Every identity named, as member keys (see `categorised`).
    fn named(&self) -> impl Iterator<Item = String> + '_ {
        let emails = [
            &self.invalid_emails,
            &self.not_found_emails,
            &self.forgotten_emails,
            &self.conflict_emails,
            &self.invalid_data_emails,
        ]
        .into_iter()
        .flatten()
        .map(|e| e.trim().to_lowercase());
        let user_ids = [
            &self.invalid_user_ids,
            &self.not_found_user_ids,
            &self.forgotten_user_ids,
            &self.conflict_user_ids,
            &self.invalid_data_user_ids,
        ]
        .into_iter()
        .flatten()
        .map(|id| user_id_key(id));
        emails.chain(user_ids)
    }
}

/// Whether a failure category means a GDPR-forgotten user, never to be sent again.
pub fn is_forgotten(category: &str) -> bool {
    category.starts_with("forgotten")
}

/// `UserBulkUpdateListResponse`, the HTTP 200 answer of subscribe and unsubscribe.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct BulkResponse {
    pub success_count: i64,
    pub fail_count: i64,
    pub created_fields: Vec<String>,
    pub filtered_out_fields: Vec<String>,
    pub failed_updates: FailedUpdates,
    /// Deprecated top-level copies, still returned.
    pub invalid_emails: Vec<String>,
    pub invalid_user_ids: Vec<String>,
}

impl BulkResponse {
    /// Whether this answer accounts for a batch of `sent` members: `successCount + failCount` must equal `sent`,
    /// and every identity named in `failedUpdates` must be one of the batch (`in_batch` gets it as a member key:
    /// an email trimmed and lowercased, or `userId:…`). The deprecated top-level copies are not counted again. The error says what did not
    /// add up. Costs nothing per member unless some failed.
    pub fn accounts_for(&self, sent: usize, in_batch: impl Fn(&str) -> bool) -> Result<(), String> {
        let answered = self.success_count.saturating_add(self.fail_count);
        if self.success_count < 0 || self.fail_count < 0 || answered != sent as i64 {
            return Err(format!(
                "HTTP 200 whose counts do not add up: successCount {} + failCount {} for {sent} member(s) sent",
                self.success_count, self.fail_count
            ));
        }
        let strangers = self.failed_updates.named().filter(|key| !in_batch(key)).count();
        if strangers > 0 {
            return Err(format!(
                "HTTP 200 naming {strangers} member(s) in failedUpdates that were not in the batch of {sent}"
            ));
        }
        Ok(())
    }
}

/// One subscriber as a JSON fragment: `{"email":"…","dataFields":{…}}`, or for a member named by user id
/// `{"userId":"…","email":"…","preferUserId":true,"dataFields":{…}}` (the email only when known: there it is the
/// user's address, not what identifies them). `fields` is a JSON object text produced by `serde_json`; an empty
/// object is left out. Fragments are joined by `IterableClient::subscribe`, so a batch's body size is known while
/// the batch is built.
pub fn encode_subscriber(key: &str, email_beside: Option<&str>, fields: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + fields.len() + 64);
    match UserRef::from_key(key) {
        UserRef::Email(email) => {
            out.extend_from_slice(b"{\"email\":");
            serde_json::to_writer(&mut out, email).expect("writing to a Vec cannot fail");
        }
        UserRef::UserId(user_id) => {
            out.extend_from_slice(b"{\"userId\":");
            serde_json::to_writer(&mut out, user_id).expect("writing to a Vec cannot fail");
            if let Some(email) = email_beside {
                out.extend_from_slice(b",\"email\":");
                serde_json::to_writer(&mut out, email).expect("writing to a Vec cannot fail");
            }
            out.extend_from_slice(b",\"preferUserId\":true");
        }
    }
    if fields != "{}" && !fields.is_empty() {
        out.extend_from_slice(b",\"dataFields\":");
        out.extend_from_slice(fields.as_bytes());
    }
    out.push(b'}');
    out
}

/// Bytes the subscribe body adds around its subscribers (list id, flags, brackets).
pub(crate) const SUBSCRIBE_OVERHEAD: usize = 96;

pub(crate) fn subscribe_body(list_id: i64, fragments: &[Vec<u8>], existing_users_only: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(fragments.iter().map(|f| f.len() + 1).sum::<usize>() + SUBSCRIBE_OVERHEAD);
    body.extend_from_slice(format!("{{\"listId\":{list_id},\"subscribers\":[").as_bytes());
    for (i, f) in fragments.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(f);
    }
    body.extend_from_slice(if existing_users_only {
        b"],\"updateExistingUsersOnly\":true}".as_slice()
    } else {
        b"],\"updateExistingUsersOnly\":false}".as_slice()
    });
    body
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UnsubscribeBody<'a> {
    pub list_id: i64,
    pub subscribers: Vec<Unsubscriber<'a>>,
    /// Always sent: `true` would unsubscribe the user from the whole email channel, and a third party reports
    /// that Iterable defaults it to `true` when absent.
    pub channel_unsubscribe: bool,
}

/// `{"email": …}` or `{"userId": …}`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Unsubscriber<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<&'a str>,
}

impl<'a> Unsubscriber<'a> {
    pub(crate) fn of_key(key: &'a str) -> Unsubscriber<'a> {
        match UserRef::from_key(key) {
            UserRef::Email(email) => Unsubscriber { email: Some(email), user_id: None },
            UserRef::UserId(user_id) => Unsubscriber { email: None, user_id: Some(user_id) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_body_is_valid_json_with_fields_only_when_present() {
        let frags = vec![
            encode_subscriber("a@b.com", None, "{\"tier\":\"gold\"}"),
            encode_subscriber("q\"x@b.com", None, "{}"),
        ];
        let body = subscribe_body(7, &frags, false);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["listId"], 7);
        assert_eq!(v["subscribers"][0]["dataFields"]["tier"], "gold");
        assert_eq!(v["subscribers"][1]["email"], "q\"x@b.com");
        assert!(v["subscribers"][1].get("dataFields").is_none());
        assert!(body.len() <= frags.iter().map(|f| f.len() + 1).sum::<usize>() + SUBSCRIBE_OVERHEAD);
    }

    #[test]
    fn a_member_keyed_by_user_id_is_sent_by_user_id_with_its_email_beside_and_prefer_user_id() {
        let v: serde_json::Value =
            serde_json::from_slice(&encode_subscriber("userId:u 1", Some("a@b.com"), "{\"tier\":\"gold\"}")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"userId": "u 1", "email": "a@b.com", "preferUserId": true, "dataFields": {"tier": "gold"}})
        );
        let v: serde_json::Value = serde_json::from_slice(&encode_subscriber("userId:u2", None, "{}")).unwrap();
        assert_eq!(v, serde_json::json!({"userId": "u2", "preferUserId": true}));
        let unsub = serde_json::to_value([Unsubscriber::of_key("userId:u2"), Unsubscriber::of_key("a@b.com")]).unwrap();
        assert_eq!(unsub, serde_json::json!([{"userId": "u2"}, {"email": "a@b.com"}]));
        // Failures named by user id come back as member keys.
        let f = FailedUpdates { not_found_user_ids: vec!["u2".into()], ..Default::default() };
        assert_eq!(f.categorised(false), vec![("userId:u2".to_string(), "notFoundUserIds")]);
        assert!(f.categorised(true).is_empty());
    }

    #[test]
    fn not_found_on_unsubscribe_is_not_a_failure() {
        let f = FailedUpdates {
            not_found_emails: vec!["A@x.com".into()],
            forgotten_emails: vec!["b@x.com".into()],
            ..Default::default()
        };
        assert_eq!(f.categorised(true), vec![("b@x.com".to_string(), "forgottenEmails")]);
        assert_eq!(f.categorised(false).len(), 2);
        assert_eq!(f.categorised(false)[0].0, "a@x.com");
    }

    #[test]
    fn an_answer_accounts_for_a_batch_only_when_counts_and_named_members_match() {
        let batch = ["a@x.com", "b@x.com"];
        let in_batch = |e: &str| batch.contains(&e);
        let ok: BulkResponse = serde_json::from_str(
            r#"{"successCount":1,"failCount":1,"failedUpdates":{"invalidDataEmails":["A@x.com"]},"invalidEmails":[]}"#,
        )
        .unwrap();
        assert_eq!(ok.accounts_for(2, in_batch), Ok(()));
        let zero: BulkResponse = serde_json::from_str(r#"{"successCount":0,"failCount":0}"#).unwrap();
        let why = zero.accounts_for(2, in_batch).unwrap_err();
        assert!(why.contains("successCount 0 + failCount 0 for 2"), "{why}");
        let stranger: BulkResponse =
            serde_json::from_str(r#"{"successCount":1,"failCount":1,"failedUpdates":{"forgottenEmails":["z@x.com"]}}"#)
                .unwrap();
        assert!(stranger.accounts_for(2, in_batch).unwrap_err().contains("not in the batch"));
        // The deprecated top-level copy repeats failedUpdates.invalidEmails and is not counted twice.
        let copy: BulkResponse = serde_json::from_str(
            r#"{"successCount":1,"failCount":1,"failedUpdates":{"invalidEmails":["b@x.com"]},"invalidEmails":["b@x.com"]}"#,
        )
        .unwrap();
        assert_eq!(copy.accounts_for(2, in_batch), Ok(()));
    }

    #[test]
    fn bulk_response_tolerates_missing_fields() {
        let r: BulkResponse = serde_json::from_str(r#"{"successCount":2,"failCount":0}"#).unwrap();
        assert_eq!(r.success_count, 2);
        assert!(r.failed_updates.invalid_emails.is_empty());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Hand-built bodies are valid JSON that carries every subscriber exactly, whatever the text.
        #[test]
        fn subscribe_bodies_round_trip(members in proptest::collection::vec(("\\PC{0,30}", "\\PC{0,30}"), 0..20)) {
            let frags: Vec<Vec<u8>> = members
                .iter()
                .map(|(email, tier)| encode_subscriber(email, None, &serde_json::json!({ "tier": tier }).to_string()))
                .collect();
            let v: serde_json::Value = serde_json::from_slice(&subscribe_body(1, &frags, false)).unwrap();
            let subs = v["subscribers"].as_array().unwrap();
            prop_assert_eq!(subs.len(), members.len());
            for (s, (email, tier)) in subs.iter().zip(&members) {
                prop_assert_eq!(s["email"].as_str().unwrap(), email.as_str());
                prop_assert_eq!(s["dataFields"]["tier"].as_str().unwrap(), tier.as_str());
            }
        }
    }
}

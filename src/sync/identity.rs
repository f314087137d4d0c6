//! Who a member is: the identity a source row has in the connection's kind of Iterable project, as the member key
//! the store remembers, diffs and removes by, and the check of a user id as Iterable checks it.
//!
//! - email-based: the normalised email;
//! - userID-based: the user id (`userId:…`); the email, when the export has an email column, travels beside it as the
//!   user's address, an ordinary field there;
//! - hybrid: the user id when the row has one (sent with `preferUserId`), else the email.
//!
//! It owns only these rules; planning (`plan`) applies them to every row, and the store decides nothing about them.

use serde_json::Value;

use crate::iterable::user_id_key;
use crate::store::ProjectType;

use super::email::normalize_email;

/// Longest user id Iterable accepts, in characters.
const MAX_USER_ID_CHARS: usize = 52;

/// One row's identity: its member key and, for a member named by user id, the email sent beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub key: String,
    pub paired_email: Option<String>,
}

/// Why a row is not a member: the value to show (None for NULL) and the reason.
pub type Refusal = (Option<String>, String);

/// Works out a row's identity from its email and user id values (None when the export has no such column).
pub fn identify(project: ProjectType, email: Option<&Value>, user_id: Option<&Value>) -> Result<Identity, Refusal> {
    let named_by_user_id = match project {
        ProjectType::Email => false,
        ProjectType::UserId => true,
        // A NULL user id leaves the email to identify the row.
        ProjectType::Hybrid => user_id.is_some_and(|v| !v.is_null()),
    };
    if !named_by_user_id {
        let Some(value) = email else {
            return Err((None, "user id is NULL, and the export has no email column to identify the row by".into()));
        };
        let key = normalize_email(value).map_err(|reason| (shown(value), reason))?;
        return Ok(Identity { key, paired_email: None });
    }
    let value = user_id.unwrap_or(&Value::Null);
    let user_id = normalize_user_id(value).map_err(|reason| (shown(value), reason))?;
    // Beside a user id the email is the user's address: none when NULL or empty, refused when malformed (Iterable
    // would refuse it too).
    let paired_email = match email {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(value) => Some(normalize_email(value).map_err(|reason| (shown(value), reason))?),
    };
    Ok(Identity { key: user_id_key(&user_id), paired_email })
}

/// Whether an export's identity columns and options can work in its connection's kind of project; the error says
/// why not and what to do. `export add`, `export edit` and every run ask it.
pub fn check_identity_settings(
    project: ProjectType,
    connection: &str,
    email_field: Option<&str>,
    user_id_field: Option<&str>,
    existing_users_only: bool,
) -> Result<(), String> {
    match (project, email_field, user_id_field) {
        (ProjectType::Email, _, Some(_)) => {
            return Err(format!(
                "--user-id-field does not apply to connection '{connection}''s email-based project: Iterable \
                 identifies its users by email alone (a user id there is neither unique nor an identity). Leave it \
                 out (send the column as a data field with --field if you need it in Iterable), or add a connection \
                 with the project's real type (connection add --project-type userid|hybrid)."
            ))
        }
        (ProjectType::Email, None, None) => {
            return Err(format!(
                "--email-field is required: connection '{connection}' reaches an email-based Iterable project, \
                 where the email identifies each member."
            ))
        }
        (ProjectType::UserId, _, None) => {
            return Err(format!(
                "--user-id-field is required: connection '{connection}' reaches a userID-based Iterable project, \
                 where an email identifies nobody. Give the column holding each member's user id; the email column, \
                 when given too, travels beside it as the user's address."
            ))
        }
        (ProjectType::Hybrid, None, None) => {
            return Err(format!(
                "give --email-field, --user-id-field or both: connection '{connection}''s hybrid project identifies \
                 a member by its user id when it has one, else by its email."
            ))
        }
        _ => {}
    }
    if existing_users_only && project == ProjectType::Email {
        return Err(format!(
            "--existing-users-only does nothing in connection '{connection}''s email-based project: Iterable honours \
             updateExistingUsersOnly only in hybrid and userID-based projects, and would create every new member \
             anyway. Leave the option out, or give the connection's real type (connection add --project-type)."
        ));
    }
    Ok(())
}

/// `check_identity_settings` for a stored export.
pub fn check_export_identity(project: ProjectType, export: &crate::store::Export) -> Result<(), String> {
    check_identity_settings(
        project,
        export.connection_name.as_deref().unwrap_or_default(),
        export.email_field.as_deref(),
        export.user_id_field.as_deref(),
        export.existing_users_only,
    )
}

/// A source value as a user id, or why Iterable would refuse it: at most 52 characters, non-empty, printable
/// ASCII, no trailing space. Whole numbers (an integer id column) are taken as their digits.
pub fn normalize_user_id(value: &Value) -> Result<String, String> {
    let id = match value {
        Value::Null => return Err("user id is NULL".into()),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Number(_) => return Err("user id is not text but a fractional number".into()),
        Value::Bool(_) => return Err("user id is not text but a boolean".into()),
        Value::Array(_) | Value::Object(_) => return Err("user id is not text".into()),
    };
    check_user_id(&id)?;
    Ok(id)
}

/// Iterable's rules for a user id.
pub fn check_user_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("user id is empty".into());
    }
    if id.chars().count() > MAX_USER_ID_CHARS {
        return Err(format!("user id is longer than {MAX_USER_ID_CHARS} characters"));
    }
    if !id.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err("user id has a character that is not printable ASCII".into());
    }
    if id.ends_with(' ') {
        return Err("user id ends with a space".into());
    }
    Ok(())
}

/// The value shown for a refused row: its text, a number or boolean as its JSON text, nothing for NULL.
fn shown(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The hash a member is remembered with: its fields' hash, and for a member named by user id the email beside it
/// too, so that a changed email (same user id) is an update of the member. Email-keyed members keep their fields'
/// hash as it was, so stores from before user ids see nothing changed.
pub fn member_hash(fields_hash: i64, paired_email: Option<&str>) -> i64 {
    match paired_email {
        None => fields_hash,
        Some(email) => fields_hash ^ (xxhash_rust::xxh3::xxh3_64(email.as_bytes()) as i64).rotate_left(1),
    }
}

/// The member keys a line of `getUsers` may stand for. An email-based project answers emails; a userID-based one
/// user ids. A hybrid project asked with `preferUserId` answers a user id where the user has one and an email
/// otherwise, and a line cannot always tell which: a line that reads as an email stands for both, which is safe
/// since these keys only protect members from being unsubscribed.
pub fn keys_of_listed_user(project: ProjectType, line: &str) -> Vec<String> {
    match project {
        ProjectType::Email => vec![line.to_lowercase()],
        ProjectType::UserId => vec![user_id_key(line)],
        ProjectType::Hybrid => match normalize_email(&Value::String(line.to_string())) {
            Ok(email) => vec![email, user_id_key(line)],
            Err(_) => vec![user_id_key(line)],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_ids_are_checked_as_iterable_checks_them() {
        assert_eq!(normalize_user_id(&json!("u-1 a")), Ok("u-1 a".into()));
        assert_eq!(normalize_user_id(&json!(42)), Ok("42".into()));
        assert_eq!(normalize_user_id(&json!("x".repeat(52))).map(|s| s.len()), Ok(52));
        for (value, why) in [
            (json!(null), "NULL"),
            (json!(""), "empty"),
            (json!("x".repeat(53)), "longer than 52"),
            (json!("tab\there"), "printable ASCII"),
            (json!("ünicode"), "printable ASCII"),
            (json!("trailing "), "ends with a space"),
            (json!(true), "boolean"),
        ] {
            let err = normalize_user_id(&value).unwrap_err();
            assert!(err.contains(why), "{value}: {err}");
        }
    }

    #[test]
    fn each_project_type_identifies_a_row_its_own_way() {
        let (email, id) = (json!("Ann@Example.com"), json!("u1"));
        let by_email = Identity { key: "ann@example.com".into(), paired_email: None };
        let by_id = Identity { key: "userId:u1".into(), paired_email: Some("ann@example.com".into()) };
        assert_eq!(identify(ProjectType::Email, Some(&email), None), Ok(by_email.clone()));
        assert_eq!(identify(ProjectType::UserId, Some(&email), Some(&id)), Ok(by_id.clone()));
        assert_eq!(identify(ProjectType::Hybrid, Some(&email), Some(&id)), Ok(by_id));
        assert_eq!(identify(ProjectType::Hybrid, Some(&email), Some(&json!(null))), Ok(by_email));
        // A userID-based project needs the user id; the email alone identifies nobody, and a missing email is fine.
        let err = identify(ProjectType::UserId, Some(&email), Some(&json!(null))).unwrap_err();
        assert_eq!(err, (None, "user id is NULL".to_string()));
        let alone = identify(ProjectType::UserId, Some(&json!(null)), Some(&id)).unwrap();
        assert_eq!(alone, Identity { key: "userId:u1".into(), paired_email: None });
        // A malformed email beside a user id is refused, as Iterable would refuse it.
        let err = identify(ProjectType::Hybrid, Some(&json!("not an email")), Some(&id)).unwrap_err();
        assert_eq!(err.0.as_deref(), Some("not an email"));
    }

    #[test]
    fn a_changed_email_beside_a_user_id_changes_the_member_hash_and_no_email_keeps_it() {
        assert_eq!(member_hash(7, None), 7);
        assert_ne!(member_hash(7, Some("a@x.com")), member_hash(7, Some("b@x.com")));
        assert_ne!(member_hash(7, Some("a@x.com")), 7);
    }

    #[test]
    fn listed_users_become_member_keys_per_project_type() {
        assert_eq!(keys_of_listed_user(ProjectType::Email, "A@x.com"), vec!["a@x.com"]);
        assert_eq!(keys_of_listed_user(ProjectType::UserId, "u1"), vec!["userId:u1"]);
        assert_eq!(keys_of_listed_user(ProjectType::Hybrid, "u1"), vec!["userId:u1"]);
        assert_eq!(keys_of_listed_user(ProjectType::Hybrid, "a@x.com"), vec!["a@x.com", "userId:a@x.com"]);
    }
}

//! Email normalisation and the client-side validity check.
//!
//! Iterable stores addresses lowercase and validates them with Apache Commons' EmailValidator (RFC syntax and a
//! real-looking TLD). We trim and lowercase, so case variants and stray spaces become one member, and refuse what
//! Iterable would refuse, so invalid members are counted with a reason instead of being sent.

use serde_json::Value;

/// Normalises a source value into an email, or says why it is not one.
pub fn normalize_email(value: &Value) -> Result<String, String> {
    let raw = match value {
        Value::Null => return Err("email is NULL".into()),
        Value::String(s) => s,
        other => return Err(format!("email is not text but {}", kind(other))),
    };
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err("email is empty".into());
    }
    validate(&email)?;
    Ok(email)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn validate(email: &str) -> Result<(), String> {
    if email.chars().any(char::is_whitespace) {
        return Err("email contains a space".into());
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err("email has no @".into());
    };
    if local.is_empty() {
        return Err("email has nothing before the @".into());
    }
    let tld = domain.rsplit_once('.').map(|(_, tld)| tld).unwrap_or("");
    if domain.starts_with('[') || tld.len() < 2 || !tld.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err("email domain has no valid top-level domain".into());
    }
    if !email_address::EmailAddress::is_valid(email) {
        return Err("email is not a valid address".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        assert_eq!(normalize_email(&json!("  Ann.Lee@Example.COM ")).unwrap(), "ann.lee@example.com");
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        for (value, reason) in [
            (json!(null), "NULL"),
            (json!(""), "empty"),
            (json!("   "), "empty"),
            (json!(42), "number"),
            (json!("user @example.com"), "space"),
            (json!("no-at-sign.example.com"), "no @"),
            (json!("@example.com"), "before the @"),
            (json!("a@localhost"), "top-level"),
            (json!("a@example.c0m"), "top-level"),
            (json!("a..b@example.com"), "not a valid"),
        ] {
            let err = normalize_email(&value).unwrap_err();
            assert!(err.contains(reason), "{value}: {err}");
        }
    }

    #[test]
    fn plus_addresses_and_subdomains_are_valid() {
        assert!(normalize_email(&json!("a+tag@mail.example.co.uk")).is_ok());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the source holds, a normalised email is trimmed, lowercase, and normalises to itself.
        #[test]
        fn normalising_is_idempotent_and_yields_trimmed_lowercase(raw in "\\PC{0,40}", local in "[A-Za-z0-9._%+-]{1,20}", domain in "[A-Za-z]{1,10}\\.[A-Za-z]{2,6}") {
            for candidate in [raw, format!("  {local}@{domain} ")] {
                if let Ok(email) = normalize_email(&serde_json::Value::String(candidate)) {
                    prop_assert_eq!(email.trim(), email.as_str());
                    prop_assert_eq!(email.to_lowercase(), email.clone());
                    prop_assert_eq!(normalize_email(&serde_json::Value::String(email.clone())), Ok(email));
                }
            }
        }
    }
}

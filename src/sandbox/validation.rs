//! Per-identity checks the sandbox applies before touching its state: email and userId syntax, the
//! GDPR-forgotten marker, and the type of a `dataFields` value. Pure functions only; no state.

use email_address::{EmailAddress, Options};
use serde_json::Value;

/// Longest userId Iterable accepts, in characters.
const MAX_USER_ID_CHARS: usize = 52;

/// Marker that makes the sandbox treat an address as belonging to a GDPR-forgotten user, so tests can
/// exercise `forgottenEmails` without a real forget call.
const FORGOTTEN_MARKER: &str = "+forgotten@";

/// Iterable validates with Apache Commons EmailValidator (RFC syntax plus a real TLD). We approximate it:
/// RFC syntax via `email_address` without display text or domain literals, no whitespace anywhere, and a
/// domain ending in an alphabetic TLD of at least two letters.
pub(crate) fn is_valid_email(address: &str) -> bool {
    if address.chars().any(char::is_whitespace) {
        return false;
    }
    let options = Options::default().without_display_text().without_domain_literal().with_required_tld();
    if EmailAddress::parse_with_options(address, options).is_err() {
        return false;
    }
    let Some((_, domain)) = address.rsplit_once('@') else {
        return false;
    };
    match domain.rsplit_once('.') {
        Some((_, tld)) => tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()),
        None => false,
    }
}

pub(crate) fn is_forgotten(address: &str) -> bool {
    address.contains(FORGOTTEN_MARKER)
}

/// Iterable's documented userId rules: non-empty, at most 52 characters, printable ASCII, no trailing space.
pub(crate) fn is_valid_user_id(user_id: &str) -> bool {
    !user_id.is_empty()
        && user_id.chars().count() <= MAX_USER_ID_CHARS
        && user_id.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        && !user_id.ends_with(' ')
}

fn is_iterable_date(text: &str) -> bool {
    chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S %:z").is_ok()
}

/// The type a profile field gets from the first value ever sent for it; later values must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldType {
    String,
    /// Text in Iterable's date format, `yyyy-MM-dd HH:mm:ss +00:00`: Iterable makes such a field a date.
    Date,
    Long,
    Double,
    Bool,
    Object,
    Array,
}

impl FieldType {
    /// `None` for JSON null, which carries no type and so neither sets nor violates one.
    pub(crate) fn of(value: &Value) -> Option<Self> {
        match value {
            Value::Null => None,
            Value::Bool(_) => Some(Self::Bool),
            Value::Number(n) if n.is_f64() => Some(Self::Double),
            Value::Number(_) => Some(Self::Long),
            Value::String(s) if is_iterable_date(s) => Some(Self::Date),
            Value::String(_) => Some(Self::String),
            Value::Array(_) => Some(Self::Array),
            Value::Object(_) => Some(Self::Object),
        }
    }

    /// Whether a value of type `incoming` may be stored in a field of this type: the same type, or a whole
    /// number in a `double` field.
    pub(crate) fn accepts(self, incoming: FieldType) -> bool {
        self == incoming
            || (self == Self::Double && incoming == Self::Long)
            || (self == Self::String && incoming == Self::Date)
    }

    /// Iterable's name for the type, as in `validationErrors`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Date => "date",
            Self::Long => "long",
            Self::Double => "double",
            Self::Bool => "boolean",
            Self::Object => "object",
            Self::Array => "array",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_addresses_are_valid() {
        for address in ["a@b.co", "first.last+tag@sub.example.com", "x_y@example.io"] {
            assert!(is_valid_email(address), "{address} should be valid");
        }
    }

    #[test]
    fn addresses_without_a_real_tld_or_with_spaces_are_invalid() {
        for address in [
            "user @example.com",
            " user@example.com",
            "user@example",
            "user@example.c",
            "user@example.c0m",
            "user@[127.0.0.1]",
            "Name <user@example.com>",
            "no-at-sign.example.com",
            "",
        ] {
            assert!(!is_valid_email(address), "{address:?} should be invalid");
        }
    }

    #[test]
    fn the_forgotten_marker_is_recognised_only_before_the_domain() {
        assert!(is_forgotten("gone+forgotten@example.com"));
        assert!(!is_forgotten("forgotten@example.com"));
    }

    #[test]
    fn user_ids_follow_iterables_documented_rules() {
        assert!(is_valid_user_id("u-123 abc"));
        assert!(!is_valid_user_id(""));
        assert!(!is_valid_user_id("trailing "));
        assert!(!is_valid_user_id("tab\there"));
        assert!(!is_valid_user_id("ünicode"));
        assert!(!is_valid_user_id(&"x".repeat(53)));
        assert!(is_valid_user_id(&"x".repeat(52)));
    }
}

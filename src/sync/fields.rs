//! Profile columns as Iterable `dataFields`: name checks at `export add`, and the per-row encoding whose hash tells
//! a run which members' fields changed.

use serde_json::Value;

use crate::store::FieldMap;

/// Fields that Iterable manages itself or that identify the user; writing them through `dataFields` is refused.
const RESERVED: &[&str] = &[
    "email",
    "userId",
    "emailListIds",
    "userListIds",
    "itblInternal",
    "itblDS",
    "itblUserId",
    "profileUpdatedAt",
    "signupDate",
    "signupSource",
    "subscribedMessageTypeIds",
    "receivedSMSDisclaimer",
];

/// Checks an Iterable field name; the error says what is wrong and what to do.
pub fn check_field_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an Iterable field name is empty; write --field COLUMN or --field COLUMN=FIELD".into());
    }
    if RESERVED.contains(&name) {
        return Err(format!(
            "'{name}' is a field Iterable manages or uses to identify users; map the column to another name with --field COLUMN=OTHER_NAME"
        ));
    }
    if name.starts_with('_') || name.chars().all(|c| c.is_ascii_digit()) || name.contains([',', '#', '.']) {
        return Err(format!(
            "'{name}' is not a safe Iterable field name (no leading '_', no '.', ',' or '#', not only digits); map the column to another name with --field COLUMN=OTHER_NAME"
        ));
    }
    Ok(())
}

/// Turns the field values of one row into the JSON object text sent as `dataFields`, and its hash.
/// Keys are written in a fixed (sorted) order so the same values always give the same text and hash. NULL values
/// are left out: Iterable merges fields, so sending nothing leaves the profile as it is.
#[derive(Debug, Clone)]
pub struct FieldEncoder {
    /// (index into the row's field values, JSON-encoded key) sorted by key.
    keys: Vec<(usize, String)>,
}

impl FieldEncoder {
    pub fn new(fields: &[FieldMap]) -> FieldEncoder {
        let mut keys: Vec<(usize, String)> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| (i, serde_json::to_string(&f.iterable_field).expect("string")))
            .collect();
        keys.sort_by(|a, b| a.1.cmp(&b.1));
        FieldEncoder { keys }
    }

    /// Encodes `values` (in `fields` order) into `out`, returning the hash of the text.
    pub fn encode(&self, values: &[Value], out: &mut String) -> i64 {
        out.clear();
        out.push('{');
        let mut first = true;
        for (i, key) in &self.keys {
            let v = &values[*i];
            if v.is_null() {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(key);
            out.push(':');
            out.push_str(&v.to_string());
        }
        out.push('}');
        xxhash_rust::xxh3::xxh3_64(out.as_bytes()) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fm(column: &str, field: &str) -> FieldMap {
        FieldMap { column: column.into(), iterable_field: field.into() }
    }

    #[test]
    fn encoding_is_sorted_skips_nulls_and_hashes_changes() {
        let enc = FieldEncoder::new(&[fm("t", "tier"), fm("c", "city"), fm("n", "nick")]);
        let mut out = String::new();
        let h1 = enc.encode(&[json!("gold"), json!("Oslo"), json!(null)], &mut out);
        assert_eq!(out, r#"{"city":"Oslo","tier":"gold"}"#);
        let h2 = enc.encode(&[json!("silver"), json!("Oslo"), json!(null)], &mut out);
        assert_ne!(h1, h2);
        let h3 = enc.encode(&[json!("gold"), json!("Oslo"), json!(null)], &mut out);
        assert_eq!(h1, h3);
    }

    #[test]
    fn reserved_and_unsafe_field_names_are_refused() {
        assert!(check_field_name("emailListIds").unwrap_err().contains("manages"));
        assert!(check_field_name("a.b").is_err());
        assert!(check_field_name("_x").is_err());
        assert!(check_field_name("123").is_err());
        assert!(check_field_name("loyaltyTier").is_ok());
    }
}

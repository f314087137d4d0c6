//! Profile columns as Iterable `dataFields`: name checks at `export add`, and the per-row encoding whose hash tells
//! a run which members' fields changed.

use serde_json::Value;

use crate::store::{FieldMap, FieldType, NullFields};

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
///
/// Keys are written in a fixed (sorted) order so the same values always give the same text and hash. A NULL is
/// sent as `null` (Iterable clears the field) with `NullFields::Clear`, and left out with `Skip` (Iterable merges
/// fields, so sending nothing leaves the profile as it is). Each field is sent as one type for every row: the type
/// asked for (`--field COL:TYPE`), else the type it was first sent as (remembered by the export), else the JSON
/// type of the first value this encoder meets. A value that cannot be encoded as its field's type makes the member
/// invalid. Values already of their field's type are written exactly as before types existed, so an upgraded
/// export's hashes do not change.
#[derive(Debug, Clone)]
pub struct FieldEncoder {
    /// Sorted by JSON key.
    keys: Vec<Key>,
    null_fields: NullFields,
}

#[derive(Debug, Clone)]
struct Key {
    /// Index into the row's field values.
    index: usize,
    /// The field name as JSON, with its quotes.
    json: String,
    field: String,
    kind: Option<FieldType>,
    /// The kind was taken from this encoder's first value (not asked for, not remembered).
    inferred: bool,
}

impl FieldEncoder {
    pub fn new(fields: &[FieldMap], null_fields: NullFields) -> FieldEncoder {
        let mut keys: Vec<Key> = fields
            .iter()
            .enumerate()
            .map(|(index, f)| Key {
                index,
                json: serde_json::to_string(&f.iterable_field).expect("string"),
                field: f.iterable_field.clone(),
                kind: f.field_type.or(f.sent_type),
                inferred: false,
            })
            .collect();
        keys.sort_by(|a, b| a.json.cmp(&b.json));
        FieldEncoder { keys, null_fields }
    }

    /// Encodes `values` (in `fields` order) into `out`, returning the hash of the text, or why a value cannot be
    /// sent as its field's type.
    pub fn encode(&mut self, values: &[Value], out: &mut String) -> Result<i64, String> {
        out.clear();
        out.push('{');
        let mut first = true;
        for key in &mut self.keys {
            let v = &values[key.index];
            if v.is_null() && self.null_fields == NullFields::Skip {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&key.json);
            out.push(':');
            if v.is_null() {
                out.push_str("null");
                continue;
            }
            let kind = match key.kind {
                Some(kind) => kind,
                None => {
                    key.inferred = true;
                    *key.kind.insert(kind_of(v))
                }
            };
            write_as(kind, v, out).map_err(|why| {
                format!("field '{}': {} cannot be sent as {} ({why})", key.field, shown(v), kind.as_str())
            })?;
        }
        out.push('}');
        Ok(xxhash_rust::xxh3::xxh3_64(out.as_bytes()) as i64)
    }

    /// The fields whose type this encoder took from their first value, for the export to remember.
    pub fn inferred_types(&self) -> Vec<(String, FieldType)> {
        self.keys.iter().filter(|k| k.inferred).filter_map(|k| Some((k.field.clone(), k.kind?))).collect()
    }
}

/// The type a field gets from its first (non-NULL) value.
fn kind_of(v: &Value) -> FieldType {
    match v {
        Value::Bool(_) => FieldType::Boolean,
        Value::Number(n) if n.is_f64() => FieldType::Double,
        Value::Number(_) => FieldType::Long,
        Value::Array(_) => FieldType::Array,
        Value::Object(_) => FieldType::Object,
        Value::String(_) | Value::Null => FieldType::String,
    }
}

/// A value for an error message: short, and quoted when it is text.
fn shown(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

/// Writes `v` as JSON of type `kind`. A value already of that type is written as `serde_json` writes it.
fn write_as(kind: FieldType, v: &Value, out: &mut String) -> Result<(), &'static str> {
    use std::fmt::Write as _;
    let write = |out: &mut String, v: &dyn std::fmt::Display| {
        write!(out, "{v}").expect("writing to a String cannot fail");
    };
    match (kind, v) {
        (FieldType::String, Value::String(_))
        | (FieldType::Long, Value::Number(_))
        | (FieldType::Boolean, Value::Bool(_))
        | (FieldType::Object, Value::Object(_))
        | (FieldType::Array, Value::Array(_))
            if !matches!(v, Value::Number(n) if n.is_f64()) =>
        {
            write(out, v)
        }
        (FieldType::Double, Value::Number(n)) if n.is_f64() => write(out, v),
        (FieldType::String, Value::Number(_) | Value::Bool(_)) => write(out, &Value::String(v.to_string())),
        (FieldType::Long, Value::Number(n)) => {
            let f = n.as_f64().ok_or("not a number")?;
            if f.fract() != 0.0 || f.abs() > 9.007_199_254_740_992e15 {
                return Err("not a whole number");
            }
            write(out, &(f as i64))
        }
        (FieldType::Long, Value::String(s)) => write(out, &s.trim().parse::<i64>().map_err(|_| "not a whole number")?),
        (FieldType::Double, Value::Number(n)) => write(out, &Value::from(n.as_f64().ok_or("not a number")?)),
        (FieldType::Double, Value::String(s)) => {
            let f = s.trim().parse::<f64>().ok().filter(|f| f.is_finite()).ok_or("not a number")?;
            write(out, &Value::from(f))
        }
        (FieldType::Boolean, Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" => out.push_str("true"),
            "false" | "f" | "no" | "n" | "0" => out.push_str("false"),
            _ => return Err("not true or false"),
        },
        (FieldType::Boolean, Value::Number(n)) => match n.as_f64() {
            Some(1.0) => out.push_str("true"),
            Some(0.0) => out.push_str("false"),
            _ => return Err("not 0 or 1"),
        },
        (FieldType::Date, Value::String(s)) => {
            let at = parse_date(s.trim()).ok_or("not a date or date-time this exporter reads")?;
            write(out, &Value::String(at.format("%Y-%m-%d %H:%M:%S +00:00").to_string()))
        }
        (FieldType::Date, _) => return Err("only text holds a date"),
        _ => return Err("another JSON type"),
    }
    Ok(())
}

/// Reads a date or date-time: RFC 3339 (any offset), `yyyy-MM-dd HH:mm:ss[.f][ offset]`, with `T` or a space,
/// or a bare `yyyy-MM-dd` (midnight). Without an offset the time is taken as UTC.
fn parse_date(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
    if let Ok(at) = DateTime::parse_from_rfc3339(s) {
        return Some(at.with_timezone(&Utc));
    }
    for format in
        ["%Y-%m-%d %H:%M:%S%.f %:z", "%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f %z", "%Y-%m-%d %H:%M:%S%.f%#z"]
    {
        if let Ok(at) = DateTime::parse_from_str(s, format) {
            return Some(at.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(s, format) {
            return Some(at.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|at| at.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fm(column: &str, field: &str) -> FieldMap {
        FieldMap::new(column, field)
    }

    fn typed(column: &str, t: FieldType) -> FieldMap {
        FieldMap { field_type: Some(t), ..FieldMap::new(column, column) }
    }

    #[test]
    fn encoding_is_sorted_skips_nulls_and_hashes_changes() {
        let mut enc = FieldEncoder::new(&[fm("t", "tier"), fm("c", "city"), fm("n", "nick")], NullFields::Skip);
        let mut out = String::new();
        let h1 = enc.encode(&[json!("gold"), json!("Oslo"), json!(null)], &mut out).unwrap();
        assert_eq!(out, r#"{"city":"Oslo","tier":"gold"}"#);
        // What every export sent before fields had types and NULLs could clear: its hashes must not change.
        assert_eq!(h1, xxhash_rust::xxh3::xxh3_64(br#"{"city":"Oslo","tier":"gold"}"#) as i64);
        let h2 = enc.encode(&[json!("silver"), json!("Oslo"), json!(null)], &mut out).unwrap();
        assert_ne!(h1, h2);
        let h3 = enc.encode(&[json!("gold"), json!("Oslo"), json!(null)], &mut out).unwrap();
        assert_eq!(h1, h3);
    }

    #[test]
    fn with_null_fields_clear_a_null_is_sent_as_null() {
        let mut enc = FieldEncoder::new(&[fm("t", "tier"), fm("n", "nick")], NullFields::Clear);
        let mut out = String::new();
        enc.encode(&[json!("gold"), json!(null)], &mut out).unwrap();
        assert_eq!(out, r#"{"nick":null,"tier":"gold"}"#);
    }

    #[test]
    fn an_untyped_field_keeps_the_type_of_its_first_value_and_refuses_values_that_do_not_fit() {
        let mut enc = FieldEncoder::new(&[fm("s", "score"), fm("c", "code")], NullFields::Skip);
        let mut out = String::new();
        enc.encode(&[json!(null), json!("A1")], &mut out).unwrap();
        enc.encode(&[json!(3), json!(7)], &mut out).unwrap();
        assert_eq!(out, r#"{"code":"7","score":3}"#, "a number in a text field is sent as text");
        enc.encode(&[json!("12"), json!("x")], &mut out).unwrap();
        assert_eq!(out, r#"{"code":"x","score":12}"#, "text that is a whole number fits a long field");
        let why = enc.encode(&[json!("many"), json!("x")], &mut out).unwrap_err();
        assert!(why.contains("'score'") && why.contains("\"many\"") && why.contains("long"), "{why}");
        let mut types = enc.inferred_types();
        types.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(types, vec![("code".to_string(), FieldType::String), ("score".to_string(), FieldType::Long)]);
        // A remembered type is used from the first row, and not reported again.
        let remembered = FieldMap { sent_type: Some(FieldType::Long), ..fm("s", "score") };
        let mut enc = FieldEncoder::new(&[remembered], NullFields::Skip);
        assert!(enc.encode(&[json!("abc")], &mut out).is_err());
        assert!(enc.inferred_types().is_empty());
    }

    #[test]
    fn typed_fields_convert_what_fits_and_dates_use_iterables_format() {
        let fields = [
            typed("d", FieldType::Date),
            typed("b", FieldType::Boolean),
            typed("x", FieldType::Double),
            typed("s", FieldType::String),
        ];
        let mut enc = FieldEncoder::new(&fields, NullFields::Skip);
        let mut out = String::new();
        enc.encode(&[json!("2026-03-04T05:06:07+02:00"), json!("TRUE"), json!(2), json!(5)], &mut out).unwrap();
        assert_eq!(out, r#"{"b":true,"d":"2026-03-04 03:06:07 +00:00","s":"5","x":2.0}"#);
        for (date, sent) in [
            ("2026-03-04", "2026-03-04 00:00:00 +00:00"),
            ("2026-03-04 05:06:07", "2026-03-04 05:06:07 +00:00"),
            ("2026-03-04 05:06:07.25", "2026-03-04 05:06:07 +00:00"),
            ("2026-03-04 05:06:07 +00:00", "2026-03-04 05:06:07 +00:00"),
            ("2026-03-04 05:06:07-01", "2026-03-04 06:06:07 +00:00"),
        ] {
            enc.encode(&[json!(date), json!(null), json!(null), json!(null)], &mut out).unwrap();
            assert_eq!(out, format!(r#"{{"d":"{sent}"}}"#), "{date}");
        }
        for bad in [json!("next tuesday"), json!(20260304)] {
            let why = enc.encode(&[bad, json!(null), json!(null), json!(null)], &mut out).unwrap_err();
            assert!(why.contains("'d'") && why.contains("date"), "{why}");
        }
        assert!(enc.encode(&[json!(null), json!("maybe"), json!(null), json!(null)], &mut out).is_err());
        assert!(enc.encode(&[json!(null), json!(null), json!("1,5"), json!(null)], &mut out).is_err());
        assert!(enc.encode(&[json!(null), json!(null), json!(null), json!({"a": 1})], &mut out).is_err());
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

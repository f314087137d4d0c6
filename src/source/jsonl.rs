//! Reading a segment from a JSON Lines file. Owns the line-to-row mapping: each non-blank line must be
//! one JSON object; values are kept as they are, nested objects and arrays included. The first object
//! defines the columns (its keys, in file order, for `Columns::All`) and must hold every requested
//! column; later objects may omit a column (it reads as null), and keys beyond the columns are ignored.
//! A file with no objects has no rows, and with `Columns::Only` its columns are taken as given, since
//! there is no object to check them against.
//! Like CSV, the file is read on a blocking thread feeding a small bounded channel, from the one descriptor opened
//! under the segment's [`Reach`].

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::confine::{self, Reach};
use super::{select_columns, Batcher, Columns, ReaderStream, Row, RowStream, SourceError, CHANNEL_BATCHES};

const READ_BUFFER: usize = 64 * 1024;

pub(super) async fn read(
    spec: String,
    path: PathBuf,
    columns: Columns,
    reach: Reach,
) -> Result<RowStream, SourceError> {
    let opening = {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || open(spec, &path, columns, &reach))
    };
    let opened =
        opening.await.map_err(|error| SourceError::ReaderFailed { spec: spec.clone(), cause: error.to_string() })??;

    let names = opened.picks.iter().map(|pick| pick.name.clone()).collect();
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let task = tokio::task::spawn_blocking(move || pump(opened, Batcher::new(tx)));
    Ok(RowStream { columns: names, batches: ReaderStream::boxed(spec, rx, task) })
}

/// How to take one column out of an object.
struct Pick {
    name: String,
    /// Whether a later column reads the same key, so this one must copy the value instead of taking it.
    shared: bool,
}

/// A file whose columns are settled, positioned after its first object.
struct Opened {
    lines: Lines,
    picks: Vec<Pick>,
    first: Option<Map<String, Value>>,
}

fn open(spec: String, path: &Path, columns: Columns, reach: &Reach) -> Result<Opened, SourceError> {
    let file = confine::open_file(&spec, path, reach)?;
    let mut lines = Lines { reader: BufReader::with_capacity(READ_BUFFER, file), buffer: Vec::new(), number: 0, spec };
    let first = lines.next_object()?;
    let available = match &first {
        Some(_) => key_order(lines.current(), &lines.spec)?,
        None => Vec::new(),
    };
    let names = match (&first, columns) {
        // An empty file cannot show which keys exist; it simply has no members.
        (None, Columns::Only(names)) => names,
        (_, columns) => select_columns(&available, columns)?.0,
    };
    let picks = names
        .iter()
        .enumerate()
        .map(|(i, name)| Pick { name: name.clone(), shared: names[i + 1..].contains(name) })
        .collect();
    Ok(Opened { lines, picks, first })
}

fn pump(opened: Opened, mut out: Batcher) {
    let Opened { mut lines, picks, first } = opened;
    let to_row = |mut object: Map<String, Value>| -> Row {
        picks
            .iter()
            .map(|pick| {
                let value = if pick.shared { object.get(&pick.name).cloned() } else { object.remove(&pick.name) };
                value.unwrap_or(Value::Null)
            })
            .collect()
    };
    if let Some(object) = first {
        if !out.blocking_push(to_row(object)) {
            return;
        }
    }
    let failure = loop {
        match lines.next_object() {
            Ok(Some(object)) => {
                if !out.blocking_push(to_row(object)) {
                    return;
                }
            }
            Ok(None) => break None,
            Err(error) => break Some(error),
        }
    };
    out.blocking_finish(failure);
}

/// The file, one line at a time, counting lines from 1 so errors can point at them.
struct Lines {
    reader: BufReader<File>,
    buffer: Vec<u8>,
    number: u64,
    spec: String,
}

impl Lines {
    /// The next object, skipping blank lines; `None` at the end of the file.
    fn next_object(&mut self) -> Result<Option<Map<String, Value>>, SourceError> {
        loop {
            self.buffer.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut self.buffer)
                .map_err(|source| SourceError::Io { spec: self.spec.clone(), source })?;
            if read == 0 {
                return Ok(None);
            }
            self.number += 1;
            if self.number == 1 && self.buffer.starts_with(b"\xEF\xBB\xBF") {
                self.buffer.drain(..3);
            }
            if self.buffer.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return match serde_json::from_slice::<Value>(&self.buffer) {
                Ok(Value::Object(object)) => Ok(Some(object)),
                Ok(other) => {
                    Err(self.malformed(format!("it holds {}, but each line must be one JSON object", kind_of(&other))))
                }
                Err(error) => Err(self.malformed(json_cause(&error))),
            };
        }
    }

    /// The text of the line last read.
    fn current(&self) -> &[u8] {
        &self.buffer
    }

    fn malformed(&self, cause: String) -> SourceError {
        SourceError::Malformed { spec: self.spec.clone(), line: self.number, cause }
    }
}

/// serde_json's message with its position made relative to the line (it always says "line 1").
fn json_cause(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(at) if error.column() > 0 => {
            format!("{} at column {}", &message[..at], error.column())
        }
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The keys of a JSON object in the order they are written. `serde_json::Map` sorts its keys, and
/// `All` should follow the file, so the first line is read once more just for its key order.
fn key_order(line: &[u8], spec: &str) -> Result<Vec<String>, SourceError> {
    struct Keys(Vec<String>);
    impl<'de> Deserialize<'de> for Keys {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_map(KeysVisitor)
        }
    }
    struct KeysVisitor;
    impl<'de> Visitor<'de> for KeysVisitor {
        type Value = Keys;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
            let mut keys: Vec<String> = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            Ok(Keys(keys))
        }
    }
    serde_json::from_slice::<Keys>(line).map(|keys| keys.0).map_err(|error| SourceError::ReaderFailed {
        spec: spec.to_owned(),
        cause: format!("a line parsed as an object failed to parse again: {error}"),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{read, SourceSpec};
    use super::*;
    use crate::source::Reach;
    use futures::StreamExt;
    use serde_json::json;

    fn file(contents: &[u8]) -> (tempfile::TempDir, SourceSpec) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.jsonl");
        std::fs::write(&path, contents).unwrap();
        (dir, SourceSpec::Jsonl { path })
    }

    #[tokio::test]
    async fn every_object_is_read_with_values_as_they_are_and_keys_in_file_order() {
        let (_dir, spec) = file(
            br#"{"email": "ada@example.com", "age": 36, "vip": true, "profile": {"tier": "gold"}, "tags": [1, "a"], "note": null}

{"email": "bob@example.com", "age": 41.5, "extra": "ignored"}
"#,
        );
        let stream = read(&spec, None, Columns::All, &Reach::Anywhere).await.unwrap();
        assert_eq!(stream.columns, vec!["email", "age", "vip", "profile", "tags", "note"]);
        assert_eq!(
            collect(stream).await.unwrap(),
            vec![
                vec![
                    json!("ada@example.com"),
                    json!(36),
                    json!(true),
                    json!({"tier": "gold"}),
                    json!([1, "a"]),
                    json!(null)
                ],
                vec![json!("bob@example.com"), json!(41.5), json!(null), json!(null), json!(null), json!(null)],
            ]
        );
    }

    #[tokio::test]
    async fn only_columns_come_back_in_the_requested_order_even_when_repeated() {
        let (_dir, spec) = file(b"{\"id\": 1, \"email\": \"a@example.com\", \"name\": \"A\"}\r\n");
        let stream = read(&spec, None, only(&["name", "id", "name"]), &Reach::Anywhere).await.unwrap();
        assert_eq!(stream.columns, vec!["name", "id", "name"]);
        assert_eq!(collect(stream).await.unwrap(), vec![vec![json!("A"), json!(1), json!("A")]]);
    }

    #[tokio::test]
    async fn a_column_missing_from_the_first_object_is_a_missing_column() {
        let (_dir, spec) = file(b"{\"id\": 1}\n{\"id\": 2, \"email\": \"b@example.com\"}\n");
        let error = read(&spec, None, only(&["email"]), &Reach::Anywhere).await.unwrap_err();
        match error {
            SourceError::MissingColumn { column, available } => {
                assert_eq!(column, "email");
                assert_eq!(available, vec!["id"]);
            }
            other => panic!("expected MissingColumn, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_line_that_is_not_an_object_is_malformed_at_its_line() {
        let (_dir, spec) = file(b"{\"id\": 1}\n\n[1, 2]\n{\"id\": 4}\n");
        let error = collect(read(&spec, None, Columns::All, &Reach::Anywhere).await.unwrap()).await.unwrap_err();
        assert!(matches!(error, SourceError::Malformed { line: 3, .. }), "{error:?}");
        assert!(error.to_string().contains("an array"), "{error}");
    }

    #[tokio::test]
    async fn broken_json_is_malformed_at_its_line_and_column() {
        let (_dir, spec) = file(b"{\"id\": 1}\n{\"id\": 2,}\n");
        let error = collect(read(&spec, None, Columns::All, &Reach::Anywhere).await.unwrap()).await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, SourceError::Malformed { line: 2, .. }), "{error:?}");
        assert!(message.contains("at column 10"), "{message}");
        assert!(!message.contains("line 1"), "{message}");
    }

    #[tokio::test]
    async fn a_bad_first_line_is_reported_before_any_row() {
        let (_dir, spec) = file(b"\xEF\xBB\xBF\"just a string\"\n");
        let error = read(&spec, None, Columns::All, &Reach::Anywhere).await.unwrap_err();
        assert!(matches!(error, SourceError::Malformed { line: 1, .. }), "{error:?}");
    }

    #[tokio::test]
    async fn an_empty_file_has_no_rows_and_keeps_the_requested_columns() {
        let (_dir, spec) = file(b"\n  \n");
        let stream = read(&spec, None, only(&["email"]), &Reach::Anywhere).await.unwrap();
        assert_eq!(stream.columns, vec!["email"]);
        assert!(collect(stream).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_missing_file_is_an_open_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SourceSpec::Jsonl { path: dir.path().join("gone.jsonl") };
        let error = read(&spec, None, Columns::All, &Reach::Anywhere).await.unwrap_err();
        assert!(matches!(error, SourceError::Open { .. }), "{error:?}");
        assert!(error.to_string().contains("gone.jsonl does not exist"), "{error}");
    }

    #[tokio::test]
    async fn a_large_file_streams_fully_and_dropping_it_closes_the_file() {
        let mut text = String::new();
        for i in 1..=120_000 {
            text.push_str(&format!("{{\"id\": {i}, \"email\": \"user{i}@example.com\"}}\n"));
        }
        let (_dir, spec) = file(text.as_bytes());
        let SourceSpec::Jsonl { path } = &spec else { unreachable!() };

        let mut batches = read(&spec, None, only(&["email"]), &Reach::Anywhere).await.unwrap().batches;
        let (mut count, mut last) = (0, None);
        while let Some(batch) = batches.next().await {
            let batch = batch.unwrap();
            count += batch.len();
            last = batch.last().cloned();
        }
        assert_eq!(count, 120_000);
        assert_eq!(last, Some(vec![json!("user120000@example.com")]));

        let mut stream = read(&spec, None, Columns::All, &Reach::Anywhere).await.unwrap();
        assert_eq!(stream.batches.next().await.unwrap().unwrap().len(), 1000);
        assert!(holds_open(path), "the reader waits, file open, for the consumer");
        drop(stream);
        assert!(released(path).await, "the file is still open");
    }
}

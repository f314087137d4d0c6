//! Reading a segment from a CSV file. Owns the header check and the record-to-row mapping: the first row
//! names the columns (a UTF-8 byte-order mark before it is ignored), every value is a string, and an
//! empty field (quoted or not) is null. A record whose field count differs from the header's is reported
//! with its line number rather than guessed at. The file is read on a blocking thread that hands batches
//! to the async side through a small bounded channel, so memory does not grow with the file. The file is opened
//! once, under the segment's [`Reach`], and only that descriptor is read.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use serde_json::Value;
use tokio::sync::mpsc;

use super::confine::{self, Reach};
use super::{select_columns, Batcher, Columns, ReaderStream, RowStream, SourceError, CHANNEL_BATCHES};

/// Read buffer; larger than the csv crate's 8 KiB default to cut system calls on big files.
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
    let mut opened =
        opening.await.map_err(|error| SourceError::ReaderFailed { spec: spec.clone(), cause: error.to_string() })??;

    let names = std::mem::take(&mut opened.names);
    let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
    let task = {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || pump(opened, &spec, Batcher::new(tx)))
    };
    Ok(RowStream { columns: names, batches: ReaderStream::boxed(spec, rx, task) })
}

/// A file whose header is read: the reader after it, the columns, and the same file again to find a failing
/// record's line (read by offset, never by the path again).
struct Opened {
    reader: ::csv::Reader<File>,
    names: Vec<String>,
    indices: Vec<usize>,
    lines: File,
}

fn open(spec: String, path: &std::path::Path, columns: Columns, reach: &Reach) -> Result<Opened, SourceError> {
    let file = confine::open_file(&spec, path, reach)?;
    let lines = file.try_clone().map_err(|source| SourceError::Io { spec: spec.clone(), source })?;
    let mut reader =
        ::csv::ReaderBuilder::new().has_headers(true).flexible(false).buffer_capacity(READ_BUFFER).from_reader(file);
    let header = reader.headers().map_err(|error| csv_error(&spec, &lines, error))?;
    if header.is_empty() {
        return Err(SourceError::Malformed {
            spec,
            line: 1,
            cause: "the file is empty, but a CSV source needs a header row naming its columns".into(),
        });
    }
    let available: Vec<String> = header.iter().map(str::to_owned).collect();
    let (names, indices) = select_columns(&available, columns)?;
    Ok(Opened { reader, names, indices, lines })
}

fn pump(opened: Opened, spec: &str, mut out: Batcher) {
    let Opened { mut reader, indices, lines, .. } = opened;
    let mut record = ::csv::StringRecord::new();
    let failure = loop {
        match reader.read_record(&mut record) {
            Ok(false) => break None,
            Ok(true) => {
                let row = indices
                    .iter()
                    .map(|&index| match &record[index] {
                        "" => Value::Null,
                        text => Value::String(text.to_owned()),
                    })
                    .collect();
                if !out.blocking_push(row) {
                    return;
                }
            }
            Err(error) => break Some(csv_error(spec, &lines, error)),
        }
    };
    out.blocking_finish(failure);
}

fn csv_error(spec: &str, file: &File, error: ::csv::Error) -> SourceError {
    let line = error.position().map_or(0, |position| record_line(file, position));
    let message = error.to_string();
    let cause = match error.into_kind() {
        ::csv::ErrorKind::Io(source) => return SourceError::Io { spec: spec.to_owned(), source },
        ::csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("it has {len} field(s), but the header has {expected_len}")
        }
        ::csv::ErrorKind::Utf8 { err, .. } => {
            format!("field {} is not valid UTF-8", err.field() + 1)
        }
        _ => message,
    };
    SourceError::Malformed { spec: spec.to_owned(), line, cause }
}

/// The line a failing record starts on. The csv crate reports where it stood before skipping blank
/// lines, so a record after a blank line would be blamed on the blank one; count the skipped newlines
/// from that byte on. Only runs on an error, so re-reading a little of the file costs nothing.
fn record_line(file: &File, position: &::csv::Position) -> u64 {
    let mut newlines = 0;
    let mut chunk = [0u8; 4096];
    let mut at = position.byte();
    'reading: while let Ok(read @ 1..) = file.read_at(&mut chunk, at) {
        for &byte in &chunk[..read] {
            match byte {
                b'\n' => newlines += 1,
                b'\r' => {}
                _ => break 'reading,
            }
        }
        at += read as u64;
    }
    position.line() + newlines
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
        let path = dir.path().join("members.csv");
        std::fs::write(&path, contents).unwrap();
        (dir, SourceSpec::Csv { path })
    }

    #[tokio::test]
    async fn every_record_is_read_as_strings_with_empty_fields_as_null() {
        let (_dir, spec) = file(
            b"email,first_name,score\nada@example.com,Ada,10\nbob@example.com,,\"\"\n\"c,d@example.com\",\"Chris \"\"C\"\"\",3.5\n",
        );
        let stream = read(&spec, None, Columns::All, &Reach::Anywhere).await.unwrap();
        assert_eq!(stream.columns, vec!["email", "first_name", "score"]);
        assert_eq!(
            collect(stream).await.unwrap(),
            vec![
                vec![json!("ada@example.com"), json!("Ada"), json!("10")],
                vec![json!("bob@example.com"), json!(null), json!(null)],
                vec![json!("c,d@example.com"), json!("Chris \"C\""), json!("3.5")],
            ]
        );
    }

    #[tokio::test]
    async fn a_byte_order_mark_before_the_header_is_ignored() {
        let (_dir, spec) = file(b"\xEF\xBB\xBFemail,name\r\nada@example.com,Ada\r\n");
        let stream = read(&spec, None, only(&["email"]), &Reach::Anywhere).await.unwrap();
        assert_eq!(stream.columns, vec!["email"]);
        assert_eq!(collect(stream).await.unwrap(), vec![vec![json!("ada@example.com")]]);
    }

    #[tokio::test]
    async fn only_columns_come_back_in_the_requested_order() {
        let (_dir, spec) = file(b"id,email,name\n1,ada@example.com,Ada\n");
        let stream = read(&spec, None, only(&["name", "id"]), &Reach::Anywhere).await.unwrap();
        assert_eq!(stream.columns, vec!["name", "id"]);
        assert_eq!(collect(stream).await.unwrap(), vec![vec![json!("Ada"), json!("1")]]);
    }

    #[tokio::test]
    async fn a_missing_column_is_reported_even_for_a_header_only_file() {
        let (_dir, spec) = file(b"id,email\n");
        let error = read(&spec, None, only(&["email", "phone"]), &Reach::Anywhere).await.unwrap_err();
        match error {
            SourceError::MissingColumn { column, available } => {
                assert_eq!(column, "phone");
                assert_eq!(available, vec!["id", "email"]);
            }
            other => panic!("expected MissingColumn, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_record_with_the_wrong_field_count_is_malformed_at_its_line() {
        let (_dir, spec) = file(b"email,name\na@example.com,A\n\r\n\nb@example.com,B,extra\n");
        let stream = read(&spec, None, Columns::All, &Reach::Anywhere).await.unwrap();
        let error = collect(stream).await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, SourceError::Malformed { line: 5, .. }), "{error:?}");
        assert!(message.contains("3 field(s), but the header has 2"), "{message}");
    }

    #[tokio::test]
    async fn invalid_utf8_is_malformed_at_its_line() {
        let (_dir, spec) = file(b"email,name\na@example.com,A\n\nb@example.com,\xFF\n");
        let error = collect(read(&spec, None, Columns::All, &Reach::Anywhere).await.unwrap()).await.unwrap_err();
        assert!(matches!(error, SourceError::Malformed { line: 4, .. }), "{error:?}");
        assert!(error.to_string().contains("field 2"), "{error}");
    }

    #[tokio::test]
    async fn an_empty_file_is_malformed_because_it_has_no_header() {
        let (_dir, spec) = file(b"");
        let error = read(&spec, None, Columns::All, &Reach::Anywhere).await.unwrap_err();
        assert!(matches!(error, SourceError::Malformed { line: 1, .. }), "{error:?}");
        assert!(error.to_string().contains("header row"), "{error}");
    }

    #[tokio::test]
    async fn a_missing_file_is_an_open_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SourceSpec::Csv { path: dir.path().join("gone.csv") };
        let error = read(&spec, None, Columns::All, &Reach::Anywhere).await.unwrap_err();
        assert!(matches!(error, SourceError::Open { .. }), "{error:?}");
        assert!(error.to_string().contains("gone.csv does not exist"), "{error}");
    }

    #[tokio::test]
    async fn a_large_file_streams_fully_in_batches_of_a_thousand() {
        let mut text = String::from("id,email\n");
        for i in 1..=50_500 {
            text.push_str(&format!("{i},user{i}@example.com\n"));
        }
        let (_dir, spec) = file(text.as_bytes());
        let mut batches = read(&spec, None, Columns::All, &Reach::Anywhere).await.unwrap().batches;
        let mut sizes = Vec::new();
        let mut last = None;
        while let Some(batch) = batches.next().await {
            let batch = batch.unwrap();
            sizes.push(batch.len());
            last = batch.last().cloned();
        }
        assert_eq!(sizes.iter().sum::<usize>(), 50_500);
        assert_eq!(sizes.len(), 51);
        assert_eq!(last, Some(vec![json!("50500"), json!("user50500@example.com")]));
    }

    #[tokio::test]
    async fn dropping_the_stream_closes_the_file() {
        let mut text = String::from("id\n");
        for i in 0..200_000 {
            text.push_str(&format!("{i}\n"));
        }
        let (_dir, spec) = file(text.as_bytes());
        let SourceSpec::Csv { path } = &spec else { unreachable!() };
        let mut stream = read(&spec, None, Columns::All, &Reach::Anywhere).await.unwrap();
        assert_eq!(stream.batches.next().await.unwrap().unwrap().len(), 1000);
        assert!(holds_open(path), "the reader waits, file open, for the consumer");
        drop(stream);
        assert!(released(path).await, "the file is still open");
    }
}

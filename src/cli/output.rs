//! Printing: tables for people, JSON for scripts, and time formatting shared by the handlers.

use chrono::{DateTime, Utc};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Prints a command's one JSON document (a failed command's error document is printed by `main`). Times in it
    /// must be `DateTime<Utc>` values, which serialise as RFC 3339, never `when(..)` text.
    pub fn json<T: Serialize + ?Sized>(&self, value: &T) {
        let mut text = serde_json::to_string_pretty(value).expect("serialisable output");
        text.push('\n');
        let _ = print_raw(text.as_bytes());
    }

    pub fn table(&self, header: &[&str], rows: Vec<Vec<String>>) {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic).set_header(header);
        for r in rows {
            t.add_row(r);
        }
        let _ = print_raw(format!("{t}\n").as_bytes());
    }
}

/// Writes to stdout. A reader that stops early (`| head`) is not an error, and never a panic as with `println!`.
pub fn print_raw(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(bytes) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

pub fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn opt_when(t: &Option<DateTime<Utc>>) -> String {
    t.as_ref().map_or_else(|| "-".into(), when)
}

pub fn seconds(s: f64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(s.round().max(0.0) as u64)).to_string()
}

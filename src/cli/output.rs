//! Printing: tables for people, JSON for scripts, and time formatting shared by the handlers.

use chrono::{DateTime, Utc};
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ColumnConstraint, ContentArrangement, Table, Width};
use serde::Serialize;
use unicode_width::UnicodeWidthStr;

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

    /// Prints a table for people. In a terminal it is wrapped to the terminal's width, between words only: each
    /// column is at least as wide as its longest word, so a table whose words do not fit is wider than the
    /// terminal rather than cut mid-word. A terminal that reports no width (0x0, as some containers' do), or
    /// output that is no terminal, sets no limit.
    pub fn table(&self, header: &[&str], rows: Vec<Vec<String>>) {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED).set_header(header);
        let mut longest_word: Vec<usize> = header.iter().map(|h| longest_word_width(h)).collect();
        for r in rows {
            for (longest, cell) in longest_word.iter_mut().zip(&r) {
                *longest = (*longest).max(longest_word_width(cell));
            }
            t.add_row(r);
        }
        if let Some(terminal) = t.width().filter(|w| *w > 0) {
            // comfy-table honours the lower boundaries only while they fit: a table that needs more than the
            // terminal is given what it needs (each column padded by one on either side, a border between).
            let needed: usize = longest_word.iter().map(|w| w + 3).sum::<usize>() + 1;
            t.set_content_arrangement(ContentArrangement::Dynamic)
                .set_width(terminal.max(u16::try_from(needed).unwrap_or(u16::MAX)));
            for (column, longest) in t.column_iter_mut().zip(longest_word) {
                // A column's width counts its padding.
                let width = u16::try_from(longest + 2).unwrap_or(u16::MAX);
                column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(width)));
            }
        }
        let _ = print_raw(format!("{t}\n").as_bytes());
    }
}

/// The terminal columns the widest space-separated word of `text` takes.
fn longest_word_width(text: &str) -> usize {
    text.split([' ', '\n']).map(UnicodeWidthStr::width).max().unwrap_or(0)
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

//! The words of a notification: its one-line summary, the Slack message, and the email's subject, plain text and
//! HTML, all from the event document (so a retry reads exactly like the first attempt).

use super::{Counts, DocumentKind, EventDocument};
use crate::store::EventKind;

/// One line saying what happened.
pub(super) fn summary(
    kind: EventKind,
    export: &str,
    connection: Option<&str>,
    counts: &Counts,
    lists: &[String],
    reminder: bool,
) -> String {
    let still = if reminder { "still: " } else { "" };
    let line = match kind {
        EventKind::Failed => format!("Export \"{export}\" failed"),
        EventKind::Guard => {
            format!("Export \"{export}\" was stopped by a guard before changing anyone; it waits for someone to decide")
        }
        EventKind::Recovered => format!("Export \"{export}\" recovered: its run succeeded"),
        EventKind::Rejected => format!(
            "Export \"{export}\": {} of the members its run planned to send were rejected or invalid",
            counts.rejected + counts.invalid
        ),
        EventKind::Key => format!(
            "Iterable refused the key of connection \"{}\" (revoked or replaced); its exports cannot run",
            connection.unwrap_or("?")
        ),
        EventKind::List => format!(
            "Export \"{export}\": list(s) {} were deleted in Iterable and recreated",
            lists.iter().map(|l| format!("\"{l}\"")).collect::<Vec<_>>().join(", ")
        ),
        EventKind::Drift => format!(
            "Export \"{export}\": a verify found {} member(s) that differ between its lists and its segments",
            counts.differing.unwrap_or(0)
        ),
    };
    format!("{still}{line}")
}

/// The subject of an email: `[segment-exporter] export "NAME" failed` and the like.
pub fn email_subject(d: &EventDocument) -> String {
    let export = d.export.as_deref().unwrap_or("?");
    let what = match d.kind {
        DocumentKind::Failed => format!("export \"{export}\" failed"),
        DocumentKind::Guard => format!("export \"{export}\" stopped by a guard"),
        DocumentKind::Recovered => format!("export \"{export}\" recovered"),
        DocumentKind::Rejected => format!("export \"{export}\" had members rejected"),
        DocumentKind::Key => format!("connection \"{}\": key refused", d.connection.as_deref().unwrap_or("?")),
        DocumentKind::List => format!("export \"{export}\": list recreated"),
        DocumentKind::Drift => format!("export \"{export}\": lists differ from segments"),
        DocumentKind::Test => "test message".to_string(),
    };
    let still = if d.reminder { " (reminder)" } else { "" };
    format!("[segment-exporter] {what}{still}")
}

/// The facts of the event, one per line, as (label, value).
fn facts(d: &EventDocument) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(e) = &d.export {
        out.push(("Export", e.clone()));
    }
    if let Some(c) = &d.connection {
        out.push(("Connection", c.clone()));
    }
    if let Some(r) = &d.run {
        out.push(("Run", format!("#{} ({}, {})", r.id, r.status, r.trigger)));
    }
    if let Some(c) = &d.counts {
        if let Some(n) = c.differing {
            out.push(("Differing members", n.to_string()));
        } else {
            out.push((
                "Counts",
                format!(
                    "added {}, updated {}, already there {}, removed {}, rejected {}, invalid {} (planned: {} to add, {} to update, {} to remove)",
                    c.added,
                    c.updated,
                    c.already_on_list,
                    c.removed,
                    c.rejected,
                    c.invalid,
                    c.planned_add,
                    c.planned_update,
                    c.planned_remove
                ),
            ));
        }
    }
    if let Some(e) = &d.error {
        out.push(("Error", e.clone()));
    }
    if let Some(url) = d.run.as_ref().and_then(|r| r.url.as_ref()) {
        out.push(("See", url.clone()));
    }
    out.push(("Event", format!("{} ({})", d.id, d.time.to_rfc3339())));
    out
}

/// The plain-text body of an email.
pub fn text_body(d: &EventDocument) -> String {
    let mut out = format!("{}.\n\n", d.summary);
    for (label, value) in facts(d) {
        out.push_str(&format!("{label}: {value}\n"));
    }
    out
}

/// The HTML body of an email.
pub(super) fn html_body(d: &EventDocument) -> String {
    let rows: String = facts(d)
        .into_iter()
        .map(|(label, value)| {
            let value = match d.run.as_ref().and_then(|r| r.url.as_ref()) {
                Some(url) if label == "See" => format!("<a href=\"{}\">{}</a>", escape(url), escape(url)),
                _ => escape(&value),
            };
            format!("<tr><th align=\"left\">{label}</th><td>{value}</td></tr>")
        })
        .collect();
    format!(
        "<!doctype html><html><body><p><strong>{}.</strong></p><table>{rows}</table></body></html>",
        escape(&d.summary)
    )
}

/// A readable Slack message (mrkdwn).
pub fn slack_text(d: &EventDocument) -> String {
    let icon = match d.kind {
        DocumentKind::Recovered => ":white_check_mark:",
        DocumentKind::Test => ":wave:",
        DocumentKind::List | DocumentKind::Drift | DocumentKind::Rejected => ":warning:",
        _ => ":rotating_light:",
    };
    let mut out = format!("{icon} *{}*", slack_escape(&d.summary));
    for (label, value) in facts(d) {
        if label == "See" {
            out.push_str(&format!("\n<{}|Open in the console>", value));
        } else {
            out.push_str(&format!("\n*{label}:* {}", slack_escape(&value)));
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Slack's own escaping: only these three characters.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

//! The HTML frames of the console's pages (maud: every value is escaped). A frame holds the navigation, the
//! headings, the forms with the labels users and tests find controls by, and empty places marked with ids that
//! `assets/app.js` fills from the API. The wording follows the product the console replaces.

use maud::{html, Markup, DOCTYPE};

use crate::access::{self, Verdict};
use crate::api::Caller;

/// Which page a frame is.
pub enum Page {
    Exports,
    NewExport,
    Export(String),
    Connections,
    NewConnection,
    Connection(String),
    Users,
    Notifications,
    Audit,
    Account,
}

impl Page {
    fn id(&self) -> &'static str {
        match self {
            Page::Exports => "exports",
            Page::NewExport => "new-export",
            Page::Export(_) => "export",
            Page::Connections => "connections",
            Page::NewConnection => "new-connection",
            Page::Connection(_) => "connection",
            Page::Users => "users",
            Page::Notifications => "notifications",
            Page::Audit => "audit",
            Page::Account => "account",
        }
    }

    fn title(&self) -> String {
        match self {
            Page::Exports => "Exports".into(),
            Page::NewExport => "Add destination".into(),
            Page::Export(name) => format!("Export {name}"),
            Page::Connections => "Connections".into(),
            Page::NewConnection => "Add connection".into(),
            Page::Connection(name) => format!("Connection {name}"),
            Page::Users => "Users".into(),
            Page::Notifications => "Notifications".into(),
            Page::Audit => "Audit".into(),
            Page::Account => "Your account".into(),
        }
    }

    /// The navigation entry the page belongs to.
    fn section(&self) -> &'static str {
        match self {
            Page::Exports | Page::NewExport | Page::Export(_) => "exports",
            Page::Connections | Page::NewConnection | Page::Connection(_) => "connections",
            Page::Users => "users",
            Page::Notifications => "notifications",
            Page::Audit => "audit",
            Page::Account => "account",
        }
    }

    /// The thing the page is about, for the script.
    fn subject(&self) -> Option<&str> {
        match self {
            Page::Export(name) | Page::Connection(name) => Some(name),
            _ => None,
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · segment-exporter" }
            link rel="icon" href="data:,";
            link rel="stylesheet" href="/assets/app.css";
            script src="/assets/app.js" defer {}
        }
    }
}

fn nav(c: &Caller, section: &str) -> Markup {
    let admin = access::manage_users(&c.actor) == Verdict::Allow;
    let mut entries = vec![("exports", "/exports", "Exports")];
    if admin {
        entries.extend([
            ("connections", "/connections", "Connections"),
            ("users", "/users", "Users"),
            ("notifications", "/notifications", "Notifications"),
            ("audit", "/audit", "Audit"),
        ]);
    }
    html! {
        header.top {
            a.brand href="/exports" { "segment-exporter" }
            nav aria-label="Main" {
                @for (id, href, label) in entries {
                    @if id == section {
                        a href=(href) aria-current="page" { (label) }
                    } @else {
                        a href=(href) { (label) }
                    }
                }
            }
            div.who {
                a #who-name href="/account" title="Your account and where you are signed in" { (c.actor.name()) }
                " "
                span.role { (if admin { "administrator" } else { "contributor" }) }
                button #sign-out type="button" { "Sign out" }
            }
        }
    }
}

/// A page's whole frame for a signed-in user.
pub fn frame(c: &Caller, page: Page) -> Markup {
    let title = page.title();
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(&title))
            body data-page=(page.id()) data-subject=[page.subject()] {
                (nav(c, page.section()))
                main {
                    div #notice role="status" aria-live="polite" {}
                    (body(&page))
                }
            }
        }
    }
}

/// A page that only says something (not found, an error).
pub fn message(c: Option<&Caller>, title: &str, text: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-page="message" {
                @if let Some(c) = c { (nav(c, "")) }
                main {
                    h1 { (title) }
                    p { (text) }
                    p { a href="/exports" { "Back to the exports" } }
                }
            }
        }
    }
}

pub fn sign_in(next: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body data-page="sign-in" {
                main.narrow {
                    h1 { "segment-exporter" }
                    p { "Sign in to keep your Iterable lists in step with your segments." }
                    form #sign-in data-next=(next) {
                        label { "User name" input name="user" autocomplete="username" required autofocus; }
                        label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                        p.error role="alert" {}
                        button type="submit" { "Sign in" }
                    }
                    p.hint { "An administrator sets your password with " code { "segment-exporter user password" } "." }
                }
            }
        }
    }
}

fn body(page: &Page) -> Markup {
    match page {
        Page::Exports => exports(),
        Page::NewExport => new_export(),
        Page::Export(name) => export(name),
        Page::Connections => connections(),
        Page::NewConnection => new_connection(),
        Page::Connection(name) => connection(name),
        Page::Users => users(),
        Page::Notifications => notifications(),
        Page::Audit => audit(),
        Page::Account => account(),
    }
}

fn account() -> Markup {
    html! {
        h1 { "Your account" }
        section {
            h2 { "Where you are signed in" }
            p.hint { "Each browser you signed in with. End any you do not recognise, or have left signed in elsewhere." }
            div #sessions-list { p.loading { "Loading…" } }
            p.error role="alert" {}
            button #sign-out-everywhere.danger type="button" { "Sign out everywhere" }
        }
    }
}

fn exports() -> Markup {
    html! {
        div.heading {
            h1 { "Exports" }
            a.button href="/exports/new" { "Add destination" }
        }
        div #exports-list { p.loading { "Loading…" } }
    }
}

fn new_export() -> Markup {
    html! {
        h1 { "Add destination" }
        form #new-export {
            section {
                label { "Connection for export" select #connection name="connection" required {} }
                p #no-connection.warning hidden {
                    "No Iterable connection is open to you yet. An administrator adds connections under "
                    "Connections and chooses who can use each one; ask one to open a connection to contributors."
                }
                label { "Export name" input name="name" required maxlength="200" placeholder="e.g. vip-to-iterable"; }
            }
            section {
                h2 { "Segments to export" }
                p.hint { "Each segment keeps an Iterable list of the same name in step with its members." }
                div #segments { p.loading { "Loading…" } }
            }
            section {
                h2 { "Data matching" }
                p.hint { "Which column of your segments holds each member's identity in Iterable." }
                label #email-field { "Email" input name="email_field" list="columns" required placeholder="email"; }
                label #user-id-field hidden { "User ID" input name="user_id_field" list="columns"; }
                datalist #columns {}
                p #columns-hint.hint { "Choose the segments first: their columns are offered here." }
            }
            section {
                h2 { "Extra fields" }
                label {
                    "Extra fields"
                    input name="fields" placeholder="first_name=firstName, tier, lifetime_value:double";
                }
                p.hint { "Columns sent as user fields: COLUMN, COLUMN=ITERABLE_FIELD, with an optional :TYPE." }
                label { "Schedule" input name="schedule" value="refresh" required; }
                p.hint { "refresh: on every scheduled refresh of the service; or a cron expression of its own." }
            }
            p.error role="alert" {}
            p.note { "Saving does not run the export: run it from its page, or wait for the next refresh." }
            button type="submit" { "Save" }
        }
    }
}

fn export(name: &str) -> Markup {
    html! {
        div.heading {
            h1 { (name) }
            div.actions {
                button #run type="button" { "Run" }
                button #preview type="button" { "Preview" }
                button #verify type="button" { "Verify" }
                button #remove-export.danger type="button" { "Remove" }
            }
        }
        div #run-area {}
        p #last-verify.hint hidden {}
        dl #export-details.details {}
        section {
            h2 { "Run history" }
            div #run-history { p.loading { "Loading…" } }
        }
        details #export-edit {
            summary { "Edit" }
            form #edit-export {
                label { "Schedule" input name="schedule"; }
                label { "Add extra fields" input name="add_fields" placeholder="first_name=firstName, tier"; }
                div #current-fields.choices {}
                p.error role="alert" {}
                button type="submit" { "Save changes" }
            }
        }
        section {
            h2 { "Notifications" }
            p.hint {
                "Channels told when this export fails, is stopped by a guard, or recovers (and of the other events "
                "checked). An administrator adds channels under Notifications."
            }
            div #export-notify { p.loading { "Loading…" } }
            form #add-export-notify {
                label { "Channel" select #notify-channel name="channel" required {} }
                div #notify-events.choices {}
                p.error role="alert" {}
                button type="submit" { "Notify" }
            }
        }
        section {
            h2 { "Export users" }
            p.hint { "Export users may see, edit, run and remove this export." }
            ul #export-users {}
            form #add-export-user {
                label { "Add export user" input name="user" required; }
                button type="submit" { "Add" }
            }
        }
    }
}

fn connections() -> Markup {
    html! {
        div.heading {
            h1 { "Connections" }
            a.button href="/connections/new" { "Add connection" }
        }
        div #connections-list { p.loading { "Loading…" } }
    }
}

/// The notice agreed to before personal data leaves for Iterable.
const PRIVACY_NOTICE: &str = "Exports on this connection send the personal data of your segments' members (email \
    addresses, user ids and the fields you choose) to Iterable, which processes it under your agreement with \
    Iterable and in the data centre of the region you choose. Make sure your organisation may share this data with \
    Iterable for marketing, and that members who objected to it are not in the segments you export.";

fn new_connection() -> Markup {
    html! {
        h1 { "Add connection" }
        section #destinations {
            h2 { "Choose a destination" }
            button #choose-iterable.card type="button" { "Iterable" }
        }
        form #new-connection hidden {
            h2 { "Iterable" }
            label { "Display name" input name="name" required maxlength="200"; }
            label {
                "Who can use this connection"
                select name="usable_by" {
                    option value="admins" selected { "Administrators" }
                    option value="contributors" { "Administrators and contributors" }
                }
            }
            label {
                "Region"
                select name="region" {
                    option value="us" selected { "US" }
                    option value="eu" { "EU" }
                }
            }
            label {
                "Project type"
                select name="project_type" {
                    option value="hybrid" selected { "Hybrid (email or user ID)" }
                    option value="email" { "Email-based" }
                    option value="userid" { "UserID-based" }
                }
            }
            details {
                summary { "Advanced" }
                label { "Base URL" input name="base_url" type="url" placeholder="https://api.iterable.com"; }
                p.hint { "For a proxy or the built-in sandbox; it overrides the region." }
            }
            label { "API key" input name="api_key" type="password" autocomplete="off" required; }
            section.privacy {
                h3 { "Data privacy and compliance" }
                p { (PRIVACY_NOTICE) }
                label.check { input name="accept_data_privacy" type="checkbox"; "I agree" }
            }
            div.connect {
                button #connect type="button" { "Connect" }
                p #connect-result role="status" {}
            }
            label.check { input name="add_me_as_export_user" type="checkbox" checked; "Add yourself as export user" }
            p.error role="alert" {}
            button #save-connection type="submit" disabled { "Save" }
        }
    }
}

fn connection(name: &str) -> Markup {
    html! {
        div.heading {
            h1 { (name) }
            div.actions { button #remove-connection.danger type="button" { "Remove" } }
        }
        dl #connection-details.details {}
        section {
            h2 { "Access" }
            form #usable-by {
                label {
                    "Who can use this connection"
                    select name="usable_by" {
                        option value="admins" { "Administrators" }
                        option value="contributors" { "Administrators and contributors" }
                    }
                }
                button type="submit" { "Save" }
            }
        }
        section {
            h2 { "Export user" }
            p.hint { "Scheduled runs on this connection run on behalf of its export user, an administrator." }
            button #become-export-user type="button" { "Make me the export user" }
        }
        section {
            h2 { "Rotate key" }
            form #rotate-key {
                label { "New API key" input name="api_key" type="password" autocomplete="off" required; }
                button type="submit" { "Rotate key" }
            }
        }
        dialog #remove-dialog {
            form method="dialog" {
                h2 { "Remove this connection?" }
                p { "Runs in flight on it are stopped first. What should happen to its exports?" }
                label.check { input type="radio" name="exports" value="detach" checked; "Keep them, without a connection" }
                label.check { input type="radio" name="exports" value="remove"; "Remove them too" }
                div.actions {
                    button value="cancel" { "Cancel" }
                    button #confirm-remove.danger value="remove" { "Remove connection" }
                }
            }
        }
        p.error role="alert" {}
    }
}

fn users() -> Markup {
    html! {
        h1 { "Users" }
        div #users-list { p.loading { "Loading…" } }
        section {
            h2 { "Add user" }
            form #add-user {
                label { "User name" input name="name" required; }
                label {
                    "Role"
                    select name="role" {
                        option value="contributor" selected { "Contributor" }
                        option value="admin" { "Administrator" }
                    }
                }
                p.error role="alert" {}
                button type="submit" { "Add user" }
            }
            div #new-token {}
        }
    }
}

fn notifications() -> Markup {
    html! {
        h1 { "Notifications" }
        p.hint {
            "Channels that exports tell when a run fails, a guard stops one, or it recovers: once per change of "
            "state, with a reminder now and then while it goes on. Subscribe an export on its page."
        }
        div #channels-list { p.loading { "Loading…" } }
        section {
            h2 { "Add channel" }
            form #add-channel {
                label { "Name" input name="name" required maxlength="200"; }
                label {
                    "Kind"
                    select name="kind" {
                        option value="webhook" selected { "Webhook (signed JSON)" }
                        option value="slack" { "Slack incoming webhook" }
                        option value="email" { "Email" }
                    }
                }
                label {
                    "URL or addresses"
                    input name="target" required placeholder="https://hooks.example.com/… or ops@example.com, oncall@example.com";
                }
                p.hint { "URLs are stored sealed and never shown again. Email goes through [smtp] in the config." }
                label {
                    "Usable by"
                    select name="usable_by" {
                        option value="admins" selected { "Administrators" }
                        option value="contributors" { "Contributors too (errors worded as they see them)" }
                    }
                }
                p.error role="alert" {}
                button type="submit" { "Add channel" }
            }
            div #new-secret {}
        }
        section {
            h2 { "Deliveries" }
            div #deliveries { p.hint { "Choose a channel's Deliveries to see what it was sent." } }
        }
    }
}

fn audit() -> Markup {
    html! {
        h1 { "Audit" }
        form #audit-filter {
            label { "User" input name="user" placeholder="everyone"; }
            button type="submit" { "Filter" }
        }
        div #audit-list { p.loading { "Loading…" } }
    }
}

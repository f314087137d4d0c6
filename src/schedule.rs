//! Export schedules: `refresh` (the daemon's refresh schedule), `off` (on demand only) or a cron expression read
//! exactly as tokio-cron-scheduler reads it (croner, seconds field required, day-of-month and day-of-week both
//! honoured), so what `export add` accepts is what the daemon runs.

use chrono::{DateTime, TimeZone, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// An export's schedule as the user wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Refresh,
    Off,
    Cron(String),
}

/// Parses a cron expression the way tokio-cron-scheduler does.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    CronParser::builder().seconds(Seconds::Required).dom_and_dow(true).build().parse(expr.trim()).map_err(|e| {
        format!(
            "'{expr}' is not a valid cron expression ({e}). Write six fields with seconds first, e.g. \
             \"0 30 2 * * *\" for 02:30:00 every day or \"0 */15 * * * *\" every 15 minutes"
        )
    })
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        match text.trim() {
            "refresh" => Ok(Schedule::Refresh),
            "off" => Ok(Schedule::Off),
            expr => parse_cron(expr).map(|_| Schedule::Cron(expr.to_string())),
        }
    }

    /// The next time this schedule fires after `after`, given the daemon's refresh cron, in time zone `tz`.
    pub fn next_after<Tz: TimeZone>(&self, refresh: Option<&str>, after: &DateTime<Tz>) -> Option<DateTime<Utc>> {
        let expr = match self {
            Schedule::Off => return None,
            Schedule::Refresh => refresh?,
            Schedule::Cron(expr) => expr,
        };
        let cron = parse_cron(expr).ok()?;
        cron.find_next_occurrence(after, false).ok().map(|t| t.with_timezone(&Utc))
    }
}

/// When an export runs next on its schedule, by the daemon's settings (refresh schedule, time zone); None when it
/// is off, disabled, or its schedule does not parse.
pub fn next_run(export: &crate::store::Export, daemon: &crate::config::DaemonConfig) -> Option<DateTime<Utc>> {
    if !export.enabled || export.connection_id.is_none() {
        return None;
    }
    let tz = daemon.tz().unwrap_or(chrono_tz::UTC);
    Schedule::parse(&export.schedule).ok()?.next_after(Some(&daemon.refresh_schedule), &Utc::now().with_timezone(&tz))
}

/// The scheduled time a cron tick firing now belongs to: the expression's latest time at or before now (give or
/// take a second of lateness), so that every process sharing a store names the same tick the same way.
pub fn due_time(expr: &str, tz: chrono_tz::Tz) -> Option<DateTime<Utc>> {
    use chrono::Timelike;
    let cron = parse_cron(expr).ok()?;
    // Whole seconds: a cron's times are, and the clocks that fire the tick are not (croner keeps the fraction).
    let now = (Utc::now() + chrono::TimeDelta::seconds(1)).with_nanosecond(0)?.with_timezone(&tz);
    cron.find_previous_occurrence(&now, true).ok().and_then(|t| t.with_timezone(&Utc).with_nanosecond(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_with_seconds_are_accepted_and_five_field_ones_explained() {
        assert_eq!(Schedule::parse("refresh").unwrap(), Schedule::Refresh);
        assert_eq!(Schedule::parse("off").unwrap(), Schedule::Off);
        assert!(matches!(Schedule::parse("0 30 2 * * *").unwrap(), Schedule::Cron(_)));
        assert!(matches!(Schedule::parse("*/10 * * * * *").unwrap(), Schedule::Cron(_)));
        let err = Schedule::parse("every day").unwrap_err();
        assert!(err.contains("six fields"), "{err}");
        assert!(Schedule::parse("61 * * * * *").is_err());
    }

    #[test]
    fn a_tick_is_named_by_its_scheduled_second_whatever_the_fraction_of_the_clock_that_fired_it() {
        use chrono::Timelike;
        let due = due_time("*/5 * * * * *", chrono_tz::UTC).unwrap();
        assert_eq!(due.nanosecond(), 0);
        assert_eq!(due.second() % 5, 0);
        assert!(Utc::now() - due < chrono::TimeDelta::seconds(6));
    }

    #[test]
    fn the_next_run_follows_the_expression() {
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 2, 0, 0).unwrap();
        let next = Schedule::parse("0 30 2 * * *").unwrap().next_after(None, &at).unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 1, 1, 2, 30, 0).unwrap());
        assert_eq!(Schedule::Off.next_after(Some("0 0 * * * *"), &at), None);
        assert_eq!(Schedule::Refresh.next_after(None, &at), None);
    }
}

//! Cron expressions and tick maths in a time zone. Pure: every function takes the instant it reasons about, so
//! tests control the clock.
//!
//! Ticks are found on the naive local wall clock (the `cron` crate iterates a UTC clock, which has no daylight
//! saving, so it serves as a plain calendar) and each local tick is then placed on the time line:
//! - an ordinary local time maps to its one instant;
//! - an ambiguous local time (the repeated hour when clocks go back) maps to its earlier instant, so it fires once;
//! - a local time that does not exist (the skipped hour when clocks go forward) maps to the first valid instant
//!   after it, the end of the gap.
//!
//! That mapping never goes backwards in time as the local time grows, which is what lets [`Timetable::next_after`]
//! and [`Timetable::latest_at_or_before`] search the local calendar and stop at the first hit.

use std::str::FromStr;

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use super::{Error, Result};
use crate::queue::FieldError;

/// Upper bound on local candidates examined per search; a search only skips candidates inside one repeated hour
/// (at most 3 600 for a per-second schedule), so this is never reached by a well-formed zone.
const MAX_CANDIDATES: usize = 100_000;

/// Longest daylight-saving gap searched, in minutes (Samoa skipped a whole day in 2011).
const MAX_GAP_MINUTES: i64 = 48 * 60;

/// A parsed cron expression together with its time zone: everything needed to compute ticks.
#[derive(Debug, Clone)]
pub struct Timetable {
    schedule: ::cron::Schedule,
    tz: Tz,
}

/// Parses a cron expression of 5 fields (minute hour day-of-month month day-of-week) or 6 (a leading seconds
/// field), with the usual day-of-week numbering (0 or 7 = Sunday, 1 = Monday), or one of the macros `@yearly`
/// (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`) and `@hourly`. Errors name the field `/cron` and
/// quote the expression as the user wrote it, naming the cron field at fault and its bounds.
pub fn parse_cron(expr: &str) -> Result<::cron::Schedule> {
    let invalid = |msg: String| Error::Invalid(vec![FieldError::new("/cron", msg)].into());
    let expanded = match expr.trim() {
        m if m.starts_with('@') => match macro_expansion(m) {
            Some(e) => e,
            None => {
                return Err(invalid(format!(
                    "unknown cron macro {m:?}: use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
                )))
            }
        },
        _ => expr,
    };
    let fields: Vec<&str> = expanded.split_whitespace().collect();
    let (seconds, rest) = match fields.len() {
        5 => ("0", &fields[..]),
        6 => (fields[0], &fields[1..]),
        n => {
            return Err(invalid(format!(
                "{expr:?} has {n} field(s): cron needs 5 (minute hour day-of-month month day-of-week) or 6 (with \
                 leading seconds)"
            )))
        }
    };
    // Checked here against the user's own fields: the `cron` crate's messages describe its 7-field rewrite (and
    // its bounds are off by one), which would confuse someone who typed 5 fields.
    let named: Vec<(&CronField, &str)> = if fields.len() == 6 {
        FIELDS.iter().zip(fields.iter().copied()).collect()
    } else {
        FIELDS[1..].iter().zip(fields.iter().copied()).collect()
    };
    for (field, text) in named {
        check_field(field, text).map_err(|m| invalid(format!("{expr:?}: {} field {text:?}: {m}", field.name)))?;
    }
    let dow = normalise_day_of_week(rest[4]).map_err(|m| invalid(format!("{expr:?}: day-of-week field: {m}")))?;
    let normalised = format!("{seconds} {} {} {} {} {dow}", rest[0], rest[1], rest[2], rest[3]);
    ::cron::Schedule::from_str(&normalised)
        .map_err(|_| invalid(format!("{expr:?} is not a cron expression this scheduler supports")))
}

/// The 5-field expression a cron macro stands for.
fn macro_expansion(m: &str) -> Option<&'static str> {
    Some(match m.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => return None,
    })
}

/// One field of a cron expression: its name, bounds and value names.
struct CronField {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

/// Seconds first; a 5-field expression uses the rest.
const FIELDS: [CronField; 6] = [
    CronField {
        name: "seconds",
        min: 0,
        max: 59,
        names: &[],
    },
    CronField {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    CronField {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    CronField {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
    },
    CronField {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTHS,
    },
    // Day names are checked by `normalise_day_of_week`; only the numbers' bounds matter here.
    CronField {
        name: "day-of-week",
        min: 0,
        max: 7,
        names: &[],
    },
];

/// Checks one field's syntax and bounds: a list of `*`, `?` (day fields), `N`, `N-M`, each with an optional
/// `/step`.
fn check_field(field: &CronField, text: &str) -> std::result::Result<(), String> {
    let value = |v: &str| -> std::result::Result<Option<u32>, String> {
        if let Ok(n) = v.parse::<u32>() {
            return if (field.min..=field.max).contains(&n) {
                Ok(Some(n))
            } else {
                Err(format!("{n} is out of range {}-{}", field.min, field.max))
            };
        }
        if field.name == "day-of-week" {
            return Ok(None);
        }
        match field.names.iter().position(|n| n.eq_ignore_ascii_case(v)) {
            Some(i) => Ok(Some(field.min + i as u32)),
            None => Err(format!(
                "{v:?} is not a number from {} to {}{}",
                field.min,
                field.max,
                if field.names.is_empty() {
                    ""
                } else {
                    " or a month name (JAN-DEC)"
                }
            )),
        }
    };
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        if let Some(s) = step {
            match s.parse::<u32>() {
                Ok(n) if n >= 1 => {}
                _ => return Err(format!("step {s:?} must be a positive number")),
            }
        }
        let day = field.name.starts_with("day");
        if range == "*" || (day && range == "?") {
            continue;
        }
        if range.is_empty() {
            return Err("empty list item".to_owned());
        }
        if let Some((a, b)) = range.split_once('-') {
            if let (Some(a), Some(b)) = (value(a)?, value(b)?) {
                if a > b {
                    return Err(format!("range {range:?} runs backwards"));
                }
            }
        } else {
            value(range)?;
        }
    }
    Ok(())
}

/// Parses an IANA time-zone name (`Europe/Berlin`, `UTC`). Errors name the field `/timezone`.
pub fn parse_timezone(name: &str) -> Result<Tz> {
    Tz::from_str(name).map_err(|_| {
        Error::Invalid(
            vec![FieldError::new(
                "/timezone",
                format!("unknown time zone {name:?}: use an IANA name such as Europe/Berlin or UTC"),
            )]
            .into(),
        )
    })
}

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Rewrites a day-of-week field into day names. The `cron` crate numbers days 1 (Sunday) to 7, whereas the usual
/// cron numbering is 0 (Sunday) to 6 with 7 also Sunday; names mean the same in both, so this removes the
/// ambiguity.
fn normalise_day_of_week(field: &str) -> std::result::Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_owned());
    }
    let mut days = [false; 7];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: usize = s.parse().map_err(|_| format!("invalid day-of-week step {s:?}"))?;
                if step == 0 {
                    return Err("day-of-week step must be positive".into());
                }
                (r, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            (day_number(a)?, day_number(b)?)
        } else {
            let d = day_number(range)?;
            // `5/2` means from Friday on, every second day, as in the usual cron.
            (d, if item.contains('/') { 6 } else { d })
        };
        if lo > hi {
            return Err(format!("day-of-week range {range:?} runs backwards"));
        }
        for d in (lo..=hi).step_by(step) {
            days[d % 7] = true;
        }
    }
    let names: Vec<&str> = (0..7).filter(|&d| days[d]).map(|d| DAY_NAMES[d]).collect();
    Ok(names.join(","))
}

fn day_number(s: &str) -> std::result::Result<usize, String> {
    if let Ok(n) = s.parse::<usize>() {
        return if n <= 7 {
            Ok(n)
        } else {
            Err(format!("day of week {n} is out of range 0-7"))
        };
    }
    const FULL: [&str; 7] = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];
    let lower = s.to_ascii_lowercase();
    (0..7)
        .find(|&d| lower.eq_ignore_ascii_case(DAY_NAMES[d]) || lower == FULL[d])
        .ok_or_else(|| format!("{s:?} is not a day of the week"))
}

impl Timetable {
    /// Parses and validates both fields, reporting every invalid one.
    pub fn new(cron: &str, timezone: &str) -> Result<Self> {
        let schedule = parse_cron(cron);
        let tz = parse_timezone(timezone);
        match (schedule, tz) {
            (Ok(schedule), Ok(tz)) => Ok(Timetable { schedule, tz }),
            (schedule, tz) => {
                let mut errs = Vec::new();
                for e in [schedule.err(), tz.err()].into_iter().flatten() {
                    if let Error::Invalid(v) = e {
                        errs.extend(v);
                    }
                }
                Err(Error::Invalid(errs.into()))
            }
        }
    }

    /// The time zone ticks are computed in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first tick strictly after `after`, or `None` when the expression never matches again.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz).naive_local();
        self.schedule
            .after(&Utc.from_utc_datetime(&local))
            .take(MAX_CANDIDATES)
            .filter_map(|c| self.resolve(c.naive_utc()))
            // Skips local times of the repeated hour that already passed in its first occurrence.
            .find(|&t| t > after)
    }

    /// The latest tick at or before `at`, or `None` when there is none.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.tz).naive_local();
        // Local times up to the end of a repeated hour map to its first occurrence; when `at` lies in the second
        // occurrence, all of them are at or before `at`, so start the backward search after the repeated hour.
        let start = match self.tz.from_local_datetime(&local) {
            LocalResult::Ambiguous(first, _) if first.naive_utc() != at.naive_utc() => self.end_of_repeat(local),
            _ => local,
        };
        // The backward iterator yields times strictly before its start, in whole seconds.
        let start = start.with_nanosecond(0)? + TimeDelta::seconds(1);
        self.schedule
            .after(&Utc.from_utc_datetime(&start))
            .rev()
            .take(MAX_CANDIDATES)
            .filter_map(|c| self.resolve(c.naive_utc()))
            .find(|&t| t <= at)
    }

    /// Places a local wall-clock time on the time line (see the module docs).
    fn resolve(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
            LocalResult::None => self.end_of_gap(local),
        }
    }

    /// The first valid instant after `local`, which lies in a daylight-saving gap.
    fn end_of_gap(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let valid = |t: NaiveDateTime| !matches!(self.tz.from_local_datetime(&t), LocalResult::None);
        let mut minute = local.with_second(0)?.with_nanosecond(0)?;
        for _ in 0..MAX_GAP_MINUTES {
            minute += TimeDelta::minutes(1);
            if valid(minute) {
                // Transitions fall on whole minutes in practice; walk back by seconds in case one does not.
                let mut first = minute;
                while first - TimeDelta::seconds(1) > local && valid(first - TimeDelta::seconds(1)) {
                    first -= TimeDelta::seconds(1);
                }
                return self.resolve(first);
            }
        }
        None
    }

    /// The first local time after `local` (which is ambiguous) that is no longer ambiguous.
    fn end_of_repeat(&self, local: NaiveDateTime) -> NaiveDateTime {
        let ambiguous = |t: NaiveDateTime| matches!(self.tz.from_local_datetime(&t), LocalResult::Ambiguous(..));
        let mut t = local;
        for _ in 0..MAX_GAP_MINUTES {
            t += TimeDelta::minutes(1);
            if !ambiguous(t) {
                return t;
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn field_of(e: Error) -> Vec<String> {
        match e {
            Error::Invalid(v) => v.into_iter().map(|f| f.path).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// 5- and 6-field expressions parse; a 5-field one fires on second 0.
    #[test]
    fn parses_five_and_six_fields() {
        let cases: &[(&str, &str, &str)] = &[
            // (cron, after, expected next tick)
            ("*/5 * * * *", "2026-11-25T12:01:30Z", "2026-11-25T12:05:00Z"),
            ("0 12 * * *", "2026-11-25T12:00:00Z", "2026-11-26T12:00:00Z"),
            ("*/2 * * * * *", "2026-11-25T12:00:00Z", "2026-11-25T12:00:02Z"),
            ("*/2 * * * * *", "2026-11-25T12:00:01.500Z", "2026-11-25T12:00:02Z"),
            ("30 0 12 * * *", "2026-11-25T11:00:00Z", "2026-11-25T12:00:30Z"),
            ("  0   12 *  * * ", "2026-11-25T13:00:00Z", "2026-11-26T12:00:00Z"),
        ];
        for (cron, after, want) in cases {
            let t = Timetable::new(cron, "UTC").unwrap_or_else(|e| panic!("{cron}: {e}"));
            assert_eq!(t.next_after(utc(after)), Some(utc(want)), "{cron} after {after}");
        }
    }

    /// Day-of-week numbers follow the usual cron (0 and 7 Sunday, 1 Monday), in both field counts.
    #[test]
    fn day_of_week_uses_the_usual_numbering() {
        // 2026-11-25 is a Wednesday.
        let cases: &[(&str, &str)] = &[
            ("0 9 * * 1", "2026-11-30T09:00:00Z"),       // Monday
            ("0 9 * * 0", "2026-11-29T09:00:00Z"),       // Sunday
            ("0 9 * * 7", "2026-11-29T09:00:00Z"),       // Sunday again
            ("0 9 * * 1-5", "2026-11-26T09:00:00Z"),     // Thursday is a weekday
            ("0 9 * * 5-7", "2026-11-27T09:00:00Z"),     // Friday
            ("0 9 * * SAT,sun", "2026-11-28T09:00:00Z"), // Saturday
            ("0 9 * * mon-fri", "2026-11-26T09:00:00Z"), // names
            ("0 0 9 * * 6", "2026-11-28T09:00:00Z"),     // six fields, Saturday
            ("0 9 * * */3", "2026-11-28T09:00:00Z"),     // Sun, Wed, Sat
        ];
        for (cron, want) in cases {
            let t = Timetable::new(cron, "UTC").unwrap_or_else(|e| panic!("{cron}: {e}"));
            assert_eq!(t.next_after(utc("2026-11-25T10:00:00Z")), Some(utc(want)), "{cron}");
        }
    }

    /// Invalid expressions and zones are refused, naming the field.
    #[test]
    fn invalid_cron_or_timezone_names_the_field() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("* * * *", "UTC", &["/cron"]),
            ("* * * * * * *", "UTC", &["/cron"]),
            ("", "UTC", &["/cron"]),
            ("61 * * * *", "UTC", &["/cron"]),
            ("* 25 * * *", "UTC", &["/cron"]),
            ("* * * * 8", "UTC", &["/cron"]),
            ("* * * * funday", "UTC", &["/cron"]),
            ("every minute please", "UTC", &["/cron"]),
            ("* * * * *", "Mars/Olympus", &["/timezone"]),
            ("* * * * *", "", &["/timezone"]),
            ("* * * * *", "europe/berlin", &["/timezone"]),
            ("nope", "Nowhere", &["/cron", "/timezone"]),
        ];
        for (cron, tz, want) in cases {
            let e = Timetable::new(cron, tz).expect_err(cron);
            assert_eq!(field_of(e), *want, "{cron:?} {tz:?}");
        }
        assert!(Timetable::new("* * * * *", "Europe/Berlin").is_ok());
    }

    /// Errors quote the user's own expression and name the field with its real bounds, never the 7-field rewrite.
    #[test]
    fn errors_name_the_users_field_and_bounds() {
        let cases: &[(&str, &[&str])] = &[
            (
                "61 * * * *",
                &["\"61 * * * *\"", "minute field \"61\"", "out of range 0-59"],
            ),
            ("60 * * * *", &["minute field", "out of range 0-59"]),
            ("0 61 * * * *", &["minute field \"61\"", "0-59"]),
            ("61 0 * * * *", &["seconds field \"61\"", "0-59"]),
            ("* 24 * * *", &["hour field \"24\"", "out of range 0-23"]),
            ("* * 0 * *", &["day-of-month field \"0\"", "out of range 1-31"]),
            ("* * * 13 *", &["month field \"13\"", "out of range 1-12"]),
            ("* * * FOO *", &["month field", "JAN-DEC"]),
            ("* * * * 8", &["day-of-week field", "0-7"]),
            ("*/0 * * * *", &["minute field", "step"]),
            ("5-1 * * * *", &["runs backwards"]),
            ("* * * *", &["has 4 field(s)"]),
            ("@fortnightly", &["unknown cron macro"]),
        ];
        for (cron, needles) in cases {
            let Err(Error::Invalid(v)) = parse_cron(cron) else {
                panic!("{cron} should be invalid");
            };
            let msg = &v[0].message;
            for n in *needles {
                assert!(msg.contains(n), "{cron}: {msg:?} lacks {n:?}");
            }
            assert!(!msg.contains("must be less than"), "{cron}: {msg}");
        }
        // Bounds themselves are accepted.
        for ok in ["59 23 31 12 7", "0 59 23 1 1 0", "* * * jan-dec *", "0 0 ? * MON"] {
            parse_cron(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    /// The cron macros mean what they mean in standard cron.
    #[test]
    fn macros_are_accepted() {
        let cases: &[(&str, &str)] = &[
            ("@hourly", "2026-11-25T11:00:00Z"),
            ("@daily", "2026-11-26T00:00:00Z"),
            ("@midnight", "2026-11-26T00:00:00Z"),
            ("@weekly", "2026-11-29T00:00:00Z"),
            ("@monthly", "2026-12-01T00:00:00Z"),
            ("@yearly", "2027-01-01T00:00:00Z"),
            ("@annually", "2027-01-01T00:00:00Z"),
        ];
        for (cron, want) in cases {
            let t = Timetable::new(cron, "UTC").unwrap_or_else(|e| panic!("{cron}: {e}"));
            assert_eq!(t.next_after(utc("2026-11-25T10:00:00Z")), Some(utc(want)), "{cron}");
        }
    }

    /// A daily 02:30 Berlin schedule keeps local time across both 2026 daylight-saving changes: in the spring gap it
    /// fires at the first valid instant after 02:30 (03:00 local), in the autumn overlap it fires once.
    #[test]
    fn berlin_daily_tick_across_dst_changes() {
        let t = Timetable::new("0 30 2 * * *", "Europe/Berlin").unwrap();
        let cases: &[(&str, &str)] = &[
            // ordinary winter day: 02:30 CET = 01:30 UTC
            ("2026-03-27T12:00:00Z", "2026-03-28T01:30:00Z"),
            // spring forward (29 March, 02:00 -> 03:00): 02:30 does not exist, fires at 03:00 CEST = 01:00 UTC
            ("2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z"),
            // the day after: 02:30 CEST = 00:30 UTC
            ("2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"),
            // ordinary summer day
            ("2026-07-01T12:00:00Z", "2026-07-02T00:30:00Z"),
            // fall back (25 October, 03:00 -> 02:00): 02:30 happens twice, fires at the first (CEST = 00:30 UTC)
            ("2026-10-24T12:00:00Z", "2026-10-25T00:30:00Z"),
            // ... and not again at the second 02:30 (CET = 01:30 UTC): next is the 26th, 02:30 CET = 01:30 UTC
            ("2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"),
            // asked from inside the repeated hour's second pass, the repeated tick is already past
            ("2026-10-25T01:10:00Z", "2026-10-26T01:30:00Z"),
        ];
        for (after, want) in cases {
            assert_eq!(t.next_after(utc(after)), Some(utc(want)), "after {after}");
        }
    }

    /// Sub-daily schedules: ticks inside the spring gap collapse onto its end, the repeated hour fires once.
    #[test]
    fn hourly_ticks_across_dst_changes() {
        let t = Timetable::new("0 */30 * * * *", "Europe/Berlin").unwrap();
        let mut ticks = vec![];
        let mut at = utc("2026-03-29T00:00:00Z");
        while at < utc("2026-03-29T02:00:00Z") {
            at = t.next_after(at).unwrap();
            ticks.push(at);
        }
        // 01:30 CET, then 02:00 and 02:30 do not exist (both -> 03:00 CEST = 01:00 UTC, once), 03:30 CEST ...
        assert_eq!(
            ticks,
            [
                "2026-03-29T00:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:30:00Z",
                "2026-03-29T02:00:00Z"
            ]
            .map(utc)
        );
        let mut ticks = vec![];
        let mut at = utc("2026-10-24T23:45:00Z");
        while at < utc("2026-10-25T02:00:00Z") {
            at = t.next_after(at).unwrap();
            ticks.push(at);
        }
        // 02:00 and 02:30 fire in their first occurrence (CEST), then 03:00 CET = 02:00 UTC.
        assert_eq!(
            ticks,
            ["2026-10-25T00:00:00Z", "2026-10-25T00:30:00Z", "2026-10-25T02:00:00Z"].map(utc)
        );
    }

    /// The latest tick at or before an instant, including on the daylight-saving days.
    #[test]
    fn latest_at_or_before_mirrors_next_after() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("*/2 * * * * *", "UTC", "2026-11-25T12:00:03Z", "2026-11-25T12:00:02Z"),
            ("*/2 * * * * *", "UTC", "2026-11-25T12:00:02Z", "2026-11-25T12:00:02Z"),
            (
                "*/2 * * * * *",
                "UTC",
                "2026-11-25T12:00:02.900Z",
                "2026-11-25T12:00:02Z",
            ),
            ("0 12 * * *", "UTC", "2026-11-25T11:59:59Z", "2026-11-24T12:00:00Z"),
            (
                "0 30 2 * * *",
                "Europe/Berlin",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:00:00Z",
            ),
            (
                "0 30 2 * * *",
                "Europe/Berlin",
                "2026-03-29T00:59:59Z",
                "2026-03-28T01:30:00Z",
            ),
            (
                "0 30 2 * * *",
                "Europe/Berlin",
                "2026-10-25T01:10:00Z",
                "2026-10-25T00:30:00Z",
            ),
            (
                "0 30 2 * * *",
                "Europe/Berlin",
                "2026-10-25T01:45:00Z",
                "2026-10-25T00:30:00Z",
            ),
        ];
        for (cron, tz, at, want) in cases {
            let t = Timetable::new(cron, tz).unwrap();
            assert_eq!(t.latest_at_or_before(utc(at)), Some(utc(want)), "{cron} {tz} at {at}");
        }
    }
}
